# %% [markdown]
# # Tutorial 02: the two terms of the ELBO, and the gap importance sampling closes
#
# The ELBO of a datapoint is a reconstruction term minus a KL term (docs/elbo.md, Eq. (E5)):
#
# $$\mathrm{ELBO}(x) = \mathbb{E}_q[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\Vert\, \mathcal{N}(0, I)),$$
#
# estimated with $L$ reparameterized samples and the KL in closed form (Eq. (E6), docs/elbo.md; the
# KL is Eq. (K2), docs/kl.md). We train a VAE of the default architecture (784-400-20 ReLU,
# Bernoulli likelihood) on mnist-mini and watch both terms epoch by epoch. Then we measure how
# loose the bound is, by importance sampling.
#
# Read alongside: docs/elbo.md, sections 3, 5 and 6; docs/kl.md, section 2; docs/importance.md,
# sections 2-3; `numpyvae.model.VAE.elbo_terms`, `numpyvae.model.VAE.log_likelihood`,
# `numpyvae.training.train` (history keys `train_`/`test_` `elbo`, `rec`, `kl`, `test_kl_per_dim`),
# `numpyvae.lab.plotting.plot_training_curves`.
#
# Figures (in `--out`):
# * `curves.png`: ELBO, reconstruction term and KL per epoch, train and test;
# * `elbo_tradeoff.png`: the test (KL, reconstruction) pair of every epoch on lines of equal ELBO;
# * `importance_gap.png`: log p(x) estimates with K = 1 ... 1000 importance samples against the ELBO.

# %%
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.lab.plotting import new_figure, plot_training_curves, save_figure
from numpyvae.model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("curves.png", "elbo_tradeoff.png", "importance_gap.png")
args = setup("02_elbo_terms", quick="1000 digits, 784-32-8, 3 epochs, 20 test digits for the gap")
start = time.perf_counter()

# %% [markdown]
# ## 1. Train, recording both terms every epoch
#
# `train` records the ELBO and its two terms for the training set (averaged over the epoch, while
# the model changes) and for the test set (at the end of the epoch, with fixed noise). The full run
# trains the default architecture for 15 epochs; `--quick` is a smoke run of the same code on a
# tiny model, whose numbers mean little.

# %%
data = nv.load_dataset("mnist-mini")
x_train, x_test = data.x_train, data.x_test
if args.quick:
    x_train, x_test = x_train[:1000], x_test[:500]
    hidden, latent, epochs, n_gap, n_elbo = (32,), 8, 3, 20, 100
else:
    hidden, latent, epochs, n_gap, n_elbo = DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM, 15, 100, 200

vae = nv.VAE(x_train.shape[1], hidden, latent, likelihood="bernoulli", activation=DEFAULT_ACTIVATION,
             seed=args.seed)
print(f"--- training {vae!r} for {epochs} epochs on {x_train.shape[0]} digits")
run = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
            log=lambda s: print("  " + s), progress=False)
h = run.history

# %% [markdown]
# ## 2. The trade-off: KL spent, reconstruction bought
#
# The encoder spends nats of KL (its codes move away from the prior, each one telling the decoder
# more about its digit) and buys more nats of reconstruction. `elbo_tradeoff.png` plots the test
# (KL, reconstruction) pair of each epoch over dashed lines of equal ELBO = rec - KL: moving up-left
# is better.

