# %% [markdown]
# # Tutorial 06: the conditional VAE: give the model the label, and z is left with the style
#
# A conditional VAE (`numpyvae.conditional.ConditionalVAE`) appends the one-hot label $y$ to the
# encoder's input and to the decoder's input, and bounds $\log p(x \mid y)$ instead of $\log p(x)$
# (Eq. (E8), docs/elbo.md):
#
# $$\log p(x \mid y) \ge \mathbb{E}_{q(z \mid x, y)}[\log p(x \mid z, y)]
#   - \mathrm{KL}(q(z \mid x, y) \,\Vert\, \mathcal{N}(0, I)).$$
#
# Since the decoder is told the class, the code $z$ need not say which digit it is; it is free to
# hold the style (slant, thickness, width). Decoding one $z$ with each of the ten labels draws one
# handwriting as ten digits. Every method of the model takes the labels as the keyword `y=`.
#
# Read alongside: docs/elbo.md, section "The conditional VAE", Eq. (E8); docs/importance.md,
# section 2; `numpyvae.conditional.ConditionalVAE` (`elbo_terms`, `log_likelihood`, `class_grid`,
# `encode`, `decode`), `numpyvae.conditional.one_hot`, `numpyvae.lab.plotting.plot_class_grid`,
# `numpyvae.training.train` (`y_train=`, `y_test=`).
#
# Figures (in `--out`):
# * `class_grid.png`: 8 codes $z \sim \mathcal{N}(0, I)$, one per row, decoded with every label 0 ... 9;
# * `style_transfer.png`: real test digits (left column) encoded with their own label, then decoded
#   with every label: the style of each real digit, drawn as ten digits;
# * `elbo_comparison.png`: test ELBO and test KL per epoch, conditional against unconditional.

# %%
import math
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.distributions import log_mean_exp
from numpyvae.lab.plotting import image_grid, new_figure, plot_class_grid, save_figure, show_image
from numpyvae.model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("class_grid.png", "style_transfer.png", "elbo_comparison.png")
args = setup("06_conditional_vae", quick="1000 digits, 784-32-2, 2 epochs, 20 digits for log p: same code path")
start = time.perf_counter()

# %% [markdown]
# ## 1. Train a conditional and an unconditional VAE
#
# Both have the default widths and activation, a Bernoulli likelihood, the same seed and the same
# minibatches, and a **2-D** code. Why so small: the encoder sees the label too, so nothing stops $z$
# from encoding the class anyway, and with room to spare it does. Measured with a 20-D code
# (`LATENT_DIM = 20` below): after 5 epochs the pixel spread across labels is 0.02 against 0.12
# across $z$, the label is nearly ignored; after 10 epochs every row of `class_grid.png` is still one
# and the same digit, and the ELBO gain is 2.2 nats. With a 2-D code the two spreads are about equal
# and each row runs through 0 ... 9 in one style. `--quick` trains a 784-32-2 pair for 2 epochs: a
# smoke run whose numbers mean little.

# %%
LATENT_DIM = 2
data = nv.load_dataset("mnist-mini")
x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
if args.quick:
    x_train, y_train, x_test, y_test = x_train[:1000], y_train[:1000], x_test[:500], y_test[:500]
    hidden, epochs, n_ll, K = (32,), 2, 20, 20
else:
    hidden, epochs, n_ll, K = DEFAULT_HIDDEN_DIMS, 10, 200, 200
D = x_train.shape[1]

cvae = nv.ConditionalVAE(D, 10, hidden, LATENT_DIM, likelihood="bernoulli", activation=DEFAULT_ACTIVATION,
                         seed=args.seed)
print(f"--- training {cvae!r}")
run_c = train(new_run(cvae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
              log=lambda s: print("  CVAE", s), progress=False, y_train=y_train, y_test=y_test)
vae = nv.VAE(D, hidden, LATENT_DIM, likelihood="bernoulli", activation=DEFAULT_ACTIVATION, seed=args.seed)
print(f"--- training {vae!r}")
run_u = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
              log=lambda s: print("  VAE ", s), progress=False)
h_c, h_u = run_c.history, run_u.history

# %% [markdown]
# ## 2. What is the label worth in ELBO?
#
# The difference of the two test ELBOs, split into its reconstruction and KL terms. Two latent
# numbers cannot hold both a digit's class and its style; given the class, the code can spend them
# all on style. If the conditional KL is smaller, $z$ carries less: the class no longer has to be
# encoded in it. If it is not, the code's capacity, freed from the class, went into describing the
# style better (reconstruction).

