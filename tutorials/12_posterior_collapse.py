# %% [markdown]
# # Tutorial 12: posterior collapse, and what KL warm-up does (and does not do) about it
#
# A latent dimension $j$ "collapses" when its posterior is the prior for every $x$: it then costs
# no KL and tells the decoder nothing. Two measurements from docs/ppca.md section 6:
#
# * $\mathrm{KL}_j$ = the mean over $x$ of $\mathrm{KL}(q(z_j|x) \Vert \mathcal{N}(0, 1))$ (Eq. (A1),
#   docs/ppca.md: `numpyvae.lab.diagnostics.kl_per_dimension`, and the trainer's history
#   "test_kl_per_dim"); we count a dimension as used when it carries more than 0.1 nats;
# * $A_j$ = the variance over $x$ of $\mathbb{E}_q[z_j | x]$, active if $A_j > 0.01$ (Eq. (A2),
#   docs/ppca.md: `active_units`, Burda et al.).
#
# The two need not agree: $A_j$ ignores the posterior variance, and after short training a
# dimension can carry 0.01 nats and still have $A_j > 0.01$.
#
# KL warm-up (Bowman et al. 2016; Sonderby et al. 2016; `TrainConfig.warmup_epochs`) multiplies the
# KL term by a $\beta$ rising linearly from 0, so that early on the encoder can put information into
# $z$ before the KL term pushes every posterior towards the prior. Both settings below train the same
# VAE (same initialisation, same data order) twice: without warm-up and with it.
#
# Read: docs/ppca.md section 6 (Eq. (A1), Eq. (A2)) and section 3 (which directions pPCA keeps),
# docs/elbo.md section 7 ($\beta$). Functions: `numpyvae.lab.diagnostics.active_units` /
# `kl_per_dimension`, `numpyvae.training.kl_warmup_beta`, `TrainConfig(warmup_epochs, beta)`.
#
# Figures (in `--out`):
# * `kl_per_dim_over_epochs.png`: each latent dimension's $\mathrm{KL}_j$ over the epochs, each run;
# * `active_units.png`: the counts over the epochs, and the final $A_j$ sorted.

# %%
import os
import time

import numpy as np
from matplotlib import colormaps

from numpyvae.data import load_dataset
from numpyvae.lab.diagnostics import active_units
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.model import VAE
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("kl_per_dim_over_epochs.png", "active_units.png")
args = setup("12_posterior_collapse", quick="784-32-8, 1000 digits, 3 epochs: seconds")
start = time.perf_counter()
KL_USED = 0.1      # nats: a dimension carrying less than this is counted as (nearly) unused

if args.quick:
    n_train, size, epochs_a, epochs_b, warmup = 1000, dict(hidden=(32,), Z=8), 3, 3, 2
else:
    n_train, size, epochs_a, epochs_b, warmup = 8000, dict(hidden=(200,), Z=32), 40, 20, 10
ds = load_dataset("mnist-mini")
data = (ds.x_train[:n_train], ds.x_test[:500] if args.quick else ds.x_test)

# %% [markdown]
# ## 1. Training with and without warm-up
#
# The VAE is 784-200-32 with ReLU (784-32-8 with `--quick`): more latent dimensions than the
# default's 20, so there is room for collapse. `train_pair` trains it twice with the same seed,
# once without warm-up and once with $\beta$ rising over the first `warmup` epochs, and records the
# active units after every epoch (the trainer records $\mathrm{KL}_j$ itself). The final test ELBO
# is the true bound ($\beta = 1$), with the same noise for both runs.

# %%
def train_pair(setting, data, size, seed):
    """Train the setting without and with warm-up: {warm-up epochs: results}, with the history, the
    KL_j per epoch (epochs, Z), the active units per epoch and at the end (count and A_j), and the
    final test ELBO with its terms."""
    x_train, x_test = data
    results = {}
    for warmup in (0, setting["warmup"]):
        model = VAE(784, size["hidden"], size["Z"], likelihood=setting["likelihood"],
                    obs_var=setting.get("obs_var", 1.0), activation="relu", seed=seed)
        cfg = TrainConfig(epochs=setting["epochs"], batch_size=128, lr=setting["lr"], beta=setting["beta"],
                          warmup_epochs=warmup, seed=seed)
        run = new_run(model, cfg)
        au_curve = []
        train(run, x_train, x_test, log=lambda line: None, progress=False,
              on_epoch_end=lambda r: au_curve.append(active_units(r.model, x_test)[0]))
        terms = model.elbo_terms(x_test, n_samples=10, rng=np.random.default_rng(seed + 7))  # same noise for both
        count, A = active_units(model, x_test)
        kl = np.array(run.history["test_kl_per_dim"])                       # (epochs, Z): Eq. (A1) per epoch
        results[warmup] = dict(history=run.history, kl=kl, au_curve=np.array(au_curve), au=count, A=A,
                               elbo=float(terms["elbo"].mean()), rec=float(terms["rec"].mean()),
                               kl_total=float(terms["kl"].mean()))
    return results


