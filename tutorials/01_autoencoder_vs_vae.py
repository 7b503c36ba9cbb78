# %% [markdown]
# # Tutorial 01: an autoencoder is not a generative model; a VAE is
#
# We train a plain autoencoder and a VAE with the same widths (the package's default
# architecture, 784-400-20 ReLU, with a Bernoulli likelihood) on mnist-mini, then decode codes
# drawn from $\mathcal{N}(0, I)$ with both decoders.
#
# * The **autoencoder** (docs/autoencoders.md, Eq. (D1)) squeezes $x$ through a code $c = f(x)$
#   and back. Nothing ties its codes to $\mathcal{N}(0, I)$: their location, scale and
#   orientation are whatever training left them, so random $\mathcal{N}(0, I)$ codes decode to
#   smudges.
# * The **VAE** (docs/elbo.md, Eq. (E5)) trains its decoder on noisy codes $z \sim q(z \mid x)$ and
#   pulls their mixture, the aggregate posterior, towards $\mathcal{N}(0, I)$ with the KL term.
#   Random prior codes land where its decoder was trained, and decode to (blurry) digits.
#
# Read alongside: docs/autoencoders.md, sections 1 and 5, and the functions
# `numpyvae.autoencoder.Autoencoder.loss_and_grads`, `numpyvae.lab.autoencoders.train_autoencoder`,
# `fit_code_gaussian`, `aggregate_posterior_gaussian`, `prior_mismatch`, `plot_random_codes`
# (all in `numpyvae.lab.autoencoders`), `numpyvae.model.VAE.elbo_terms`, `numpyvae.training.train`.
#
# Figures (in `--out`):
# * `random_codes.png`: 32 codes $z \sim \mathcal{N}(0, I)$ through each decoder, plus the
#   autoencoder on codes from the Gaussian fitted to its own codes (a fairer try);
# * `reconstructions.png`: test digits, the autoencoder's and the VAE's reconstructions;
# * `code_marginals.png`: per code dimension, the spread of the training codes (autoencoder) and
#   of the aggregate posterior (VAE) against the $\mathcal{N}(0, 1)$ band.

# %%
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.autoencoder import Autoencoder
from numpyvae.lab.autoencoders import (aggregate_posterior_gaussian, fit_code_gaussian, mean_reconstruction_loss,
                                       plot_random_codes, prior_mismatch, train_autoencoder, vae_reconstruction_loss)
from numpyvae.lab.diagnostics import encode_all
from numpyvae.lab.plotting import image_grid, new_figure, save_figure, show_image
from numpyvae.model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("random_codes.png", "reconstructions.png", "code_marginals.png")
args = setup("01_autoencoder_vs_vae", quick="1000 digits, 784-32-8, 2 epochs: same code path, seconds")
start = time.perf_counter()

# %% [markdown]
# ## 1. Data and sizes
#
# The full run uses the default architecture (`DEFAULT_HIDDEN_DIMS`, `DEFAULT_LATENT_DIM`,
# `DEFAULT_ACTIVATION`) for both models and trains each for 10 epochs. `--quick` runs the same
# code on a tiny model and 1000 digits: a smoke test whose numbers mean little.

# %%
data = nv.load_dataset("mnist-mini")
x_train, x_test = data.x_train, data.x_test
if args.quick:
    x_train, x_test = x_train[:1000], x_test[:500]
    hidden, code_dim, epochs = (32,), 8, 2
else:
    hidden, code_dim, epochs = DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM, 10
D = x_train.shape[1]
print(f"{x_train.shape[0]} training / {x_test.shape[0]} test digits of {D} pixels; "
      f"{D}-{'-'.join(map(str, hidden))}-{code_dim}, {epochs} epochs")

# %% [markdown]
# ## 2. Train both models
#
# The autoencoder minimises $-\log p(x \mid g(f(x)))$, Eq. (D1), docs/autoencoders.md, with
# minibatch Adam. The VAE, with the same widths, maximises the ELBO, Eq. (E5), docs/elbo.md: a
# reconstruction term from one noisy code $z \sim q(z \mid x)$, minus $\mathrm{KL}(q(z \mid x) \Vert
# \mathcal{N}(0, I))$. Both logs report nats per digit on the test set.

