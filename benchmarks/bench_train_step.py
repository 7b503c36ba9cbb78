#!/usr/bin/env python
"""Training-step throughput of numpyvae (and of the same model in PyTorch eager, when installed).

One step = ``loss, grads = model.loss_and_grads(x, rng=rng, n_samples=L)`` then ``opt.step(grads)``
with ``Adam(model.params, lr=1e-3)``, on mnist-mini minibatches already in the model's dtype.

For every thread count T the measurements run in a fresh subprocess whose OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS / MKL_NUM_THREADS are set to T before numpy (or torch) is imported, and torch also
gets torch.set_num_threads(T). Inside it, for each architecture and dtype: warm-up, then
``--repeats`` blocks of M steps, alternating numpyvae and torch blocks (numpyvae, torch, numpyvae,
torch, ...) so that machine drift hits both alike; the reported time is the median block.

The achieved GFLOP/s counts only the matmul FLOPs of the step (see _common.count_step_flops, checked
against a trace of the real step), and is compared with the float32 (and float64) rate of one large
(n x n) @ (n x n) matmul measured in the same subprocess, best of a few tries.

    python benchmarks/bench_train_step.py            # full run, a few minutes
    python benchmarks/bench_train_step.py --quick    # smoke run, seconds
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (no numpy import at module level)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny blocks, small peak matmul")
    p.add_argument("--archs", nargs="+", default=None, choices=list(C.ARCHITECTURES),
                   help="default: all (quick: default only)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per config (default 7; quick 2)")
    p.add_argument("--block-seconds", type=float, default=None,
                   help="target duration of one timed block, sets M steps per block (default 0.6; quick: M = 2)")
    p.add_argument("--samples", type=int, default=1, help="L, Monte Carlo samples per datapoint")
    p.add_argument("--peak-n", type=int, default=None, help="size of the reference matmul (default 2048; quick 512)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--gap", type=float, default=0.1,
                   help="idle seconds between alternating blocks, so one library's spinning worker threads "
                        "do not steal cores from the other's block (default 0.1)")
    p.add_argument("--json", default=None, help="output JSON (default results/train_step.json; quick: train_step_quick.json)")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="only re-print the tables of a saved result file (measures nothing)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)   # internal: thread count
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.json = a.json or os.path.join(C.RESULTS_DIR, "train_step" + ("_quick" if a.quick else "") + ".json")
    a.archs = a.archs or (["default"] if a.quick else list(C.ARCHITECTURES))
    a.repeats = a.repeats or (2 if a.quick else 7)
    a.block_seconds = a.block_seconds or (0.05 if a.quick else 0.6)
    a.peak_n = a.peak_n or (512 if a.quick else 2048)
    return a


# --------------------------------------------------------------------------- worker (one thread count)

def worker(args):
    T = args.worker
    C.set_thread_env(T)                       # the parent already did; harmless, and explicit
    import numpy as np
    import numpyvae  # noqa: F401

    log = sys.stdout
    la_start = C.report_load(f"worker T={T} start", out=log)
    blas_line, blas = C.blas_threads_line()
    print(f"[blas] numpy {np.__version__}: {blas_line}", flush=True)
    torch = None if args.no_torch else C.import_torch()
    torch_info = None
    if torch is not None:
        torch.set_num_threads(T)
        torch_info = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
                      "parallel_info": torch.__config__.parallel_info()}
        print(f"[torch] {torch.__version__}: torch.get_num_threads() = {torch.get_num_threads()}", flush=True)
    elif not args.no_torch:
        print("[torch] not importable: skipping the PyTorch comparison", flush=True)

    def peaks(tag):
        out = {dt: C.matmul_rate(args.peak_n, dt, repeats=3) for dt in ("float32", "float64")}
        if torch is not None:
            out["torch_float32"] = C.torch_matmul_rate(torch, args.peak_n, "float32", repeats=3)
        print(f"[peak] {tag}: {args.peak_n}^3 matmul  numpy float32 {out['float32']['gflops']:.1f}  "
              f"float64 {out['float64']['gflops']:.1f}"
              + (f"  torch float32 {out['torch_float32']['gflops']:.1f}" if torch is not None else "")
              + " GFLOP/s (best of 3)", flush=True)
        return out

    peak_before = peaks("before")
    rows = []
    for arch_name in args.archs:
        arch = C.ARCHITECTURES[arch_name]
        for dtype in args.dtypes:
            np_step = C.NumpyvaeStep(arch, np.dtype(dtype), n_samples=args.samples)
            t_step = (C.TorchStep(torch, arch, dtype, n_samples=args.samples, batches=np_step.batches)
                      if torch is not None else None)
            # warm-up both, then size the block from numpyvae's speed; same M for both
            warm = 1 if args.quick else 3
            np_step(warm)
            if t_step is not None:
                t_step(warm)
            M = 2 if args.quick else C.steps_for(np_step, args.block_seconds, min_steps=5)
            la0 = C.loadavg()
            res = {"numpyvae": {"per_step_s": [], "cpu_over_wall": [], "runq_wait_over_wall": []},
                   "torch": {"per_step_s": [], "cpu_over_wall": [], "runq_wait_over_wall": []}}
            for _ in range(args.repeats):
                for name, fn in (("numpyvae", np_step), ("torch", t_step)):
                    if fn is None:
                        continue
                    r = C.time_blocks(fn, M, 1, warmup=0)
                    for k, v in r.items():
                        res[name][k] += v
                    time.sleep(args.gap)
            la1 = C.loadavg()
            row = {"arch": arch_name, "dims": [C.INPUT_DIM, *arch["hidden"], arch["latent"]],
                   "activation": arch["activation"], "batch": np_step.batch, "samples": args.samples,
                   "dtype": dtype, "threads": T, "steps_per_block": M, "repeats": args.repeats,
                   "flops_per_step": np_step.flops, "loadavg_before": la0, "loadavg_after": la1}
            for name in ("numpyvae", "torch"):
                r = res[name]
                if not r["per_step_s"]:
                    continue
                med = C.median(r["per_step_s"])
                cw = C.median(r["cpu_over_wall"])
                row[name] = {"ms_per_step": med * 1e3, "ms_per_step_min": min(r["per_step_s"]) * 1e3,
                             "samples_per_s": np_step.batch / med, "gflops": np_step.flops / med / 1e9,
                             "gflops_per_cpu_s": np_step.flops / (med * cw) / 1e9,
                             "cpu_over_wall": cw,
                             "runq_wait_over_wall": C.median(r["runq_wait_over_wall"]),
                             "blocks_ms_per_step": [t * 1e3 for t in r["per_step_s"]]}
            rows.append(row)
            msg = (f"  {arch_name:17s} {dtype} T={T}: numpyvae {row['numpyvae']['ms_per_step']:.2f} ms/step"
                   f" ({row['numpyvae']['gflops']:.1f} GFLOP/s)")
            if "torch" in row:
                msg += f", torch {row['torch']['ms_per_step']:.2f} ms/step"
            print(msg + f"  [{M} steps x {args.repeats}, load {la1[0]:.2f}]", flush=True)
    peak_after = peaks("after")
    peak = {k: max(peak_before[k]["gflops"], peak_after[k]["gflops"]) for k in peak_before}
    for row in rows:
        if "torch" in row:
            row["ratio_numpyvae_over_torch"] = row["numpyvae"]["samples_per_s"] / row["torch"]["samples_per_s"]
    la_end = C.report_load(f"worker T={T} end", own_threads=T, out=log)
    out = {"threads": T, "blas": blas, "torch": torch_info, "machine": C.machine_info(),
           "peak_gflops": peak, "peak_before": peak_before, "peak_after": peak_after,
           "loadavg_start": la_start, "loadavg_end": la_end, "rows": rows}
    with open(args.worker_out, "w") as f:
        json.dump(out, f, default=C._json_default)


# --------------------------------------------------------------------------- parent

def summarize(results, peak_n, samples=1, no_torch=False):
    """Reference rates, fractions, and the printed table, from the workers' results. Returns the rows."""
    # The reference rate for T threads: the best large matmul measured with T or fewer threads
    # (a T-thread BLAS can always do what a 1-thread one does; a lower measured value means the
    # machine was loaded while it ran, and would make the fraction look better than it is).
    ref = {}
    for res in sorted(results, key=lambda r: r["threads"]):
        ref[res["threads"]] = {k: max([v] + [ref[t][k] for t in ref if t < res["threads"]])
                               for k, v in res["peak_gflops"].items()}
        res["reference_gflops"] = ref[res["threads"]]
    rows = [r for res in results for r in res["rows"]]
    for row in rows:
        pk = ref[row["threads"]]
        for name in ("numpyvae", "torch"):
            if name in row:
                row[name]["frac_of_f32_matmul"] = row[name]["gflops"] / pk["float32"]
                row[name]["frac_of_same_dtype_matmul"] = row[name]["gflops"] / pk[row["dtype"]]
    print("\nPeak reference: (n x n) @ (n x n) matmul, n = %d, best of 3 at start and end of each subprocess:" % peak_n)
    for res in results:
        pk, rf = res["peak_gflops"], res["reference_gflops"]
        used = "" if all(rf[k] == pk[k] for k in ("float32", "float64")) else (f"  -> reference used: float32 {rf['float32']:.1f}, float64 {rf['float64']:.1f} "
                                    "(best with <= T threads; the T-thread measurement was slowed by load)")
        print(f"  T={res['threads']}: numpy float32 {pk['float32']:.1f} GFLOP/s, float64 {pk['float64']:.1f} GFLOP/s"
              + (f", torch float32 {pk['torch_float32']:.1f} GFLOP/s" if "torch_float32" in pk else "") + used
              + f"   (BLAS threads reported: {[p.get('num_threads') for p in res['blas']['pools']]}"
              + (f", torch threads {res['torch']['num_threads']}" if res["torch"] else "") + ")")
    have_torch = any("torch" in r for r in rows)
    headers = ["arch", "dims", "B", "dtype", "T", "M x N", "ms/step", "min", "samples/s", "GFLOP/s",
               "%mm32", "%mm_dt", "cpu/wall", "GF/cpu-s", "rq-wait"]
    if have_torch:
        headers += ["torch ms", "torch samp/s", "np/torch"]
    table = []
    for r in rows:
        n = r["numpyvae"]
        line = [r["arch"], "-".join(map(str, r["dims"])), r["batch"], r["dtype"], r["threads"],
                f"{r['steps_per_block']}x{r['repeats']}", n["ms_per_step"], n["ms_per_step_min"],
                n["samples_per_s"], n["gflops"], f"{100 * n['frac_of_f32_matmul']:.1f}%",
                f"{100 * n['frac_of_same_dtype_matmul']:.1f}%", n["cpu_over_wall"], n["gflops_per_cpu_s"],
                f"{100 * n['runq_wait_over_wall']:.0f}%"]
        if have_torch:
            t = r.get("torch")
            line += [t["ms_per_step"], t["samples_per_s"], f"{r['ratio_numpyvae_over_torch']:.2f}x"] if t else ["-"] * 3
        table.append(line)
    print(f"\nTraining step (L = {samples}); ms/step = median over N blocks of M steps:")
    C.print_table(headers, table)
    print("  %mm32 = achieved matmul GFLOP/s / float32 reference above; %mm_dt = / reference of the row's dtype;\n"
          "  cpu/wall = process CPU seconds per wall second; GF/cpu-s = matmul GFLOP per CPU-second of the process\n"
          "  (load-independent for T=1, inflated-denominator for T>1 since idle BLAS threads spin); rq-wait = run-queue wait of our threads per wall\n"
          "  second (time other processes took from us); np/torch = numpyvae samples/s / torch samples/s.")
    if not have_torch and not no_torch:
        print("  (torch not importable: comparison skipped)")

    return rows



