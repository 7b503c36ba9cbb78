"""Tutorial 03: how noisy is a gradient estimator? Reparameterization against REINFORCE.

The encoder needs d/d(mu, logvar) E_q[f(z)], f(z) = log p(x | z): the gradient of an
expectation with respect to the parameters of the distribution it is taken over. Two unbiased
estimators, both implemented in numpyvae.model.VAE (estimator=...):

* reparameterization (docs/reparameterization.md, Eq. (R1), Eq. (R2)): write
  z = mu + exp(logvar/2) * eps and differentiate through the sample; uses df/dz.
* score function / REINFORCE (docs/estimators.md, Eq. (S1), Eq. (S2)):
  (f(z) - b) * d log q(z) / d(mu, logvar); uses only values of f, hundreds of nats, times a
  zero-mean score: mostly noise. A baseline b that does not depend on the sample keeps it
  unbiased and can shrink the noise: here a moving average of f over training minibatches
  (Eq. (S3)), as training would use it, and the leave-one-out mean of the other L - 1 samples of
  the same digit (Eq. (S4), needs L >= 2).

For one test digit x of a briefly trained VAE, the script draws R independent estimates of the
gradient of that digit's loss with respect to its posterior parameters (mu, logvar), 2Z
numbers, with VAE.posterior_grads on R copies of x (rows are independent estimates), for each
estimator and each number of samples L. It reports (docs/estimators.md, section 4):

* the total variance, sum over the 2Z coordinates of Var[g_j] (the expected squared distance
  of one estimate from its mean; it falls like 1/L for every estimator);
* the median signal-to-noise ratio |E g_j| / std g_j (Eq. (V1), docs/estimators.md), with
  E g_j taken from the most precise estimate we have, reparameterization at the largest L over
  all R rows (every estimator here has that same expectation).

Read alongside:
  docs/estimators.md, sections 1, 2 and 4; docs/reparameterization.md, section 2
  numpyvae.model.VAE.posterior_grads, numpyvae.estimators.score_function_grad,
  numpyvae.estimators.diag_gaussian_score, numpyvae.estimators.EMABaseline,
  numpyvae.estimators.leave_one_out_baseline, numpyvae.distributions.reparameterize_backward
  (numpyvae.variance and numpyvae.estimator_lab do the same measurement on every encoder weight)

Figures (in --out):
  variance_vs_L.png         total variance and median SNR against L, log scales
  coordinate_histogram.png  R estimates of one coordinate, d loss / d mu_j, under each estimator
"""

import argparse
import os
import time

import numpy as np
from matplotlib.figure import Figure

import numpyvae as nv
from numpyvae.estimators import EMABaseline
from numpyvae.training import TrainConfig, new_run, train

NAME = "03_reparam_vs_reinforce"
FIGURES = ("variance_vs_L.png", "coordinate_histogram.png")

SETTINGS = ("reparam", "score", "score+ema", "score+loo")
COLORS = {"reparam": "tab:blue", "score": "tab:red", "score+ema": "tab:orange", "score+loo": "tab:purple"}
LABELS = {"reparam": "reparameterization", "score": "score function, no baseline",
          "score+ema": "score function, moving-average baseline", "score+loo": "score function, leave-one-out baseline"}
