"""Figures for a trained VAE: training curves, reconstructions, samples, the latent space.

What is here, top to bottom:

* ``image_grid``: tile (N, H*W) images into one 2-D array (pure NumPy, no plotting).
* ``manifold_codes`` and ``pca_2d``: the two other pieces of arithmetic behind the figures.
* ``new_figure``, ``show_image``, ``display_range``, ``save_figure``: the drawing helpers every
  figure of the lab is made with (numpyvae.lab.estimator_lab and numpyvae.lab.autoencoders too).
* ``plot_*``: one function per figure, each writing one PNG and returning its path.
* ``write_all_figures``: every figure that makes sense for a given model, in one call.

Every figure is drawn with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), never
with ``pyplot``: pyplot keeps a global list of open figures and a global "current figure",
so figures would leak between calls and the result could depend on the display backend.
With the object API a figure is an ordinary Python object, rendered off-screen and freed
like any other.

Files are written atomically: the image is rendered in memory and then written to a
temporary file in the target directory, which is renamed onto the final name. A crash
leaves either the old figure or the new one, never a truncated PNG.

Randomness (only ``plot_samples`` needs any) always comes from an explicit
``np.random.Generator``; NumPy's global random state is never touched.
"""

import io
import math
import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy.special import ndtri  # the standard normal inverse CDF (norm.ppf), without importing scipy.stats

from .._validate import check_positive_int, check_rng, image_shape as check_image_shape
from ..checkpoint import atomic_write_bytes
from ..discrete import DiscreteVAE
from .diagnostics import encode_all, encode_in_batches

__all__ = [
    "image_grid", "manifold_codes", "pca_2d", "check_model_image_shape",
    "new_figure", "save_figure", "display_range", "show_image",
    "plot_image_grid", "plot_class_grid", "plot_training_curves", "plot_reconstructions", "plot_samples",
    "plot_latent_scatter", "plot_manifold", "plot_interpolation", "plot_latent_pca", "posterior_means",
    "write_all_figures", "HISTORY_KEYS", "DPI",
]

# 100 dots per inch: crisp on screen and in a README, small files, quick to render.
DPI = 100

# The per-epoch series ``plot_training_curves`` needs; "beta" is optional.
HISTORY_KEYS = ("epoch", "train_elbo", "test_elbo", "train_rec", "test_rec", "train_kl", "test_kl")

# Grey between tiles: distinct from both the black background (0) and the white strokes
# (1) of MNIST digits, so the tile borders are visible without drawing attention.
PAD_VALUE = 0.5

# Inches of figure per image pixel: a 10 x 10 grid of 28 x 28 digits becomes ~6 inches wide.
_INCHES_PER_PIXEL = 0.02
_MAX_INCHES = 7.0


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _check_images(images, image_shape, name="images"):
    """Return images as a float (N, H*W) array, checking its width against image_shape."""
    H, W = check_image_shape(image_shape)
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, H*W) = (N, {H * W}); got shape {arr.shape}")
    if arr.shape[1] != H * W:
        raise ValueError(f"{name} have width {arr.shape[1]}, but image_shape {(H, W)} needs "
                         f"H*W = {H * W} pixels per image")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def check_model_image_shape(model, image_shape, name="model"):
    """Return image_shape as (H, W) after checking that the model's datapoints are H*W images;
    ``name`` is what the caller calls the model."""
    H, W = check_image_shape(image_shape)
    if model.input_dim != H * W:
        raise ValueError(f"{name}.input_dim = {model.input_dim} does not match image_shape {(H, W)} "
                         f"(H*W = {H * W})")
    return H, W


def _check_points(points, labels, name="mu"):
    """Return points as a float (N, K) array and labels as an int (N,) array or None."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, latent_dim); got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{name} contains NaN or inf")
    return pts, _check_labels(labels, pts.shape[0], name)


def _check_labels(labels, n, name):
    """Return labels as an int (n,) array, or None if labels is None."""
    if labels is None:
        return None
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one label per row of {name} ({n}); "
                         f"got shape {lab.shape}")
    is_int = np.issubdtype(lab.dtype, np.integer)
    if not is_int and not (np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab))):
        raise ValueError(f"labels must be integers; got {lab.dtype} values")
    return lab.astype(np.int64)


def _as_single_datapoint(x, width, name):
    """Return x, given as (D,) or (1, D), as a (1, D) array."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape != (1, width):
        raise ValueError(f"{name} must be one datapoint of shape ({width},) or (1, {width}); "
                         f"got shape {np.shape(x)}")
    return arr