def report(setting, results):
    """Print, for each run, the test ELBO, the active units and the dims with KL_j > KL_USED at the
    end and at a few epochs on the way, then what warm-up changed."""
    for w, r in results.items():
        kl_last = r["kl"][-1]
        name = "no warm-up" if w == 0 else f"warm-up over {w} epochs"
        print(f"   {name:24s} test ELBO {r['elbo']:8.2f} nats (rec {r['rec']:8.2f}, KL {r['kl_total']:6.2f})   "
              f"active units {r['au']:2d}/{size['Z']}   dims with KL_j > {KL_USED}: "
              f"{int(np.sum(kl_last > KL_USED)):2d}")
        marks = sorted({0, min(1, len(r['kl']) - 1), len(r['kl']) // 4, len(r['kl']) // 2, len(r['kl']) - 1})
        print(f"   {'':24s} by epoch " + ", ".join(
            f"{e + 1}: AU {r['au_curve'][e]}, KL>{KL_USED} {int(np.sum(r['kl'][e] > KL_USED))}" for e in marks))
    r0, r1 = results[0], results[setting["warmup"]]
    d_elbo, d_au = r1["elbo"] - r0["elbo"], r1["au"] - r0["au"]
    d_used = int(np.sum(r1["kl"][-1] > KL_USED) - np.sum(r0["kl"][-1] > KL_USED))
    print(f"   -> warm-up changed the test ELBO by {d_elbo:+.2f} nats, the active units by {d_au:+d} and the "
          f"dims with KL_j > {KL_USED} by {d_used:+d}"
          + ("  (little difference)" if abs(d_elbo) < 1 and abs(d_au) <= 1 and abs(d_used) <= 1 else ""))


def describe(s):
    """The header line of a setting: its title, the network, the training."""
    print(f"{s['title']}: VAE 784-{'-'.join(map(str, size['hidden']))}-{size['Z']}, {s['epochs']} epochs on "
          f"{n_train} digits, lr {s['lr']}  ({time.perf_counter() - start:.0f} s so far)")


settings, results = {}, {}

# %% [markdown]
# ## 2. Setting A: a weak likelihood, where collapse is what the objective wants
#
# A Gaussian likelihood with a fixed variance `obs_var = 1` on pixels in $[0, 1]$. Only a few
# directions of the digits are worth their KL: the linear version of this model (pPCA with
# $\sigma^2$ fixed at 1, Tipping & Bishop 1999) switches off exactly the directions whose data
# variance is below $\sigma^2$ (the eigenvalues of the data's covariance, counted below). Watch
# whether warm-up changes the end result.

# %%
settings["A"] = dict(title="A. Gaussian likelihood, obs_var = 1, beta = 1", likelihood="gaussian", obs_var=1.0,
                     beta=1.0, lr=3e-3, epochs=epochs_a, warmup=warmup)
x_c = ds.x_train[:n_train].astype(np.float64) - ds.x_train[:n_train].mean(axis=0)
eig = np.linalg.eigvalsh(x_c.T @ x_c / n_train)            # the data's variance along each principal direction
results["A"] = train_pair(settings["A"], data, size, args.seed)
describe(settings["A"])
print(f"   reference: pPCA with sigma^2 fixed at {settings['A']['obs_var']} keeps the "
      f"{int(np.sum(eig > settings['A']['obs_var']))} directions whose data variance exceeds it "
      f"(of {size['Z']} latent dimensions)")
report(settings["A"], results["A"])

# %% [markdown]
# ## 3. Setting B: a heavy KL weight, where warm-up helps
#
# A Bernoulli likelihood with $\beta = 4$ (a $\beta$-VAE). At the start the decoder does not use
# $z$ yet, and four times the KL switches nearly every dimension off in the first epoch; the
# dimensions must be revived later. Warm-up ($\beta$ from 0 to 4) keeps them on from the start.

# %%
settings["B"] = dict(title="B. Bernoulli likelihood, beta = 4", likelihood="bernoulli", beta=4.0, lr=1e-3,
                     epochs=epochs_b, warmup=warmup)
results["B"] = train_pair(settings["B"], data, size, args.seed)
describe(settings["B"])
report(settings["B"], results["B"])

# %% [markdown]
# ## 4. Figure: the KL of every latent dimension over the epochs
#
# Each line is one latent dimension (colour: its rank at the end); dotted: 0.1 nats; dashed red,
# on the right axis: $\beta$.

# %%
fig = new_figure(12, 8.5)
for i, (key, s) in enumerate(settings.items()):
    top = max(r["kl"].max() for r in results[key].values())
    for j, (w, r) in enumerate(results[key].items()):
        ax = fig.add_subplot(2, 2, 2 * i + j + 1)
        epochs = np.arange(1, r["kl"].shape[0] + 1)
        rank = np.argsort(np.argsort(-r["kl"][-1]))                     # 0 = the dimension with most KL at the end
        colours = colormaps["viridis"](rank / max(1, len(rank) - 1))
        for d in range(r["kl"].shape[1]):
            ax.plot(epochs, np.maximum(r["kl"][:, d], 1e-4), color=colours[d], lw=1)
        ax.axhline(KL_USED, color="black", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, top * 1.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test KL_j per dimension [nats]")
        name = "no warm-up" if w == 0 else f"KL warm-up over {w} epochs"
        ax.set_title(f"{s['title']}\n{name}: {r['au']} active units, "
                     f"{int(np.sum(r['kl'][-1] > KL_USED))} dims with KL_j > {KL_USED}", fontsize=10)
        twin = ax.twinx()
        twin.plot(epochs, r["history"]["beta"], color="tab:red", ls="--", lw=1.5)
        twin.set_ylabel("beta at the end of the epoch (dashed)", color="tab:red")
        twin.set_ylim(0, s["beta"] * 1.1)
fig.suptitle("Each line is one latent dimension (colour: its rank at the end); dotted: 0.1 nats")
show(save_figure(fig, os.path.join(args.out, FIGURES[0])))

# %% [markdown]
# ## 5. Figure: how many dimensions are used, and the final $A_j$

# %%
fig = new_figure(12, 8)
for i, (key, s) in enumerate(settings.items()):
    ax, ax2 = fig.add_subplot(2, 2, 2 * i + 1), fig.add_subplot(2, 2, 2 * i + 2)
    for w, r in results[key].items():
        colour = "tab:orange" if w == 0 else "tab:blue"
        name = "no warm-up" if w == 0 else f"warm-up {w} epochs"
        epochs = np.arange(1, len(r["au_curve"]) + 1)
        ax.plot(epochs, r["au_curve"], color=colour, lw=2, label=f"{name}: active units (A_j > 0.01)")
        ax.plot(epochs, np.sum(r["kl"] > KL_USED, axis=1), color=colour, lw=2, ls="--",
                label=f"{name}: dims with KL_j > {KL_USED}")
        ax2.plot(np.arange(1, len(r["A"]) + 1), np.maximum(np.sort(r["A"])[::-1], 1e-6), "o-", color=colour,
                 ms=4, label=f"{name}: {r['au']} active, test ELBO {r['elbo']:.1f}")
    if key == "A":
        ax.axhline(np.sum(eig > s["obs_var"]), color="0.4", ls=":", label="pPCA with sigma^2 = obs_var")
    ax.set_xlabel("epoch")
    ax.set_ylabel("number of latent dimensions")
    ax.set_ylim(0, size["Z"] * 1.5)                       # room for the legend above the curves
    ax.set_title(f"{s['title']}: how many dimensions are used", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax.grid(alpha=0.3)
    ax2.axhline(0.01, color="black", ls=":", lw=1, label="threshold 0.01 (Burda et al.)")
    ax2.set_yscale("log")
    ax2.set_xlabel("latent dimension, sorted")
    ax2.set_ylabel("A_j = variance over x of the posterior mean")
    ax2.set_title(f"{s['title']}: A_j after training", fontsize=10)
    ax2.legend(fontsize=8, loc="lower left")
    ax2.grid(alpha=0.3)
show(save_figure(fig, os.path.join(args.out, FIGURES[1])))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.0f} s)")
