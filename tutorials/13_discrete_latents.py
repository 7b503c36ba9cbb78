# %% [markdown]
# # Tutorial 13: discrete latent variables, where the score function earns its keep
#
# With a Gaussian code the reparameterization trick is the obvious choice and the score function
# only ever the noisier one (tutorial 03). With a discrete code there is no reparameterization at
# all: $z$ is a step function of the noise, and the derivative of a step is zero wherever it exists.
# This tutorial shows that failure on one unit, then measures five estimators that get around it
# (docs/discrete.md, sections 6-10) against the **exact** gradient: a code of a few bits has few
# enough states that the ELBO and its gradient are finite sums (Eqs. (H19), (H20), docs/discrete.md).
#
# * **score** (REINFORCE) with the full learning signal $\log w$, Eq. (H10); optionally a
#   leave-one-out baseline;
# * **nvil**: the same, centred by a learned input-dependent baseline and scaled, Eq. (H11);
# * **vimco**: the score part of the $K$-sample bound with per-sample leave-one-out baselines,
#   Eq. (H14), unbiased for the gradient of that *bound*, not of the ELBO;
# * **gumbel**: decode the Gumbel-softmax relaxation $\tilde z$ at temperature $\tau$ and
#   differentiate through it, Eq. (H17): low variance, biased;
# * **straight-through**: decode the exact $z$, backpropagate as if it were $\tilde z$, Eq. (H18).
#
# Read alongside: docs/discrete.md; `numpyvae.discrete.DiscreteVAE` (`loss_and_grads`,
# `exact_loss_and_grads`), `numpyvae.discrete_estimators`, `numpyvae.discrete_posteriors`, and
# `numpyvae.lab.discrete_lab` (the same measurement on a 256-state code, and each estimator trained
# on mnist-mini: `numpyvae discrete`).
#
# Figures (in `--out`):
# * `step_function.png`: the sample $z(\omega)$ for fixed noise, its relaxation, and the expectation
#   whose gradient we want;
# * `estimators_vs_exact.png`: each estimator's bias and variance against the exact gradient, and the
#   Gumbel-softmax's bias and variance against the temperature.

# %%
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.discrete_posteriors import BernoulliPosterior
from numpyvae.estimators import LeaveOneOutBaseline
from numpyvae.lab.discrete_lab import COLORS, draw_estimates, estimate_statistics
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.numerics import sigmoid
from numpyvae.training import TrainConfig, new_run, prepare_pixels, train
from tutorial import setup, show

FIGURES = ("step_function.png", "estimators_vs_exact.png")
args = setup("13_discrete_latents", quick="784-16-[4 bits] trained 1 epoch on 1000 digits, 10 x 512 draws: seconds")
start = time.perf_counter()

if args.quick:
    n_train, hidden, Z, epochs, n_digits, M, rows, taus = 1000, (16,), 4, 1, 2, 10, 512, (1.0, 0.3, 0.1)
else:
    n_train, hidden, Z, epochs, n_digits, M, rows, taus = 8000, (64,), 8, 5, 8, 50, 4096, (2.0, 1.0, 0.5, 0.25, 0.1)

# %% [markdown]
# ## 1. One binary unit: the pathwise gradient is zero
#
# Take one unit with logit $\omega$, $q(z = 1) = \rho = \sigma(\omega)$, and a function of the code,
# here $f(0) = -3$, $f(1) = -1$. Sampling by perturbing the logit (Eq. (H8), docs/discrete.md),
# $z = \mathbb{1}[\omega + \nu > 0]$ with logistic noise $\nu$, writes $z$ as a function of $\omega$
# and noise, exactly like $z = \mu + \sigma\varepsilon$ for a Gaussian. But for fixed $\nu$ that
# function is a step: $\partial z/\partial\omega = 0$ except at $\omega = -\nu$, which has
# probability zero. So the pathwise estimate $f'(z)\,\partial z/\partial\omega$ is 0 for every
# sample, while the true gradient,
#
# $$\frac{d}{d\omega}\,\mathbb{E}_q[f(z)] = \frac{d}{d\omega}\big(\rho f(1) + (1 - \rho) f(0)\big)
#   = \rho(1 - \rho)\,\big(f(1) - f(0)\big),$$
#
# is not: the expectation moves because probability *jumps* between the two codes, and no
# derivative at a sample sees a jump. The score function differentiates the probability instead,
# $f(z)\,\partial\log q(z)/\partial\omega = f(z)(z - \rho)$ (Eq. (H3)); the Gumbel-softmax replaces
# the step by $\sigma((\omega + \nu)/\tau)$ (Eq. (H15)) and differentiates that.

