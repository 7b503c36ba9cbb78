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

The identity check runs every training path in float64 with the same parameters and noise in both
versions: the ELBO step (reparam; score without and with a leave-one-out or EMA baseline; blocked;
STL), the IWAE step, the full-covariance posterior, the conditional VAE (ELBO and IWAE), the
learned-variance Gaussian, and the ELBO, log-likelihood and posterior-gradient evaluations. For
each it prints whether loss and gradients are bit-identical, and else the largest difference
relative to the gradient's max-norm. ``--identity-only`` skips the timing.

    python benchmarks/bench_compare.py --rev e92da9f [--threads 1] [--blocks 15] [--steps 30] [--identity-only]
"""

import inspect

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
    p.add_argument("--identity-only", action="store_true", help="only compare the float64 results of every path")
    p.add_argument("--own-threads", type=int, default=None,
                   help="time the working tree as the command line runs it: BLAS on one thread and numpyvae on "
                        "this many threads of its own (numpyvae.parallel), the revision with BLAS on --threads; "
                        "set per block at run time. Default: both with BLAS on --threads (numpyvae then uses "
                        "threads of its own only when --threads is 1)")
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


def _labels_kw(model, y):
    """How a version's conditional model takes labels: y= (keyword) or positionally after x."""
    params = inspect.signature(model.loss_and_grads).parameters
    return ((), {"y": y}) if "y" in params and params["y"].kind is inspect.Parameter.KEYWORD_ONLY else ((y,), {})


def _baseline(pkg, name):
    """A baseline of a version: the string "loo" before baselines were objects, else the object."""
    est = pkg.estimators
    if name == "loo":
        return est.LeaveOneOutBaseline() if hasattr(est, "LeaveOneOutBaseline") else "loo"
    return est.EMABaseline()


def identity_cases(np):
    """(name, build(pkg) -> model, run(model, pkg) -> (loss, grads dict)) for every training path."""
    D, Z, B = 784, 20, 32
    rng = np.random.default_rng(5)
    x = (rng.random((B, D)) < 0.3).astype(np.float64)
    y = rng.integers(0, 10, B)
    eps3, eps5 = rng.standard_normal((3, B, Z)), rng.standard_normal((5, B, Z))
    arch = dict(hidden_dims=(64,), latent_dim=Z, activation="relu", seed=0, dtype=np.float64)

    def vae(**kw):
        return lambda pkg: pkg.VAE(D, **{**arch, **kw})

    def elbo_step(**kw):
        return lambda m, pkg: m.loss_and_grads(x, eps=eps3, n_samples=3, **kw)

    def baseline_step(name):
        def run(m, pkg):
            b = _baseline(pkg, name)
            m.loss_and_grads(x, eps=eps3, n_samples=3, estimator="score", baseline=b)   # the baseline learns once
            return m.loss_and_grads(x, eps=eps3, n_samples=3, estimator="score", baseline=b)
        return run

    def conditional(m, pkg, iwae=False):
        args, kw = _labels_kw(m, y)
        if iwae:
            return m.iwae_loss_and_grads(x, *args, k=5, eps=eps5, **kw)
        return m.loss_and_grads(x, *args, eps=eps3, n_samples=3, **kw)

    def evaluations(m, pkg):
        terms = m.elbo_terms(x, eps=eps3, n_samples=3)
        ll = m.log_likelihood(x[:4], n_importance=300, rng=np.random.default_rng(9))
        d_mu, d_logvar = m.posterior_grads(x, eps=eps3, n_samples=3, estimator="score")
        return float(np.sum(terms["elbo"])), {"rec": terms["rec"], "kl": terms["kl"], "ll": ll,
                                              "d_mu": d_mu, "d_logvar": d_logvar}

    return [
        ("ELBO reparam", vae(), elbo_step()),
        ("ELBO reparam, beta 0.3", vae(), elbo_step(beta=0.3)),
        ("ELBO score", vae(), elbo_step(estimator="score")),
        ("ELBO score + leave-one-out", vae(), baseline_step("loo")),
        ("ELBO score + EMA", vae(), baseline_step("ema")),
        ("ELBO blocked", vae(), elbo_step(estimator="blocked")),
        ("ELBO stl", vae(), elbo_step(estimator="stl")),
        ("IWAE k=5", vae(), lambda m, pkg: m.iwae_loss_and_grads(x, k=5, eps=eps5)),
        ("full covariance", vae(posterior="full"), elbo_step()),
        ("full covariance IWAE", vae(posterior="full"), lambda m, pkg: m.iwae_loss_and_grads(x, k=5, eps=eps5)),
        ("gaussian-learned", vae(likelihood="gaussian-learned"), elbo_step()),
        ("conditional", lambda pkg: pkg.ConditionalVAE(D, 10, **arch), conditional),
        ("conditional IWAE", lambda pkg: pkg.ConditionalVAE(D, 10, **arch),
         lambda m, pkg: conditional(m, pkg, iwae=True)),
        ("elbo_terms, log_likelihood, posterior_grads", vae(), evaluations),
    ]


