#!/usr/bin/env python
"""How the time of one numpyvae training step scales with the batch size B and with the number of
Monte Carlo samples L, for the default architecture (784-400-20 ReLU, Bernoulli) in float32.

A step is loss_and_grads(x, rng=rng, n_samples=L) + Adam.step. The points are measured round-robin
(repeat 1 of every point, then repeat 2 of every point, ...) so that machine drift spreads over all
points instead of biasing the last ones; each point reports the median of its repeats. An affine
fit t(B) = a + b*B separates a fixed per-step cost a (Python overhead, Adam over the ~650k
parameters, small-matrix inefficiency) from a per-sample cost b.

Outputs: a printed table, benchmarks/results/scaling_batch.png, scaling_samples.png (log-log, with
a dashed line of slope 1 = linear scaling through the largest point) and scaling.json.

    python benchmarks/bench_scaling.py [--threads 1] [--quick]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

BATCHES = (32, 64, 128, 256, 512, 1024)
SAMPLES = (1, 2, 5, 10, 20, 50)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 points per sweep, tiny blocks")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set in the environment before numpy loads)")
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per point (default 5; quick 2)")
    p.add_argument("--block-seconds", type=float, default=0.4, help="target duration of one block (default 0.4)")
    p.add_argument("--batch-for-samples", type=int, default=128, help="B of the L sweep (default 128)")
    p.add_argument("--outdir", default=C.RESULTS_DIR, help="where the figures go")
    p.add_argument("--json", default=None, help="output JSON (default OUTDIR/scaling.json; quick: scaling_quick.json)")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (2 if a.quick else 5)
    a.suffix = "_quick" if a.quick else ""
    a.json = a.json or os.path.join(a.outdir, f"scaling{a.suffix}.json")
    return a


def sweep(points, make_step, args, label):
    """points: list of (x value, step kwargs). Round-robin timing; returns list of row dicts."""
    steps = []
    for value, kw in points:
        s = make_step(**kw)
        s(1 if args.quick else 3)                                            # warm-up
        M = 2 if args.quick else C.steps_for(s, args.block_seconds, min_steps=3)
        steps.append((value, s, M))
    times = {v: [] for v, _, _ in steps}
    cpu = {v: [] for v, _, _ in steps}
    for r in range(args.repeats):
        for value, s, M in steps:
            res = C.time_blocks(s, M, 1, warmup=0)
            times[value] += res["per_step_s"]
            cpu[value] += res["cpu_over_wall"]
        print(f"  {label}: repeat {r + 1}/{args.repeats} done (load {C.loadavg()[0]:.2f})", flush=True)
    rows = []
    for value, s, M in steps:
        med = C.median(times[value])
        rows.append({"value": value, "batch": s.batch, "samples": s.L, "steps_per_block": M,
                     "ms_per_step": med * 1e3, "ms_per_step_min": min(times[value]) * 1e3,
                     "us_per_datapoint": med / s.batch * 1e6, "samples_per_s": s.batch / med,
                     "flops_per_step": s.flops, "gflops": s.flops / med / 1e9,
                     "cpu_over_wall": C.median(cpu[value]),
                     "blocks_ms_per_step": [t * 1e3 for t in times[value]]})
    return rows


def affine_fit(xs, ys):
    """Least-squares y = a + b x; returns (a, b)."""
    import numpy as np
    A = np.stack([np.ones(len(xs)), np.asarray(xs, float)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, np.asarray(ys, float), rcond=None)
    return float(a), float(b)


def plot(rows, xkey, xlabel, title, path, fit=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, NullLocator, ScalarFormatter
    xs = [r[xkey] for r in rows]
    ts = [r["ms_per_step"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax.loglog(xs, ts, "o-", label="measured (median)")
    lo = [r["ms_per_step_min"] for r in rows]
    ax.loglog(xs, lo, "x", color="C0", alpha=0.5, label="fastest block")
    ref = [ts[-1] * x / xs[-1] for x in xs]
    ax.loglog(xs, ref, "k--", lw=1, label="linear scaling (slope 1)")
    if fit is not None:
        a, b = fit
        ax.loglog(xs, [a + b * x for x in xs], ":", color="C1", label=f"fit {a:.1f} ms + {b:.3f} ms x {xlabel.split()[0]}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ms per training step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    ax2.semilogx(xs, [r["gflops"] for r in rows], "s-", color="C2")
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("achieved matmul GFLOP/s")
    ax2.set_ylim(bottom=0)
    ax2.grid(True, alpha=0.3)
    ax2.set_title("counted matmul FLOPs / median step time", fontsize=9)
    for a in (ax, ax2):
        a.xaxis.set_major_locator(FixedLocator(xs))
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {os.path.relpath(path)}")


def main(argv=None):
    args = parse_args(argv)
    C.set_thread_env(args.threads)        # before numpy is imported
    import numpy as np

    print(f"numpyvae scaling benchmark: default architecture, float32, T={args.threads}"
          + (" (--quick)" if args.quick else ""))
    la_start = C.report_load("start")
    blas_line, blas = C.blas_threads_line()
    print(f"[blas] numpy {np.__version__}: {blas_line}")
    arch = C.ARCHITECTURES["default"]
    batches = (32, 128, 512) if args.quick else BATCHES
    samples = (1, 5, 20) if args.quick else SAMPLES
    data = {B: C.make_batches(np.float32, B, n_batches=8) for B in set(batches) | {args.batch_for_samples}}

    def make_step(batch, L):
        return C.NumpyvaeStep(arch, np.float32, batch=batch, n_samples=L, batches=data[batch])

    rows_b = sweep([(B, dict(batch=B, L=1)) for B in batches], make_step, args, "batch sweep")
    rows_l = sweep([(L, dict(batch=args.batch_for_samples, L=L)) for L in samples], make_step, args, "samples sweep")
    la_end = C.report_load("end", own_threads=args.threads)

    fit_b = affine_fit([r["batch"] for r in rows_b], [r["ms_per_step"] for r in rows_b])
    fit_l = affine_fit([r["samples"] for r in rows_l], [r["ms_per_step"] for r in rows_l])

    headers = ["B", "L", "M x N", "ms/step", "min", "us/datapoint", "samples/s", "GFLOP/s", "cpu/wall", "x vs first"]
    for title, rows, fit, var in (("vs batch size B (L = 1)", rows_b, fit_b, "B"),
                                  (f"vs samples L (B = {args.batch_for_samples})", rows_l, fit_l, "L")):
        print(f"\nTime per step {title}, T = {args.threads}:")
        t0, v0 = rows[0]["ms_per_step"], rows[0]["value"]
        C.print_table(headers, [[r["batch"], r["samples"], f"{r['steps_per_block']}x{args.repeats}", r["ms_per_step"],
                                 r["ms_per_step_min"], r["us_per_datapoint"], r["samples_per_s"], r["gflops"],
                                 r["cpu_over_wall"], f"{r['ms_per_step'] / t0:.2f} ({r['value'] / v0:g}x {var})"]
                                for r in rows])
        print(f"  affine fit: t = {fit[0]:.2f} ms + {fit[1]:.4f} ms x {var}")

    arch_s = "784-400-20 ReLU float32"
    plot(rows_b, "batch", "B (batch size)", f"numpyvae step time vs batch size ({arch_s}, L=1, T={args.threads})",
         os.path.join(args.outdir, f"scaling_batch{args.suffix}.png"), fit_b)
    plot(rows_l, "samples", "L (samples per datapoint)",
         f"numpyvae step time vs samples ({arch_s}, B={args.batch_for_samples}, T={args.threads})",
         os.path.join(args.outdir, f"scaling_samples{args.suffix}.png"), fit_l)
    C.write_json(args.json, {"benchmark": "scaling", "quick": args.quick, "args": vars(args), "threads": args.threads,
                             "blas": blas, "machine": C.machine_info(), "loadavg_start": la_start,
                             "loadavg_end": la_end, "batch_sweep": rows_b, "samples_sweep": rows_l,
                             "affine_fit_batch_ms": {"a": fit_b[0], "b_per_datapoint": fit_b[1]},
                             "affine_fit_samples_ms": {"a": fit_l[0], "b_per_sample": fit_l[1]}})


if __name__ == "__main__":
    main()
