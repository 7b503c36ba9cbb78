"""Distributions of the VAE and the gradients of their log-densities and KLs.

Conventions (docs/distributions.md):

* a diagonal Gaussian is given by its mean ``mu`` and its **log-variance**
  ``logvar = log sigma^2``; its standard deviation is ``exp(logvar / 2)`` and its
  variance is ``exp(logvar)``;
* every log-density is a true log-density: Gaussian terms keep their
  ``-0.5 * log(2 pi var)`` constants, so bounds can be compared with closed forms;
* densities of vectors sum over the last axis, so ``(..., D) -> (...)``.

Nothing here draws random numbers: ``reparameterize`` takes its noise ``eps``.
"""

import math

import numpy as np

from . import _validate as check
from .numerics import sigmoid, softplus, softplus_and_sigmoid
from .parallel import for_each_row_block

__all__ = [
    "LOG_2PI",
    "reparameterize", "reparameterize_backward",
    "kl_diag_gaussian_standard", "kl_diag_gaussian_standard_per_dim", "kl_diag_gaussian_standard_grad",
    "kl_diag_gaussians", "kl_diag_gaussians_grad", "kl_full_gaussians",
    "log_normal_diag", "log_normal_diag_grad", "log_standard_normal",
    "bernoulli_log_likelihood", "bernoulli_log_likelihood_grad", "bernoulli_log_likelihood_and_grad",
    "gaussian_log_likelihood", "gaussian_log_likelihood_grad",
    "log_mean_exp", "log_q_from_eps", "normalized_importance_weights",
    "tril_to_matrix", "reparameterize_full", "reparameterize_full_backward", "kl_full_gaussian_standard",
    "sigmoid_mean_grad",
    "BernoulliLikelihood", "GaussianLikelihood", "GaussianLearnedLikelihood",
    "make_likelihood", "LIKELIHOODS", "DECODER_MEANS", "LOGVAR_RANGE",
    "DiagonalGaussianPosterior", "FullGaussianPosterior", "make_posterior", "POSTERIORS",
]

LOG_2PI = math.log(2.0 * math.pi)

# The range (low, high) of every log-variance the model outputs, kept by a smooth bound on its
# head (SoftClip, Eq. (B8), docs/backprop.md): the posterior's (model.POSTERIOR_LOGVAR_RANGE) and,
# unless it is given a floor obs_std_min, the learned-variance decoder's. The reasons for the
# numbers: docs/elbo.md, section 4. 40 nats either side of the prior's log-variance 0. In [-5, 5]
# the bound moves a value by at most one float64 rounding unit, in [-10, 10] by 1e-13 and not at
# all in float32: trained values are not bent, and a log-variance set by hand through the head's
# bias (numpyvae.ppca.linear_vae_from_ppca) is exact. At the ceiling every float32 quantity stays
# finite (e^40 = 2.4e17; z's standard deviation is e^20 = 4.9e8).
LOGVAR_RANGE = (-40.0, 40.0)

# How a Gaussian likelihood's head "out" = a gives the mean m (docs/distributions.md, section 6):
#   identity  m = a            any real data (pPCA, the linear VAE, tutorial 10's surface)
#   sigmoid   m = sigmoid(a)   data in [0, 1] such as pixels: the mean cannot leave that range
DECODER_MEANS = ("identity", "sigmoid")


def _sum_to_shape(a, shape):
    """Sum a broadcast gradient back down to ``shape`` (the adjoint of broadcasting)."""
    extra = a.ndim - len(shape)
    if extra:
        a = a.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


# ---------------------------------------------------------------------------
# The reparameterization trick
# ---------------------------------------------------------------------------

def reparameterize(mu, logvar, eps):
    """z = mu + sigma * eps with sigma = exp(logvar / 2).   Eq. (R1), docs/reparameterization.md

    ``mu`` and ``logvar`` have shape (B, Z); ``eps`` ~ N(0, I) has shape (L, B, Z) (or any
    shape that broadcasts against them). Returns z with the broadcast shape, e.g. (L, B, Z).
    """
    return mu + np.exp(0.5 * logvar) * eps


