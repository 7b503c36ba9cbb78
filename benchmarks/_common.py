"""Shared helpers of the numpyvae benchmarks (not a test module, not part of the package).

Import rule: this module must not import numpy at import time, so that a script can call
``set_thread_env(T)`` *before* numpy (and its OpenBLAS thread pool) is loaded. Everything that
needs numpy imports it inside the function.
"""

import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")

# NUMPYVAE_NUM_THREADS too: with BLAS on one thread numpyvae would otherwise use threads of its own
# (numpyvae.parallel), and a "T=1" row would run on two cores.
THREAD_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMPYVAE_NUM_THREADS")

# The architectures of bench_train_step. "default" is `numpyvae train`'s default (cli.DEFAULTS);
# "pytorch-examples" is the VAE of github.com/pytorch/examples (vae/main.py): 784-400-20, ReLU,
# Bernoulli/BCE, batch 128, i.e. *the same configuration as "default"*; it is timed again as a
# run-to-run repeatability check. "iwae-paper" is the two-hidden-layer tanh MNIST architecture of
# Burda et al. (2016), batch 100 (their k=1 / VAE setting).
ARCHITECTURES = {
    "default": dict(hidden=(400,), latent=20, activation="relu", batch=128),
    "pytorch-examples": dict(hidden=(400,), latent=20, activation="relu", batch=128),
    "iwae-paper": dict(hidden=(200, 200), latent=50, activation="tanh", batch=100),
}
INPUT_DIM = 784


# --------------------------------------------------------------------------- environment

def set_thread_env(threads, env=None):
    """Set the BLAS/OpenMP thread variables in ``env`` (default: os.environ). Effective only
    if numpy / torch have not been imported yet in the process that uses ``env``."""
    env = os.environ if env is None else env
    for k in THREAD_ENV_VARS:
        env[k] = str(int(threads))
    return env


def loadavg():
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        return (float("nan"),) * 3


def report_load(tag, own_threads=0, threshold=1.0, out=None):
    """Print the 1/5/15-minute load averages; warn when the 1-minute value exceeds
    ``threshold + own_threads`` (pass own_threads = the threads this benchmark itself just
    kept busy, since a running benchmark counts in the load it measures). Returns the triple."""
    out = out or sys.stdout
    la = loadavg()
    limit = threshold + own_threads
    msg = f"[load] {tag}: load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min), {os.cpu_count()} CPUs"
    print(msg, file=out, flush=True)
    if la[0] > limit:
        print(f"[load] WARNING: 1-minute load {la[0]:.2f} > {limit:.1f}: other processes compete for the "
              f"{os.cpu_count()} cores; timings are inflated and noisy (multi-threaded BLAS most of all). "
              "Compare rows measured together; rerun on an idle machine for absolute numbers.",
              file=out, flush=True)
    return la


def sched_totals():
    """(cpu_ns, runqueue_wait_ns) summed over every thread of this process, from
    /proc/self/task/*/schedstat (Linux). (nan, nan) elsewhere. The wait time is how long runnable
    threads sat in the run queue, i.e. time taken from us by other processes (or our own threads
    oversubscribing the cores)."""
    cpu = wait = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    a, b, _ = f.read().split()
                cpu += int(a)
                wait += int(b)
            except (OSError, ValueError):
                pass
    except OSError:
        return float("nan"), float("nan")
    return cpu, wait


class Meter:
    """Wall time plus process CPU time and run-queue wait over a block of work."""

    def __enter__(self):
        self.s0 = sched_totals()
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        s1 = sched_totals()
        self.wait = (s1[1] - self.s0[1]) * 1e-9
        return False


