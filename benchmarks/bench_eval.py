#!/usr/bin/env python
"""Cost of the importance-sampled log-likelihood evaluation:
``model.log_likelihood(x, n_importance=1000, rng=rng)`` over the whole mnist-mini test set (2000
digits) in batches of 100, default architecture (784-400-20 ReLU, Bernoulli), float32.

Reports wall time (total, and per batch: median / min / max), digits/s and decoder passes/s, the
achieved matmul GFLOP/s (FLOPs traced from one real call: the encoder once per call, the decoder
once per chunk of samples) against a large float32 matmul measured in the same run, and memory:
* tracemalloc peak of one batch's call, measured in a separate, untimed call (tracemalloc slows
  every allocation, so it is never on during the timed loop); numpy reports its array buffers to
  tracemalloc, so this is the peak of live array memory during the call;
* the process's resident-set high-water mark (getrusage ru_maxrss) before and after the loop.

The model is freshly initialised (seed 0), not trained: the cost does not depend on the weights.
The log-likelihood printed is therefore that of an untrained model (about -544 nats), only a sanity
check.

    python benchmarks/bench_eval.py [--threads 1] [--quick]
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 200 digits, n_importance=100")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--n-importance", type=int, default=None, help="K (default 1000; quick 100)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--digits", type=int, default=None, help="test digits to evaluate (default all 2000; quick 200)")
    p.add_argument("--chunk-size", type=int, default=None, help="passed to log_likelihood (default: its own)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile of one batch")
    p.add_argument("--json", default=None, help="output JSON (default results/eval.json; quick: eval_quick.json)")
    a = p.parse_args(argv)
    a.json = a.json or os.path.join(C.RESULTS_DIR, "eval" + ("_quick" if a.quick else "") + ".json")
    a.n_importance = a.n_importance or (100 if a.quick else 1000)
    a.digits = a.digits or (200 if a.quick else None)
    return a


def maxrss_mb():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20   # Linux: KiB, macOS: bytes


def main(argv=None):
    args = parse_args(argv)
    C.set_thread_env(args.threads)
    import tracemalloc

    import numpy as np
    import numpyvae

    arch = C.ARCHITECTURES["default"]
    dtype = np.dtype(args.dtype)
    x_test = numpyvae.load_dataset("mnist-mini").x_test
    if args.digits:
        x_test = x_test[:args.digits]
    x_test = np.ascontiguousarray(x_test, dtype=dtype)
    n, B, K = x_test.shape[0], args.batch, args.n_importance
    batches = [x_test[i:i + B] for i in range(0, n, B)]
    print(f"numpyvae evaluation benchmark: log_likelihood(n_importance={K}) over {n} mnist-mini test digits, "
          f"batches of {B}; 784-400-20 ReLU {dtype.name}, T={args.threads}" + (" (--quick)" if args.quick else ""))
    la_start = C.report_load("start")
    blas_line, blas = C.blas_threads_line()
    print(f"[blas] numpy {np.__version__}: {blas_line}")
    model = numpyvae.VAE(C.INPUT_DIM, arch["hidden"], arch["latent"], likelihood="bernoulli",
                         activation=arch["activation"], seed=0, dtype=dtype)
    peak32 = C.matmul_rate(1024 if args.quick else 2048, "float32", repeats=3)

    # warm-up on the first batch, tracing its matmuls (untimed)
    with C.MatmulTrace() as trace:
        model.log_likelihood(batches[0], n_importance=K, rng=np.random.default_rng(123), chunk_size=args.chunk_size)
    flops_first = trace.total_flops()
    # one decoder output layer (hidden[0] -> D) forward per chunk
    n_chunks = sum(1 for r in trace.records if r[0] == "fwd" and r[2] == (arch["hidden"][0], C.INPUT_DIM))
    flops_total = sum(flops_first * b.shape[0] / B for b in batches)   # all batches full-size except maybe the last

    # peak live array memory of one call (tracemalloc, untimed)
    tracemalloc.start()
    model.log_likelihood(batches[0], n_importance=K, rng=np.random.default_rng(123), chunk_size=args.chunk_size)
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # the timed loop
    rss_before = maxrss_mb()
    rng = np.random.default_rng(0)
    per_batch, out = [], []
    with C.Meter() as total:
        for xb in batches:
            t0 = time.perf_counter()
            out.append(model.log_likelihood(xb, n_importance=K, rng=rng, chunk_size=args.chunk_size))
            per_batch.append(time.perf_counter() - t0)
    rss_after = maxrss_mb()
    ll = np.concatenate(out)
    la_loop = C.loadavg()

    prof_top = []
    if not args.no_profile:
        prof = cProfile.Profile()
        prof.enable()
        model.log_likelihood(batches[0], n_importance=K, rng=np.random.default_rng(7), chunk_size=args.chunk_size)
        prof.disable()
        st = pstats.Stats(prof, stream=io.StringIO())
        for (f, line, name), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:10]:
            prof_top.append({"function": f"{os.path.basename(f)}:{line}({name})", "ncalls": nc, "tottime_s": tt})
    la_end = C.report_load("end", own_threads=args.threads)

    wall = total.wall
    res = {
        "digits": n, "batch": B, "n_importance": K, "n_batches": len(batches), "chunks_per_batch": n_chunks,
        "wall_s": wall, "cpu_over_wall": total.cpu / wall, "runq_wait_over_wall": total.wait / wall,
        "per_batch_s": {"median": C.median(per_batch), "min": min(per_batch), "max": max(per_batch),
                        "all": per_batch},
        "digits_per_s": n / wall, "decoder_rows_per_s": n * K / wall,
        "matmul_gflop_total": flops_total / 1e9, "gflops": flops_total / wall / 1e9,
        "peak_f32_matmul_gflops": peak32["gflops"], "frac_of_f32_matmul": flops_total / wall / 1e9 / peak32["gflops"],
        "tracemalloc_peak_mb_one_call": tm_peak / 2 ** 20, "ru_maxrss_mb_before_loop": rss_before,
        "ru_maxrss_mb_after_loop": rss_after, "mean_log_likelihood": float(np.mean(ll)),
        "loadavg_start": la_start, "loadavg_after_loop": la_loop, "loadavg_end": la_end,
    }
    print("\nResults:")
    C.print_table(["quantity", "value"], [
        ["digits x importance samples", f"{n} x {K} (batches of {B}; {n_chunks} chunks per batch)"],
        ["wall time, whole test set", f"{wall:.2f} s"],
        ["per batch: median / min / max", f"{res['per_batch_s']['median']:.3f} / {min(per_batch):.3f} / {max(per_batch):.3f} s"],
        ["throughput", f"{res['digits_per_s']:.1f} digits/s = {res['decoder_rows_per_s'] / 1e3:.0f}k decoded samples/s"],
        ["matmul work (traced)", f"{flops_total / 1e9:.1f} GFLOP -> {res['gflops']:.1f} GFLOP/s "
                                 f"= {100 * res['frac_of_f32_matmul']:.0f}% of the {peak32['n']}^3 float32 matmul "
                                 f"({peak32['gflops']:.1f} GFLOP/s)"],
        ["cpu/wall, run-queue wait/wall", f"{res['cpu_over_wall']:.2f}, {100 * res['runq_wait_over_wall']:.0f}%"],
        ["peak array memory, one call", f"{res['tracemalloc_peak_mb_one_call']:.1f} MiB (tracemalloc)"],
        ["process max RSS before / after", f"{rss_before:.0f} / {rss_after:.0f} MiB (ru_maxrss)"],
        ["mean log p(x) estimate", f"{res['mean_log_likelihood']:.2f} nats (untrained model; sanity only)"],
    ])
    if prof_top:
        one = sum(p["tottime_s"] for p in prof_top)
        print(f"\ncProfile of one batch, top 10 by tottime (ufunc time lands in its calling function):")
        C.print_table(["function", "ncalls", "tottime s"], [[p["function"], p["ncalls"], f"{p['tottime_s']:.3f}"]
                                                            for p in prof_top])
        res["cprofile_one_batch_top10"] = prof_top
    C.write_json(args.json, {"benchmark": "eval", "quick": args.quick, "args": vars(args), "blas": blas,
                             "machine": C.machine_info(), "peak_matmul": peak32, "results": res})


if __name__ == "__main__":
    main()
