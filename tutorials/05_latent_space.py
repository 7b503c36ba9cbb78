# %% [markdown]
# # Tutorial 05: looking at a 2-D latent space
#
# With `latent_dim = 2` the whole latent space fits on a page. We train a VAE with the default
# widths and activation but a 2-D latent space (784-400-2 ReLU, Bernoulli likelihood) on mnist-mini
# and look at it three ways: the encoder's posterior means of the test digits, the decoder over a
# grid of codes, and interpolations between digits. Then we ask how well two numbers per digit
# separate the ten classes.
#
# Read alongside: docs/elbo.md, sections 4-5; docs/kl.md, section 2; docs/ppca.md (the KL per
# dimension); `numpyvae.model.VAE.encode`, `numpyvae.model.VAE.decode`,
# `numpyvae.lab.diagnostics.kl_per_dimension`, `numpyvae.lab.plotting.manifold_codes`,
# `numpyvae.lab.plotting.plot_manifold`.
#
# Figures (in `--out`):
# * `latent.png`: posterior means of the test digits by label, the manifold's grid region and the
#   interpolation paths;
# * `manifold.png`: 20 x 20 decoded grid over the latent plane;
# * `interpolation.png`: four interpolation strips between test digits of different classes.

# %%
import os
import time

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D
from scipy.special import ndtri

import numpyvae as nv
from numpyvae.lab.diagnostics import encode_all, kl_per_dimension
from numpyvae.lab.plotting import image_grid, new_figure, plot_manifold, save_figure, show_image
from numpyvae.model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("latent.png", "manifold.png", "interpolation.png")
args = setup("05_latent_space", quick="1500 digits, 784-64-2, 3 epochs: same code path, seconds")
start = time.perf_counter()

# %% [markdown]
# ## 1. Train a VAE with a 2-D latent space
#
# The full run trains for 20 epochs; `--quick` trains a 784-64-2 model for 3 epochs on 1500 digits,
# a smoke run whose numbers mean little.

# %%
data = nv.load_dataset("mnist-mini")
x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
if args.quick:
    x_train, y_train, x_test, y_test = x_train[:1500], y_train[:1500], x_test[:500], y_test[:500]
    hidden, epochs = (64,), 3
else:
    hidden, epochs = DEFAULT_HIDDEN_DIMS, 20

vae = nv.VAE(x_train.shape[1], hidden, 2, likelihood="bernoulli", activation=DEFAULT_ACTIVATION, seed=args.seed)
print(f"--- training {vae!r} for {epochs} epochs on {x_train.shape[0]} digits")
run = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
            log=lambda s: print("  " + s), progress=False)
h = run.history

# %% [markdown]
# ## 2. The encoder: where the digits' codes lie
#
# The posterior means $\mu(x)$ (Eq. (E4), docs/elbo.md) of every digit, and the KL of each of the
# two dimensions (Eq. (A1), docs/ppca.md; their sum is the KL of Eq. (K2), docs/kl.md). The KL is
# what the codes say about each digit: compare it with the nats the reconstruction term still leaves
# unexplained in the pixels. Then: do the codes fill the prior $\mathcal{N}(0, I)$? We count the
# test codes inside the square the manifold's grid covers (the prior's quantiles 0.05 ... 0.95 on
# each axis) and in each quadrant, which holds 25% of the prior's mass.

# %%
mu_train = encode_all(vae, x_train)[0].astype(np.float64)       # posterior means, (N, 2)
mu_test = encode_all(vae, x_test)[0].astype(np.float64)
kl_dims = kl_per_dimension(vae, x_test)                          # Eq. (A1), docs/ppca.md
print(f"{x_test.shape[0]} test digits: ELBO {h['test_elbo'][-1]:.2f} nats = rec {h['test_rec'][-1]:.2f} "
      f"- KL {h['test_kl'][-1]:.2f}")
print(f"KL per latent dimension: z1 {kl_dims[0]:.2f} nats, z2 {kl_dims[1]:.2f} nats (sum {kl_dims.sum():.2f}); "
      f"{int(np.sum(kl_dims > 0.01))} of 2 dimensions in use (> 0.01 nats)")

q95 = float(ndtri(0.95))
inside = float(np.mean(np.all(np.abs(mu_test) <= q95, axis=1)))
print(f"posterior means: mean ({mu_test[:, 0].mean():+.2f}, {mu_test[:, 1].mean():+.2f}), "
      f"std ({mu_test[:, 0].std():.2f}, {mu_test[:, 1].std():.2f}); "
      f"{100 * inside:.0f}% inside the manifold grid's square [-{q95:.3f}, {q95:.3f}]^2")
quadrants = {(sx, sy): float(np.mean((np.sign(mu_test[:, 0]) == sx) & (np.sign(mu_test[:, 1]) == sy)))
             for sx in (1, -1) for sy in (1, -1)}