def reparameterize_backward(dz, logvar, eps):
    """Gradients through z = mu + exp(logvar/2) * eps.   Eq. (R2), docs/reparameterization.md

        dL/dmu     = sum_l dz_l
        dL/dlogvar = sum_l dz_l * eps_l * exp(logvar / 2) / 2

    The sum over the sample axis is the adjoint of broadcasting mu over L samples.
    Returns ``(dmu, dlogvar)`` with the shape of ``logvar``.
    """
    dmu = _sum_to_shape(dz, logvar.shape)
    dlogvar = _sum_to_shape(dz * eps * (0.5 * np.exp(0.5 * logvar)), logvar.shape)
    return dmu, dlogvar


# ---------------------------------------------------------------------------
# KL divergences
# ---------------------------------------------------------------------------

def kl_diag_gaussian_standard_per_dim(mu, logvar):
    """The terms of Eq. (K2), docs/kl.md, one per latent dimension (not summed): shape (..., Z).

        KL_j = 1/2 ( mu_j^2 + exp(logvar_j) - 1 - logvar_j ),  computed as expm1(v) - v:
    for tiny v, exp(v) rounds to 1 and the plain form can come out negative; expm1(v) >= v
    holds in floating point too.
    """
    return 0.5 * (mu * mu + (np.expm1(logvar) - logvar))


