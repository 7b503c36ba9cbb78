"""Tutorial 05: looking at a 2-D latent space.

With latent_dim = 2 the whole latent space fits on a page. The script trains a 784-400-2 VAE
(ReLU, Bernoulli) on mnist-mini and draws it three ways:

* the posterior means mu(x) of the test digits, coloured by their label (the encoder,
  Eq. (E4), docs/elbo.md): digits of a class gather without ever seeing a label, because
  similar images are cheapest to encode with nearby codes;
* the decoder over the latent space: codes on a grid at the prior's quantiles 0.05 ... 0.95,
  z = Phi^-1(u) per axis (numpyvae.plotting.manifold_codes), decoded to their mean images, so
  the grid is dense where N(0, I) puts its mass (Kingma & Welling 2014, Fig. 4);
* interpolations: codes on the straight line between the posterior means of two test digits,
  decoded; also drawn as paths in the scatter.

The scatter and the grid together show where the prior and the codes disagree: the test codes
do not fill N(0, I), and where the grid reaches a region no digit's code occupies, the decoder
(never trained there) draws something that is no digit. Two numbers per digit are also too few
for ten classes: some classes (typically 2, 4, 5, 7) share a region with a neighbour, and even
their most typical code decodes as that neighbour (the 7 -> 2 strip); the most confused pairs
are printed.

It prints the KL of each of the two dimensions (Eq. (A1), docs/ppca.md; their sum is the KL
of Eq. (K2), docs/kl.md) and how well the classes separate in the latent plane: the accuracy
of a nearest-centroid classifier (centroids of the training means) and of a 10-nearest-
neighbour vote, next to the same classifiers on the first two principal components of the
pixels (the best *linear* 2-D code) and on all 784 pixels.

Read alongside:
  docs/elbo.md, sections 4-5; docs/kl.md, section 2; docs/ppca.md (the KL per dimension)
  numpyvae.model.VAE.encode, numpyvae.model.VAE.decode, numpyvae.diagnostics.kl_per_dimension,
  numpyvae.plotting.manifold_codes, numpyvae.plotting.plot_manifold, numpyvae.plotting.pca_2d

Figures (in --out):
  latent.png         posterior means of the test digits by label, the manifold's grid region and
                     the interpolation paths
  manifold.png       20 x 20 decoded grid over the latent plane
  interpolation.png  four interpolation strips between test digits of different classes
"""

import argparse
import os
import time

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.special import ndtri

import numpyvae as nv
from numpyvae.diagnostics import kl_per_dimension
from numpyvae.plotting import image_grid, plot_manifold
from numpyvae.training import TrainConfig, new_run, train

