"""Full-covariance Gaussian posterior q = N(mu, L L^T), L = diag(exp(logvar/2)) + T:
sampler moments, log q and KL against independent references, backward pass and the whole
model against finite differences."""

import numpy as np
import pytest
from scipy import stats

import numpyvae as nv
from numpyvae import distributions as dist
from numpyvae.gradcheck import check_param_grads, numerical_gradient, rel_error


def factor(logvar, tril):
    return np.diag(np.exp(0.5 * logvar)) + dist.tril_to_matrix(tril, len(logvar))


def test_tril_layout():
    T = dist.tril_to_matrix(np.array([1.0, 2.0, 3.0]), 3)
    np.testing.assert_array_equal(T, [[0, 0, 0], [1, 0, 0], [2, 3, 0]])


def test_samples_have_covariance_L_Lt():
    """Sample covariance of z = mu + L eps against L L^T: each entry's standard error is about
    sqrt((S_ii S_jj + S_ij^2) / N); tolerance 5 SE."""
    rng = np.random.default_rng(0)
    mu, logvar, tril = np.array([1.0, -1.0, 0.5]), np.array([0.3, -0.5, 0.1]), np.array([0.8, -0.6, 0.4])
    N = 200_000
    z = dist.reparameterize_full(mu[None], logvar[None], tril[None], rng.standard_normal((N, 1, 3)))[:, 0]
    L = factor(logvar, tril)
    S = L @ L.T
    se = np.sqrt((np.outer(np.diag(S), np.diag(S)) + S ** 2) / N)
    assert np.all(np.abs(np.cov(z.T) - S) < 5 * se)
    assert np.all(np.abs(z.mean(0) - mu) < 5 * np.sqrt(np.diag(S) / N))


def test_log_q_and_kl_against_references():
    rng = np.random.default_rng(1)
    mu, logvar = rng.standard_normal((2, 4))
    tril = rng.standard_normal(6)
    L = factor(logvar, tril)
    eps = rng.standard_normal((5, 1, 4))
    z = dist.reparameterize_full(mu[None], logvar[None], tril[None], eps)[:, 0]
    np.testing.assert_allclose(dist.log_q_from_eps(logvar, eps[:, 0]),
                               stats.multivariate_normal(mu, L @ L.T).logpdf(z), rtol=1e-10)
    np.testing.assert_allclose(dist.kl_full_gaussian_standard(mu, logvar, tril),
                               dist.kl_full_gaussians(mu, L @ L.T, np.zeros(4), np.eye(4)), rtol=1e-10)


def test_reparameterize_full_backward(grad_report):
    rng = np.random.default_rng(2)
    mu, logvar = rng.standard_normal((2, 3, 4))
    tril = rng.standard_normal((3, 6))
    eps, dz = rng.standard_normal((2, 2, 3, 4))
    dmu, dlv, dtril = dist.reparameterize_full_backward(dz, logvar, tril, eps)
    f = lambda: np.sum(dist.reparameterize_full(mu, logvar, tril, eps) * dz)  # noqa: E731
    grad_report("distributions.reparameterize_full", {
        "mu": rel_error(dmu, numerical_gradient(f, mu)), "logvar": rel_error(dlv, numerical_gradient(f, logvar)),
        "tril": rel_error(dtril, numerical_gradient(f, tril))})


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
@pytest.mark.parametrize("hidden", [(), (5, 4)])
def test_full_posterior_vae_gradients(likelihood, hidden, grad_report):
    rng = np.random.default_rng(3)
    m = nv.VAE(6, hidden, 3, likelihood=likelihood, obs_var=0.6, posterior="full", seed=0, dtype=np.float64, activation="tanh")
    for v in m.params.values():
        v += 0.2 * rng.standard_normal(v.shape)   # nonzero off-diagonal factor
    x = rng.random((4, 6)) if likelihood == "bernoulli" else rng.standard_normal((4, 6))
    eps = rng.standard_normal((3, 4, 3))
    for est in ("reparam", "blocked"):
        _, g = m.loss_and_grads(x, eps=eps, n_samples=3, beta=0.7, estimator=est)
        if est == "blocked":   # blocked is the gradient of beta * KL alone for the encoder
            def f():
                q = m.posterior_params(x)
                return 0.7 * float(np.mean(dist.kl_full_gaussian_standard(q["mu"], q["logvar"], q["tril"])))
            g = {k: v for k, v in g.items() if k.startswith("enc.")}
            errors = check_param_grads(f, {k: m.params[k] for k in g}, g)
        else:
            errors = check_param_grads(lambda: m.loss_and_grads(x, eps=eps, n_samples=3, beta=0.7)[0],
                                       m.params, g)
        grad_report(f"VAE[posterior=full,{est}]", errors)


