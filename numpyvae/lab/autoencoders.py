"""Autoencoders against a VAE: training them, measuring their codes, drawing what they lack.

The model, ``numpyvae.autoencoder.Autoencoder``, and its corruption are in the book; this is the
lab around them (docs/autoencoders.md):

* ``train_autoencoder``: minibatch Adam, one Generator for shuffles and corruption.
* ``mean_reconstruction_loss`` (an autoencoder) and ``vae_reconstruction_loss`` (a VAE at its
  posterior mean): the same quantity, -log p(x | decoder(code of x)), for both kinds of model.
* ``fit_code_gaussian``, ``aggregate_posterior_gaussian``, ``prior_mismatch``: how far the codes
  a decoder was trained on lie from the N(0, I) we would sample new codes from.
* ``plot_random_codes``, ``plot_denoising``: the two figures.
* ``compare_autoencoders``: all of it in one run (``numpyvae autoencoders``).
"""

import json
import math
import os
import time

import numpy as np

from .. import _validate as check
from ..autoencoder import Autoencoder, check_noise, corrupt
from ..checkpoint import atomic_write_json
from ..data import Dataset, load_dataset
from ..distributions import kl_full_gaussians
from ..model import VAE
from ..optim import Adam
from ..training import TrainConfig, minibatches, new_run, train
from .diagnostics import encode_all
from .plotting import check_model_image_shape, display_range, image_grid, new_figure, save_figure, show_image

__all__ = ["train_autoencoder", "mean_reconstruction_loss", "vae_reconstruction_loss", "fit_code_gaussian",
           "aggregate_posterior_gaussian", "prior_mismatch", "plot_random_codes", "plot_denoising",
           "compare_autoencoders"]


# ---------------------------------------------------------------------------
# Training and the reconstruction loss
# ---------------------------------------------------------------------------

def mean_reconstruction_loss(model, x, x_noisy=None, batch_size=1000):
    """Mean of ``model.reconstruction_loss`` over x (N, D), in batches; a Python float.
    With ``x_noisy`` (N, D) the encoder sees x_noisy and the loss targets x."""
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        noisy = None if x_noisy is None else x_noisy[i:i + batch_size]
        total += float(np.sum(model.reconstruction_loss(x[i:i + batch_size], x_noisy=noisy), dtype=np.float64))
    return total / x.shape[0]


def vae_reconstruction_loss(vae, x, batch_size=1000):
    """The mean over x (N, D) of -log p(x | z = mu(x)), in batches; a Python float: a VAE's
    reconstruction term with its one code at the posterior mean, the quantity
    ``mean_reconstruction_loss`` measures for an autoencoder (whose code is c = f(x))."""
    rec = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        mu, _ = vae.encode(xb)
        rec.append(vae.log_p_x_given_z(xb, mu[None])[0])      # one code per datapoint: (1, b) -> (b,)
    return float(-np.mean(np.concatenate(rec), dtype=np.float64))


def train_autoencoder(model, x_train, epochs, batch_size=128, lr=1e-3, seed=0, log=print, x_test=None):
    """Train with Adam on shuffled minibatches; return the history.

    One Generator, seeded by ``seed``, draws each epoch's shuffle and then the corruption of
    every minibatch, so a run is reproducible. ``log`` gets one line per epoch (None: silent).

    Returns ``{"epoch", "train_loss", "test_loss", "seconds"}``, lists with one entry per
    epoch: the mean training loss over the epoch's minibatches (nats per datapoint) and, if
    ``x_test`` is given, the same objective on x_test (else None). A denoising model is tested
    on one corruption of x_test drawn once from ``seed + 1``, so epochs are compared on the
    same damaged digits.
    """
    epochs = check.check_positive_int(epochs, "epochs")
    batch_size = check.check_positive_int(batch_size, "batch_size")
    x_train = model.check_target(x_train, "x_train")
    x_test_noisy = None
    if x_test is not None:
        x_test = model.check_target(x_test, "x_test")
        if model.noise is not None:
            x_test_noisy = corrupt(x_test, model.noise, np.random.default_rng(seed + 1))
    rng = np.random.default_rng(seed)
    optimizer = Adam(model.params, lr=lr)
    history = {"epoch": [], "train_loss": [], "test_loss": [], "seconds": []}
    n = x_train.shape[0]

    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total = 0.0
        for idx in minibatches(n, batch_size, rng):
            loss, grads = model.loss_and_grads(x_train[idx], rng=rng)
            optimizer.step(grads)
            total += loss * len(idx)
        train_loss = total / n
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {train_loss}); try a smaller lr")
        test_loss = None if x_test is None else mean_reconstruction_loss(model, x_test, x_test_noisy)
        seconds = time.perf_counter() - start
        for key, value in zip(history, (epoch, train_loss, test_loss, seconds)):
            history[key].append(value)
        if log is not None:
            test = "" if test_loss is None else f"  test loss {test_loss:8.2f}"
            log(f"epoch {epoch:3d}/{epochs}  train loss {train_loss:8.2f}{test}  {seconds:5.1f}s")
    return history