# %%
rng = np.random.default_rng(args.seed)
omega, f0, f1, tau = 0.5, -3.0, -1.0, 0.5
nu = BernoulliPosterior(1).noise(200_000, 1, rng, np.float64)[:, 0, 0]      # logistic noise, one unit
z = (omega + nu > 0).astype(float)                           # exact samples of q, Eq. (H8)
rho = 1 / (1 + np.exp(-omega))                             # q(z = 1)
exact = rho * (1 - rho) * (f1 - f0)
h = 1e-6                                                     # the step does not move under a small nudge
pathwise = ((omega + h + nu > 0).astype(float) - (omega - h + nu > 0).astype(float)) / (2 * h) * (f1 - f0)
score = np.where(z == 1, f1, f0) * (z - rho)
zt = sigmoid((omega + nu) / tau)                             # the relaxed sample, Eq. (H15)
relaxed = (f1 - f0) * zt * (1 - zt) / tau                    # d f(zt) / d omega for f linear between the codes
print(f"exact gradient rho (1 - rho) (f(1) - f(0))        = {exact:.4f}")
print(f"pathwise through the step, mean of {nu.size} draws = {pathwise.mean():.4f}  "
      f"(nonzero in {np.count_nonzero(pathwise)} draws)")
print(f"score function f(z) (z - rho), mean              = {score.mean():.4f} +- {score.std() / np.sqrt(nu.size):.4f}")
print(f"Gumbel-softmax at tau = {tau}, mean                 = {relaxed.mean():.4f} +- "
      f"{relaxed.std() / np.sqrt(nu.size):.4f}")

# %% [markdown]
# The pathwise estimate is exactly 0 in every draw; the score function is unbiased. The relaxation
# is biased even for this $f$, linear between the two codes: the relaxed sample is another random
# variable, $\mathbb{E}[\tilde z] \neq \rho$, so its gradient is the slope of another curve,
# $\mathbb{E}[f(\tilde z)]$, which only tends to $\mathbb{E}_q[f(z)]$ as $\tau \to 0$ (docs/discrete.md,
# section 9; a decoder, nonlinear in its input, adds more bias). The figure shows $z(\omega)$ for three
# fixed noise values (steps), their relaxations at $\tau = 0.5$ (smooth), $\mathbb{E}_q[f(z)]$ with the
# slope the estimators try to find, and the relaxed curve whose slope the Gumbel-softmax finds.

# %%
grid = np.linspace(-4, 4, 401)
fig = new_figure(11, 4)
ax_z, ax_f = fig.subplots(1, 2)
for v, colour in zip((-1.2, 0.3, 1.5), ("tab:red", "tab:green", "tab:blue")):
    ax_z.plot(grid, (grid + v > 0).astype(float), color=colour, label=fr"$z = 1[\omega + \nu > 0]$, $\nu$ = {v}")
    ax_z.plot(grid, sigmoid((grid + v) / tau), color=colour, linestyle="--", label=fr"relaxed, $\tau$ = {tau}")
ax_z.set_xlabel(r"logit $\omega$")
ax_z.set_title("a sample, for fixed noise: a step (its derivative is 0)", fontsize=10)
ax_z.legend(fontsize=7)
expected = sigmoid(grid) * f1 + (1 - sigmoid(grid)) * f0
ax_f.plot(grid, expected, color="black", label=r"$\mathbb{E}_q[f(z)] = \rho f(1) + (1 - \rho) f(0)$")
ax_f.plot(grid, np.where(grid + 0.3 > 0, f1, f0), color="tab:green", label=r"$f(z(\omega))$ for $\nu$ = 0.3")
ax_f.plot(grid, rho * f1 + (1 - rho) * f0 + exact * (grid - omega), ":", color="grey",
          label=fr"its tangent at $\omega$ = {omega}: slope {exact:.3f}")
