"""The discrete VAE (numpyvae.discrete) against the exact truth of enumeration.

A code of Z = 3 binary units has 8 states (27 for three 3-class variables), so every expectation
the estimators approximate can be computed exactly by summing over them: the ELBO, its gradient,
the K-sample bound and its gradient, log p(x). Three kinds of tests:

* deterministic pieces, in float64 against central differences (grad_report): the posterior
  families, the exact gradients (against finite differences of the exact objectives), the
  Gumbel-softmax gradient for fixed noise, and, for fixed noise, the surrogate functions whose
  gradients the score-type estimators and straight-through are (docs/discrete.md);
* statistical: an estimator's mean against the exact gradient. One loss_and_grads call on R
  stacked copies of one datapoint returns the mean of R independent estimates (the loss is a
  batch mean); M such calls give M independent means, whose spread gives the standard error of
  their average. Unbiased estimators must agree within Z_TOL = 5 standard errors on every
  coordinate: with M = 100 the z-score is t-distributed with 99 degrees of freedom,
  P(|t| > 5) = 2.5e-6, so over the <= 200 coordinates compared the chance of a false failure is
  below 5e-4 (the seeds are fixed, so a run either passes or fails for good). Measured worst
  |z| of the unbiased estimators: 1.1-3.4;
* the API of the contract, argument checks, float32.
"""

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

import numpyvae as nv
from numpyvae import discrete_estimators as de
from numpyvae.discrete_posteriors import BernoulliPosterior, CategoricalPosterior, log_softmax
from numpyvae.estimators import LeaveOneOutBaseline, leave_one_out_baseline
from numpyvae.gradcheck import check_param_grads, numerical_gradient, rel_error

Z_TOL = 5.0
LATENTS = [("bernoulli", 2), ("categorical", 3)]


def tiny(latent="bernoulli", C=2, likelihood="bernoulli", seed=0, D=8, Z=3, B=1):
    """A 8-5-[Z]-5-8 tanh model with its parameters moved off their initial values (so no
    gradient is zero by symmetry) and B binary datapoints (grey values for the Gaussians)."""
    rng = np.random.default_rng(seed)
    dm = nv.DiscreteVAE(D, (5,), Z, latent=latent, n_categories=C, likelihood=likelihood,
                        activation="tanh", seed=seed, dtype=np.float64)
    for v in dm.params.values():
        v += 0.5 * rng.standard_normal(v.shape)
    x = (rng.random((B, D)) > 0.5).astype(np.float64) if likelihood == "bernoulli" else rng.random((B, D))
    return dm, x


def flat(grads):
    return np.concatenate([g.ravel() for g in grads.values()])


def is_encoder(dm):
    return np.concatenate([np.full(v.size, k.startswith("enc.")) for k, v in dm.params.items()])


def batch_means(dm, x, estimator, M=100, R=1000, seed=1, **kw):
    """(M, P): M independent gradient estimates at the datapoint x (1, D), each the mean of R
    estimates, from one loss_and_grads call on R stacked copies of x."""
    rng = np.random.default_rng(seed)
    xr = np.repeat(x, R, axis=0)
    return np.array([flat(dm.loss_and_grads(xr, rng=rng, estimator=estimator, **kw)[1]) for _ in range(M)])


def z_scores(g, target):
    """(mean - target) / standard error per coordinate. Coordinates no noise reaches (standard
    error 0, e.g. first-layer weights of a pixel that is 0) must match exactly."""
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(g.shape[0])
    exact_zero = se == 0
    assert np.array_equal(mean[exact_zero], target[exact_zero])
    return np.where(exact_zero, 0.0, (mean - target) / np.where(exact_zero, 1.0, se))


def families():
    return [BernoulliPosterior(3), CategoricalPosterior(3, 4)]


def random_logits(post, rng, B=2, scale=2.0):
    return scale * rng.standard_normal((B,) + post.event_shape)


# ----------------------------------------------------------------------------- the families

@pytest.mark.parametrize("post", families(), ids=lambda p: p.name)
def test_log_prob_and_kl_match_their_definitions(post):
    """log q against the textbook sum of log-probabilities, the KL against sum_z q log(q / p)
    over every state, the states against a count."""
    rng = np.random.default_rng(0)
    omega = random_logits(post, rng)
    states = post.states(np.float64)
    assert states.shape == (post.n_states,) + post.event_shape
    assert len({s.tobytes() for s in states}) == post.n_states          # all distinct
    rho = post.probs(omega)
    if post.name == "bernoulli":
        textbook = np.sum(states[:, None] * np.log(rho) + (1 - states[:, None]) * np.log(1 - rho), axis=-1)
    else:
        textbook = np.sum(states[:, None] * np.log(np.exp(omega) / np.exp(omega).sum(-1, keepdims=True)), axis=(-2, -1))
    log_q = post.log_prob(omega, states[:, None])                        # (S, B)
    np.testing.assert_allclose(log_q, textbook, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_q).sum(0), 1.0, rtol=1e-12)
    kl = np.sum(np.exp(log_q) * (log_q - post.log_prior), axis=0)
    np.testing.assert_allclose(post.kl(omega), kl, rtol=1e-12)
    # per unit / variable: sum_k rho_k log(C rho_k), C = 2 classes (rho, 1 - rho) for a unit
    classes = np.stack([rho, 1 - rho], axis=-1) if post.name == "bernoulli" else rho
    np.testing.assert_allclose(post.kl_per_variable(omega),
                               np.sum(classes * np.log(post.n_categories * classes), axis=-1), rtol=1e-12)


