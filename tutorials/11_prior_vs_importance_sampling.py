"""Tutorial 11 -- estimating log p(x): z from the prior versus z from the encoder (importance sampling).

log p(x) = log E_{p(z)}[p(x|z)] (Eq. (E2), docs/elbo.md), so the most obvious estimate draws
z_k from the prior (Eq. (Q1), docs/ppca.md; numpyvae.diagnostics.log_likelihood_prior_sampling):

    log p(x) ~= log 1/K sum_k p(x | z_k),                          z_k ~ N(0, I)

Importance sampling (Eq. (I2), docs/importance.md; VAE.log_likelihood) draws them from the
encoder's q(z|x) instead and reweights:

    log p(x) ~= log 1/K sum_k p(x | z_k) p(z_k) / q(z_k | x),      z_k ~ q(z | x)

Both are unbiased for p(x) before the log, and both logs are lower bounds in expectation.
The difference is how many samples they need: about K >> 1 + r with
1 + r = E[w^2] / p(x)^2 (docs/ppca.md section 5, Eq. (Q2)). The posterior of a decoder worth
having is narrow, so almost every prior sample lands where p(x|z) is astronomically small:
1 + r grows like (1/posterior std)^Z. Importance sampling only pays for the mismatch between
q and the posterior.

Two models, the same two estimators, K = 1 .. 10^5:

1. A linear-Gaussian model (probabilistic PCA, numpyvae.ppca) fitted to mnist-mini, where
   log p(x) is known exactly (ppca_log_likelihood). Its exact posterior would make every
   importance weight equal to p(x) (K = 1 is exact, checked below), so the importance sampler
   gets a realistically imperfect encoder: the exact one with its mean shifted by 0.6 posterior
   standard deviations in every dimension (about what tutorial 08 measured for a trained
   encoder), for which 1 + r = exp(Z * 0.6^2).
2. A nonlinear VAE trained on mnist-mini, where log p(x) is unknown; the reference is the
   importance-sampled estimate with the largest K.

Printed: the mean error (or gap to the reference) in nats per digit for each K, the predicted
1 + r, and the effective sample size (sum w)^2 / sum w^2 of 1000 samples of each estimator.

Read: docs/ppca.md section 5, docs/importance.md sections 1-3; functions
numpyvae.diagnostics.log_likelihood_prior_sampling, numpyvae.model.VAE.log_likelihood,
numpyvae.ppca.ppca_fit / ppca_log_likelihood / linear_vae_from_ppca.

Run:  python tutorials/11_prior_vs_importance_sampling.py [--quick] [--out DIR] [--seed S]
"""

import argparse
import math
import os
import time

import numpy as np
from matplotlib.figure import Figure

from numpyvae.data import load_dataset
from numpyvae.diagnostics import log_likelihood_prior_sampling
from numpyvae.distributions import log_q_from_eps, log_standard_normal, reparameterize
from numpyvae.model import VAE
from numpyvae.ppca import linear_vae_from_ppca, ppca_fit, ppca_log_likelihood
from numpyvae.training import TrainConfig, new_run, train

FIGURES = ("estimates_vs_K.png", "log_weights.png")
SHIFT = 0.6     # the imperfect pPCA encoder's mean error, in posterior standard deviations


def log_weights(model, x1, K, rng, proposal):
    """The K log-weights of one datapoint x1 (1, D): log p(x|z) for z from the prior, or
    log p(x|z) + log p(z) - log q(z|x) for z from the encoder (Eq. (I1), docs/importance.md)."""
    if proposal == "prior":
        z = rng.standard_normal((K, 1, model.latent_dim)).astype(model.dtype)
        return model.log_p_x_given_z(x1, z)[:, 0]
    mu, logvar = model.encode(x1)
    eps = rng.standard_normal((K, 1, model.latent_dim)).astype(model.dtype)
    z = reparameterize(mu, logvar, eps)
    log_w = model.log_p_x_given_z(x1, z) + log_standard_normal(z) - log_q_from_eps(logvar, eps)
    return log_w[:, 0]


def ess(log_w):
    """Kong's effective sample size (sum w)^2 / sum w^2, from log-weights."""
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / np.sum(w * w))


