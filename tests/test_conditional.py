"""The conditional VAE: shapes, the label actually conditions both networks, gradients by
finite differences, and clear errors for bad labels."""

import numpy as np
import pytest

import numpyvae as nv
from numpyvae.conditional import ConditionalVAE, one_hot
from numpyvae.gradcheck import check_param_grads


def test_one_hot():
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        one_hot(np.array([3]), 3)
    with pytest.raises(ValueError, match="integer class labels"):
        one_hot(np.array([0.5]), 3)


@pytest.mark.parametrize("hidden", [(), (5,), (5, 4)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
def test_cvae_gradients(hidden, likelihood, grad_report):
    rng = np.random.default_rng(0)
    m = ConditionalVAE(6, 4, hidden, 3, likelihood=likelihood, seed=0, dtype=np.float64, activation="tanh")
    for v in m.params.values():
        v += 0.2 * rng.standard_normal(v.shape)
    x = rng.random((5, 6)) if likelihood == "bernoulli" else rng.standard_normal((5, 6))
    y, eps = np.array([0, 3, 1, 2, 3]), rng.standard_normal((2, 5, 3))
    _, g = m.loss_and_grads(x, eps=eps, n_samples=2, beta=0.8, y=y)
    grad_report(f"ConditionalVAE[{likelihood}]",
                check_param_grads(lambda: m.loss_and_grads(x, eps=eps, n_samples=2, beta=0.8, y=y)[0], m.params, g))
    eps3 = rng.standard_normal((3, 5, 3))
    _, g = m.iwae_loss_and_grads(x, k=3, eps=eps3, y=y)
    grad_report(f"ConditionalVAE[{likelihood},iwae]",
                check_param_grads(lambda: m.iwae_loss_and_grads(x, k=3, eps=eps3, y=y)[0], m.params, g))


def test_shapes_and_conditioning():
    rng = np.random.default_rng(1)
    m = ConditionalVAE(6, 10, (8,), 2, seed=0, dtype=np.float64, activation="tanh")
    assert m.params["enc.h0.W"].shape == (16, 8) and m.params["dec.h0.W"].shape == (12, 8)
    z = rng.standard_normal((3, 2))
    grid = m.class_grid(z)
    assert grid.shape == (3, 10, 6)
    assert not np.allclose(grid[:, 0], grid[:, 1]), "the label must change the decoded image"
    np.testing.assert_allclose(grid[:, 4], m.decode(z, y=np.full(3, 4)))
    x = rng.random((3, 6))
    mu0, _ = m.encode(x, y=np.zeros(3, int))
    mu1, _ = m.encode(x, y=np.ones(3, int))
    assert not np.allclose(mu0, mu1), "the label must reach the encoder"
    assert m.elbo(x, rng=rng, y=np.array([1, 2, 3])).shape == (3,)
    assert m.log_likelihood(x, n_importance=10, rng=rng, y=np.array([1, 2, 3])).shape == (3,)
    assert m.sample(np.arange(10), rng).shape == (10, 6)
    assert m.config["n_classes"] == 10


def test_log_p_x_given_z_uses_the_label():
    rng = np.random.default_rng(2)
    m = ConditionalVAE(6, 10, (8,), 2, seed=0, dtype=np.float64, activation="tanh")
    x, y = rng.random((3, 6)), np.array([1, 2, 3])
    eps = rng.standard_normal((4, 3, 2))
    mu, logvar = m.encode(x, y=y)
    z = mu + np.exp(0.5 * logvar) * eps
    log_p = m.log_p_x_given_z(x, z, y=y)
    assert log_p.shape == (4, 3)
    np.testing.assert_allclose(log_p.mean(axis=0), m.elbo_terms(x, eps=eps, n_samples=4, y=y)["rec"], rtol=1e-12)
    assert not np.allclose(log_p, m.log_p_x_given_z(x, z, y=np.array([4, 5, 6])))
    np.testing.assert_allclose(m.likelihood.mean(m.decoder_outputs(z[0], y=y)), m.decode(z[0], y=y))


def test_label_count_mismatch():
    m = ConditionalVAE(6, 3, (4,), 2, activation="tanh")
    with pytest.raises(ValueError, match="y has 2 labels but the batch has 3 rows"):
        m.elbo(np.zeros((3, 6)), rng=np.random.default_rng(0), y=np.array([0, 1]))


def test_one_mechanism_carries_the_labels():
    """Every method takes the labels as y=: a conditional model refuses to run without them, a plain
    VAE refuses them (labels it would silently ignore are a mistake)."""
    x, y, rng = np.zeros((3, 6)), np.array([0, 1, 2]), np.random.default_rng(0)
    cvae, vae = ConditionalVAE(6, 3, (4,), 2, activation="tanh"), nv.VAE(6, (4,), 2, activation="tanh")
    for call in (lambda m, **kw: m.elbo(x, rng=rng, **kw), lambda m, **kw: m.encode(x, **kw),
                 lambda m, **kw: m.iwae_bound(x, rng=rng, **kw), lambda m, **kw: m.decode(x[:, :2], **kw),
                 lambda m, **kw: m.log_likelihood(x, n_importance=2, rng=rng, **kw)):
        with pytest.raises(ValueError, match="needs the class labels: pass y="):
            call(cvae)
        with pytest.raises(ValueError, match="y \\(class labels\\) is for a ConditionalVAE; VAE is unconditional"):
            call(vae, y=y)
        call(cvae, y=y)
        call(vae)
