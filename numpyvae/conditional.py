"""The conditional VAE (Sohn, Lee & Yan 2015; Kingma et al. 2014, "M2" without the classifier).

Both networks see the class label y as a one-hot vector appended to their input:

    q_phi(z | x, y) = N(mu(x, y), diag(exp(logvar(x, y))))     encoder input  [x, onehot(y)]
    p_theta(x | z, y)                                           decoder input  [z, onehot(y)]
    ELBO(x, y) = E_q[log p(x | z, y)] - KL(q(z | x, y) || N(0, I))      Eq. (E8), docs/elbo.md

Because the label is given to the decoder, z need not encode the digit's class and is free
to hold its style (slant, thickness). Decoding one z with each of the ten labels draws the
same style as ten different digits, provided z is small enough that the decoder needs the
label: measured on mnist-mini, a 2-D latent uses it (+25 nats over a plain VAE), a 20-D
latent after 10 epochs largely ignores it (docs/elbo.md, E8; tutorials/06). Everything else (likelihoods, estimators, backward pass)
is the VAE's: the label is concatenated to the inputs, and the part of the decoder's input
gradient that belongs to the label is simply dropped (labels are not learned).
"""

import numpy as np

from . import _validate as check
from .model import VAE

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
    method takes the labels ``y`` (B,) after ``x`` (or after ``z`` for decode).

    Parameter names are the VAE's; only the first layers are wider: "enc.h0.W" is
    (D + n_classes, H0) and "dec.h0.W" is (Z + n_classes, H_last).
    """

    def __init__(self, input_dim, n_classes=10, hidden_dims=(400,), latent_dim=20, likelihood="bernoulli",
                 obs_var=1.0, activation="tanh", seed=0, dtype=np.float32, posterior="diag",
                 decoder_mean="identity", obs_std_min=None):
        self.n_classes = check.check_positive_int(n_classes, "n_classes")
        self.cond_dim = self.n_classes     # read by VAE.__init__ to widen the first layers
        super().__init__(input_dim, hidden_dims, latent_dim, likelihood, obs_var, activation, seed, dtype,
                         posterior, decoder_mean, obs_std_min)

    @property
    def config(self):
        return {**super().config, "n_classes": self.n_classes}

    def _condition(self, y, batch):
        c = one_hot(y, self.n_classes, self.dtype)
        if c.shape[0] != batch:
            raise ValueError(f"y has {c.shape[0]} labels but the batch has {batch} rows")
        return c

    def encode(self, x, y):
        x = self._check_x(x)
        q = self._encode(x, self._condition(y, x.shape[0]))
        return q["mu"], q["logvar"]

    def decode(self, z, y):
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        return self.likelihood.mean(self._decode_outputs(z, self._condition(y, z.shape[0])))

    def decoder_outputs(self, z, y):
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        return self._decode_outputs(z, self._condition(y, z.shape[0]))

    def log_p_x_given_z(self, x, z, y):
        """log p(x | z, y): (L, B) for x (B, D), z (L, B, Z) and labels y (B,)."""
        x = self._check_x(x)
        B = x.shape[0]
        return self._decode_log_prob(x, self._check_codes(z, B), self._condition(y, B))[1]

    def reconstruct(self, x, y):
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    def sample(self, y, rng):
        """One prior sample z ~ N(0, I) per label in y, decoded with that label: (len(y), D)."""
        c = one_hot(y, self.n_classes, self.dtype)      # checks y: a 1-D array of labels
        if c.shape[0] == 0:
            raise ValueError("y must hold at least one label")
        z = check.check_rng(rng).standard_normal((c.shape[0], self.latent_dim), dtype=self.dtype)
        return self.likelihood.mean(self._decode_outputs(z, c))

    def elbo_terms(self, x, y, eps=None, n_samples=1, rng=None):
        """Per-datapoint {"elbo", "rec", "kl"} of the conditional model.   Eq. (E8), docs/elbo.md"""
        x = self._check_x(x)
        return self._elbo_terms(x, self._condition(y, x.shape[0]), eps, n_samples, rng)

    def elbo(self, x, y, eps=None, n_samples=1, rng=None):
        return self.elbo_terms(x, y, eps=eps, n_samples=n_samples, rng=rng)["elbo"]

    def loss_and_grads(self, x, y, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0,
                       return_terms=False, baseline=None):
        """The loss -(ELBO) of Eq. (E8), docs/elbo.md, with beta on the KL, and its gradients."""
        x = self._check_x(x)
        return self._loss_and_grads(x, self._condition(y, x.shape[0]), eps, n_samples, rng, estimator, beta,
                                    return_terms, baseline)

    def log_likelihood(self, x, y, n_importance=1000, rng=None, chunk_size=None):
        """Importance-weighted estimate of log p(x | y), shape (B,)."""
        x = self._check_x(x)
        return self._log_likelihood(x, self._condition(y, x.shape[0]), n_importance, rng, chunk_size)

    def posterior_grads(self, x, y, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0,
                        baseline=None):
        x = self._check_x(x)
        _, dq, _ = self._loss_and_posterior_grads(x, self._condition(y, x.shape[0]), eps, n_samples, rng,
                                                  estimator, beta, baseline)
        B = x.shape[0]
        return dq["mu"] * B, dq["logvar"] * B

    def iwae_bound(self, x, y, k=5, eps=None, rng=None):
        x = self._check_x(x)
        eps = check.noise(eps, k, x.shape[0], self.latent_dim, rng, self.dtype, count_name="k")
        log_w, _ = self._log_weights(x, self._condition(y, x.shape[0]), eps)
        return self._log_mean_exp(log_w)

    def iwae_loss_and_grads(self, x, y, k=5, eps=None, rng=None, return_terms=False):
        x = self._check_x(x)
        return self._iwae_loss_and_grads(x, self._condition(y, x.shape[0]), k, eps, rng, return_terms)

    def class_grid(self, z, classes=None):
        """Decode every code in z (N, Z) with every class: (N, n_classes, D). Row i holds one
        style drawn as each digit."""
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        classes = np.arange(self.n_classes) if classes is None else np.asarray(classes)
        zz = np.repeat(z, len(classes), axis=0)
        yy = np.tile(classes, z.shape[0])
        return self.decode(zz, yy).reshape(z.shape[0], len(classes), self.input_dim)
