"""Probabilistic PCA: the one VAE whose log-likelihood we can write down exactly.

Probabilistic PCA (Tipping & Bishop, 1999) is the VAE of this package with no hidden layers
and a fixed-variance Gaussian likelihood (docs/ppca.md):

    z ~ N(0, I_Z),    x | z ~ N(z W + b, sigma2 I_D),    W of shape (Z, D), b of shape (D,)

Both steps are linear and Gaussian, so x is Gaussian too, p(x) = N(x; b, W^T W + sigma2 I),
and everything a VAE can only estimate is here in closed form:

    ppca_fit(x, Z)                       -> (W, b, sigma2), the maximum-likelihood parameters
    ppca_log_likelihood(x, W, b, sigma2) -> log p(x), exactly
    linear_vae_from_ppca(W, b, sigma2)   -> a numpyvae VAE with this decoder and, as its
                                            encoder, the exact posterior p(z | x)

That makes pPCA the yardstick for the VAE machinery: a linear VAE trained by gradient ascent
on the ELBO should reach the pPCA log-likelihood, and every estimate of log p(x) (the ELBO,
importance sampling, prior sampling in numpyvae.lab.diagnostics) can be compared with the truth.

Layout: like numpyvae.layers.Linear, W is (in, out) = (Z, D) and codes are rows, so the
decoder mean is z @ W + b and the covariance of x is W^T W + sigma2 I (D x D). Tipping &
Bishop's matrix (D x Z, columns are directions in data space) is our W^T.
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

    W is (Z, D): each row is one latent direction in data space. Each of the Z directions
    adds W_j^T W_j (a rank-one matrix) to the isotropic noise sigma2 I.
    """
    W = check.check_finite_array(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D with shape (latent_dim, input_dim); got shape {W.shape}")
    return W.T @ W + _check_sigma2(sigma2) * np.eye(W.shape[1])


def ppca_fit(x, latent_dim):
    """Maximum-likelihood pPCA in closed form.   Eq. (P3), docs/ppca.md

    x: (N, D) data; latent_dim: Z, with 1 <= Z < D. Returns ``(W, b, sigma2)``:

        b      = the sample mean of x                                      (D,)
        S      = 1/N sum_n (x_n - b)^T (x_n - b), eigenvalues lam_1 >= ... >= lam_D,
                 eigenvectors the columns of U
        sigma2 = the mean of the D - Z discarded eigenvalues lam_{Z+1}, ..., lam_D
        W      = (Lambda_Z - sigma2 I)^{1/2} U_Z^T                          (Z, D)

    i.e. row j of W is the j-th principal direction u_j scaled by sqrt(lam_j - sigma2): the
    variance the data has along u_j beyond the noise floor. Any rotation R W (R orthogonal,
    Z x Z) has the same likelihood; we return R = I, for which the rows of W are orthogonal
    (W W^T is diagonal), which is what makes the exact posterior diagonal (see linear_vae_from_ppca).
    Everything is computed in float64.
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
    lam, U = np.linalg.eigh(S)             # eigh returns ascending eigenvalues ...
    lam, U = lam[::-1], U[:, ::-1]         # ... we want the largest first
    sigma2 = float(lam[Z:].mean())
    # Eigenvalues are accurate to about D * machine epsilon * lam_1; below that, sigma2 is zero.
    if not sigma2 > D * np.finfo(np.float64).eps * lam[0]:
        raise ValueError("the data has no variance outside its top latent_dim principal directions "
                         f"(sigma2 = {sigma2:.3g}); pPCA needs sigma2 > 0: use a smaller latent_dim or more data")
    # lam_j >= sigma2 for j <= Z because sigma2 averages smaller eigenvalues; clip only rounding.
    scale = np.sqrt(np.maximum(lam[:Z] - sigma2, 0.0))
    W = scale[:, None] * U[:, :Z].T
    return W, b, sigma2


def ppca_log_likelihood(x, W, b, sigma2):
    """Exact log p(x) = log N(x; b, W^T W + sigma2 I) of each row of x, shape (N,).
    Eq. (P2), docs/ppca.md

    With the Cholesky factor C = L L^T (L lower triangular, D x D):

        log p(x) = -1/2 ( D log 2 pi + 2 sum_i log L_ii + || L^{-1} (x - b) ||^2 )

    The factorisation costs O(D^3) once; each datapoint then costs one triangular solve,
    O(D^2). Never forms C^{-1}. Computed in float64, returns float64.
    """
    W, b, sigma2 = _check_params(W, b, sigma2)
    x = check.as_batch(x, W.shape[1], np.float64, "x")
    D = W.shape[1]
    L = np.linalg.cholesky(ppca_covariance(W, sigma2))
    logdet = 2.0 * np.sum(np.log(np.diag(L)))
    # Solve L a = (x - b)^T for all datapoints at once: a has shape (D, N).
    a = solve_triangular(L, (x - b).T, lower=True)
    return -0.5 * (D * LOG_2PI + logdet + np.sum(a * a, axis=0))


def linear_vae_from_ppca(W, b, sigma2, dtype=np.float64):
    """A linear Gaussian VAE that *is* the pPCA model, with the exact posterior as its encoder.
    Eq. (P5), docs/ppca.md

    Returns ``VAE(D, (), Z, likelihood="gaussian", obs_var=sigma2)`` with decoder mean
    z @ W + b and encoder

        mu(x)     = (x - b) W^T M^{-1},      M = W W^T + sigma2 I   (Z x Z)
        logvar(x) = log diag(sigma2 M^{-1})  (the same for every x)

    The exact posterior p(z | x) = N(mu(x), sigma2 M^{-1}) is linear in x with a constant
    covariance, so a linear encoder represents it exactly -- provided sigma2 M^{-1} is
    diagonal, i.e. the rows of W are orthogonal (W W^T diagonal). That holds for the ML
    solution of ppca_fit (rotation R = I). With q equal to the exact posterior the ELBO's gap
    KL(q || p(z|x)) is zero, so ELBO(x) = log p(x) for every x.

    Raises ValueError if W's rows are not orthogonal, because the diagonal encoder would then
    silently be an approximation. Rotating W does not change p(x): with W W^T = V diag(d) V^T,
    ``V.T @ W`` has orthogonal rows.
    """
    W, b, sigma2 = _check_params(W, b, sigma2)
    Z, D = W.shape
    M = W @ W.T + sigma2 * np.eye(Z)
    d = np.diag(M)
    off = M - np.diag(d)
    # Relative test: |M_ij| small compared with sqrt(M_ii M_jj); rounding in eigh gives ~1e-15.
    if np.any(np.abs(off) > 1e-8 * np.sqrt(np.outer(d, d))):
        raise ValueError("the rows of W are not orthogonal (W W^T is not diagonal), so the exact posterior "
                         "is not a diagonal Gaussian; rotate W first: with W W^T = V diag V^T, use V.T @ W "
                         "(p(x) is unchanged by a rotation of the latent space)")
    # M is diagonal, so M^{-1} is 1/d and the encoder's weight matrix W^T M^{-1} scales columns.
    enc_W = W.T / d                                # (D, Z)
    model = VAE(D, (), Z, likelihood="gaussian", obs_var=sigma2, dtype=dtype)
    model.params["dec.out.W"][...] = W
    model.params["dec.out.b"][...] = b
    model.params["enc.mu.W"][...] = enc_W
    model.params["enc.mu.b"][...] = -(b @ enc_W)  # mu = x @ enc_W - b @ enc_W = (x - b) W^T M^{-1}
    model.params["enc.logvar.W"][...] = 0.0
    model.params["enc.logvar.b"][...] = np.log(sigma2 / d)
    return model