def blas_info():
    """Which BLAS numpy uses and with how many threads: threadpoolctl when installed, else the
    OpenBLAS library loaded in this process, queried through ctypes."""
    import numpy as np  # noqa: F401  (loads the BLAS)
    try:
        from threadpoolctl import threadpool_info
        pools = threadpool_info()
        return {"source": "threadpoolctl",
                "pools": [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                                  "architecture", "filepath")} for p in pools]}
    except ImportError:
        pass
    import ctypes
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                base = os.path.basename(path).lower()
                if "openblas" in base and ".so" in base and path not in libs:
                    libs.append(path)
    except OSError:
        pass
    pools = []
    for path in libs:
        lib = ctypes.CDLL(path)
        info = {"user_api": "blas", "internal_api": "openblas", "filepath": path}
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
                               ("openblas_", "64_"), ("openblas_", "")):
            fn = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            if fn is None:
                continue
            fn.restype = ctypes.c_int
            info["num_threads"] = int(fn())
            for key, name in (("version", "get_config"), ("architecture", "get_corename")):
                g = getattr(lib, f"{prefix}{name}{suffix}", None)
                if g is not None:
                    g.restype = ctypes.c_char_p
                    info[key] = g().decode(errors="replace")
            break
        pools.append(info)
    return {"source": "ctypes (/proc/self/maps)", "pools": pools}


def blas_threads_line():
    info = blas_info()
    parts = [f"{os.path.basename(p.get('filepath') or '?')}: {p.get('version', p.get('internal_api'))} "
             f"[{p.get('architecture', '?')}] threads={p.get('num_threads', '?')}" for p in info["pools"]]
    return "; ".join(parts) or "no BLAS thread pool found", info


def machine_info():
    import platform
    import numpy as np
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"python": platform.python_version(), "numpy": np.__version__, "cpu": cpu,
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "thread_env": {k: os.environ.get(k) for k in THREAD_ENV_VARS}}


def import_torch():
    """torch, or None when it is not importable (the comparison is then skipped)."""
    try:
        import torch
        return torch
    except Exception:  # ImportError, or a broken install raising something else
        return None