def identity_report(rev_pkg, cur_pkg, np):
    """One line per path: bit-identical, or the largest relative difference."""
    lines = []
    for name, build, run in identity_cases(np):
        (loss_a, g_a), (loss_b, g_b) = run(build(rev_pkg), rev_pkg), run(build(cur_pkg), cur_pkg)
        same = loss_a == loss_b and g_a.keys() == g_b.keys() and all(np.array_equal(g_a[k], g_b[k]) for k in g_a)
        if same:
            lines.append(f"  {name:<45s} bit-identical (loss {loss_a!r})")
        else:
            diff = max(float(np.max(np.abs(g_a[k] - g_b[k])) / max(np.max(np.abs(g_a[k])), 1e-300))
                       for k in g_a if k in g_b)
            lines.append(f"  {name:<45s} DIFFERS: loss {loss_a!r} vs {loss_b!r}, largest gradient difference "
                         f"{diff:.1e} of the max-norm")
    return lines


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
        print(f"float64 results, {args.rev} against the working tree:")
        print("\n".join(identity_report(rev_pkg, numpyvae, np)))
        if args.identity_only:
            return
        batches = C.make_batches("float32", 128)
        steps = {"rev": Step(rev_pkg, batches, np), "current": Step(numpyvae, batches, np)}
        for s in steps.values():
            s(5)                                              # warm-up
        blas = {"rev": args.threads, "current": 1 if args.own_threads else args.threads}
        if args.own_threads:
            numpyvae.parallel.set_num_threads(args.own_threads)
        times = {k: [] for k in steps}
        for _ in range(args.blocks):
            for name, s in steps.items():
                if args.own_threads and not numpyvae.parallel.set_blas_threads(blas[name]):
                    raise SystemExit("--own-threads needs OpenBLAS (numpyvae.parallel.set_blas_threads)")
                s(2)                                          # BLAS threads settle after a change
                t0 = time.perf_counter()
                s(args.steps)
                times[name].append((time.perf_counter() - t0) / args.steps)
        ratios = sorted(a / b for a, b in zip(times["rev"], times["current"]))
    C.report_load("end", own_threads=args.threads)

    med = {k: C.median(v) * 1e3 for k, v in times.items()}
    print(f"\nT={args.threads}" + (f" (working tree: BLAS 1, numpyvae's own threads {args.own_threads})"
                                     if args.own_threads else f", numpyvae's own threads: {numpyvae.parallel.own_threads()}")
          + f", {args.blocks} alternating blocks of {args.steps} steps each:")
    print(f"  {args.rev}: {med['rev']:.2f} ms/step   working tree: {med['current']:.2f} ms/step")
    print(f"  speed-up ({args.rev} time / working-tree time, per block pair): median {C.median(ratios):.3f}, "
          f"range {ratios[0]:.3f} - {ratios[-1]:.3f}")


if __name__ == "__main__":
    main()
