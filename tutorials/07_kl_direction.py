# %% [markdown]
# # Tutorial 07: the direction of the KL, mode seeking versus mode covering
#
# Fit one Gaussian $q = \mathcal{N}(\mu, e^{v})$ ($v$ = `logvar`) to a bimodal 1-D density $p$, a
# two-component mixture, in two ways:
#
# * **reverse KL**, $\mathrm{KL}(q \Vert p) = \mathbb{E}_q[\log q(z) - \log p(z)]$, the direction the
#   ELBO uses: its gap is $\log p(x) - \mathrm{ELBO} = \mathrm{KL}(q(z|x) \Vert p(z|x))$, Eq. (E3),
#   docs/elbo.md. It is huge wherever $q$ puts mass and $p$ has none, so $q$ squeezes into **one**
#   mode, and which one depends on where it starts;
# * **forward KL**, $\mathrm{KL}(p \Vert q)$: huge wherever $p$ has mass and $q$ has none, so $q$
#   covers **both** modes, and puts its mean in the valley between them.
#
# Every KL printed is computed on a fine grid of $z$ (the trapezoid rule), independently of the
# Monte Carlo gradients used to fit $q$.
#
# Read: docs/kl.md (the definition of the KL; section 2, the Gaussian case), docs/elbo.md section 3
# (why the ELBO's gap is a reverse KL), docs/reparameterization.md. Functions:
# `numpyvae.distributions.reparameterize`, `reparameterize_backward`, `log_normal_diag`,
# `log_mean_exp`; `numpyvae.optim.Adam`.
#
# Figures (in `--out`):
# * `kl_fits.png`: $p$, a reverse-KL fit on each mode, and the forward-KL fit;
# * `kl_landscape.png`: $\mathrm{KL}(q \Vert p)$ over $(\mu, \log\sigma^2)$ with the Adam paths.

# %%
import math
import os
import time

import numpy as np

from numpyvae.distributions import (
    LOG_2PI, log_mean_exp, log_normal_diag, normalized_importance_weights, reparameterize, reparameterize_backward,
)
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.optim import Adam
from tutorial import setup, show

FIGURES = ("kl_fits.png", "kl_landscape.png")
args = setup("07_kl_direction", quick="600 Adam steps, coarser grids: about a second")
rng = np.random.default_rng(args.seed)
start = time.perf_counter()

grid = np.linspace(-10.0, 10.0, 2001 if args.quick else 8001)    # where every KL is integrated
steps, L = (600, 16) if args.quick else (1500, 64)                # Adam steps, samples per step
trapezoid = getattr(np, "trapezoid", None) or np.trapz            # the trapezoid rule (renamed in NumPy 2.0)

# %% [markdown]
# ## 1. The target $p$: a mixture of two Gaussians
#
# $p(z) = \sum_k w_k \mathcal{N}(z; m_k, s_k^2)$, the lighter mode narrower and further out. Its
# log-density is a log-sum-exp over the components,
# $\log p(z) = \log \frac{1}{2} \sum_k e^{\ell_k(z)} + \log 2$ with
# $\ell_k = \log w_k + \log \mathcal{N}(z; m_k, s_k^2)$,
# which is the package's `log_mean_exp` plus $\log 2$. Its score, which the reverse-KL gradient
# needs, is
#
# $$g(z) = \frac{d \log p(z)}{dz} = \sum_k r_k(z) \frac{m_k - z}{s_k^2}, \qquad
#   r_k(z) = \frac{e^{\ell_k(z)}}{\sum_j e^{\ell_j(z)}},$$
#
# with the responsibilities $r_k$: a softmax of the $\ell_k$, the same normalisation as
# `normalized_importance_weights`. The 1-D Gaussians here are `log_normal_diag` with a last axis
# of length 1.

# %%
WEIGHTS = np.array([0.35, 0.65])
MEANS = np.array([-3.0, 2.0])
STDS = np.array([0.6, 0.8])


def log_p_components(z):
    """l_k(z) = log w_k + log N(z; m_k, s_k^2) for each component: shape z.shape + (2,)."""
    z = np.asarray(z, dtype=np.float64)[..., None]
    return np.log(WEIGHTS) + log_normal_diag(z[..., None], MEANS[:, None], 2 * np.log(STDS)[:, None])


def log_p(z):
    """log p(z) = log sum_k exp(l_k(z)), the mixture's log-density: shape z.shape."""
    return log_mean_exp(log_p_components(z), axis=-1) + math.log(len(WEIGHTS))