def main(argv=None):
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        a = saved["args"]
        print(f"results of {args.report} (measured {saved.get('time', '?')}, load average at start "
              f"{saved['loadavg_start']}, at end {saved['loadavg_end']})")
        summarize(saved["per_thread_count"], a["peak_n"], a["samples"], a["no_torch"])
        return None

    print("numpyvae training-step benchmark" + (" (--quick smoke run)" if args.quick else ""))
    print("note: 'pytorch-examples' is the same configuration as 'default' (784-400-20 ReLU, batch 128); "
          "it is timed again, so the two rows also show the run-to-run noise.")
    la_start = C.report_load("start")
    results = []
    for T in args.threads:
        env = C.set_thread_env(T, dict(os.environ))
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            path = tmp.name
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(T), "--worker-out", path,
               "--archs", *args.archs, "--dtypes", *args.dtypes, "--repeats", str(args.repeats),
               "--block-seconds", str(args.block_seconds), "--samples", str(args.samples),
               "--peak-n", str(args.peak_n), "--gap", str(args.gap)]
        if args.quick:
            cmd.append("--quick")
        if args.no_torch:
            cmd.append("--no-torch")
        print(f"\n=== T = {T} thread(s): subprocess with " + " ".join(f"{k}={T}" for k in C.THREAD_ENV_VARS), flush=True)
        subprocess.run(cmd, env=env, check=True)
        with open(path) as f:
            results.append(json.load(f))
        os.unlink(path)
    la_end = C.report_load("end", own_threads=max(args.threads))

    rows = summarize(results, args.peak_n, args.samples, args.no_torch)

    C.write_json(args.json, {"benchmark": "train_step", "quick": args.quick, "args": vars(args),
                             "loadavg_start": la_start, "loadavg_end": la_end,
                             "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "per_thread_count": results,
                             "rows": rows})


if __name__ == "__main__":
    main()