def kl_diag_gaussian_standard(mu, logvar):
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ), summed over the last axis.   Eq. (K2), docs/kl.md

        KL = 1/2 * sum_j ( mu_j^2 + exp(logvar_j) - 1 - logvar_j )

    Note it is logvar = log sigma^2 that appears, not log sigma. Shape (..., Z) -> (...):
    the sum over dimensions of kl_diag_gaussian_standard_per_dim.
    """
    return np.sum(kl_diag_gaussian_standard_per_dim(mu, logvar), axis=-1)


def kl_diag_gaussian_standard_grad(mu, logvar):
    """Gradient of Eq. (K2), docs/kl.md: dKL/dmu = mu, dKL/dlogvar = (exp(logvar) - 1) / 2.   Eq. (K3), docs/kl.md"""
    return mu.copy(), 0.5 * np.expm1(logvar)


def kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p):
    """KL( N(mu_q, diag e^{logvar_q}) || N(mu_p, diag e^{logvar_p}) ).   Eq. (K4), docs/kl.md

        KL = 1/2 * sum_j ( logvar_p - logvar_q + (e^{logvar_q} + (mu_q - mu_p)^2) / e^{logvar_p} - 1 )
    """
    # With d = logvar_q - logvar_p the first terms are exp(d) - 1 - d = expm1(d) - d >= 0.
    diff = mu_q - mu_p
    d = logvar_q - logvar_p
    return 0.5 * np.sum(np.expm1(d) - d + diff * diff * np.exp(-logvar_p), axis=-1)


def kl_diag_gaussians_grad(mu_q, logvar_q, mu_p, logvar_p):
    """Gradient of Eq. (K4), docs/kl.md with respect to its four arguments.   Eq. (K5), docs/kl.md

    Returns ``(d_mu_q, d_logvar_q, d_mu_p, d_logvar_p)``:
        d_mu_q     = (mu_q - mu_p) / var_p            d_mu_p = -d_mu_q
        d_logvar_q = (var_q / var_p - 1) / 2
        d_logvar_p = (1 - (var_q + (mu_q - mu_p)^2) / var_p) / 2
    """
    inv_var_p = np.exp(-logvar_p)
    diff = mu_q - mu_p
    d_mu_q = diff * inv_var_p
    ratio_m1 = np.expm1(logvar_q - logvar_p)           # var_q / var_p - 1
    d_logvar_q = 0.5 * ratio_m1
    d_logvar_p = -0.5 * (ratio_m1 + diff * diff * inv_var_p)
    return d_mu_q, d_logvar_q, -d_mu_q, d_logvar_p


def kl_full_gaussians(mu_q, cov_q, mu_p, cov_p):
    """KL( N(mu_q, cov_q) || N(mu_p, cov_p) ) for full covariance matrices.   Eq. (K1), docs/kl.md

        KL = 1/2 * ( tr(cov_p^{-1} cov_q) + (mu_p - mu_q)^T cov_p^{-1} (mu_p - mu_q)
                     - Z + log det cov_p - log det cov_q )

    Shapes: mu (..., Z), cov (..., Z, Z) (leading batch axes broadcast). Computed in float64,
    through Cholesky factors. Raises TypeError for non-real input and ValueError, naming the
    argument, for NaN or inf, wrong shapes, or a covariance that is not symmetric positive definite.
    """
    mu_q, cov_q, mu_p, cov_p = (check.check_finite_array(a, name) for a, name in
                                ((mu_q, "mu_q"), (cov_q, "cov_q"), (mu_p, "mu_p"), (cov_p, "cov_p")))
    Z = mu_q.shape[-1] if mu_q.ndim else 0
    if (mu_q.ndim == 0 or mu_p.ndim == 0 or mu_p.shape[-1] != Z
            or cov_q.shape[-2:] != (Z, Z) or cov_p.shape[-2:] != (Z, Z)):
        raise ValueError(f"kl_full_gaussians: expected means mu_q, mu_p of shape (..., Z) and covariances "
                         f"cov_q, cov_p of shape (..., Z, Z); got {mu_q.shape}, {cov_q.shape}, {mu_p.shape}, "
                         f"{cov_p.shape}")
    for name, cov in (("cov_q", cov_q), ("cov_p", cov_p)):
        # Cholesky reads one triangle only: an asymmetric matrix would silently be replaced by
        # the symmetric matrix of its lower half. Tolerance: rounding, relative to the largest entry.
        if np.max(np.abs(cov - np.swapaxes(cov, -1, -2)), initial=0.0) > 1e-10 * np.max(np.abs(cov), initial=0.0):
            raise ValueError(f"kl_full_gaussians: {name} must be symmetric")
    try:
        chol_q = np.linalg.cholesky(cov_q)
        chol_p = np.linalg.cholesky(cov_p)
    except np.linalg.LinAlgError as exc:
        raise ValueError("kl_full_gaussians: covariances cov_q and cov_p must be positive definite") from exc
    # log det cov = 2 sum log diag(G) for its Cholesky factor cov = G G^T (here chol_q, chol_p)
    logdet_q = 2.0 * np.sum(np.log(np.diagonal(chol_q, axis1=-2, axis2=-1)), axis=-1)
    logdet_p = 2.0 * np.sum(np.log(np.diagonal(chol_p, axis1=-2, axis2=-1)), axis=-1)
    # With cov_p = G_p G_p^T: tr(cov_p^{-1} cov_q) = ||G_p^{-1} G_q||_F^2 and the Mahalanobis
    # term is ||G_p^{-1} (mu_p - mu_q)||^2; solving against G_p avoids forming an inverse.
    with np.errstate(over="ignore", invalid="ignore"):     # an overflow is refused just below
        a = np.linalg.solve(chol_p, chol_q)
        trace = np.sum(a * a, axis=(-2, -1))
        diff = (mu_p - mu_q)[..., None]
        m = np.linalg.solve(chol_p, np.broadcast_to(diff, np.broadcast_shapes(diff.shape, chol_p.shape[:-1] + (1,))))
        maha = np.sum(m * m, axis=(-2, -1))
        kl = 0.5 * (trace + maha - Z + logdet_p - logdet_q)
    if not np.all(np.isfinite(kl)):
        raise ValueError("kl_full_gaussians: the KL overflows float64 (the two Gaussians differ by "
                         "too many orders of magnitude in scale or location)")
    return kl


# ---------------------------------------------------------------------------
# Gaussian log-densities
# ---------------------------------------------------------------------------

def log_normal_diag(x, mu, logvar):
    """log N(x; mu, diag(exp(logvar))), summed over the last axis.   Eq. (G1), docs/distributions.md

        log N = -1/2 * sum_j ( log(2 pi) + logvar_j + (x_j - mu_j)^2 exp(-logvar_j) )
    """
    d = x - mu
    return -0.5 * np.sum(LOG_2PI + logvar + d * d * np.exp(-logvar), axis=-1)


def log_normal_diag_grad(x, mu, logvar):
    """Gradient of Eq. (G1), docs/distributions.md with respect to mu and logvar.   Eq. (G2), docs/distributions.md

        d/dmu     = (x - mu) exp(-logvar)
        d/dlogvar = -1/2 + (x - mu)^2 exp(-logvar) / 2
    """
    d = x - mu
    inv_var = np.exp(-logvar)
    return d * inv_var, 0.5 * (d * d * inv_var - 1.0)


def log_standard_normal(z):
    """log N(z; 0, I) summed over the last axis: -1/2 sum (log 2pi + z^2).   Eq. (G3), docs/distributions.md"""
    return -0.5 * np.sum(LOG_2PI + z * z, axis=-1)


def gaussian_log_likelihood(x, mean, var):
    """log N(x; mean, var * I), fixed scalar variance var = lambda (``obs_var``).   Eq. (G4), docs/distributions.md

        log p(x|z) = -D/2 log(2 pi var) - ||x - mean||^2 / (2 var)
    """
    d = x - mean
    D = x.shape[-1]
    # math.log gives a Python float, which (unlike a NumPy float64) never upcasts float32.
    return -0.5 * D * math.log(2.0 * math.pi * var) - np.sum(d * d, axis=-1) / (2.0 * var)


def gaussian_log_likelihood_grad(x, mean, var):
    """d/dmean of Eq. (G4), docs/distributions.md: (x - mean) / var.   Eq. (G5), docs/distributions.md"""
    return (x - mean) / var


def sigmoid_mean_grad(d_mean, a):
    """The chain rule through a Gaussian mean m = sigmoid(a).   Eq. (G6), docs/distributions.md

        d log p / d a = d log p / d m * m (1 - m),   computed as  m (1 - m) = sigmoid(a) * sigmoid(-a)

    ``d_mean`` = d log p / d m (Eq. (G5) or the mean half of Eq. (G2)) and the head's output ``a``
    have the same shape, e.g. (L, B, D). The product form has no cancellation: 1 - sigmoid(a) is
    exactly 0 once a > 16.6 in float32 (36.7 in float64); sigmoid(-a) keeps e^{-a} to full precision.
    """
    return d_mean * (sigmoid(a) * sigmoid(-a))


# ---------------------------------------------------------------------------
# Bernoulli log-likelihood from logits
# ---------------------------------------------------------------------------

def bernoulli_log_likelihood(x, logits):
    """log Bernoulli(x; sigmoid(logits)), summed over the last axis.   Eq. (L1), docs/distributions.md

        log p(x|z) = sum_j [ x_j log s_j + (1 - x_j) log(1 - s_j) ],  s = sigmoid(logits)
                   = sum_j [ x_j * logits_j - softplus(logits_j) ]

    The softplus form never evaluates log(sigmoid(.)), so it stays finite for logits of
    any magnitude (|logits| = 1e4 included). ``x`` may hold grey values in [0, 1].
    Shapes: x (B, D) and logits (..., B, D) -> (..., B), or any two shapes that broadcast.
    """
    return _in_row_blocks(_bernoulli_log_p, x, logits, with_grad=False)[0]


def bernoulli_log_likelihood_grad(x, logits):
    """d/dlogits of Eq. (L1), docs/distributions.md: x - sigmoid(logits).   Eq. (L2), docs/distributions.md"""
    return x - sigmoid(logits)


def bernoulli_log_likelihood_and_grad(x, logits):
    """The log-likelihood, Eq. (L1), docs/distributions.md, and its gradient, Eq. (L2),
    docs/distributions.md, from one exponential:

        log p(x|z) = sum_j [ x_j * logits_j - softplus(logits_j) ],   d/dlogits = x - sigmoid(logits)

    Equal (bit for bit) to bernoulli_log_likelihood and bernoulli_log_likelihood_grad; the training
    step uses it because softplus and sigmoid share exp(-|logits|) (numpyvae.numerics.softplus_and_sigmoid).
    Shapes: x (B, D), logits (..., B, D) -> ((..., B), (..., B, D)).
    """
    return _in_row_blocks(_bernoulli_log_p_and_grad, x, logits, with_grad=True)


def _bernoulli_log_p(x, logits, log_p, grad):
    """Eq. (L1) into log_p (grad is None)."""
    log_p[...] = np.sum(x * logits - softplus(logits), axis=-1)


def _bernoulli_log_p_and_grad(x, logits, log_p, grad):
    """Eqs. (L1) and (L2) into log_p and grad, from one exponential."""
    sp, sig = softplus_and_sigmoid(logits)
    np.subtract(x, sig, out=grad)
    log_p[...] = np.sum(x * logits - sp, axis=-1)


def _in_row_blocks(formula, x, logits, with_grad):
    """(log_p, grad or None): formula(x, logits, log_p, grad) written into new arrays, row block by
    row block on numpyvae's threads (numpyvae.parallel.for_each_row_block).

    Blocked when x is (B, D) and logits (..., B, D), the shapes of every decoder call: logits and
    the outputs are seen as (N B, D) rows, row r pairing with row r mod B of x, and a block is a
    part of one (B, D) slab or a run of whole slabs (x then broadcasts over them). The formula sees
    each row as it would over the whole array, so blocking changes no bit. Any other pair of shapes
    that broadcast gets one call on the whole arrays."""
    x, logits = np.asarray(x), np.asarray(logits)
    shape, dtype = np.broadcast_shapes(x.shape, logits.shape), np.result_type(x, logits)
    log_p = np.empty(shape[:-1], dtype=dtype)
    grad = np.empty(shape, dtype=dtype) if with_grad else None
    if not (x.ndim == 2 and logits.ndim >= 2 and logits.shape[-2:] == x.shape and logits.size > 0
            and logits.flags.c_contiguous and x.flags.c_contiguous):
        formula(x, logits, log_p, grad)
        return log_p, grad
    B, D = x.shape
    rows_a, rows_p = logits.reshape(-1, D), log_p.reshape(-1)
    rows_g = None if grad is None else grad.reshape(-1, D)

    def block(i, j):
        g = None if rows_g is None else rows_g[i:j]
        if j - i > B:                                        # n whole slabs
            n = (j - i) // B
            formula(x, rows_a[i:j].reshape(n, B, D), rows_p[i:j].reshape(n, B),
                    None if g is None else g.reshape(n, B, D))
        else:                                                # a part of one slab
            start = i % B
            formula(x[start:start + (j - i)], rows_a[i:j], rows_p[i:j], g)

    for_each_row_block(block, rows_a.shape[0], D * dtype.itemsize, period=B)
    return log_p, grad


def log_mean_exp(a, axis=0):
    """log( mean(exp(a), axis) ) without overflow: m + log(mean(exp(a - m))), m = max.

    Used for importance weights, Eq. (I2), docs/importance.md.
    """
    a = np.asarray(a)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):   # all -inf: log(0) = -inf is the right answer
        out = m + np.log(np.mean(np.exp(a - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


# ---------------------------------------------------------------------------
# Decoder likelihoods: what the decoder's output heads mean.
# ---------------------------------------------------------------------------

class BernoulliLikelihood:
    """p(x|z) = prod_j Bernoulli(x_j; sigmoid(logits_j)); one decoder head "out" of logits."""

    name = "bernoulli"
    heads = ("out",)
    head_ranges = {}      # no head is bounded

    def check_targets(self, x):
        if np.any(x < 0) or np.any(x > 1):
            raise ValueError("bernoulli likelihood: x must lie in [0, 1] (binary pixels or grey "
                             f"values); got values in [{x.min():.4g}, {x.max():.4g}]")

    def log_prob(self, x, out):
        return bernoulli_log_likelihood(x, out["out"])

    def grad(self, x, out):
        return {"out": bernoulli_log_likelihood_grad(x, out["out"])}

    def log_prob_and_grad(self, x, out):
        log_p, d = bernoulli_log_likelihood_and_grad(x, out["out"])
        return log_p, {"out": d}

    def mean(self, out):
        return sigmoid(out["out"])


def _check_decoder_mean(decoder_mean):
    if not isinstance(decoder_mean, str) or decoder_mean not in DECODER_MEANS:
        raise ValueError(f"decoder_mean must be one of {list(DECODER_MEANS)}; got {decoder_mean!r}")
    return decoder_mean


class _GaussianMean:
    """What the two Gaussian likelihoods share: how the decoder's head "out" = a gives the mean m.

    decoder_mean="identity": m = a.  decoder_mean="sigmoid": m = sigmoid(a), for data in [0, 1],
    with the head's gradient from sigmoid_mean_grad (docs/distributions.md, section 6)."""

    def __init__(self, decoder_mean):
        self.decoder_mean = _check_decoder_mean(decoder_mean)

    def check_targets(self, x):
        pass

    def mean(self, out):
        a = out["out"]
        return sigmoid(a) if self.decoder_mean == "sigmoid" else a

    def log_prob(self, x, out):
        return self._log_prob_at(x, self.mean(out), out)

    def grad(self, x, out):
        return self._grad_at(x, self.mean(out), out)

    def log_prob_and_grad(self, x, out):
        m = self.mean(out)                 # computed once for both
        return self._log_prob_at(x, m, out), self._grad_at(x, m, out)

    def _head_grad(self, d_mean, out):
        """d log p / d out["out"] from d log p / d mean (the subclasses' _grad_at use it)."""
        return sigmoid_mean_grad(d_mean, out["out"]) if self.decoder_mean == "sigmoid" else d_mean


