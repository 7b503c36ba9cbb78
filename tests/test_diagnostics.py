"""numpyvae.lab.diagnostics and the estimators of log p(x), measured against the exact pPCA
likelihood (docs/ppca.md): importance sampling from an imperfect encoder converges as K grows;
sampling the prior instead needs orders of magnitude more samples; KL per dimension and
active units agree with their definitions and with pPCA's closed forms."""

import numpy as np
import pytest

import numpyvae as nv
from numpyvae.lab.diagnostics import active_units, encode_all, kl_per_dimension, log_likelihood_prior_sampling
from numpyvae.ppca import linear_vae_from_ppca, ppca_fit, ppca_log_likelihood


# ----------------------------------------------------------------- a small linear-Gaussian problem
#
# pPCA with D = 6, Z = 2, rows of W orthogonal with lengths 2 and 1.5, and a small noise
# sigma2 = 1e-3, so the posterior is narrow: standard deviations sqrt(sigma2 / (|w_j|^2 + sigma2))
# = 0.0158 and 0.0211, against 1 for the prior. The encoder is the exact posterior (Eq. (P5))
# with its mean moved by DELTA = 1.25 posterior standard deviations in each dimension, so
#   KL(q || p(z|x)) = Z DELTA^2 / 2 = 1.5625 nats for every x, and the relative variance of the
#   importance weights is 1 + Var(w)/p(x)^2 = exp(Z DELTA^2) = 22.8 (Eq. (Q4), docs/ppca.md), the same for every x.
# Because the shift is the same in posterior-standard-deviation units for every x, the
# distribution of log p_hat(x) - log p(x) is the same for every datapoint: the N datapoints
# are N independent repetitions, and standard errors over them are honest.

D, Z, SIGMA2, DELTA = 6, 2, 1e-3, 1.25


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((D, Z)))
    W = np.array([[2.0], [1.5]]) * Q.T
    b = rng.standard_normal(D)
    x = rng.standard_normal((1000, Z)) @ W + b + np.sqrt(SIGMA2) * rng.standard_normal((1000, D))
    model = linear_vae_from_ppca(W, b, SIGMA2)
    post_std = np.exp(0.5 * model.params["enc.logvar.b"].copy())
    post_mu, _ = model.encode(x)                       # the exact posterior means, before the shift
    model.params["enc.mu.b"] += DELTA * post_std       # the imperfect encoder
    return {"x": x, "model": model, "exact": ppca_log_likelihood(x, W, b, SIGMA2),
            "post_std": post_std, "post_mu": post_mu}


def mean_and_se(a):
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.size))


def test_importance_sampling_converges_as_k_grows(problem):
    """The mean gap log p(x) - log p_hat_K(x) over 1000 datapoints, K = 1, 10, 100, 1000.

    At K = 1 the expected gap is KL(q || p(z|x)) = 1.5625 (Eq. (E3), docs/elbo.md). It falls
    with K (Burda et al.'s monotonicity, docs/importance.md), each step by more than 3 standard
    errors of the difference; at K = 1000 it is below 0.05 nats (theory, gap ~ (Var(w)/p(x)^2) / (2K) =
    0.011) and not below 0 by more than 3 standard errors (it is >= 0 in expectation, Jensen).
    Measured (mean gap +- standard error): K=1 1.529 +- 0.055, K=10 0.350 +- 0.025,
    K=100 0.079 +- 0.011, K=1000 0.0072 +- 0.0043. Drops: 19, 10 and 6 standard errors.
    """
    x, model, exact = problem["x"], problem["model"], problem["exact"]
    gaps = {}
    for K in (1, 10, 100, 1000):
        est = model.log_likelihood(x, n_importance=K, rng=np.random.default_rng(K))
        gaps[K] = mean_and_se(exact - est)
    kl = Z * DELTA ** 2 / 2
    assert abs(gaps[1][0] - kl) < 4 * gaps[1][1], (gaps[1], kl)
    for small, large in ((1, 10), (10, 100), (100, 1000)):
        drop = gaps[small][0] - gaps[large][0]
        assert drop > 3 * np.hypot(gaps[small][1], gaps[large][1]), (small, large, gaps)
    mean, se = gaps[1000]
    assert -3 * se < mean < 0.05, gaps[1000]
    print("\nIS gap (mean, se) by K:", {K: (round(m, 4), round(s, 4)) for K, (m, s) in gaps.items()})


