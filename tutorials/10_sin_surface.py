"""Tutorial 10 -- a VAE on a 2-D surface in 3-D: the points (x, y, sin(x + y)).

numpyvae.data.make_sin_surface draws x, y uniform in [-3, 3) and sets the third coordinate
to sin(x + y) + N(0, 0.05^2): a curled 2-D sheet in 3-D. Its intrinsic dimension is 2, so a
VAE with a 2-D latent space can in principle describe it exactly: the decoder must learn the
map from z to the sheet, the encoder its inverse.

The likelihood is a Gaussian whose per-coordinate variance the decoder also outputs
(likelihood="gaussian-learned": heads "out" = mean and "logvar", Eq. (G1) in
docs/distributions.md), so the model itself decides how far points may sit from its surface;
with a fixed variance (likelihood="gaussian", obs_var) you would have to choose it.
For continuous data the ELBO is a bound on a log-DENSITY, so it can be positive; for
reference, the data's own average log-density is log(1/36) + E[log N(noise; 0, 0.05^2)]
= -2.01 nats per point, the best any model can reach on average.

Printed: the test ELBO with its two terms, the reconstruction error decode(mu(x)) - x per
coordinate, the KL per latent dimension (both used?), the noise scale the decoder learned,
and how far decoded prior samples fall from the true surface |z - sin(x + y)|.
Figures: the data, the reconstructions, decoded prior samples and the decoder's whole
surface (a grid of z decoded) as 3-D plots; and the latent space (posterior means of test
points) coloured by x + y and by x - y.

Read: docs/distributions.md (Gaussian likelihoods, fixed and learned variance), docs/elbo.md
sections 5-6; functions numpyvae.data.make_sin_surface, numpyvae.model.VAE (likelihood
"gaussian-learned"), VAE.elbo_terms, VAE.reconstruct, VAE.sample.

Run:  python tutorials/10_sin_surface.py [--quick] [--out DIR] [--seed S]
"""

import argparse
import math
import os
import time

import numpy as np
from matplotlib.figure import Figure

from numpyvae.data import make_sin_surface
from numpyvae.model import VAE
from numpyvae.training import TrainConfig, new_run, train

FIGURES = ("sin_surface_3d.png", "sin_latent.png")
NOISE = 0.05


def scatter3d(fig, pos, pts, colour, title, cmap="viridis"):
    ax = fig.add_subplot(*pos, projection="3d")
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colour, cmap=cmap, s=4, vmin=-6, vmax=6, depthshade=False)
    style3d(ax, title)
    return ax