class GaussianLikelihood(_GaussianMean):
    """p(x|z) = N(x; m, obs_var * I), fixed variance; one decoder head "out" giving the mean m
    (m = out, or sigmoid(out) with decoder_mean="sigmoid")."""

    name = "gaussian"
    heads = ("out",)
    head_ranges = {}      # the variance is fixed: nothing to bound

    def __init__(self, obs_var=1.0, decoder_mean="identity"):
        super().__init__(decoder_mean)
        self.obs_var = check.check_finite_number(obs_var, "obs_var", low=0.0, low_inclusive=False)

    def _log_prob_at(self, x, m, out):
        return gaussian_log_likelihood(x, m, self.obs_var)

    def _grad_at(self, x, m, out):
        return {"out": self._head_grad(gaussian_log_likelihood_grad(x, m, self.obs_var), out)}


class GaussianLearnedLikelihood(_GaussianMean):
    """p(x|z) = N(x; m, diag(exp(logvar))): heads "out" (giving the mean m, as in
    GaussianLikelihood) and "logvar", a log-variance per pixel.

    The "logvar" head is bounded (SoftClip, (B8) in docs/backprop.md) to head_ranges["logvar"]
    = (2 log obs_std_min, 40): no pixel's standard deviation falls below ``obs_std_min`` (in data
    units), so log p(x|z) <= -D log(obs_std_min sqrt(2 pi)). Without a floor the likelihood is
    unbounded above on pixels the decoder reconstructs exactly (MNIST's black border) and training
    on MNIST is erratic; the CLI's 0.05 for grey values in [0, 1], the measurements behind it and
    the trade-off: docs/distributions.md, section 4. ``obs_std_min=None``: no floor beyond the
    bound's numerical range, LOGVAR_RANGE (standard deviations down to e^-20), for data whose
    noise scale the model is to find (tutorial 10's surface: noise 0.05, learned std 0.07).
    """

    name = "gaussian-learned"
    heads = ("out", "logvar")

    def __init__(self, decoder_mean="identity", obs_std_min=None):
        super().__init__(decoder_mean)
        low, high = LOGVAR_RANGE
        if obs_std_min is not None:
            # Any floor a log-variance in LOGVAR_RANGE can express: e^-20 <= obs_std_min < e^20.
            obs_std_min = check.check_finite_number(obs_std_min, "obs_std_min", low=math.exp(low / 2),
                                                    high=math.exp(high / 2), high_inclusive=False)
            low = 2.0 * math.log(obs_std_min)
        self.obs_std_min = obs_std_min
        self.head_ranges = {"logvar": (low, high)}

    def _log_prob_at(self, x, m, out):
        return log_normal_diag(x, m, out["logvar"])

    def _grad_at(self, x, m, out):
        d_mean, d_logvar = log_normal_diag_grad(x, m, out["logvar"])
        return {"out": self._head_grad(d_mean, out), "logvar": d_logvar}


LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned")


def make_likelihood(name, obs_var=1.0, decoder_mean="identity", obs_std_min=None):
    """Build the likelihood object for a name in LIKELIHOODS.

    ``obs_var`` is used by "gaussian"; ``decoder_mean`` (DECODER_MEANS) by the two Gaussian
    likelihoods; ``obs_std_min`` (None: no floor) by "gaussian-learned". A decoder_mean other than
    "identity" or an obs_std_min other than None for a likelihood that does not use it is a
    ValueError naming the argument: it would change nothing."""
    if not isinstance(name, str) or name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {list(LIKELIHOODS)}")
    _check_decoder_mean(decoder_mean)
    if decoder_mean != "identity" and name == "bernoulli":
        raise ValueError(f"decoder_mean={decoder_mean!r} applies to the Gaussian likelihoods only; the "
                         "bernoulli likelihood's mean is always sigmoid(logits)")
    if obs_std_min is not None and name != "gaussian-learned":
        raise ValueError(f"obs_std_min (a floor on the learned standard deviation) applies to "
                         f"likelihood='gaussian-learned' only; got likelihood={name!r}")
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(obs_var, decoder_mean)
    return GaussianLearnedLikelihood(decoder_mean, obs_std_min)


# ---------------------------------------------------------------------------
# Full-covariance Gaussian posterior through its Cholesky factor (docs/kl.md, section 6)
# ---------------------------------------------------------------------------
#
# The factor is G = diag(exp(logvar / 2)) + T, with T strictly lower-triangular. Its diagonal
# is positive by construction (an exponential), so G G^T is always a valid covariance, every
# covariance has exactly one such factor (Eq. (F4)), and with T = 0 everything reduces to the
# diagonal case: logvar keeps its meaning as the log of the squared diagonal of G. T is stored
# as the Z(Z-1)/2 entries below the diagonal, in the row-major order of np.tril_indices(Z, -1).