# --------------------------------------------------------------------------- statistics / output

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    print(f"wrote {os.path.relpath(path)}")


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def print_table(headers, rows, out=None):
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("  ".join(c.rjust(w) if k else c.rjust(w) for c, w in zip(r, widths)), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    out.flush()


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


# --------------------------------------------------------------------------- FLOP counting

def count_step_flops(D, hidden, Z, B, L=1, n_enc_heads=2, n_dec_heads=1):
    """Matmul FLOPs of one loss_and_grads call (2*m*n*k per (m,k)@(k,n) product).

    Forward: encoder trunk D -> hidden... on B rows, n_enc_heads heads (mu, logvar) H_last -> Z on
    B rows, decoder trunk Z -> reversed hidden on N = L*B rows, n_dec_heads heads H_0 -> D on N rows.
    Backward: every Linear computes dW = x^T dy (same FLOPs as its forward) and dx = dy W^T (same
    again), except the encoder's first layer, whose input is data (need_dx=False). With no hidden
    layer the heads are the first layers and skip dx instead. The decoder's first layer does
    compute dx (it is dz, needed for the reparameterization gradient).
    Returns dict with "forward", "backward", "total".
    """
    hidden = tuple(hidden)
    N = L * B
    enc = list(zip((D,) + hidden[:-1], hidden)) if hidden else []
    head_in = hidden[-1] if hidden else D
    dec_sizes = (Z,) + hidden[::-1]
    dec = list(zip(dec_sizes[:-1], dec_sizes[1:]))
    dec_out = dec_sizes[-1]

    fwd = sum(2 * B * a * b for a, b in enc) + n_enc_heads * 2 * B * head_in * Z
    fwd += sum(2 * N * a * b for a, b in dec) + n_dec_heads * 2 * N * dec_out * D
    # backward = dW (= fwd) + dx (= fwd) minus the skipped input gradients
    skipped = 2 * B * D * hidden[0] if hidden else n_enc_heads * 2 * B * D * Z
    bwd = 2 * fwd - skipped
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def count_eval_flops(D, hidden, Z, B, K, n_enc_heads=2, n_dec_heads=1):
    """Matmul FLOPs of one log_likelihood(x (B, D), n_importance=K) call: the encoder once
    (the posterior is shared by all chunks) and the decoder on K*B rows."""
    hidden = tuple(hidden)
    enc = list(zip((D,) + hidden[:-1], hidden)) if hidden else []
    head_in = hidden[-1] if hidden else D
    dec_sizes = (Z,) + hidden[::-1]
    dec = list(zip(dec_sizes[:-1], dec_sizes[1:]))
    enc_f = sum(2 * B * a * b for a, b in enc) + n_enc_heads * 2 * B * head_in * Z
    dec_f = sum(2 * K * B * a * b for a, b in dec) + n_dec_heads * 2 * K * B * dec_sizes[-1] * D
    return {"encoder_per_pass": enc_f, "decoder": dec_f}


class MatmulTrace:
    """Record every matmul the Linear layers do during a block of code, by wrapping
    numpyvae.layers.Linear.forward/backward *at run time* in this process (the package files are
    not touched). Each record: (op, a_shape, b_shape, transpose_a, transpose_b, dtype) with the
    product a @ b, where for the transposed operands the stored array is the C-contiguous one
    (so a replay reproduces the same memory layout and BLAS transpose flags)."""

    def __init__(self):
        self.records = []

    def __enter__(self):
        from numpyvae import layers
        self._layers = layers
        self._f, self._b = layers.Linear.forward, layers.Linear.backward
        orig_f, orig_b, rec = self._f, self._b, self.records

        def forward(lin, x):
            rec.append(("fwd", x.shape, lin.params["W"].shape, False, False, x.dtype.name))
            return orig_f(lin, x)

        def backward(lin, dy, need_dx=True):
            x = lin.cache
            rec.append(("dW", x.shape, dy.shape, True, False, dy.dtype.name))        # x^T @ dy
            if need_dx:
                rec.append(("dx", dy.shape, lin.params["W"].shape, False, True, dy.dtype.name))  # dy @ W^T
            return orig_b(lin, dy, need_dx=need_dx)

        layers.Linear.forward, layers.Linear.backward = forward, backward
        return self

    def __exit__(self, *exc):
        self._layers.Linear.forward, self._layers.Linear.backward = self._f, self._b
        return False

    @staticmethod
    def flops(rec):
        op, a, b, ta, tb, _ = rec
        m, k = (a[1], a[0]) if ta else a
        k2, n = (b[1], b[0]) if tb else b
        assert k == k2, rec
        return 2 * m * n * k

    def total_flops(self):
        return sum(self.flops(r) for r in self.records)


# --------------------------------------------------------------------------- workloads

def make_batches(dtype, batch, n_batches=16, seed=0, quick=False):
    """``n_batches`` distinct minibatches of mnist-mini training digits, C-contiguous, already in
    the model's dtype (as numpyvae.training.train converts the data once before the loop)."""
    import numpy as np
    import numpyvae
    x = numpyvae.load_dataset("mnist-mini").x_train
    rng = np.random.default_rng(seed)
    idx = rng.permutation(x.shape[0])
    need = n_batches * batch
    if need > idx.size:
        idx = np.concatenate([idx] * (need // idx.size + 1))
    return [np.ascontiguousarray(x[idx[i * batch:(i + 1) * batch]], dtype=dtype) for i in range(n_batches)]


class NumpyvaeStep:
    """One numpyvae training step: loss_and_grads then Adam.step, cycling over fixed batches."""

    def __init__(self, arch, dtype, batch=None, n_samples=1, seed=0, batches=None):
        import numpy as np
        import numpyvae
        self.np = np
        self.model = numpyvae.VAE(INPUT_DIM, arch["hidden"], arch["latent"], likelihood="bernoulli",
                                  activation=arch["activation"], seed=seed, dtype=dtype)
        self.opt = numpyvae.Adam(self.model.params, lr=1e-3)
        self.batch = batch or arch["batch"]
        self.L = n_samples
        self.batches = batches if batches is not None else make_batches(dtype, self.batch)
        self.rng = np.random.default_rng(seed + 1)
        self.i = 0
        self.flops = count_step_flops(INPUT_DIM, arch["hidden"], arch["latent"], self.batch, n_samples)["total"]

    def __call__(self, steps=1):
        for _ in range(steps):
            x = self.batches[self.i % len(self.batches)]
            self.i += 1
            loss, grads = self.model.loss_and_grads(x, rng=self.rng, n_samples=self.L)
            self.opt.step(grads)
        return loss


class TorchStep:
    """The same architecture and objective in PyTorch eager mode on CPU: nn.Linear layers with the
    same activation, BCE-with-logits summed over pixels (averaged over samples and batch), the
    analytic KL averaged over the batch, L samples stacked into the decoder batch, Adam(lr=1e-3)."""

    def __init__(self, torch, arch, dtype_name, batch=None, n_samples=1, seed=0, batches=None):
        nn = torch.nn
        self.torch = torch
        torch.manual_seed(seed)
        tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype_name]
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}[arch["activation"]]
        D, H, Z = INPUT_DIM, tuple(arch["hidden"]), arch["latent"]

        def mlp(sizes):
            layers = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b), act()]
            return nn.Sequential(*layers)

        class VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = mlp((D,) + H)
                self.mu = nn.Linear(H[-1] if H else D, Z)
                self.logvar = nn.Linear(H[-1] if H else D, Z)
                self.dec = mlp((Z,) + H[::-1])
                self.out = nn.Linear(H[0] if H else Z, D)

            def loss(self, x, L):
                B = x.shape[0]
                h = self.enc(x)
                mu, logvar = self.mu(h), self.logvar(h)
                eps = torch.randn((L, B, Z), dtype=mu.dtype)
                z = mu + torch.exp(0.5 * logvar) * eps
                logits = self.out(self.dec(z.reshape(L * B, Z))).reshape(L, B, D)
                bce = nn.functional.binary_cross_entropy_with_logits(logits, x.expand(L, B, D), reduction="sum")
                kl = 0.5 * torch.sum(mu * mu + torch.exp(logvar) - 1.0 - logvar)
                return (bce / L + kl) / B

        self.model = VAE().to(tdtype)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batch = batch or arch["batch"]
        self.L = n_samples
        src = batches if batches is not None else make_batches(dtype_name, self.batch)
        self.batches = [torch.from_numpy(b).to(tdtype) for b in src]
        self.i = 0

    def __call__(self, steps=1):
        for _ in range(steps):
            x = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.opt.zero_grad(set_to_none=True)
            loss = self.model.loss(x, self.L)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