emptiest = min(quadrants, key=quadrants.get)
quad_name = f"z1 {'>' if emptiest[0] > 0 else '<'} 0, z2 {'>' if emptiest[1] > 0 else '<'} 0"
print(f"the emptiest quadrant, {quad_name}, holds {100 * quadrants[emptiest]:.1f}% of the test codes "
      "(the prior: 25%)")

# %% [markdown]
# ## 3. The decoder over the latent plane
#
# `plot_manifold` decodes codes on a grid at the prior's quantiles 0.05 ... 0.95, $z = \Phi^{-1}(u)$
# per axis (`manifold_codes`), to their mean images, so the grid is dense where $\mathcal{N}(0, I)$
# puts its mass (Kingma & Welling 2014, Fig. 4). Where the grid reaches a region no digit's code
# occupies (the emptiest quadrant above), the decoder was hardly trained, and what it draws there is
# invented: the aggregate posterior does not fill the prior.

# %%
show(plot_manifold(vae, os.path.join(args.out, "manifold.png"), n=20))

# %% [markdown]
# ## 4. Interpolations
#
# Codes on the straight line $(1 - t)\,\mu(x_A) + t\,\mu(x_B)$ between the posterior means of two
# test digits of different classes, decoded. As endpoints we take typical digits: of each class, the
# one whose code is nearest the centroid of that class's codes (the first digit of a class may be
# an odd one). The same lines are drawn as paths in the scatter of the codes, `latent.png`, which
# also marks the manifold grid's square.

# %%
def plot_interpolations(rows, steps, path):
    """One strip per row of rows, a list of (x_a (D,), decoded (steps, D), x_b (D,), caption)."""
    fig = new_figure(0.75 * (steps + 2) + 0.5, 1.25 * len(rows) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(rows), 1))
    for ax, (x_a, dec, x_b, caption) in zip(axes, rows):
        show_image(ax, image_grid(np.concatenate([x_a[None], dec, x_b[None]]), steps + 2), 0.0, 1.0)
        ax.set_title(caption, fontsize=9)
    fig.suptitle(r"decoded means along $(1-t)\,\mu(x_A) + t\,\mu(x_B)$, $t = 0 \dots 1$ (inputs at the ends)",
                 fontsize=10)
    return save_figure(fig, path)


