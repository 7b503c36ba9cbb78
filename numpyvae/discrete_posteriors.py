"""Discrete posterior families: what q(z|x) is when the code z is binary or one-hot.

Two families, used by numpyvae.discrete.DiscreteVAE as the Gaussian ones of
numpyvae.distributions are used by the VAE:

    BernoulliPosterior(Z)       z in {0,1}^Z,  q(z|x) = prod_j Bernoulli(z_j; sigmoid(omega_j)),
                                prior Bernoulli(1/2) per unit
    CategoricalPosterior(Z, C)  z = Z one-hot rows of C classes, q(z_j|x) = Categorical(softmax(omega_j)),
                                uniform prior

omega are the encoder's logits, (B, Z) or (B, Z, C); rho = E_q[z] are the probabilities. A code z has
the shape of the logits with a sample axis in front, (L, B, Z) or (L, B, Z, C), and holds exact 0s and
1s; a relaxed code (Gumbel-softmax) has the same shape and values in (0, 1). Every method is derived
in docs/discrete.md:

    probs(omega)                      rho = sigmoid(omega) or softmax(omega)
    log_prob(omega, z)                log q(z|x)                                        H1, H2
    score(omega, z)                   d log q(z|x) / d omega = z - rho                  H3
    weighted_score(omega, z, xi)      sum_l xi_l (z_l - rho), without forming the scores H3
    kl(omega), kl_grad(omega)         KL(q(z|x) || p(z)) and its gradient               H4-H7
    kl_per_variable(omega)            the KL of each unit / variable, (B, Z)            H4, H6
    noise(n, B, rng, dtype)           logistic (Bernoulli) or Gumbel (categorical) noise
    sample(omega, noise)              the exact sample: perturb the logits, take the
                                      sign / the argmax (the Gumbel-max trick)          H8
    relaxed(omega, noise, tau)        the Concrete / Gumbel-softmax sample              H15
    relaxed_backward(zt, dzt, tau)    its backward pass                                 H16
    states()                          every value of z, for exact enumeration
    log_prior                         log p(z), the same number for every state
    prior_sample(n, rng), mode(omega)

Nothing here draws random numbers except ``noise`` and ``prior_sample``, from the Generator given.
"""

import math

import numpy as np

from . import _validate as check
from .numerics import sigmoid, softplus

__all__ = ["log_softmax", "softmax", "BernoulliPosterior", "CategoricalPosterior", "make_discrete_posterior",
           "LATENTS", "MAX_STATES"]

# The exact methods enumerate every state of z; beyond this many they refuse (ValueError).
MAX_STATES = 2 ** 16


