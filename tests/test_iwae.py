"""The importance-weighted bound: its value against independent facts (k = 1 is the
entropy-form ELBO, it grows with k, it stays below the exact log p(x) of a linear-Gaussian
model and reaches it), and its hand-written gradient against finite differences."""

import numpy as np
import pytest
from scipy import stats

import numpyvae as nv
from numpyvae.distributions import log_normal_diag, log_standard_normal, normalized_importance_weights
from numpyvae.gradcheck import check_param_grads


def test_normalized_weights():
    log_w = np.array([[0.0, 1000.0], [np.log(3.0), 1000.0]])
    w = normalized_importance_weights(log_w, axis=0)
    np.testing.assert_allclose(w, [[0.25, 0.5], [0.75, 0.5]])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
@pytest.mark.parametrize("hidden,k", [((), 1), ((5,), 3), ((5, 4), 5)])
def test_iwae_gradients(likelihood, hidden, k, grad_report):
    rng = np.random.default_rng(0)
    m = nv.VAE(6, hidden, 3, likelihood=likelihood, obs_var=0.5, seed=1, dtype=np.float64, activation="tanh")
    for v in m.params.values():
        v += 0.2 * rng.standard_normal(v.shape)
    x = rng.random((4, 6)) if likelihood == "bernoulli" else rng.standard_normal((4, 6))
    eps = rng.standard_normal((k, 4, 3))
    _, g = m.iwae_loss_and_grads(x, k=k, eps=eps)
    grad_report(f"IWAE[{likelihood}]", check_param_grads(lambda: m.iwae_loss_and_grads(x, k=k, eps=eps)[0],
                                                         m.params, g))


def test_k1_is_the_entropy_form_elbo():
    """L_1 = log p(x|z) + log p(z) - log q(z|x) for one sample, computed here independently."""
    rng = np.random.default_rng(1)
    m = nv.VAE(6, (5,), 3, seed=0, dtype=np.float64, activation="tanh")
    x, eps = rng.random((4, 6)), rng.standard_normal((1, 4, 3))
    mu, logvar = m.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps[0]
    expected = (nv.bernoulli_log_likelihood(x, m.decoder_outputs(z)["out"]) + log_standard_normal(z)
                - log_normal_diag(z, mu, logvar))
    np.testing.assert_allclose(m.iwae_bound(x, k=1, eps=eps), expected, rtol=1e-12)
    loss, _ = m.iwae_loss_and_grads(x, k=1, eps=eps)
    assert loss == pytest.approx(-expected.mean(), rel=1e-12)


def test_bound_grows_with_k_and_matches_log_likelihood():
    rng = np.random.default_rng(2)
    m = nv.VAE(6, (5,), 2, seed=0, dtype=np.float64, activation="tanh")
    x = rng.random((200, 6))
    means = [np.mean(m.iwae_bound(x, k=k, rng=np.random.default_rng(k))) for k in (1, 5, 50)]
    assert means[0] < means[1] < means[2], means
    # log_likelihood with K samples is the K-sample bound: the same numbers for the same noise.
    np.testing.assert_allclose(m.log_likelihood(x[:7], n_importance=40, rng=np.random.default_rng(9)),
                               m.iwae_bound(x[:7], k=40, eps=np.random.default_rng(9).standard_normal((40, 7, 2))),
                               rtol=1e-12)


def test_iwae_bound_on_linear_gaussian():
    """Below the exact log p(x) for every k (in expectation; 4 SE), and the gap shrinks with k."""
    rng = np.random.default_rng(3)
    lam, D = 0.4, 5
    W, b = rng.standard_normal((1, D)), rng.standard_normal(D)
    m = nv.VAE(D, (), 1, likelihood="gaussian", obs_var=lam, seed=0, dtype=np.float64)
    m.params["dec.out.W"][...], m.params["dec.out.b"][...] = W, b
    m.params["enc.mu.W"][...] = 0.1                  # a poor encoder: the gap is large at k = 1
    x = rng.standard_normal((500, 1)) @ W + b + np.sqrt(lam) * rng.standard_normal((500, D))
    log_px = stats.multivariate_normal(b, W.T @ W + lam * np.eye(D)).logpdf(x)
    gaps = []
    for k in (1, 10, 100):
        g = log_px - m.iwae_bound(x, k=k, rng=np.random.default_rng(k))
        gaps.append(g.mean())
        assert g.mean() + 4 * g.std() / np.sqrt(len(g)) > 0, (k, g.mean())
    assert gaps[0] > gaps[1] > gaps[2], gaps


def test_iwae_training_improves_the_bound():
    """A few hundred IWAE steps with Adam raise the k = 5 bound on a small binary dataset."""
    rng = np.random.default_rng(4)
    x = (rng.random((256, 12)) < np.linspace(0.1, 0.9, 12)).astype(np.float64)
    m = nv.VAE(12, (16,), 2, seed=0, dtype=np.float64, activation="tanh")
    opt = nv.Adam(m.params, lr=1e-2)
    before = m.iwae_bound(x, k=5, rng=np.random.default_rng(0)).mean()
    for step in range(200):
        _, g = m.iwae_loss_and_grads(x, k=5, rng=rng)
        opt.step(g)
    after = m.iwae_bound(x, k=5, rng=np.random.default_rng(0)).mean()
    assert after > before + 1.0, (before, after)
