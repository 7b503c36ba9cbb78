"""Plain and denoising autoencoders, built from the VAE's own layers, and what they lack.

An autoencoder squeezes each datapoint x (D numbers) through a short code c (Z numbers) and
back (docs/autoencoders.md):

    c = f_phi(x)          encoder: an MLP trunk and a Linear head "code"; no noise, no KL
    a = g_theta(c)        decoder: an MLP trunk with the widths reversed and a Linear head "out"

and is trained to make x likely under the decoder's output a (Bernoulli logits, or the
mean of a unit-variance Gaussian), Eq. (D1), docs/autoencoders.md. That is the VAE's
reconstruction term with the posterior q(z|x) shrunk to the single point c and the KL
dropped. Without the KL nothing ties the codes to N(0, I), so the decoder of an
autoencoder is not a generative model: random codes decode to garbage (``plot_random_codes``).

A *denoising* autoencoder (Vincent et al. 2008) feeds the encoder a corrupted copy
x~ ~ C(x~ | x) and still asks for the clean x, Eq. (D2), docs/autoencoders.md. Copying the
input is then no longer enough; the network has to learn what digits look like to undo the
damage (``plot_denoising``).

Arrays are batch-first, as everywhere in numpyvae: x is (B, D), a code batch is (B, Z).
Every random draw comes from an explicit ``np.random.Generator``.
"""

import json
import math
import os
import time

import numpy as np

from . import _validate as check
from .checkpoint import atomic_write_json
from .data import Dataset, load_dataset
from .distributions import kl_full_gaussians, make_likelihood
from .layers import MLP, Linear
from .model import VAE
from .optim import Adam
from .plotting import _display_range, _new_figure, _save, _show_image, image_grid
from .training import TrainConfig, minibatches, new_run, train

__all__ = ["Autoencoder", "LOSSES", "NOISE_KINDS", "check_noise", "corrupt", "train_autoencoder",
           "mean_reconstruction_loss", "fit_code_gaussian", "aggregate_posterior_gaussian", "prior_mismatch",
           "plot_random_codes", "plot_denoising", "compare_autoencoders"]

LOSSES = ("bernoulli", "gaussian")
NOISE_KINDS = ("masking", "gaussian")

_DTYPES = check.FLOAT_DTYPES


# ---------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------

def check_noise(noise):
    """Return a noise spec as ``None`` or a tuple ``(kind, float)``, or raise ValueError.

    ``None``                no corruption (a plain autoencoder)
    ``("masking", p)``      each entry of x is set to 0 with probability p, 0 <= p < 1
    ``("gaussian", std)``   x + std * eps with eps ~ N(0, I), std >= 0
    """
    if noise is None:
        return None
    if isinstance(noise, str) or not isinstance(noise, (tuple, list)) or len(noise) != 2:
        raise ValueError(f"noise must be None, ('masking', p) or ('gaussian', std); got {noise!r}")
    kind, level = noise
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {list(NOISE_KINDS)}")
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise ValueError(f"the {kind} noise level must be a number; got {level!r}")
    level = float(level)
    if kind == "masking" and not 0.0 <= level < 1.0:
        # p = 1 would erase every input: there would be nothing left to reconstruct from.
        raise ValueError(f"masking probability p must satisfy 0 <= p < 1; got {level!r}")
    if kind == "gaussian" and not (math.isfinite(level) and level >= 0.0):
        raise ValueError(f"gaussian noise std must be a finite number >= 0; got {level!r}")
    return (kind, level)


def corrupt(x, noise, rng):
    """Draw one corrupted copy x~ ~ C(x~ | x) of a batch x (B, D); same shape and dtype.

    masking, Eq. (D3), docs/autoencoders.md:   x~_j = m_j x_j  with  m_j ~ Bernoulli(1 - p)
    gaussian, Eq. (D4), docs/autoencoders.md:  x~ = x + std * eps  with  eps ~ N(0, I)

    Every entry is corrupted independently. Masked entries are *not* rescaled by 1 / (1 - p)
    as in dropout: the corrupted digit should look like a damaged digit, not a brighter one.
    """
    noise = check_noise(noise)
    check.check_rng(rng)
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in _DTYPES else np.dtype(np.float64)
    x = x.astype(dtype, copy=False)
    if noise is None:
        return x.copy()
    kind, level = noise
    if kind == "masking":
        keep = rng.random(x.shape, dtype=dtype) >= level      # P(keep) = 1 - p
        return x * keep
    return x + dtype.type(level) * rng.standard_normal(x.shape, dtype=dtype)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

