#!/usr/bin/env python
"""Training step of the convolutional VAE (``VAE(784, arch="conv")``, the Keras example's network with
the default --hidden 400 and Z = 20) against the same network in PyTorch eager on CPU, the share of
the step in matrix products, and the peak memory of one step.

One step = ``loss_and_grads(x, rng=rng)`` then ``Adam.step``, Bernoulli likelihood, L = 1, batch 128,
float32, on mnist-mini minibatches already in the model's dtype (as bench_train_step.py). PyTorch:
nn.Conv2d / nn.ConvTranspose2d / nn.Linear with the same shapes, strides, paddings and output
paddings, started from numpyvae's initial weights, the same loss (BCE with logits summed over pixels,
analytic KL, averaged over the batch), torch.optim.Adam(lr=1e-3), torch.set_num_threads(T). Before
timing, both compute the float64 loss and gradients of one batch with the same weights and noise
and the largest difference is printed: the two are the same function.

Timing: ``--repeats`` blocks of M steps (M chosen so a block lasts about ``--block-seconds``),
alternating numpyvae and torch blocks with a ``--gap`` pause between them; the median block of each
and the median of the per-pair ratios (torch time / numpyvae time: > 1 means numpyvae is faster).

Matrix products: every product of one numpyvae step is recorded (the Linear layers' by
_common.MatmulTrace, the convolutions' by wrapping numpyvae.layers.conv2d, conv2d_weight_grad and
conv2d_input_grad at run time; the package files are not touched) and replayed alone with
``np.matmul(a, b, out=c)`` on operands of the same shapes and layouts; their time over the step's
is the matmul share. Memory of one step: the tracemalloc peak of the arrays the step allocates
(numpy reports its buffers to tracemalloc) and the growth of the resident set over the step
(VmHWM after the step less VmRSS before it, after handing freed memory back to the kernel with
glibc's malloc_trim and resetting VmHWM through /proc/self/clear_refs; Linux only), for the conv VAE
and for the MLP default beside it.

Fresh memory is slow: glibc hands large freed blocks back to the kernel, and each new array then
page-faults on first touch (a step allocates arrays of several MiB: im2col matrices, feature maps).
``--keep-freed-memory`` calls mallopt so that glibc keeps freed memory for reuse, as PyTorch's
CPU allocator in effect does, to show the step without that cost (as bench_conv.py does).

Runs without PyTorch (the comparison is then skipped and says so). PyTorch 2.13.0 in a throwaway venv:

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy scipy
    PYTHONPATH=. /tmp/torchvenv/bin/python benchmarks/bench_conv_vae.py [--threads 1] [--quick]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (no numpy import at module level)

HIDDEN, LATENT, CHANNELS = (400,), 20, (32, 64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="BLAS / torch threads, set before numpy loads (default 1)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per library (default 9; quick 2)")
    p.add_argument("--block-seconds", type=float, default=None, help="target block duration (default 1.0; quick 0.2)")
    p.add_argument("--gap", type=float, default=0.1, help="idle seconds between alternating blocks")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--quick", action="store_true", help="a smoke run: few short blocks")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="mallopt: glibc keeps freed memory for reuse instead of returning it to the kernel")
    p.add_argument("--json", default=None,
                   help="output JSON (default results/conv_vae.json; quick: conv_vae_quick.json)")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (2 if a.quick else 9)
    a.block_seconds = a.block_seconds or (0.2 if a.quick else 1.0)
    name = "conv_vae" + ("_keep" if a.keep_freed_memory else "") + ("_quick" if a.quick else "")
    a.json = a.json or os.path.join(C.RESULTS_DIR, name + ".json")
    return a


# --------------------------------------------------------------------------- the two steps

def numpyvae_model(dtype, arch="conv"):
    import numpyvae
    kw = {"arch": "conv", "channels": CHANNELS} if arch == "conv" else {}
    return numpyvae.VAE(C.INPUT_DIM, HIDDEN, LATENT, likelihood="bernoulli", activation="relu", seed=0,
                        dtype=dtype, **kw)


def numpyvae_steps(model, batches):
    return C.ModelSteps(model, batches, lambda model, x, rng: model.loss_and_grads(x, rng=rng))


def torch_network(torch, model):
    """The conv VAE in torch.nn with numpyvae ``model``'s weights (a Linear W is (in, out) in numpyvae,
    (out, in) in torch; convolution kernels have the same layout in both)."""
    nn, p = torch.nn, model.params
    c1, c2 = CHANNELS

    class ConvVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(1, c1, 3, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 3, 2, 1), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(c2 * 49, HIDDEN[0]), nn.ReLU())
            self.mu, self.logvar = nn.Linear(HIDDEN[0], LATENT), nn.Linear(HIDDEN[0], LATENT)
            self.dec = nn.Sequential(nn.Linear(LATENT, c2 * 49), nn.ReLU(), nn.Unflatten(1, (c2, 7, 7)),
                                     nn.ConvTranspose2d(c2, c2, 3, 2, 1, output_padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(c2, c1, 3, 2, 1, output_padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(c1, 1, 3, 1, 1), nn.Flatten())

        def loss(self, x, eps):
            mu_logvar = self.enc(x.reshape(-1, 1, 28, 28))
            mu, logvar = self.mu(mu_logvar), self.logvar(mu_logvar)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = self.dec(z)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = 0.5 * torch.sum(mu * mu + torch.exp(logvar) - 1.0 - logvar)
            return (bce + kl) / x.shape[0]

    net = ConvVAE().to(getattr(torch, model.dtype.name))
    pairs = {"enc.conv0": net.enc[0], "enc.conv1": net.enc[2], "enc.h0": net.enc[5], "enc.mu": net.mu,
             "enc.logvar": net.logvar, "dec.h0": net.dec[0], "dec.upconv0": net.dec[3], "dec.upconv1": net.dec[5],
             "dec.out": net.dec[7]}
    with torch.no_grad():
        for name, layer in pairs.items():
            W = p[f"{name}.W"]
            layer.weight.copy_(torch.from_numpy(W.T.copy() if W.ndim == 2 else W.copy()))
            layer.bias.copy_(torch.from_numpy(p[f"{name}.b"].copy()))
    return net, pairs


def torch_steps(torch, model, batches):
    return C.TorchSteps(torch, torch_network(torch, model)[0], batches, lambda batch: (batch, LATENT))


def agreement(torch, batch):
    """The largest difference between numpyvae's and PyTorch's float64 loss and gradients (relative to
    each gradient's max-norm) at the same weights and noise."""
    import numpy as np
    model = numpyvae_model(np.float64)
    x = batch.astype(np.float64)
    eps = np.random.default_rng(2).standard_normal((1, x.shape[0], LATENT))
    loss, grads = model.loss_and_grads(x, eps=eps)
    net, pairs = torch_network(torch, model)
    t_loss = net.loss(torch.from_numpy(x), torch.from_numpy(eps[0]))
    t_loss.backward()
    worst = 0.0
    for name, layer in pairs.items():
        for key, t in (("W", layer.weight.grad), ("b", layer.bias.grad)):
            g = grads[f"{name}.{key}"]
            t = t.numpy().T if g.ndim == 2 else t.numpy()
            worst = max(worst, float(np.max(np.abs(g - t)) / np.max(np.abs(t))))
    t_loss = float(t_loss.detach())
    return abs(loss - t_loss) / abs(t_loss), worst


# --------------------------------------------------------------------------- matrix products

class ConvMatmulTrace:
    """Record the matrix products of numpyvae.layers.conv2d, conv2d_weight_grad and conv2d_input_grad
    (each splits the batch into chunks of _images_per_chunk images: one product per chunk), by wrapping
    the three functions in the module for the duration of a with-block. Records as MatmulTrace's:
    (op, a_shape, b_shape, transpose_a, transpose_b, dtype) for a @ b, a transposed operand given by
    the shape of the C-contiguous array it is a view of."""

    def __init__(self):
        self.records = []

    def __enter__(self):
        from numpyvae import layers as L
        self.L, self.saved = L, (L.conv2d, L.conv2d_weight_grad, L.conv2d_input_grad)
        conv2d, weight_grad, input_grad = self.saved
        rec = self.records

        def chunks(P, Q, F, in_size, out_size, padding, dtype, B):
            n = L._images_per_chunk(P, Q, F, tuple(in_size), tuple(out_size), padding, dtype.itemsize)
            return [min(n, B - s) for s in range(0, B, n)]

        def out_size(in_size, F, stride, padding):
            return tuple(L.conv_output_size(s, F, stride, padding) for s in in_size)

        def w_conv2d(x, W, b, stride, padding):
            Q, P, F, _ = W.shape
            o = out_size(x.shape[2:], F, stride, padding)
            for n in chunks(P, Q, F, x.shape[2:], o, padding, x.dtype, x.shape[0]):
                rec.append(("conv fwd", (Q, P * F * F), (P * F * F, n * o[0] * o[1]), False, False, x.dtype.name))
            return conv2d(x, W, b, stride, padding)

        def w_weight_grad(x, dy, F, stride, padding):
            P, Q, o = x.shape[1], dy.shape[1], dy.shape[2:]
            for n in chunks(P, Q, F, x.shape[2:], o, padding, x.dtype, x.shape[0]):
                rec.append(("conv dW", (Q, n * o[0] * o[1]), (P * F * F, n * o[0] * o[1]), False, True, x.dtype.name))
            return weight_grad(x, dy, F, stride, padding)

        def w_input_grad(dy, W, in_size, stride, padding):
            Q, P, F, _ = W.shape
            o = dy.shape[2:]
            for n in chunks(P, Q, F, in_size, o, padding, dy.dtype, dy.shape[0]):
                rec.append(("conv dX", (Q, P * F * F), (Q, n * o[0] * o[1]), True, False, dy.dtype.name))
            return input_grad(dy, W, in_size, stride, padding)

        L.conv2d, L.conv2d_weight_grad, L.conv2d_input_grad = w_conv2d, w_weight_grad, w_input_grad
        return self

    def __exit__(self, *exc):
        self.L.conv2d, self.L.conv2d_weight_grad, self.L.conv2d_input_grad = self.saved
        return False


def replay(records, repeats, block_seconds):
    """Median seconds of all the recorded products run back to back, each on preallocated operands."""
    import numpy as np
    ops = C.replay_operands(records)

    def run():
        for a, b, c in ops:
            np.matmul(a, b, out=c)
    return timed(run, repeats, block_seconds)


def timed(fn, repeats, block_seconds):
    fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(block_seconds / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return C.median(times)


# --------------------------------------------------------------------------- memory

def step_memory(step):
    """(tracemalloc peak of one step in MiB, resident-set growth over a step in MiB or None)."""
    step()                                   # warm: the optimiser's moments exist, caches are filled
    return C.memory_of(step)


# --------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    C.set_thread_env(args.threads)
    if args.keep_freed_memory:
        C.keep_freed_memory()
    import numpy as np
    torch = None if args.no_torch else C.import_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    la_start = C.report_load("start")
    print(C.blas_threads_line()[0])
    if torch is None:
        print("PyTorch: " + ("skipped (--no-torch)" if args.no_torch else
                             "not importable, so the comparison is skipped (see the docstring to install it)"))
    else:
        print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    f32 = np.float32
    batches = C.make_batches(f32, args.batch, n_batches=8)
    model = numpyvae_model(f32)
    print(f"{model}; batch {args.batch}, L = 1, float32, {args.threads} thread(s)"
          + ("; glibc keeps freed memory (--keep-freed-memory)" if args.keep_freed_memory else ""))
    result = {"benchmark": "conv_vae", "args": vars(args), "machine": C.machine_info(), "model": repr(model)}

    if torch is not None:
        rel_loss, rel_grad = agreement(torch, batches[0])
        print(f"float64 agreement with PyTorch at the same weights and noise: loss {rel_loss:.1e} relative, "
              f"gradients {rel_grad:.1e} of their max-norm")
        result["torch_agreement"] = {"loss": rel_loss, "grads": rel_grad}

    # The step's matrix products, traced from one real step.
    np_step = numpyvae_steps(model, batches)
    np_step()
    with C.MatmulTrace() as dense, ConvMatmulTrace() as conv:
        np_step()
    records = dense.records + conv.records
    flops = sum(C.MatmulTrace.flops(r) for r in records)
    print(f"{len(records)} matrix products per step ({len(conv.records)} in convolutions), {flops / 1e9:.2f} GFLOP")

    # Alternating blocks.
    steps = {"numpyvae": np_step}
    if torch is not None:
        steps["torch"] = torch_steps(torch, model, batches)
    per_block, times, meters = C.alternate(steps, args.repeats, args.block_seconds, args.gap)
    t_np = C.median(times["numpyvae"])
    t_mm = replay(records, max(3, args.repeats // 2), args.block_seconds)
    peak = C.matmul_rate(1024 if args.quick else 2048, "float32")["gflops"]
    rows = [["numpyvae", f"{per_block['numpyvae']} x {args.repeats}", t_np * 1e3, min(times["numpyvae"]) * 1e3,
             args.batch / t_np, flops / t_np / 1e9, f"{flops / t_np / 1e9 / peak:.0%}",
             C.median(meters["numpyvae"])]]
    result.update({"numpyvae_ms": t_np * 1e3, "numpyvae_blocks_ms": [t * 1e3 for t in times["numpyvae"]],
                   "gflop_per_step": flops / 1e9, "matmul_ms": t_mm * 1e3, "matmul_share": t_mm / t_np,
                   "peak_gflops_float32": peak})
    if torch is not None:
        t_t = C.median(times["torch"])
        ratios = [b / a for a, b in zip(times["numpyvae"], times["torch"])]
        rows.append(["torch", f"{per_block['torch']} x {args.repeats}", t_t * 1e3, min(times["torch"]) * 1e3,
                     args.batch / t_t, flops / t_t / 1e9, f"{flops / t_t / 1e9 / peak:.0%}", C.median(meters["torch"])])
        result.update({"torch_ms": t_t * 1e3, "torch_blocks_ms": [t * 1e3 for t in times["torch"]],
                       "torch_over_numpyvae": C.median(ratios), "ratio_range": [min(ratios), max(ratios)]})
    C.print_table(["library", "M x N", "ms/step", "min", "samples/s", "GFLOP/s", "% of mm rate", "cpu/wall"], rows)
    print(f"large-matmul rate: {peak:.1f} GFLOP/s (float32, {args.threads} thread(s))")
    print(f"matrix products replayed alone: {t_mm * 1e3:.1f} ms of the {t_np * 1e3:.1f} ms step "
          f"({t_mm / t_np:.0%}); the rest is im2col / col2im copies, elementwise work, Adam and Python")
    if torch is not None:
        print(f"PyTorch ms/step over numpyvae's, median of {args.repeats} block pairs: "
              f"{result['torch_over_numpyvae']:.2f} (range {min(ratios):.2f}-{max(ratios):.2f}; > 1: numpyvae faster)")

    # Memory of one step, the conv VAE and the MLP default.
    mem_rows = []
    for arch in ("conv", "mlp"):
        m = model if arch == "conv" else numpyvae_model(f32, "mlp")
        traced, resident = step_memory(numpyvae_steps(m, batches))
        state = 4 * sum(v.nbytes for v in m.params.values()) / 2**20     # params, grads, two Adam moments
        mem_rows.append([arch, m.num_params(), state, traced, resident])
        result[f"memory_{arch}"] = {"parameters": m.num_params(), "state_mib": state, "step_traced_peak_mib": traced,
                                    "step_resident_growth_mib": resident}
    C.print_table(["model", "parameters", "state MiB", "step peak (tracemalloc) MiB", "step resident growth MiB"],
                  mem_rows)
    print("state: parameters, gradients and Adam's two moments; step peak: the arrays one step allocates "
          "(activations, caches, im2col matrices, gradients)")
    result["loadavg_start"], result["loadavg_end"] = la_start, C.report_load("end", own_threads=args.threads)
    C.write_json(args.json, result)


if __name__ == "__main__":
    main()