def tril_to_matrix(tril, Z):
    """(..., Z(Z-1)/2) strictly-lower entries -> (..., Z, Z) matrix T, zero on and above the diagonal."""
    rows, cols = np.tril_indices(Z, -1)
    T = np.zeros(tril.shape[:-1] + (Z, Z), dtype=tril.dtype)
    T[..., rows, cols] = tril
    return T


def reparameterize_full(mu, logvar, tril, eps):
    """z = mu + G eps with G = diag(exp(logvar/2)) + T.   Eq. (F1), docs/kl.md

    mu, logvar (B, Z); tril (B, Z(Z-1)/2); eps (L, B, Z) for L samples -> z (L, B, Z). Then
    Cov z = G G^T, and log q(z) = -1/2 sum_j (log 2 pi + logvar_j + eps_j^2) because
    log det G = 1/2 sum_j logvar_j (a triangular matrix's determinant is its diagonal's product).
    """
    T = tril_to_matrix(tril, mu.shape[-1])
    return mu + np.exp(0.5 * logvar) * eps + np.einsum("bij,lbj->lbi", T, eps)


def reparameterize_full_backward(dz, logvar, tril, eps):
    """Gradients through Eq. (F1):   Eq. (F2), docs/kl.md

        dmu       = sum_l dz_l
        dlogvar_j = sum_l dz_lj eps_lj exp(logvar_j / 2) / 2
        dT_ij     = sum_l dz_li eps_lj              (kept for i > j only)
        deps      = not needed (eps is noise)

    Returns (dmu, dlogvar, dtril) shaped like mu, logvar, tril.
    """
    Z = logvar.shape[-1]
    rows, cols = np.tril_indices(Z, -1)
    dmu, dlogvar = reparameterize_backward(dz, logvar, eps)
    dT = np.einsum("lbi,lbj->bij", dz, eps)
    return dmu, dlogvar, dT[..., rows, cols]


