#!/usr/bin/env python
"""Training steps on a quiet machine and beside a busy process: which threading collapses.

Three settings, each in a fresh Python process (the BLAS thread count is fixed when numpy loads):
  blas-1   OPENBLAS_NUM_THREADS=1, numpyvae on one thread: everything on one core
  blas-T   OPENBLAS_NUM_THREADS=T, numpyvae on one thread (the library's default when nobody sets
           anything: BLAS spreads the products, numpyvae.parallel stays out of its way)
  own-T    OPENBLAS_NUM_THREADS=1, NUMPYVAE_NUM_THREADS=T: numpyvae splits its large products and
           elementwise work itself (what the command line does)
for two steps: the default (784-400-20 ReLU, batch 128, ELBO, L = 1) and the IWAE k = 50 step
(784-200-200-50 tanh, batch 100), float32, each with Adam. Each setting runs ``--blocks`` blocks of
about half a second, once with the machine as it is and once beside one busy process (a Python loop
that holds one core). Printed: the median and the slowest block, ms per step.

    python benchmarks/bench_load.py [--threads 2] [--blocks 8] [--quick]
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  (no numpy import at module level)

STEPS = ("default", "iwae")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="T of blas-T and own-T (default 2)")
    p.add_argument("--blocks", type=int, default=None, help="timed blocks per setting (default 8; quick 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument("--worker", nargs=3, metavar=("STEP", "BLOCKS", "SECONDS"), help=argparse.SUPPRESS)
    p.add_argument("--json", default=os.path.join(C.RESULTS_DIR, "load.json"))
    a = p.parse_args(argv)
    a.blocks = a.blocks or (2 if a.quick else 8)
    return a


def worker(step_name, blocks, seconds):
    """Time ``blocks`` blocks of the step in this process; print one JSON line."""
    import numpy as np
    import numpyvae as nv
    if step_name == "default":
        model, batch = nv.VAE(784, (400,), 20, activation="relu", seed=0, dtype=np.float32), 128

        def loss_and_grads(x, rng):
            return model.loss_and_grads(x, rng=rng)
    else:
        model, batch = nv.VAE(784, (200, 200), 50, activation="tanh", seed=0, dtype=np.float32), 100

        def loss_and_grads(x, rng):
            return model.iwae_loss_and_grads(x, k=50, rng=rng)
    opt = nv.Adam(model.params, lr=1e-3)
    x = nv.load_dataset("mnist-mini").x_train[:batch].astype(np.float32)
    rng = np.random.default_rng(0)

    def steps(n):
        for _ in range(n):
            opt.step(loss_and_grads(x, rng)[1])

    steps(3)
    t0 = time.perf_counter()
    steps(1)
    n = max(2, int(seconds / (time.perf_counter() - t0)))
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        steps(n)
        times.append((time.perf_counter() - t0) / n * 1e3)
    print(json.dumps({"ms": times, "own_threads": nv.parallel.own_threads(), "blas": nv.parallel.blas_threads()}))


def run_setting(step, setting, threads, blocks, seconds):
    env = dict(os.environ)
    blas, own = {"blas-1": (1, 1), "blas-T": (threads, 1), "own-T": (1, threads)}[setting]
    C.set_thread_env(blas, env)
    env["NUMPYVAE_NUM_THREADS"] = str(own)
    out = subprocess.run([sys.executable, __file__, "--worker", step, str(blocks), str(seconds)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), float(args.worker[2]))
        return
    seconds = 0.2 if args.quick else 0.5
    C.report_load("start")
    rows, result = [], {"threads": args.threads, "machine": C.machine_info(), "runs": []}
    for busy in (False, True):
        competitor = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None)
        try:
            time.sleep(1 if busy else 0)
            for step in STEPS:
                for setting in ("blas-1", "blas-T", "own-T"):
                    r = run_setting(step, setting, args.threads, args.blocks, seconds)
                    label = setting.replace("T", str(args.threads))
                    rows.append([step, label, "busy" if busy else "as is", C.median(r["ms"]), max(r["ms"]),
                                 f"{os.getloadavg()[0]:.1f}"])
                    result["runs"].append({"step": step, "setting": label, "busy": busy, **r})
                    print(f"  {step:8s} {label:7s} {'beside a busy process' if busy else 'as is':22s} "
                          f"median {C.median(r['ms']):7.1f} ms/step, slowest block {max(r['ms']):7.1f}", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    C.print_table(["step", "setting", "machine", "median ms/step", "slowest block", "load 1 min"], rows)
    C.write_json(args.json, result)


if __name__ == "__main__":
    main()