@pytest.mark.parametrize("post", families(), ids=lambda p: p.name)
def test_extreme_logits_stay_finite(post):
    """|omega| = 1e4: log q finite, KL = Z log C (a deterministic unit against the uniform prior),
    its gradient 0; log_softmax never sees log 0."""
    omega = np.full((1,) + post.event_shape, -1e4)
    omega[..., 0] = 1e4
    z = post.mode(omega)[None]
    assert np.all(np.isfinite(post.log_prob(omega, z))) and abs(post.log_prob(omega, z)[0, 0]) < 1e-300
    np.testing.assert_allclose(post.kl(omega), -post.log_prior, rtol=1e-15)
    assert np.all(post.kl_grad(omega) == 0)
    assert np.all(np.isfinite(log_softmax(np.array([[1e300, -1e300, 0.0]]))))


@pytest.mark.parametrize("post", families(), ids=lambda p: p.name)
def test_score_kl_grad_and_relaxed_backward_against_finite_differences(post, grad_report):
    rng = np.random.default_rng(1)
    omega = random_logits(post, rng)
    L = 3
    noise = post.noise(L, 2, rng, np.float64)
    z = post.sample(omega, noise)
    w = rng.standard_normal((L, 2))
    # Eq. (H3): sum_l w_l d log q(z_l) / d omega, against finite differences of sum_l w_l log q(z_l)
    errors = {"score": rel_error(post.weighted_score(omega, z, w),
                                 numerical_gradient(lambda: np.sum(w * post.log_prob(omega, z)), omega))}
    np.testing.assert_allclose(post.weighted_score(omega, z, w),
                               np.sum(w.reshape(w.shape + (1,) * len(post.event_shape)) * post.score(omega, z), 0))
    errors["kl_grad"] = rel_error(post.kl_grad(omega), numerical_gradient(lambda: post.kl(omega).sum(), omega))
    dzt = rng.standard_normal(z.shape)
    for tau in (0.3, 2.0):
        zt = post.relaxed(omega, noise, tau)
        errors[f"relaxed_backward tau={tau}"] = rel_error(
            post.relaxed_backward(zt, dzt, tau),
            numerical_gradient(lambda: np.sum(post.relaxed(omega, noise, tau) * dzt), omega))
    grad_report(f"discrete_posteriors.{post.name}", errors)


@pytest.mark.parametrize("post", families(), ids=lambda p: p.name)
def test_perturbed_logits_sample_q_and_the_relaxation_tends_to_the_sample(post):
    """Eq. (H8): the frequency of every class over n = 200000 draws is within 5 binomial standard
    errors of rho (a wrong noise, e.g. Gumbel for the Bernoulli unit, is off by hundreds). Eq. (H15):
    at tau = 1e-3 the relaxed sample rounds to the exact one wherever the margin exceeds 1e-2."""
    rng = np.random.default_rng(2)
    omega = random_logits(post, rng, B=1, scale=1.0)
    n = 200_000
    noise = post.noise(n, 1, rng, np.float64)
    z = post.sample(omega, noise)
    freq, rho = z.mean(0), post.probs(omega)
    se = np.sqrt(rho * (1 - rho) / n)
    assert np.all(np.abs(freq - rho) < 5 * se), (freq - rho) / se
    zt = post.relaxed(omega, noise[:1000], 1e-3)
    if post.name == "bernoulli":
        clear = np.abs(omega + noise[:1000]) > 1e-2
    else:
        top2 = np.sort(omega + noise[:1000], axis=-1)[..., -2:]
        clear = np.broadcast_to((top2[..., 1] - top2[..., 0] > 1e-2)[..., None], zt.shape)
    np.testing.assert_allclose(zt[clear], z[:1000][clear], atol=1e-4)


# ----------------------------------------------------------------------------- exact truth

def brute_force_log_px_given_z(dm, x, z):
    """log p(x | z) for one code z by a forward pass written out here (tanh MLP, sigmoid, naive
    Bernoulli log-probabilities): independent of the package's decoder and likelihood code."""
    P = dm.params
    h = np.tanh(z.reshape(-1) @ P["dec.h0.W"] + P["dec.h0.b"])
    p = 1 / (1 + np.exp(-(h @ P["dec.out.W"] + P["dec.out.b"])))
    return float(np.sum(x * np.log(p) + (1 - x) * np.log(1 - p)))