def test_full_with_zero_factor_equals_diag():
    rng = np.random.default_rng(4)
    full = nv.VAE(6, (5,), 3, posterior="full", seed=0, dtype=np.float64, activation="tanh")
    diag = nv.VAE(6, (5,), 3, seed=0, dtype=np.float64, activation="tanh")
    for k, v in diag.params.items():
        v[...] = rng.standard_normal(v.shape)
        full.params[k][...] = v
    full.params["enc.tril.W"][...] = 0.0
    full.params["enc.tril.b"][...] = 0.0
    x, eps = rng.random((4, 6)), rng.standard_normal((2, 4, 3))
    np.testing.assert_allclose(full.elbo(x, eps=eps, n_samples=2), diag.elbo(x, eps=eps, n_samples=2), rtol=1e-12)
    assert set(full.params) - set(diag.params) == {"enc.tril.W", "enc.tril.b"}
    assert full.params["enc.tril.W"].shape == (5, 3)


def test_full_posterior_errors():
    with pytest.raises(ValueError, match="unknown posterior 'dense'"):
        nv.VAE(6, (5,), 3, posterior="dense", activation="tanh")
    m = nv.VAE(6, (5,), 3, posterior="full", dtype=np.float64, activation="tanh")
    with pytest.raises(ValueError, match="supports estimator 'reparam' or 'blocked'"):
        m.loss_and_grads(np.random.default_rng(0).random((2, 6)), rng=np.random.default_rng(0), estimator="score")


def test_full_posterior_fits_a_correlated_posterior_better():
    """On a linear-Gaussian model with a 2-D latent whose exact posterior is correlated, the
    best diagonal q leaves a gap KL(q || p(z|x)) > 0 while a full q closes it. Set each
    encoder to its optimum in closed form and compare the ELBOs with log p(x)."""
    rng = np.random.default_rng(5)
    D, lam = 4, 0.3
    W = np.array([[1.0, 0.5, 0.0, 0.3], [0.8, 0.6, 0.2, 0.0]])   # non-orthogonal rows: correlated posterior
    b = np.zeros(D)
    S = np.linalg.inv(np.eye(2) + W @ W.T / lam)                 # exact posterior covariance
    A = S @ W / lam                                              # mean = (x - b) A^T
    x = rng.standard_normal((6, D))
    log_px = stats.multivariate_normal(b, W.T @ W + lam * np.eye(D)).logpdf(x)
    eps = rng.standard_normal((4000, 1, 2))
    eps = np.broadcast_to(eps, (4000, 6, 2))

    def elbo(posterior, logvar, tril=None):
        m = nv.VAE(D, (), 2, likelihood="gaussian", obs_var=lam, posterior=posterior, seed=0, dtype=np.float64)
        m.params["dec.out.W"][...], m.params["dec.out.b"][...] = W, b
        m.params["enc.mu.W"][...], m.params["enc.mu.b"][...] = A.T, 0.0
        m.params["enc.logvar.W"][...], m.params["enc.logvar.b"][...] = 0.0, logvar
        if tril is not None:
            m.params["enc.tril.W"][...], m.params["enc.tril.b"][...] = 0.0, tril
        return m.elbo(x, eps=eps, n_samples=4000)

    C = np.linalg.cholesky(S)
    gap_full = log_px - elbo("full", 2 * np.log(np.diag(C)), C[1, :1])
    # The best diagonal q under KL(q || p) has precisions equal to the posterior precision's diagonal.
    gap_diag = log_px - elbo("diag", -np.log(np.diag(np.linalg.inv(S))))
    true_gap_diag = 0.5 * (np.sum(np.log(np.diag(np.linalg.inv(S)))) + np.log(np.linalg.det(S)))
    # MC error of the 4000-sample reconstruction term is below 0.02 nats here (measured).
    assert np.all(np.abs(gap_full) < 0.02) and np.all(np.abs(gap_diag - true_gap_diag) < 0.02)
    assert true_gap_diag > 0.1