def grad_log_p(z):
    """g(z) = d log p(z)/dz = sum_k r_k(z) (m_k - z) / s_k^2: shape z.shape."""
    r = normalized_importance_weights(log_p_components(z), axis=-1)     # the responsibilities r_k(z)
    return np.sum(r * (MEANS - np.asarray(z)[..., None]) / STDS**2, axis=-1)


def log_q(z, mu, logvar):
    """log N(z; mu, exp(logvar)) of the 1-D Gaussian q; z, mu, logvar broadcast."""
    return log_normal_diag(np.asarray(z)[..., None], np.asarray(mu)[..., None], np.asarray(logvar)[..., None])


# %% [markdown]
# ## 2. Both KLs on a grid
#
# $\mathrm{KL}(q \Vert p) = \int q (\log q - \log p)\, dz$ and $\mathrm{KL}(p \Vert q) = \int p (\log p - \log q)\, dz$,
# by the trapezoid rule on `grid`. These are the numbers every comparison below prints, and the
# reference the Monte Carlo gradient is checked against.

# %%
def kl_q_p_grid(mu, logvar, grid):
    """KL(q || p) = int q (log q - log p) dz on the grid; mu, logvar broadcast (shape of mu)."""
    mu, logvar = np.asarray(mu, dtype=np.float64)[..., None], np.asarray(logvar, dtype=np.float64)[..., None]
    lq = log_q(grid, mu, logvar)
    return trapezoid(np.exp(lq) * (lq - log_p(grid)), grid, axis=-1)


def kl_p_q_grid(mu, logvar, grid):
    """KL(p || q) = int p (log p - log q) dz on the grid, for scalar mu, logvar."""
    lp = log_p(grid)
    return trapezoid(np.exp(lp) * (lp - log_q(grid, mu, logvar)), grid)


# %% [markdown]
# ## 3. The forward KL: moment matching, in closed form
#
# $\mathrm{KL}(p \Vert q) = \mathbb{E}_p[\log p] - \mathbb{E}_p[\log q]$: only the second term depends
# on $q$, and maximising $\mathbb{E}_p[\log \mathcal{N}(z; \mu, \sigma^2)]$ gives $\mu = \mathbb{E}_p[z]$
# and $\sigma^2 = \mathrm{Var}_p[z]$: for the mixture, $\mathbb{E}_p[z] = \sum_k w_k m_k$ and
# $\mathrm{Var}_p[z] = \sum_k w_k (s_k^2 + m_k^2) - \mathbb{E}_p[z]^2$. No optimisation needed.

# %%
mean_p = float(WEIGHTS @ MEANS)
var_p = float(WEIGHTS @ (STDS**2 + MEANS**2) - mean_p**2)
fwd = (mean_p, math.log(var_p))       # (mu, logvar) of the forward-KL fit
print(f"target p: {WEIGHTS[0]:.2f} N({MEANS[0]}, {STDS[0]}^2) + {WEIGHTS[1]:.2f} N({MEANS[1]}, {STDS[1]}^2); "
      f"its mean {mean_p:.3f}, its std {math.sqrt(var_p):.3f}")

# %% [markdown]
# ## 4. The reverse KL's reparameterised gradient
#
# With $z = \mu + \sigma\varepsilon$, $\varepsilon \sim \mathcal{N}(0, 1)$ (Eq. (R1),
# docs/reparameterization.md), $\log q(z) = -\frac{1}{2}(\log 2\pi + v + \varepsilon^2)$ (Eq. (I3),
# docs/importance.md), so the entropy term is exact and only $\mathbb{E}_q[\log p]$ is sampled:
#
# $$\mathrm{KL}(q \Vert p) = -\tfrac{1}{2}(\log 2\pi e + v) - \mathbb{E}_\varepsilon[\log p(\mu + \sigma\varepsilon)]$$
# $$\frac{\partial \mathrm{KL}}{\partial \mu} = -\mathbb{E}_\varepsilon[g(z)], \qquad
#   \frac{\partial \mathrm{KL}}{\partial v} =
#   -\tfrac{1}{2} - \mathbb{E}_\varepsilon\big[g(z)\, \varepsilon\, \sigma / 2\big].$$
#
# That is exactly `reparameterize_backward` (Eq. (R2), docs/reparameterization.md) applied to
# $dz_l = -g(z_l)/L$, plus the entropy's $-\frac{1}{2}$. Checked once here against central
# differences of the grid KL, with many samples so the Monte Carlo error is small.