def test_prior_sampling_needs_far_more_samples(problem):
    """Sampling z from the prior (Eq. (Q1), docs/ppca.md) against importance sampling from the
    imperfect encoder, on 40 datapoints of the same problem; errors are mean |log p_hat - log p|.

    By Eq. (Q2), docs/ppca.md, prior sampling has 1 + Var(w)/p(x)^2 = prod_j exp(mu_j^2/(2 - sigma_j^2)) /
    (sigma_j sqrt(2 - sigma_j^2)), a median of ~3000 over these datapoints, against 22.8 for the
    encoder. Measured: importance sampling K=10: 0.78 nats; prior sampling K=100: 86.8,
    K=1000: 5.67, K=10000: 0.93, K=100000: 0.152 nats.
    Asserted, with wide margins: prior sampling with K = 1000 is more than 5x worse than
    importance sampling with K = 10, and it does converge: the error at K = 100000 is below
    0.5 nats and less than a tenth of the error at K = 100. (That K = 10000 prior samples are
    still worse than 10 encoder samples is measured, not asserted: the margin is only ~1.2x.)
    """
    x, model, exact = problem["x"][:40], problem["model"], problem["exact"][:40]
    mu, s = problem["post_mu"][:40], problem["post_std"]
    one_plus_r = np.prod(np.exp(mu ** 2 / (2 - s ** 2)) / (s * np.sqrt(2 - s ** 2)), axis=1)
    is_err = np.abs(model.log_likelihood(x, n_importance=10, rng=np.random.default_rng(1)) - exact).mean()
    naive_err = {}
    for K in (100, 1000, 10000, 100000):
        est = log_likelihood_prior_sampling(model, x, K, np.random.default_rng(K))
        naive_err[K] = np.abs(est - exact).mean()
    print(f"\nmedian 1 + Var(w)/p(x)^2 for prior sampling {np.median(one_plus_r):.0f}; IS K=10 error {is_err:.3f}; "
          "prior-sampling error by K:", {K: round(float(e), 3) for K, e in naive_err.items()})
    assert naive_err[1000] > 5 * is_err, (naive_err, is_err)
    assert naive_err[100000] < 0.5 and naive_err[100000] < 0.1 * naive_err[100], naive_err


def test_prior_sampling_is_exact_when_the_decoder_ignores_z():
    """With W = 0, p(x|z) = N(x; b, sigma2 I) for every z, so every weight equals p(x) and the
    estimate is exact for any K: a check of the log-sum-exp and the log K, with no noise."""
    rng = np.random.default_rng(2)
    b = rng.standard_normal(4)
    model = nv.VAE(4, (), 3, likelihood="gaussian", obs_var=0.5, dtype=np.float64)
    model.params["dec.out.W"][...] = 0.0
    model.params["dec.out.b"][...] = b
    x = rng.standard_normal((5, 4))
    exact = ppca_log_likelihood(x, np.zeros((1, 4)), b, 0.5)
    for K in (1, 7, 1000):
        np.testing.assert_allclose(log_likelihood_prior_sampling(model, x, K, rng), exact, rtol=1e-12)