def style3d(ax, title):
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("sin(x + y)")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
    ax.set_zlim(-1.5, 1.5)
    ax.view_init(elev=25, azim=-60)
    ax.set_title(title, fontsize=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="little data, few epochs (for tests)")
    parser.add_argument("--out", default=os.path.join("tutorial_output", "10_sin_surface"),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the model, training and sampling")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    n_train, n_test, hidden, epochs = (1000, 500, (32, 32), 5) if args.quick else (5000, 1000, (64, 64), 300)
    x_train = make_sin_surface(n_train, rng, noise=NOISE)
    x_test = make_sin_surface(n_test, rng, noise=NOISE)

    model = VAE(3, hidden, 2, likelihood="gaussian-learned", activation="tanh", seed=args.seed)
    run = new_run(model, TrainConfig(epochs=epochs, batch_size=128, lr=2e-3, seed=args.seed))
    train(run, x_train, x_test, log=lambda line: None, progress=False)
    t_train = time.perf_counter() - t0

    terms = model.elbo_terms(x_test, n_samples=100, rng=rng)
    mu, logvar = model.encode(x_test)
    x_rec = model.reconstruct(x_test)
    rmse = np.sqrt(np.mean((x_rec - x_test) ** 2, axis=0))
    obs_std = np.exp(0.5 * model.decoder_outputs(mu)["logvar"]).mean(axis=0)
    kl_dims = np.mean(0.5 * (mu**2 + np.expm1(logvar) - logvar), axis=0)
    samples = model.sample(2000, rng)
    off = np.abs(samples[:, 2] - np.sin(samples[:, 0] + samples[:, 1]))
    off_rec = np.abs(x_rec[:, 2] - np.sin(x_rec[:, 0] + x_rec[:, 1]))
    best = math.log(1 / 36) - 0.5 * math.log(2 * math.pi * NOISE**2) - 0.5

    print(f"{model!r}, {epochs} epochs on {n_train} points ({t_train:.0f} s)")
    print(f"test ELBO {terms['elbo'].mean():+.3f} nats per point = reconstruction {terms['rec'].mean():+.3f} "
          f"- KL {terms['kl'].mean():.3f}   (100 samples per point; the data's own log-density averages "
          f"{best:+.2f}: the gap is what the model and the bound still lose)")
    print(f"KL per latent dimension: {', '.join(f'{k:.2f}' for k in kl_dims)} nats -> "
          f"{'both dimensions are used' if kl_dims.min() > 0.5 else 'a dimension is (nearly) unused'}")
    print(f"reconstruction decode(mu(x)) - x, RMS per coordinate x, y, sin: {rmse[0]:.3f}, {rmse[1]:.3f}, {rmse[2]:.3f} "
          f"(the coordinates range over 6, 6 and 2)")
    print(f"decoder's learned noise std per coordinate: {obs_std[0]:.3f}, {obs_std[1]:.3f}, {obs_std[2]:.3f} "
          f"(the data's noise is 0 in x, y and {NOISE} in the third; the rest absorbs the encoder's uncertainty)")
    print(f"distance to the true surface |z - sin(x + y)|: decoded prior samples {off.mean():.3f} (median "
          f"{np.median(off):.3f}), reconstructions {off_rec.mean():.3f}, the noisy data itself "
          f"{np.abs(x_test[:, 2] - np.sin(x_test[:, 0] + x_test[:, 1])).mean():.3f}")
    corr = np.corrcoef(np.column_stack([mu, x_test[:, 0] + x_test[:, 1], x_test[:, 0] - x_test[:, 1]]).T)[:2, 2:]
    print(f"|correlation| of the posterior means with (x + y, x - y): z1 {abs(corr[0, 0]):.2f}, {abs(corr[0, 1]):.2f}; "
          f"z2 {abs(corr[1, 0]):.2f}, {abs(corr[1, 1]):.2f}  (1 = a latent axis IS that direction; "
          "the prior is rotation-invariant, so any rotation of the axes is as good)")
    inside = np.mean(np.all(np.abs(samples[:, :2]) <= 3.2, axis=1))
    print(f"{100 * inside:.1f}% of decoded prior samples fall inside the data's square [-3, 3]^2 (+0.2)")

    # --- figure 1: 3-D views -----------------------------------------------------------------------
    fig = Figure(figsize=(12, 10), layout="constrained")
    s_data = x_test[:, 0] + x_test[:, 1]
    scatter3d(fig, (2, 2, 1), x_test, s_data, f"test data ({n_test} points), colour = x + y")
    scatter3d(fig, (2, 2, 2), x_rec, s_data, "reconstructions decode(mu(x)), colour = the original's x + y")
    scatter3d(fig, (2, 2, 3), samples, samples[:, 0] + samples[:, 1],
              "decoded means of 2000 prior samples z ~ N(0, I)")
    ax = fig.add_subplot(2, 2, 4, projection="3d")
    g = np.linspace(-2.5, 2.5, 25 if args.quick else 41)
    Z1, Z2 = np.meshgrid(g, g)
    surf = model.decode(np.column_stack([Z1.ravel(), Z2.ravel()]).astype(np.float32)).reshape(len(g), len(g), 3)
    ax.plot_wireframe(surf[..., 0], surf[..., 1], surf[..., 2], color="tab:blue", lw=0.5)
    style3d(ax, "the decoder's surface: decoded grid z in [-2.5, 2.5]^2")
    fig.suptitle("A VAE with a 2-D latent space on the surface (x, y, sin(x + y))")
    fig.savefig(os.path.join(args.out, FIGURES[0]), dpi=100)

    # --- figure 2: the latent space ------------------------------------------------------------------
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    for i, (values, name) in enumerate([(s_data, "x + y"), (x_test[:, 0] - x_test[:, 1], "x - y")]):
        ax = fig.add_subplot(1, 2, i + 1)
        sc = ax.scatter(mu[:, 0], mu[:, 1], c=values, cmap="viridis" if i == 0 else "coolwarm", s=6)
        fig.colorbar(sc, ax=ax, label=name)
        t = np.linspace(0, 2 * np.pi, 200)
        for r in (1, 2):
            ax.plot(r * np.cos(t), r * np.sin(t), color="0.6", lw=0.8, ls="--")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("z1 (posterior mean)")
        ax.set_ylabel("z2 (posterior mean)")
        ax.set_title(f"posterior means of {n_test} test points, colour = {name}")
    fig.suptitle("The latent space: dashed circles are 1 and 2 prior standard deviations")
    fig.savefig(os.path.join(args.out, FIGURES[1]), dpi=100)
    print(f"figures: {', '.join(os.path.join(args.out, f) for f in FIGURES)}   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