# ---------------------------------------------------------------------------
# How far the codes are from N(0, I)
# ---------------------------------------------------------------------------

def fit_code_gaussian(codes):
    """The Gaussian with the mean and covariance of a set of codes z_n (N, Z), N >= 2:

        zbar = 1/N sum_n z_n,    S = 1/(N - 1) sum_n (z_n - zbar)(z_n - zbar)^T    Eq. (D6), docs/autoencoders.md

    (the codes are a sample from an unknown distribution; 1/(N - 1) makes S unbiased for its
    covariance). Returns ``(zbar, S)`` in float64, shapes (Z,) and (Z, Z).
    """
    c = np.asarray(codes, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        raise ValueError(f"codes must be 2-D with at least 2 rows (N, Z); got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("codes contain NaN or inf")
    return c.mean(axis=0), np.atleast_2d(np.cov(c, rowvar=False))


def prior_mismatch(mean, cov):
    """KL( N(0, I) || N(zbar, S) ) in nats, the price of sampling codes from N(0, I) when the
    decoder was trained on codes spread like N(zbar, S) (``mean`` = zbar (Z,), ``cov`` = S (Z, Z)):

        KL = 1/2 ( tr(S^-1) + zbar^T S^-1 zbar - Z + log det S )        Eq. (D8), docs/autoencoders.md

    (Eq. (K1) of docs/kl.md with q = N(0, I).) It is 0 only when zbar = 0 and S = I, and large
    when the prior puts its mass where the codes never go.
    """
    mean = np.asarray(mean, dtype=np.float64)
    Z = mean.shape[-1]
    return float(kl_full_gaussians(np.zeros(Z), np.eye(Z), mean, np.asarray(cov, dtype=np.float64)))


def aggregate_posterior_gaussian(vae, x, batch_size=1000):
    """Mean and covariance of a VAE's aggregate posterior q(z) = 1/N sum_n q(z | x_n) over x (N, D):
    the codes its decoder was trained on.   Eq. (D7), docs/autoencoders.md

        zbar = 1/N sum_n mu_n,
        S    = 1/N sum_n (mu_n - zbar)(mu_n - zbar)^T  +  1/N sum_n diag(exp(logvar_n))

    the law of total covariance with the component n uniform on 1..N: the spread of the
    posterior means plus the average posterior variance. Both are exact averages over the N
    components, so both carry 1/N: S is the covariance of the mixture itself, not an estimate
    from a sample (unlike fit_code_gaussian's 1/(N - 1)). Returns ``(zbar, S)`` in float64,
    shapes (Z,) and (Z, Z). Needs a diagonal-Gaussian posterior.
    """
    posterior = vae.config["posterior"]
    if posterior != "diag":
        raise ValueError(f"aggregate_posterior_gaussian needs a VAE with posterior='diag'; got {posterior!r}")
    mu, logvar = (a.astype(np.float64) for a in encode_all(vae, x, batch_size))
    zbar = mu.mean(axis=0)
    spread = (mu - zbar).T @ (mu - zbar) / mu.shape[0]
    return zbar, spread + np.diag(np.exp(logvar).mean(axis=0))


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def plot_random_codes(ae, vae, path, rng, n=32, image_shape=(28, 28), x_train=None):
    """Decoded random codes, panels side by side. Returns path.

    1. the autoencoder's decoder on codes z ~ N(0, I);
    2. the VAE's decoder on codes z ~ N(0, I), its prior (``vae.sample``);
    3. (when ``x_train`` (N, D) is given) the autoencoder's decoder on codes drawn from the
       Gaussian fitted to its own codes of x_train (``fit_code_gaussian``): a fairer try,
       since it at least puts the codes where the decoder has seen some.
    """
    n = check.check_positive_int(n, "n")
    check.check_rng(rng)
    H, W = check_model_image_shape(ae, image_shape, "ae")
    check_model_image_shape(vae, image_shape, "vae")
    panels = [(ae.decode(rng.standard_normal((n, ae.code_dim))),
               "autoencoder\n$z \\sim \\mathcal{N}(0, I)$"),
              (vae.sample(n, rng), "VAE\n$z \\sim \\mathcal{N}(0, I)$, its prior")]
    if x_train is not None:
        zbar, S = fit_code_gaussian(encode_all(ae, ae.check_input(x_train, "x_train")))
        panels.append((ae.decode(rng.multivariate_normal(zbar, S, size=n)),
                       "autoencoder\n$z \\sim \\mathcal{N}(\\bar z, S)$ fitted to its codes"))
    nrow = min(n, 8)
    grids = [image_grid(images, nrow, (H, W), empty_value=np.nan) for images, _ in panels]
    gh, gw = grids[0].shape
    scale = 3.8 / gw                                    # about 3.8 inches per panel
    fig = new_figure(len(grids) * gw * scale + 0.3, gh * scale + 0.9)
    vmin, vmax = display_range(*grids)
    for ax, grid, (_, title) in zip(np.atleast_1d(fig.subplots(1, len(grids))), grids, panels):
        show_image(ax, grid, vmin, vmax)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"decoded means of {n} random codes")
    return save_figure(fig, path)


def _noise_caption(noise):
    kind, level = noise
    return f"masking, rate $\\rho$ = {level:g}" if kind == "masking" else f"additive Gaussian, std $s$ = {level:g}"


def plot_denoising(dae, ae, x_clean, path, rng, noise=("masking", 0.5), n=10, image_shape=(28, 28)):
    """Four rows of n images: the clean inputs, one corruption of them (``noise``, drawn from
    ``rng``), the plain autoencoder's reconstruction of the corrupted input and the denoising
    autoencoder's. Returns path."""
    n = check.check_positive_int(n, "n")
    noise = check_noise(noise)
    if noise is None:
        raise ValueError("plot_denoising needs a corruption, e.g. noise=('masking', 0.5)")
    H, W = check_model_image_shape(dae, image_shape, "dae")
    check_model_image_shape(ae, image_shape, "ae")
    x = dae.check_input(x_clean, "x_clean")[:n]
    x_noisy = corrupt(x, noise, rng)
    rows = [(x, "clean input"), (x_noisy, f"corrupted input ({_noise_caption(noise)})"),
            (ae.reconstruct(x_noisy), "plain autoencoder: reconstruction of the corrupted input"),
            (dae.reconstruct(x_noisy), "denoising autoencoder: reconstruction of the corrupted input")]
    grids = [image_grid(images, images.shape[0], (H, W)) for images, _ in rows]
    gh, gw = grids[0].shape
    scale = min(0.03, 8.0 / gw)
    fig = new_figure(max(gw * scale, 5.0), len(rows) * (gh * scale + 0.3))
    for ax, grid, (_, title) in zip(fig.subplots(len(rows), 1), grids, rows):
        # Each row has its own grey range: Gaussian corruption leaves [0, 1], and one shared
        # range would wash out the clean digits and the reconstructions.
        show_image(ax, grid, *display_range(grid))
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------

def compare_autoencoders(dataset, out_dir, epochs=10, quick=False, seed=0,
                         vae=None, log=print, noise=("masking", 0.5), hidden_dims=(400,), code_dim=20):
    """Train an autoencoder and a denoising autoencoder (and a VAE, unless a trained one is
    passed), write the two figures and return the numbers.

    dataset : a name for ``load_dataset`` or a Dataset of images with grey values in [0, 1].
    The AE and the DAE have the same architecture, initialisation and minibatch order; they
    differ only in the corruption ``noise``. A VAE trained here uses the same widths, code size
    and activation ("relu"), ``numpyvae.training`` and the same number of epochs.
    quick : a smoke run (1000 training and 500 test images, at most 2 epochs): the figures
    are written but the numbers mean little.

    Writes ``random_codes.png``, ``denoising.png`` and ``autoencoders.json`` (the numbers)
    into out_dir. Returns a dict of Python numbers (nats per datapoint unless stated):

    * ``{ae,dae}_test_loss_clean``: test reconstruction loss, encoder sees x;
    * ``{ae,dae}_test_loss_corrupted``: encoder sees one fixed corruption of x, target x;
    * ``vae_test_loss_at_mean``: -log p(x | decoder(mu(x))) of the VAE, the same quantity;
    * ``{ae,vae}_prior_mismatch``: KL( N(0, I) || N(zbar, S) ) with (zbar, S) the mean and covariance
      of the AE's codes of the training set, or of the VAE's aggregate posterior
      (``prior_mismatch``); how badly N(0, I) codes miss the codes the decoder was trained on;
    * ``epochs``, ``n_train``, ``n_test``, ``noise``, ``seconds`` and the figure paths.
    """
    start = time.perf_counter()
    say = log if log is not None else (lambda *_: None)
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if not isinstance(data, Dataset) or data.image_shape is None:
        raise ValueError("compare_autoencoders needs an image dataset (a name for load_dataset or a "
                         f"Dataset with image_shape); got {dataset!r}")
    noise = check_noise(noise)
    if noise is None:
        raise ValueError("compare_autoencoders needs a corruption for the DAE, e.g. noise=('masking', 0.5)")
    epochs = check.check_positive_int(epochs, "epochs")
    x_train, x_test = data.x_train, data.x_test
    if quick:
        x_train, x_test, epochs = x_train[:1000], x_test[:500], min(epochs, 2)
    D = x_train.shape[1]

    models = {}
    for name, model_noise in (("ae", None), ("dae", noise)):
        models[name] = Autoencoder(D, hidden_dims, code_dim, noise=model_noise, seed=seed)
        say(f"--- training {models[name]!r}")
        train_autoencoder(models[name], x_train, epochs, seed=seed, log=log, x_test=x_test)
    ae, dae = models["ae"], models["dae"]
    if vae is None:
        vae = VAE(D, hidden_dims, code_dim, likelihood="bernoulli", activation="relu", seed=seed)
        say(f"--- training {vae!r}")
        train(new_run(vae, TrainConfig(epochs=epochs, seed=seed)), x_train, x_test, log=say, progress=False)

    x_test_noisy = corrupt(x_test, noise, np.random.default_rng(seed + 3))
    results = {"epochs": epochs, "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]),
               "noise": list(noise)}
    for name, model in models.items():
        results[f"{name}_test_loss_clean"] = mean_reconstruction_loss(model, x_test)
        results[f"{name}_test_loss_corrupted"] = mean_reconstruction_loss(model, x_test, x_test_noisy)
    results["vae_test_loss_at_mean"] = vae_reconstruction_loss(vae, x_test)
    results["ae_prior_mismatch"] = prior_mismatch(*fit_code_gaussian(encode_all(ae, x_train)))
    results["vae_prior_mismatch"] = prior_mismatch(*aggregate_posterior_gaussian(vae, x_train))

    out_dir = os.fspath(out_dir)
    fig_rng = np.random.default_rng(seed + 4)
    results["random_codes_png"] = plot_random_codes(ae, vae, os.path.join(out_dir, "random_codes.png"), fig_rng,
                                                    image_shape=data.image_shape, x_train=x_train)
    results["denoising_png"] = plot_denoising(dae, ae, x_test, os.path.join(out_dir, "denoising.png"), fig_rng,
                                              noise=noise, image_shape=data.image_shape)
    results["seconds"] = time.perf_counter() - start
    atomic_write_json(os.path.join(out_dir, "autoencoders.json"), results)
    say(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=1))
    return results