class Autoencoder:
    """A deterministic autoencoder with MLP encoder and decoder; denoising when ``noise`` is set.

    Parameters
    ----------
    input_dim : int            D, the width of a datapoint (784 for MNIST).
    hidden_dims : tuple of int encoder widths; the decoder uses them reversed. ``()`` gives a
                               linear encoder and decoder.
    code_dim : int             Z, the width of the code c = f(x).
    activation : str           "relu" | "tanh" | "sigmoid" | "softplus".
    loss : str                 "bernoulli": the decoder gives logits a and the loss is the
                               Bernoulli negative log-likelihood (targets in [0, 1]);
                               "gaussian": the decoder gives the mean a of N(x; a, I), so the
                               loss is 1/2 ||x - a||^2 plus the constant D/2 log(2 pi).
    noise : None | ("masking", p) | ("gaussian", std)
                               the corruption C(x~ | x) of a denoising autoencoder.
    seed : int                 seeds the initialisation only; corruption takes ``rng``.
    dtype : np.float32 | np.float64   every parameter and every computation uses this dtype.

    ``params`` holds the live arrays by name: "enc.h0.W", ..., "enc.code.W", "enc.code.b",
    "dec.h0.W", ..., "dec.out.W", "dec.out.b" (the VAE's names, with one head per side).
    """

    def __init__(self, input_dim, hidden_dims=(400,), code_dim=20, activation="relu", loss="bernoulli",
                 noise=None, seed=0, dtype=np.float32):
        self.input_dim = check.check_positive_int(input_dim, "input_dim")
        self.code_dim = check.check_positive_int(code_dim, "code_dim")
        self.hidden_dims = check.hidden_widths(hidden_dims)
        self.dtype = check.float_dtype(dtype)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")
        # The VAE's likelihood objects: log-probability, its gradient and the mean, in one place.
        self.likelihood = make_likelihood(loss, 1.0)
        self.noise = check_noise(noise)
        self.activation = activation
        self.seed = check.check_nonnegative_int(seed, "seed")

        rng = np.random.default_rng(self.seed)
        D, Z, H = self.input_dim, self.code_dim, self.hidden_dims
        self.encoder = MLP((D,) + H, activation, rng, self.dtype)
        self.code_head = Linear(self.encoder.out_features, Z, rng, self.dtype)
        self.decoder = MLP((Z,) + H[::-1], activation, rng, self.dtype)
        self.out_head = Linear(self.decoder.out_features, D, rng, self.dtype)

        # The live arrays, by their public names. Writing into them changes the model.
        self.params = {}
        self.params.update({f"enc.{k}": v for k, v in self.encoder.named_params().items()})
        self.params.update({f"enc.code.{k}": v for k, v in self.code_head.params.items()})
        self.params.update({f"dec.{k}": v for k, v in self.decoder.named_params().items()})
        self.params.update({f"dec.out.{k}": v for k, v in self.out_head.params.items()})

    # ------------------------------------------------------------------ description

    @property
    def loss(self):
        return self.likelihood.name

    @property
    def config(self):
        """The constructor arguments, JSON-serialisable."""
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims),
                "code_dim": self.code_dim, "activation": self.activation, "loss": self.loss,
                "noise": None if self.noise is None else list(self.noise), "seed": self.seed,
                "dtype": self.dtype.name}

    def __repr__(self):
        arch = "-".join(str(d) for d in (self.input_dim,) + self.hidden_dims + (self.code_dim,))
        noise = "" if self.noise is None else f", noise={self.noise!r}"
        return (f"Autoencoder({arch}{noise}, loss={self.loss!r}, activation={self.activation!r}, "
                f"dtype={self.dtype.name}, {self.num_params()} parameters)")

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------ forward pieces

    def _check_input(self, x, name="x"):
        """What the encoder may see: any finite (B, D) batch (a corrupted x~ may leave [0, 1])."""
        return check.as_batch(x, self.input_dim, self.dtype, name)

    def _check_target(self, x):
        """What the loss reconstructs: a (B, D) batch the likelihood accepts (Bernoulli: [0, 1])."""
        x = self._check_input(x)
        self.likelihood.check_targets(x)
        return x

    def _encode(self, x):
        return self.code_head.forward(self.encoder.forward(x))

    def _decode_logits(self, code):
        """The decoder output a for a (B, Z) batch of codes: logits or Gaussian means, (B, D)."""
        return self.out_head.forward(self.decoder.forward(code))

    def encode(self, x):
        """The code c = f(x) of a batch x (B, D): shape (B, Z). No noise is added."""
        return self._encode(self._check_input(x))

    def decode(self, code):
        """The decoder's mean for codes (B, Z): Bernoulli probabilities sigmoid(a), or the
        Gaussian mean a itself; shape (B, D)."""
        code = check.as_batch(code, self.code_dim, self.dtype, "code")
        return self.likelihood.mean({"out": self._decode_logits(code)})

    def reconstruct(self, x):
        """decode(encode(x)), shape (B, D). To see denoising, pass a corrupted batch."""
        return self.decode(self.encode(x))

    def _check_noisy(self, x_noisy, x):
        x_noisy = self._check_input(x_noisy, "x_noisy")
        if x_noisy.shape != x.shape:
            raise ValueError(f"x_noisy must have the shape of x, {x.shape}; got {x_noisy.shape}")
        return x_noisy

    def _encoder_input(self, x, x_noisy, rng):
        """What the encoder sees for the targets x: x_noisy if given; else a fresh corruption
        of x when the model is denoising; else x itself."""
        if x_noisy is not None:
            return self._check_noisy(x_noisy, x)
        if self.noise is None:
            return x
        if rng is None:
            raise ValueError(f"this autoencoder is denoising (noise={self.noise!r}): pass "
                             "rng=np.random.default_rng(seed) to draw the corruption, or an explicit "
                             "x_noisy of the shape of x")
        return corrupt(x, self.noise, rng)

    # ------------------------------------------------------------------ objective

    def reconstruction_loss(self, x, x_noisy=None):
        """Per-datapoint loss -log p(x_b | a_b), shape (B,), in nats. Deterministic: it never
        draws noise, whatever ``self.noise`` is.

        a_b = g(f(x_b)), Eq. (D1), docs/autoencoders.md; or, with ``x_noisy`` (B, D), the encoder
        sees the corrupted x~_b and a_b = g(f(x~_b)), Eq. (D2), docs/autoencoders.md. The target
        is always the clean x. (To score a DAE on its training objective, pass
        ``x_noisy=corrupt(x, model.noise, rng)``.)
        """
        x = self._check_target(x)
        x_in = x if x_noisy is None else self._check_noisy(x_noisy, x)
        a = self._decode_logits(self._encode(x_in))
        return -self.likelihood.log_prob(x, {"out": a})

    def loss_and_grads(self, x, rng=None, x_noisy=None):
        """The minibatch loss and its gradient with respect to every parameter.

            loss = 1/B sum_b -log p(x_b | g(f(x_b)))            Eq. (D1), docs/autoencoders.md
            loss = 1/B sum_b -log p(x_b | g(f(x~_b))),  x~_b ~ C(x~ | x_b)   (denoising)
                                                                Eq. (D2), docs/autoencoders.md

        -log p is the Bernoulli negative log-likelihood from logits in its softplus form
        (Eq. (L1) of docs/distributions.md) or the unit-variance Gaussian one (Eq. (G4)).
        A denoising model draws x~ from ``rng``; ``x_noisy`` (B, D) fixes x~ instead (any model
        accepts it: the encoder sees x_noisy, the loss still targets x).

        The backward pass starts from the gradient with respect to the decoder output,
        dloss/da_b = (mean_b - x_b) / B (Eq. (D5), docs/autoencoders.md), and runs it back
        through the decoder, the code head and the encoder (docs/backprop.md).

        Returns ``(loss, grads)``: a Python float and a dict with exactly the keys and shapes
        of ``self.params``.
        """
        x = self._check_target(x)
        x_in = self._encoder_input(x, x_noisy, rng)
        B = x.shape[0]
        a = self._decode_logits(self._encode(x_in))
        log_p, d_out = self.likelihood.log_prob_and_grad(x, {"out": a})
        loss = -float(np.mean(log_p))

        # d(-log p)/da = -(x - mean) for both likelihoods: the "prediction minus target"
        # of a canonical link. The 1/B is the batch mean.
        da = d_out["out"] * (-1.0 / B)
        dcode = self.decoder.backward(self.out_head.backward(da))
        self.encoder.backward(self.code_head.backward(dcode))
        return loss, self._collect_grads()

    def _collect_grads(self):
        grads = {f"enc.{k}": v for k, v in self.encoder.named_grads().items()}
        grads.update({f"enc.code.{k}": v for k, v in self.code_head.grads.items()})
        grads.update({f"dec.{k}": v for k, v in self.decoder.named_grads().items()})
        grads.update({f"dec.out.{k}": v for k, v in self.out_head.grads.items()})
        return grads


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def mean_reconstruction_loss(model, x, x_noisy=None, batch_size=1000):
    """Mean of ``model.reconstruction_loss`` over x (N, D), in batches; a Python float.
    With ``x_noisy`` (N, D) the encoder sees x_noisy and the loss targets x."""
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        noisy = None if x_noisy is None else x_noisy[i:i + batch_size]
        total += float(np.sum(model.reconstruction_loss(x[i:i + batch_size], x_noisy=noisy), dtype=np.float64))
    return total / x.shape[0]


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
    x_train = model._check_target(x_train)
    x_test_noisy = None
    if x_test is not None:
        x_test = model._check_target(x_test)
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
    """The Gaussian with the mean and covariance of a set of codes (N, Z), N >= 2:

        m = 1/N sum_n c_n,    S = 1/(N - 1) sum_n (c_n - m)(c_n - m)^T    Eq. (D6), docs/autoencoders.md

    Returns ``(m, S)`` in float64, shapes (Z,) and (Z, Z).
    """
    c = np.asarray(codes, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        raise ValueError(f"codes must be 2-D with at least 2 rows (N, Z); got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("codes contain NaN or inf")
    return c.mean(axis=0), np.atleast_2d(np.cov(c, rowvar=False))


def prior_mismatch(mean, cov):
    """KL( N(0, I) || N(m, S) ) in nats, the price of sampling codes from N(0, I) when the
    decoder was trained on codes spread like N(m, S):

        KL = 1/2 ( tr(S^-1) + m^T S^-1 m - Z + log det S )        Eq. (D8), docs/autoencoders.md

    (Eq. (K1) of docs/kl.md with q = N(0, I).) It is 0 only when m = 0 and S = I, and large
    when the prior puts its mass where the codes never go.
    """
    mean = np.asarray(mean, dtype=np.float64)
    Z = mean.shape[-1]
    return float(kl_full_gaussians(np.zeros(Z), np.eye(Z), mean, np.asarray(cov, dtype=np.float64)))


def aggregate_posterior_gaussian(vae, x, chunk=1000):
    """Mean and covariance of a VAE's aggregate posterior q(z) = 1/N sum_n q(z | x_n) over x (N, D):
    the codes its decoder was trained on. By the law of total covariance,

        m = mean_n mu_n,    S = Cov_n[mu_n] + mean_n diag(exp(logvar_n))     Eq. (D7), docs/autoencoders.md

    (the spread of the posterior means plus the average posterior variance). Returns
    ``(m, S)`` in float64, shapes (Z,) and (Z, Z). Needs a diagonal-Gaussian posterior.
    """
    if getattr(vae, "posterior", "diag") != "diag":
        raise ValueError(f"aggregate_posterior_gaussian needs a VAE with posterior='diag'; got {vae.posterior!r}")
    mus, variances = [], []
    for i in range(0, x.shape[0], chunk):
        mu, logvar = vae.encode(x[i:i + chunk])
        mus.append(mu)
        variances.append(np.exp(logvar.astype(np.float64)))
    m, cov_mu = fit_code_gaussian(np.concatenate(mus))
    return m, cov_mu + np.diag(np.concatenate(variances).mean(axis=0))


def _encode_all(model, x, chunk=1000):
    return np.concatenate([model.encode(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def _check_image_model(model, image_shape, name):
    H, W = (int(s) for s in image_shape)
    if model.input_dim != H * W:
        raise ValueError(f"{name}.input_dim = {model.input_dim} does not match image_shape {(H, W)}")
    return H, W


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
    H, W = _check_image_model(ae, image_shape, "ae")
    _check_image_model(vae, image_shape, "vae")
    panels = [(ae.decode(rng.standard_normal((n, ae.code_dim))),
               "autoencoder\n$z \\sim \\mathcal{N}(0, I)$"),
              (vae.sample(n, rng), "VAE\n$z \\sim \\mathcal{N}(0, I)$, its prior")]
    if x_train is not None:
        m, S = fit_code_gaussian(_encode_all(ae, ae._check_input(x_train, "x_train")))
        panels.append((ae.decode(rng.multivariate_normal(m, S, size=n)),
                       "autoencoder\n$z \\sim \\mathcal{N}(m, S)$ fitted to its codes"))
    nrow = min(n, 8)
    grids = [image_grid(images, nrow, (H, W), empty_value=np.nan) for images, _ in panels]
    gh, gw = grids[0].shape
    scale = 3.8 / gw                                    # about 3.8 inches per panel
    fig = _new_figure(len(grids) * gw * scale + 0.3, gh * scale + 0.9)
    vmin, vmax = _display_range(*grids)
    for ax, grid, (_, title) in zip(np.atleast_1d(fig.subplots(1, len(grids))), grids, panels):
        _show_image(ax, grid, vmin, vmax)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"decoded means of {n} random codes")
    return _save(fig, path)


def _noise_caption(noise):
    kind, level = noise
    return f"masking, p = {level:g}" if kind == "masking" else f"additive Gaussian, std = {level:g}"


def plot_denoising(dae, ae, x_clean, path, rng, noise=("masking", 0.5), n=10, image_shape=(28, 28)):
    """Four rows of n images: the clean inputs, one corruption of them (``noise``, drawn from
    ``rng``), the plain autoencoder's reconstruction of the corrupted input and the denoising
    autoencoder's. Returns path."""
    n = check.check_positive_int(n, "n")
    noise = check_noise(noise)
    if noise is None:
        raise ValueError("plot_denoising needs a corruption, e.g. noise=('masking', 0.5)")
    H, W = _check_image_model(dae, image_shape, "dae")
    _check_image_model(ae, image_shape, "ae")
    x = dae._check_input(x_clean, "x_clean")[:n]
    x_noisy = corrupt(x, noise, rng)
    rows = [(x, "clean input"), (x_noisy, f"corrupted input ({_noise_caption(noise)})"),
            (ae.reconstruct(x_noisy), "plain autoencoder: reconstruction of the corrupted input"),
            (dae.reconstruct(x_noisy), "denoising autoencoder: reconstruction of the corrupted input")]
    grids = [image_grid(images, images.shape[0], (H, W)) for images, _ in rows]
    gh, gw = grids[0].shape
    scale = min(0.03, 8.0 / gw)
    fig = _new_figure(max(gw * scale, 5.0), len(rows) * (gh * scale + 0.3))
    for ax, grid, (_, title) in zip(fig.subplots(len(rows), 1), grids, rows):
        # Each row has its own grey range: Gaussian corruption leaves [0, 1], and one shared
        # range would wash out the clean digits and the reconstructions.
        _show_image(ax, grid, *_display_range(grid))
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


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
    * ``{ae,vae}_prior_mismatch``: KL( N(0, I) || N(m, S) ) with (m, S) the mean and covariance
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
    # With eps = 0 the VAE's single "sample" is z = mu(x), so its rec term is log p(x | mu(x)).
    rec = [vae.elbo_terms(xb, eps=np.zeros((1, xb.shape[0], vae.latent_dim)))["rec"]
           for xb in (x_test[i:i + 1000] for i in range(0, x_test.shape[0], 1000))]
    results["vae_test_loss_at_mean"] = float(-np.mean(np.concatenate(rec), dtype=np.float64))
    results["ae_prior_mismatch"] = prior_mismatch(*fit_code_gaussian(_encode_all(ae, x_train)))
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
