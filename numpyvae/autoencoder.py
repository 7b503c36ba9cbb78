"""Plain and denoising autoencoders, built from the VAE's own layers, and what they lack.

An autoencoder squeezes each datapoint x (D numbers) through a short code z (Z numbers) and
back (docs/autoencoders.md):

    z = enc_phi(x)        encoder: an MLP trunk and a Linear head "code"; no noise, no KL
    a = dec_theta(z)      decoder: an MLP trunk with the widths reversed and a Linear head "out"

and is trained to make x likely under the decoder's output a (Bernoulli logits, or the
mean of a unit-variance Gaussian), Eq. (D1), docs/autoencoders.md. That is the VAE's
reconstruction term with the posterior q(z|x) shrunk to the single point enc_phi(x) and the KL
dropped. Without the KL nothing ties the codes to N(0, I), so the decoder of an
autoencoder is not a generative model: random codes decode to garbage
(``numpyvae.lab.autoencoders.plot_random_codes``).

A *denoising* autoencoder (Vincent et al. 2008) feeds the encoder a corrupted copy
x~ drawn from a corruption process C(x~ | x) and still asks for the clean x, Eq. (D2),
docs/autoencoders.md. Copying the
input is then no longer enough; the network has to learn what digits look like to undo the
damage (``numpyvae.lab.autoencoders.plot_denoising``).

This module is the model and its corruption, nothing else; training it, measuring its codes
against a VAE's and drawing the figures are in numpyvae.lab.autoencoders.

Arrays are batch-first, as everywhere in numpyvae: x is (B, D), a code batch is (B, Z).
Every random draw comes from an explicit ``np.random.Generator``.
"""

import math

import numpy as np

from . import _validate as check
from .distributions import make_likelihood
from .layers import MLP, Linear, named

__all__ = ["Autoencoder", "LOSSES", "NOISE_KINDS", "check_noise", "corrupt"]

LOSSES = ("bernoulli", "gaussian")
NOISE_KINDS = ("masking", "gaussian")

_DTYPES = check.FLOAT_DTYPES


# ---------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------

def check_noise(noise):
    """Return a noise spec as ``None`` or a tuple ``(kind, float)``, or raise ValueError.

    ``None``                no corruption (a plain autoencoder)
    ``("masking", r)``      each entry of x is set to 0 with probability r, 0 <= r < 1
    ``("gaussian", std)``   x + eta with eta ~ N(0, std^2 I), std >= 0
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

    masking, Eq. (D3), docs/autoencoders.md:   x~_d = keep_d x_d  with  keep_d ~ Bernoulli(1 - r)
    gaussian, Eq. (D4), docs/autoencoders.md:  x~ = x + eta  with  eta ~ N(0, std^2 I)

    Every entry is corrupted independently. Masked entries are *not* rescaled by 1 / (1 - r)
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
        keep = rng.random(x.shape, dtype=dtype) >= level      # P(keep) = 1 - r
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
    code_dim : int             Z, the width of the code z = enc(x).
    activation : str           "relu" | "tanh" | "sigmoid" | "softplus".
    loss : str                 "bernoulli": the decoder gives logits a and the loss is the
                               Bernoulli negative log-likelihood (targets in [0, 1]);
                               "gaussian": the decoder gives the mean a of N(x; a, I), so the
                               loss is 1/2 ||x - a||^2 plus the constant D/2 log(2 pi).
    noise : None | ("masking", r) | ("gaussian", std)
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
        self.params = self._named("params")

    def _named(self, attr):
        """The layers' ``params`` or ``grads`` under their public names: "enc.h0.W", "enc.code.b", ..."""
        return named({"enc": self.encoder, "enc.code": self.code_head,
                      "dec": self.decoder, "dec.out": self.out_head}, attr)

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

    def check_input(self, x, name="x"):
        """``x`` as a (B, D) array of the model's dtype, or an error naming ``name``: what the
        encoder may see, any finite batch (a corrupted x~ may leave [0, 1])."""
        return check.as_batch(x, self.input_dim, self.dtype, name)

    def check_target(self, x, name="x"):
        """``x`` as a (B, D) array of the model's dtype, or an error naming ``name``: what the
        loss reconstructs, a batch the likelihood accepts (Bernoulli: values in [0, 1])."""
        x = self.check_input(x, name)
        self.likelihood.check_targets(x)
        return x

    def _encode(self, x):
        return self.code_head.forward(self.encoder.forward(x))

    def _decode_logits(self, code):
        """The decoder output a for a (B, Z) batch of codes: logits or Gaussian means, (B, D)."""
        return self.out_head.forward(self.decoder.forward(code))

    def encode(self, x):
        """The code z = enc(x) of a batch x (B, D): shape (B, Z). No noise is added."""
        return self._encode(self.check_input(x))

    def decode(self, code):
        """The decoder's mean for codes (B, Z): Bernoulli probabilities sigmoid(a), or the
        Gaussian mean a itself; shape (B, D)."""
        code = check.as_batch(code, self.code_dim, self.dtype, "code")
        return self.likelihood.mean({"out": self._decode_logits(code)})

    def reconstruct(self, x):
        """decode(encode(x)), shape (B, D). To see denoising, pass a corrupted batch."""
        return self.decode(self.encode(x))

    def _check_noisy(self, x_noisy, x):
        x_noisy = self.check_input(x_noisy, "x_noisy")
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

        a_b = dec(enc(x_b)), Eq. (D1), docs/autoencoders.md; or, with ``x_noisy`` (B, D), the
        encoder sees the corrupted x~_b and a_b = dec(enc(x~_b)), Eq. (D2), docs/autoencoders.md. The target
        is always the clean x. (To score a DAE on its training objective, pass
        ``x_noisy=corrupt(x, model.noise, rng)``.)
        """
        x = self.check_target(x)
        x_in = x if x_noisy is None else self._check_noisy(x_noisy, x)
        a = self._decode_logits(self._encode(x_in))
        return -self.likelihood.log_prob(x, {"out": a})

    def loss_and_grads(self, x, rng=None, x_noisy=None):
        """The minibatch loss and its gradient with respect to every parameter.

            loss = 1/B sum_b -log p(x_b | dec(enc(x_b)))            Eq. (D1), docs/autoencoders.md
            loss = 1/B sum_b -log p(x_b | dec(enc(x~_b))),  x~_b ~ C(x~ | x_b)   (denoising)
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
        x = self.check_target(x)
        x_in = self._encoder_input(x, x_noisy, rng)
        B = x.shape[0]
        a = self._decode_logits(self._encode(x_in))
        log_p, dlogp_dout = self.likelihood.log_prob_and_grad(x, {"out": a})
        loss = -float(np.mean(log_p))

        # d(-log p)/da = -(x - mean) for both likelihoods: the "prediction minus target"
        # of a canonical link. The 1/B is the batch mean.
        da = dlogp_dout["out"] * (-1.0 / B)
        dcode = self.decoder.backward(self.out_head.backward(da))
        self.encoder.backward(self.code_head.backward(dcode))
        return loss, self._named("grads")
