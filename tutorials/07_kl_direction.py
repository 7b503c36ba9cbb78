"""Tutorial 07 -- the direction of the KL: mode seeking KL(q||p) versus mode covering KL(p||q).

Fit one Gaussian q = N(mu, exp(logvar)) to a bimodal 1-D density p, a two-component
mixture, in two ways.

* Reverse KL, KL(q || p) = E_q[log q(z) - log p(z)], the direction the ELBO uses: by (E3) in
  docs/elbo.md, log p(x) - ELBO = KL(q(z|x) || p(z|x)). With z = mu + exp(logvar/2) eps,
  eps ~ N(0, 1) (Eq. (R1), docs/reparameterization.md), log q(z) = -1/2 (log 2pi + logvar +
  eps^2) (Eq. (I3), docs/importance.md), so

      KL(q || p) = -1/2 (log 2pi e + logvar) - E_eps[ log p(mu + sigma eps) ]
      dKL/dmu     = -E_eps[ g(z) ]
      dKL/dlogvar = -1/2 - E_eps[ g(z) eps sigma / 2 ],      g(z) = d log p(z) / dz,

  which is exactly reparameterize_backward (Eq. (R2)) applied to dz = -g(z) / L, plus the
  entropy's -1/2. For the mixture, g(z) = sum_k r_k(z) (m_k - z) / s_k^2 with the
  responsibilities r_k(z). Adam (numpyvae.optim.Adam) descends this Monte Carlo gradient
  from several starting points. The reverse KL is huge wherever q puts mass and p has
  none, so q squeezes into ONE mode: which one depends on where it starts.

* Forward KL, KL(p || q) = E_p[log p] - E_p[log q]: only the second term depends on q, and
  maximising E_p[log N(z; mu, sigma^2)] gives moment matching in closed form,
  mu = E_p[z] and sigma^2 = Var_p[z]. The forward KL is huge wherever p has mass and q has
  none, so q covers BOTH modes -- and puts its mean in the valley between them.

Every KL value printed is computed on a fine grid of z (trapezoid rule), independently of
the Monte Carlo gradients; the script also checks the reparameterised gradient against
central differences of the grid KL once.

Read: docs/kl.md (the definition of the KL and, section 2, the Gaussian case), docs/elbo.md
section 3 (why the ELBO's gap is a reverse KL), docs/reparameterization.md; functions
numpyvae.distributions.reparameterize, reparameterize_backward, log_normal_diag.

Run:  python tutorials/07_kl_direction.py [--quick] [--out DIR] [--seed S]
"""

import argparse
import math
import os
import time

import numpy as np
from matplotlib.figure import Figure

from numpyvae.distributions import log_normal_diag, reparameterize, reparameterize_backward
from numpyvae.optim import Adam

FIGURES = ("kl_fits.png", "kl_landscape.png")

# The target p: a mixture of two Gaussians, the lighter mode narrower and further out.
WEIGHTS = np.array([0.35, 0.65])
MEANS = np.array([-3.0, 2.0])
STDS = np.array([0.6, 0.8])
LOG_2PI = math.log(2.0 * math.pi)
trapezoid = getattr(np, "trapezoid", None) or np.trapz     # the trapezoid rule (renamed in NumPy 2.0)


def log_p_components(z):
    """log w_k + log N(z; m_k, s_k^2) for each component: shape z.shape + (2,)."""
    z = np.asarray(z, dtype=np.float64)[..., None]
    return np.log(WEIGHTS) + log_normal_diag(z[..., None], MEANS[:, None], 2 * np.log(STDS)[:, None])


def log_p(z):
    """log p(z) of the mixture, by log-sum-exp over the components."""
    lc = log_p_components(z)
    m = lc.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(lc - m).sum(axis=-1, keepdims=True)))[..., 0]


def grad_log_p(z):
    """g(z) = d log p(z)/dz = sum_k r_k(z) (m_k - z) / s_k^2, r_k the responsibilities."""
    lc = log_p_components(z)
    r = np.exp(lc - lc.max(axis=-1, keepdims=True))
    r /= r.sum(axis=-1, keepdims=True)
    return np.sum(r * (MEANS - np.asarray(z)[..., None]) / STDS**2, axis=-1)


def log_q(z, mu, logvar):
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / np.exp(logvar))


def kl_q_p_grid(mu, logvar, grid):
    """KL(q || p) = int q (log q - log p) dz on the grid; mu, logvar broadcast."""
    mu, logvar = np.asarray(mu, dtype=np.float64)[..., None], np.asarray(logvar, dtype=np.float64)[..., None]
    lq = log_q(grid, mu, logvar)
    return trapezoid(np.exp(lq) * (lq - log_p(grid)), grid, axis=-1)


def kl_p_q_grid(mu, logvar, grid):
    """KL(p || q) = int p (log p - log q) dz on the grid."""
    lp = log_p(grid)
    return trapezoid(np.exp(lp) * (lp - log_q(grid, mu, logvar)), grid)