def log_softmax(a, axis=-1):
    """log softmax(a) = a - log sum_k exp(a_k), with the max subtracted first.   Eq. (H2), docs/discrete.md

    a - m - log sum_k exp(a_k - m), m = max_k a_k: every exponent is <= 0, so nothing overflows, and
    the largest term is exactly 1, so the log never sees 0. Shape and dtype of a."""
    m = np.max(a, axis=axis, keepdims=True)
    shifted = a - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(a, axis=-1):
    """exp(a_k) / sum_j exp(a_j), with the max subtracted first (no overflow). Shape and dtype of a."""
    e = np.exp(a - np.max(a, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _check_temperature(tau):
    return check.check_finite_number(tau, "temperature", low=0.0, low_inclusive=False)


class BernoulliPosterior:
    """q(z|x) = prod_j Bernoulli(z_j; rho_j), rho = sigmoid(omega); prior Bernoulli(1/2) per unit.
    One encoder head "logits" of Z units; codes (..., Z)."""

    name = "bernoulli"

    def __init__(self, latent_dim):
        self.latent_dim = latent_dim
        self.n_categories = 2
        self.event_shape = (latent_dim,)                # the shape of one code z
        self.head_widths = {"logits": latent_dim}
        self.n_states = 2 ** latent_dim                 # a Python int: exact for any latent_dim
        self.log_prior = -latent_dim * math.log(2.0)    # log p(z) = sum_j log 1/2, for every z

    def probs(self, omega):
        """rho = E_q[z] = sigmoid(omega), (B, Z)."""
        return sigmoid(omega)

    def log_prob(self, omega, z):
        """log q(z|x) = sum_j [ z_j omega_j - softplus(omega_j) ], (..., B).   Eq. (H1), docs/discrete.md

        omega (B, Z); z (..., B, Z) of 0s and 1s (a state table (S, 1, Z) broadcasts). The softplus
        form never takes log(sigmoid(.)), so it is finite for logits of any size ((L1) in
        docs/distributions.md is the same formula for the decoder's pixels)."""
        return np.sum(z * omega - softplus(omega), axis=-1)

    def score(self, omega, z):
        """d log q(z|x) / d omega = z - sigmoid(omega), shape of z.   Eq. (H3), docs/discrete.md"""
        return z - self.probs(omega)

    def weighted_score(self, omega, z, xi):
        """sum_l xi_lb (z_lb - rho_b): the scores of the codes z (L, B, Z) times the coefficients xi (L, B),
        summed over the first axis, (B, Z), as sum_l xi_l z_l - (sum_l xi_l) rho.   Eq. (H3), docs/discrete.md"""
        return np.sum(xi[..., None] * z, axis=0) - np.sum(xi, axis=0)[:, None] * self.probs(omega)

    def kl(self, omega):
        """KL(q(z|x) || Bernoulli(1/2)^Z) per datapoint, (B,): the sum of kl_per_variable.
        Eq. (H4), docs/discrete.md"""
        return np.sum(self.kl_per_variable(omega), axis=-1)

    def kl_per_variable(self, omega):
        """The KL of each unit, (B, Z): the units are independent under q and p, so the KL is their sum.

            KL_j = log 2 - H_j,  H_j = rho_j softplus(-omega_j) + (1 - rho_j) softplus(omega_j)

        H_j is the entropy of unit j, written as two non-negative terms (-log rho = softplus(-omega),
        -log(1 - rho) = softplus(omega)): no cancellation inside H, no overflow for any omega.
        Eq. (H4), docs/discrete.md"""
        entropy = sigmoid(omega) * softplus(-omega) + sigmoid(-omega) * softplus(omega)
        return math.log(2.0) - entropy

    def kl_grad(self, omega):
        """d KL / d omega = rho (1 - rho) omega, (B, Z).   Eq. (H5), docs/discrete.md"""
        return sigmoid(omega) * sigmoid(-omega) * omega

    def noise(self, n, batch, rng, dtype):
        """Logistic noise nu = log u - log(1 - u), u ~ U(0, 1): (n, B, Z) of ``dtype``. Finite: NumPy
        draws u in the open interval."""
        return check.check_rng(rng).logistic(size=(n, batch) + self.event_shape).astype(dtype)

    def sample(self, omega, nu):
        """z = 1[omega + nu > 0], an exact sample of q: P(z_j = 1) = P(nu > -omega_j) = sigmoid(omega_j)
        (the logistic CDF). The Gumbel-max trick for two classes. nu (L, B, Z) -> z (L, B, Z).
        Eq. (H8), docs/discrete.md"""
        return (omega + nu > 0).astype(nu.dtype)

    def relaxed(self, omega, nu, tau):
        """The binary Concrete sample zt = sigmoid((omega + nu) / tau), (L, B, Z): sample's step
        function smoothed; zt -> z as tau -> 0.   Eq. (H15), docs/discrete.md"""
        return sigmoid((omega + nu) / _check_temperature(tau))

    def relaxed_backward(self, zt, dzt, tau):
        """d loss / d omega from d loss / d zt (L, B, Z), summed over samples: sum_l dzt zt (1 - zt) / tau,
        (B, Z).   Eq. (H16), docs/discrete.md"""
        return np.sum(dzt * zt * (1 - zt), axis=0) / _check_temperature(tau)

    def states(self, dtype):
        """Every z in {0,1}^Z: (2^Z, Z), row s the binary digits of s (most significant first)."""
        s = np.arange(self.n_states)[:, None]
        return ((s >> np.arange(self.latent_dim - 1, -1, -1)) & 1).astype(dtype)

    def prior_sample(self, n, rng, dtype):
        """n codes from the prior Bernoulli(1/2)^Z: (n, Z)."""
        return check.check_rng(rng).integers(0, 2, size=(n,) + self.event_shape).astype(dtype)

    def mode(self, omega):
        """The most probable code, 1[omega > 0], (B, Z)."""
        return (omega > 0).astype(omega.dtype)


class CategoricalPosterior:
    """q(z|x) = prod_j Categorical(z_j; rho_j), rho_j = softmax(omega_j) over C classes; uniform prior.
    One encoder head "logits" of Z * C units, read as (B, Z, C); codes (..., Z, C), one-hot in the last axis."""

    name = "categorical"

    def __init__(self, latent_dim, n_categories):
        self.latent_dim = latent_dim
        self.n_categories = n_categories
        self.event_shape = (latent_dim, n_categories)
        self.head_widths = {"logits": latent_dim * n_categories}
        self.n_states = n_categories ** latent_dim
        self.log_prior = -latent_dim * math.log(n_categories)   # log p(z) = sum_j log 1/n_categories

    def probs(self, omega):
        """rho = E_q[z] = softmax(omega) over the classes, (B, Z, C)."""
        return softmax(omega)

    def log_prob(self, omega, z):
        """log q(z|x) = sum_j sum_k z_jk log softmax(omega_j)_k, (..., B).   Eq. (H2), docs/discrete.md

        omega (B, Z, C); z (..., B, Z, C) one-hot. log_softmax subtracts the max first."""
        return np.sum(z * log_softmax(omega), axis=(-2, -1))

    def score(self, omega, z):
        """d log q(z|x) / d omega = z - softmax(omega), shape of z.   Eq. (H3), docs/discrete.md"""
        return z - self.probs(omega)

    def weighted_score(self, omega, z, xi):
        """sum_l xi_lb (z_lb - rho_b) for codes z (L, B, Z, C) and coefficients xi (L, B): (B, Z, C).
        Eq. (H3), docs/discrete.md"""
        return np.sum(xi[..., None, None] * z, axis=0) - np.sum(xi, axis=0)[:, None, None] * self.probs(omega)

    def kl(self, omega):
        """KL(q(z|x) || uniform) per datapoint, (B,): the sum of kl_per_variable.   Eq. (H6), docs/discrete.md"""
        return np.sum(self.kl_per_variable(omega), axis=-1)

    def kl_per_variable(self, omega):
        """The KL of each categorical variable, (B, Z): they are independent under q and p.

            KL_j = log n_categories + sum_k rho_jk log rho_jk

        with log rho from log_softmax: finite, so a class whose rho underflows to 0 adds 0 * finite = 0.
        Eq. (H6), docs/discrete.md"""
        log_rho = log_softmax(omega)
        return math.log(self.n_categories) + np.sum(np.exp(log_rho) * log_rho, axis=-1)

    def kl_grad(self, omega):
        """d KL / d omega_jk = rho_jk (log rho_jk - sum_m rho_jm log rho_jm), (B, Z, C).   Eq. (H7), docs/discrete.md"""
        log_rho = log_softmax(omega)
        rho = np.exp(log_rho)
        return rho * (log_rho - np.sum(rho * log_rho, axis=-1, keepdims=True))

    def noise(self, n, batch, rng, dtype):
        """Gumbel noise gamma = -log(-log u), u ~ U(0, 1): (n, B, Z, C) of ``dtype``."""
        return check.check_rng(rng).gumbel(size=(n, batch) + self.event_shape).astype(dtype)

    def sample(self, omega, gamma):
        """z_j = onehot(argmax_k (omega_jk + gamma_jk)), an exact sample of q (the Gumbel-max trick):
        gamma (L, B, Z, C) -> z (L, B, Z, C).   Eq. (H8), docs/discrete.md"""
        k = np.argmax(omega + gamma, axis=-1)
        return (k[..., None] == np.arange(self.n_categories)).astype(gamma.dtype)

    def relaxed(self, omega, gamma, tau):
        """The Gumbel-softmax (Concrete) sample zt_j = softmax((omega_j + gamma_j) / tau), (L, B, Z, C):
        the argmax smoothed; zt -> z as tau -> 0.   Eq. (H15), docs/discrete.md"""
        return softmax((omega + gamma) / _check_temperature(tau))

    def relaxed_backward(self, zt, dzt, tau):
        """d loss / d omega from d loss / d zt (L, B, Z, C), summed over samples:
        sum_l zt (dzt - <zt, dzt>) / tau, the softmax's Jacobian-vector product, (B, Z, C).
        Eq. (H16), docs/discrete.md"""
        inner = np.sum(zt * dzt, axis=-1, keepdims=True)
        return np.sum(zt * (dzt - inner), axis=0) / _check_temperature(tau)

    def states(self, dtype):
        """Every z: (C^Z, Z, C) one-hot, state s holding the base-C digits of s (most significant first)."""
        digits = np.indices((self.n_categories,) * self.latent_dim).reshape(self.latent_dim, -1).T
        return (digits[..., None] == np.arange(self.n_categories)).astype(dtype)

    def prior_sample(self, n, rng, dtype):
        """n codes from the uniform prior: (n, Z, C) one-hot."""
        k = check.check_rng(rng).integers(0, self.n_categories, size=(n, self.latent_dim))
        return (k[..., None] == np.arange(self.n_categories)).astype(dtype)

    def mode(self, omega):
        """The most probable code, onehot(argmax_k omega_jk), (B, Z, C)."""
        return (np.argmax(omega, axis=-1)[..., None] == np.arange(self.n_categories)).astype(omega.dtype)


LATENTS = ("bernoulli", "categorical")


def make_discrete_posterior(latent, latent_dim, n_categories=2):
    """The family for ``latent`` in LATENTS. n_categories (C >= 2) is for "categorical"; "bernoulli"
    is two classes with one logit each and refuses any other n_categories (it would change nothing)."""
    if not isinstance(latent, str) or latent not in LATENTS:
        raise ValueError(f"unknown latent {latent!r}; expected one of {list(LATENTS)}")
    if isinstance(n_categories, (bool, np.bool_)) or not isinstance(n_categories, (int, np.integer)) \
            or n_categories < 2:
        raise ValueError(f"n_categories must be an integer >= 2; got {n_categories!r}")
    if latent == "bernoulli":
        if n_categories != 2:
            raise ValueError(f"n_categories applies to latent='categorical' only; latent='bernoulli' has 2 "
                             f"classes per unit (got n_categories={n_categories!r})")
        return BernoulliPosterior(latent_dim)
    return CategoricalPosterior(latent_dim, int(n_categories))