def plot_latent(mu, labels, paths, path):
    """Scatter of the codes mu (N, 2) coloured by labels (N,), the square [-q95, q95]^2 of the
    manifold's grid, and the interpolation lines {(a, b): (steps, 2)} in paths."""
    colors = colormaps["tab10"]
    fig = new_figure(7.8, 6.4)
    ax = fig.add_subplot()
    ax.scatter(mu[:, 0], mu[:, 1], c=colors(labels % 10), s=5, alpha=0.6, linewidths=0)
    ax.plot([-q95, q95, q95, -q95, -q95], [-q95, -q95, q95, q95, -q95], color="black", lw=1, ls="--")
    for (a, b), line in paths.items():
        ax.plot(line[:, 0], line[:, 1], "-", color="black", lw=1.2)
        ax.plot(line[[0, -1], 0], line[[0, -1], 1], "o", color="black", ms=4)
        ax.annotate(f"{a}->{b}", line[len(line) // 2], fontsize=8, ha="center", va="center", fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black", lw=0.5, alpha=0.85))
    handles = [Line2D([], [], ls="", marker="o", color=colors(k), label=str(k)) for k in range(10)]
    handles.append(Line2D([], [], color="black", ls="--", label="manifold.png grid"))
    handles.append(Line2D([], [], color="black", marker="o", ms=4, label="interpolation path"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("$z_1$ (posterior mean)")
    ax.set_ylabel("$z_2$ (posterior mean)")
    ax.set_title(f"posterior means of {mu.shape[0]} test digits, coloured by label (never seen in training)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# %%
PAIRS = ((1, 0), (9, 6), (3, 0), (7, 2))      # digit classes to interpolate between
STEPS = 10
typical = {}                                   # class -> index of its most typical test digit
for k in np.unique(y_test):
    idx = np.flatnonzero(y_test == k)
    typical[int(k)] = int(idx[np.argmin(((mu_test[idx] - mu_test[idx].mean(axis=0)) ** 2).sum(axis=1))])
t = np.linspace(0.0, 1.0, STEPS)[:, None]
rows, paths = [], {}
for a, b in PAIRS:
    if a not in typical or b not in typical:
        continue
    za, zb = mu_test[typical[a]], mu_test[typical[b]]
    line = (1 - t) * za + t * zb
    paths[a, b] = line
    rows.append((x_test[typical[a]], vae.decode(line), x_test[typical[b]],
                 f"{a} -> {b}: from ({za[0]:.2f}, {za[1]:.2f}) to ({zb[0]:.2f}, {zb[1]:.2f})"))
show(plot_interpolations(rows, STEPS, os.path.join(args.out, "interpolation.png")))
show(plot_latent(mu_test, y_test, paths, os.path.join(args.out, "latent.png")))

# %% [markdown]
# ## 5. How well do two numbers per digit separate ten classes?
#
# Digits of a class gather in the plane without the VAE ever seeing a label, because similar images
# are cheapest to encode with nearby codes. We measure it with two classifiers on the test codes: the
# nearest centroid (centroids of the training means) and a 10-nearest-neighbour vote, next to the
# same classifiers on the first two principal components of the pixels (the best *linear* 2-D code;
# `pca_fit` computes the axes on the training digits by subspace iteration, cheaper than the full SVD
# of `numpyvae.lab.plotting.pca_2d`, and projects the test digits on them) and on all 784 pixels.
#
# Two numbers are few for ten classes: some classes share a region with a neighbour (after the full
# run, for example, 5 and 8, 7 and 9, 4 and 9), and even their most typical code may decode as that
# neighbour. The most confused pairs are printed: their clusters touch in `latent.png`.

# %%
def nearest_centroid_accuracy(train_pts, y_train, test_pts, y_test):
    """Accuracy on (test_pts, y_test) of assigning each point the class of the nearest class
    centroid of train_pts (N, K)."""
    classes = np.unique(y_train)
    centroids = np.stack([train_pts[y_train == k].mean(axis=0) for k in classes])
    d = ((test_pts[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return float(np.mean(classes[np.argmin(d, axis=1)] == y_test))


def knn_predict(train_pts, y_train, test_pts, k=10, chunk=500):
    """Majority vote of the k nearest training points (squared Euclidean distance): (M,) labels."""
    pred = []
    sq_train = (train_pts ** 2).sum(axis=1)
    for i in range(0, test_pts.shape[0], chunk):
        t = test_pts[i:i + chunk]
        d = sq_train[None, :] - 2 * t @ train_pts.T          # + |t|^2, the same for every training point
        nearest = np.argpartition(d, k, axis=1)[:, :k]
        votes = np.apply_along_axis(np.bincount, 1, y_train[nearest], minlength=10)
        pred.append(np.argmax(votes, axis=1))
    return np.concatenate(pred)


def knn_accuracy(train_pts, y_train, test_pts, y_test, k=10):
    """Accuracy of knn_predict on (test_pts, y_test)."""
    return float(np.mean(knn_predict(train_pts, y_train, test_pts, k) == y_test))


def pca_fit(x, rng, k=2, oversample=10, iterations=30):
    """Mean and the k leading principal axes (k, D) of x (N, D), by subspace iteration on the
    covariance: a handful of matrix products, much cheaper than a full SVD of an 8000 x 784 matrix."""
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    q = np.linalg.qr(rng.standard_normal((x.shape[1], k + oversample)))[0]
    for _ in range(iterations):
        q = np.linalg.qr(cov @ q)[0]
    w, v = np.linalg.eigh(q.T @ cov @ q)                # Rayleigh-Ritz on the small subspace
    return mean, (q @ v[:, ::-1][:, :k]).T


# %%
mean, axes = pca_fit(x_train.astype(np.float64), np.random.default_rng(args.seed + 5))
pc_train, pc_test = (x_train - mean) @ axes.T, (x_test - mean) @ axes.T
xtr, xte = x_train.astype(np.float64), x_test.astype(np.float64)
acc = {
    "VAE latent (2-D)": (nearest_centroid_accuracy(mu_train, y_train, mu_test, y_test),
                         knn_accuracy(mu_train, y_train, mu_test, y_test)),
    "pixel PCA (2-D)": (nearest_centroid_accuracy(pc_train, y_train, pc_test, y_test),
                        knn_accuracy(pc_train, y_train, pc_test, y_test)),
    "pixels (784-D)": (nearest_centroid_accuracy(xtr, y_train, xte, y_test),
                       knn_accuracy(xtr, y_train, xte, y_test)),
}
print(f"class separation, accuracy on the test digits (always guessing the most frequent class: "
      f"{100 * np.max(np.bincount(y_test)) / len(y_test):.0f}%):")
print(f"  {'code':<18} {'nearest centroid':>17} {'10-NN vote':>11}")
for name, (nc, kn) in acc.items():
    print(f"  {name:<18} {100 * nc:16.1f}% {100 * kn:10.1f}%")
gain = acc["VAE latent (2-D)"][1] - acc["pixel PCA (2-D)"][1]
print(f"  VAE latent - pixel PCA (10-NN): {100 * gain:+.1f} points")

pred = knn_predict(mu_train, y_train, mu_test)
confusion = np.zeros((10, 10), dtype=int)
np.add.at(confusion, (y_test, pred), 1)
pair_counts = {(a, b): confusion[a, b] + confusion[b, a] for a in range(10) for b in range(a + 1, 10)}
worst = sorted(pair_counts, key=pair_counts.get, reverse=True)[:3]
print("the most confused pairs in the plane (10-NN, both directions): "
      + ", ".join(f"{a}/{b} ({pair_counts[a, b]} digits)" for a, b in worst))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# After full training the VAE's two numbers per digit should separate the classes better than the
# best linear 2-D projection of the pixels, without ever seeing a label; after `--quick`'s three
# epochs they may not: too little training to organise the plane.