def test_prior_sampling_chunks_dtype_and_extreme_values():
    rng = np.random.default_rng(3)
    model = nv.VAE(5, (4,), 2, likelihood="bernoulli", seed=1, dtype=np.float64, activation="tanh")
    x = rng.random((6, 5))
    a = log_likelihood_prior_sampling(model, x, 200, np.random.default_rng(0), chunk_size=7)
    b = log_likelihood_prior_sampling(model, x, 200, np.random.default_rng(0), chunk_size=200)
    np.testing.assert_allclose(a, b, rtol=1e-12)           # chunking changes nothing
    # It is a log-mean: between the smallest and largest log p(x|z_k) of the same draws.
    z = np.random.default_rng(0).standard_normal((200, 6, 2))
    logs = model.likelihood.log_prob(x, {"out": model.decoder_outputs(z.reshape(-1, 2))["out"].reshape(200, 6, 5)})
    assert np.all(logs.min(0) - 1e-12 <= a) and np.all(a <= logs.max(0) + 1e-12)
    np.testing.assert_allclose(a, np.log(np.mean(np.exp(logs), axis=0)), rtol=1e-12)
    m32 = nv.VAE(5, (4,), 2, likelihood="bernoulli", seed=1, dtype=np.float32, activation="tanh")
    assert log_likelihood_prior_sampling(m32, x, 10, rng).dtype == np.float32
    # log-likelihoods of -1e5 nats: exp underflows, log-sum-exp does not.
    lin = nv.VAE(3, (), 1, likelihood="gaussian", obs_var=1e-6, dtype=np.float64)
    far = np.full((2, 3), 1.0)
    assert np.all(np.isfinite(log_likelihood_prior_sampling(lin, far, 50, rng)))