# %%
ae = Autoencoder(D, hidden, code_dim, activation=DEFAULT_ACTIVATION, loss="bernoulli", seed=args.seed)
print(f"--- training {ae!r}")
train_autoencoder(ae, x_train, epochs, seed=args.seed, x_test=x_test, log=lambda s: print("  AE ", s))

vae = nv.VAE(D, hidden, code_dim, likelihood="bernoulli", activation=DEFAULT_ACTIVATION, seed=args.seed)
print(f"--- training {vae!r}")
run = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
            log=lambda s: print("  VAE", s), progress=False)

# %% [markdown]
# ## 3. Reconstruction: the autoencoder has the easier job
#
# Both are scored on the same quantity, the test loss $-\log p(x \mid \text{decoder}(\text{code}(x)))$
# in nats per digit: the autoencoder at its code $c = f(x)$ (`mean_reconstruction_loss`), the VAE
# at its posterior mean $z = \mu(x)$ (`vae_reconstruction_loss`). Expect the autoencoder to win:
# it pays no KL and never sees noisy codes. The VAE has something the autoencoder lacks, though:
# its test ELBO is a lower bound on $\log p(x)$.

# %%
ae_loss = mean_reconstruction_loss(ae, x_test)
vae_loss = vae_reconstruction_loss(vae, x_test)
print(f"test reconstruction loss, -log p(x | decoder(code(x))):  autoencoder {ae_loss:7.2f} nats, "
      f"VAE (at mu) {vae_loss:7.2f} nats")
better = "autoencoder" if ae_loss < vae_loss else "VAE"
print(f"  -> the {better} reconstructs better by {abs(vae_loss - ae_loss):.2f} nats per digit")
print(f"VAE test ELBO {run.history['test_elbo'][-1]:.2f} nats (rec {run.history['test_rec'][-1]:.2f}, "
      f"KL {run.history['test_kl'][-1]:.2f})")

# %% [markdown]
# If the VAE wins here, the models are too little trained for the autoencoder's advantage to show
# (typical of `--quick`).

# %% [markdown]
# ## 4. How far is $\mathcal{N}(0, I)$ from the codes each decoder was trained on?
#
# Fit a Gaussian $\mathcal{N}(m, S)$ to each decoder's training codes: for the autoencoder, the mean
# and covariance of its codes $c_n = f(x_n)$ (Eq. (D6), docs/autoencoders.md); for the VAE, those of
# its aggregate posterior $q(z) = \frac{1}{N}\sum_n q(z \mid x_n)$, whose covariance is the spread of
# the posterior means plus the average posterior variance (Eq. (D7), docs/autoencoders.md). Then
# measure the prior mismatch $\mathrm{KL}(\mathcal{N}(0, I) \Vert \mathcal{N}(m, S))$, Eq. (D8),
# docs/autoencoders.md: zero only when $m = 0$ and $S = I$, large when random prior codes fall
# where the codes of real digits are rare.

# %%
ae_codes = encode_all(ae, x_train)                                  # c = f(x), (N, Z)
ae_m, ae_S = fit_code_gaussian(ae_codes)                            # Eq. (D6), docs/autoencoders.md
vae_m, vae_S = aggregate_posterior_gaussian(vae, x_train)           # Eq. (D7), docs/autoencoders.md
ae_mismatch, vae_mismatch = prior_mismatch(ae_m, ae_S), prior_mismatch(vae_m, vae_S)   # Eq. (D8)
ae_eig, vae_eig = np.linalg.eigvalsh(ae_S), np.linalg.eigvalsh(vae_S)
print(f"prior mismatch KL(N(0,I) || N(m,S)):  autoencoder {ae_mismatch:8.2f} nats,  VAE {vae_mismatch:6.2f} nats"
      f"  (ratio {ae_mismatch / max(vae_mismatch, 1e-12):.0f}x)")
