# %% [markdown]
# # Tutorial 11: estimating $\log p(x)$, $z$ from the prior versus $z$ from the encoder (importance sampling)
#
# $\log p(x) = \log \mathbb{E}_{p(z)}[p(x|z)]$ (Eq. (E2), docs/elbo.md), so the most obvious estimate
# draws $z_k$ from the prior (Eq. (Q1), docs/ppca.md; `numpyvae.lab.diagnostics.log_likelihood_prior_sampling`):
#
# $$\log p(x) \approx \log \frac{1}{K} \sum_k p(x | z_k), \qquad z_k \sim \mathcal{N}(0, I).$$
#
# Importance sampling (Eq. (I2), docs/importance.md; `VAE.log_likelihood`) draws them from the
# encoder's $q(z|x)$ instead and reweights:
#
# $$\log p(x) \approx \log \frac{1}{K} \sum_k \frac{p(x | z_k)\, p(z_k)}{q(z_k | x)}, \qquad z_k \sim q(z | x).$$
#
# Both are unbiased for $p(x)$ before the log, and both logs are lower bounds in expectation. The
# difference is how many samples they need: about $K \gg 1 + r$ with
# $1 + r = \mathbb{E}[w^2] / p(x)^2$ (docs/ppca.md section 5, Eq. (Q2)). The posterior of a decoder
# worth having is narrow, so almost every prior sample lands where $p(x|z)$ is astronomically small:
# $1 + r$ grows like $(1/\text{posterior std})^Z$. Importance sampling only pays for the mismatch
# between $q$ and the posterior.
#
# Two models, the same two estimators, $K = 1 \ldots 10^5$: a linear-Gaussian model whose
# $\log p(x)$ is known exactly, and a trained nonlinear VAE.
#
# Read: docs/ppca.md section 5, docs/importance.md sections 1-3. Functions:
# `numpyvae.lab.diagnostics.log_likelihood_prior_sampling`, `numpyvae.model.VAE.log_likelihood`,
# `VAE.iwae_bound`, `numpyvae.ppca.ppca_fit` / `ppca_log_likelihood` / `linear_vae_from_ppca`.
#
# Figures (in `--out`):
# * `estimates_vs_K.png`: the error of both estimators against $K$, for both models;
# * `log_weights.png`: how the sum of 1000 weights of one digit is shared among them.

# %%
import math
import os
import time

import numpy as np

from numpyvae.data import load_dataset
from numpyvae.distributions import (
    log_mean_exp, log_q_from_eps, log_standard_normal, normalized_importance_weights, reparameterize,
)
from numpyvae.lab.diagnostics import log_likelihood_prior_sampling
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.model import VAE
from numpyvae.ppca import linear_vae_from_ppca, ppca_fit, ppca_log_likelihood
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("estimates_vs_K.png", "log_weights.png")
args = setup("11_prior_vs_importance_sampling", quick="5 digits, K up to 1000, 784-64-5 for 2 epochs: seconds")
rng = np.random.default_rng(args.seed)
start = time.perf_counter()
SHIFT = 0.6     # the imperfect pPCA encoder's mean error, in posterior standard deviations

# K_enc_max: importance sampling stops there (it has long converged); Z_lin: pPCA's latent dimension.
if args.quick:
    n_digits, K_max, K_enc_max, Z_lin, vae = 5, 1000, 100, 5, dict(n_train=1000, hidden=(64,), Z=5, epochs=2)
else:
    n_digits, K_max, K_enc_max, Z_lin, vae = 10, 100_000, 10_000, 5, dict(n_train=8000, hidden=(200,), Z=10,
                                                                           epochs=15)
Ks = [10**i for i in range(int(math.log10(K_max)) + 1)]
ds = load_dataset("mnist-mini")
x = ds.x_test[rng.choice(ds.x_test.shape[0], n_digits, replace=False)]

# %% [markdown]
# ## 1. A linear-Gaussian model: the exact answer is known
#
# Probabilistic PCA (`numpyvae.ppca`) fitted to mnist-mini, as a linear VAE whose encoder is the
# exact posterior, and whose $\log p(x)$ is known in closed form (`ppca_log_likelihood`). With the
# exact posterior as proposal every importance weight equals $p(x)$, so $K = 1$ is exact (checked).
# For prior sampling, Eq. (Q2), docs/ppca.md predicts $1 + r$ from the posterior's means $m_j$ and
# standard deviations $s_j$.
#
# That would be unfair to prior sampling, so the importance sampler gets a realistically imperfect
# encoder: the exact one with its mean shifted by 0.6 posterior standard deviations in every
# dimension (about what tutorial 08 measured for a trained encoder), for which
# $1 + r = e^{Z \cdot 0.6^2}$.

