#!/usr/bin/env python
"""Before/after: the training step of the working tree against the package at another git revision.

Machine speed drifts by 10-30 % over minutes on a shared machine, so two separate benchmark runs
cannot show a 10 % change. This script loads both versions into one process (the other revision's
``numpyvae/`` is extracted with ``git archive`` into a temporary folder and imported as
``numpyvae_rev``) and times them in alternating blocks, so drift hits both alike. It reports the
median ms/step of each and the median and range of the per-pair ratio (rev time / current time:
> 1 means the working tree is faster). It also checks that both give the same float64 loss and
gradients for the same parameters and noise (differences at rounding level are expected when the
arithmetic was reordered).

The step is the default architecture (784-400-20 ReLU, Bernoulli, batch 128, L = 1, Adam 1e-3) on
mnist-mini, float32, as in bench_train_step.py. Needs git and the repository's history.

    python benchmarks/bench_compare.py --rev e92da9f [--threads 1] [--blocks 15] [--steps 30]
"""

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True, help="git revision to compare against (e.g. a commit hash, HEAD~1)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads, set before numpy loads (default 1)")
    p.add_argument("--blocks", type=int, default=15, help="timed blocks per version (default 15)")
    p.add_argument("--steps", type=int, default=30, help="steps per block (default 30)")
    return p.parse_args(argv)


def extract_package(rev, dest):
    """Write the package at ``rev`` into dest/numpyvae_rev (its imports are relative, so it imports
    under the new name without touching the installed numpyvae)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", rev, "numpyvae"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    os.rename(os.path.join(dest, "numpyvae"), os.path.join(dest, "numpyvae_rev"))


class Step:
    def __init__(self, pkg, batches, np):
        self.model = pkg.VAE(C.INPUT_DIM, (400,), 20, likelihood="bernoulli", activation="relu",
                             seed=0, dtype=np.float32)
        self.opt = pkg.Adam(self.model.params, lr=1e-3)
        self.rng = np.random.default_rng(1)
        self.batches, self.i = batches, 0

    def __call__(self, n):
        for _ in range(n):
            x = self.batches[self.i % len(self.batches)]
            self.i += 1
            _, grads = self.model.loss_and_grads(x, rng=self.rng)
            self.opt.step(grads)


def main(argv=None):
    args = parse_args(argv)
    C.set_thread_env(args.threads)
    import numpy as np
    import numpyvae

    C.report_load("start")
    with tempfile.TemporaryDirectory() as tmp:
        extract_package(args.rev, tmp)
        sys.path.insert(0, tmp)
        rev_pkg = importlib.import_module("numpyvae_rev")
        batches = C.make_batches("float32", 128)
        steps = {"rev": Step(rev_pkg, batches, np), "current": Step(numpyvae, batches, np)}
        for s in steps.values():
            s(5)                                              # warm-up
        times = {k: [] for k in steps}
        for _ in range(args.blocks):
            for name, s in steps.items():
                t0 = time.perf_counter()
                s(args.steps)
                times[name].append((time.perf_counter() - t0) / args.steps)
        ratios = sorted(a / b for a, b in zip(times["rev"], times["current"]))

        # Same objective? float64, same parameters (seed) and noise, L = 3.
        x = batches[0].astype(np.float64)
        eps = np.random.default_rng(5).standard_normal((3, x.shape[0], 20))
        m_rev = rev_pkg.VAE(C.INPUT_DIM, (400,), 20, seed=0, dtype=np.float64)
        m_cur = numpyvae.VAE(C.INPUT_DIM, (400,), 20, seed=0, dtype=np.float64)
        loss_rev, g_rev = m_rev.loss_and_grads(x, eps=eps, n_samples=3)
        loss_cur, g_cur = m_cur.loss_and_grads(x, eps=eps, n_samples=3)
        grad_diff = max(float(np.max(np.abs(g_rev[k] - g_cur[k])) / np.max(np.abs(g_rev[k]))) for k in g_rev)
    C.report_load("end", own_threads=args.threads)

    med = {k: C.median(v) * 1e3 for k, v in times.items()}
    print(f"\nT={args.threads}, {args.blocks} alternating blocks of {args.steps} steps each:")
    print(f"  {args.rev}: {med['rev']:.2f} ms/step   working tree: {med['current']:.2f} ms/step")
    print(f"  speed-up ({args.rev} time / working-tree time, per block pair): median {C.median(ratios):.3f}, "
          f"range {ratios[0]:.3f} - {ratios[-1]:.3f}")
    print(f"  float64 loss: {loss_rev!r} vs {loss_cur!r}; largest gradient difference relative to the "
          f"gradient's max-norm: {grad_diff:.1e}")


if __name__ == "__main__":
    main()
