# %% [markdown]
# # Tutorial 10: a VAE on a 2-D surface in 3-D, the points $(x, y, \sin(x + y))$
#
# `numpyvae.data.make_sin_surface` draws $x, y$ uniform in $[-3, 3)$ and sets the third coordinate
# to $\sin(x + y) + \mathcal{N}(0, 0.05^2)$: a curled 2-D sheet in 3-D. Its intrinsic dimension is
# 2, so a VAE with a 2-D latent space can in principle describe it exactly: the decoder must learn
# the map from $z$ to the sheet, the encoder its inverse.
#
# The likelihood is a Gaussian whose per-coordinate variance the decoder also outputs
# (`likelihood="gaussian-learned"`: heads "out" = mean and "logvar", Eq. (G1), docs/distributions.md),
# so the model itself decides how far points may sit from its surface; with a fixed variance
# (`likelihood="gaussian"`, `obs_var`) you would have to choose it.
#
# Read: docs/distributions.md (Gaussian likelihoods, fixed and learned variance), docs/elbo.md
# sections 5-6, docs/ppca.md section 6 (the KL per dimension). Functions:
# `numpyvae.data.make_sin_surface`, `numpyvae.model.VAE` (likelihood "gaussian-learned"),
# `VAE.elbo_terms`, `VAE.reconstruct`, `VAE.sample`, `numpyvae.lab.diagnostics.kl_per_dimension`.
#
# Figures (in `--out`):
# * `sin_surface_3d.png`: the data, the reconstructions, decoded prior samples and the decoder's
#   whole surface (a grid of $z$ decoded), as 3-D plots;
# * `sin_latent.png`: the latent space (posterior means of test points) coloured by $x + y$ and by $x - y$.

# %%
import math
import os
import time

import numpy as np

from numpyvae.data import make_sin_surface
from numpyvae.distributions import LOG_2PI
from numpyvae.lab.diagnostics import kl_per_dimension
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.model import VAE
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("sin_surface_3d.png", "sin_latent.png")
args = setup("10_sin_surface", quick="3-32-32-2 for 5 epochs on 1000 points: a second")
rng = np.random.default_rng(args.seed)
start = time.perf_counter()
NOISE = 0.05            # the standard deviation of the third coordinate's noise

n_train, n_test, hidden, epochs = (1000, 500, (32, 32), 5) if args.quick else (5000, 1000, (64, 64), 300)

# %% [markdown]
# ## 1. The data, and a VAE with a 2-D latent space
#
# Not the default architecture: the latent space is 2-D, as the surface is, and two small tanh
# layers give the decoder a smooth map from $z$ to the sheet.

# %%
x_train = make_sin_surface(n_train, rng, noise=NOISE)
x_test = make_sin_surface(n_test, rng, noise=NOISE)

model = VAE(3, hidden, 2, likelihood="gaussian-learned", activation="tanh", seed=args.seed)
run = new_run(model, TrainConfig(epochs=epochs, batch_size=128, lr=2e-3, seed=args.seed))
train(run, x_train, x_test, log=lambda line: None, progress=False)
print(f"{model!r}, {epochs} epochs on {n_train} points ({time.perf_counter() - start:.0f} s)")

# %% [markdown]
# ## 2. The test ELBO, and the best any model can reach
#
# For continuous data the ELBO is a bound on a log-**density**, so it can be positive. For reference,
# the data's own average log-density is the uniform density of $(x, y)$ times the noise's:
# $\log \frac{1}{36} + \mathbb{E}[\log \mathcal{N}(n; 0, 0.05^2)]
#  = \log \frac{1}{36} - \frac{1}{2}(\log 2\pi + \log 0.05^2 + 1)$,
# about $-2.01$ nats per point, the best any model can reach on average. The gap between it and
# the ELBO is what the model and the bound still lose.

# %%
terms = model.elbo_terms(x_test, n_samples=100, rng=rng)
best = math.log(1 / 36) - 0.5 * (LOG_2PI + math.log(NOISE**2) + 1)
print(f"test ELBO {terms['elbo'].mean():+.3f} nats per point = reconstruction {terms['rec'].mean():+.3f} "
      f"- KL {terms['kl'].mean():.3f}   (100 samples per point; the data's own log-density averages {best:+.2f})")

# %% [markdown]
# ## 3. Are both latent dimensions used?
#
# The KL of each latent dimension, averaged over the test points (Eq. (A1), docs/ppca.md): a
# dimension that carries (almost) no nats is the prior for every point, and unused.

# %%
kl_dims = kl_per_dimension(model, x_test)
mu, _ = model.encode(x_test)                     # the posterior means, for sections 4, 6 and 8
print(f"KL per latent dimension: {', '.join(f'{k:.2f}' for k in kl_dims)} nats -> "
      f"{'both dimensions are used' if kl_dims.min() > 0.5 else 'a dimension is (nearly) unused'}")

# %% [markdown]
# ## 4. Reconstructions and the learned noise
#
# The reconstruction $\mathrm{decode}(\mu(x))$ against $x$, per coordinate (the coordinates range
# over 6, 6 and 2), and the standard deviation the decoder's "logvar" head gives at the posterior
# means. The data's noise is 0 in $x$ and $y$ and 0.05 in the third coordinate; whatever the
# decoder's noise has beyond that absorbs the encoder's uncertainty.