# %%
W, b, sigma2 = ppca_fit(ds.x_train.astype(np.float64), Z_lin)
lin = linear_vae_from_ppca(W, b, sigma2)                 # encoder = the exact posterior
x64 = x.astype(np.float64)
exact = ppca_log_likelihood(x64, W, b, sigma2)
err_k1 = np.max(np.abs(lin.log_likelihood(x64, n_importance=1, rng=rng) - exact))
mu, logvar = lin.encode(x64)
s = np.exp(0.5 * logvar)
one_plus_r = np.prod(np.exp(mu**2 / (2 - s**2)) / (s * np.sqrt(2 - s**2)), axis=1)     # Eq. (Q2)
lin.params["enc.mu.b"][...] += SHIFT * np.exp(0.5 * lin.params["enc.logvar.b"])        # an imperfect encoder

print(f"1. pPCA with Z={Z_lin} on mnist-mini (sigma2={sigma2:.4f}, posterior stds {s[0].min():.3f} .. "
      f"{s[0].max():.3f}); exact log p(x) of {n_digits} test digits, mean {exact.mean():.2f} nats")
print(f"   with the exact posterior as proposal, K=1 is exact: largest error {err_k1:.1e} nats")
print(f"   predicted 1 + r (Eq. Q2): prior sampling, median over the digits {np.median(one_plus_r):.3g}; "
      f"encoder off by {SHIFT} std: exp(Z*{SHIFT}^2) = {math.exp(Z_lin * SHIFT**2):.3g}")

# %% [markdown]
# ## 2. Both estimators against $K$, on the linear model
#
# The mean error $\log p(x) - \text{estimate}$ in nats per digit, for each $K$. The encoder's
# estimator stops at `K_enc_max`; by then it has long converged.

# %%
def sweep(model, x, Ks, rng, truth, K_enc_max):
    """Mean over the digits of (truth - estimate) for each K in Ks, for both estimators: {"prior": [...],
    "encoder": [...]} (the encoder's only up to K_enc_max, NaN beyond)."""
    gaps = {"prior": [], "encoder": []}
    for K in Ks:
        gaps["prior"].append(float(np.mean(truth - log_likelihood_prior_sampling(model, x, K, rng))))
        gaps["encoder"].append(float(np.mean(truth - model.log_likelihood(x, n_importance=K, rng=rng)))
                               if K <= K_enc_max else float("nan"))
    return gaps


def print_table(gaps, decimals, encoder_name):
    """The two rows of gaps, one column per K ("-" where a row has none)."""
    print("   " + "".join(f"{'K=' + str(K):>10s}" for K in Ks))
    print("   " + "".join(f"{g:10.{decimals}f}" for g in gaps["prior"]) + "   z from the prior")
    print("   " + "".join(f"{g:10.{decimals}f}" if g == g else f"{'-':>10s}" for g in gaps["encoder"])
          + f"   z from the {encoder_name}")


gaps_lin = sweep(lin, x64, Ks, rng, exact, K_enc_max)
print("   mean error log p(x) - estimate, nats per digit:")
print_table(gaps_lin, 3, "(imperfect) encoder")
first_p = next((K for K, g in zip(Ks, gaps_lin["prior"]) if g < 1.0), None)
first_e = next((K for K, g in zip(Ks, gaps_lin["encoder"]) if g < 1.0), None)
print(f"   within 1 nat of the truth: encoder from K={first_e}, prior "
      + (f"from K={first_p}: {first_p // first_e} times as many samples" if first_p else f"not even at K={Ks[-1]}"))

# %% [markdown]
# ## 3. A trained nonlinear VAE
#
# Here $\log p(x)$ is unknown; the reference is the importance-sampled estimate with 10 times the
# largest $K$ of the sweep (and its own samples). A network smaller than the default
# (`DEFAULT_HIDDEN_DIMS = (400,)`, `DEFAULT_LATENT_DIM = 20`) keeps the $10^5$ decoder passes per
# digit fast.

# %%
model = VAE(784, vae["hidden"], vae["Z"], activation="relu", seed=args.seed)
run = new_run(model, TrainConfig(epochs=vae["epochs"], batch_size=128, lr=1e-3, seed=args.seed))
train(run, ds.x_train[:vae["n_train"]], ds.x_test, log=lambda line: None, progress=False)
K_ref = 10 * K_enc_max
reference = model.log_likelihood(x, n_importance=K_ref, rng=rng).astype(np.float64)
gaps_vae = sweep(model, x, Ks, rng, reference, K_enc_max)
elbo = float(np.mean(model.elbo(x, n_samples=1000, rng=rng)))

