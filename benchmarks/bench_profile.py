#!/usr/bin/env python
"""Where the time of one numpyvae training step goes: matmuls, elementwise work, Python overhead.

Method (each quantity is the median of --repeats timed blocks, all measured round-robin so machine
drift hits them alike):

  step      loss_and_grads + Adam.step at the real sizes (also split: loss_and_grads alone and
            Adam.step alone, the latter re-applying one fixed gradient dict).
  matmul    the step's own matmuls replayed alone: the exact (shape, transpose) sequence is traced
            from one real step by wrapping Linear.forward/backward at run time, then replayed with
            np.matmul(a, b, out=c) on preallocated arrays of the same layouts. ("fresh out" replays
            them allocating each result, as the step does; the difference is allocation/first-touch.)
  overhead  the same step on a tiny model of the same depth (D=4, every hidden width 4, Z=2, B=2, same
            L): every Python call, dict, check and ufunc dispatch is still made, but the arithmetic is
            negligible. The tiny step's own microscopic matmul calls count here, which is right:
            their cost is dispatch, not FLOPs.
  elementwise = step - matmul - overhead: activations, likelihood, KL, reparameterization, input
            checks, Adam's arithmetic, temporaries and their allocation.

Then a cProfile of --profile-steps steps, top 15 functions by tottime (time inside the function
itself; numpy ufuncs and operators are not profiled separately, so their time lands in the Python
function that calls them, while np.matmul's "@" lands in Linear.forward/backward).

    python benchmarks/bench_profile.py [--arch default] [--dtype float32] [--threads 1] [--quick]
"""

import argparse
import cProfile
import io
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--arch", default="default", choices=list(C.ARCHITECTURES))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    p.add_argument("--samples", type=int, default=1, help="L")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the architecture's)")
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per quantity (default 9; quick 3)")
    p.add_argument("--block-seconds", type=float, default=0.3)
    p.add_argument("--profile-steps", type=int, default=None, help="steps under cProfile (default 50; quick 5)")
    p.add_argument("--json", default=None, help="output JSON (default results/profile.json; quick: profile_quick.json)")
    a = p.parse_args(argv)
    a.json = a.json or os.path.join(C.RESULTS_DIR, "profile" + ("_quick" if a.quick else "") + ".json")
    a.repeats = a.repeats or (3 if a.quick else 9)
    a.profile_steps = a.profile_steps or (5 if a.quick else 50)
    return a