def brute_force_q(dm, x, z):
    P = dm.params
    a = (np.tanh(x @ P["enc.h0.W"] + P["enc.h0.b"]) @ P["enc.logits.W"] + P["enc.logits.b"])
    if dm.posterior.name == "bernoulli":
        r = 1 / (1 + np.exp(-a))
        return float(np.prod(np.where(z == 1, r, 1 - r)))
    r = np.exp(a.reshape(z.shape))
    r /= r.sum(-1, keepdims=True)
    return float(np.prod(r[z == 1]))


@pytest.mark.parametrize("latent,C", LATENTS)
def test_exact_log_likelihood_and_elbo_against_a_brute_force_loop(latent, C):
    """A Python loop over the states with its own forward pass: log p(x) = log sum_z p(x|z) p(z),
    ELBO = sum_z q (log p(x|z) + log p(z) - log q), and the gap is the KL from q to the true posterior."""
    dm, x = tiny(latent, C, B=3)
    S = C ** 3
    exact_ll, exact_elbo = dm.exact_log_likelihood(x), dm.exact_elbo(x)
    for b in range(3):
        joint, q = [], []
        for s in range(S):
            digits = [(s // C ** (2 - j)) % C for j in range(3)]
            z = np.array(digits, float) if latent == "bernoulli" else np.eye(C)[digits]
            joint.append(math.exp(brute_force_log_px_given_z(dm, x[b], z)) / S)
            q.append(brute_force_q(dm, x[b], z))
        joint, q = np.array(joint), np.array(q)
        assert math.isclose(exact_ll[b], math.log(joint.sum()), rel_tol=1e-12)
        assert math.isclose(exact_elbo[b], float(np.sum(q * (np.log(joint) - np.log(q)))), rel_tol=1e-12)
        posterior = joint / joint.sum()
        gap = float(np.sum(q * np.log(q / posterior)))
        assert gap > 0.01 and math.isclose(exact_ll[b] - exact_elbo[b], gap, rel_tol=1e-9)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
@pytest.mark.parametrize("latent,C", LATENTS)
def test_exact_loss_and_grads_against_finite_differences(latent, C, likelihood, grad_report):
    """Eq. (H20), with beta = 0.7, against central differences of the enumerated objective."""
    dm, x = tiny(latent, C, likelihood, B=3)
    beta = 0.7
    loss, grads = dm.exact_loss_and_grads(x, beta=beta)
    grads = {k: v.copy() for k, v in grads.items()}

    def objective():
        return -np.mean(dm.exact_elbo(x) + (1 - beta) * dm.posterior.kl(dm.encode(x)))

    assert math.isclose(loss, objective(), rel_tol=1e-13)
    assert set(grads) == set(dm.params)
    grad_report(f"discrete.exact_loss_and_grads ({latent}, {likelihood})",
                check_param_grads(objective, dm.params, grads))


@pytest.mark.parametrize("latent,C", LATENTS)
def test_exact_iwae_bound_and_gradient(latent, C, grad_report):
    """Eq. (H22): k = 1 is the ELBO; k = 2 against finite differences; L_1 <= L_2 <= L_3 <= log p(x)."""
    dm, x = tiny(latent, C, B=2)
    l1, g1 = dm.exact_iwae_loss_and_grads(x, 1)
    l0, g0 = dm.exact_loss_and_grads(x)
    assert math.isclose(l1, l0, rel_tol=1e-13)
    assert max(rel_error(g1[k], g0[k]) for k in g0) < 1e-13
    l2, g2 = dm.exact_iwae_loss_and_grads(x, 2)
    g2 = {k: v.copy() for k, v in g2.items()}
    grad_report(f"discrete.exact_iwae_loss_and_grads ({latent})",
                check_param_grads(lambda: dm.exact_iwae_loss_and_grads(x, 2)[0], dm.params, g2))
    l3, _ = dm.exact_iwae_loss_and_grads(x, 3)
    assert -l1 < -l2 < -l3 < dm.exact_log_likelihood(x).mean()


def test_enumeration_in_chunks_equals_one_chunk():
    """The exact methods run the states chunk by chunk (bounded memory); 3 states per chunk must
    give the one-chunk numbers."""
    dm, x = tiny("categorical", 3, B=2)
    whole = dm.exact_iwae_loss_and_grads(x, 2), dm.exact_loss_and_grads(x), dm.exact_log_likelihood(x)
    dm.log_likelihood_chunk_size = lambda batch, n: 3
    assert len(dm._state_chunks(dm.posterior.states(np.float64), 2)) == 9
    chunked = dm.exact_iwae_loss_and_grads(x, 2), dm.exact_loss_and_grads(x), dm.exact_log_likelihood(x)
    for (la, ga), (lb, gb) in zip(whole[:2], chunked[:2]):
        assert math.isclose(la, lb, rel_tol=1e-13) and all(rel_error(ga[k], gb[k]) < 1e-13 for k in ga)
    np.testing.assert_allclose(whole[2], chunked[2], rtol=1e-13)


def test_exact_methods_refuse_more_than_2_to_the_16_states():
    x = np.zeros((1, 4))
    for kw in ({"latent_dim": 17}, {"latent_dim": 11, "latent": "categorical", "n_categories": 3}):
        dm = nv.DiscreteVAE(4, (3,), seed=0, dtype=np.float64, **kw)
        for method in (dm.exact_elbo, dm.exact_loss_and_grads, dm.exact_log_likelihood):
            with pytest.raises(ValueError, match="refused above 65536"):
                method(x)
    ok = nv.DiscreteVAE(4, (3,), 16, seed=0, dtype=np.float64)              # exactly 2**16: allowed
    assert ok.exact_log_likelihood(x).shape == (1,)
    with pytest.raises(ValueError, match="S\\^k = 8\\^6 tuples"):
        nv.DiscreteVAE(4, (3,), 3, seed=0, dtype=np.float64).exact_iwae_loss_and_grads(x, 6)


# ----------------------------------------------------------------------------- estimators, fixed noise

def fixed_noise(dm, L, B, seed=5):
    return dm.posterior.noise(L, B, np.random.default_rng(seed), np.float64)


@pytest.mark.parametrize("latent,C", LATENTS)
def test_gumbel_gradient_is_exact_for_fixed_noise(latent, C, grad_report):
    """Eq. (H17): for fixed noise the relaxed objective (relaxed_loss) is a smooth function of the
    parameters and "gumbel" returns its exact gradient. The loss "gumbel" returns is the discrete
    ELBO's: that of "score" with the same noise (the decoder at the exact z), not J_tau."""
    dm, x = tiny(latent, C, B=3)
    noise = fixed_noise(dm, 2, 3)
    for tau in (0.5, 2.0):
        def loss():
            return dm.relaxed_loss(x, n_samples=2, temperature=tau, beta=0.6, noise=noise)
        reported, grads, terms = dm.loss_and_grads(x, n_samples=2, estimator="gumbel", temperature=tau, beta=0.6,
                                                   noise=noise, return_terms=True)
        grads = {k: v.copy() for k, v in grads.items()}
        grad_report(f"discrete.gumbel ({latent})", check_param_grads(loss, dm.params, grads))
        score_loss, _, score_terms = dm.loss_and_grads(x, n_samples=2, estimator="score", beta=0.6, noise=noise,
                                                       return_terms=True)
        assert reported == score_loss and abs(reported - loss()) > 1e-3, (reported, score_loss, loss())
        assert all(np.array_equal(terms[k], score_terms[k]) for k in ("elbo", "rec", "kl"))
        np.testing.assert_allclose(-np.mean(terms["relaxed_elbo"] + 0.4 * terms["kl"]), loss(), rtol=1e-13)


def _codes_and_log_q(dm, x, noise):
    """The exact samples of the noise at the current parameters (then held fixed), and log q of
    given codes as a live function of the parameters."""
    z = dm.posterior.sample(dm.encode(x), noise)
    return z, (lambda: dm.posterior.log_prob(dm.encode(x), z))


@pytest.mark.parametrize("latent,C", LATENTS)
def test_score_gradient_is_the_gradient_of_its_surrogate(latent, C, grad_report):
    """Eq. (H10): with the samples z fixed, "score" (leave-one-out baseline, L = 3, beta = 0.6) is
    the exact gradient of  -1/(LB) sum [log p(x|z) + (log w_beta - c) log q(z|x)],  log w_beta and c
    held at their values."""
    dm, x = tiny(latent, C, B=2)
    L, B, beta = 3, 2, 0.6
    noise = fixed_noise(dm, L, B)
    z, log_q = _codes_and_log_q(dm, x, noise)
    signal = dm.log_p_x_given_z(x, z) + beta * (dm.posterior.log_prior - log_q())
    weight = signal - leave_one_out_baseline(signal)

    def surrogate():
        return -np.sum(dm.log_p_x_given_z(x, z) + weight * log_q()) / (L * B)

    _, grads = dm.loss_and_grads(x, n_samples=L, estimator="score", beta=beta, noise=noise,
                                 baseline=LeaveOneOutBaseline())
    grads = {k: v.copy() for k, v in grads.items()}
    grad_report(f"discrete.score ({latent})", check_param_grads(surrogate, dm.params, grads))


def trained_nvil_baseline(dm, x, steps=300):
    """An NVILBaseline that has learned from `steps` minibatches of 16 copies of x, then frozen."""
    bl = de.NVILBaseline(dm.input_dim, hidden=10, lr=1e-2, seed=0, dtype=np.float64)
    rng = np.random.default_rng(3)
    for _ in range(steps):
        dm.loss_and_grads(np.repeat(x, 16, 0), n_samples=2, rng=rng, estimator="nvil", baseline=bl)
    bl.frozen = True
    return bl


@pytest.mark.parametrize("latent,C", LATENTS)
def test_nvil_gradient_is_the_gradient_of_its_surrogate(latent, C, grad_report):
    """Eq. (H11): the score surrogate with the centred signal log w - c - c_psi(x) divided by s,
    the decoder's part unscaled. The baseline has learned (s > 1) and is frozen."""
    dm, x = tiny(latent, C)
    bl = trained_nvil_baseline(dm, x)
    assert bl.scale() > 1.5
    L, B = 2, 1
    noise = fixed_noise(dm, L, B)
    z, log_q = _codes_and_log_q(dm, x, noise)
    weight = (dm.log_p_x_given_z(x, z) + dm.posterior.log_prior - log_q() - bl.value(x, None)) / bl.scale()

    def surrogate():
        return -np.sum(dm.log_p_x_given_z(x, z) + weight * log_q()) / (L * B)

    _, grads = dm.loss_and_grads(x, n_samples=L, estimator="nvil", noise=noise, baseline=bl)
    grads = {k: v.copy() for k, v in grads.items()}
    grad_report(f"discrete.nvil ({latent})", check_param_grads(surrogate, dm.params, grads))


@pytest.mark.parametrize("latent,C", LATENTS)
def test_vimco_gradient_is_the_gradient_of_its_surrogate(latent, C, grad_report):
    """Eqs. (H13), (H14): with the K = 3 samples fixed, "vimco" is the exact gradient of
    -1/B sum [ L^(log w(z)) + sum_k (L^ - c_k) log q(z_k|x) ], L^ and c_k held at their values;
    the loss is -mean L^."""
    dm, x = tiny(latent, C, B=2)
    K, B = 3, 2
    noise = fixed_noise(dm, K, B)
    z, log_q = _codes_and_log_q(dm, x, noise)

    def bound():
        return nv.log_mean_exp(dm.log_p_x_given_z(x, z) + dm.posterior.log_prior - log_q(), axis=0)

    log_w = dm.log_p_x_given_z(x, z) + dm.posterior.log_prior - log_q()
    weight = bound() - de.vimco_baselines(log_w)

    def surrogate():
        return -np.sum(bound() + np.sum(weight * log_q(), axis=0)) / B

    loss, grads = dm.loss_and_grads(x, n_samples=K, estimator="vimco", noise=noise)
    assert math.isclose(loss, -np.mean(bound()), rel_tol=1e-13)
    grads = {k: v.copy() for k, v in grads.items()}
    grad_report(f"discrete.vimco ({latent})", check_param_grads(surrogate, dm.params, grads))


def test_vimco_baselines_leave_each_sample_out():
    """c_k replaces w_k by the geometric mean of the others: check against the formula with plain
    weights, and that c_k does not change when log w_k does."""
    log_w = np.log(np.array([[1.0, 2.0], [4.0, 0.5], [16.0, 8.0]]))
    c = de.vimco_baselines(log_w)
    w = np.exp(log_w)
    for k in range(3):
        others = np.delete(w, k, axis=0)
        np.testing.assert_allclose(c[k], np.log((others.sum(0) + np.exp(np.log(others).mean(0))) / 3), rtol=1e-14)
    moved = log_w.copy()
    moved[1] += 3.0
    np.testing.assert_allclose(de.vimco_baselines(moved)[1], c[1], rtol=1e-14)


@pytest.mark.parametrize("latent,C", LATENTS)
def test_straight_through_gradient_is_the_gradient_of_its_surrogate(latent, C, grad_report):
    """Eq. (H18): hard forward, relaxed backward is the gradient of
    -1/(LB) sum log p(x | z + zt(omega) - zt_0) + beta/B sum KL at the current parameters, zt_0 the
    relaxed sample held at its value (so the decoder reads z)."""
    dm, x = tiny(latent, C, B=2)
    L, B, tau, beta = 2, 2, 0.7, 0.6
    noise = fixed_noise(dm, L, B)
    z, _ = _codes_and_log_q(dm, x, noise)
    zt0 = dm.posterior.relaxed(dm.encode(x), noise, tau)

    def surrogate():
        zt = dm.posterior.relaxed(dm.encode(x), noise, tau)
        return (-np.sum(dm.log_p_x_given_z(x, z + zt - zt0)) / (L * B)
                + beta * np.mean(dm.posterior.kl(dm.encode(x))))

    loss, grads = dm.loss_and_grads(x, n_samples=L, estimator="straight-through", temperature=tau, beta=beta,
                                    noise=noise)
    assert math.isclose(loss, surrogate(), rel_tol=1e-13)
    grads = {k: v.copy() for k, v in grads.items()}
    grad_report(f"discrete.straight-through ({latent})", check_param_grads(surrogate, dm.params, grads))


def test_estimators_that_decode_the_exact_sample_share_its_loss_and_decoder_gradient():
    """score, nvil and straight-through read the same decoder at the same z: the same loss and the
    same decoder gradient, bit for bit; only the logits' gradient differs."""
    dm, x = tiny("categorical", 3, B=4)
    noise = fixed_noise(dm, 2, 4)
    runs = {e: dm.loss_and_grads(x, n_samples=2, estimator=e, noise=noise)
            for e in ("score", "nvil", "straight-through")}
    loss, g = runs["score"][0], {k: v.copy() for k, v in runs["score"][1].items()}
    for e, (l_e, g_e) in runs.items():
        assert l_e == loss and all(np.array_equal(g_e[k], g[k]) for k in g if k.startswith("dec."))
    assert not np.array_equal(runs["straight-through"][1]["enc.logits.W"], g["enc.logits.W"])


# ----------------------------------------------------------------------------- estimators, statistics

@pytest.mark.parametrize("latent,C", LATENTS)
def test_score_and_nvil_are_unbiased(latent, C):
    """Over 100000 draws (L = 2) each coordinate of the mean lies within Z_TOL standard errors of the
    exact gradient (Eq. (H20)). NVIL's encoder gradient is the loss's divided by s (Eq. (H11)), so it
    is compared after multiplying back. Measured worst |z|: 0.9-3.4."""
    dm, x = tiny(latent, C)
    _, exact = dm.exact_loss_and_grads(x)
    exact = flat(exact)
    z = z_scores(batch_means(dm, x, "score", n_samples=2), exact)
    assert np.max(np.abs(z)) < Z_TOL, np.round(z, 1)
    bl = trained_nvil_baseline(dm, x)
    g = batch_means(dm, x, "nvil", n_samples=2, baseline=bl)
    g[:, is_encoder(dm)] *= bl.scale()
    z = z_scores(g, exact)
    assert np.max(np.abs(z)) < Z_TOL, np.round(z, 1)


@pytest.mark.parametrize("latent,C", LATENTS)
def test_nvil_has_lower_variance_than_the_plain_score_function(latent, C):
    """Measured total variance of the encoder's gradient (one estimate, L = 2; NVIL's multiplied
    back by s): Bernoulli 12 against 175, categorical 31 against 230. Required: a factor 3."""
    dm, x = tiny(latent, C)
    bl = trained_nvil_baseline(dm, x)
    enc = is_encoder(dm)
    plain = batch_means(dm, x, "score", M=40, n_samples=2)[:, enc].var(0).sum()
    nvil = (batch_means(dm, x, "nvil", M=40, n_samples=2, baseline=bl)[:, enc] * bl.scale()).var(0).sum()
    assert nvil * 3 < plain, (nvil, plain)


@pytest.mark.parametrize("latent,C", LATENTS)
def test_vimco_is_unbiased_for_the_k_sample_bound(latent, C):
    """VIMCO with K = 2 against the exact gradient of the expected 2-sample bound, enumerated over
    all 8^2 (27^2) pairs of states (Eq. (H22)): within Z_TOL on every coordinate (measured worst
    |z| 2.4-3.0). The same draws are many standard errors from the ELBO's gradient: the test can
    tell the two targets apart."""
    dm, x = tiny(latent, C)
    _, bound_grad = dm.exact_iwae_loss_and_grads(x, 2)
    _, elbo_grad = dm.exact_loss_and_grads(x)
    g = batch_means(dm, x, "vimco", n_samples=2)
    z = z_scores(g, flat(bound_grad))
    assert np.max(np.abs(z)) < Z_TOL, np.round(z, 1)
    assert np.max(np.abs(z_scores(g, flat(elbo_grad)))) > 4 * Z_TOL


@pytest.mark.parametrize("estimator", ["gumbel", "straight-through"])
@pytest.mark.parametrize("latent,C", LATENTS)
def test_relaxed_estimators_are_biased_and_gumbel_trades_bias_for_variance(latent, C, estimator):
    """Against the exact ELBO gradient, at tau = 1, 0.5, 0.1 (L = 2, 100000 draws): both relaxed
    estimators are biased by many standard errors (measured worst |z| 50-580). For "gumbel" the
    bias (the norm of mean - exact) shrinks as tau falls, each step by more than 3 standard errors
    of the norm, while the encoder's total variance grows (measured relative bias 0.16, 0.07, 0.01
    and variance 0.29, 1.5, 16 for the Bernoulli code)."""
    dm, x = tiny(latent, C)
    _, exact = dm.exact_loss_and_grads(x)
    exact, enc = flat(exact), is_encoder(dm)
    bias, se_norm, var = [], [], []
    for tau in (1.0, 0.5, 0.1):
        g = batch_means(dm, x, estimator, n_samples=2, temperature=tau)
        assert np.max(np.abs(z_scores(g, exact))) > 4 * Z_TOL
        bias.append(np.linalg.norm(g.mean(0) - exact))
        se_norm.append(np.sqrt(np.sum(g.var(0, ddof=1)) / g.shape[0]))
        var.append(g[:, enc].var(0, ddof=1).sum())
    if estimator == "gumbel":
        assert bias[0] - 3 * se_norm[0] > bias[1] and bias[1] - 3 * se_norm[1] > bias[2], (bias, se_norm)
        assert var[0] < var[1] < var[2], var


@pytest.mark.parametrize("latent,C", LATENTS)
def test_monte_carlo_elbo_and_importance_weighted_estimate_against_enumeration(latent, C):
    """Over R = 1000 draws: the Monte Carlo ELBO's mean is the exact ELBO (within Z_TOL standard
    errors); the importance-weighted estimate with K = 1 is the same, and its mean gap below the exact
    log p(x) shrinks with K = 1, 10, 100, 1000 to under 0.005 nats (measured 0.001) while staying
    a lower bound in expectation."""
    dm, x = tiny(latent, C)
    R, rng = 1000, np.random.default_rng(7)
    xr = np.repeat(x, R, axis=0)
    exact_elbo, exact_ll = dm.exact_elbo(x)[0], dm.exact_log_likelihood(x)[0]
    for draws in (dm.elbo(xr, n_samples=1, rng=rng), dm.log_likelihood(xr, n_importance=1, rng=rng)):
        assert abs(draws.mean() - exact_elbo) < Z_TOL * draws.std(ddof=1) / math.sqrt(R)
    gaps = []
    for K in (1, 10, 100, 1000):
        ll = dm.log_likelihood(xr, n_importance=K, rng=rng)
        gaps.append(exact_ll - ll.mean())
        assert gaps[-1] > -Z_TOL * ll.std(ddof=1) / math.sqrt(R)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] and gaps[3] < 0.005, gaps


def test_log_likelihood_in_chunks_equals_one_chunk():
    dm, x = tiny("categorical", 3, B=3)
    one = dm.log_likelihood(x, n_importance=50, rng=np.random.default_rng(0), chunk_size=50)
    many = dm.log_likelihood(x, n_importance=50, rng=np.random.default_rng(0), chunk_size=7)
    np.testing.assert_allclose(one, many, rtol=1e-13)


def test_relaxed_kl_of_maddison_et_al_does_not_depend_on_the_temperature():
    """docs/discrete.md, section 9: with the posterior and prior relaxed at the same temperature, the
    KL between the binary Concrete densities equals KL(Logistic(omega, 1) || Logistic(0, 1)) for every
    tau (0.626 nats at omega = 2), above the discrete KL (0.328 nats). Monte Carlo at tau = 1 and 0.5
    (200000 draws) against the integral."""
    omega = 2.0
    exact = integrate.quad(lambda t: stats.logistic.pdf(t, loc=omega)
                           * (stats.logistic.logpdf(t, loc=omega) - stats.logistic.logpdf(t)), -60, 60)[0]
    discrete = BernoulliPosterior(1).kl(np.array([[omega]]))[0]
    assert abs(exact - 0.626) < 1e-3 and abs(discrete - 0.328) < 1e-3

    def log_density(y, w, tau):     # binary Concrete (Maddison et al. 2017)
        return (math.log(tau) + w - (tau + 1) * (np.log(y) + np.log1p(-y))
                - 2 * np.logaddexp(w - tau * np.log(y), -tau * np.log1p(-y)))

    nu = np.random.default_rng(0).logistic(size=200_000)
    for tau in (1.0, 0.5):
        y = 1 / (1 + np.exp(-(omega + nu) / tau))
        ok = (y > 1e-12) & (y < 1 - 1e-12)
        d = (log_density(y, omega, tau) - log_density(y, 0.0, tau))[ok]
        assert abs(d.mean() - exact) < Z_TOL * d.std() / math.sqrt(d.size)


# ----------------------------------------------------------------------------- API and contract

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("latent,C", LATENTS)
def test_names_shapes_dtypes_and_config(latent, C, dtype):
    dm = nv.DiscreteVAE(12, (7, 6), 4, latent=latent, n_categories=C, likelihood="gaussian-learned",
                        activation="relu", seed=3, dtype=dtype)
    width = 4 * (C if latent == "categorical" else 1)
    assert list(dm.params) == ["enc.h0.W", "enc.h0.b", "enc.h1.W", "enc.h1.b", "enc.logits.W", "enc.logits.b",
                               "dec.h0.W", "dec.h0.b", "dec.h1.W", "dec.h1.b", "dec.out.W", "dec.out.b",
                               "dec.logvar.W", "dec.logvar.b"]
    assert dm.params["enc.logits.W"].shape == (6, width) and dm.params["dec.h0.W"].shape == (width, 6)
    assert dm.num_params() == sum(v.size for v in dm.params.values())
    assert all(v.dtype == dtype for v in dm.params.values())
    again = nv.DiscreteVAE(**json.loads(json.dumps(dm.config)))
    assert all(np.array_equal(again.params[k], v) for k, v in dm.params.items())
    assert repr(dm).startswith("DiscreteVAE(12-7-6-[4") and "parameters" in repr(dm)
    x = np.random.default_rng(0).random((5, 12)).astype(dtype)
    rng = np.random.default_rng(1)
    assert dm.encode(x).shape == (5,) + dm.posterior.event_shape
    assert dm.decode(dm.posterior.mode(dm.encode(x))).shape == (5, 12)
    assert dm.decode(dm.posterior.mode(dm.encode(x)).reshape(5, -1)).shape == (5, 12)    # flat codes
    assert dm.reconstruct(x).shape == (5, 12) and dm.sample(3, rng).shape == (3, 12)
    for est in de.ESTIMATORS:
        loss, grads, terms = dm.loss_and_grads(x, n_samples=2, rng=rng, estimator=est, temperature=0.5,
                                               return_terms=True)
        assert np.isfinite(loss) and set(grads) == set(dm.params)
        assert all(g.dtype == dtype and g.shape == dm.params[k].shape and np.all(np.isfinite(g))
                   for k, g in grads.items())
        assert set(terms) >= {"elbo", "rec", "kl"} and all(t.dtype == dtype for t in terms.values())
    for out in (dm.elbo(x, 2, rng), dm.log_likelihood(x, 20, rng), dm.exact_elbo(x), dm.exact_log_likelihood(x)):
        assert out.shape == (5,) and out.dtype == dtype and np.all(np.isfinite(out))


def test_bad_arguments_name_the_argument():
    dm, x = tiny()
    rng = np.random.default_rng(0)
    cases = [
        (lambda: nv.DiscreteVAE(8, latent="gaussian"), ValueError, "unknown latent"),
        (lambda: nv.DiscreteVAE(8, n_categories=3), ValueError, "n_categories applies to latent='categorical'"),
        (lambda: nv.DiscreteVAE(8, latent="categorical", n_categories=1), ValueError, "n_categories must be"),
        (lambda: dm.loss_and_grads(x, rng=rng, estimator="reinforce"), ValueError, "unknown estimator"),
        (lambda: dm.loss_and_grads(x, rng=rng, estimator="gumbel", temperature=0), ValueError, "temperature"),
        (lambda: dm.loss_and_grads(x, rng=rng, estimator="vimco"), ValueError, "n_samples >= 2"),
        (lambda: dm.loss_and_grads(x, n_samples=2, rng=rng, estimator="vimco", beta=0.5), ValueError, "beta"),
        (lambda: dm.loss_and_grads(x, rng=rng, estimator="gumbel", baseline=LeaveOneOutBaseline()),
         ValueError, "takes no baseline"),
        (lambda: dm.loss_and_grads(x, rng=rng, estimator="nvil", baseline=LeaveOneOutBaseline()),
         TypeError, "NVILBaseline"),
        (lambda: dm.loss_and_grads(x, rng=rng, estimator="score", baseline="loo"), TypeError, "baseline"),
        (lambda: dm.loss_and_grads(x, estimator="score"), ValueError, "stochastic"),
        (lambda: dm.loss_and_grads(x, n_samples=2, noise=np.zeros((1, 1, 3))), ValueError, "noise must have shape"),
        (lambda: dm.loss_and_grads(x, n_samples=1, noise=np.full((1, 1, 3), np.nan)), ValueError, "noise"),
        (lambda: dm.elbo(np.zeros((1, 7)), rng=rng), ValueError, "x must have 8 columns"),
        (lambda: dm.elbo(x * 2, rng=rng), ValueError, "x must lie in"),
        (lambda: dm.decode(np.zeros((2, 4))), ValueError, "z must have 3 columns"),
        (lambda: dm.sample(0, rng), ValueError, "n must be"),
        (lambda: dm.log_likelihood(x, n_importance=0, rng=rng), ValueError, "n_importance"),
        (lambda: dm.exact_iwae_loss_and_grads(x, 0), ValueError, "k must be"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_nvil_default_baseline_learns_and_its_state_round_trips():
    dm, x = tiny()
    xr = np.repeat(x, 8, axis=0)
    rng = np.random.default_rng(0)
    dm.loss_and_grads(xr, n_samples=2, rng=rng, estimator="nvil")
    bl = dm.nvil_baseline
    first = bl.value(x, None).copy()
    for _ in range(20):
        dm.loss_and_grads(xr, n_samples=2, rng=rng, estimator="nvil")
    assert dm.nvil_baseline is bl and bl.var is not None and not np.allclose(bl.value(x, None), first)
    copy = de.NVILBaseline(dm.input_dim, seed=9, dtype=np.float64)
    copy.load_state(json.loads(json.dumps({"scalars": bl.state()["scalars"]})) | {"arrays": bl.state()["arrays"]})
    assert copy.scale() == bl.scale() and np.array_equal(copy.value(x, None), bl.value(x, None))
    assert bl.state()["scalars"]["type"] == "nvil"


def test_elbo_terms_with_the_logits_given_equal_elbo_terms_encoding_them():
    model = nv.DiscreteVAE(12, (8,), 3, latent="categorical", n_categories=4, seed=0, dtype=np.float64)
    x = (np.random.default_rng(0).random((5, 12)) < 0.5).astype(np.float64)
    noise = model.posterior.noise(2, 5, np.random.default_rng(1), np.float64)
    given = model.elbo_terms(x, n_samples=2, noise=noise, omega=model.encode(x))
    own = model.elbo_terms(x, n_samples=2, noise=noise)
    for key in own:
        np.testing.assert_array_equal(given[key], own[key])
    with pytest.raises(ValueError, match="omega must have shape"):
        model.elbo_terms(x, n_samples=2, noise=noise, omega=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="omega contains NaN"):
        model.elbo_terms(x, n_samples=2, noise=noise, omega=np.full((5, 3, 4), np.nan))