# %%
def plot_comparison(h_c, h_u, path):
    """Test ELBO (left) and test KL (right) per epoch, from the histories h_c (conditional) and
    h_u (unconditional)."""
    fig = new_figure(11, 4.0)
    ax1, ax2 = fig.subplots(1, 2)
    for h, label, color in ((h_c, "conditional VAE, bound on log p(x|y)", "tab:green"),
                            (h_u, "VAE, bound on log p(x)", "tab:blue")):
        ax1.plot(h["epoch"], h["test_elbo"], "-o", ms=4, color=color, label=label)
        ax2.plot(h["epoch"], h["test_kl"], "-o", ms=4, color=color, label=label)
    ax1.set_title("test ELBO", fontsize=10)
    ax2.set_title(r"test KL$(q\,\|\,p(z))$: what z has to encode", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per digit")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# %%
show(plot_comparison(h_c, h_u, os.path.join(args.out, "elbo_comparison.png")))
d_elbo = h_c["test_elbo"][-1] - h_u["test_elbo"][-1]
d_rec = h_c["test_rec"][-1] - h_u["test_rec"][-1]
d_kl = h_c["test_kl"][-1] - h_u["test_kl"][-1]
print(f"test ELBO ({x_test.shape[0]} digits, nats per digit): conditional {h_c['test_elbo'][-1]:.2f} "
      f"(bound on log p(x|y)), unconditional {h_u['test_elbo'][-1]:.2f} (bound on log p(x)): {d_elbo:+.2f} nats")
print(f"  split: reconstruction term {d_rec:+.2f}, minus-KL term {-d_kl:+.2f} (KL: conditional "
      f"{h_c['test_kl'][-1]:.2f}, unconditional {h_u['test_kl'][-1]:.2f})")

# %% [markdown]
# ## 3. Does the decoder listen to the label?
#
# `class_grid.png` decodes 8 prior codes with every label, `style_transfer.png` the codes
# $\mu(x, y)$ of real test digits. One number sums it up: the pixel spread of `class_grid` across the
# ten labels for one $z$, against its spread across $z$ for one label. If the first is comparable to
# the second, the label decides as much as the code, and the rows run through 0 ... 9; if it is much
# smaller, the decoder mostly ignores the label and $z$ carries the class.

# %%
def plot_style_transfer(cvae, x, y, path):
    """Row i: test digit x_i (x: (n, D), labels y (n,)), then decode(mu(x_i, y_i), c) for c = 0 ... 9."""
    mu, _ = cvae.encode(x, y=y)
    grid = cvae.class_grid(mu)                                     # (n, 10, D)
    images = np.concatenate([x[:, None, :], grid], axis=1).reshape(-1, x.shape[1])
    fig = new_figure(7.6, 0.66 * x.shape[0] + 0.9)
    ax = fig.add_subplot()
    show_image(ax, image_grid(images, cvae.n_classes + 1), 0.0, 1.0)
    ax.set_xticks(14.5 + 29 * np.arange(cvae.n_classes + 1), ["input"] + [str(c) for c in range(cvae.n_classes)])
    ax.set_xlabel("decoded with label")
    ax.set_title("style held, label varied: z = mu(x, y) of a real test digit, decoded with every label", fontsize=10)
    return save_figure(fig, path)


# %%
show(plot_class_grid(cvae, os.path.join(args.out, "class_grid.png"), np.random.default_rng(args.seed + 3),
                     n_styles=8))
pick = np.concatenate([np.flatnonzero(y_test == k)[:1] for k in (0, 2, 3, 4, 5, 7, 8, 9)])
show(plot_style_transfer(cvae, x_test[pick], y_test[pick], os.path.join(args.out, "style_transfer.png")))

grid = cvae.class_grid(np.random.default_rng(args.seed + 4).standard_normal((64, LATENT_DIM), dtype=cvae.dtype))
spread_labels, spread_z = float(grid.std(axis=1).mean()), float(grid.std(axis=0).mean())   # grid: (64, 10, D)
print(f"pixel std across the 10 labels (z fixed) {spread_labels:.3f}, across z (label fixed) {spread_z:.3f}")

# %% [markdown]
# ## 4. Importance-sampled log-likelihoods, and the label's information
#
# On the first few test digits we estimate $\log p(x \mid y)$ under the conditional model and
# $\log p(x)$ under the unconditional one by importance sampling (Eq. (I2), docs/importance.md,
# `log_likelihood`). For one exact joint model, $\log p(x \mid y) - \log p(x) = \log p(y \mid x) -
# \log p(y)$, which is at most $-\log p(y)$, about $\log 10 = 2.3$ nats: a label cannot tell you more
# about a digit than the information in the label. Comparing two separately trained models (and two
# bounds), the gap can be larger: part of it is the unconditional model paying, in fit, for having
# to encode the class in $z$.
#
# Inside the one conditional model the ceiling holds. Used as a classifier by Bayes' rule,
# $p(y \mid x) \propto p(x \mid y)\, p(y)$, with $p(x \mid y)$ importance-sampled for every label and
# $p(y)$ the class frequencies, it gives $\log p(y \mid x) - \log p(y)$. Summed over labels,
# $p(x) = \sum_y p(y)\, p(x \mid y)$ (a log-mean-exp over the labels, plus $\log 10$) is itself a
# model of $x$: a VAE with an extra ten-way discrete latent next to its two numbers. If it models $x$
# better than the unconditional VAE by more than the ceiling, most of the gap between the two ELBOs is
# that capacity, not the label's information. (Caveat: for a wrong label the encoder's
# $q(z \mid x, y)$ is a worse proposal, so its importance-sampled bound is looser, which also favours
# the true label.)

# %%
def log_p_x_given_every_label(cvae, x, K, seed):
    """Importance-sampled log p(x | c) for every class c: (B, n_classes). The same noise is used
    for every c (a fresh Generator from one seed), so the comparison across labels is not blurred
    by different draws."""
    cols = []
    for c in range(cvae.n_classes):
        y = np.full(x.shape[0], c)
        cols.append(cvae.log_likelihood(x, n_importance=K, rng=np.random.default_rng(seed), y=y).astype(np.float64))
    return np.stack(cols, axis=1)


# %%
x_ll, y_ll = x_test[:n_ll], y_test[:n_ll]
log_p_given = log_p_x_given_every_label(cvae, x_ll, K, args.seed + 100)        # (n, 10)
log_prior_y = np.log(np.bincount(y_train, minlength=10) / y_train.shape[0])     # p(y): class frequencies
log_joint = log_p_given + log_prior_y                                           # log p(x, c)
log_p_x_mix = log_mean_exp(log_joint, axis=1) + math.log(cvae.n_classes)       # log sum_c p(c) p(x|c)
log_post = log_joint - log_p_x_mix[:, None]                                     # log p(c | x)
rows = np.arange(n_ll)
log_p_true = log_p_given[rows, y_ll]
log_p_vae = vae.log_likelihood(x_ll, n_importance=K, rng=np.random.default_rng(args.seed + 100)).astype(np.float64)
accuracy = float(np.mean(np.argmax(log_post, axis=1) == y_ll))
info = log_post[rows, y_ll] - log_prior_y[y_ll]                                 # log p(y|x) - log p(y)
ceiling = float(np.mean(-log_prior_y[y_ll]))
mix_gain = float(np.mean(log_p_x_mix - log_p_vae))

print(f"importance sampling, K = {K}, first {n_ll} test digits (nats per digit):")
print(f"  log p(x|y) conditional {np.mean(log_p_true):.2f}, log p(x) unconditional {np.mean(log_p_vae):.2f}: "
      f"difference {np.mean(log_p_true - log_p_vae):+.2f} +- "
      f"{np.std(log_p_true - log_p_vae, ddof=1) / math.sqrt(n_ll):.2f}")
print(f"  ceiling for one exact model: -log p(y) = {ceiling:.2f} nats (log 10 = {math.log(10):.2f})")
print(f"  inside the conditional model: log p(x) = log sum_c p(c) p(x|c) = {np.mean(log_p_x_mix):.2f}; "
      f"log p(y|x) - log p(y) = {np.mean(info):.2f} on average, median {np.median(info):.2f}")
print(f"  that mixture over labels minus the unconditional VAE's log p(x): {mix_gain:+.2f}")
print(f"  the conditional model as a classifier, argmax_c p(x|c) p(c): {100 * accuracy:.1f}% of {n_ll} test digits")
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# A mean of $\log p(y \mid x) - \log p(y)$ well below its median means a few confident mistakes pull
# it down. An accuracy near chance (as after `--quick`'s two epochs) means too little training for
# $p(x \mid y)$ to tell the classes apart; after full training the label's information is in
# $p(x \mid y)$, and Bayes' rule gets it back.