def kl_full_gaussian_standard(mu, logvar, tril):
    """KL( N(mu, G G^T) || N(0, I) ) with G = diag(exp(logvar/2)) + T.   Eq. (F3), docs/kl.md

    From Eq. (K1) with tr(G G^T) = sum_j exp(logvar_j) + sum_{i>j} T_ij^2 and
    log det(G G^T) = sum_j logvar_j:
        KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j) + 1/2 sum_{i>j} T_ij^2
    i.e. the diagonal KL (Eq. K2) plus half the squared off-diagonal entries.
    Its gradient: the diagonal one (Eq. K3) for mu and logvar, and dKL/dT_ij = T_ij.
    """
    return kl_diag_gaussian_standard(mu, logvar) + 0.5 * np.sum(tril * tril, axis=-1)


def log_q_from_eps(logvar, eps):
    """log q(z|x) at z = mu + G eps, written with eps:  -1/2 sum_j (log 2pi + logvar_j + eps_j^2).
    Eq. (I3), docs/importance.md. Holds for the diagonal and the full-covariance posterior alike."""
    return -0.5 * np.sum(LOG_2PI + logvar + eps * eps, axis=-1)


def normalized_importance_weights(log_w, axis=0):
    """w_k / sum_j w_j from log-weights, as a softmax over ``axis`` (stable: subtract the max).
    Eq. (I5), docs/importance.md"""
    m = np.max(log_w, axis=axis, keepdims=True)
    e = np.exp(log_w - m)
    return e / np.sum(e, axis=axis, keepdims=True)