# --------------------------------------------------------------------------- machine rate

def matmul_rate(n=2048, dtype="float32", repeats=3, matmul=None, rand=None):
    """Best-of-``repeats`` GFLOP/s of an (n, n) @ (n, n) product (2 n^3 FLOPs) with numpy (or with
    the given ``matmul(a, b, out)`` and array factory). Best-of, not median: it estimates what the
    BLAS can reach on this machine, the ceiling the training step is compared with."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=c)  # warm-up (thread pool start, page faults)
    best = float("inf")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        dt = time.perf_counter() - t0
        times.append(dt)
        best = min(best, dt)
    return {"n": n, "dtype": dtype, "gflops": 2 * n ** 3 / best / 1e9, "times_s": times}


def torch_matmul_rate(torch, n=2048, dtype="float32", repeats=3):
    td = {"float32": torch.float32, "float64": torch.float64}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn((n, n), generator=g, dtype=td)
    b = torch.randn((n, n), generator=g, dtype=td)
    c = torch.empty((n, n), dtype=td)
    torch.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return {"n": n, "dtype": dtype, "gflops": 2 * n ** 3 / min(times) / 1e9, "times_s": times}


def time_blocks(fn, steps, repeats, warmup=3):
    """Run fn(warmup), then ``repeats`` blocks of fn(steps); returns per-step seconds of each block
    plus CPU/wall and run-queue-wait fractions of each block."""
    if warmup:
        fn(warmup)
    per_step, cpu_frac, wait_frac = [], [], []
    for _ in range(repeats):
        with Meter() as m:
            fn(steps)
        per_step.append(m.wall / steps)
        cpu_frac.append(m.cpu / m.wall)
        wait_frac.append(m.wait / m.wall)
    return {"per_step_s": per_step, "cpu_over_wall": cpu_frac, "runq_wait_over_wall": wait_frac}


def steps_for(fn, target_s, min_steps=3, max_steps=1000):
    """How many steps make a block of about target_s seconds (fn is warmed up by the probe)."""
    fn(1)
    t0 = time.perf_counter()
    fn(2)
    dt = (time.perf_counter() - t0) / 2
    return int(min(max_steps, max(min_steps, math.ceil(target_s / max(dt, 1e-6)))))


def alternate(steps, repeats, block_seconds, gap):
    """Time the callables ``steps`` ({name: fn(n_steps)}) in alternating blocks, so that the
    machine's drift hits them alike. Each is warmed up, its block sized to about ``block_seconds``,
    then ``repeats`` rounds run one block of each with ``gap`` idle seconds before it. Returns
    (per_block {name: steps per block}, times {name: [seconds per step of each block]},
    cpu {name: [process CPU seconds per wall second of each block]})."""
    per_block = {}
    for name, fn in steps.items():
        fn(2)
        t0 = time.perf_counter()
        fn(1)
        per_block[name] = max(1, int(block_seconds / (time.perf_counter() - t0)))
    times = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            time.sleep(gap)
            with Meter() as m:
                fn(per_block[name])
            times[name].append(m.wall / per_block[name])
            cpu[name].append(m.cpu / m.wall)
    return per_block, times, cpu


def status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS, VmHWM); OSError where there is none (not Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def replay_operands(records):
    """Operands for the products ``records`` (MatmulTrace's): [(a, b, out)], random, in the recorded
    shapes and layouts (a transposed operand is a view of a C-contiguous array, as in the step)."""
    import numpy as np
    rng = np.random.default_rng(0)
    ops = []
    for _, a_shape, b_shape, ta, tb, dtype in records:
        a = rng.standard_normal(a_shape).astype(dtype)
        b = rng.standard_normal(b_shape).astype(dtype)
        a, b = (a.T if ta else a), (b.T if tb else b)
        ops.append((a, b, np.empty((a.shape[0], b.shape[1]), dtype=dtype)))
    return ops


# --------------------------------------------------------------------------- memory

def keep_freed_memory():
    """glibc's mallopt: keep freed memory for reuse instead of handing large blocks back to the
    kernel, so a new array does not page-fault on first touch (--keep-freed-memory)."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    assert libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)


def memory_of(fn):
    """(tracemalloc peak of the arrays one fn() call allocates, in MiB; growth of the resident set
    over another call, in MiB, or None off Linux/glibc). Before the second call glibc hands its free
    memory back to the kernel (malloc_trim) and VmHWM is reset, so the growth counts only that call."""
    import ctypes
    import tracemalloc
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                     # reset VmHWM (the peak resident set) to the current VmRSS
        before = status_kib("VmRSS")
        fn()
        resident = (status_kib("VmHWM") - before) / 1024
    except (OSError, AttributeError):        # no /proc, or no glibc
        resident = None
    return peak / 2**20, resident


class TorchSteps:
    """Training steps of a torch network ``net`` (with a ``loss(x, eps)`` method) with
    torch.optim.Adam(lr=1e-3), cycling over ``batches`` (numpy arrays); ``noise_shape(batch)`` is the
    shape of the standard-normal eps each step draws from its own generator."""

    def __init__(self, torch, net, batches, noise_shape, seed=1):
        self.torch, self.net, self.noise_shape = torch, net, noise_shape
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        self.batches = [torch.from_numpy(b) for b in batches]
        self.gen, self.i = torch.Generator().manual_seed(seed), 0

    def __call__(self, steps=1):
        for _ in range(steps):
            x = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.opt.zero_grad(set_to_none=True)
            eps = self.torch.randn(self.noise_shape(x.shape[0]), generator=self.gen, dtype=x.dtype)
            loss = self.net.loss(x, eps)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


class ModelSteps:
    """Training steps of a numpyvae ``model`` with numpyvae.Adam(lr=1e-3), cycling over ``batches``:
    ``loss_and_grads(model, x, rng)`` gives each step's (loss, grads), with the noise from a
    Generator of ``seed``."""

    def __init__(self, model, batches, loss_and_grads, seed=1):
        import numpy as np
        import numpyvae
        self.model, self.batches, self.loss_and_grads = model, batches, loss_and_grads
        self.opt = numpyvae.Adam(model.params, lr=1e-3)
        self.rng, self.i = np.random.default_rng(seed), 0

    def __call__(self, steps=1):
        for _ in range(steps):
            x = self.batches[self.i % len(self.batches)]
            self.i += 1
            loss, grads = self.loss_and_grads(self.model, x, self.rng)
            self.opt.step(grads)
        return loss