MAX_ROWS = 4096          # decoder rows per posterior_grads call (R copies x L samples): bounds memory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (784-32-8 trained 1 epoch on 1000 digits, L = 1, 2, 4, R = 200)")
    parser.add_argument("--out", default=os.path.join("tutorial_output", NAME),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, training and the noise")
    return parser.parse_args(argv)


def draw_estimates(vae, x0, setting, L, R, rng, ema):
    """R independent estimates of d loss(x0) / d(mu, logvar): an (R, 2Z) float64 array."""
    estimator, baseline = {"reparam": ("reparam", None), "score": ("score", None),
                           "score+ema": ("score", ema), "score+loo": ("score", "loo")}[setting]
    rows, done = [], 0
    chunk = max(1, MAX_ROWS // L)
    while done < R:
        r = min(chunk, R - done)
        d_mu, d_logvar = vae.posterior_grads(np.repeat(x0, r, axis=0), n_samples=L, rng=rng,
                                             estimator=estimator, baseline=baseline)
        rows.append(np.concatenate([d_mu, d_logvar], axis=1).astype(np.float64))
        done += r
    return np.concatenate(rows)


def plot_variance(Ls, table, path):
    fig = Figure(figsize=(11.5, 4.9), layout="constrained")
    ax_v, ax_s = fig.subplots(1, 2)
    for s in SETTINGS:
        pts = [(L, table[s, L]) for L in Ls if (s, L) in table]
        if not pts:
            continue
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
    fig.savefig(path, dpi=100)


def plot_histograms(samples, j, true_value, L, path):
    """One panel per estimator, each on its own x-range (the spreads differ by orders of magnitude);
    the grey band in every panel is the reparameterization estimates' mean +- 2 std, for scale."""
    fig = Figure(figsize=(8.5, 7.8), layout="constrained")
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
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    data = nv.load_dataset("mnist-mini")
    x_train, x_test = data.x_train, data.x_test
    if args.quick:
        x_train, x_test = x_train[:1000], x_test[:200]
        hidden, latent, epochs, Ls, R = (32,), 8, 1, (1, 2, 4), 200
    else:
        hidden, latent, epochs, Ls, R = (400,), 20, 3, (1, 2, 4, 8, 16, 32), 1000
    L_hist = 2 if 2 in Ls else Ls[-1]

    vae = nv.VAE(x_train.shape[1], hidden, latent, likelihood="bernoulli", activation="relu", seed=args.seed)
    print(f"--- training {vae!r} for {epochs} epochs (reparameterized), so the gradients are those of a real model")
    train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
          log=lambda s: print("  " + s), progress=False)

    rng = np.random.default_rng(args.seed + 1)
    # The moving-average baseline as training uses it: a running mean of log p(x|z) over minibatches
    # of *different* training digits (Eq. (S3), docs/estimators.md), then frozen while we measure.
    ema = EMABaseline(decay=0.9)
    for i in range(30):
        xb = x_train[(i * 100) % x_train.shape[0]:][:100]
        ema.observe(xb, vae.elbo_terms(xb, rng=rng)["rec"][None, :])
    ema.frozen = True

    x0 = x_test[:1]
    f0 = vae.elbo_terms(x0, n_samples=1000, rng=rng)["rec"][0]
    table, hist_samples = {}, {}
    for L in Ls:
        for s in SETTINGS:
            if s == "score+loo" and L < 2:
                continue
            g = draw_estimates(vae, x0, s, L, R, rng, ema)
            table[s, L] = {"g": g, "total_variance": float(np.sum(np.var(g, axis=0, ddof=1)))}
            if L == L_hist:
                hist_samples[s] = g
    # The expectation every estimator shares, from the most precise estimate: reparam at the largest L.
    g_true = table["reparam", Ls[-1]]["g"].mean(axis=0)
    for key, row in table.items():
        std = np.std(row["g"], axis=0, ddof=1)
        row["median_snr"] = float(np.median(np.abs(g_true) / std))
    j = int(np.argmax(np.abs(g_true[:latent])))          # the mu coordinate with the largest gradient

    plot_variance(Ls, table, os.path.join(args.out, "variance_vs_L.png"))
    plot_histograms({s: g[:, j] for s, g in hist_samples.items()}, j, g_true[j], L_hist,
                    os.path.join(args.out, "coordinate_histogram.png"))

    print()
    print(f"=== gradient of one test digit's loss w.r.t. its (mu, logvar), {2 * latent} coordinates, "
          f"R = {R} estimates per cell")
    print(f"this digit: E_q[log p(x|z)] = {f0:.1f} nats, moving-average baseline b = {ema.mean:.1f} nats "
          "(mean over other digits)")
    print(f"{'L':>4} " + " ".join(f"{s:>22}" for s in SETTINGS) + "    (total variance, nats^2 / median SNR)")
    for L in Ls:
        cells = []
        for s in SETTINGS:
            row = table.get((s, L))
            cells.append(f"{'-':>22}" if row is None else f"{row['total_variance']:11.4g} / {row['median_snr']:8.3f}")
        print(f"{L:4d} " + " ".join(cells))
    v = {k: row["total_variance"] for k, row in table.items()}
    L1 = Ls[0]
    ratio = v["score", L1] / v["reparam", L1]
    print(f"at L = {L1}: REINFORCE has {ratio:.3g}x the variance of the reparameterization gradient")
    print(f"  -> since both fall like 1/L, REINFORCE would need about {ratio * L1:.3g} samples per estimate "
          f"to be as precise as reparameterization with {L1}")
    print(f"  -> median SNR at L = {L1}: reparam {table['reparam', L1]['median_snr']:.3f}, "
          f"score {table['score', L1]['median_snr']:.4f}: one REINFORCE estimate is almost pure noise")
    Lb = L_hist
    print(f"baselines at L = {Lb}: moving average divides the variance by "
          f"{v['score', Lb] / v['score+ema', Lb]:.3g}, leave-one-out by {v['score', Lb] / v['score+loo', Lb]:.3g}; "
          f"reparam is still {v['score+loo', Lb] / v['reparam', Lb]:.3g}x lower than score+loo")
    Lm = Ls[-1]
    print(f"at L = {Lm}: score+loo / reparam variance = {v['score+loo', Lm] / v['reparam', Lm]:.3g}; "
          f"variance from L = {Ls[0]} to {Lm}: reparam / {v['reparam', Ls[0]] / v['reparam', Lm]:.3g}, "
          f"score / {v['score', Ls[0]] / v['score', Lm]:.3g} (1/L predicts / {Lm // Ls[0]})")
    print(f"  -> why baselines help: the score is multiplied by f - b; f is {abs(f0):.0f} nats in size, f - b only "
          f"~{abs(f0 - ema.mean):.0f} nats off for the moving average (a mean over other digits) and ~0 on average "
          "for leave-one-out (this digit's own samples)")
    if args.quick:
        print("(--quick is a smoke run of the same code: tiny model, little training; its numbers mean little)")
    print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
