# %% [markdown]
# # Tutorial 03: how noisy is a gradient estimator? Reparameterization against REINFORCE
#
# The encoder needs $\nabla_{\mu, \log\sigma^2}\, \mathbb{E}_q[f(z)]$ with $f(z) = \log p(x \mid z)$:
# the gradient of an expectation with respect to the parameters of the distribution it is taken
# over. Two unbiased estimators, both in `numpyvae.model.VAE` (`estimator=...`):
#
# * **reparameterization** (docs/reparameterization.md, Eq. (R1), Eq. (R2)): write
#   $z = \mu + e^{\mathrm{logvar}/2} \epsilon$ and differentiate through the sample; it uses $df/dz$.
# * **score function / REINFORCE** (docs/estimators.md, Eq. (S1), Eq. (S2)):
#   $(f(z) - b)\, \nabla \log q(z)$; it uses only values of $f$, hundreds of nats, times a zero-mean
#   score: mostly noise. A baseline $b$ that does not depend on the sample keeps it unbiased and can
#   shrink the noise: here a moving average of $f$ over training minibatches (Eq. (S3)), as training
#   would use it, and the leave-one-out mean of the other $L - 1$ samples of the same digit
#   (Eq. (S4), needs $L \ge 2$).
#
# Read alongside: docs/estimators.md, sections 1, 2 and 4; docs/reparameterization.md, section 2;
# `numpyvae.model.VAE.posterior_grads`, `numpyvae.estimators.score_function_grad`,
# `numpyvae.estimators.diag_gaussian_score`, `numpyvae.estimators.EMABaseline`,
# `numpyvae.estimators.LeaveOneOutBaseline`, `numpyvae.distributions.reparameterize_backward`
# (`numpyvae.lab.variance` and `numpyvae.lab.estimator_lab` do the same measurement on every encoder
# weight).
#
# Figures (in `--out`):
# * `variance_vs_L.png`: total variance and median SNR against L, log scales;
# * `coordinate_histogram.png`: R estimates of one coordinate, d loss / d mu_j, under each estimator.

# %%
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.estimators import EMABaseline, LeaveOneOutBaseline
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("variance_vs_L.png", "coordinate_histogram.png")
args = setup("03_reparam_vs_reinforce", quick="784-32-8 trained 1 epoch on 1000 digits, L = 1, 2, 4, R = 200")
start = time.perf_counter()

# %% [markdown]
# ## 1. A briefly trained VAE
#
# The gradients should be those of a real model, not of random weights: we train the default
# architecture for 3 epochs with the reparameterization gradient. `--quick` trains a tiny model
# for one epoch (a smoke run; its numbers mean little).

# %%
data = nv.load_dataset("mnist-mini")
x_train, x_test = data.x_train, data.x_test
if args.quick:
    x_train, x_test = x_train[:1000], x_test[:200]
    hidden, latent, epochs, Ls, R = (32,), 8, 1, (1, 2, 4), 200
else:
    hidden, latent, epochs, Ls, R = DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM, 3, (1, 2, 4, 8, 16, 32), 1000

vae = nv.VAE(x_train.shape[1], hidden, latent, likelihood="bernoulli", activation=DEFAULT_ACTIVATION,
             seed=args.seed)
print(f"--- training {vae!r} for {epochs} epochs (reparameterized)")
train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
      log=lambda s: print("  " + s), progress=False)

# %% [markdown]
# ## 2. The moving-average baseline, as training uses it
#
# A running mean of $\log p(x \mid z)$ over minibatches of *different* training digits (Eq. (S3),
# docs/estimators.md), then frozen while we measure. Compare it with this digit's own
# $\mathbb{E}_q[\log p(x \mid z)]$: the score is multiplied by $f - b$, so what matters is how far
# apart the two are.

# %%
rng = np.random.default_rng(args.seed + 1)
ema = EMABaseline(decay=0.9)
for i in range(30):
    xb = x_train[(i * 100) % x_train.shape[0]:][:100]
    ema.observe(xb, vae.elbo_terms(xb, rng=rng)["rec"][None, :])       # f: (1, B)
ema.frozen = True

x0 = x_test[:1]
f0 = vae.elbo_terms(x0, n_samples=1000, rng=rng)["rec"][0]
print(f"this digit: E_q[log p(x|z)] = {f0:.1f} nats; moving-average baseline b = {ema.mean:.1f} nats")

# %% [markdown]
# ## 3. R independent estimates of the same gradient
#
# For the test digit $x_0$ we draw $R$ independent estimates of the gradient of its loss with
# respect to its posterior parameters $(\mu, \log\sigma^2)$, $2Z$ numbers, for each estimator and
# each number of samples $L$. `VAE.posterior_grads` on $R$ copies of $x_0$ does it in one call:
# its rows are independent estimates. We report (docs/estimators.md, section 4):
#
# * the **total variance** $\sum_j \mathrm{Var}[g_j]$ over the $2Z$ coordinates (the expected squared
#   distance of one estimate from its mean; it falls like $1/L$ for every estimator);
# * the **median signal-to-noise ratio** $|\mathbb{E} g_j| / \mathrm{std}\, g_j$ (Eq. (V1),
#   docs/estimators.md), with $\mathbb{E} g_j$ from the most precise estimate we have,
#   reparameterization at the largest $L$ over all $R$ rows (every estimator here has that same
#   expectation).