# %%
def reverse_kl_grads(mu, logvar, eps):
    """Monte Carlo KL(q||p) (S, 1) and its reparameterised gradient {"mu", "logvar"}, each (S, 1);
    mu, logvar (S, 1), eps (L, S, 1)."""
    L = eps.shape[0]
    z = reparameterize(mu, logvar, eps)                       # Eq. (R1): (L, S, 1)
    kl = -0.5 * (LOG_2PI + 1.0 + logvar) - log_p(z).mean(axis=0)
    dz = -grad_log_p(z) / L                                   # d KL / dz_l of the -E[log p] term
    dmu, dlogvar = reparameterize_backward(dz, logvar, eps)   # Eq. (R2): sums over the L samples
    return kl, {"mu": dmu, "logvar": dlogvar - 0.5}           # -1/2 from the entropy term


mu0, lv0, h = 0.7, 0.3, 1e-4
_, g = reverse_kl_grads(np.array([[mu0]]), np.array([[lv0]]), rng.standard_normal((200_000, 1, 1)))
fd_mu = (kl_q_p_grid(mu0 + h, lv0, grid) - kl_q_p_grid(mu0 - h, lv0, grid)) / (2 * h)
fd_lv = (kl_q_p_grid(mu0, lv0 + h, grid) - kl_q_p_grid(mu0, lv0 - h, grid)) / (2 * h)
print(f"gradient check at mu={mu0}, logvar={lv0}: reparam dKL/dmu {g['mu'][0, 0]:+.4f} vs central difference "
      f"{fd_mu:+.4f}; dKL/dlogvar {g['logvar'][0, 0]:+.4f} vs {fd_lv:+.4f}  (Monte Carlo, L=200000)")

# %% [markdown]
# ## 5. Fitting the reverse KL: Adam from five starts
#
# Adam descends the Monte Carlo gradient on $(\mu, v)$ from five starting means at once (each row
# of `params` is one run); the step size drops for the last third to reduce the Monte Carlo
# jitter. Look at which mode each run ends on: each mode is a local minimum of
# $\mathrm{KL}(q \Vert p)$, about $-\log w_k$ deep (the mass of $p$ that $q$ ignores).

# %%
starts = np.array([-5.0, -1.0, 0.0, 1.0, 5.0])[:, None]
params = {"mu": starts.copy(), "logvar": np.zeros_like(starts)}
opt = Adam(params, lr=0.05)
path = [np.concatenate([params["mu"], params["logvar"]], axis=1)]
for step in range(steps):
    if step == steps * 2 // 3:
        opt.lr = 0.01                                          # settle: less Monte Carlo jitter
    _, grads = reverse_kl_grads(params["mu"], params["logvar"], rng.standard_normal((L,) + starts.shape))
    opt.step(grads)
    path.append(np.concatenate([params["mu"], params["logvar"]], axis=1))
path = np.array(path)                                          # (steps + 1, S, 2)
rev_mu, rev_lv = params["mu"][:, 0], params["logvar"][:, 0]
rev_kl = kl_q_p_grid(rev_mu, rev_lv, grid)
best = int(np.argmin(rev_kl))

print(f"reverse KL(q||p), {steps} Adam steps, L={L} samples per step, from {len(starts)} starts:")
for s, m, lv, k in zip(starts[:, 0], rev_mu, rev_lv, rev_kl):
    mode = int(np.argmin(abs(MEANS - m)))
    print(f"  start mu={s:+.1f} -> mu={m:+.3f}, sigma={math.exp(lv / 2):.3f}   KL(q||p) = {k:.3f} nats "
          f"(sits on mode {mode}: N({MEANS[mode]}, {STDS[mode]}^2), weight {WEIGHTS[mode]})")
print(f"  on mode k, KL(q||p) is about -log w_k: {-math.log(WEIGHTS[0]):.3f} and {-math.log(WEIGHTS[1]):.3f} nats")

# %% [markdown]
# ## 6. Both KLs for both fits
#
# Each fit is good in its own direction and bad in the other. The forward fit's mean lies where
# $p$ is small, and it puts about as much mass on the left mode's side as $p$ does; the reverse
# fit puts almost none there.

