"""Gradient estimators: unbiasedness against the reparameterization estimator and against the
exact gradient of a linear-Gaussian model, variance reduction by every baseline, "blocked"
sending only the KL to the encoder, and "stl" vanishing at the exact posterior.

Statistical tests draw R independent estimates in one call: a batch of R copies of one
datapoint, whose rows of posterior_grads are independent (VAE.posterior_grads). Means are
compared within 4.5 combined standard errors; over the ~10 coordinates compared per test the
chance of a false failure is below 1e-4, while a wrong sign or factor of 2 is hundreds of SEs.
"""

import numpy as np
import pytest

import numpyvae as nv
from numpyvae import estimators as est
from numpyvae.distributions import kl_diag_gaussian_standard, log_normal_diag
from numpyvae.gradcheck import numerical_gradient, rel_error

Z_TOL = 4.5


def linear_gaussian(seed=0, D=5, Z=2, lam=0.5):
    rng = np.random.default_rng(seed)
    m = nv.VAE(D, (), Z, likelihood="gaussian", obs_var=lam, seed=seed, dtype=np.float64)
    for k, v in m.params.items():
        v[:] = 0.5 * rng.standard_normal(v.shape)
    x = rng.standard_normal((1, D))
    return m, x


def exact_posterior_grads(m, x, beta=1.0):
    """d/d(mu, logvar) of -(E_q log N(x; z W + b, lam I) - beta KL), in closed form:
    E_q[.] = const - (||x - mu W - b||^2 + sum_j sigma_j^2 ||W_j||^2) / (2 lam)."""
    W, b, lam = m.params["dec.out.W"], m.params["dec.out.b"], m.obs_var
    mu, logvar = m.encode(x)
    resid = x - mu @ W - b
    d_mu = -(resid @ W.T) / lam + beta * mu
    d_logvar = np.exp(logvar) * np.sum(W * W, axis=1) / (2 * lam) + beta * 0.5 * np.expm1(logvar)
    return d_mu[0], d_logvar[0]


def draws(m, x, R, estimator, L=1, baseline=None, seed=1):
    """R independent estimates of (d_mu, d_logvar) for datapoint x: (R, 2Z)."""
    xr = np.repeat(x, R, axis=0)
    d_mu, d_lv = m.posterior_grads(xr, n_samples=L, rng=np.random.default_rng(seed), estimator=estimator,
                                   baseline=baseline)
    return np.concatenate([d_mu, d_lv], axis=1)


def assert_mean(g, target, what):
    se = g.std(axis=0, ddof=1) / np.sqrt(g.shape[0])
    z = (g.mean(axis=0) - target) / se
    assert np.all(np.abs(z) < Z_TOL), f"{what}: z-scores {np.round(z, 2)}"


# ----------------------------------------------------------------- pieces

def test_diag_gaussian_score_is_gradient_of_log_q(grad_report):
    """d log q(z)/d(mu, logvar) at fixed z, against finite differences of log N(z; mu, e^logvar)."""
    rng = np.random.default_rng(0)
    mu, logvar = rng.standard_normal((2, 3, 4))
    eps = rng.standard_normal((1, 3, 4))
    z = mu + np.exp(0.5 * logvar) * eps[0]
    s_mu, s_lv = est.diag_gaussian_score(eps, logvar)
    f = lambda: log_normal_diag(z, mu, logvar).sum()  # noqa: E731
    grad_report("estimators.diag_gaussian_score", {"mu": rel_error(s_mu[0], numerical_gradient(f, mu)),
                                                    "logvar": rel_error(s_lv[0], numerical_gradient(f, logvar))})