def sweep(model, x, Ks, rng, truth, K_enc_max):
    """Mean over the digits of (truth - estimate) for each K, for both estimators (the encoder's
    only up to K_enc_max: it has long converged by then; NaN beyond)."""
    gaps = {"prior": [], "encoder": []}
    for K in Ks:
        gaps["prior"].append(float(np.mean(truth - log_likelihood_prior_sampling(model, x, K, rng))))
        gaps["encoder"].append(float(np.mean(truth - model.log_likelihood(x, n_importance=K, rng=rng)))
                               if K <= K_enc_max else float("nan"))
    return gaps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few digits, K up to 1000, tiny VAE (for tests)")
    parser.add_argument("--out", default=os.path.join("tutorial_output", "11_prior_vs_importance_sampling"),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the digits chosen, the VAE and all sampling")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    if args.quick:
        n_digits, K_max, K_enc_max, Z_lin, vae = 5, 1000, 100, 5, dict(n_train=1000, hidden=(64,), Z=5, epochs=2)
    else:
        n_digits, K_max, K_enc_max, Z_lin, vae = 10, 100_000, 10_000, 5, dict(n_train=8000, hidden=(200,), Z=10,
                                                                               epochs=15)
    Ks = [10**i for i in range(int(math.log10(K_max)) + 1)]
    ds = load_dataset("mnist-mini")
    x = ds.x_test[rng.choice(ds.x_test.shape[0], n_digits, replace=False)]

    # --- 1. linear-Gaussian model: the exact answer is known ------------------------------------
    W, b, sigma2 = ppca_fit(ds.x_train.astype(np.float64), Z_lin)
    lin = linear_vae_from_ppca(W, b, sigma2)                 # encoder = the exact posterior
    x64 = x.astype(np.float64)
    exact = ppca_log_likelihood(x64, W, b, sigma2)
    err_k1 = np.max(np.abs(lin.log_likelihood(x64, n_importance=1, rng=rng) - exact))
    mu, logvar = lin.encode(x64)
    s = np.exp(0.5 * logvar)
    one_plus_r = np.prod(np.exp(mu**2 / (2 - s**2)) / (s * np.sqrt(2 - s**2)), axis=1)     # Eq. (Q2)
    lin.params["enc.mu.b"][...] += SHIFT * np.exp(0.5 * lin.params["enc.logvar.b"])        # an imperfect encoder
    gaps_lin = sweep(lin, x64, Ks, rng, exact, K_enc_max)

    print(f"1. pPCA with Z={Z_lin} on mnist-mini (sigma2={sigma2:.4f}, posterior stds {s[0].min():.3f} .. "
          f"{s[0].max():.3f}); exact log p(x) of {n_digits} test digits, mean {exact.mean():.2f} nats")
    print(f"   with the exact posterior as proposal, K=1 is exact: largest error {err_k1:.1e} nats")
    print(f"   predicted 1 + r (Eq. Q2): prior sampling, median over the digits {np.median(one_plus_r):.3g}; "
          f"encoder off by {SHIFT} std: exp(Z*{SHIFT}^2) = {math.exp(Z_lin * SHIFT**2):.3g}")
    print("   mean error log p(x) - estimate, nats per digit:")
    print("   " + "".join(f"{'K=' + str(K):>10s}" for K in Ks))
    print("   " + "".join(f"{g:10.3f}" for g in gaps_lin["prior"]) + "   z from the prior")
    print("   " + "".join(f"{g:10.3f}" if g == g else f"{'-':>10s}" for g in gaps_lin["encoder"]) + "   z from the (imperfect) encoder")
    first_p = next((K for K, g in zip(Ks, gaps_lin["prior"]) if g < 1.0), None)
    first_e = next((K for K, g in zip(Ks, gaps_lin["encoder"]) if g < 1.0), None)
    print(f"   within 1 nat of the truth: encoder from K={first_e}, prior "
          + (f"from K={first_p}: {first_p // first_e} times as many samples" if first_p else f"not even at K={Ks[-1]}"))

    # --- 2. a trained nonlinear VAE ------------------------------------------------------------------
    model = VAE(784, vae["hidden"], vae["Z"], activation="relu", seed=args.seed)
    run = new_run(model, TrainConfig(epochs=vae["epochs"], batch_size=128, lr=1e-3, seed=args.seed))
    train(run, ds.x_train[:vae["n_train"]], ds.x_test, log=lambda line: None, progress=False)
    K_ref = 10 * K_enc_max                                    # independent of the sweep's samples
    reference = model.log_likelihood(x, n_importance=K_ref, rng=rng).astype(np.float64)
    gaps_vae = sweep(model, x, Ks, rng, reference, K_enc_max)
    elbo = float(np.mean(model.elbo(x, n_samples=1000, rng=rng)))

    print(f"2. {model!r}, {vae['epochs']} epochs: reference log p(x) = importance sampling with K={K_ref}: "
          f"mean {reference.mean():.2f} nats (ELBO {elbo:.2f})")
    print("   mean gap reference - estimate, nats per digit:")
    print("   " + "".join(f"{'K=' + str(K):>10s}" for K in Ks))
    print("   " + "".join(f"{g:10.2f}" for g in gaps_vae["prior"]) + "   z from the prior")
    print("   " + "".join(f"{g:10.2f}" if g == g else f"{'-':>10s}" for g in gaps_vae["encoder"]) + "   z from the encoder")
    first = next((K for K, g in zip(Ks, gaps_vae["encoder"]) if g < 1.0), None)
    enc_text = (f"the encoder is within 1 nat of the reference from K={first}" if first else
                f"the encoder is not within 1 nat for K <= {K_enc_max} (an undertrained model)")
    print(f"   {enc_text}; the prior is still {gaps_vae['prior'][-1]:.1f} nats short at K={Ks[-1]}")

    # --- effective sample size, and the log-weights of one digit ---------------------------------
    K_w = 1000
    lw = {(name, p): log_weights(m, xx[:1], K_w, rng, p)
          for name, m, xx in (("pPCA", lin, x64), ("VAE", model, x)) for p in ("prior", "encoder")}
    print(f"effective sample size of {K_w} samples for one digit (the larger, the better):")
    for (name, p), v in lw.items():
        print(f"   {name:4s} z from the {p:7s}: ESS {ess(v):8.1f}; log-weights spread over "
              f"{np.ptp(v):7.1f} nats (max - min)")

    # --- figures -------------------------------------------------------------------------------------
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    panels = ((f"pPCA (Z={Z_lin}): error to the exact log p(x)", gaps_lin),
              (f"VAE (Z={vae['Z']}): gap to IS with K={K_ref:.0e}", gaps_vae))
    for i, (title, gaps) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, colour, label in (("prior", "tab:red", "z from the prior (Q1)"),
                                   ("encoder", "tab:blue", "z from the encoder q(z|x) (I2)")):
            g = np.array(gaps[key])
            keep = np.isfinite(g)
            ax.plot(np.array(Ks)[keep], np.maximum(np.abs(g[keep]), 1e-3), "o-", color=colour, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="0.5", ls=":", lw=1)
        ax.set_xlabel("number of samples K")
        ax.set_ylabel(f"|mean over {n_digits} digits of (log p(x) - estimate)|  [nats]")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower left", fontsize=9)
    fig.suptitle("How many samples: prior sampling versus importance sampling (dotted: 1 nat)")
    fig.savefig(os.path.join(args.out, FIGURES[0]), dpi=100)

    fig = Figure(figsize=(11, 4.3), layout="constrained")
    n = np.arange(1, K_w + 1)
    for i, name in enumerate(("pPCA", "VAE")):
        ax = fig.add_subplot(1, 2, i + 1)
        for p, colour in (("prior", "tab:red"), ("encoder", "tab:blue")):
            v = np.sort(lw[(name, p)])[::-1]
            w = np.exp(v - v[0])
            ax.plot(n, np.cumsum(w) / w.sum(), color=colour, lw=2,
                    label=f"z from the {p}: ESS {ess(v):.1f}, log-weights span {np.ptp(v):.0f} nats")
        ax.plot(n, n / K_w, color="0.6", ls=":", label="all weights equal (ESS = K)")
        ax.set_xscale("log")
        ax.set_xlabel("the n largest of the weights")
        ax.set_ylabel("their share of the sum of all weights")
        ax.set_title(f"{name}: {K_w} weights of one test digit", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", fontsize=8)
    fig.suptitle("Prior samples: the largest weight is the whole estimate; encoder samples share the work")
    fig.savefig(os.path.join(args.out, FIGURES[1]), dpi=100)
    print(f"figures: {', '.join(os.path.join(args.out, f) for f in FIGURES)}   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