# %%
fits = {"reverse KL(q||p) fit": (rev_mu[best], rev_lv[best]), "forward KL(p||q) fit": fwd}
print("both KLs for both fits (nats, on the grid):")
for name, (m, lv) in fits.items():
    print(f"  {name:22s} mu={m:+.3f} sigma={math.exp(lv / 2):.3f}:  KL(q||p) = {float(kl_q_p_grid(m, lv, grid)):7.3f}"
          f"   KL(p||q) = {float(kl_p_q_grid(m, lv, grid)):7.3f}")
print(f"  the forward fit's mean {mean_p:+.3f} lies in the valley: p there is {math.exp(log_p(mean_p)):.4f}, "
      f"vs {math.exp(log_p(MEANS[1])):.3f} at the heavier mode")
mass = [float(trapezoid(np.exp(log_q(grid, m, lv)) * (grid < -0.5), grid)) for m, lv in fits.values()]
print(f"  mass q puts on the left mode's side (z < -0.5): reverse fit {mass[0]:.3f}, forward fit {mass[1]:.3f}, "
      f"p itself {float(trapezoid(np.exp(log_p(grid)) * (grid < -0.5), grid)):.3f}")

# %% [markdown]
# ## 7. Figure: $p$ and the fits
#
# One curve per mode the reverse-KL runs found (the best run on each), and the forward-KL fit.

# %%
fig = new_figure(8, 4.5)
ax = fig.add_subplot()
zs = np.linspace(-7, 7, 1000)
ax.fill_between(zs, np.exp(log_p(zs)), color="0.8", label="target p (two-component mixture)")
colours = {0: "tab:blue", 1: "tab:red"}
seen = set()
for m, lv, k in zip(rev_mu, rev_lv, rev_kl):
    mode = int(np.argmin(abs(MEANS - m)))
    if mode in seen:
        continue
    seen.add(mode)
    ax.plot(zs, np.exp(log_q(zs, m, lv)), color=colours[mode], lw=2,
            label=f"a local min of KL(q||p): mu={m:+.2f}, sigma={math.exp(lv / 2):.2f}, KL(q||p)={k:.2f}")
ax.plot(zs, np.exp(log_q(zs, *fwd)), color="tab:green", lw=2, ls="--",
        label=f"the min of KL(p||q), moment matching: mu={fwd[0]:+.2f}, sigma={math.exp(fwd[1] / 2):.2f}")
ax.set_xlabel("z")
ax.set_ylabel("density")
ax.set_title("Reverse KL seeks one mode, forward KL covers both")
ax.legend(loc="upper left", fontsize=8, frameon=False)
ax.set_ylim(0, 0.75)
show(save_figure(fig, os.path.join(args.out, FIGURES[0])))

# %% [markdown]
# ## 8. Figure: the $\mathrm{KL}(q \Vert p)$ landscape with the Adam paths
#
# The grid KL over $(\mu, v)$ has two basins, one per mode; each Adam path runs downhill into
# the basin it starts in. The forward-KL fit (the cross) sits on the ridge between them.

# %%
n_mu, n_lv = (61, 41) if args.quick else (161, 101)
mus, lvs = np.linspace(-6, 6, n_mu), np.linspace(-3.5, 3.0, n_lv)
coarse = np.linspace(-12, 12, 1201 if args.quick else 2401)
land = np.array([kl_q_p_grid(mus, lv, coarse) for lv in lvs])     # (n_lv, n_mu)
fig = new_figure(8, 5)
ax = fig.add_subplot()
cs = ax.contourf(mus, lvs, np.log10(land), levels=30, cmap="viridis")
fig.colorbar(cs, ax=ax, label="log10 KL(q||p)  [nats]")
for s in range(path.shape[1]):
    ax.plot(path[:, s, 0], path[:, s, 1], color="white", lw=1.2)
    ax.plot(path[0, s, 0], path[0, s, 1], "o", color="white", ms=5)
    ax.plot(path[-1, s, 0], path[-1, s, 1], "*", color="tab:orange", ms=12)
ax.plot(*fwd, "X", color="tab:red", ms=11, label="minimum of KL(p||q) (moment matching)")
ax.plot([], [], "w-", label="Adam on KL(q||p), reparameterised gradient (o start, * end)")
ax.set_xlabel("mu")
ax.set_ylabel("logvar = log sigma^2")
ax.set_title("KL(q||p) over q's parameters: two basins, one per mode")
ax.legend(loc="lower left", fontsize=8, facecolor="0.9")
show(save_figure(fig, os.path.join(args.out, FIGURES[1])))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