# ---------------------------------------------------------------------------
# Posterior families: what q(z|x) is, given the encoder's heads.
#
# Each family names its encoder heads and their widths, samples z from the noise eps, takes the
# adjoint of that sampling, and gives the KL to the prior N(0, I) and its gradient. The model and
# the estimators (numpyvae.estimators) use only these methods, so a family is one object, like a
# likelihood. ``estimators`` lists the gradient estimators the family supports.
# ---------------------------------------------------------------------------

class DiagonalGaussianPosterior:
    """q(z|x) = N(mu, diag(exp(logvar))): encoder heads "mu" and "logvar", each (B, Z)."""

    name = "diag"
    estimators = ("reparam", "score", "blocked", "stl")

    def __init__(self, latent_dim):
        self.head_widths = {"mu": latent_dim, "logvar": latent_dim}

    def sample(self, q, eps):
        """z (L, B, Z) = mu + exp(logvar/2) eps.   Eq. (R1), docs/reparameterization.md"""
        return reparameterize(q["mu"], q["logvar"], eps)

    def sample_backward(self, q, eps, dz):
        """d loss / d each head from d loss / dz (L, B, Z).   Eq. (R2), docs/reparameterization.md"""
        dmu, dlogvar = reparameterize_backward(dz, q["logvar"], eps)
        return {"mu": dmu, "logvar": dlogvar}

    def kl(self, q):
        """KL(q || N(0, I)) per datapoint, (B,).   Eq. (K2), docs/kl.md"""
        return kl_diag_gaussian_standard(q["mu"], q["logvar"])

    def kl_grad(self, q):
        """d KL / d each head, (B, Z).   Eq. (K3), docs/kl.md"""
        dmu, dlogvar = kl_diag_gaussian_standard_grad(q["mu"], q["logvar"])
        return {"mu": dmu, "logvar": dlogvar}


class FullGaussianPosterior(DiagonalGaussianPosterior):
    """q(z|x) = N(mu, G G^T) with G = diag(exp(logvar/2)) + T: heads "mu", "logvar" (B, Z) and
    "tril" (B, Z(Z-1)/2), the strictly lower entries of T. Eqs. (F1)-(F3), docs/kl.md."""

    name = "full"
    estimators = ("reparam", "blocked")

    def __init__(self, latent_dim):
        self.head_widths = {"mu": latent_dim, "logvar": latent_dim, "tril": latent_dim * (latent_dim - 1) // 2}

    def sample(self, q, eps):
        """z (L, B, Z) = mu + G eps.   Eq. (F1), docs/kl.md"""
        return reparameterize_full(q["mu"], q["logvar"], q["tril"], eps)

    def sample_backward(self, q, eps, dz):
        """d loss / d each head from d loss / dz (L, B, Z).   Eq. (F2), docs/kl.md"""
        dmu, dlogvar, dtril = reparameterize_full_backward(dz, q["logvar"], q["tril"], eps)
        return {"mu": dmu, "logvar": dlogvar, "tril": dtril}

    def kl(self, q):
        """KL(q || N(0, I)) per datapoint, (B,).   Eq. (F3), docs/kl.md"""
        return kl_full_gaussian_standard(q["mu"], q["logvar"], q["tril"])

    def kl_grad(self, q):
        """d KL / d each head: the diagonal ones (Eq. (K3)) and d KL / d T_ij = T_ij.   Eq. (F3), docs/kl.md"""
        return {**super().kl_grad(q), "tril": q["tril"].copy()}


POSTERIORS = {"diag": DiagonalGaussianPosterior, "full": FullGaussianPosterior}


def make_posterior(name, latent_dim):
    """The posterior family for a name in POSTERIORS ("diag" or "full")."""
    if not isinstance(name, str) or name not in POSTERIORS:
        raise ValueError(f"unknown posterior {name!r}; expected one of {list(POSTERIORS)}")
    return POSTERIORS[name](latent_dim)