print(f"2. {model!r}, {vae['epochs']} epochs: reference log p(x) = importance sampling with K={K_ref}: "
      f"mean {reference.mean():.2f} nats (ELBO {elbo:.2f})")
print("   mean gap reference - estimate, nats per digit:")
print_table(gaps_vae, 2, "encoder")
first = next((K for K, g in zip(Ks, gaps_vae["encoder"]) if g < 1.0), None)
enc_text = (f"the encoder is within 1 nat of the reference from K={first}" if first else
            f"the encoder is not within 1 nat for K <= {K_enc_max} (an undertrained model)")
print(f"   {enc_text}; the prior is still {gaps_vae['prior'][-1]:.1f} nats short at K={Ks[-1]}")

# %% [markdown]
# ## 4. Why: the weights of one digit
#
# Kong's effective sample size of $K$ weights, $\mathrm{ESS} = (\sum_k w_k)^2 / \sum_k w_k^2 = 1 / \sum_k \tilde w_k^2$
# with the normalised weights $\tilde w_k$, counts the samples that really contribute: $K$ when all
# weights are equal, 1 when one weight is the whole sum.
#
# The package's estimators return only $\log \frac{1}{K} \sum_k w_k$, so we write the log-weights
# out (Eq. (I1), docs/importance.md, with $\log q$ written with $\varepsilon$: Eq. (I3),
# docs/importance.md):
# $\log w_k = \log p(x | z_k) + \log p(z_k) - \log q(z_k | x)$, $z_k = \mu + \sigma \varepsilon_k$,
# and check that their log-mean-exp is the package's importance-weighted bound `VAE.iwae_bound`
# with the same $\varepsilon$. With $z$ from the prior the weights are the likelihoods $p(x|z_k)$.

# %%
def encoder_log_weights(model, x1, eps):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) of one datapoint x1 (1, D), z_k from the
    encoder's q and the noise eps (K, 1, Z): shape (K,).   Eq. (I1), docs/importance.md"""
    mu, logvar = model.encode(x1)
    z = reparameterize(mu, logvar, eps)
    return (model.log_p_x_given_z(x1, z) + log_standard_normal(z) - log_q_from_eps(logvar, eps))[:, 0]


def ess(log_w):
    """Kong's effective sample size 1 / sum_k w~_k^2, from the log-weights (K,)."""
    w = normalized_importance_weights(log_w)
    return float(1.0 / np.sum(w * w))


K_w = 1000
lw, check = {}, 0.0
for name, m, x1 in (("pPCA", lin, x64[:1]), ("VAE", model, x[:1])):
    z = rng.standard_normal((K_w, 1, m.latent_dim)).astype(m.dtype)
    lw[(name, "prior")] = m.log_p_x_given_z(x1, z)[:, 0]
    eps = rng.standard_normal((K_w, 1, m.latent_dim)).astype(m.dtype)
    lw[(name, "encoder")] = encoder_log_weights(m, x1, eps)
    check = max(check, abs(float(log_mean_exp(lw[(name, "encoder")]) - m.iwae_bound(x1, k=K_w, eps=eps)[0])))
print(f"the log-weights written out agree with VAE.iwae_bound to {check:.1e} nats")
print(f"effective sample size of {K_w} samples for one digit (the larger, the better):")
for (name, p), v in lw.items():
    print(f"   {name:4s} z from the {p:7s}: ESS {ess(v):8.1f}; log-weights spread over "
          f"{np.ptp(v):7.1f} nats (max - min)")

# %% [markdown]
# ## 5. Figure: the error against $K$
#
# Log-log axes; the dotted line is 1 nat.

# %%
fig = new_figure(11, 4.6)
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
show(save_figure(fig, os.path.join(args.out, FIGURES[0])))

# %% [markdown]
# ## 6. Figure: how the sum of the weights is shared
#
# The $n$ largest normalised weights' share of the whole sum, against $n$. With prior samples the
# largest weight is the whole estimate; encoder samples share the work.

# %%
fig = new_figure(11, 4.3)
n = np.arange(1, K_w + 1)
for i, name in enumerate(("pPCA", "VAE")):
    ax = fig.add_subplot(1, 2, i + 1)
    for p, colour in (("prior", "tab:red"), ("encoder", "tab:blue")):
        v = np.sort(lw[(name, p)])[::-1]
        ax.plot(n, np.cumsum(normalized_importance_weights(v)), color=colour, lw=2,
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
show(save_figure(fig, os.path.join(args.out, FIGURES[1])))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.0f} s)")