# ---------------------------------------------------------------------------
# Arithmetic behind the figures (pure NumPy, tested directly)
# ---------------------------------------------------------------------------

def image_grid(images, nrow, image_shape=(28, 28), pad=1, pad_value=PAD_VALUE, empty_value=None):
    """Tile flattened images into one 2-D array, row by row.

    images : (N, H*W)   image k is ``images[k].reshape(H, W)`` (row-major, as MNIST is stored).
    nrow : int          images per row of the grid (as in torchvision's ``make_grid``), so the
                        grid has ceil(N / nrow) rows.
    pad : int           pixels of ``pad_value`` between tiles and around the border.

    Returns an array of shape (rows * (H + pad) + pad, cols * (W + pad) + pad), with
    rows = ceil(N / nrow) and cols = min(nrow, N), where image k sits in grid row k // nrow,
    grid column k % nrow. The unused tiles of a last, partial row hold ``empty_value``
    (default: ``pad_value``; the figures pass NaN, which imshow leaves transparent).
    """
    H, W = check_image_shape(image_shape)
    imgs = _check_images(images, (H, W))
    nrow = check_positive_int(nrow, "nrow")
    if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer; got {pad!r}")
    n = imgs.shape[0]
    rows, cols = math.ceil(n / nrow), min(nrow, n)
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad), pad_value, dtype=np.float64)
    unused = rows * cols - n
    if unused and empty_value is not None:
        # The unused tiles form one block at the bottom right; the padding between and
        # after them goes too, so the borders outline only the images that exist.
        grid[-(H + pad):, -unused * (W + pad):] = empty_value
    for k in range(n):
        top = pad + (k // nrow) * (H + pad)
        left = pad + (k % nrow) * (W + pad)
        grid[top:top + H, left:left + W] = imgs[k].reshape(H, W)
    return grid


def manifold_codes(n):
    """The (n*n, 2) grid of latent codes decoded by ``plot_manifold``, in row-major order.

    Both coordinates take the values norm.ppf(linspace(0.05, 0.95, n)) (computed as ndtri): points equally spaced
    in *probability* under the prior N(0, 1), not in z (Kingma & Welling 2014, Fig. 4), so the
    grid is dense where the prior puts its mass. Code r*n + c is the tile in grid row r,
    column c: z1 increases to the right along a row, z2 decreases down the rows, so that
    drawn as an image the z2 axis points up as on an ordinary plot.
    """
    n = check_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be at least 2 for a grid of codes; got {n}")
    values = ndtri(np.linspace(0.05, 0.95, n))
    z1 = np.tile(values, n)                 # column index varies fastest
    z2 = np.repeat(values[::-1], n)         # row 0 holds the largest z2
    return np.stack([z1, z2], axis=1)


def pca_2d(x):
    """Project data onto its first two principal components.

    x : (N, K) with N >= 2 and K >= 2.

    Returns ``(projection, explained_variance_ratio)``: the (N, 2) coordinates of the centred
    data along the two leading principal axes, and the (2,) fraction of the total variance
    along each. Computed from the SVD of the centred data, xc = U S V^T: the principal axes
    are the rows of V^T, the variances are S^2 / (N - 1), and the projection is xc V = U S.
    SVD of xc rather than an eigendecomposition of xc^T xc avoids squaring the condition
    number. Each axis's sign is fixed so that its largest-magnitude entry is positive,
    which makes the result deterministic (an SVD only defines the axes up to sign).
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"x must be 2-D with at least 2 rows and 2 columns; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("x contains NaN or inf")
    xc = arr - arr.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    total = np.sum(s ** 2)
    if total == 0:
        raise ValueError("x has zero variance (all rows are identical); there are no principal axes")
    axes = vt[:2]
    biggest = np.argmax(np.abs(axes), axis=1)
    axes = axes * np.sign(axes[np.arange(2), biggest])[:, None]
    return xc @ axes.T, s[:2] ** 2 / total


# ---------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------

def new_figure(width, height):
    """A Figure with its own Agg canvas (no pyplot); constrained layout keeps titles,
    labels and legends from overlapping."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path):
    """Render ``fig`` and write it atomically to ``path``; create parent dirs; return path.

    The format follows the file extension (PNG when there is none)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fmt = os.path.splitext(path)[1][1:].lower() or "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def display_range(*arrays):
    """Grey-level limits shared by all images of a figure: [0, 1] for probabilities /
    pixels, so a faint image is shown faint rather than stretched to full contrast;
    the data range otherwise (e.g. Gaussian means)."""
    lo = min(float(np.nanmin(a)) for a in arrays)       # NaN marks an empty tile
    hi = max(float(np.nanmax(a)) for a in arrays)
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if hi == lo:                # a constant image: any non-empty range will do
        hi = lo + 1.0
    return lo, hi


def show_image(ax, image, vmin, vmax):
    """Draw a 2-D grey image with square pixels and no ticks."""
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _image_figure_size(grid_shape, extra_height=0.5):
    """(width, height) in inches for a figure showing one image of grid_shape pixels:
    about _INCHES_PER_PIXEL per pixel, but small images are drawn bigger and the longer
    side of big ones (a 20 x 20 manifold is 560 pixels) is capped at _MAX_INCHES."""
    h, w = grid_shape
    scale = _INCHES_PER_PIXEL * max(1.0, 150 / max(h, w))
    scale = min(scale, _MAX_INCHES / max(h, w))
    return max(w * scale, 2.5), h * scale + extra_height


def _label_colors(labels):
    """One tab10 colour per point; label k gets colour k mod 10, so digit 3 has the same
    colour in every figure whatever labels happen to be present."""
    return colormaps["tab10"](np.mod(labels, 10))


def _scatter_by_label(ax, points, labels):
    """Scatter (N, 2) points coloured by label, with a legend of the labels present."""
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, linewidths=0)
        return
    # One scatter call in data order, not one call per class: drawing class by class
    # would paint the last class on top of all the others wherever they overlap.
    ax.scatter(points[:, 0], points[:, 1], c=_label_colors(labels), s=4, alpha=0.6, linewidths=0)
    present = np.unique(labels)
    handles = [Line2D([], [], linestyle="", marker="o", markersize=6,
                      color=_label_colors(np.array([k]))[0], label=str(k)) for k in present]
    ax.legend(handles=handles, title="label", loc="center left", bbox_to_anchor=(1.02, 0.5),
              frameon=False, handletextpad=0.2)


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def plot_image_grid(images, path, nrow, image_shape=(28, 28), title=None):
    """Write the images (N, H*W) as one grid, ``nrow`` images per row. Returns path."""
    grid = image_grid(images, nrow, image_shape, empty_value=np.nan)
    fig = new_figure(*_image_figure_size(grid.shape, extra_height=0.35 if title else 0.1))
    ax = fig.add_subplot()
    show_image(ax, grid, *display_range(grid))
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_class_grid(model, path, rng, n_styles=8, image_shape=(28, 28)):
    """Conditional VAE: row i decodes one shared code z_i ~ N(0, I) with every class label, so a
    row holds one style (slant, thickness) drawn as each digit. Returns path."""
    z = rng.standard_normal((n_styles, model.latent_dim), dtype=model.dtype)
    images = model.class_grid(z).reshape(n_styles * model.n_classes, -1)
    title = f"one z per row, class label 0 .. {model.n_classes - 1} along it"
    return plot_image_grid(images, path, nrow=model.n_classes, image_shape=image_shape, title=title)


def _check_history(history):
    """Return the history as a dict of equal-length float arrays (plus "beta" if given)."""
    missing = [k for k in HISTORY_KEYS if k not in history]
    if missing:
        raise ValueError(f"history is missing the keys {missing}; it needs {list(HISTORY_KEYS)}")
    keys = HISTORY_KEYS + (("beta",) if "beta" in history else ())
    series = {k: np.asarray(history[k], dtype=np.float64) for k in keys}
    lengths = {k: v.shape for k, v in series.items()}
    n = series["epoch"].shape
    if len(n) != 1 or n[0] == 0 or any(s != n for s in lengths.values()):
        raise ValueError(f"history must hold non-empty 1-D lists of equal length; got shapes {lengths}")
    return series


def plot_training_curves(history, path):
    """Three panels side by side (ELBO, reconstruction term, KL), train and test, per epoch.

    history : dict of equal-length lists with the keys in ``HISTORY_KEYS``: per-datapoint
              averages in nats, "rec" being E_q[log p(x|z)]. An optional "beta" (the KL
              weight per epoch) gets a fourth panel when it changes over training (a KL
              warm-up), and is named in the title when it is a constant other than 1.
    """
    h = _check_history(history)
    beta = h.get("beta")
    beta_varies = beta is not None and np.ptp(beta) > 0
    panels = [("elbo", "ELBO"),
              ("rec", r"reconstruction $\mathbb{E}_q[\log p(x|z)]$"),
              ("kl", r"KL$(q(z|x)\,\|\,p(z))$")]
    fig = new_figure(16.5 if beta_varies else 13, 3.8)
    axes = fig.subplots(1, 4 if beta_varies else 3)
    for ax, (key, title) in zip(axes, panels):
        ax.plot(h["epoch"], h[f"train_{key}"], marker="o", markersize=4, label="train")
        ax.plot(h["epoch"], h[f"test_{key}"], marker="s", markersize=4, label="test")
        _label_epoch_axes(ax, title, "nats per datapoint")
        ax.legend()
    title = "training curves"
    if beta_varies:
        axes[3].plot(h["epoch"], beta, marker="o", markersize=4, color="grey")
        axes[3].set_ylim(0, 1.05 * float(np.max(beta)))
        _label_epoch_axes(axes[3], r"KL weight $\beta$", r"$\beta$")
    elif beta is not None and beta[0] != 1.0:
        title += rf" ($\beta$ = {beta[0]:g})"
    fig.suptitle(title)
    return save_figure(fig, path)


def _label_epoch_axes(ax, title, ylabel):
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no "epoch 2.5"
    ax.grid(alpha=0.3)


def plot_reconstructions(x, x_rec, path, image_shape=(28, 28), n=10):
    """Inputs above their reconstructions: the first n rows of x (N, H*W) and of x_rec
    (M, H*W), where x_rec[i] reconstructs x[i].

    Up to 10 images per row; for n > 10 the inputs form a block of rows and the
    reconstructions an identical block below it, so a reconstruction sits at the same
    position in its block as its input does in the other.
    """
    n = check_positive_int(n, "n")
    x = _check_images(x, image_shape, "x")
    x_rec = _check_images(x_rec, image_shape, "x_rec")
    # Row i of x_rec is the reconstruction of row i of x; either may hold more rows.
    n = min(n, x.shape[0], x_rec.shape[0])
    per_row = min(n, 10)
    top = image_grid(x[:n], per_row, image_shape, empty_value=np.nan)
    bottom = image_grid(x_rec[:n], per_row, image_shape, empty_value=np.nan)
    width, height = _image_figure_size(top.shape, extra_height=0.35)
    fig = new_figure(width, 2 * height)
    vmin, vmax = display_range(top, bottom)
    for ax, grid, label in zip(fig.subplots(2, 1), (top, bottom), ("input", "reconstruction")):
        show_image(ax, grid, vmin, vmax)
        ax.set_title(label)
    return save_figure(fig, path)


def plot_samples(model, path, rng, n=100, image_shape=(28, 28)):
    """Decoded means of n codes drawn from the prior (N(0, I), or a discrete model's uniform prior),
    in a square-ish grid."""
    n = check_positive_int(n, "n")
    check_model_image_shape(model, image_shape)
    x = model.sample(n, check_rng(rng))
    nrow = math.ceil(math.sqrt(n))
    prior = (r"\mathcal{N}(0, I)" if not isinstance(model, DiscreteVAE) else
             r"\mathrm{Bernoulli}(1/2)^Z" if model.posterior.name == "bernoulli" else r"\mathrm{uniform}")
    title = f"decoded means of {n} samples $z \\sim {prior}$"
    return plot_image_grid(x, path, nrow, image_shape, title=title)


def plot_latent_scatter(mu, labels, path):
    """Posterior means mu (N, 2) as points coloured by their label (N,) (or one colour if
    labels is None), with equal scales on both axes so distances are not distorted."""
    mu, labels = _check_points(mu, labels)
    if mu.shape[1] != 2:
        raise ValueError(f"mu must have 2 columns (a 2-D latent space); got shape {mu.shape}; "
                         "use plot_latent_pca for latent_dim > 2")
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    _scatter_by_label(ax, mu, labels)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"posterior means of {mu.shape[0]} test points")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def posterior_means(model, x, batch_size=1000):
    """E_q[z|x] for a whole data set x (N, D), in batches: a VAE's mu (N, Z); a DiscreteVAE's
    probabilities rho, the mean of a binary or one-hot code, flattened to (N, Z) or (N, Z C)."""
    if not isinstance(model, DiscreteVAE):
        return encode_all(model, x, batch_size)[0]
    return np.concatenate([model.posterior.probs(omega).reshape(omega.shape[0], -1)
                           for omega in encode_in_batches(model, x, batch_size)])


def plot_latent_pca(mu, labels, path):
    """Posterior means mu (N, K), K >= 2, projected on their two principal axes and coloured
    by label; the axis labels give the share of the variance each axis explains."""
    mu, labels = _check_points(mu, labels)
    projection, ratio = pca_2d(mu)
    fig = new_figure(6.5, 5.5)
    ax = fig.add_subplot()
    _scatter_by_label(ax, projection, labels)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    ax.set_title(f"PCA of the posterior means ({mu.shape[0]} test points, latent_dim = {mu.shape[1]})")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_manifold(model, path, n=20, image_shape=(28, 28)):
    """The decoded means of an n x n grid of codes (``manifold_codes``) as one image:
    z1 increases to the right, z2 upwards. Needs model.latent_dim == 2."""
    if model.latent_dim != 2:
        raise ValueError(f"plot_manifold needs a model with latent_dim == 2; got {model.latent_dim} "
                         "(use plot_latent_pca to look at a larger latent space)")
    H, W = check_model_image_shape(model, image_shape)
    codes = manifold_codes(n)
    # No padding: the manifold reads as one continuous picture of the decoder.
    grid = image_grid(model.decode(codes), n, (H, W), pad=0)
    width, height = _image_figure_size(grid.shape, extra_height=0.9)   # two-line title, z1 axis
    fig = new_figure(width + 0.6, height)                              # z2 tick labels
    ax = fig.add_subplot()
    show_image(ax, grid, *display_range(grid))
    # Tick a few tile centres with their z values: the spacing is uniform in prior
    # probability, not in z, so a linear axis would be wrong.
    values = codes[:n, 0]
    picks = np.unique(np.linspace(0, n - 1, min(n, 5)).round().astype(int))
    ax.set_xticks(picks * W + (W - 1) / 2, [f"{values[i]:.2f}" for i in picks])
    ax.set_yticks(picks * H + (H - 1) / 2, [f"{values[n - 1 - i]:.2f}" for i in picks])
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title("decoded means over the latent space\n(grid at Gaussian quantiles 0.05 ... 0.95)")
    return save_figure(fig, path)


def plot_interpolation(model, x_a, x_b, path, steps=10, image_shape=(28, 28)):
    """Decode ``steps`` codes on the straight line from mu(x_a) to mu(x_b), with the two
    inputs x_a, x_b (each (D,) or (1, D)) shown at the ends."""
    steps = check_positive_int(steps, "steps")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (both end points); got {steps}")
    H, W = check_model_image_shape(model, image_shape)
    x_a = _as_single_datapoint(x_a, model.input_dim, "x_a")
    x_b = _as_single_datapoint(x_b, model.input_dim, "x_b")
    mu_a, _ = model.encode(x_a)
    mu_b, _ = model.encode(x_b)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    decoded = model.decode((1.0 - t) * mu_a + t * mu_b)          # (steps, D)

    images = np.concatenate([x_a, decoded, x_b]).astype(np.float64)
    captions = ["input A"] + [f"t = {ti:.2f}" for ti in t[:, 0]] + ["input B"]
    vmin, vmax = display_range(images)
    fig = new_figure(max(1.0 * (steps + 2), 4.0), 1.9)
    for ax, image, caption in zip(fig.subplots(1, steps + 2), images, captions):
        show_image(ax, image.reshape(H, W), vmin, vmax)
        ax.set_xlabel(caption, fontsize=8)
    fig.suptitle(r"decoded means along $(1-t)\,\mu(x_A) + t\,\mu(x_B)$")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------

def _interpolation_pair(labels, n):
    """Indices of two datapoints to interpolate between: the first 3 and the first 8 when
    both occur, else the first two with different labels, else the first two."""
    if labels is not None:
        firsts = {}
        for i, k in enumerate(labels.tolist()):
            firsts.setdefault(k, i)
        if 3 in firsts and 8 in firsts:
            return firsts[3], firsts[8]
        if len(firsts) >= 2:
            a, b = sorted(firsts.values())[:2]
            return a, b
    if n == 1:
        return 0, 0
    return 0, 1


def write_all_figures(model, x_test, y_test, history, out_dir, rng, image_shape=(28, 28)):
    """Write every figure that makes sense for ``model`` into out_dir; return {name: path}.

    * ``curves.png`` when history holds at least one epoch (history may be None);
    * ``reconstructions.png``, ``samples.png``, ``interpolation.png`` unless image_shape is
      None (non-image data);
    * for latent_dim == 2: ``latent.png`` and, for images, ``manifold.png``;
      for latent_dim > 2: ``latent_pca.png``. (A 1-D latent space gets neither.)
    * for a DiscreteVAE, no interpolation, latent.png or manifold.png (a line or a grid of
      codes leaves the discrete code space), and ``latent_pca.png`` of the posterior means
      E_q[z|x] = rho (posterior_means) whenever the code has two numbers or more.

    x_test : (N, D) test data; y_test : (N,) integer labels or None.
    rng : np.random.Generator, used only for the prior samples.
    """
    check_rng(rng)
    x_test = np.asarray(x_test)
    if x_test.ndim != 2 or x_test.shape[0] == 0 or x_test.shape[1] != model.input_dim:
        raise ValueError(f"x_test must be a non-empty 2-D array (N, {model.input_dim}); "
                         f"got shape {x_test.shape}")
    if image_shape is not None:
        check_model_image_shape(model, image_shape)
    # Check the labels before any figure is written, so bad input fails at once.
    labels = _check_labels(y_test, x_test.shape[0], "x_test")

    paths = {}

    def target(name):
        return os.path.join(os.fspath(out_dir), f"{name}.png")

    # An empty history (no epoch finished yet) is skipped; a malformed one raises.
    if history is not None and ("epoch" not in history or len(history["epoch"]) >= 1):
        paths["curves"] = plot_training_curves(history, target("curves"))
    if image_shape is not None:
        shown = x_test[:10]
        paths["reconstructions"] = plot_reconstructions(
            shown, model.reconstruct(shown), target("reconstructions"), image_shape)
        paths["samples"] = plot_samples(model, target("samples"), rng, image_shape=image_shape)
        if not isinstance(model, DiscreteVAE):
            a, b = _interpolation_pair(labels, x_test.shape[0])
            paths["interpolation"] = plot_interpolation(
                model, x_test[a], x_test[b], target("interpolation"), image_shape=image_shape)
    if isinstance(model, DiscreteVAE):
        if x_test.shape[0] >= 2 and np.prod(model.posterior.event_shape) >= 2:
            paths["latent_pca"] = plot_latent_pca(posterior_means(model, x_test), labels, target("latent_pca"))
    elif model.latent_dim == 2:
        paths["latent"] = plot_latent_scatter(encode_all(model, x_test)[0], labels, target("latent"))
        if image_shape is not None:
            paths["manifold"] = plot_manifold(model, target("manifold"), image_shape=image_shape)
    elif model.latent_dim > 2:
        paths["latent_pca"] = plot_latent_pca(encode_all(model, x_test)[0], labels, target("latent_pca"))
    return paths