def test_stl_plus_score_term_is_the_full_pathwise_gradient(grad_report):
    """STL drops the score term of log q. So STL + beta/(LB) sum_l d log q/d phi |_z must equal the
    exact gradient of the Monte Carlo entropy-form loss
        -1/(LB) sum [log p(x|z) + beta (log p(z) - log q(z|x))],  z = mu + sigma eps,
    which finite differences can check."""
    rng = np.random.default_rng(1)
    m = nv.VAE(6, (5,), 3, activation="tanh", seed=0, dtype=np.float64)
    for v in m.params.values():
        v += 0.1 * rng.standard_normal(v.shape)
    x = rng.random((4, 6))
    L, B, beta = 3, 4, 0.7
    eps = rng.standard_normal((L, B, 3))

    def mc_entropy_loss():
        q = m._encode(x, None)
        mu, logvar = q["mu"], q["logvar"]
        z = mu + np.exp(0.5 * logvar) * eps
        rec = m.likelihood.log_prob(x, m._decode(z, None))
        log_q = log_normal_diag(z, mu, logvar)
        log_p = -0.5 * np.sum(np.log(2 * np.pi) + z * z, axis=-1)
        return float(-np.mean(rec + beta * (log_p - log_q)))

    _, grads = m.loss_and_grads(x, eps=eps, n_samples=L, estimator="stl", beta=beta)
    # The score term, pushed through the encoder heads by a "reparam" call whose data term is
    # switched off: we add beta/(LB) sum_l score to the STL gradient via the heads' backward.
    s_mu, s_lv = est.diag_gaussian_score(eps, m.encode(x)[1])
    m._encode(x, None)
    dh = m.enc_heads["mu"].backward(beta / (L * B) * s_mu.sum(0)) + \
        m.enc_heads["logvar"].backward(beta / (L * B) * s_lv.sum(0))
    m.encoder.backward(dh)
    extra = {k: v for k, v in m._named("grads").items() if k.startswith("enc.")}
    full = {k: grads[k] + extra[k] if k in extra else grads[k] for k in grads}
    errors = {k: rel_error(full[k], numerical_gradient(mc_entropy_loss, p)) for k, p in m.params.items()}
    grad_report("estimators.stl (+ score term)", errors)


def test_leave_one_out_baseline():
    f = np.array([[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]])
    np.testing.assert_allclose(est.leave_one_out_baseline(f), [[4.0, 40.0], [3.5, 35.0], [1.5, 15.0]])
    with pytest.raises(ValueError, match="n_samples >= 2"):
        est.leave_one_out_baseline(f[:1])


def test_learned_baseline_gradient(grad_report):
    rng = np.random.default_rng(2)
    b = est.LearnedBaseline(5, hidden=4, dtype=np.float64, seed=0)
    for v in b.params.values():
        v += 0.1 * rng.standard_normal(v.shape)
    x, target = rng.standard_normal((6, 5)), rng.standard_normal(6)
    _, grads = b.loss_and_grads(x, target)
    grads = {k: v.copy() for k, v in grads.items()}
    errors = {k: rel_error(grads[k], numerical_gradient(lambda: b.loss_and_grads(x, target)[0], p))
              for k, p in b.params.items()}
    grad_report("estimators.LearnedBaseline", errors)


def test_learned_baseline_learns_the_signal():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 3))
    target = 50.0 + 3.0 * x[:, 0]            # an input-dependent signal with a large offset
    b = est.LearnedBaseline(3, hidden=16, lr=1e-2, dtype=np.float64)
    for _ in range(500):
        b.observe(x, target[None, :])
    resid = target - b.value(x, target[None, :])
    assert np.mean(resid ** 2) < 0.05 * np.var(target), np.mean(resid ** 2)


def test_bad_estimator_arguments():
    m, x = linear_gaussian()
    with pytest.raises(ValueError, match="baseline only applies to estimator='score'"):
        m.loss_and_grads(x, rng=np.random.default_rng(0), estimator="reparam", baseline=est.LeaveOneOutBaseline())
    with pytest.raises(TypeError, match="baseline must be None or an object .* make_baseline\\('loo'\\)"):
        m.loss_and_grads(x, rng=np.random.default_rng(0), estimator="score", baseline="loo")
    with pytest.raises(ValueError, match="n_samples >= 2"):
        m.loss_and_grads(x, rng=np.random.default_rng(0), estimator="score", baseline=est.make_baseline("loo"))
    with pytest.raises(ValueError, match="unknown baseline"):
        est.make_baseline("median")


