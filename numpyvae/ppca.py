"""Probabilistic PCA: the one VAE whose log-likelihood we can write down exactly.

Probabilistic PCA (Tipping & Bishop, 1999) is the VAE of this package with no hidden layers
and a fixed-variance Gaussian likelihood (docs/ppca.md). With column vectors z (Z,), x (D,):

    z ~ N(0, I_Z),    x | z ~ N(W^T z + b, sigma2 I_D),    W of shape (Z, D), b of shape (D,)

(the docs write b_0 for the bias b and lambda for the noise variance sigma2). Both steps are
linear and Gaussian, so x is Gaussian too, p(x) = N(x; b, W^T W + sigma2 I), and everything a
VAE can only estimate is here in closed form:

    ppca_fit(x, Z)                       -> (W, b, sigma2), the maximum-likelihood parameters
    ppca_log_likelihood(x, W, b, sigma2) -> log p(x), exactly
    linear_vae_from_ppca(W, b, sigma2)   -> a numpyvae VAE with this decoder and, as its
                                            encoder, the exact posterior p(z | x)

That makes pPCA the yardstick for the VAE machinery: a linear VAE trained by gradient ascent
on the ELBO should reach the pPCA log-likelihood, and every estimate of log p(x) (the ELBO,
importance sampling, prior sampling in numpyvae.lab.diagnostics) can be compared with the truth.

Layout: like numpyvae.layers.Linear, the array W here is (in, out) = (Z, D) and a batch holds
codes and datapoints as rows, so the decoder mean of a batch z (N, Z) is z @ W + b. Row j of W
is the direction in data space that latent coordinate j moves along. docs/ppca.md, like
Tipping & Bishop, writes the D x Z matrix whose columns are these directions, x = W z + b_0 +
noise: the transpose of this array. So the docs' C = W W^T + lambda I is W.T @ W + sigma2 I here,
and the docs' W^T W + lambda I (the posterior covariance is Sigma = lambda (W^T W + lambda I)^{-1})
is M = W @ W.T + sigma2 I.
"""

import numpy as np
from scipy.linalg import solve_triangular

from . import _validate as check
from .distributions import LOG_2PI
from .model import VAE

__all__ = ["ppca_fit", "ppca_log_likelihood", "ppca_covariance", "linear_vae_from_ppca"]