# %%
x_rec = model.reconstruct(x_test)
rmse = np.sqrt(np.mean((x_rec - x_test) ** 2, axis=0))
obs_std = np.exp(0.5 * model.decoder_outputs(mu)["logvar"]).mean(axis=0)
print(f"reconstruction decode(mu(x)) - x, RMS per coordinate x, y, sin: {rmse[0]:.3f}, {rmse[1]:.3f}, {rmse[2]:.3f}")
print(f"decoder's learned noise std per coordinate: {obs_std[0]:.3f}, {obs_std[1]:.3f}, {obs_std[2]:.3f} "
      f"(the data's: 0, 0, {NOISE})")

# %% [markdown]
# ## 5. Decoded prior samples: on the surface?
#
# $z \sim \mathcal{N}(0, I)$, decoded to the likelihood's mean: how far the points fall from the
# true surface, $|x_3 - \sin(x_1 + x_2)|$, compared with the reconstructions and the noisy data.

# %%
samples = model.sample(2000, rng)
off = np.abs(samples[:, 2] - np.sin(samples[:, 0] + samples[:, 1]))
off_rec = np.abs(x_rec[:, 2] - np.sin(x_rec[:, 0] + x_rec[:, 1]))
print(f"distance to the true surface |z - sin(x + y)|: decoded prior samples {off.mean():.3f} (median "
      f"{np.median(off):.3f}), reconstructions {off_rec.mean():.3f}, the noisy data itself "
      f"{np.abs(x_test[:, 2] - np.sin(x_test[:, 0] + x_test[:, 1])).mean():.3f}")

# %% [markdown]
# ## 6. What the latent axes mean
#
# The surface's natural coordinates are $x + y$ (along which it curls) and $x - y$ (along which it
# is straight). A correlation of 1 between a posterior mean and one of them means that latent axis
# *is* that direction; the prior is rotation-invariant, so any rotation of the axes is as good.

# %%
corr = np.corrcoef(np.column_stack([mu, x_test[:, 0] + x_test[:, 1], x_test[:, 0] - x_test[:, 1]]).T)[:2, 2:]
print(f"|correlation| of the posterior means with (x + y, x - y): z1 {abs(corr[0, 0]):.2f}, {abs(corr[0, 1]):.2f}; "
      f"z2 {abs(corr[1, 0]):.2f}, {abs(corr[1, 1]):.2f}")
inside = np.mean(np.all(np.abs(samples[:, :2]) <= 3.2, axis=1))
print(f"{100 * inside:.1f}% of decoded prior samples fall inside the data's square [-3, 3]^2 (+0.2)")

# %% [markdown]
# ## 7. Figure: 3-D views
#
# Colour is $x + y$ of the original point, so a reconstruction in the wrong place shows as a
# colour out of order.

# %%
def style3d(ax, title):
    """Axis labels, the data's limits and one viewing angle, shared by the four 3-D panels."""
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("sin(x + y)")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3.5, 3.5)
    ax.set_zlim(-1.5, 1.5)
    ax.view_init(elev=25, azim=-60)
    ax.set_title(title, fontsize=10)


def scatter3d(fig, pos, pts, colour, title, cmap="viridis"):
    """A 3-D scatter of the points pts (N, 3) in the subplot pos (rows, columns, index), coloured by colour (N,)."""
    ax = fig.add_subplot(*pos, projection="3d")
    ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=colour, cmap=cmap, s=4, vmin=-6, vmax=6, depthshade=False)
    style3d(ax, title)
    return ax


fig = new_figure(12, 10)
s_data = x_test[:, 0] + x_test[:, 1]
scatter3d(fig, (2, 2, 1), x_test, s_data, f"test data ({n_test} points), colour = x + y")
scatter3d(fig, (2, 2, 2), x_rec, s_data, "reconstructions decode(mu(x)), colour = the original's x + y")
scatter3d(fig, (2, 2, 3), samples, samples[:, 0] + samples[:, 1], "decoded means of 2000 prior samples z ~ N(0, I)")
ax = fig.add_subplot(2, 2, 4, projection="3d")
g = np.linspace(-2.5, 2.5, 25 if args.quick else 41)
Z1, Z2 = np.meshgrid(g, g)
surf = model.decode(np.column_stack([Z1.ravel(), Z2.ravel()]).astype(np.float32)).reshape(len(g), len(g), 3)
ax.plot_wireframe(surf[..., 0], surf[..., 1], surf[..., 2], color="tab:blue", lw=0.5)
style3d(ax, "the decoder's surface: decoded grid z in [-2.5, 2.5]^2")
fig.suptitle("A VAE with a 2-D latent space on the surface (x, y, sin(x + y))")
show(save_figure(fig, os.path.join(args.out, FIGURES[0])))

# %% [markdown]
# ## 8. Figure: the latent space
#
# The posterior means of the test points, coloured by the two natural coordinates of the surface;
# dashed circles are 1 and 2 prior standard deviations.

# %%
fig = new_figure(11, 4.8)
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
show(save_figure(fig, os.path.join(args.out, FIGURES[1])))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.0f} s)")