print(f"code mean |m|: autoencoder {np.linalg.norm(ae_m):.2f}, VAE {np.linalg.norm(vae_m):.2f} (prior: 0)")
print(f"code covariance eigenvalues: autoencoder {ae_eig.min():.3f} .. {ae_eig.max():.2f}, "
      f"VAE {vae_eig.min():.3f} .. {vae_eig.max():.2f} (prior: all 1)")

# %% [markdown]
# The autoencoder's code cloud has an arbitrary location, scale and orientation (any invertible
# linear map of the codes can be undone by the decoder's first layer); the VAE's is close to the
# prior. The mismatch sees only two moments, though: codes in ten separate clusters could score
# zero and still decode badly between the clusters.

# %% [markdown]
# ## 5. Decode random codes
#
# `plot_random_codes` decodes 32 codes $z \sim \mathcal{N}(0, I)$ with each decoder, and a third
# panel of autoencoder codes drawn from its own fitted $\mathcal{N}(m, S)$: a fairer try, which puts
# the codes where the decoder has seen some (it makes (D8) zero by construction). Expect smudges
# from the autoencoder on prior codes, blurry digits from the VAE, and sharp strokes but many
# broken shapes from the fitted Gaussian: the codes of real digits do not fill their Gaussian, and
# the autoencoder's decoder was never trained on the gaps between them. The VAE's was, partly: its
# training codes are noisy samples whose spread covers the gaps.

# %%
show(plot_random_codes(ae, vae, os.path.join(args.out, "random_codes.png"), np.random.default_rng(args.seed + 20),
                       n=32, x_train=x_train))

# %% [markdown]
# ## 6. Reconstructions and code marginals
#
# Two more figures: the reconstructions whose losses section 3 printed, and, dimension by
# dimension, where each decoder's training codes lie: the autoencoder's codes $c = f(x)$, and
# samples $z = \mu(x) + \sigma(x)\,\epsilon$ of the VAE's aggregate posterior, each against the
# central 95% of $\mathcal{N}(0, 1)$.

# %%
def plot_reconstructions(x, rows, path, n=12):
    """Test digits x (N, D) on top, then one row per (images (N, D), title) in rows."""
    fig = new_figure(0.62 * n + 0.4, 1.0 + 0.75 * (len(rows) + 1))
    axes = fig.subplots(len(rows) + 1, 1)
    for ax, (images, title) in zip(axes, [(x[:n], "test digits")] + rows):
        show_image(ax, image_grid(images[:n], n), 0.0, 1.0)
        ax.set_title(title, fontsize=10)
    fig.suptitle("reconstructions (decoded means)")
    return save_figure(fig, path)


def plot_code_marginals(ae_codes, vae_codes, path):
    """Box plots of every code dimension of ae_codes and vae_codes (each (N, Z)), each against
    the central 95% of N(0, 1)."""
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    titles = ("autoencoder: codes $c = f(x)$ of the training digits",
              "VAE: samples of the aggregate posterior $q(z)$")
    for ax, codes, title in zip(axes, (ae_codes, vae_codes), titles):
        ax.axhspan(-1.96, 1.96, color="tab:green", alpha=0.15, label="central 95% of N(0, 1)")
        ax.axhline(0.0, color="tab:green", lw=0.8)
        ax.boxplot(codes, whis=(2.5, 97.5), showfliers=False, widths=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("code dimension")
        ax.set_xticks(np.arange(1, codes.shape[1] + 1), [str(j) for j in range(codes.shape[1])], fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("value (box: quartiles, whiskers: 2.5% / 97.5%)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("where each decoder's training codes lie, dimension by dimension")
    return save_figure(fig, path)


# %%
rows = [(ae.reconstruct(x_test[:12]), f"autoencoder ({ae_loss:.1f} nats per digit)"),
        (vae.reconstruct(x_test[:12]), f"VAE at the posterior mean ({vae_loss:.1f} nats)")]
show(plot_reconstructions(x_test, rows, os.path.join(args.out, "reconstructions.png")))

mu, logvar = encode_all(vae, x_train)
rng = np.random.default_rng(args.seed + 10)
vae_codes = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=vae.dtype)   # z ~ q(z), (N, Z)
show(plot_code_marginals(ae_codes, vae_codes, os.path.join(args.out, "code_marginals.png")))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
