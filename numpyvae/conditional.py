"""The conditional VAE (Sohn, Lee & Yan 2015; Kingma et al. 2014, "M2" without the classifier).

Both networks see the class label y as a one-hot vector appended to their input:

    q_phi(z | x, y) = N(mu(x, y), diag(exp(logvar(x, y))))     encoder input  [x, onehot(y)]
    p_theta(x | z, y)                                           decoder input  [z, onehot(y)]
    ELBO(x, y) = E_q[log p(x | z, y)] - KL(q(z | x, y) || N(0, I))      Eq. (E8), docs/elbo.md

Because the label is given to the decoder, z need not encode the digit's class and is free
to hold its style (slant, thickness). Decoding one z with each of the ten labels draws the
same style as ten different digits, provided z is small enough that the decoder needs the
label: measured on mnist-mini, a 2-D latent uses it (+31.7 nats of test ELBO over a plain VAE, tutorial 06), a 20-D
latent after 10 epochs largely ignores it (docs/elbo.md, E8; tutorials/06). Everything else (likelihoods, estimators, backward pass)
is the VAE's: the label is concatenated to the inputs, and the part of the decoder's input
gradient that belongs to the label is simply dropped (labels are not learned).
"""

import numpy as np

from . import _validate as check
from .model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM, VAE

__all__ = ["ConditionalVAE", "one_hot"]


def one_hot(y, n_classes, dtype=np.float32):
    """Integer labels (B,) in 0..n_classes-1 -> one-hot rows (B, n_classes)."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be a 1-D array of integer class labels; got shape {y.shape}, dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y: labels must lie in 0..{n_classes - 1}; got values in [{y.min()}, {y.max()}]")
    out = np.zeros((y.shape[0], n_classes), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


class ConditionalVAE(VAE):
    """A VAE conditioned on a class label. Same arguments as VAE plus ``n_classes``; every
    method takes the labels as ``y=`` (B,) integers, e.g. ``model.elbo(x, y=labels, rng=rng)``.

    Parameter names are the VAE's; only the first layers are wider: "enc.h0.W" is
    (D + n_classes, H0) and "dec.h0.W" is (Z + n_classes, H_last). (With arch="conv" the label joins
    the encoder after its convolutions: "enc.h0.W" is (c_n h_n w_n + n_classes, H0).) What differs from the VAE is
    only where the condition comes from (``_condition``: one-hot rows of y, which every pass
    appends to both networks' inputs) and what a prior sample needs (a label for each).
    """

    def __init__(self, input_dim, n_classes=10, hidden_dims=DEFAULT_HIDDEN_DIMS, latent_dim=DEFAULT_LATENT_DIM,
                 likelihood="bernoulli", obs_var=1.0, activation=DEFAULT_ACTIVATION, seed=0, dtype=np.float32,
                 posterior="diag", decoder_mean="identity", obs_std_min=None, arch="mlp", image_shape=None,
                 channels=None):
        self.n_classes = check.check_positive_int(n_classes, "n_classes")
        self.cond_dim = self.n_classes     # read by VAE.__init__ to widen the first layers
        super().__init__(input_dim, hidden_dims, latent_dim, likelihood, obs_var, activation, seed, dtype,
                         posterior, decoder_mean, obs_std_min, arch, image_shape, channels)

    @property
    def config(self):
        return {**super().config, "n_classes": self.n_classes}

    def _condition(self, y, batch):
        """One-hot rows (batch, n_classes) of the labels y: Eq. (E8), docs/elbo.md."""
        if y is None:
            raise ValueError("a ConditionalVAE needs the class labels: pass y=... (integers, one per row)")
        c = one_hot(y, self.n_classes, self.dtype)
        if c.shape[0] != batch:
            raise ValueError(f"y has {c.shape[0]} labels but the batch has {batch} rows")
        return c

    def sample(self, y, rng):
        """One prior sample z ~ N(0, I) per label in y, decoded with that label: (len(y), D)."""
        c = one_hot(y, self.n_classes, self.dtype)      # checks y: a 1-D array of labels
        if c.shape[0] == 0:
            raise ValueError("y must hold at least one label")
        z = check.check_rng(rng).standard_normal((c.shape[0], self.latent_dim), dtype=self.dtype)
        return self.likelihood.mean(self._decode(z, c))

    def class_grid(self, z, classes=None):
        """Decode every code in z (N, Z) with every class: (N, n_classes, D). Row i holds one
        style drawn as each digit."""
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        classes = np.arange(self.n_classes) if classes is None else np.asarray(classes)
        zz = np.repeat(z, len(classes), axis=0)
        yy = np.tile(classes, z.shape[0])
        return self.decode(zz, y=yy).reshape(z.shape[0], len(classes), self.input_dim)