def reverse_kl_grads(mu, logvar, eps):
    """Monte Carlo KL(q||p) and its reparameterised gradient; mu, logvar (S, 1), eps (L, S, 1)."""
    L = eps.shape[0]
    z = reparameterize(mu, logvar, eps)                       # Eq. (R1): (L, S, 1)
    kl = -0.5 * (LOG_2PI + 1.0 + logvar) - log_p(z).mean(axis=0)
    dz = -grad_log_p(z) / L                                   # d KL / dz_l of the -E[log p] term
    dmu, dlogvar = reparameterize_backward(dz, logvar, eps)   # Eq. (R2): sums over the L samples
    return kl, {"mu": dmu, "logvar": dlogvar - 0.5}           # -1/2 from the entropy term


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and a coarser landscape (for tests)")
    parser.add_argument("--out", default=os.path.join("tutorial_output", "07_kl_direction"),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo noise")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    grid = np.linspace(-10.0, 10.0, 2001 if args.quick else 8001)
    steps, L = (600, 16) if args.quick else (1500, 64)

    # --- forward KL: moment matching, closed form -----------------------------------------
    mean_p = float(WEIGHTS @ MEANS)
    var_p = float(WEIGHTS @ (STDS**2 + MEANS**2) - mean_p**2)
    fwd = (mean_p, math.log(var_p))

    # --- check the reparameterised gradient once against central differences ------------
    mu0, lv0, h = np.array([[0.7]]), np.array([[0.3]]), 1e-4
    _, g = reverse_kl_grads(mu0, lv0, rng.standard_normal((200_000, 1, 1)))
    fd_mu = (kl_q_p_grid(0.7 + h, 0.3, grid) - kl_q_p_grid(0.7 - h, 0.3, grid)) / (2 * h)
    fd_lv = (kl_q_p_grid(0.7, 0.3 + h, grid) - kl_q_p_grid(0.7, 0.3 - h, grid)) / (2 * h)

    # --- reverse KL: Adam on (mu, logvar) from several starts at once ---------------------
    starts = np.array([-5.0, -1.0, 0.0, 1.0, 5.0])[:, None]
    params = {"mu": starts.copy(), "logvar": np.zeros_like(starts)}
    opt = Adam(params, lr=0.05)
    path = [np.concatenate([params["mu"], params["logvar"]], axis=1)]
    for step in range(steps):
        if step == steps * 2 // 3:
            opt.lr = 0.01                                      # settle: less Monte Carlo jitter
        _, grads = reverse_kl_grads(params["mu"], params["logvar"], rng.standard_normal((L,) + starts.shape))
        opt.step(grads)
        path.append(np.concatenate([params["mu"], params["logvar"]], axis=1))
    path = np.array(path)                                      # (steps + 1, S, 2)
    rev_mu, rev_lv = params["mu"][:, 0], params["logvar"][:, 0]
    rev_kl = kl_q_p_grid(rev_mu, rev_lv, grid)
    best = int(np.argmin(rev_kl))

    print(f"target p: {WEIGHTS[0]:.2f} N({MEANS[0]}, {STDS[0]}^2) + {WEIGHTS[1]:.2f} N({MEANS[1]}, {STDS[1]}^2); "
          f"its mean {mean_p:.3f}, its std {math.sqrt(var_p):.3f}")
    print(f"gradient check at mu=0.7, logvar=0.3: reparam dKL/dmu {g['mu'][0, 0]:+.4f} vs central difference "
          f"{fd_mu:+.4f}; dKL/dlogvar {g['logvar'][0, 0]:+.4f} vs {fd_lv:+.4f}  (Monte Carlo, L=200000)")
    print(f"reverse KL(q||p), {steps} Adam steps, L={L} samples per step, from {len(starts)} starts:")
    for s, m, lv, k in zip(starts[:, 0], rev_mu, rev_lv, rev_kl):
        mode = int(np.argmin(abs(MEANS - m)))
        print(f"  start mu={s:+.1f} -> mu={m:+.3f}, sigma={math.exp(lv / 2):.3f}   KL(q||p) = {k:.3f} nats "
              f"(sits on mode {mode}: N({MEANS[mode]}, {STDS[mode]}^2), weight {WEIGHTS[mode]})")
    print(f"  on mode k, KL(q||p) is about -log w_k: {-math.log(WEIGHTS[0]):.3f} and {-math.log(WEIGHTS[1]):.3f} nats "
          "-- each mode is a local minimum, the heavier one the global one")

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

    # --- figure 1: p and the fits ----------------------------------------------------------
    fig = Figure(figsize=(8, 4.5), layout="constrained")
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
    fig.savefig(os.path.join(args.out, FIGURES[0]), dpi=100)

    # --- figure 2: the KL(q||p) landscape with the Adam paths ------------------------------
    n_mu, n_lv = (61, 41) if args.quick else (161, 101)
    mus, lvs = np.linspace(-6, 6, n_mu), np.linspace(-3.5, 3.0, n_lv)
    coarse = np.linspace(-12, 12, 1201 if args.quick else 2401)
    land = np.array([kl_q_p_grid(mus, lv, coarse) for lv in lvs])     # (n_lv, n_mu)
    fig = Figure(figsize=(8, 5), layout="constrained")
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
    fig.savefig(os.path.join(args.out, FIGURES[1]), dpi=100)

    print(f"figures: {', '.join(os.path.join(args.out, f) for f in FIGURES)}   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