relaxed_curve = f0 + (f1 - f0) * np.mean(sigmoid((grid[:, None] + nu[None, :20_000]) / tau), axis=1)
ax_f.plot(grid, relaxed_curve, "--", color="tab:blue", label=fr"$\mathbb{{E}}[f(\tilde z)]$, $\tau$ = {tau}: "
          fr"slope {relaxed.mean():.3f} at $\omega$ = {omega}")
ax_f.set_ylim(f0 - 0.5, f1 + 0.5)
ax_f.set_xlabel(r"logit $\omega$")
ax_f.set_title("the expectation is smooth; each sample's value is not", fontsize=10)
ax_f.legend(fontsize=7)
for ax in (ax_z, ax_f):
    ax.grid(alpha=0.3)
show(save_figure(fig, os.path.join(args.out, FIGURES[0])))

# %% [markdown]
# ## 2. A small discrete VAE whose gradient we can compute exactly
#
# A 784-64-[8 bits] ReLU VAE (784-16-[4 bits] with `--quick`) has $2^8 = 256$ codes:
# `exact_loss_and_grads` sums the ELBO's gradient over all of them (Eq. (H20), docs/discrete.md),
# decoding each code once. We train it briefly with NVIL on dynamically binarised digits (the
# trainer keeps NVIL's learned baseline in `run.baseline`; we reuse it below). Why NVIL: trained
# with the Gumbel-softmax, a code this small turns deterministic within an epoch (every sample the
# same code), and every estimator is then trivially exact.

# %%
ds = nv.load_dataset("mnist-mini")
x_train, x_test = prepare_pixels(ds.x_train[:n_train], ds.x_test, "dynamic", args.seed, "bernoulli")
model = nv.DiscreteVAE(784, hidden, Z, latent="bernoulli", activation="relu", seed=args.seed)
run = new_run(model, TrainConfig(epochs=epochs, estimator="nvil", binarize="dynamic", seed=args.seed))
train(run, x_train, x_test[:500], log=lambda line: print("  " + line), progress=False)
x = x_test[:n_digits]
twin = nv.DiscreteVAE(**{**model.config, "hidden_dims": hidden, "dtype": np.float64})   # float64 for the sums
for k, v in model.params.items():
    np.copyto(twin.params[k], v)
_, exact_grads = twin.exact_loss_and_grads(x.astype(np.float64))
exact = np.concatenate([g.ravel() for g in exact_grads.values()])
entropy = np.log(2) - model.posterior.kl_per_variable(model.encode(x)).mean()     # KL_j = log 2 - H_j, Eq. (H4)
x64 = x.astype(np.float64)
print(f"{model!r}: {2 ** Z} codes; exact ELBO of the {n_digits} digits {twin.exact_elbo(x64).mean():.2f} nats, "
      f"exact log p(x) {twin.exact_log_likelihood(x64).mean():.2f}; posterior entropy {entropy:.2f} nats per bit "
      "(at most log 2 = 0.69)")

# %% [markdown]
# ## 3. Each estimator against the exact gradient, at equal cost
#
# For each estimator we draw the gradient of the loss on these digits many times, two samples per
# digit (two decoder passes: the same cost for all), as `numpyvae.lab.discrete_lab.draw_estimates`
# does: one `loss_and_grads` call on $R$ stacked copies of the digits is the mean of $R$ independent
# estimates, and $M$ calls give $M$ such means. From them (`estimate_statistics`):
#
# * **bias in standard errors**: $\lVert\bar g - g\rVert / \sqrt{\sum_j \mathrm{se}_j^2}$, about 1 (or
#   below) for an unbiased estimator, far above for a biased one;
# * **relative bias** $\lVert\bar g - g\rVert / \lVert g\rVert$;
# * **variance** of one estimate of the encoder's gradient (the noise the encoder gets per step).

