"""Distributions: log-densities against scipy.stats, KLs against Monte Carlo and each other,
the reparameterized sampler against its moments, and every gradient against finite
differences. The objective is tested against independent facts because a gradient check
cannot see a wrong objective (log sigma for log sigma^2, sigma for the variance, ...)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from numpyvae import distributions as dist
from numpyvae.gradcheck import numerical_gradient, rel_error

finite = st.floats(-5, 5, allow_nan=False)


# ----------------------------------------------------------------- log-densities

def test_bernoulli_matches_scipy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 7)) * 3
    x = (rng.random((4, 7)) < 0.5).astype(float)
    p = 1 / (1 + np.exp(-logits))
    expected = stats.bernoulli.logpmf(x, p).sum(axis=1)
    np.testing.assert_allclose(dist.bernoulli_log_likelihood(x, logits), expected, rtol=1e-12)


def test_bernoulli_stable_for_extreme_logits():
    logits = np.array([[1e4, -1e4, 1e4, -1e4]])
    x = np.array([[1.0, 0.0, 0.0, 1.0]])
    ll = dist.bernoulli_log_likelihood(x, logits)
    # log sigmoid(1e4) = 0, log(1 - sigmoid(-1e4)) = 0, log(1 - sigmoid(1e4)) = -1e4, log sigmoid(-1e4) = -1e4
    np.testing.assert_allclose(ll, [-2e4], rtol=1e-12)
    g = dist.bernoulli_log_likelihood_grad(x, logits)
    np.testing.assert_allclose(g, [[0.0, 0.0, -1.0, 1.0]], atol=1e-12)
    ll32 = dist.bernoulli_log_likelihood(x.astype(np.float32), logits.astype(np.float32))
    assert ll32.dtype == np.float32 and np.isfinite(ll32).all()


@given(logits=arrays(np.float64, (3, 5), elements=st.floats(-1e4, 1e4)),
       x=arrays(np.float64, (3, 5), elements=st.floats(0, 1)))
def test_bernoulli_finite_and_nonpositive_for_binary(logits, x):
    ll = dist.bernoulli_log_likelihood(np.round(x), logits)
    assert np.all(np.isfinite(ll)) and np.all(ll <= 0)
    assert np.all(np.isfinite(dist.bernoulli_log_likelihood(x, logits)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_and_grad_equals_the_separate_functions(dtype):
    # The training step's fused form must be the same numbers, not merely close ones:
    # L samples (3, 4, 50) of logits against one batch x (4, 50) that broadcasts over them.
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((3, 4, 50)) * 8).astype(dtype)
    logits[0, 0, :6] = [0.0, -0.0, 1e4, -1e4, 40, -40]
    x = rng.random((4, 50)).astype(dtype)
    ll, g = dist.bernoulli_log_likelihood_and_grad(x, logits)
    assert ll.dtype == dtype and g.dtype == dtype and ll.shape == (3, 4) and g.shape == logits.shape
    np.testing.assert_array_equal(ll, dist.bernoulli_log_likelihood(x, logits))
    np.testing.assert_array_equal(g, dist.bernoulli_log_likelihood_grad(x, logits))
    obj = dist.make_likelihood("bernoulli")
    ll2, g2 = obj.log_prob_and_grad(x, {"out": logits})
    np.testing.assert_array_equal(ll2, ll)
    np.testing.assert_array_equal(g2["out"], g)


def test_gaussian_fixed_matches_scipy():
    rng = np.random.default_rng(1)
    x, m = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    var = 0.3
    expected = stats.norm.logpdf(x, loc=m, scale=np.sqrt(var)).sum(axis=1)
    np.testing.assert_allclose(dist.gaussian_log_likelihood(x, m, var), expected, rtol=1e-12)
    assert dist.gaussian_log_likelihood(x.astype(np.float32), m.astype(np.float32), var).dtype == np.float32


def test_log_normal_diag_matches_scipy():
    rng = np.random.default_rng(2)
    x, mu, logvar = rng.standard_normal((3, 4, 5))
    expected = stats.multivariate_normal(mu[0], np.diag(np.exp(logvar[0]))).logpdf(x)
    np.testing.assert_allclose(dist.log_normal_diag(x, mu[0], logvar[0]), expected, rtol=1e-12)
    np.testing.assert_allclose(dist.log_standard_normal(x),
                               stats.multivariate_normal(np.zeros(5)).logpdf(x), rtol=1e-12)


def test_log_mean_exp():
    a = np.array([[-1000.0, 0.0], [-1001.0, 1.0], [-1002.0, 2.0]])
    naive_shifted = np.log(np.mean(np.exp(a[:, 0] + 1000))) - 1000
    np.testing.assert_allclose(dist.log_mean_exp(a, axis=0), [naive_shifted, np.log(np.mean(np.exp(a[:, 1])))])
    assert np.all(np.isfinite(dist.log_mean_exp(np.array([1e4, 1e4]))))
    assert dist.log_mean_exp(np.array([-np.inf, -np.inf])) == -np.inf


# ----------------------------------------------------------------- KL divergences

def test_kl_standard_against_monte_carlo():
    """KL(q||p) = E_q[log q(z) - log p(z)]: a Monte Carlo average with its standard error.
    With logvar far from 0, log sigma in place of log sigma^2 changes the KL by ~1 nat,
    dozens of standard errors, so the test cannot miss that slip."""
    rng = np.random.default_rng(3)
    mu, logvar = np.array([0.5, -1.0, 2.0]), np.array([1.0, -2.0, -1.5])
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal((200_000, 3))
    samples = dist.log_normal_diag(z, mu, logvar) - dist.log_standard_normal(z)
    mc, se = samples.mean(), samples.std() / np.sqrt(len(samples))
    kl = dist.kl_diag_gaussian_standard(mu, logvar)
    assert abs(kl - mc) < 4 * se, (kl, mc, se)
    wrong = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - 0.5 * logvar)  # log sigma slip
    assert abs(wrong - mc) > 20 * se  # the slip shifts the KL by sum(logvar)/4 = -0.625 nats


@given(mu=arrays(np.float64, (4, 3), elements=finite), logvar=arrays(np.float64, (4, 3), elements=finite))
def test_kl_nonnegative_and_zero_only_at_prior(mu, logvar):
    kl = dist.kl_diag_gaussian_standard(mu, logvar)
    assert np.all(kl >= 0)
    assert np.all(dist.kl_diag_gaussian_standard(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0)
    far = (np.abs(mu).max(axis=1) > 1e-3) | (np.abs(logvar).max(axis=1) > 1e-3)
    assert np.all(kl[far] > 0)


@given(mu_q=arrays(np.float64, 3, elements=finite), lv_q=arrays(np.float64, 3, elements=finite),
       mu_p=arrays(np.float64, 3, elements=finite), lv_p=arrays(np.float64, 3, elements=finite))
def test_kl_diag_agrees_with_full_and_standard(mu_q, lv_q, mu_p, lv_p):
    diag = dist.kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p)
    full = dist.kl_full_gaussians(mu_q, np.diag(np.exp(lv_q)), mu_p, np.diag(np.exp(lv_p)))
    assert diag >= -1e-9
    np.testing.assert_allclose(diag, full, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(dist.kl_diag_gaussians(mu_q, lv_q, 0 * mu_p, 0 * lv_p),
                               dist.kl_diag_gaussian_standard(mu_q, lv_q), rtol=1e-10, atol=1e-12)


def test_kl_full_against_monte_carlo_and_batching():
    rng = np.random.default_rng(4)
    A, C = rng.standard_normal((2, 3, 3))
    cov_q, cov_p = A @ A.T + 0.5 * np.eye(3), C @ C.T + 0.5 * np.eye(3)
    mu_q, mu_p = rng.standard_normal((2, 3))
    q, p = stats.multivariate_normal(mu_q, cov_q), stats.multivariate_normal(mu_p, cov_p)
    z = q.rvs(200_000, random_state=rng)
    s = q.logpdf(z) - p.logpdf(z)
    kl = dist.kl_full_gaussians(mu_q, cov_q, mu_p, cov_p)
    assert abs(kl - s.mean()) < 4 * s.std() / np.sqrt(len(s))
    assert dist.kl_full_gaussians(mu_q, cov_q, mu_q, cov_q) == pytest.approx(0.0, abs=1e-12)
    batched = dist.kl_full_gaussians(np.stack([mu_q, mu_p]), np.stack([cov_q, cov_p]), mu_p, cov_p)
    np.testing.assert_allclose(batched, [kl, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="positive definite"):
        dist.kl_full_gaussians(mu_q, -cov_q, mu_p, cov_p)
    with pytest.raises(ValueError, match="expected means"):
        dist.kl_full_gaussians(mu_q, cov_q[:2, :2], mu_p, cov_p)


def test_kl_standard_grad(grad_report):
    rng = np.random.default_rng(5)
    mu, logvar = rng.standard_normal((2, 4, 3))
    dmu, dlv = dist.kl_diag_gaussian_standard_grad(mu, logvar)
    f = lambda: dist.kl_diag_gaussian_standard(mu, logvar).sum()  # noqa: E731
    grad_report("distributions.kl_diag_gaussian_standard",
                {"mu": rel_error(dmu, numerical_gradient(f, mu)),
                 "logvar": rel_error(dlv, numerical_gradient(f, logvar))})


def test_kl_diag_gaussians_grad(grad_report):
    rng = np.random.default_rng(6)
    args = list(rng.standard_normal((4, 3, 2)))
    grads = dist.kl_diag_gaussians_grad(*args)
    f = lambda: dist.kl_diag_gaussians(*args).sum()  # noqa: E731
    grad_report("distributions.kl_diag_gaussians",
                {i: rel_error(g, numerical_gradient(f, a)) for i, (g, a) in enumerate(zip(grads, args))})


# ----------------------------------------------------------------- likelihood gradients

def test_likelihood_grads(grad_report):
    rng = np.random.default_rng(7)
    x01 = rng.random((3, 5))
    xr = rng.standard_normal((3, 5))
    logits, mean, logvar = rng.standard_normal((3, 3, 5))
    errs = {}
    f = lambda: dist.bernoulli_log_likelihood(x01, logits).sum()  # noqa: E731
    errs["bernoulli"] = rel_error(dist.bernoulli_log_likelihood_grad(x01, logits), numerical_gradient(f, logits))
    f = lambda: dist.gaussian_log_likelihood(xr, mean, 0.4).sum()  # noqa: E731
    errs["gaussian"] = rel_error(dist.gaussian_log_likelihood_grad(xr, mean, 0.4), numerical_gradient(f, mean))
    dm, dlv = dist.log_normal_diag_grad(xr, mean, logvar)
    f = lambda: dist.log_normal_diag(xr, mean, logvar).sum()  # noqa: E731
    errs["learned.mean"] = rel_error(dm, numerical_gradient(f, mean))
    errs["learned.logvar"] = rel_error(dlv, numerical_gradient(f, logvar))
    for k, v in errs.items():
        grad_report(f"distributions.likelihood.{k}", v)


def test_likelihood_objects():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        dist.make_likelihood("poisson")
    with pytest.raises(ValueError, match="obs_var must be a positive"):
        dist.make_likelihood("gaussian", obs_var=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dist.make_likelihood("bernoulli").check_targets(np.array([[0.5, 1.5]]))


# ----------------------------------------------------------------- the sigmoid mean of the Gaussians (Eq. (G6))

def sigmoid_models(rng, shape=(2, 3, 5)):
    """Both Gaussian likelihoods with decoder_mean="sigmoid", with decoder outputs of ``shape``
    (L, B, D) and targets x (B, D) in [0, 1]; logits up to +-6, where the sigmoid bends."""
    a, logvar = 3.0 * rng.standard_normal((2,) + shape)
    x = rng.random(shape[1:])
    return x, {"gaussian": (dist.GaussianLikelihood(0.3, decoder_mean="sigmoid"), {"out": a}),
               "gaussian-learned": (dist.GaussianLearnedLikelihood(decoder_mean="sigmoid"),
                                    {"out": a, "logvar": logvar})}


def test_sigmoid_mean_likelihoods_match_scipy():
    """log p(x|z) is the normal log-density at mean sigmoid(a) (scipy's expit and norm), summed
    over the pixels; decode's mean is sigmoid(a), and the identity mean is the head itself."""
    from scipy.special import expit
    x, models = sigmoid_models(np.random.default_rng(40))
    for name, (lik, out) in models.items():
        std = np.sqrt(0.3) if name == "gaussian" else np.exp(0.5 * out["logvar"])
        expected = stats.norm.logpdf(x, loc=expit(out["out"]), scale=std).sum(axis=-1)
        np.testing.assert_allclose(lik.log_prob(x, out), expected, rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(lik.mean(out), expit(out["out"]), rtol=1e-14, err_msg=name)
        identity = type(lik)(**({"obs_var": 0.3} if name == "gaussian" else {}))
        np.testing.assert_array_equal(identity.mean(out), out["out"])


def test_sigmoid_mean_likelihood_grads(grad_report):
    """Eq. (G6), docs/distributions.md: the gradient with respect to the head a, against central
    differences in float64; log_prob_and_grad gives the same numbers as log_prob and grad."""
    x, models = sigmoid_models(np.random.default_rng(41))
    for name, (lik, out) in models.items():
        grads = lik.grad(x, out)
        f = lambda: lik.log_prob(x, out).sum()  # noqa: E731
        grad_report(f"distributions.{name}[decoder_mean=sigmoid]",
                    {head: rel_error(grads[head], numerical_gradient(f, out[head])) for head in lik.heads})
        log_p, both = lik.log_prob_and_grad(x, out)
        np.testing.assert_array_equal(log_p, lik.log_prob(x, out))
        assert all(np.array_equal(both[h], grads[h]) for h in lik.heads)


@pytest.mark.parametrize("dtype, a", [(np.float64, 30.0), (np.float64, 700.0), (np.float32, 12.0),
                                      (np.float32, 80.0)])
def test_sigmoid_mean_grad_has_no_cancellation(dtype, a):
    """m (1 - m) = e^{-|a|} / (1 + e^{-|a|})^2 to full relative precision, on both sides of 0, where
    1 - m computed from m = sigmoid(a) loses every digit (it rounds to exactly 0 for these a in the
    second case of each dtype) and the gradient of a saturated pixel would vanish."""
    a = np.array([a, -a], dtype=dtype)
    e = np.exp(-np.abs(a.astype(np.float64)))
    exact = e / (1 + e) ** 2
    got = dist.sigmoid_mean_grad(np.ones_like(a), a)
    assert got.dtype == dtype and np.all(got > 0)
    np.testing.assert_allclose(got, exact, rtol=10 * np.finfo(dtype).eps)


def test_decoder_mean_and_variance_floor_are_checked():
    for call, exc, pattern in [
        (lambda: dist.make_likelihood("gaussian", decoder_mean="logit"), ValueError, r"^decoder_mean must be one of"),
        (lambda: dist.GaussianLearnedLikelihood(decoder_mean=None), ValueError, r"^decoder_mean must be one of"),
        (lambda: dist.make_likelihood("bernoulli", decoder_mean="sigmoid"), ValueError,
         r"^decoder_mean='sigmoid' applies to the Gaussian likelihoods only"),
        (lambda: dist.make_likelihood("gaussian", obs_std_min=0.1), ValueError,
         r"^obs_std_min .* applies to likelihood='gaussian-learned' only"),
        (lambda: dist.make_likelihood("bernoulli", obs_std_min=0.1), ValueError, r"^obs_std_min"),
        (lambda: dist.make_likelihood("gaussian-learned", obs_std_min=0.0), ValueError, r"^obs_std_min must be"),
        (lambda: dist.make_likelihood("gaussian-learned", obs_std_min=np.nan), ValueError, r"^obs_std_min must be"),
        (lambda: dist.make_likelihood("gaussian-learned", obs_std_min=1e-10), ValueError, r"^obs_std_min must be"),
        (lambda: dist.make_likelihood("gaussian-learned", obs_std_min=1e9), ValueError, r"^obs_std_min must be"),
        (lambda: dist.make_likelihood("gaussian-learned", obs_std_min="0.1"), TypeError, r"^obs_std_min must be"),
    ]:
        with pytest.raises(exc, match=pattern):
            call()
    # the valid neighbours
    lik = dist.make_likelihood("gaussian-learned", decoder_mean="sigmoid", obs_std_min=np.float32(0.05))
    assert lik.decoder_mean == "sigmoid" and lik.head_ranges["logvar"] == pytest.approx((2 * np.log(0.05), 40.0))
    assert dist.make_likelihood("gaussian-learned").head_ranges["logvar"] == dist.LOGVAR_RANGE


# ----------------------------------------------------------------- reparameterization

def test_reparameterized_moments():
    """Sample mean and variance of z = mu + exp(logvar/2) eps against mu and exp(logvar).
    Tolerances: 5 standard errors of the sample mean (sigma / sqrt(N)) and of the sample
    variance (sigma^2 sqrt(2 / (N - 1))). Using exp(logvar) as the standard deviation would
    square the variance: for logvar = +-1.2 that is a factor e^{+-1.2}, hundreds of SEs."""
    rng = np.random.default_rng(8)
    mu, logvar = np.array([[0.3, -2.0, 1.0]]), np.array([[1.2, -1.2, 0.0]])
    N = 100_000
    z = dist.reparameterize(mu, logvar, rng.standard_normal((N, 1, 3)))[:, 0, :]
    var = np.exp(logvar[0])
    assert np.all(np.abs(z.mean(0) - mu[0]) < 5 * np.sqrt(var / N))
    assert np.all(np.abs(z.var(0, ddof=1) - var) < 5 * var * np.sqrt(2 / (N - 1)))


@given(mu=arrays(np.float64, (2, 3), elements=st.floats(-3, 3)),
       logvar=arrays(np.float64, (2, 3), elements=st.floats(-3, 3)))
def test_reparameterized_moments_property(mu, logvar):
    # The same standardised eps for every example: the sample mean and variance of eps are
    # pinned exactly, so z must have exactly mean mu and variance exp(logvar) (float rounding aside).
    eps = np.random.default_rng(9).standard_normal((500, 1, 1))
    eps = (eps - eps.mean()) / eps.std()
    z = dist.reparameterize(mu, logvar, eps)
    np.testing.assert_allclose(z.mean(0), mu, atol=1e-10)
    np.testing.assert_allclose(z.var(0), np.exp(logvar), rtol=1e-9)


def test_reparameterize_backward(grad_report):
    rng = np.random.default_rng(10)
    mu, logvar = rng.standard_normal((2, 4, 3))
    eps, dz = rng.standard_normal((2, 5, 4, 3))
    dmu, dlv = dist.reparameterize_backward(dz, logvar, eps)
    assert dmu.shape == mu.shape and dlv.shape == logvar.shape
    f = lambda: np.sum(dist.reparameterize(mu, logvar, eps) * dz)  # noqa: E731
    grad_report("distributions.reparameterize",
                {"mu": rel_error(dmu, numerical_gradient(f, mu)),
                 "logvar": rel_error(dlv, numerical_gradient(f, logvar))})
