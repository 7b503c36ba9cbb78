"""Looking inside a trained VAE: which latent dimensions it uses, and a naive log p(x).

    kl_per_dimension(model, x)        -> (Z,)  how many nats each latent dimension carries
    active_units(model, x)            -> (count, (Z,) variances)  Burda et al. (2016)
    log_likelihood_prior_sampling(model, x, K, rng) -> (B,)  log p(x) by sampling the prior
    encode_all(model, x)              -> model.encode(x) for a whole data set, in batches

The first two answer "is this latent dimension used?" (docs/ppca.md, section 6). A dimension
whose posterior equals the prior for every x carries no information about x: its KL is 0 and
its posterior mean does not move with x. VAEs often switch dimensions off like this
("posterior collapse"), so these numbers are worth printing after every training run.

The third is the simplest possible Monte Carlo estimate of log p(x), with z drawn from the
prior instead of from the encoder. It is correct on average, but it needs absurdly many
samples when the posterior is narrow compared with the prior (docs/ppca.md, section 5);
it is here to show *why* VAE.log_likelihood samples from q(z|x) instead.

Everything here goes through the model's public methods (encode, log_p_x_given_z).
"""

import math

import numpy as np

from .. import _validate as check
from ..distributions import kl_diag_gaussian_standard_per_dim, log_mean_exp

__all__ = ["kl_per_dimension", "active_units", "log_likelihood_prior_sampling", "encode_in_batches",
           "encode_all"]


def encode_in_batches(model, x, batch_size=1000, y=None):
    """Yield ``model.encode`` of consecutive batches of x (N, D), ``batch_size`` rows at a time, so
    memory stays bounded for any N: a VAE's ``(mu, logvar)``, each (b, Z), or an autoencoder's
    codes (b, Z). ``y`` (N,): the labels of a conditional model, whose encoder also reads them.
    The whole of x is checked (shape, finite, not empty) before the first batch is encoded."""
    x = check.as_batch(x, model.input_dim, model.dtype, "x")
    batch_size = check.check_positive_int(batch_size, "batch_size")
    for start in range(0, x.shape[0], batch_size):
        labels = {} if y is None else {"y": y[start:start + batch_size]}    # an autoencoder takes no y
        yield model.encode(x[start:start + batch_size], **labels)


def encode_all(model, x, batch_size=1000, y=None):
    """``model.encode(x)`` for a whole data set x (N, D), computed by encode_in_batches and
    concatenated: a VAE's ``(mu, logvar)``, each (N, Z), or an autoencoder's codes (N, Z)."""
    parts = list(encode_in_batches(model, x, batch_size, y))
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts))
    return np.concatenate(parts)


def kl_per_dimension(model, x, batch_size=1000, y=None):
    """The KL of each latent dimension from the prior, averaged over the data: shape (Z,).
    Eq. (A1), docs/ppca.md

        KL_j = 1/N sum_n 1/2 ( mu_j(x_n)^2 + sigma_j^2(x_n) - 1 - log sigma_j^2(x_n) )

    For a diagonal posterior the KL of the ELBO ((K2) in docs/kl.md) is the sum of these
    per-dimension terms, so kl_per_dimension(model, x).sum() is the model's mean KL. A dimension with KL_j
    close to 0 is unused: its posterior is the prior for (almost) every x.
    Accumulated in float64 over batches of ``batch_size`` datapoints.

    A full-covariance posterior raises: its KL has no split into dimensions that is both a KL
    per dimension and sums to the total (docs/ppca.md, section 6). training.evaluate_elbo
    reports its diagonal terms and its off-diagonal part separately instead.
    """
    posterior = model.config["posterior"]
    if posterior != "diag":
        raise ValueError(f"kl_per_dimension needs a diagonal posterior (posterior='diag'); got posterior={posterior!r}")
    total = np.zeros(model.latent_dim)
    n = 0
    for mu, logvar in encode_in_batches(model, x, batch_size, y):
        total += np.sum(kl_diag_gaussian_standard_per_dim(mu, logvar), axis=0, dtype=np.float64)
        n += mu.shape[0]
    return total / n


def active_units(model, x, threshold=0.01, batch_size=1000, y=None):
    """Count the latent dimensions the model actually uses (Burda, Grosse & Salakhutdinov, 2016).
    Eq. (A2), docs/ppca.md

    Unit j is active if its posterior mean moves with the data:

        Var_x mu_j = Var over x of E_q[z_j | x] = 1/N sum_n (mu_j(x_n) - mean_n mu_j)^2  >  threshold

    (the 1/N population variance, as in the paper, whose threshold is 0.01). The posterior
    variance plays no part: a unit whose mean is the same for every x tells the decoder
    nothing about x, however its variance behaves. Returns ``(count, variances)`` with count
    a Python int and variances the (Z,) float64 array of Var_x mu_j.
    """
    threshold = check.check_finite_number(threshold, "threshold", low=0.0)
    # The means are only (N, Z): keeping them all lets np.var do a stable two-pass variance.
    mu, _ = encode_all(model, x, batch_size, y)
    mu = mu.astype(np.float64)
    variances = mu.var(axis=0)
    return int(np.sum(variances > threshold)), variances


def log_likelihood_prior_sampling(model, x, n_samples, rng, chunk_size=None):
    """Naive Monte Carlo estimate of log p(x), z drawn from the prior: shape (B,).
    Eq. (Q1), docs/ppca.md

        log p(x) ~= log 1/K sum_k p(x | z_k),   z_k ~ N(0, I),  k = 1..K

    This is importance sampling ((I2) in docs/importance.md) with the prior as the proposal:
    the weights p(x|z) p(z) / p(z) are just the likelihoods. The average of p(x | z_k) is
    unbiased for p(x), and its log is a lower bound in expectation, like every such estimate.
    But almost every prior sample lands where the posterior is tiny, so a handful of lucky
    samples carry the whole sum and the estimate is far below log p(x) until K is huge
    (docs/ppca.md, section 5). Compare VAE.log_likelihood, which samples from q(z|x).

    x: (B, D); n_samples: K; rng: np.random.Generator. The K samples are drawn and decoded
    ``chunk_size`` at a time (default: about 64 MiB of peak memory per chunk, as in
    VAE.log_likelihood); the chunks are combined by log-sum-exp, and the result does not
    depend on chunk_size.
    """
    x = check.as_batch(x, model.input_dim, model.dtype, "x")
    K = check.check_positive_int(n_samples, "n_samples")
    check.check_rng(rng)
    B, Z = x.shape[0], model.latent_dim
    if chunk_size is None:
        chunk_size = model.log_likelihood_chunk_size(B, K)
    chunk_size = check.check_positive_int(chunk_size, "chunk_size")

    log_sum = np.full(B, -np.inf)          # log sum_k p(x | z_k) over the chunks so far
    for start in range(0, K, chunk_size):
        k = min(chunk_size, K - start)
        z = rng.standard_normal((k, B, Z), dtype=model.dtype)
        log_px_z = model.log_p_x_given_z(x, z)                 # (k, B); z[j, b] is paired with x[b]
        # Combine chunks by log-sum-exp, as VAE.log_likelihood does: nothing underflows to log 0.
        log_sum = np.logaddexp(log_sum, log_mean_exp(log_px_z, axis=0) + math.log(k))
    return (log_sum - math.log(K)).astype(model.dtype)