def test_prior_sampling_bad_inputs():
    model = nv.VAE(4, (), 2, likelihood="gaussian", dtype=np.float64)
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        log_likelihood_prior_sampling(model, x, 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        log_likelihood_prior_sampling(model, x, 5, np.random.RandomState(0))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        log_likelihood_prior_sampling(model, x, 5, np.random.default_rng(0), chunk_size=0)
    with pytest.raises(ValueError, match="must have 4 columns"):
        log_likelihood_prior_sampling(model, np.zeros((3, 5)), 5, np.random.default_rng(0))


# ----------------------------------------------------------------- KL per dimension, active units

def test_kl_per_dimension_sums_to_the_mean_kl():
    """Eq. (A1), docs/ppca.md on a nonlinear model, in batches that do not divide N."""
    rng = np.random.default_rng(4)
    model = nv.VAE(6, (5,), 3, likelihood="bernoulli", seed=2, dtype=np.float64, activation="tanh")
    for k, v in model.params.items():
        if k.startswith("enc."):
            v[...] = rng.standard_normal(v.shape)
    x = rng.random((37, 6))
    kl = kl_per_dimension(model, x, batch_size=10)
    assert kl.shape == (3,) and np.all(kl > 0)
    mean_kl = model.elbo_terms(x, rng=rng)["kl"].mean()
    assert kl.sum() == pytest.approx(mean_kl, rel=1e-12)
    mu, logvar = model.encode(x)
    per_point = 0.5 * (mu ** 2 + np.exp(logvar) - 1 - logvar)
    np.testing.assert_allclose(kl, per_point.mean(0), rtol=1e-12)
    # The trainer reports the same numbers per epoch (numpyvae.training.evaluate_elbo).
    from numpyvae.training import evaluate_elbo
    report = evaluate_elbo(model, x, rng.standard_normal((1, 37, 3)), batch_size=10)
    np.testing.assert_allclose(kl, report["kl_per_dim"], rtol=1e-12)


def test_active_units_counts_moving_means():
    """Units 0 and 2 get zero encoder weights: constant means, but a large bias (E[mu^2] big)
    and a posterior variance far from 1 (KL > 0), neither of which makes a unit active.
    Unit 3 moves, but with variance ~0.004 < 0.01; units 1 and 4 move a lot. Count: 2."""
    rng = np.random.default_rng(5)
    model = nv.VAE(4, (), 5, likelihood="gaussian", dtype=np.float64)
    x = rng.standard_normal((500, 4))
    Wmu = model.params["enc.mu.W"]
    Wmu[...] = rng.standard_normal(Wmu.shape)
    Wmu[:, [0, 2]] = 0.0
    Wmu[:, 3] *= 0.06 / np.linalg.norm(Wmu[:, 3])         # Var(mu_3) ~ 0.0036
    model.params["enc.mu.b"][...] = [3.0, 0.0, -2.0, 0.0, 1.0]
    model.params["enc.logvar.W"][...] = 0.0
    model.params["enc.logvar.b"][...] = -2.0
    count, var = active_units(model, x, batch_size=64)
    mu, _ = model.encode(x)
    np.testing.assert_allclose(var, mu.var(axis=0), rtol=1e-12)
    assert var[0] == 0.0 and var[2] == 0.0 and 0 < var[3] < 0.01 < min(var[1], var[4])
    assert count == 2
    assert active_units(model, x, threshold=0.001)[0] == 3
    kl = kl_per_dimension(model, x)
    assert kl[0] > 1 and kl[2] > 1     # inactive, yet far from the prior: KL sees what A_j ignores


def test_diagnostics_on_ppca_match_closed_forms():
    """For the ML pPCA model on its own training data (docs/ppca.md, section 6):
    A_j = 1 - sigma2 / kappa_j and KL_j = 1/2 log(kappa_j / sigma2), to rounding (sigma2 = lambda)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((800, 5)) * np.array([3.0, 2.0, 0.5, 0.4, 0.3]) @ np.linalg.qr(
        rng.standard_normal((5, 5)))[0]
    W, b, sigma2 = ppca_fit(x, 2)
    lam = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1][:2]
    model = linear_vae_from_ppca(W, b, sigma2)
    count, var = active_units(model, x)
    np.testing.assert_allclose(var, 1 - sigma2 / lam, rtol=1e-10)
    np.testing.assert_allclose(kl_per_dimension(model, x), 0.5 * np.log(lam / sigma2), rtol=1e-10)
    assert count == 2


def test_diagnostics_bad_inputs():
    model = nv.VAE(4, (), 2, likelihood="gaussian", dtype=np.float64)
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        kl_per_dimension(model, x, batch_size=0)
    with pytest.raises(ValueError, match="threshold"):
        active_units(model, x, threshold=-1.0)
    with pytest.raises(ValueError, match="empty batch"):
        active_units(model, np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        kl_per_dimension(nv.VAE(4, (), 2, likelihood="bernoulli"), x + 2.0)


def test_kl_per_dimension_refuses_a_full_posterior():
    try:
        model = nv.VAE(4, (), 2, likelihood="gaussian", posterior="full", dtype=np.float64)
    except TypeError:
        pytest.skip("this VAE has no full-covariance posterior")
    with pytest.raises(ValueError, match="diagonal posterior"):
        kl_per_dimension(model, np.zeros((3, 4)))
    assert active_units(model, np.zeros((3, 4)))[0] == 0      # the means are still defined


def test_encode_all_is_encode_in_batches():
    """encode_all(model, x) is model.encode(x) whatever the batch size (here also sizes that do not
    divide N): a pair for a VAE, one array for an autoencoder, the labels batched alongside x
    for a conditional VAE. An empty x is refused before anything is encoded."""
    rng = np.random.default_rng(7)
    x = rng.random((23, 6))
    y = rng.integers(0, 3, 23)
    vae = nv.VAE(6, (5,), 3, seed=1, dtype=np.float64)
    ae = nv.Autoencoder(6, (5,), 3, seed=1, dtype=np.float64)
    cvae = nv.ConditionalVAE(6, n_classes=3, hidden_dims=(5,), latent_dim=2, seed=1, dtype=np.float64)
    for batch_size in (1, 5, 23, 100):
        for got, want in zip(encode_all(vae, x, batch_size), vae.encode(x)):
            np.testing.assert_allclose(got, want, rtol=1e-13)
        np.testing.assert_allclose(encode_all(ae, x, batch_size), ae.encode(x), rtol=1e-13)
        np.testing.assert_allclose(encode_all(cvae, x, batch_size, y=y)[0], cvae.encode(x, y=y)[0], rtol=1e-13)
    with pytest.raises(ValueError, match="empty batch"):
        encode_all(vae, x[:0])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        encode_all(ae, x, batch_size=0)