NAME = "05_latent_space"
FIGURES = ("latent.png", "manifold.png", "interpolation.png")
PAIRS = ((1, 0), (9, 6), (3, 0), (7, 2))      # digit classes to interpolate between
STEPS = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (1500 digits, 784-64-2, 3 epochs): same code path, seconds")
    parser.add_argument("--out", default=os.path.join("tutorial_output", NAME),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, shuffles and noise")
    return parser.parse_args(argv)


def encode_means(vae, x, chunk=1000):
    return np.concatenate([vae.encode(x[i:i + chunk])[0] for i in range(0, x.shape[0], chunk)]).astype(np.float64)


def nearest_centroid_accuracy(train_pts, y_train, test_pts, y_test):
    classes = np.unique(y_train)
    centroids = np.stack([train_pts[y_train == k].mean(axis=0) for k in classes])
    d = ((test_pts[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return float(np.mean(classes[np.argmin(d, axis=1)] == y_test))


def knn_predict(train_pts, y_train, test_pts, k=10, chunk=500):
    """Majority vote of the k nearest training points (squared Euclidean distance)."""
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


def plot_latent(mu, labels, paths, path):
    colors = colormaps["tab10"]
    fig = Figure(figsize=(7.8, 6.4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(mu[:, 0], mu[:, 1], c=colors(labels % 10), s=5, alpha=0.6, linewidths=0)
    q = float(ndtri(0.95))
    ax.plot([-q, q, q, -q, -q], [-q, -q, q, q, -q], color="black", lw=1, ls="--")
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
    fig.savefig(path, dpi=100)


def plot_interpolations(rows, path):
    """rows: list of (x_a, decoded (STEPS, D), x_b, caption)."""
    fig = Figure(figsize=(0.75 * (STEPS + 2) + 0.5, 1.25 * len(rows) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(rows), 1))
    for ax, (x_a, dec, x_b, caption) in zip(axes, rows):
        ax.imshow(image_grid(np.concatenate([x_a[None], dec, x_b[None]]), STEPS + 2), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=9)
    fig.suptitle(r"decoded means along $(1-t)\,\mu(x_A) + t\,\mu(x_B)$, $t = 0 \dots 1$ (inputs at the ends)",
                 fontsize=10)
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    data = nv.load_dataset("mnist-mini")
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if args.quick:
        x_train, y_train, x_test, y_test = x_train[:1500], y_train[:1500], x_test[:500], y_test[:500]
        hidden, epochs = (64,), 3
    else:
        hidden, epochs = (400,), 20

    vae = nv.VAE(x_train.shape[1], hidden, 2, likelihood="bernoulli", activation="relu", seed=args.seed)
    print(f"--- training {vae!r} for {epochs} epochs on {x_train.shape[0]} digits")
    run = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
                log=lambda s: print("  " + s), progress=False)

    mu_train, mu_test = encode_means(vae, x_train), encode_means(vae, x_test)
    kl_dims = kl_per_dimension(vae, x_test)

    # Interpolations between typical test digits: of each class, the one whose code is nearest the
    # centroid of that class's codes (the first digit of a class may be an odd one).
    first = {}
    for k in np.unique(y_test):
        idx = np.flatnonzero(y_test == k)
        first[int(k)] = int(idx[np.argmin(((mu_test[idx] - mu_test[idx].mean(axis=0)) ** 2).sum(axis=1))])
    t = np.linspace(0.0, 1.0, STEPS)[:, None]
    rows, paths = [], {}
    for a, b in PAIRS:
        if a not in first or b not in first:
            continue
        za, zb = mu_test[first[a]], mu_test[first[b]]
        line = (1 - t) * za + t * zb
        paths[a, b] = line
        rows.append((x_test[first[a]], vae.decode(line), x_test[first[b]],
                     f"{a} -> {b}: from ({za[0]:.2f}, {za[1]:.2f}) to ({zb[0]:.2f}, {zb[1]:.2f})"))

    plot_latent(mu_test, y_test, paths, os.path.join(args.out, "latent.png"))
    plot_manifold(vae, os.path.join(args.out, "manifold.png"), n=20)
    plot_interpolations(rows, os.path.join(args.out, "interpolation.png"))

    # Class separation: the 2-D codes against the pixels' best linear 2-D code and all 784 pixels.
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
    q = float(ndtri(0.95))
    inside = float(np.mean(np.all(np.abs(mu_test) <= q, axis=1)))
    # Holes: the prior puts 25% of its mass in each quadrant; where do the codes of real digits go?
    quadrants = {(sx, sy): float(np.mean((np.sign(mu_test[:, 0]) == sx) & (np.sign(mu_test[:, 1]) == sy)))
                 for sx in (1, -1) for sy in (1, -1)}
    emptiest = min(quadrants, key=quadrants.get)
    quad_name = f"z1 {'>' if emptiest[0] > 0 else '<'} 0, z2 {'>' if emptiest[1] > 0 else '<'} 0"
    h = run.history

    print()
    print(f"=== 2-D latent space, {x_test.shape[0]} test digits")
    print(f"test ELBO {h['test_elbo'][-1]:.2f} nats = rec {h['test_rec'][-1]:.2f} - KL {h['test_kl'][-1]:.2f}")
    used = int(np.sum(kl_dims > 0.01))
    print(f"KL per latent dimension: z1 {kl_dims[0]:.2f} nats, z2 {kl_dims[1]:.2f} nats (sum {kl_dims.sum():.2f}) "
          f"-> {used} of 2 dimensions in use (> 0.01 nats); the KL is what the codes say about each digit, "
          f"at most ~{kl_dims.sum():.0f} nats against {-h['test_rec'][-1]:.0f} nats still unexplained in the pixels")
    print(f"posterior means: mean ({mu_test[:, 0].mean():+.2f}, {mu_test[:, 1].mean():+.2f}), "
          f"std ({mu_test[:, 0].std():.2f}, {mu_test[:, 1].std():.2f}); "
          f"{100 * inside:.0f}% inside the manifold grid's square [-{q:.3f}, {q:.3f}]^2")
    print(f"the emptiest quadrant, {quad_name}, holds {100 * quadrants[emptiest]:.1f}% of the test codes against "
          "25% of the prior's mass -> the decoder was hardly trained there: that corner of manifold.png "
          "shows what it invents (the aggregate posterior does not fill the prior)")
    print(f"class separation, accuracy on the test digits (always guessing the most frequent class: "
          f"{100 * np.max(np.bincount(y_test)) / len(y_test):.0f}%):")
    print(f"  {'code':<18} {'nearest centroid':>17} {'10-NN vote':>11}")
    for name, (nc, kn) in acc.items():
        print(f"  {name:<18} {100 * nc:16.1f}% {100 * kn:10.1f}%")
    gain = acc["VAE latent (2-D)"][1] - acc["pixel PCA (2-D)"][1]
    if gain > 0:
        print(f"  -> the VAE's 2 numbers per digit separate the classes {100 * gain:.1f} points better (10-NN) than "
              "the best linear 2-D projection of the pixels, without ever seeing a label")
    else:
        print(f"  -> here the VAE's codes separate the classes {100 * -gain:.1f} points *worse* than 2-D PCA: "
              "too little training to organise the plane (try without --quick)")
    pred = knn_predict(mu_train, y_train, mu_test)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (y_test, pred), 1)
    pair_counts = {(a, b): confusion[a, b] + confusion[b, a] for a in range(10) for b in range(a + 1, 10)}
    worst = sorted(pair_counts, key=pair_counts.get, reverse=True)[:3]
    print("  -> the most confused pairs in the plane (10-NN, both directions): "
          + ", ".join(f"{a}/{b} ({pair_counts[a, b]} digits)" for a, b in worst)
          + ": their clusters touch in latent.png")
    if args.quick:
        print("(--quick is a smoke run of the same code: tiny model, little training; its numbers mean little)")
    print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