# ----------------------------------------------------------------- unbiasedness and variance

def test_score_function_is_unbiased_linear_gaussian():
    m, x = linear_gaussian()
    exact = np.concatenate(exact_posterior_grads(m, x))
    assert_mean(draws(m, x, 200_000, "score"), exact, "score vs closed form")
    assert_mean(draws(m, x, 50_000, "reparam"), exact, "reparam vs closed form")
    # the closed form is right: a sign slip in it would show as hundreds of SEs
    assert_mean(draws(m, x, 50_000, "reparam") * np.r_[1, 1, 1, 1], exact, "control")


def test_score_agrees_with_reparam_on_a_nonlinear_model():
    rng = np.random.default_rng(4)
    m = nv.VAE(6, (5,), 2, seed=3, dtype=np.float64, activation="tanh")
    x = rng.random((1, 6))
    g_s, g_r = draws(m, x, 200_000, "score"), draws(m, x, 200_000, "reparam", seed=2)
    se = np.sqrt(g_s.var(0, ddof=1) / len(g_s) + g_r.var(0, ddof=1) / len(g_r))
    z = (g_s.mean(0) - g_r.mean(0)) / se
    assert np.all(np.abs(z) < Z_TOL), z


def test_every_baseline_is_unbiased_and_reduces_variance():
    m, x = linear_gaussian()
    exact = np.concatenate(exact_posterior_grads(m, x))
    R = 100_000
    plain1 = draws(m, x, R, "score")
    plain2 = draws(m, x, R, "score", L=2)
    # EMA: warmed up on earlier draws, then frozen so every row sees the same baseline
    ema = est.EMABaseline(decay=0.9)
    for s in range(30):
        m.loss_and_grads(np.repeat(x, 32, 0), rng=np.random.default_rng(100 + s), estimator="score", baseline=ema)
    ema.frozen = True
    learned = est.LearnedBaseline(5, hidden=8, lr=1e-2, dtype=np.float64)
    for s in range(300):
        m.loss_and_grads(np.repeat(x, 32, 0), rng=np.random.default_rng(1000 + s), estimator="score",
                         baseline=learned)
    learned.frozen = True
    cases = {"ema": (draws(m, x, R, "score", baseline=ema), plain1),
             "learned": (draws(m, x, R, "score", baseline=learned), plain1),
             "loo": (draws(m, x, R, "score", L=2, baseline=est.LeaveOneOutBaseline()), plain2)}
    for name, (g, plain) in cases.items():
        assert_mean(g, exact, f"score+{name}")
        # the baselines here cut the total variance by a factor of 10 or more (measured);
        # require at least 2 so the test is robust yet fails if the baseline did nothing.
        assert g.var(0).sum() < 0.5 * plain.var(0).sum(), (name, g.var(0).sum(), plain.var(0).sum())


def test_reparam_has_lower_variance_than_score():
    m, x = linear_gaussian()
    assert draws(m, x, 20_000, "reparam").var(0).sum() * 10 < draws(m, x, 20_000, "score").var(0).sum()


# ----------------------------------------------------------------- blocked and stl

def test_blocked_sends_only_the_kl_to_the_encoder(grad_report):
    rng = np.random.default_rng(5)
    m = nv.VAE(6, (5,), 3, seed=1, dtype=np.float64, activation="tanh")
    # Off the initial log-variance 0, where the KL's gradient in the logvar head is exactly 0.
    m.params["enc.logvar.W"][...] = 0.3 * rng.standard_normal(m.params["enc.logvar.W"].shape)
    x, eps = rng.random((4, 6)), rng.standard_normal((2, 4, 3))
    beta = 0.6
    _, g_blocked = m.loss_and_grads(x, eps=eps, n_samples=2, estimator="blocked", beta=beta)
    _, g_reparam = m.loss_and_grads(x, eps=eps, n_samples=2, estimator="reparam", beta=beta)
    kl_loss = lambda: beta * float(np.mean(kl_diag_gaussian_standard(*m.encode(x))))  # noqa: E731,E501
    errors = {k: rel_error(g_blocked[k], numerical_gradient(kl_loss, p))
              for k, p in m.params.items() if k.startswith("enc.")}
    grad_report("estimators.blocked (= KL gradient)", errors)
    for k in m.params:
        if k.startswith("dec."):
            assert np.array_equal(g_blocked[k], g_reparam[k]), k
    d_mu, d_lv = m.posterior_grads(x, eps=eps, n_samples=2, estimator="blocked", beta=beta)
    mu, logvar = m.encode(x)
    np.testing.assert_allclose(d_mu, beta * mu, rtol=1e-12)
    np.testing.assert_allclose(d_lv, beta * 0.5 * np.expm1(logvar), rtol=1e-12)