# %%
SETTINGS = {"reparam": ("reparam", None), "score": ("score", None),                 # name: (estimator, baseline)
            "score+ema": ("score", ema), "score+loo": ("score", LeaveOneOutBaseline())}
MAX_ROWS = 4096          # decoder rows per posterior_grads call (R copies x L samples): bounds memory


def draw_estimates(vae, x0, setting, L, R, rng):
    """R independent estimates of d loss(x0) / d(mu, logvar) under SETTINGS[setting] with L samples
    each: an (R, 2Z) float64 array."""
    estimator, baseline = SETTINGS[setting]
    rows, done = [], 0
    chunk = max(1, MAX_ROWS // L)
    while done < R:
        r = min(chunk, R - done)
        d_mu, d_logvar = vae.posterior_grads(np.repeat(x0, r, axis=0), n_samples=L, rng=rng,
                                             estimator=estimator, baseline=baseline)
        rows.append(np.concatenate([d_mu, d_logvar], axis=1).astype(np.float64))
        done += r
    return np.concatenate(rows)


# %%
table = {}                                   # (setting, L) -> {"g": (R, 2Z), "total_variance", "median_snr"}
for L in Ls:
    for s in SETTINGS:
        if s == "score+loo" and L < 2:
            continue
        g = draw_estimates(vae, x0, s, L, R, rng)
        table[s, L] = {"g": g, "total_variance": float(np.sum(np.var(g, axis=0, ddof=1)))}
g_true = table["reparam", Ls[-1]]["g"].mean(axis=0)   # the expectation every estimator shares
for row in table.values():
    row["median_snr"] = float(np.median(np.abs(g_true) / np.std(row["g"], axis=0, ddof=1)))

print(f"{2 * latent} coordinates, R = {R} estimates per cell: total variance (nats^2) / median SNR")
print(f"{'L':>4} " + " ".join(f"{s:>22}" for s in SETTINGS))
for L in Ls:
    cells = [f"{'-':>22}" if (s, L) not in table else
             f"{table[s, L]['total_variance']:11.4g} / {table[s, L]['median_snr']:8.3f}" for s in SETTINGS]
    print(f"{L:4d} " + " ".join(cells))

# %% [markdown]
# ## 4. Reading the table
#
# Both variances fall like $1/L$, so the ratio of REINFORCE's variance to reparameterization's at
# $L = 1$ is also about the number of samples REINFORCE would need per estimate to be as precise as
# reparameterization with one. A median SNR far below 1 means one estimate is almost pure noise.
# Baselines help because the score is multiplied by $f - b$: $f$ is hundreds of nats in size,
# $f - b$ only as far off as this digit is from the average digit for the moving average, and about
# 0 on average for leave-one-out (this digit's own samples).

# %%
v = {k: row["total_variance"] for k, row in table.items()}
L1, Lb, Lm = Ls[0], 2 if 2 in Ls else Ls[-1], Ls[-1]
ratio = v["score", L1] / v["reparam", L1]
print(f"at L = {L1}: score / reparam variance = {ratio:.3g} -> REINFORCE needs about {ratio * L1:.3g} samples "
      f"per estimate to match reparam with {L1}")
print(f"median SNR at L = {L1}: reparam {table['reparam', L1]['median_snr']:.3f}, "
      f"score {table['score', L1]['median_snr']:.4f}")
print(f"baselines at L = {Lb}: moving average divides the variance by "
      f"{v['score', Lb] / v['score+ema', Lb]:.3g}, leave-one-out by {v['score', Lb] / v['score+loo', Lb]:.3g}; "
      f"reparam is still {v['score+loo', Lb] / v['reparam', Lb]:.3g}x lower than score+loo")
print(f"at L = {Lm}: score+loo / reparam variance = {v['score+loo', Lm] / v['reparam', Lm]:.3g}; "
      f"variance from L = {L1} to {Lm}: reparam / {v['reparam', L1] / v['reparam', Lm]:.3g}, "
      f"score / {v['score', L1] / v['score', Lm]:.3g} (1/L predicts / {Lm // L1})")
print(f"|f| = {abs(f0):.0f} nats; |f - b| = {abs(f0 - ema.mean):.0f} nats for the moving average")

# %% [markdown]
# ## 5. Figures
#
# `variance_vs_L.png` draws the table on log scales, with the $1/L$ and $\sqrt{L}$ slopes for
# reference. `coordinate_histogram.png` shows the $R$ estimates of one coordinate, the $\mu_j$ with
# the largest gradient, at $L = 2$: one panel per estimator, each on its own range, with the
# reparameterization estimates' mean $\pm$ 2 std as a grey band for scale.

# %%
COLORS = {"reparam": "tab:blue", "score": "tab:red", "score+ema": "tab:orange", "score+loo": "tab:purple"}
LABELS = {"reparam": "reparameterization", "score": "score function, no baseline",
          "score+ema": "score function, moving-average baseline", "score+loo": "score function, leave-one-out baseline"}


def plot_variance(Ls, table, path):
    """Total variance and median SNR of every (setting, L) in table, against L."""
    fig = new_figure(11.5, 4.9)
    ax_v, ax_s = fig.subplots(1, 2)
    for s in SETTINGS:
        pts = [(L, table[s, L]) for L in Ls if (s, L) in table]
        L_s = [p[0] for p in pts]
        ax_v.plot(L_s, [p[1]["total_variance"] for p in pts], "-o", color=COLORS[s], label=LABELS[s], ms=4)
        ax_s.plot(L_s, [p[1]["median_snr"] for p in pts], "-o", color=COLORS[s], label=LABELS[s], ms=4)
    L_arr = np.asarray(Ls, dtype=float)
    v1 = table["reparam", Ls[0]]["total_variance"] * Ls[0]
    ax_v.plot(L_arr, v1 / L_arr, ls=":", color="grey", label=r"slope $1/L$")
    s1 = table["reparam", Ls[0]]["median_snr"] / np.sqrt(Ls[0])
    ax_s.plot(L_arr, s1 * np.sqrt(L_arr), ls=":", color="grey", label=r"slope $\sqrt{L}$")
    ax_s.axhline(1.0, color="black", lw=0.8)
    ax_s.annotate("SNR = 1: below, one estimate is mostly noise", (L_arr[0], 1.0), fontsize=8,
                  xytext=(2, 3), textcoords="offset points")
    for ax in (ax_v, ax_s):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(Ls, [str(L) for L in Ls])
        ax.set_xlabel("L, samples of z per estimate")
        ax.grid(alpha=0.3, which="both")
    ax_v.set_ylabel(r"total variance $\sum_j \mathrm{Var}[g_j]$  (nats$^2$)")
    ax_v.set_title("total variance of the gradient w.r.t. (mu, logvar)", fontsize=10)
    ax_s.set_ylabel(r"median over coordinates of $|\mathbb{E}\,g_j| / \mathrm{std}\,g_j$")
    ax_s.set_title("signal-to-noise ratio (Eq. V1)", fontsize=10)
    handles, labels = ax_v.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("one test digit, R independent estimates per point")
    return save_figure(fig, path)


def plot_histograms(samples, j, true_value, L, path):
    """Histograms of samples[setting] (R,), the estimates of coordinate j, one panel per setting,
    each on its own x-range (the spreads differ by orders of magnitude); the grey band in every
    panel is the reparameterization estimates' mean +- 2 std, for scale."""
    fig = new_figure(8.5, 7.8)
    axes = fig.subplots(len(samples), 1)
    ref = samples["reparam"]
    band = (np.mean(ref) - 2 * np.std(ref, ddof=1), np.mean(ref) + 2 * np.std(ref, ddof=1))
    for ax, (s, v) in zip(axes, samples.items()):
        sd = np.std(v, ddof=1)
        lo, hi = true_value - 4 * sd, true_value + 4 * sd
        ax.axvspan(*band, color="grey", alpha=0.3, lw=0, label="reparameterization: mean +- 2 std")
        ax.hist(np.clip(v, lo, hi), bins=np.linspace(lo, hi, 61), color=COLORS[s], alpha=0.85)
        ax.axvline(true_value, color="black", lw=1, label=f"expectation {true_value:.3g}")
        ax.set_xlim(lo, hi)
        frac = np.mean(np.sign(v) == np.sign(true_value))
        ax.set_title(f"{LABELS[s]}: std {sd:.3g} ({sd / np.std(ref, ddof=1):.3g}x reparam), "
                     f"sign right in {100 * frac:.0f}% of draws", fontsize=9)
        ax.set_ylabel("estimates")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel(f"estimate of d loss / d mu_{j}; each panel spans its own expectation +- 4 std "
                        "(beyond: piled at the edges)")
    fig.suptitle(f"{len(ref)} estimates of one coordinate, L = {L} samples each")
    return save_figure(fig, path)


# %%
show(plot_variance(Ls, table, os.path.join(args.out, "variance_vs_L.png")))
j = int(np.argmax(np.abs(g_true[:latent])))          # the mu coordinate with the largest gradient
show(plot_histograms({s: table[s, Lb]["g"][:, j] for s in SETTINGS if (s, Lb) in table}, j, g_true[j], Lb,
                     os.path.join(args.out, "coordinate_histogram.png")))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