# %%
encoder = np.concatenate([np.full(v.size, k.startswith("enc.")) for k, v in model.params.items()])
SETTINGS = {"score": dict(estimator="score"),
            "score+loo": dict(estimator="score", baseline=LeaveOneOutBaseline()),
            "nvil": dict(estimator="nvil", baseline=run.baseline),
            "vimco": dict(estimator="vimco"),
            "gumbel": dict(estimator="gumbel", temperature=0.5),
            "straight-through": dict(estimator="straight-through", temperature=0.5)}
table = {}
for name, kw in SETTINGS.items():
    means, R = draw_estimates(model, x, n_samples=2, M=M, rows=rows, rng=rng, **kw)
    table[name] = estimate_statistics(means, R, exact, encoder)
print(f"{'estimator':>18} {'bias (se)':>10} {'rel. bias':>10} {'variance':>11}   ({M} x {rows} decoder rows each)")
for name, s in table.items():
    print(f"{name:>18} {s['bias_se']:10.2f} {s['rel_bias']:10.3f} {s['variance']:11.4g}")

# %% [markdown]
# Reading the table. The score-type estimators (score, score+loo, nvil) are unbiased: their bias
# is within a standard error or two of zero, and what they pay is variance, enormous without a
# baseline (the signal $\log w$ is hundreds of nats) and orders of magnitude smaller with one. VIMCO
# is many standard errors off: it is unbiased for the gradient of the 2-sample bound (Eq. (H22)),
# which is not the ELBO's. The relaxations have the smallest variance and a bias many standard
# errors wide. Lowering $\tau$ trades one for the other:

# %%
sweep = {}
for t in taus:
    means, R = draw_estimates(model, x, "gumbel", 2, M, rows, rng, temperature=t)
    sweep[t] = estimate_statistics(means, R, exact, encoder)
    print(f"gumbel, tau = {t:4g}: bias {sweep[t]['bias_se']:7.2f} se, relative {sweep[t]['rel_bias']:.3f}, "
          f"variance {sweep[t]['variance']:9.4g}")

# %% [markdown]
# ## 4. The figure
#
# Left: each estimator's relative bias and variance (log scales), at two samples per digit. Right:
# the Gumbel-softmax against the temperature: the bias falls as $\tau \to 0$ (the relaxed sample
# becomes the exact one), the variance rises like $1/\tau$ (the derivative becomes a spike on a
# band of width $\propto \tau$ around the decision boundary: docs/discrete.md, section 9). Jang et
# al. (2017) anneal $\tau$ during training for this reason (`--temperature-min`, `--anneal-rate`).

# %%
fig = new_figure(12, 4.4)
ax_b, ax_t = fig.subplots(1, 2)
names = list(table)
pos = np.arange(len(names))
ax_b.bar(pos - 0.2, [table[n]["rel_bias"] for n in names], 0.4, color=[COLORS[n] for n in names],
         label="relative bias")
ax_v = ax_b.twinx()
ax_v.plot(pos + 0.2, [table[n]["variance"] for n in names], "ks", label="variance (right axis)")
ax_b.set_yscale("log")
ax_v.set_yscale("log")
ax_b.set_xticks(pos, names, rotation=20, fontsize=8)
ax_b.set_ylabel("relative bias (bars)")
ax_v.set_ylabel("variance of one encoder gradient (squares)")
ax_b.set_title(r"each estimator, 2 samples per digit ($\tau$ = 0.5)", fontsize=10)
ts = sorted(sweep)
ax_t.plot(ts, [sweep[t]["rel_bias"] for t in ts], "o-", color=COLORS["gumbel"], label="relative bias")
ax_t2 = ax_t.twinx()
ax_t2.plot(ts, [sweep[t]["variance"] for t in ts], "s--", color="black", label="variance")
for ax in (ax_t, ax_t2):
    ax.set_xscale("log")
    ax.set_yscale("log")
ax_t.set_xlabel(r"temperature $\tau$")
ax_t.set_ylabel("relative bias (circles)")
ax_t2.set_ylabel("variance (squares)")
ax_t.set_title("Gumbel-softmax: bias falls with the temperature, variance rises", fontsize=10)
for ax in (ax_b, ax_t):
    ax.grid(alpha=0.3, which="both")
show(save_figure(fig, os.path.join(args.out, FIGURES[1])))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.0f} s)")