# %%
def plot_tradeoff(history, path):
    """Test reconstruction against test KL, one point per epoch, over lines of constant ELBO."""
    kl, rec = np.asarray(history["test_kl"]), np.asarray(history["test_rec"])
    fig = new_figure(6.8, 5.0)
    ax = fig.add_subplot()
    pad_x, pad_y = 0.08 * (np.ptp(kl) + 1), 0.08 * (np.ptp(rec) + 1)
    xs = np.linspace(kl.min() - pad_x, kl.max() + pad_x, 2)
    elbos = rec - kl
    for level in np.linspace(elbos.min(), elbos.max(), 6):
        ax.plot(xs, level + xs, color="grey", lw=0.7, ls="--")
        ax.annotate(f"ELBO {level:.0f}", (xs[-1], level + xs[-1]), fontsize=7, color="grey",
                    ha="right", va="bottom")
    ax.plot(kl, rec, "-o", color="tab:blue", ms=4)
    last = len(kl) - 1
    for i in sorted({0, 1, 2, len(kl) // 2, last}):
        if i < len(kl):
            # The last epochs bunch up at the top right: their labels point in from the left.
            offset = (-75, 14) if i == last and last > 2 else (-75, -4) if i == len(kl) // 2 and last > 4 else (6, -10)
            ax.annotate(f"epoch {history['epoch'][i]}", (kl[i], rec[i]), textcoords="offset points",
                        xytext=offset, fontsize=8,
                        arrowprops=dict(arrowstyle="-", lw=0.6, color="black") if offset[0] < 0 else None)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(rec.min() - pad_y, rec.max() + pad_y)
    ax.set_xlabel(r"test KL$(q(z|x)\,\|\,p(z))$, nats per digit")
    ax.set_ylabel(r"test reconstruction $\mathbb{E}_q[\log p(x|z)]$, nats per digit")
    ax.set_title("the encoder spends KL to buy reconstruction\n(dashed: equal ELBO = rec - KL; up-left is better)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# %%
show(plot_training_curves(h, os.path.join(args.out, "curves.png")))
show(plot_tradeoff(h, os.path.join(args.out, "elbo_tradeoff.png")))

e0, e1 = 0, len(h["epoch"]) - 1
print(f"test set ({x_test.shape[0]} digits), nats per digit")
print(f"{'epoch':>5} {'ELBO':>9} {'rec':>9} {'KL':>7}")
for i in sorted({e0, 1, 2, (e0 + e1) // 2, e1}):
    if i <= e1:
        print(f"{h['epoch'][i]:5d} {h['test_elbo'][i]:9.2f} {h['test_rec'][i]:9.2f} {h['test_kl'][i]:7.2f}")
d_rec = h["test_rec"][e1] - h["test_rec"][e0]
d_kl = h["test_kl"][e1] - h["test_kl"][e0]
print(f"epoch {h['epoch'][e0]} -> {h['epoch'][e1]}: reconstruction {d_rec:+.2f} nats, KL {d_kl:+.2f} nats, "
      f"ELBO {d_rec - d_kl:+.2f} nats")
if d_kl > 0:
    print(f"  -> every nat of KL spent bought {d_rec / d_kl:.1f} nats of reconstruction")
else:
    print("  -> the KL did not grow: the encoder is not (yet) paying for more informative codes")
half = (e0 + e1) // 2
if half - e0 >= 1 and e1 - half >= 1:
    first = (h["test_elbo"][half] - h["test_elbo"][e0]) / (half - e0)
    late_rec = h["test_rec"][e1] - h["test_rec"][half]
    late_kl = h["test_kl"][e1] - h["test_kl"][half]
    second = (late_rec - late_kl) / (e1 - half)
    trend = "diminishing returns" if second < first else "still speeding up: train longer"
    print(f"  epochs {h['epoch'][half]} -> {h['epoch'][e1]}: rec {late_rec:+.2f}, KL {late_kl:+.2f}; ELBO gain per "
          f"epoch {first:.2f} nats in the first half, {second:.2f} in the second: {trend}")
kl_dims = np.asarray(h["test_kl_per_dim"][e1])
print(f"final KL per latent dimension: {np.sum(kl_dims > 0.01)} of {latent} dimensions carry > 0.01 nats "
      f"(largest {kl_dims.max():.2f}, smallest {kl_dims.min():.3f})")
print(f"train vs test ELBO at the end: {h['train_elbo'][e1]:.2f} vs {h['test_elbo'][e1]:.2f} nats")

# %% [markdown]
# The training ELBO is averaged over the last epoch, while the model was still improving, so it
# can sit below the test ELBO measured at the end of it.

# %% [markdown]
# ## 3. The gap: how loose is the bound?
#
# The ELBO is a lower bound: $\log p(x) = \mathrm{ELBO}(x) + \mathrm{KL}(q(z \mid x) \,\Vert\, p(z \mid x))$
# (Eq. (E3), docs/elbo.md). We estimate $\log p(x)$ on a few test digits by importance sampling with
# the encoder as proposal,
# $\log \hat p_K(x) = \log \frac{1}{K} \sum_k p(x, z_k) / q(z_k \mid x)$ (Eq. (I2), docs/importance.md,
# `VAE.log_likelihood`), against a precise ELBO (many samples, analytic KL) on the same digits.
# The expectation of $\log \hat p_K$ is a bound $L_K$ that rises with $K$ towards $\log p(x)$
# (docs/importance.md, section 3), so $\log \hat p_{1000} - \mathrm{ELBO}$ is a lower bound on the
# average gap $\mathrm{KL}(q(z \mid x) \,\Vert\, p(z \mid x))$. $K = 1$ is the ELBO again, with the
# KL sampled, so noisier.

# %%
def plot_importance_gap(ks, mean_gain, se_gain, elbo_mean, per_digit_gap, path):
    """Left: the mean over digits of log p_K(x) - ELBO(x) against K, +-2 standard errors.
    Right: the histogram of the per-digit gain at the largest K, per_digit_gap (n,)."""
    fig = new_figure(11, 4.2)
    ax, ax2 = fig.subplots(1, 2)
    ax.errorbar(ks, mean_gain, yerr=2 * np.asarray(se_gain), marker="o", capsize=3,
                label=r"$\log \hat p_K(x)$ - ELBO (mean over digits, $\pm$2 s.e.)")
    ax.axhline(0.0, color="black", lw=0.8, label=f"ELBO (analytic KL, mean {elbo_mean:.1f} nats)")
    ax.set_xscale("log")
    ax.set_xlabel("K, importance samples per digit")
    ax.set_ylabel("nats per digit above the ELBO")
    ax.set_title("importance sampling climbs above the ELBO towards log p(x)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    ax2.hist(per_digit_gap, bins=min(30, max(5, len(per_digit_gap) // 3)), color="tab:orange", edgecolor="white")
    ax2.axvline(np.mean(per_digit_gap), color="black", lw=1, label=f"mean {np.mean(per_digit_gap):.2f} nats")
    ax2.set_xlabel(r"$\log \hat p_{%d}(x)$ - ELBO(x), nats" % ks[-1])
    ax2.set_ylabel("test digits")
    ax2.set_title("per digit: a lower bound on KL(q(z|x) || p(z|x)), the gap of Eq. (E3)", fontsize=10)
    ax2.legend(fontsize=8)
    return save_figure(fig, path)


# %%
KS = (1, 3, 10, 30, 100, 300, 1000)
x_gap = x_test[:n_gap]
rng = np.random.default_rng(args.seed + 100)
elbo = vae.elbo(x_gap, n_samples=n_elbo, rng=rng).astype(np.float64)   # analytic KL, many samples
log_p = {K: vae.log_likelihood(x_gap, n_importance=K, rng=rng).astype(np.float64) for K in KS}
gain = {K: log_p[K] - elbo for K in KS}
mean_gain = [float(np.mean(gain[K])) for K in KS]
se_gain = [float(np.std(gain[K], ddof=1) / np.sqrt(n_gap)) for K in KS]
show(plot_importance_gap(KS, mean_gain, se_gain, float(np.mean(elbo)), gain[KS[-1]],
                         os.path.join(args.out, "importance_gap.png")))

print(f"importance sampling on {n_gap} test digits; ELBO (analytic KL, {n_elbo} samples): "
      f"mean {np.mean(elbo):.2f} nats")
for K, m, se in zip(KS, mean_gain, se_gain):
    if K in (1, 10, 100, 1000):
        print(f"  K = {K:5d}: mean log p_K(x) {np.mean(log_p[K]):9.2f} nats,  {m:+6.2f} +- {se:.2f} vs the ELBO")
print(f"  -> the bound is loose by at least {mean_gain[-1]:.2f} nats on average; still rising from K = 100 to 1000 "
      f"by {mean_gain[KS.index(1000)] - mean_gain[KS.index(100)]:.2f} nats")
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