def main(argv=None):
    args = parse_args(argv)
    C.set_thread_env(args.threads)
    import numpy as np
    import numpyvae

    arch = dict(C.ARCHITECTURES[args.arch])
    B = args.batch or arch["batch"]
    L = args.samples
    dtype = np.dtype(args.dtype)
    print(f"numpyvae step profile: {args.arch} {C.INPUT_DIM}-{'-'.join(map(str, arch['hidden']))}-{arch['latent']} "
          f"{arch['activation']}, B={B}, L={L}, {dtype.name}, T={args.threads}" + (" (--quick)" if args.quick else ""))
    la_start = C.report_load("start")
    blas_line, blas = C.blas_threads_line()
    print(f"[blas] numpy {np.__version__}: {blas_line}")

    # --- the real step, and its two halves
    step = C.NumpyvaeStep(arch, dtype, batch=B, n_samples=L)
    step(3)
    x0 = step.batches[0]
    _, fixed_grads = step.model.loss_and_grads(x0, rng=np.random.default_rng(5), n_samples=L)
    fixed_grads = {k: v.copy() for k, v in fixed_grads.items()}

    def loss_only(n):
        for _ in range(n):
            x = step.batches[step.i % len(step.batches)]
            step.i += 1
            step.model.loss_and_grads(x, rng=step.rng, n_samples=L)

    # Adam alone on *copies* of the parameters: re-applying one fixed gradient thousands of times
    # walks the weights far away, which must not happen to the model the step trains.
    adam_params = {k: v.copy() for k, v in step.model.params.items()}
    adam_opt = numpyvae.Adam(adam_params, lr=1e-3)

    def adam_only(n):
        for _ in range(n):
            adam_opt.step(fixed_grads)

    # --- the matmul replay
    with C.MatmulTrace() as trace:
        step(1)
    counted = C.count_step_flops(C.INPUT_DIM, arch["hidden"], arch["latent"], B, L)["total"]
    traced = trace.total_flops()
    rng = np.random.default_rng(0)
    ops_pre, ops_fresh = [], []
    for op, a_shape, b_shape, ta, tb, dt in trace.records:
        a = rng.standard_normal(a_shape).astype(dt)
        b = rng.standard_normal(b_shape).astype(dt)
        a_op, b_op = (a.T if ta else a), (b.T if tb else b)
        out = np.empty((a_op.shape[0], b_op.shape[1]), dtype=dt)
        ops_pre.append((a_op, b_op, out))
        ops_fresh.append((a_op, b_op))

    def replay(n):
        mm = np.matmul
        for _ in range(n):
            for a, b, o in ops_pre:
                mm(a, b, out=o)

    def replay_fresh(n):
        for _ in range(n):
            for a, b in ops_fresh:
                a @ b

    # --- the tiny model (same depth, same number of parameter arrays): Python overhead
    tiny_arch = dict(arch, hidden=tuple(4 for _ in arch["hidden"]), latent=2)
    tiny = numpyvae.VAE(4, tiny_arch["hidden"], 2, likelihood="bernoulli", activation=arch["activation"],
                        seed=0, dtype=dtype)
    tiny_opt = numpyvae.Adam(tiny.params, lr=1e-3)
    tiny_x = [np.ascontiguousarray(np.random.default_rng(i).random((2, 4)), dtype=dtype) for i in range(8)]
    tiny_rng = np.random.default_rng(1)
    assert len(tiny.params) == len(step.model.params)

    def tiny_step(n):
        for i in range(n):
            _, g = tiny.loss_and_grads(tiny_x[i % 8], rng=tiny_rng, n_samples=L)
            tiny_opt.step(g)

    tiny_adam_opt = numpyvae.Adam({k: v.copy() for k, v in tiny.params.items()}, lr=1e-3)
    tiny_g = {k: np.ones_like(v) for k, v in tiny.params.items()}

    def tiny_adam(n):
        for _ in range(n):
            tiny_adam_opt.step(tiny_g)

    quantities = {"step": step, "loss_and_grads": loss_only, "adam_step": adam_only,
                  "matmul_replay": replay, "matmul_replay_fresh_out": replay_fresh,
                  "tiny_step": tiny_step, "tiny_adam_step": tiny_adam}
    sizes = {}
    for name, fn in quantities.items():
        fn(2)
        sizes[name] = 3 if args.quick else C.steps_for(fn, args.block_seconds, min_steps=5, max_steps=5000)
    times = {k: [] for k in quantities}
    cpu = {k: [] for k in quantities}
    for _ in range(args.repeats):
        for name, fn in quantities.items():
            r = C.time_blocks(fn, sizes[name], 1, warmup=0)
            times[name] += r["per_step_s"]
            cpu[name] += r["cpu_over_wall"]
    med = {k: C.median(v) for k, v in times.items()}
    la_mid = C.loadavg()

    t_step, t_mm, t_py = med["step"], med["matmul_replay"], med["tiny_step"]
    t_elem = t_step - t_mm - t_py
    share = lambda t: f"{100 * t / t_step:.0f}%"  # noqa: E731
    print(f"\nOne training step, median of {args.repeats} blocks (load {la_mid[0]:.2f}; "
          f"cpu/wall of the step blocks {C.median(cpu['step']):.2f}):")
    rows = [
        ["step (loss_and_grads + Adam.step)", t_step * 1e3, "100%", f"{sizes['step']}"],
        ["  matmuls, replayed alone (prealloc. out)", t_mm * 1e3, share(t_mm), f"{sizes['matmul_replay']}"],
        ["  Python overhead (tiny model step)", t_py * 1e3, share(t_py), f"{sizes['tiny_step']}"],
        ["  elementwise = step - matmul - overhead", t_elem * 1e3, share(t_elem), "-"],
        ["of which: loss_and_grads alone", med["loss_and_grads"] * 1e3, share(med["loss_and_grads"]),
         f"{sizes['loss_and_grads']}"],
        ["of which: Adam.step alone", med["adam_step"] * 1e3, share(med["adam_step"]), f"{sizes['adam_step']}"],
        ["  (tiny model's Adam.step: its overhead)", med["tiny_adam_step"] * 1e3, share(med["tiny_adam_step"]),
         f"{sizes['tiny_adam_step']}"],
        ["matmul replay with fresh outputs", med["matmul_replay_fresh_out"] * 1e3,
         share(med["matmul_replay_fresh_out"]), f"{sizes['matmul_replay_fresh_out']}"],
    ]
    C.print_table(["component", "ms", "share", "calls/block"], rows)
    n_param = step.model.num_params()
    print(f"  {len(trace.records)} matmuls per step, {traced / 1e6:.1f} MFLOP traced "
          f"(counted formula: {counted / 1e6:.1f} MFLOP{', MATCH' if traced == counted else ', MISMATCH'}); "
          f"replay rate {traced / t_mm / 1e9:.1f} GFLOP/s, whole step {traced / t_step / 1e9:.1f} GFLOP/s; "
          f"{n_param} parameters in {len(step.model.params)} arrays")

    # per-matmul replay times, one block each (shapes are what decides BLAS efficiency)
    per_mm = []
    for (op, a_shape, b_shape, ta, tb, dt), (a, b, o) in zip(trace.records, ops_pre):
        k = max(5, int(0.02 / max(t_mm / len(ops_pre), 1e-7)))
        np.matmul(a, b, out=o)
        best = float("inf")
        for _ in range(3):                       # best of 3 blocks: shape-limited rate, not load noise
            with C.Meter() as m:
                for _ in range(k):
                    np.matmul(a, b, out=o)
            best = min(best, m.wall / k)
        f = C.MatmulTrace.flops((op, a_shape, b_shape, ta, tb, dt))
        per_mm.append({"op": op, "a": list(a.shape), "b": list(b.shape), "transpose_a": ta, "transpose_b": tb,
                       "mflop": f / 1e6, "ms": best * 1e3, "gflops": f / best / 1e9})
    print("\nEach matmul of the step replayed alone, best of 3 blocks ((m,k)@(k,n); T = stored transposed):")
    C.print_table(["op", "(m,k)", "(k,n)", "MFLOP", "ms", "GFLOP/s"],
                  [[r["op"], f"{tuple(r['a'])}{'T' if r['transpose_a'] else ''}",
                    f"{tuple(r['b'])}{'T' if r['transpose_b'] else ''}", r["mflop"], r["ms"], r["gflops"]]
                   for r in per_mm])

    # --- cProfile
    prof = cProfile.Profile()
    prof.enable()
    step(args.profile_steps)
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(15)
    text = buf.getvalue()
    lines = text.splitlines()
    start = next((i for i, s in enumerate(lines) if s.lstrip().startswith("ncalls")), 0)
    print(f"\ncProfile of {args.profile_steps} steps, top 15 by tottime (profiling itself adds overhead per call):")
    print("\n".join(l.replace(os.path.dirname(os.path.dirname(numpyvae.__file__)) + os.sep, "")
                    for l in lines[start:] if l.strip()))
    top = []
    for (fn_file, line, fn_name), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:15]:
        top.append({"function": f"{os.path.basename(fn_file)}:{line}({fn_name})", "ncalls": nc,
                    "tottime_s": tt, "cumtime_s": ct, "tottime_ms_per_step": tt / args.profile_steps * 1e3})
    la_end = C.report_load("end", own_threads=args.threads)

    C.write_json(args.json, {
        "benchmark": "profile", "quick": args.quick, "args": vars(args), "blas": blas, "machine": C.machine_info(),
        "loadavg_start": la_start, "loadavg_mid": la_mid, "loadavg_end": la_end,
        "ms": {k: v * 1e3 for k, v in med.items()}, "elementwise_ms": t_elem * 1e3,
        "share": {"matmul": t_mm / t_step, "python_overhead": t_py / t_step, "elementwise": t_elem / t_step},
        "blocks_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        "cpu_over_wall": {k: C.median(v) for k, v in cpu.items()}, "calls_per_block": sizes,
        "flops_traced": traced, "flops_counted": counted, "matmuls": per_mm, "cprofile_top15": top})


if __name__ == "__main__":
    main()
