"""The derivations in docs/, checked numerically where a student could copy a wrong sign.

Each test settles one statement of a document (named by the test's prefix: test_importance_
for docs/importance.md, test_estimators_ for docs/estimators.md, and so on) with a short
computation that does not reuse the derivation: finite differences, a Monte Carlo average with
its standard error, or a closed form. Where the statement is about what the code does, the test
runs the package's function, so it guards the code as well as the document.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import numpyvae as nv
from numpyvae import estimators as est
from numpyvae.distributions import (
    gaussian_log_likelihood, log_mean_exp, log_normal_diag, log_q_from_eps, log_standard_normal,
    normalized_importance_weights, reparameterize, reparameterize_backward,
)
from numpyvae.gradcheck import numerical_gradient, rel_error
from numpyvae.ppca import ppca_log_likelihood

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _importance_linear_gaussian_vae(W, b0, lam):
    """VAE(D, (), Z, "gaussian", obs_var=lam) whose decoder is x = z @ W + b0 + N(0, lam I), W (Z, D)
    in the Linear layout (the documents' column-vector W is its transpose)."""
    Zd, Dd = W.shape
    m = nv.VAE(Dd, (), Zd, likelihood="gaussian", obs_var=lam, seed=0, dtype=np.float64)
    m.params["dec.out.W"][:] = W
    m.params["dec.out.b"][:] = b0
    return m


# ----------------------------------------------------------------- docs/importance.md

def test_importance_iwae_gradient_has_three_paths():
    """(I7): d L_K / d mu = sum_k w~_k grad_z log p(x, z_k) and d L_K / d v_j = the same times
    e^{v_j/2} eps_kj / 2, plus +1/2 from -log q directly; the loss -1/B sum_b L_K(x_b) therefore
    gets -1/(2B) from the direct path, not +1/(2B). Checked three ways on a linear-Gaussian model:
    finite differences of the direct path alone, finite differences of the whole loss, and the
    gradients iwae_loss_and_grads sends into the encoder heads' biases (the sum over b of
    d loss / d mu_b and d loss / d v_b; the logvar head's SoftClip has slope 1 - 1e-17 here)."""
    rng = np.random.default_rng(0)
    K, B, Zd, Dd, lam = 5, 4, 3, 6, 0.7
    m = _importance_linear_gaussian_vae(rng.standard_normal((Zd, Dd)), rng.standard_normal(Dd), lam)
    for name in ("enc.mu.W", "enc.mu.b", "enc.logvar.W", "enc.logvar.b"):
        m.params[name][:] = 0.3 * rng.standard_normal(m.params[name].shape)
    x, eps = rng.standard_normal((B, Dd)), rng.standard_normal((K, B, Zd))
    W, b0 = m.params["dec.out.W"], m.params["dec.out.b"]
    q = m.posterior_params(x)
    mu, v = q["mu"].copy(), q["logvar"].copy()

    def loss(mu, v_path, v_direct):
        z = reparameterize(mu, v_path, eps)
        log_w = gaussian_log_likelihood(x, z @ W + b0, lam) + log_standard_normal(z) - log_q_from_eps(v_direct, eps)
        return -np.mean(log_mean_exp(log_w, axis=0))

    # The direct path alone: v only inside log q (I3), z held fixed.
    v_direct = v.copy()
    direct = numerical_gradient(lambda: loss(mu, v, v_direct), v_direct)
    np.testing.assert_allclose(direct, -1.0 / (2 * B), rtol=1e-8)          # -0.125 for B = 4

    # (I7), times -1/B for the loss.
    z = reparameterize(mu, v, eps)
    grad_log_joint = ((x - (z @ W + b0)) / lam) @ W.T - z                    # (K, B, Z)
    wt = normalized_importance_weights(
        gaussian_log_likelihood(x, z @ W + b0, lam) + log_standard_normal(z) - log_q_from_eps(v, eps), axis=0)
    d_mu = -np.sum(wt[..., None] * grad_log_joint, axis=0) / B
    d_v = -(np.sum(wt[..., None] * grad_log_joint * eps * 0.5 * np.exp(v / 2), axis=0) + 0.5) / B
    mu_p, v_p = mu.copy(), v.copy()
    assert rel_error(d_mu, numerical_gradient(lambda: loss(mu_p, v_p, v_p), mu_p)) < 1e-8
    assert rel_error(d_v, numerical_gradient(lambda: loss(mu_p, v_p, v_p), v_p)) < 1e-8
    wrong_sign = d_v + 1.0 / B                                               # +1/(2B) instead of -1/(2B)
    assert rel_error(wrong_sign, numerical_gradient(lambda: loss(mu_p, v_p, v_p), v_p)) > 1e-3

    _, grads = m.iwae_loss_and_grads(x, k=K, eps=eps)
    np.testing.assert_allclose(grads["enc.mu.b"], d_mu.sum(axis=0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["enc.logvar.b"], d_v.sum(axis=0), rtol=1e-10, atol=1e-14)


def _importance_relative_weight_variance(mean_p, var_p, mean_q, var_q):
    """Var(w) / p(x)^2 = E_q[(p(z|x) / q(z))^2] - 1 for a 1-D Gaussian posterior N(mean_p, var_p)
    and proposal N(mean_q, var_q), in closed form (finite only if var_q > var_p / 2):
    int N(z; m1, s1)^2 / N(z; m2, s2) dz = s2 / s1^2 / sqrt(a) exp(alpha gamma (m1 - m2)^2 / (2 a)),
    alpha = 2 / s1^2, gamma = 1 / s2^2, a = alpha - gamma."""
    alpha, gamma = 2.0 / var_p, 1.0 / var_q
    a = alpha - gamma
    return np.sqrt(var_q) / var_p / np.sqrt(a) * np.exp(alpha * gamma * (mean_p - mean_q) ** 2 / (2 * a)) - 1.0


def test_importance_gap_follows_second_order_expansion():
    """(I6): log p(x) - L_K(x) = Var(w) / (2 K p(x)^2) + O(1/K^2).

    A 1-D linear-Gaussian VAE whose encoder gives q = N(posterior mean + 0.4, 2 x posterior
    variance) for every x, so the gap is the same for every datapoint. VAE.log_likelihood gives
    L^_K for 20 000 datapoints at K = 100; the gap is averaged as E[xi - log(1 + xi)] with
    xi = exp(L^_K - log p(x)) - 1 (E[xi] = 0 exactly, so this is unbiased and has a much
    smaller variance than L^_K itself). Measured: Var(w)/p^2 = 0.85, ratio of the gap to the
    prediction 1.013 +- 0.010 (1.08 at K = 10: the O(1/K^2) term). Tolerance 5% (5 standard
    errors). A prediction without the 1/2 of (I6) would give a ratio of 0.5."""
    rng = np.random.default_rng(5)
    lam, K, n = 0.5, 100, 20_000
    W, b0 = rng.standard_normal((1, 5)), rng.standard_normal(5)
    m = _importance_linear_gaussian_vae(W, b0, lam)
    w = W[0]
    s2 = 1.0 / (1.0 + w @ w / lam)                                   # exact posterior variance
    m.params["enc.mu.W"][:] = (s2 * w / lam)[:, None]                # exact posterior mean ...
    m.params["enc.mu.b"][:] = -(b0 @ m.params["enc.mu.W"]) + 0.4     # ... shifted by 0.4
    m.params["enc.logvar.W"][:] = 0.0
    m.params["enc.logvar.b"][:] = np.log(2 * s2)                     # twice the posterior variance
    x = rng.standard_normal((n, 1)) @ W + b0 + np.sqrt(lam) * rng.standard_normal((n, 5))
    r = m.log_likelihood(x, n_importance=K, rng=np.random.default_rng(6)) - ppca_log_likelihood(x, W, b0, lam)
    xi = np.expm1(r)
    gap = xi - r
    predicted = _importance_relative_weight_variance(0.0, s2, 0.4, 2 * s2) / (2 * K)
    ratio, se = gap.mean() / predicted, gap.std() / np.sqrt(n) / predicted
    assert se < 0.02 and abs(ratio - 1.0) < 0.05, (ratio, se, predicted)


def test_importance_default_chunk_size_is_the_documented_one():
    """docs/importance.md, section 5, quotes the default chunk size for B = 100, D = 784, one
    hidden layer of 400, float32, Bernoulli; it must be what log_likelihood_chunk_size returns."""
    text = " ".join((DOCS / "importance.md").read_text(encoding="utf-8").split())   # line breaks as spaces
    quoted = re.search(r"\((\d+) samples for \$B = 100\$, \$D = 784\$, one hidden layer of 400, float32, Bernoulli",
                       text)
    assert quoted, "importance.md no longer quotes the default chunk size in the expected words"
    m = nv.VAE(784, (400,), 20, likelihood="bernoulli", dtype=np.float32)
    assert m.log_likelihood_chunk_size(100, 1000) == int(quoted.group(1))


# ----------------------------------------------------------------- docs/estimators.md

def test_estimators_total_derivative_of_log_q_is_path_plus_score():
    """(T3) and its table: at fixed noise, d/dphi log q_phi(z(phi)) = path term + score term, with
    path = (-eps/sigma, -eps^2/2) and score = (eps/sigma, (eps^2 - 1)/2) in (mu, v), totals (0, -1/2).
    All three by finite differences of log_normal_diag; the score is also diag_gaussian_score (S2).
    Then the reason STL may drop the score: over the noise it averages to zero (z-score < 4 on
    200 000 draws), while the path term alone averages to -1/2 in v."""
    rng = np.random.default_rng(1)
    mu, v = rng.standard_normal(3), rng.standard_normal(3)
    eps = rng.standard_normal(3)
    sigma = np.exp(v / 2)
    mu_q, v_q = mu.copy(), v.copy()                  # q's parameters
    mu_z, v_z = mu.copy(), v.copy()                  # the parameters that make the point z
    log_q = lambda: float(log_normal_diag(reparameterize(mu_z, v_z, eps), mu_q, v_q))  # noqa: E731

    def total(which):                                # move both copies together
        a, b = (mu_q, mu_z) if which == "mu" else (v_q, v_z)
        out = np.zeros(3)
        for j in range(3):
            e = np.zeros(3)
            e[j] = 1e-6
            a += e; b += e; up = log_q()
            a -= 2 * e; b -= 2 * e; down = log_q()
            a += e; b += e
            out[j] = (up - down) / 2e-6
        return out

    path = {"mu": numerical_gradient(log_q, mu_z), "v": numerical_gradient(log_q, v_z)}
    score = {"mu": numerical_gradient(log_q, mu_q), "v": numerical_gradient(log_q, v_q)}
    np.testing.assert_allclose(path["mu"], -eps / sigma, rtol=1e-7)
    np.testing.assert_allclose(path["v"], -eps ** 2 / 2, rtol=1e-6, atol=1e-9)
    s_mu, s_v = est.diag_gaussian_score(eps[None, None], v[None])
    np.testing.assert_allclose(score["mu"], s_mu[0, 0], rtol=1e-7)
    np.testing.assert_allclose(score["v"], s_v[0, 0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(total("mu"), 0.0, atol=1e-8)
    np.testing.assert_allclose(total("v"), -0.5, rtol=1e-7)
    np.testing.assert_allclose(path["v"] + score["v"], -0.5, rtol=1e-6)

    draws = np.random.default_rng(2).standard_normal((200_000, 3))
    s_mu, s_v = est.diag_gaussian_score(draws[:, None, :], v[None])
    for s in (s_mu[:, 0], s_v[:, 0]):
        assert np.all(np.abs(s.mean(0)) < 4 * s.std(0) / np.sqrt(len(s)))
    path_v = -draws ** 2 / 2
    assert np.all(np.abs(path_v.mean(0) + 0.5) < 4 * path_v.std(0) / np.sqrt(len(path_v)))


def test_estimators_stl_is_T1_with_beta():
    """(T1) is the gradient of the loss's entropy form J_ent with q's parameters frozen inside
    log q, beta included, and (T2) is the z-gradient of beta [log q - log p(z)]. Both against
    finite differences; the code (posterior_grads with estimator="stl", per datapoint, so times 1/B
    for the batch loss) must equal the first. T1 without its beta would be off by (1 - beta) times
    the KL's path term."""
    rng = np.random.default_rng(3)
    m = nv.VAE(6, (5,), 3, activation="tanh", seed=0, dtype=np.float64)
    for p in m.params.values():
        p += 0.2 * rng.standard_normal(p.shape)
    x = rng.random((4, 6))
    L, B, beta = 3, 4, 0.6
    eps = rng.standard_normal((L, B, 3))
    q = m.posterior_params(x)
    mu, v = q["mu"].copy(), q["logvar"].copy()
    mu_bar, v_bar = mu.copy(), v.copy()              # frozen inside log q

    def j_ent_frozen():
        z = reparameterize(mu, v, eps)
        rec = m.log_p_x_given_z(x, z)
        return float(-np.mean(rec - beta * (log_normal_diag(z, mu_bar, v_bar) - log_standard_normal(z))))

    d_mu, d_v = m.posterior_grads(x, eps=eps, n_samples=L, estimator="stl", beta=beta,
                                  q={"mu": mu_bar, "logvar": v_bar})
    assert rel_error(d_mu / B, numerical_gradient(j_ent_frozen, mu)) < 1e-8
    assert rel_error(d_v / B, numerical_gradient(j_ent_frozen, v)) < 1e-8

    z = reparameterize(mu_bar, v_bar, eps)
    kl_part = lambda: float(np.sum(beta * (log_normal_diag(z, mu_bar, v_bar) - log_standard_normal(z))))  # noqa: E731
    assert rel_error(est.stl_path_grad_z(eps, z, v_bar, beta), numerical_gradient(kl_part, z)) < 1e-8
    beta_one = lambda: float(np.sum(log_normal_diag(z, mu_bar, v_bar) - log_standard_normal(z)))  # noqa: E731
    assert rel_error(est.stl_path_grad_z(eps, z, v_bar, beta), numerical_gradient(beta_one, z)) > 0.1


def test_estimators_learned_baseline_is_running_mean_plus_network():
    """(S5): c_psi(x) = c_bar + MLP_psi(x). After a minibatch, c_bar <- 0.9 c_bar + 0.1 mean(f)
    (the first minibatch's mean to start, 0 before), then one Adam step on
    1/(2B) sum_b (f_bar_b - c_bar - MLP_psi(x_b))^2 with the *updated* c_bar; value() for a
    minibatch comes before both. A replica that follows these words step by step must end with
    the same parameters as observe(); one that regresses before updating c_bar must not."""
    rng = np.random.default_rng(4)
    base = est.LearnedBaseline(5, hidden=7, seed=1, dtype=np.float64)
    words = est.LearnedBaseline(5, hidden=7, seed=1, dtype=np.float64)
    other_order = est.LearnedBaseline(5, hidden=7, seed=1, dtype=np.float64)
    net = lambda b, x: b.head.forward(b.trunk.forward(x))[:, 0]  # noqa: E731
    c_bar = None
    for _ in range(3):
        x, f = rng.random((4, 5)), -600.0 + 10.0 * rng.standard_normal((2, 4))
        np.testing.assert_allclose(base.value(x, f), (0.0 if c_bar is None else c_bar) + net(base, x), rtol=1e-12)
        f_bar = f.mean(axis=0)
        base.observe(x, f)
        # the replica of (S5)'s words
        c_bar = f_bar.mean() if c_bar is None else 0.9 * c_bar + 0.1 * f_bar.mean()
        words.shift = c_bar
        words.optimizer.step(words.loss_and_grads(x, f_bar)[1])
        # the same, regressing before c_bar takes in the minibatch
        other_order.optimizer.step(other_order.loss_and_grads(x, f_bar)[1])
        other_order.shift = c_bar
        assert base.shift == pytest.approx(c_bar, rel=1e-12)
    for k in base.params:
        np.testing.assert_allclose(base.params[k], words.params[k], rtol=1e-12, atol=1e-15)
    assert any(not np.allclose(base.params[k], other_order.params[k], rtol=1e-9) for k in base.params)


def test_estimators_ema_baseline_follows_S3():
    """(S3): c <- 0.9 c + 0.1 mean(f), starting at the first minibatch's mean; c = 0 before."""
    rng = np.random.default_rng(5)
    base, c = est.EMABaseline(), None
    for _ in range(4):
        x, f = rng.random((3, 2)), rng.standard_normal((2, 3)) - 100.0
        assert base.value(x, f) == (0.0 if c is None else pytest.approx(c, rel=1e-12))
        base.observe(x, f)
        c = f.mean() if c is None else 0.9 * c + 0.1 * f.mean()
    assert base.value(x, f) == pytest.approx(c, rel=1e-12)


# ----------------------------------------------------------------- docs/reparameterization.md

def test_reparameterization_slip_passes_gradcheck_only_with_its_own_backward():
    """The slip z = mu + exp(v) eps: with a backward pass derived from the same slip
    (dz/dv = exp(v) eps) the gradient check passes; with the correct backward pass (R2),
    reparameterize_backward, it fails by an error of order 1. So a passing check does not
    clear the slip; the moment test does (test_reparameterized_moments)."""
    rng = np.random.default_rng(7)
    mu, v = rng.standard_normal((2, 4, 3))
    eps, dz = rng.standard_normal((2, 5, 4, 3))
    slip = lambda: float(np.sum((mu + np.exp(v) * eps) * dz))  # noqa: E731
    numerical = numerical_gradient(slip, v)
    own_backward = np.sum(dz * eps * np.exp(v), axis=0)
    assert rel_error(own_backward, numerical) < 1e-8
    _, r2_backward = reparameterize_backward(dz, v, eps)
    assert rel_error(r2_backward, numerical) > 0.3
    # and R2 does pass against the correct forward pass
    right = lambda: float(np.sum(reparameterize(mu, v, eps) * dz))  # noqa: E731
    assert rel_error(r2_backward, numerical_gradient(right, v)) < 1e-8


# ----------------------------------------------------------------- docs/gradcheck.md

def test_gradcheck_central_difference_error_is_h2_over_6():
    """(C1) equals J' + h^2/6 J''' + O(h^4): for J = exp(3 t) at t = 0.2 and h = 1e-2 the error of
    numerical_gradient divided by h^2 J'''/6 is 1 to within 1e-3 (the O(h^2) relative correction
    is 9 h^2 / 20 = 5e-5); the one-sided difference is off by about h J''/2, 1/h = 100 times more."""
    t, h = np.array([0.2]), 1e-2
    J = lambda: float(np.exp(3 * t[0]))  # noqa: E731
    d1, d3 = 3 * np.exp(0.6), 27 * np.exp(0.6)
    err = numerical_gradient(J, t, h=h)[0] - d1
    assert err / (h * h / 6 * d3) == pytest.approx(1.0, abs=1e-3)
    one_sided = (np.exp(3 * (0.2 + h)) - np.exp(0.6)) / h - d1
    assert one_sided / err > 50


def test_gradcheck_linear_gaussian_posterior_is_gaussian_for_any_latent_dim():
    """x = W z + b0 + eta (column vectors, W is D x Z; the code's W is its transpose): for Z = 3,
    p(z|x) = N((W^T W + lam I)^{-1} W^T (x - b0), lam (W^T W + lam I)^{-1}). Bayes' rule makes
    log p(x|z) + log p(z) - log p(z|x) equal to log p(x) (pPCA's closed form) at every z; the
    covariance is not diagonal for a generic W, so "one latent dimension" is what makes it
    representable by a diagonal q, not what makes it Gaussian."""
    rng = np.random.default_rng(8)
    Zd, Dd, lam = 3, 5, 0.4
    W_code, b0 = rng.standard_normal((Zd, Dd)), rng.standard_normal(Dd)
    W = W_code.T                                                   # D x Z
    x = rng.standard_normal(Dd)
    A = W.T @ W + lam * np.eye(Zd)
    post = stats.multivariate_normal(np.linalg.solve(A, W.T @ (x - b0)), lam * np.linalg.inv(A))
    z = rng.standard_normal((50, Zd)) * 2
    log_joint = gaussian_log_likelihood(x, z @ W.T + b0, lam) + log_standard_normal(z)
    log_px = ppca_log_likelihood(x[None], W_code, b0, lam)[0]
    np.testing.assert_allclose(log_joint - post.logpdf(z), log_px, rtol=1e-12)
    cov = post.cov
    assert np.max(np.abs(cov - np.diag(np.diag(cov)))) > 1e-2


# =====================================================================================
# docs/kl.md, docs/distributions.md, docs/autoencoders.md, docs/ppca.md
# =====================================================================================

from itertools import combinations  # noqa: E402

from scipy import integrate  # noqa: E402

from numpyvae import cli  # noqa: E402
from numpyvae.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from numpyvae.distributions import (  # noqa: E402
    kl_diag_gaussian_standard_per_dim, kl_full_gaussian_standard, kl_full_gaussians, reparameterize_full,
    tril_to_matrix,
)
from numpyvae.lab.autoencoders import aggregate_posterior_gaussian  # noqa: E402
from numpyvae.lab.diagnostics import active_units  # noqa: E402
from numpyvae.ppca import linear_vae_from_ppca, ppca_covariance, ppca_fit  # noqa: E402
from numpyvae.training import TrainConfig, evaluate_elbo, load_run, new_run, train  # noqa: E402


def _kl_random_covariance(rng, Z):
    """A well-conditioned symmetric positive-definite Z x Z matrix (a Wishart-like draw)."""
    A = rng.standard_normal((Z, 2 * Z))
    return A @ A.T / (2 * Z) + 0.1 * np.eye(Z)


def _distributions_exact_moments_noise(L, Z, rng):
    """L noise vectors (L, Z) whose empirical mean is exactly 0 and covariance exactly I: the
    average of a quadratic function of eps over them is its exact expectation under N(0, I)."""
    e = rng.standard_normal((L, Z))
    e -= e.mean(axis=0)
    return np.linalg.solve(np.linalg.cholesky(e.T @ e / L), e.T).T


# ----------------------------------------------------------------- docs/kl.md

def test_kl_full_is_nonnegative_and_zero_only_at_equality():
    """Eq. (K6), docs/kl.md: KL(q || p) >= 0 with equality only at q = p, for (K1) on random pairs
    of Gaussians in 1 to 5 dimensions. (A sign slip in any term of (K1) makes some of the 200
    pairs negative: e.g. flipping the log-determinant difference does so for about a third.)"""
    rng = np.random.default_rng(20)
    for _ in range(200):
        Z = int(rng.integers(1, 6))
        mu_q, mu_p = rng.standard_normal((2, Z))
        cov_q, cov_p = _kl_random_covariance(rng, Z), _kl_random_covariance(rng, Z)
        kl = kl_full_gaussians(mu_q, cov_q, mu_p, cov_p)
        assert kl > 0, (kl, Z)
        assert kl_full_gaussians(mu_q, cov_q, mu_q, cov_q) == pytest.approx(0.0, abs=1e-12)


def test_kl_every_covariance_is_reached_by_a_factor():
    """Eq. (F4), docs/kl.md: the recursion builds the one lower-triangular G with a positive
    diagonal and G G^T = Sigma (numpy's Cholesky factor); v_j = 2 log G_jj and T = the part below
    the diagonal are heads the encoder can output, and reparameterize_full with those heads uses
    exactly G (eps = the unit vectors returns its columns), so Cov z = G G^T = Sigma (Eq. (F1))
    and the KL of Eq. (F3) is Eq. (K1) at Sigma."""
    def cholesky_by_recursion(S):
        Z = S.shape[0]
        G = np.zeros_like(S)
        G[0, 0] = np.sqrt(S[0, 0])
        if Z == 1:
            return G
        G[1:, 0] = S[1:, 0] / G[0, 0]
        G[1:, 1:] = cholesky_by_recursion(S[1:, 1:] - np.outer(S[1:, 0], S[1:, 0]) / S[0, 0])
        return G

    rng = np.random.default_rng(21)
    for Z in (1, 2, 3, 5):
        Sigma, mu = _kl_random_covariance(rng, Z), rng.standard_normal(Z)
        G = cholesky_by_recursion(Sigma)
        np.testing.assert_allclose(G, np.linalg.cholesky(Sigma), rtol=1e-12, atol=1e-14)
        assert np.all(np.diag(G) > 0) and np.all(np.triu(G, 1) == 0)
        logvar = 2 * np.log(np.diag(G))
        tril = G[np.tril_indices(Z, -1)]
        G_heads = np.diag(np.exp(0.5 * logvar)) + tril_to_matrix(tril, Z)
        np.testing.assert_allclose(G_heads @ G_heads.T, Sigma, rtol=1e-12)
        eps = np.eye(Z)[:, None, :]                                    # (L = Z, B = 1, Z)
        z = reparameterize_full(mu[None], logvar[None], tril[None], eps)[:, 0]
        np.testing.assert_allclose((z - mu).T, G, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(kl_full_gaussian_standard(mu, logvar, tril),
                                   kl_full_gaussians(mu, Sigma, np.zeros(Z), np.eye(Z)), rtol=1e-10)


def test_kl_log_sigma_slip_is_142_standard_errors_away():
    """docs/kl.md, section 2: with mu = (0.5, -1, 2), v = (1, -2, -1.5) and 200 000 draws, the
    slip's shift sum(v)/4 = -0.625 is 142 standard errors of the Monte Carlo KL. The standard
    deviation of log q - log p follows in closed form: per coordinate log q - log p =
    (sigma^2 - 1) eps^2 / 2 + mu sigma eps + const, with variance (sigma^2 - 1)^2 / 2 + mu^2 sigma^2."""
    mu, v = np.array([0.5, -1.0, 2.0]), np.array([1.0, -2.0, -1.5])
    s2 = np.exp(v)
    sd = np.sqrt(np.sum((s2 - 1) ** 2 / 2 + mu ** 2 * s2))
    predicted = 0.625 / (sd / np.sqrt(200_000))
    assert predicted == pytest.approx(142, abs=1)
    rng = np.random.default_rng(3)                     # the draws of test_kl_standard_against_monte_carlo
    z = mu + np.exp(0.5 * v) * rng.standard_normal((200_000, 3))
    samples = log_normal_diag(z, mu, v) - log_standard_normal(z)
    assert samples.std() == pytest.approx(sd, rel=0.02)
    wrong = 0.5 * np.sum(mu ** 2 + np.exp(v) - 1 - 0.5 * v)
    z_score = abs(wrong - samples.mean()) / (samples.std() / np.sqrt(len(samples)))
    assert 130 < z_score < 155, z_score


# ----------------------------------------------------------------- docs/distributions.md

def test_distributions_reconstruction_term_is_an_expectation():
    """Eq. (G7), docs/distributions.md: for a linear decoder m(z) = W z + b0, the ELBO's
    reconstruction term (computed by VAE.elbo_terms with noise whose first two moments are exact,
    so the average is the exact expectation) is -D/2 log(2 pi lam) - E_q||x - m(z)||^2 / (2 lam)
    with E_q||x - m(z)||^2 = ||x - m(mu)||^2 + sum_j sigma_j^2 ||W_j||^2, not the error at the mean."""
    rng = np.random.default_rng(22)
    Zd, Dd, lam, B = 3, 5, 0.3, 4
    W_code, b0 = rng.standard_normal((Zd, Dd)), rng.standard_normal(Dd)   # the array is W^T
    model = nv.VAE(Dd, (), Zd, likelihood="gaussian", obs_var=lam, seed=0, dtype=np.float64)
    model.params["dec.out.W"][:] = W_code
    model.params["dec.out.b"][:] = b0
    x = rng.standard_normal((B, Dd))
    q = {"mu": rng.standard_normal((B, Zd)), "logvar": rng.uniform(-1.5, 0.5, (B, Zd))}
    L = 12
    eps = np.broadcast_to(_distributions_exact_moments_noise(L, Zd, rng)[:, None, :], (L, B, Zd))
    rec = model.elbo_terms(x, eps=eps, n_samples=L, q=q)["rec"]
    at_mean = np.sum((x - (q["mu"] @ W_code + b0)) ** 2, axis=1)
    spread = np.sum(np.exp(q["logvar"]) * np.sum(W_code ** 2, axis=1), axis=1)   # sum_j sigma_j^2 ||W_j||^2
    expected_sq = -2 * lam * (rec + 0.5 * Dd * np.log(2 * np.pi * lam))
    np.testing.assert_allclose(expected_sq, at_mean + spread, rtol=1e-10)
    assert np.all(spread > 0.1 * at_mean)          # the difference is not a rounding matter


# ----------------------------------------------------------------- docs/autoencoders.md

def test_autoencoders_aggregate_posterior_is_the_mixture_covariance():
    """Eq. (D7), docs/autoencoders.md at N = 5: the covariance of the mixture 1/N sum_n
    N(mu_n, diag exp(v_n)) is 1/N sum (mu_n - zbar)(mu_n - zbar)^T + 1/N sum diag exp(v_n).

    Checked two ways: against the second-moment form E[z z^T] - zbar zbar^T (exact, to
    rounding), and against 10^6 draws from the mixture (n uniform, then z ~ q(z | x_n)), each
    entry within 5 standard errors (the standard error of an entry is the standard deviation of
    the centred products over sqrt(M)); measured: at most 1.05. A 1/(N - 1) on the spread of the
    means, as in (D6), overstates the entries by 7% to 25% here, 43 to 270 standard errors, so the
    Monte Carlo check alone catches it."""
    rng = np.random.default_rng(23)
    N, Dd, Zd = 5, 4, 2
    vae = nv.VAE(Dd, (), Zd, likelihood="gaussian", seed=0, dtype=np.float64)
    vae.params["enc.mu.W"][:] = rng.standard_normal((Dd, Zd))
    vae.params["enc.logvar.W"][:] = 0.3 * rng.standard_normal((Dd, Zd))
    x = rng.standard_normal((N, Dd))
    zbar, S = aggregate_posterior_gaussian(vae, x)
    mu, logvar = vae.encode(x)
    second = np.mean([np.diag(np.exp(lv)) + np.outer(m, m) for m, lv in zip(mu, logvar)], axis=0)
    np.testing.assert_allclose(zbar, mu.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(S, second - np.outer(zbar, zbar), rtol=1e-12, atol=1e-14)

    M = 1_000_000
    n = rng.integers(0, N, M)
    z = mu[n] + np.exp(0.5 * logvar[n]) * rng.standard_normal((M, Zd))
    zc = z - z.mean(axis=0)
    products = zc[:, :, None] * zc[:, None, :]                    # (M, Z, Z)
    S_mc, se = products.mean(axis=0), products.std(axis=0) / np.sqrt(M)
    assert np.all(np.abs(S - S_mc) < 5 * se), (S, S_mc, se)
    S_wrong = S + (np.cov(mu.T) - np.cov(mu.T, bias=True))       # 1/(N - 1) on the spread
    assert np.max(np.abs(S_wrong - S_mc) / se) > 20


# ----------------------------------------------------------------- docs/ppca.md

def _ppca_dataset(rng, kappa, N=2000):
    """N points in D = len(kappa) dimensions whose sample covariance has eigenvalues near kappa,
    along a random orthonormal basis, plus a mean."""
    D = len(kappa)
    basis, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return rng.standard_normal((N, D)) * np.sqrt(kappa) @ basis.T + rng.standard_normal(D)


def _ppca_gradients(W, lam, S):
    """Eq. (P6), docs/ppca.md, with W the D x Z matrix of the document: (dl/dW, dl/dlam)."""
    C = W @ W.T + lam * np.eye(W.shape[0])
    Ci = np.linalg.inv(C)
    inner = Ci @ S @ Ci - Ci
    return inner @ W, 0.5 * np.trace(inner)


def test_ppca_gradient_of_the_average_log_likelihood():
    """Eq. (P6), docs/ppca.md against central differences of the mean of ppca_log_likelihood
    (Eq. (P2)) at a random W and lam, with b0 the sample mean. The code's array is W^T (Z, D), so
    its gradient is the transpose of (P6)'s. Measured relative error 2e-10; the bar is 1e-6."""
    rng = np.random.default_rng(24)
    x = _ppca_dataset(rng, np.array([5.0, 3.0, 1.0, 0.6, 0.3]), N=300)
    xbar, S = x.mean(axis=0), np.cov(x.T, bias=True)
    W_code, lam = rng.standard_normal((2, 5)), np.array([0.7])
    ell = lambda: float(np.mean(ppca_log_likelihood(x, W_code, xbar, lam[0])))  # noqa: E731
    dW, dlam = _ppca_gradients(W_code.T, lam[0], S)
    assert rel_error(numerical_gradient(ell, W_code), dW.T) < 1e-6
    assert rel_error(numerical_gradient(ell, lam), np.array([dlam])) < 1e-6


def test_ppca_stationary_points_and_the_maximum():
    """Eqs. (P7), (P8), docs/ppca.md. For every subset of at most Z = 3 of the D = 6 eigenvectors
    whose eigenvalues exceed the resulting lam (the mean of the unused ones): W = V Gamma R^T with
    gamma_j = sqrt(kappa_d - lam) along the used eigenvectors and zero columns for the rest, any
    rotation R, makes both gradients of (P6) vanish and satisfies S C^-1 W = W; the average
    log-likelihood there is -1/2 (D log 2pi + sum_used log kappa + (D - r) log lam + D). Every
    such point but the top-Z one is a saddle: the two changes of the document (a small column
    along an unused eigenvector whose eigenvalue exceeds lam; turning a used direction towards an
    unused eigenvector with a larger eigenvalue) raise the likelihood. The top-Z point is the
    largest and equals ppca_fit's."""
    rng = np.random.default_rng(25)
    D, Zd = 6, 3
    x = _ppca_dataset(rng, np.array([4.0, 3.5, 3.0, 2.5, 0.4, 0.2]))
    xbar, S = x.mean(axis=0), np.cov(x.T, bias=True)
    kappa, U = np.linalg.eigh(S)
    kappa, U = kappa[::-1], U[:, ::-1]
    ell = lambda W, lam: float(np.mean(ppca_log_likelihood(x, W.T, xbar, lam)))  # noqa: E731
    values, saddles = {}, 0
    for r in range(1, Zd + 1):
        for used in combinations(range(D), r):
            unused = [d for d in range(D) if d not in used]
            lam = kappa[unused].mean()
            if np.any(kappa[list(used)] <= lam):
                continue                                   # no real gamma: not a stationary point
            VG = np.zeros((D, Zd))                         # V Gamma, zero columns after the r used ones
            for j, d in enumerate(used):
                VG[:, j] = np.sqrt(kappa[d] - lam) * U[:, d]
            R, _ = np.linalg.qr(rng.standard_normal((Zd, Zd)))
            W = VG @ R.T
            dW, dlam = _ppca_gradients(W, lam, S)
            assert np.abs(dW).max() < 1e-10 and abs(dlam) < 1e-10, used
            C = ppca_covariance(W.T, lam)
            np.testing.assert_allclose(S @ np.linalg.solve(C, W), W, atol=1e-10)
            value = ell(W, lam)
            predicted = -0.5 * (D * np.log(2 * np.pi) + np.sum(np.log(kappa[list(used)])) + (D - r) * np.log(lam) + D)
            assert value == pytest.approx(predicted, rel=1e-12)
            values[used] = value
            # The two changes that show a saddle (applied to V Gamma; R changes no likelihood).
            if r < Zd and np.any(kappa[unused] > lam):
                d = unused[int(np.argmax(kappa[unused]))]
                grown = VG.copy()
                grown[:, r] = 1e-2 * np.sqrt(lam) * U[:, d]
                assert ell(grown, lam) > value + 1e-9, used
                saddles += 1
            larger = [(j, d2) for j, d in enumerate(used) for d2 in unused if kappa[d2] > kappa[d]]
            if larger:
                j, d2 = larger[0]
                turned = VG.copy()
                turned[:, j] = np.linalg.norm(VG[:, j]) * (np.cos(0.1) * VG[:, j] / np.linalg.norm(VG[:, j])
                                                           + np.sin(0.1) * U[:, d2])
                assert ell(turned, lam) > value + 1e-9, used
                saddles += 1
    top = tuple(range(Zd))
    assert max(values, key=values.get) == top and len(values) > 10 and saddles > 10
    W_fit, b_fit, lam_fit = ppca_fit(x, Zd)
    assert ell(W_fit.T, lam_fit) == pytest.approx(values[top], rel=1e-12)


def test_ppca_weight_variance_by_quadrature():
    """Eqs. (Q2), (Q3), (Q4), docs/ppca.md: the completed square is an identity in z; the
    integral of N(z; mu, s^2)^2 / N(z; 0, 1) (one dimension of Q2) and of
    N(z; mu, s^2)^2 / N(z; mu + tau s, s^2) (one dimension of Q4) by numerical quadrature,
    against the closed forms, for narrow and wide posteriors."""
    rng = np.random.default_rng(26)
    for mu, s in [(0.3, 0.5), (-1.2, 0.2), (0.7, 1.3), (2.0, 0.02)]:
        z = rng.standard_normal(7) * 3
        lhs = -(z - mu) ** 2 / s ** 2 + z ** 2 / 2
        rhs = -(2 - s ** 2) / (2 * s ** 2) * (z - 2 * mu / (2 - s ** 2)) ** 2 + mu ** 2 / (2 - s ** 2)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-8)
        centre, width = 2 * mu / (2 - s ** 2), s * np.sqrt(2 / (2 - s ** 2))
        f = lambda t: np.exp(2 * stats.norm.logpdf(t, mu, s) - stats.norm.logpdf(t))  # noqa: E731
        q2, _ = integrate.quad(f, centre - 40 * width, centre + 40 * width, epsabs=0, epsrel=1e-11)
        assert q2 == pytest.approx(np.exp(mu ** 2 / (2 - s ** 2)) / (s * np.sqrt(2 - s ** 2)), rel=1e-8)
        for tau in (0.0, 0.7, 1.25, -2.0):
            g = lambda t: np.exp(2 * stats.norm.logpdf(t, mu, s) - stats.norm.logpdf(t, mu + tau * s, s))  # noqa: E731
            q4, _ = integrate.quad(g, mu - (40 + abs(tau)) * s, mu + (40 + abs(tau)) * s, epsabs=0, epsrel=1e-11)
            assert q4 == pytest.approx(np.exp(tau ** 2), rel=1e-8)


def _ppca_full_posterior_vae(rng, D=6, Z=3, hidden=(5,)):
    """A float64 VAE with a full-covariance posterior whose T is far from 0 (heads perturbed)."""
    model = nv.VAE(D, hidden, Z, likelihood="bernoulli", posterior="full", seed=1, dtype=np.float64)
    for name, p in model.params.items():
        p += (1.0 if name.startswith("enc.tril") else 0.3) * rng.standard_normal(p.shape)
    return model


def test_ppca_full_posterior_kl_parts_sum_to_the_kl(tmp_path, capsys):
    """Eq. (A3), docs/ppca.md (issue 13, item 4): evaluate_elbo reports kl_per_dim (the K2 terms
    of mu and logvar) and kl_offdiag (1/2 sum T_ij^2) separately, and they sum to the KL of
    Eq. (F3); for a diagonal posterior kl_offdiag is 0 and kl_per_dim is Eq. (A1). Training
    writes both into the history, and `numpyvae evaluate` into evaluation.json and its output."""
    rng = np.random.default_rng(27)
    model = _ppca_full_posterior_vae(rng)
    x = rng.random((40, 6))
    eps = rng.standard_normal((2, 40, 3))
    r = evaluate_elbo(model, x, eps, batch_size=16)
    q = model.posterior_params(x)
    offdiag = float(np.mean(0.5 * np.sum(q["tril"] ** 2, axis=1)))
    assert r["kl_offdiag"] == pytest.approx(offdiag, rel=1e-12) and offdiag > 0.3 * r["kl"]
    np.testing.assert_allclose(r["kl_per_dim"], kl_diag_gaussian_standard_per_dim(q["mu"], q["logvar"]).mean(0),
                               rtol=1e-12)
    assert sum(r["kl_per_dim"]) + r["kl_offdiag"] == pytest.approx(r["kl"], rel=1e-12)
    diag = nv.VAE(6, (5,), 3, likelihood="bernoulli", seed=1, dtype=np.float64)
    r_diag = evaluate_elbo(diag, x, eps)
    assert r_diag["kl_offdiag"] == 0.0 and sum(r_diag["kl_per_dim"]) == pytest.approx(r_diag["kl"], rel=1e-12)

    run = new_run(_ppca_full_posterior_vae(rng), TrainConfig(epochs=1, batch_size=20, seed=0))
    train(run, x, x[:20], out_dir=tmp_path, log=None, progress=False)
    h = run.history
    assert h["test_kl_offdiag"][0] > 0.3 * h["test_kl"][0]
    assert sum(h["test_kl_per_dim"][0]) + h["test_kl_offdiag"][0] == pytest.approx(h["test_kl"][0], rel=1e-10)
    result = cli._evaluate(run, x[:20], 3, str(tmp_path), seed=0)
    assert result["kl_offdiag"] == pytest.approx(h["test_kl_offdiag"][0], rel=1e-10)
    assert "off-diagonal part" in capsys.readouterr().out


def test_ppca_history_without_kl_offdiag_still_loads(tmp_path):
    """A run saved before test_kl_offdiag was recorded loads with it rebuilt from the rest of the
    history, test_kl - sum(test_kl_per_dim) (0 for a diagonal posterior), so old run folders keep
    working (load_run, resume, `numpyvae evaluate`/`plot`)."""
    rng = np.random.default_rng(28)
    x = rng.random((40, 6))
    diag = nv.VAE(6, (5,), 3, seed=1, dtype=np.float64)
    for name, model in (("full", _ppca_full_posterior_vae(rng)), ("diag", diag)):
        run = new_run(model, TrainConfig(epochs=2, batch_size=20, seed=0))
        out = tmp_path / name
        train(run, x, x[:20], out_dir=out, log=None, progress=False)
        arrays, meta = load_checkpoint(out / "checkpoint.npz")
        meta["history"].pop("test_kl_offdiag")
        save_checkpoint(out / "checkpoint.npz", arrays, meta)
        rebuilt = load_run(out).history["test_kl_offdiag"]
        if name == "diag":
            assert rebuilt == [0.0, 0.0]
        else:
            np.testing.assert_allclose(rebuilt, run.history["test_kl_offdiag"], rtol=1e-10)


def test_ppca_full_posterior_kl_has_no_split_into_dimensions():
    """docs/ppca.md, section 6: for q = N(mu, G G^T) the KLs of the marginals q(z_j) sum to less
    than KL(q || N(0, I)), short by the multi-information KL(q || prod_j q(z_j)); the chain rule's
    terms E KL(q(z_j | z_<j) || N(0, 1)), computed here by Gaussian conditioning on Sigma (not from
    G), equal 1/2 (mu_j^2 + sum_{k<j} T_jk^2 + e^{v_j} - 1 - v_j) and sum to the KL, but change when
    the coordinates are put in the opposite order."""
    rng = np.random.default_rng(29)
    Zd = 3
    mu, v, tril = rng.standard_normal(Zd), rng.uniform(-1, 1, Zd), rng.standard_normal(3)
    T = tril_to_matrix(tril, Zd)
    G = np.diag(np.exp(v / 2)) + T
    Sigma = G @ G.T
    kl = kl_full_gaussian_standard(mu, v, tril)
    marginal = np.array([kl_full_gaussians(mu[j:j + 1], Sigma[j:j + 1, j:j + 1], np.zeros(1), np.eye(1))
                         for j in range(Zd)])
    multi_information = kl_full_gaussians(mu, Sigma, mu, np.diag(np.diag(Sigma)))
    assert marginal.sum() < kl - 0.1
    assert marginal.sum() + multi_information == pytest.approx(kl, rel=1e-12)

    def chain_terms(m, S):
        out = []
        for j in range(len(m)):
            c = S[j, :j]
            gain = np.linalg.solve(S[:j, :j], c) if j else np.zeros(0)
            var = S[j, j] - c @ gain                            # conditional variance
            mean_sq = m[j] ** 2 + c @ gain                      # E[(conditional mean)^2]
            out.append(0.5 * (mean_sq + var - 1 - np.log(var)))
        return np.array(out)

    forward = chain_terms(mu, Sigma)
    np.testing.assert_allclose(forward, 0.5 * (mu ** 2 + np.sum(T ** 2, axis=1) + np.exp(v) - 1 - v), rtol=1e-10)
    assert forward.sum() == pytest.approx(kl, rel=1e-12)
    backward = chain_terms(mu[::-1], Sigma[::-1, ::-1])[::-1]
    assert backward.sum() == pytest.approx(kl, rel=1e-12)
    assert np.max(np.abs(backward - forward)) > 0.1


def test_ppca_active_units_and_posterior_variance_sum_to_one_on_the_fitted_data():
    """docs/ppca.md, section 6: for the ML pPCA model, A_j + lam / kappa_j = 1 on the data it was
    fitted to, and on data whose variance along U_j is some other s_j^2 the same encoder gives
    A_j = (kappa_j - lam) s_j^2 / kappa_j^2, whose sum with lam / kappa_j is not 1."""
    rng = np.random.default_rng(30)
    x = _ppca_dataset(rng, np.array([5.0, 2.0, 0.4, 0.3, 0.2]), N=1000)
    W, b, lam = ppca_fit(x, 2)
    model = linear_vae_from_ppca(W, b, lam)
    _, A = active_units(model, x)
    post_var = np.exp(model.encode(x[:1])[1][0])
    np.testing.assert_allclose(A + post_var, 1.0, rtol=1e-10)
    kappa = np.sum(W ** 2, axis=1) + lam                 # column j of the doc's W is sqrt(kappa_j - lam) U_j
    U = W.T / np.linalg.norm(W, axis=1)
    other = x * np.array([1.5, 0.5, 1.0, 1.0, 1.0]) @ np.linalg.qr(rng.standard_normal((5, 5)))[0]
    s2 = np.einsum("dj,de,ej->j", U, np.cov(other.T, bias=True), U)
    _, A_other = active_units(model, other)
    np.testing.assert_allclose(A_other, (kappa - lam) * s2 / kappa ** 2, rtol=1e-10)
    assert np.all(np.abs(A_other + post_var - 1) > 0.05)
