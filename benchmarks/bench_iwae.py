#!/usr/bin/env python
"""The importance-weighted workloads of Burda et al. (2016) against PyTorch eager on CPU: the IWAE
training step with k = 50 and the K = 5000 evaluation of log p(x).

Model: their MNIST architecture, 784-200-200-50 tanh, Bernoulli, float32, batch 100.
Step: ``iwae_loss_and_grads(x, k=50, rng=rng)`` then ``Adam.step`` (lr 1e-3), on mnist-mini
minibatches already in float32. PyTorch: the same networks (started from numpyvae's initial weights,
the SoftClip bound on the log-variance head included), the same bound (Eqs. (I1)-(I5),
docs/importance.md: log w = log p(x|z) + log p(z) - log q(z|x), logsumexp over the k samples),
torch.optim.Adam(lr=1e-3), torch.set_num_threads(T). Before timing, both compute the float64 loss
and gradients of one batch from the same weights and noise; the largest difference is printed.

Timing: ``--repeats`` blocks of M steps (about ``--block-seconds`` each), numpyvae and PyTorch
alternating with a ``--gap`` pause; the median block of each and the median of the per-pair ratios
(torch time / numpyvae time: > 1 means numpyvae is faster). Share of the in-run matmul rate: the
step's matrix-product FLOPs (traced from a real step by _common.MatmulTrace) per second of step,
over the rate of a 2048^3 float32 product measured in the same run with the same threads (the best
of a measurement before and one after the blocks). The products replayed alone give their share
of the step's time.

Evaluation: ``log_likelihood(x, n_importance=K)`` on the mnist-mini test digits in batches of 100
(K = 5000: the decoder runs on 500,000 codes per batch, in chunks that keep its memory within
numpyvae.model.LOG_LIKELIHOOD_CHUNK_BYTES); PyTorch under no_grad with chunks of the same number of
samples, alternating batch by batch. Memory of one batch: the tracemalloc peak of the arrays it
allocates and the growth of the resident set (VmHWM, Linux).

Threads (set before numpy loads: run once per setting): ``--threading own`` (the default, as the
command line runs) gives numpyvae T threads of its own with BLAS on one (numpyvae.parallel);
``--threading blas`` gives BLAS T threads and numpyvae none. PyTorch gets T threads either way.

    python benchmarks/bench_iwae.py [--threads 1] [--threading own|blas] [--quick] [--no-torch] [--no-eval]
    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy scipy matplotlib
    PYTHONPATH=. /tmp/torchvenv/bin/python benchmarks/bench_iwae.py --threads 2
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (no numpy import at module level)

HIDDEN, LATENT, ACTIVATION, BATCH = (200, 200), 50, "tanh", 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="threads for numpyvae and for torch, set before numpy loads")
    p.add_argument("--threading", choices=("own", "blas"), default="own",
                   help="who spreads numpyvae's work over the threads: numpyvae itself with BLAS on one thread "
                        "(as the command line does), or BLAS (OPENBLAS_NUM_THREADS=T) with numpyvae on one")
    p.add_argument("--k", type=int, default=50, help="importance samples per digit in the training step")
    p.add_argument("--eval-k", type=int, default=None, help="importance samples in the evaluation (default 5000; quick 500)")
    p.add_argument("--eval-digits", type=int, default=None, help="test digits evaluated (default 2000; quick 200)")
    p.add_argument("--repeats", type=int, default=None, help="alternating block pairs (default 9; quick 2)")
    p.add_argument("--block-seconds", type=float, default=None, help="length of a block (default 1.0; quick 0.2)")
    p.add_argument("--gap", type=float, default=0.1, help="idle seconds between blocks")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.add_argument("--quick", action="store_true", help="a smoke run: short blocks, a small evaluation")
    p.add_argument("--json", default=None, help="output JSON (default results/iwae_T<threads>[_quick].json)")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (2 if a.quick else 9)
    a.block_seconds = a.block_seconds or (0.2 if a.quick else 1.0)
    a.eval_k = a.eval_k or (500 if a.quick else 5000)
    a.eval_digits = a.eval_digits or (200 if a.quick else 2000)
    tag = f"iwae_T{a.threads}" + ("_blas" if a.threading == "blas" and a.threads > 1 else "")
    a.json = a.json or os.path.join(C.RESULTS_DIR, tag + ("_quick" if a.quick else "") + ".json")
    return a


# --------------------------------------------------------------------------- the two implementations

def numpyvae_model(dtype):
    import numpyvae
    return numpyvae.VAE(C.INPUT_DIM, HIDDEN, LATENT, likelihood="bernoulli", activation=ACTIVATION,
                        seed=0, dtype=dtype)


def numpyvae_steps(model, batches, k):
    return C.ModelSteps(model, batches, lambda model, x, rng: model.iwae_loss_and_grads(x, k=k, rng=rng))


def torch_network(torch, model):
    """The numpyvae ``model`` in torch.nn, with its weights (a Linear W is (in, out) in numpyvae,
    (out, in) in torch) and its SoftClip bound on the log-variance head (Eq. (B8), docs/backprop.md)."""
    nn, F, p = torch.nn, torch.nn.functional, model.params
    low, high = model.enc_heads["logvar"].then.low, model.enc_heads["logvar"].then.high
    log2pi = math.log(2 * math.pi)

    def soft_clip(v):
        return torch.clamp(v, low, high) + F.softplus(-torch.abs(v - low)) - F.softplus(-torch.abs(v - high))

    class IWAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList([nn.Linear(784, 200), nn.Linear(200, 200)])
            self.mu, self.logvar = nn.Linear(200, LATENT), nn.Linear(200, LATENT)
            self.dec = nn.ModuleList([nn.Linear(LATENT, 200), nn.Linear(200, 200)])
            self.out = nn.Linear(200, 784)

        def posterior(self, x):
            h = x
            for layer in self.enc:
                h = torch.tanh(layer(h))
            return self.mu(h), soft_clip(self.logvar(h))

        def log_weights(self, x, mu, logvar, eps):          # Eqs. (I1), (I3): (K, B)
            z = mu + torch.exp(0.5 * logvar) * eps
            h = z.reshape(-1, LATENT)
            for layer in self.dec:
                h = torch.tanh(layer(h))
            logits = self.out(h).reshape(eps.shape[:2] + (784,))
            log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
            log_pz = -0.5 * (z * z + log2pi).sum(-1)
            log_qz = -0.5 * (eps * eps + logvar + log2pi).sum(-1)
            return log_px + log_pz - log_qz

        def loss(self, x, eps):                              # -1/B sum_b L^_K(x_b), Eq. (I5)
            mu, logvar = self.posterior(x)
            log_w = self.log_weights(x, mu, logvar, eps)
            return -(torch.logsumexp(log_w, 0) - math.log(eps.shape[0])).mean()

    net = IWAE().to(getattr(torch, model.dtype.name))
    pairs = list(zip(["enc.h0", "enc.h1", "enc.mu", "enc.logvar", "dec.h0", "dec.h1", "dec.out"],
                     [net.enc[0], net.enc[1], net.mu, net.logvar, net.dec[0], net.dec[1], net.out]))
    with torch.no_grad():
        for name, layer in pairs:
            layer.weight.copy_(torch.from_numpy(p[f"{name}.W"].T.copy()))
            layer.bias.copy_(torch.from_numpy(p[f"{name}.b"].copy()))
    return net, pairs


def torch_steps(torch, model, batches, k):
    return C.TorchSteps(torch, torch_network(torch, model)[0], batches, lambda batch: (k, batch, LATENT))


def agreement(torch, x, k):
    """Float64 loss (relative difference) and gradients (largest difference over the max-norm) of
    numpyvae and torch from the same weights and noise."""
    import numpy as np
    model = numpyvae_model(np.float64)
    x = x.astype(np.float64)
    eps = np.random.default_rng(3).standard_normal((k, x.shape[0], LATENT))
    loss, grads = model.iwae_loss_and_grads(x, k=k, eps=eps)
    net, pairs = torch_network(torch, model)
    t_loss = net.loss(torch.from_numpy(x), torch.from_numpy(eps))
    t_loss.backward()
    worst = 0.0
    for name, layer in pairs:
        for key, t in (("W", layer.weight.grad.numpy().T), ("b", layer.bias.grad.numpy())):
            g = grads[f"{name}.{key}"]
            worst = max(worst, float(np.max(np.abs(g - t)) / np.max(np.abs(t))))
    t_loss = float(t_loss.detach())
    return abs(loss - t_loss) / abs(t_loss), worst


# --------------------------------------------------------------------------- evaluation

def evaluate(args, model, torch, x_test):
    """Seconds per implementation for log p(x) with K = args.eval_k over x_test in batches of 100,
    alternating batch by batch, and the mean log p(x) of each."""
    import numpy as np
    chunk = model.log_likelihood_chunk_size(BATCH, args.eval_k)
    rng = np.random.default_rng(5)
    net = torch_network(torch, model)[0] if torch is not None else None
    gen = torch.Generator().manual_seed(5) if torch is not None else None
    seconds = {"numpyvae": 0.0, "torch": 0.0}
    values = {"numpyvae": [], "torch": []}
    n_batches = math.ceil(len(x_test) / BATCH)
    for i in range(n_batches):
        x = x_test[i * BATCH:(i + 1) * BATCH]
        t0 = time.perf_counter()
        values["numpyvae"].append(model.log_likelihood(x, n_importance=args.eval_k, rng=rng))
        seconds["numpyvae"] += time.perf_counter() - t0
        if net is not None:
            t0 = time.perf_counter()
            values["torch"].append(torch_log_likelihood(torch, net, torch.from_numpy(x), args.eval_k, chunk, gen))
            seconds["torch"] += time.perf_counter() - t0
        if (i + 1) % 5 == 0 or i + 1 == n_batches:
            print(f"  evaluated {min((i + 1) * BATCH, len(x_test))} of {len(x_test)} digits: numpyvae "
                  f"{seconds['numpyvae']:.1f} s" + (f", torch {seconds['torch']:.1f} s" if net is not None else ""),
                  flush=True)
    means = {name: float(np.mean(np.concatenate(v))) for name, v in values.items() if v}
    return seconds, means, chunk


def torch_log_likelihood(torch, net, x, K, chunk, gen):
    """log 1/K sum_k w_k per digit, the K samples in chunks of ``chunk``, combined by logaddexp."""
    with torch.no_grad():
        mu, logvar = net.posterior(x)
        log_sum = torch.full((x.shape[0],), -math.inf, dtype=x.dtype)
        for start in range(0, K, chunk):
            k = min(chunk, K - start)
            eps = torch.randn((k, x.shape[0], LATENT), generator=gen, dtype=x.dtype)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(net.log_weights(x, mu, logvar, eps), 0))
        return (log_sum - math.log(K)).numpy()


def eval_memory(model, x, K):
    """(tracemalloc peak MiB, resident-set growth MiB or None) of a log_likelihood call on x."""
    import numpy as np
    rng = np.random.default_rng(7)
    return C.memory_of(lambda: model.log_likelihood(x, n_importance=K, rng=rng))


# --------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    own = args.threading == "own"
    C.set_thread_env(1 if own else args.threads)
    os.environ["NUMPYVAE_NUM_THREADS"] = str(args.threads if own else 1)
    import numpy as np
    import numpyvae
    torch = None if args.no_torch else C.import_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    la_start = C.report_load("start")
    print(C.blas_threads_line()[0] + f"; numpyvae's own threads: {numpyvae.parallel.own_threads()}")
    print("PyTorch: " + (f"{torch.__version__}, {torch.get_num_threads()} thread(s)" if torch is not None else
                         "skipped" + ("" if args.no_torch else " (not importable; see the docstring)")))
    f32 = np.float32
    batches = C.make_batches(f32, BATCH, n_batches=8)
    model = numpyvae_model(f32)
    print(f"{model}; IWAE k = {args.k}, batch {BATCH}, float32, {args.threads} thread(s)")
    result = {"benchmark": "iwae", "args": vars(args), "machine": C.machine_info(), "model": repr(model)}
    if torch is not None:
        rel_loss, rel_grad = agreement(torch, batches[0], args.k)
        print(f"float64 agreement with PyTorch at the same weights and noise: loss {rel_loss:.1e} relative, "
              f"gradients {rel_grad:.1e} of their max-norm")
        result["torch_agreement"] = {"loss": rel_loss, "grads": rel_grad}

    np_step = numpyvae_steps(model, batches, args.k)
    np_step()
    with C.MatmulTrace() as trace:
        np_step()
    flops = trace.total_flops()
    print(f"{len(trace.records)} matrix products per step, {flops / 1e9:.2f} GFLOP")

    n = 1024 if args.quick else 2048

    def large_matmul_rate():
        """The 2048^3 float32 rate with BLAS on T threads (numpyvae's own threads reach no more)."""
        blas = numpyvae.parallel.blas_threads()
        numpyvae.parallel.set_blas_threads(args.threads)
        rate = C.matmul_rate(n, "float32")["gflops"]
        numpyvae.parallel.set_blas_threads(blas)
        return rate

    peak_before = large_matmul_rate()
    steps = {"numpyvae": np_step}
    if torch is not None:
        steps["torch"] = torch_steps(torch, model, batches, args.k)
    per_block, times, cpu = C.alternate(steps, args.repeats, args.block_seconds, args.gap)
    la_steps = C.loadavg()
    peak = max(peak_before, large_matmul_rate())
    t_mm = replay(trace.records, max(3, args.repeats // 2), args.block_seconds)

    rows = []
    for name in steps:
        t = C.median(times[name])
        rows.append([name, f"{per_block[name]} x {args.repeats}", t * 1e3, min(times[name]) * 1e3, BATCH / t,
                     flops / t / 1e9, f"{flops / t / 1e9 / peak:.0%}", C.median(cpu[name])])
        result[name] = {"ms_per_step": t * 1e3, "blocks_ms": [v * 1e3 for v in times[name]],
                        "matmul_rate_share": flops / t / 1e9 / peak, "cpu_over_wall": C.median(cpu[name])}
    result.update({"gflop_per_step": flops / 1e9, "matmul_ms": t_mm * 1e3, "peak_gflops_float32": peak,
                   "loadavg_steps": la_steps})
    C.print_table(["library", "M x N", "ms/step", "min", "digits/s", "GFLOP/s", "% of mm rate", "cpu/wall"], rows)
    t_np = C.median(times["numpyvae"])
    print(f"in-run large-matmul rate: {peak:.1f} GFLOP/s (float32, {args.threads} thread(s)); load average "
          f"{la_steps[0]:.2f} after the blocks")
    print(f"matrix products replayed alone: {t_mm * 1e3:.1f} ms of numpyvae's {t_np * 1e3:.1f} ms step ({t_mm / t_np:.0%})")
    if torch is not None:
        ratios = [b / a for a, b in zip(times["numpyvae"], times["torch"])]
        result["torch_over_numpyvae"] = C.median(ratios)
        result["ratio_range"] = [min(ratios), max(ratios)]
        print(f"PyTorch ms/step over numpyvae's, median of {args.repeats} block pairs: {C.median(ratios):.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}; > 1: numpyvae faster)")

    if not args.no_eval:
        x_test = numpyvae.load_dataset("mnist-mini").x_test[:args.eval_digits].astype(f32)
        print(f"evaluation: log p(x) with K = {args.eval_k} on {len(x_test)} test digits, batches of {BATCH}")
        seconds, means, chunk = evaluate(args, model, torch, x_test)
        traced, resident = eval_memory(model, x_test[:BATCH], args.eval_k)
        result["eval"] = {"K": args.eval_k, "digits": len(x_test), "chunk_samples": chunk, "seconds": seconds,
                          "mean_log_px": means, "batch_traced_peak_mib": traced, "batch_resident_growth_mib": resident,
                          "loadavg": C.loadavg()}
        print(f"  numpyvae {seconds['numpyvae']:.1f} s (mean log p(x) {means['numpyvae']:.2f}, untrained model)"
              + (f"; torch {seconds['torch']:.1f} s ({means['torch']:.2f}); torch/numpyvae "
                 f"{seconds['torch'] / seconds['numpyvae']:.2f}" if torch is not None else ""))
        print(f"  memory of one batch of {BATCH} digits ({chunk} samples per chunk): tracemalloc peak {traced:.0f} MiB"
              + (f", resident growth {resident:.0f} MiB" if resident is not None else ""))
    result["loadavg_start"], result["loadavg_end"] = la_start, C.report_load("end", own_threads=args.threads)
    C.write_json(args.json, result)


def replay(records, repeats, block_seconds):
    """Median seconds of the recorded products run back to back, as numpyvae.parallel.matmul runs them."""
    from numpyvae.parallel import matmul
    ops = C.replay_operands(records)

    def run(steps=1):
        for _ in range(steps):
            for a, b, _ in ops:
                matmul(a, b)        # as the layers call it: in parts on numpyvae's own threads
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return C.median(times)


if __name__ == "__main__":
    main()