def test_stl_has_zero_variance_at_the_exact_posterior():
    rng = np.random.default_rng(6)
    lam = 0.5
    m = nv.VAE(5, (), 1, likelihood="gaussian", obs_var=lam, seed=0, dtype=np.float64)
    W, b = rng.standard_normal((1, 5)), rng.standard_normal(5)
    m.params["dec.out.W"][:], m.params["dec.out.b"][:] = W, b
    w = W[0]
    s2 = 1.0 / (1.0 + w @ w / lam)                      # exact posterior of a 1-D latent
    m.params["enc.mu.W"][:] = (s2 * w / lam)[:, None]
    m.params["enc.mu.b"][:] = -(b @ m.params["enc.mu.W"])
    m.params["enc.logvar.W"][:] = 0.0
    m.params["enc.logvar.b"][:] = np.log(s2)
    x = rng.standard_normal((1, 5))
    g_stl = draws(m, x, 1000, "stl")
    g_rep = draws(m, x, 1000, "reparam")
    np.testing.assert_allclose(g_stl, 0.0, atol=1e-12)   # every single estimate is exactly zero
    assert g_rep.var(0).sum() > 1e-3                      # while reparam's still fluctuate
    # and the exact gradient is zero there: the ELBO is maximised over q
    np.testing.assert_allclose(g_rep.mean(0), 0.0, atol=Z_TOL * g_rep.std(0).max() / np.sqrt(1000))


def test_stl_is_unbiased_away_from_the_posterior():
    m, x = linear_gaussian()
    exact = np.concatenate(exact_posterior_grads(m, x))
    assert_mean(draws(m, x, 100_000, "stl"), exact, "stl vs closed form")


def test_decoder_gradient_is_the_same_for_every_estimator():
    rng = np.random.default_rng(7)
    m = nv.VAE(6, (5,), 3, seed=1, dtype=np.float64, activation="tanh")
    x, eps = rng.random((4, 6)), rng.standard_normal((2, 4, 3))
    _, ref = m.loss_and_grads(x, eps=eps, n_samples=2)
    for e, b in [("score", None), ("score", est.LeaveOneOutBaseline()), ("blocked", None), ("stl", None)]:
        _, g = m.loss_and_grads(x, eps=eps, n_samples=2, estimator=e, baseline=b)
        for k in g:
            if k.startswith("dec."):
                assert np.array_equal(g[k], ref[k]), (e, k)


def test_blocked_training_collapses_the_posterior():
    """Without a path from the data term to the encoder, only the KL trains q: it is driven to
    the prior. Measured test KL (mean KL(q(z|x) || p(z)) over the 200 test digits, nats): 0.36 at
    initialisation, then 0.040, 0.0094, 0.0021 after epochs 1-3; with reparam 6.2, 50, 37."""
    from numpyvae.training import TrainConfig, new_run, train
    ds = nv.load_dataset("mnist-mini")
    kls = {}
    for e in ("blocked", "reparam"):
        m = nv.VAE(784, (32,), 4, activation="relu", seed=0)
        run = train(new_run(m, TrainConfig(epochs=3, batch_size=64, estimator=e)), ds.x_train[:1000],
                    ds.x_test[:200], log=lambda s: None, progress=False)
        kls[e] = run.history["test_kl"][-1]
    assert kls["blocked"] < 0.05 and kls["reparam"] > 5.0, kls