def _check_data(x):
    """x as a finite (N, D) float64 array, or a clear error."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"x must be 2-D with shape (N, D); got shape {arr.shape}")
    return check.as_batch(arr, arr.shape[1], np.float64, "x")


def _check_params(W, b, sigma2):
    """W (Z, D), b (D,), sigma2 > 0 as finite float64 arrays and a float, or a clear error."""
    W = check.check_finite_array(W, "W")
    b = check.check_finite_array(b, "b")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D with shape (latent_dim, input_dim); got shape {W.shape}")
    if b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},) to match W of shape {W.shape}; got {b.shape}")
    return W, b, _check_sigma2(sigma2)


def _check_sigma2(sigma2):
    return check.check_finite_number(sigma2, "sigma2", low=0.0, low_inclusive=False)


def ppca_covariance(W, sigma2):
    """The covariance of x under pPCA, C = W^T W + sigma2 I, shape (D, D).   Eq. (P1), docs/ppca.md

    W is (Z, D): each row W_j is one latent direction in data space, and adds the rank-one
    matrix W_j W_j^T (W_j as a column vector) to the isotropic noise sigma2 I.
    """
    W = check.check_finite_array(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D with shape (latent_dim, input_dim); got shape {W.shape}")
    return W.T @ W + _check_sigma2(sigma2) * np.eye(W.shape[1])


def ppca_fit(x, latent_dim):
    """Maximum-likelihood pPCA in closed form.   Eq. (P3), docs/ppca.md

    x: (N, D) data; latent_dim: Z, with 1 <= Z < D. Returns ``(W, b, sigma2)``:

        b      = the sample mean of x                                      (D,)
        S      = 1/N sum_n (x_n - b)(x_n - b)^T, eigenvalues kappa_1 >= ... >= kappa_D,
                 eigenvectors U_1, ..., U_D (the columns of U)
        sigma2 = the mean of the D - Z discarded eigenvalues kappa_{Z+1}, ..., kappa_D
        W      = (diag(kappa_1, ..., kappa_Z) - sigma2 I)^{1/2} U_Z^T      (Z, D)

    i.e. row j of W is the j-th principal direction U_j scaled by sqrt(kappa_j - sigma2): the
    variance the data has along U_j beyond the noise floor. Every other stationary point of the
    likelihood uses other eigenvectors or has zero rows, and is a saddle (docs/ppca.md, section 3).
    Any rotation Omega^T W (Omega orthogonal, Z x Z) has the same likelihood; we return Omega = I,
    for which the rows of W are orthogonal (W W^T is diagonal), which is what makes the exact
    posterior diagonal (see linear_vae_from_ppca). Everything is computed in float64.
    """
    x = _check_data(x)
    N, D = x.shape
    Z = check.check_positive_int(latent_dim, "latent_dim")
    if Z >= D:
        raise ValueError(f"latent_dim must be smaller than the data dimension D = {D}; got {Z} "
                         "(with Z >= D there are no discarded directions to estimate sigma2 from)")
    if N < 2:
        raise ValueError(f"ppca_fit needs at least 2 datapoints; got {N}")

    b = x.mean(axis=0)
    xc = x - b
    S = xc.T @ xc / N                      # 1/N, not 1/(N-1): this is the maximum-likelihood estimate
    kappa, U = np.linalg.eigh(S)           # eigh returns ascending eigenvalues ...
    kappa, U = kappa[::-1], U[:, ::-1]     # ... we want the largest first
    sigma2 = float(kappa[Z:].mean())
    # Eigenvalues are accurate to about D * machine epsilon * kappa_1; below that, sigma2 is zero.
    if not sigma2 > D * np.finfo(np.float64).eps * kappa[0]:
        raise ValueError("the data has no variance outside its top latent_dim principal directions "
                         f"(sigma2 = {sigma2:.3g}); pPCA needs sigma2 > 0: use a smaller latent_dim or more data")
    # kappa_j >= sigma2 for j <= Z because sigma2 averages smaller eigenvalues; clip only rounding.
    scale = np.sqrt(np.maximum(kappa[:Z] - sigma2, 0.0))
    W = scale[:, None] * U[:, :Z].T
    return W, b, sigma2


def ppca_log_likelihood(x, W, b, sigma2):
    """Exact log p(x) = log N(x; b, W^T W + sigma2 I) of each row of x, shape (N,).
    Eq. (P2), docs/ppca.md

    With the Cholesky factor C = G_C G_C^T (G_C lower triangular, D x D):

        log p(x) = -1/2 ( D log 2 pi + 2 sum_d log (G_C)_dd + ||r||^2 ),   G_C r = x - b

    The factorisation costs O(D^3) once; each datapoint then costs one triangular solve,
    O(D^2). Never forms C^{-1}. Computed in float64, returns float64.
    """
    W, b, sigma2 = _check_params(W, b, sigma2)
    x = check.as_batch(x, W.shape[1], np.float64, "x")
    D = W.shape[1]
    G_C = np.linalg.cholesky(ppca_covariance(W, sigma2))
    logdet = 2.0 * np.sum(np.log(np.diag(G_C)))
    # Solve G_C r = x_n - b for all datapoints at once, one column each: r has shape (D, N).
    r = solve_triangular(G_C, (x - b).T, lower=True)
    return -0.5 * (D * LOG_2PI + logdet + np.sum(r * r, axis=0))


def linear_vae_from_ppca(W, b, sigma2, dtype=np.float64):
    """A linear Gaussian VAE that *is* the pPCA model, with the exact posterior as its encoder.
    Eq. (P5), docs/ppca.md

    Returns ``VAE(D, (), Z, likelihood="gaussian", obs_var=sigma2)`` with decoder mean
    W^T z + b (for a batch of rows: z @ W + b) and encoder

        mu(x)     = M^{-1} W (x - b),        M = W W^T + sigma2 I   (Z x Z)
        logvar(x) = log diag(sigma2 M^{-1})  (the same for every x)

    The exact posterior p(z | x) = N(mu(x), sigma2 M^{-1}) (sigma2 M^{-1} is the docs' Sigma) is
    linear in x with a constant covariance, so a linear encoder represents it exactly -- provided
    sigma2 M^{-1} is diagonal, i.e. the rows of W are orthogonal (W W^T diagonal). That holds for the ML
    solution of ppca_fit (rotation Omega = I). With q equal to the exact posterior the ELBO's gap
    KL(q || p(z|x)) is zero, so ELBO(x) = log p(x) for every x.

    Raises ValueError if W's rows are not orthogonal, because the diagonal encoder would then
    silently be an approximation. Rotating W does not change p(x): with W W^T = R diag(d) R^T,
    ``R.T @ W`` has orthogonal rows.
    """
    W, b, sigma2 = _check_params(W, b, sigma2)
    Z, D = W.shape
    M = W @ W.T + sigma2 * np.eye(Z)
    d = np.diag(M)
    off = M - np.diag(d)
    # Relative test: |M_ij| small compared with sqrt(M_ii M_jj); rounding in eigh gives ~1e-15.
    if np.any(np.abs(off) > 1e-8 * np.sqrt(np.outer(d, d))):
        raise ValueError("the rows of W are not orthogonal (W W^T is not diagonal), so the exact posterior "
                         "is not a diagonal Gaussian; rotate W first: with W W^T = R diag R^T, use R.T @ W "
                         "(p(x) is unchanged by a rotation of the latent space)")
    # M is diagonal, so M^{-1} is 1/d and the encoder's weight matrix W^T M^{-1} scales columns.
    enc_W = W.T / d                                # (D, Z)
    model = VAE(D, (), Z, likelihood="gaussian", obs_var=sigma2, dtype=dtype)
    model.params["dec.out.W"][...] = W
    model.params["dec.out.b"][...] = b
    model.params["enc.mu.W"][...] = enc_W
    model.params["enc.mu.b"][...] = -(b @ enc_W)  # rows: mu = x @ enc_W - b @ enc_W = (x - b) W^T M^{-1}
    model.params["enc.logvar.W"][...] = 0.0
    model.params["enc.logvar.b"][...] = np.log(sigma2 / d)
    return model
