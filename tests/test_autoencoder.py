"""Autoencoders: every parameter gradient against finite differences, the loss against scipy,
the corruption's statistics, training, the denoising effect on real digits, the figures, and
clear errors for bad input."""

import itertools
import json
import math
import os

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats
from scipy.special import expit

import numpyvae as nv
from numpyvae.autoencoder import Autoencoder, check_noise, corrupt
from numpyvae.lab.autoencoders import (
    aggregate_posterior_gaussian, compare_autoencoders, fit_code_gaussian, mean_reconstruction_loss, plot_denoising,
    plot_random_codes, prior_mismatch, train_autoencoder,
)
from numpyvae.gradcheck import check_param_grads

from conftest import randomise_biases, relu_margin

D, Z, B = 6, 3, 4


def make_targets(loss, rng, batch=B, width=D):
    if loss == "bernoulli":
        return rng.random((batch, width))          # grey values in [0, 1]
    return rng.standard_normal((batch, width))


def pooled_digits(x):
    """28 x 28 digits averaged over 2 x 2 blocks to 14 x 14 (196 pixels): still digits, and
    training on them is several times faster, which keeps the training tests short."""
    return x.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196)


@pytest.fixture(scope="module")
def mnist():
    return nv.load_dataset("mnist-mini")


def assert_png(path, min_size=100):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= min_size and img.shape[1] >= min_size, img.shape
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if not f.endswith((".png", ".json"))]
    assert leftovers == [], leftovers
    return img


# ----------------------------------------------------------------- gradient checks

NOISES = [None, ("masking", 0.4), ("gaussian", 0.3)]
GRID = list(itertools.product(["bernoulli", "gaussian"], [(), (5,), (5, 4)], NOISES))


@pytest.mark.parametrize("case", range(len(GRID)),
                         ids=[f"{l}-{h}-{n[0] if n else 'plain'}" for l, h, n in GRID])
def test_autoencoder_gradients(case, grad_report):
    loss, hidden, noise = GRID[case]
    rng = np.random.default_rng(case)
    model = Autoencoder(D, hidden, Z, activation="tanh", loss=loss, noise=noise, seed=1, dtype=np.float64)
    randomise_biases(model, rng)
    x = make_targets(loss, rng)
    # A fixed corruption: the finite differences must see the same x~ on every evaluation.
    x_noisy = None if noise is None else corrupt(x, noise, np.random.default_rng(100 + case))
    _, grads = model.loss_and_grads(x, x_noisy=x_noisy)
    errors = check_param_grads(lambda: model.loss_and_grads(x, x_noisy=x_noisy)[0], model.params, grads)
    grad_report(f"autoencoder[{loss}, {'plain' if noise is None else noise[0]}]", errors)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softplus"])
def test_autoencoder_gradients_each_activation(activation, grad_report):
    rng = np.random.default_rng(21)
    model = Autoencoder(D, (5, 4), Z, activation=activation, noise=("masking", 0.3), seed=2, dtype=np.float64)
    randomise_biases(model, rng)
    x = make_targets("bernoulli", rng)
    x_noisy = corrupt(x, model.noise, rng)
    _, grads = model.loss_and_grads(x, x_noisy=x_noisy)
    if activation == "relu":
        assert relu_margin(model) > 1e-4, "data too close to a ReLU kink for finite differences"
    errors = check_param_grads(lambda: model.loss_and_grads(x, x_noisy=x_noisy)[0], model.params, grads)
    grad_report(f"autoencoder[activation={activation}]", errors)


def test_gradient_check_catches_a_wrong_backward_pass():
    """The check above can fail: halve one gradient and it reports an error of 1/2."""
    rng = np.random.default_rng(22)
    model = Autoencoder(D, (5,), Z, activation="tanh", seed=3, dtype=np.float64)
    x = make_targets("bernoulli", rng)
    _, grads = model.loss_and_grads(x)
    grads["enc.code.W"] = grads["enc.code.W"] * 0.5
    errors = check_param_grads(lambda: model.loss_and_grads(x)[0], model.params, grads)
    assert errors["enc.code.W"] == pytest.approx(0.5, rel=1e-4)
    assert max(v for k, v in errors.items() if k != "enc.code.W") < 1e-6


# ----------------------------------------------------------------- the loss

def reference_logits(model, x):
    """The decoder output a = g(f(x)) written out with plain NumPy from the parameters
    (tanh units), without the layer classes."""
    h = x
    for i in range(len(model.hidden_dims)):
        h = np.tanh(h @ model.params[f"enc.h{i}.W"] + model.params[f"enc.h{i}.b"])
    h = h @ model.params["enc.code.W"] + model.params["enc.code.b"]
    for i in range(len(model.hidden_dims)):
        h = np.tanh(h @ model.params[f"dec.h{i}.W"] + model.params[f"dec.h{i}.b"])
    return h @ model.params["dec.out.W"] + model.params["dec.out.b"]


@pytest.mark.parametrize("denoising", [False, True])
def test_bernoulli_loss_matches_scipy(denoising):
    rng = np.random.default_rng(30)
    model = Autoencoder(D, (5, 4), Z, activation="tanh", seed=4, dtype=np.float64)
    randomise_biases(model, rng)
    x = (rng.random((7, D)) < 0.4).astype(np.float64)       # binary targets
    x_noisy = corrupt(x, ("masking", 0.5), rng) if denoising else None
    a = reference_logits(model, x if x_noisy is None else x_noisy)
    expected = -np.mean(np.sum(stats.bernoulli.logpmf(x, expit(a)), axis=1))
    loss, _ = model.loss_and_grads(x, x_noisy=x_noisy)
    assert loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(model.reconstruction_loss(x, x_noisy=x_noisy),
                               -np.sum(stats.bernoulli.logpmf(x, expit(a)), axis=1), rtol=1e-12)


def test_gaussian_loss_matches_scipy():
    rng = np.random.default_rng(31)
    model = Autoencoder(D, (5,), Z, activation="tanh", loss="gaussian", seed=5, dtype=np.float64)
    randomise_biases(model, rng)
    x = rng.standard_normal((7, D))
    expected = -np.mean(np.sum(stats.norm.logpdf(x, loc=reference_logits(model, x), scale=1.0), axis=1))
    assert model.loss_and_grads(x)[0] == pytest.approx(expected, rel=1e-12)
    # ... which is the squared error up to the constant D/2 log(2 pi).
    sq = 0.5 * np.mean(np.sum((x - model.reconstruct(x)) ** 2, axis=1))
    assert expected - sq == pytest.approx(0.5 * D * math.log(2 * math.pi), rel=1e-12)


def test_decode_reconstruct_and_names():
    rng = np.random.default_rng(32)
    model = Autoencoder(D, (5, 4), Z, activation="tanh", seed=6, dtype=np.float64)
    randomise_biases(model, rng)
    x = rng.random((3, D))
    assert model.encode(x).shape == (3, Z)
    np.testing.assert_allclose(model.decode(model.encode(x)), expit(reference_logits(model, x)), rtol=1e-12)
    np.testing.assert_array_equal(model.reconstruct(x), model.decode(model.encode(x)))
    assert sorted(model.params) == sorted(
        ["enc.h0.W", "enc.h0.b", "enc.h1.W", "enc.h1.b", "enc.code.W", "enc.code.b",
         "dec.h0.W", "dec.h0.b", "dec.h1.W", "dec.h1.b", "dec.out.W", "dec.out.b"])
    assert model.params["enc.h0.W"].shape == (D, 5) and model.params["dec.h0.W"].shape == (Z, 4)
    _, grads = model.loss_and_grads(x)
    assert {k: v.shape for k, v in grads.items()} == {k: v.shape for k, v in model.params.items()}
    # params are live: shifting the output bias shifts every logit
    before = reference_logits(model, x)
    model.params["dec.out.b"] += 1.0
    np.testing.assert_allclose(reference_logits(model, x), before + 1.0)


def test_float32_end_to_end():
    rng = np.random.default_rng(33)
    model = Autoencoder(D, (5,), Z, noise=("gaussian", 0.2), seed=0)   # float32 by default
    loss, grads = model.loss_and_grads(rng.random((B, D)), rng=rng)
    assert isinstance(loss, float) and math.isfinite(loss)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert model.reconstruct(rng.random((B, D))).dtype == np.float32


def test_denoising_draws_its_corruption_from_rng():
    rng = np.random.default_rng(34)
    x = rng.random((B, D))
    dae = Autoencoder(D, (5,), Z, activation="tanh", noise=("masking", 0.5), seed=0, dtype=np.float64)
    drawn, _ = dae.loss_and_grads(x, rng=np.random.default_rng(7))
    fixed, _ = dae.loss_and_grads(x, x_noisy=corrupt(x, dae.noise, np.random.default_rng(7)))
    other, _ = dae.loss_and_grads(x, rng=np.random.default_rng(8))
    assert drawn == fixed and drawn != other
    # the target stays clean: x_noisy = x gives the plain autoencoder's loss
    ae = Autoencoder(D, (5,), Z, activation="tanh", seed=0, dtype=np.float64)
    assert dae.loss_and_grads(x, x_noisy=x)[0] == ae.loss_and_grads(x)[0]
    # a plain autoencoder is deterministic: an rng changes nothing
    assert ae.loss_and_grads(x, rng=np.random.default_rng(9))[0] == ae.loss_and_grads(x)[0]


# ----------------------------------------------------------------- corruption

def test_masking_zeroes_about_p_of_the_entries():
    """Each entry is zeroed independently with probability p, so the zeroed fraction of N
    entries has mean p and standard deviation sqrt(p (1 - p) / N). With N = 200 * 784 and
    p = 0.3 that is 0.0012; the test allows 5 of them (a false failure about once in 2e6 runs).
    The entries of x are all > 0, so an entry is 0 exactly when it was masked."""
    rng = np.random.default_rng(40)
    x = rng.uniform(0.1, 1.0, size=(200, 784))
    for p in (0.3, 0.7):
        xt = corrupt(x, ("masking", p), rng)
        masked = xt == 0
        sd = math.sqrt(p * (1 - p) / x.size)
        assert abs(masked.mean() - p) < 5 * sd, (masked.mean(), p, sd)
        np.testing.assert_array_equal(xt[~masked], x[~masked])   # the rest is untouched
    assert np.array_equal(corrupt(x, ("masking", 0.0), rng), x)


def test_gaussian_noise_has_the_stated_std():
    """x~ - x should be N(0, std^2) per entry. Over N entries the sample mean has standard
    error std / sqrt(N) and the sample std about std / sqrt(2 N); 5 of each are allowed."""
    rng = np.random.default_rng(41)
    x = rng.random((200, 784))
    std = 0.4
    e = corrupt(x, ("gaussian", std), rng) - x
    n = e.size
    assert abs(e.mean()) < 5 * std / math.sqrt(n)
    assert abs(e.std() - std) < 5 * std / math.sqrt(2 * n)


def test_corrupt_keeps_shape_and_dtype_and_copies():
    rng = np.random.default_rng(42)
    for dtype in (np.float32, np.float64):
        x = rng.random((3, 5)).astype(dtype)
        for noise in (None, ("masking", 0.5), ("gaussian", 0.1)):
            xt = corrupt(x, noise, rng)
            assert xt.shape == x.shape and xt.dtype == dtype and xt is not x


# ----------------------------------------------------------------- training

def test_training_reduces_the_loss(mnist):
    x = pooled_digits(mnist.x_train[:300])
    x_test = pooled_digits(mnist.x_test[:200])
    model = Autoencoder(196, (32,), 8, noise=("masking", 0.25), seed=0)
    before = mean_reconstruction_loss(model, x_test)
    history = train_autoencoder(model, x, epochs=3, batch_size=32, lr=3e-3, log=None, x_test=x_test)
    after = mean_reconstruction_loss(model, x_test)
    # measured: 140 -> 82 nats on the clean test digits (ratio 0.58)
    assert after < 0.75 * before, (before, after)
    assert history["epoch"] == [1, 2, 3] and len(history["test_loss"]) == 3
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_training_is_reproducible_and_logs():
    rng = np.random.default_rng(43)
    x = rng.random((40, D))
    lines, runs = [], []
    for _ in range(2):
        model = Autoencoder(D, (5,), Z, noise=("masking", 0.5), seed=1)
        runs.append(train_autoencoder(model, x, epochs=2, batch_size=16, seed=3, log=lines.append))
    assert runs[0]["train_loss"] == runs[1]["train_loss"]
    assert runs[0]["test_loss"] == [None, None]
    assert len(lines) == 4 and lines[0].startswith("epoch   1/2")


def test_denoising_autoencoder_reconstructs_corrupted_digits_better(mnist):
    """Same architecture, initialisation and minibatches; only the DAE sees noise in training.
    On test digits corrupted with Gaussian noise (std 1.0) the plain AE, never having seen such
    inputs, does much worse. Measured on 14 x 14 digits, 1000 training images, 6 epochs:
    AE 96 to 109 nats, DAE 55 to 56 nats over seeds 0, 1, 2 (ratio 1.7 to 2.0); the test
    asks for a ratio above 1.4."""
    noise = ("gaussian", 1.0)
    x = pooled_digits(mnist.x_train[:1000])
    x_test = pooled_digits(mnist.x_test[:300])
    x_test_noisy = corrupt(x_test, noise, np.random.default_rng(7))
    losses = {}
    for name, model_noise in (("ae", None), ("dae", noise)):
        model = Autoencoder(196, (64,), 16, noise=model_noise, seed=0)
        train_autoencoder(model, x, epochs=6, batch_size=32, lr=3e-3, seed=0, log=None)
        losses[name] = mean_reconstruction_loss(model, x_test, x_test_noisy)
    assert losses["ae"] > 1.4 * losses["dae"], losses


# ----------------------------------------------------------------- codes and the prior

def test_fit_code_gaussian_and_prior_mismatch():
    rng = np.random.default_rng(50)
    codes = rng.standard_normal((500, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -2.0]
    m, S = fit_code_gaussian(codes)
    np.testing.assert_allclose(m, codes.mean(axis=0))
    np.testing.assert_allclose(S, np.cov(codes.T))
    assert prior_mismatch(np.zeros(4), np.eye(4)) == pytest.approx(0.0, abs=1e-12)
    # diagonal S = diag(s): KL(N(0, I) || N(m, S)) = 1/2 sum(1/s + m^2/s - 1 + log s)
    mean, s = np.array([1.0, 0.0, -2.0]), np.array([1.0, 4.0, 0.25])
    expected = 0.5 * np.sum(1 / s + mean ** 2 / s - 1 + np.log(s))
    assert prior_mismatch(mean, np.diag(s)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_code_gaussian(codes[:1])


def test_aggregate_posterior_gaussian_matches_sampled_codes():
    """Mean and covariance of z drawn from the mixture 1/N sum_n q(z | x_n), estimated from
    M = 40000 draws, agree with the law-of-total-covariance formula. Entries of S are O(1)
    here, and their sampling error about sqrt(2 / M) = 0.007; the test allows 0.05."""
    rng = np.random.default_rng(51)
    vae = nv.VAE(D, (5,), Z, seed=0, dtype=np.float64, activation="tanh")
    for k, v in vae.params.items():         # spread the posteriors out, so both parts of S matter
        if k.startswith("enc.logvar"):
            v[:] = 0.0
    x = rng.random((200, D))
    m, S = aggregate_posterior_gaussian(vae, x)
    mu, logvar = vae.encode(x)
    z = (mu + np.exp(0.5 * logvar) * rng.standard_normal((200, 200, Z))).reshape(-1, Z)
    np.testing.assert_allclose(m, z.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(S, np.cov(z.T), atol=0.05)
    assert np.all(np.diag(S) > np.diag(np.cov(mu.T)))       # the posterior variance adds spread


# ----------------------------------------------------------------- figures

IMAGE = (6, 6)


@pytest.fixture(scope="module")
def small_models():
    d = IMAGE[0] * IMAGE[1]
    ae = Autoencoder(d, (8,), 3, seed=0)
    dae = Autoencoder(d, (8,), 3, noise=("masking", 0.5), seed=1)
    vae = nv.VAE(d, (8,), 3, seed=2, activation="tanh")
    return ae, dae, vae


def test_plot_random_codes_writes_png(tmp_path, small_models):
    ae, _, vae = small_models
    x = np.random.default_rng(60).random((50, ae.input_dim))
    for name, x_train in (("two.png", None), ("three.png", x)):
        path = plot_random_codes(ae, vae, tmp_path / name, np.random.default_rng(0), n=12,
                                 image_shape=IMAGE, x_train=x_train)
        assert_png(path)
    # the third panel makes the figure wider
    assert imread(tmp_path / "three.png").shape[1] > imread(tmp_path / "two.png").shape[1]


def test_plot_denoising_writes_png(tmp_path, small_models):
    ae, dae, _ = small_models
    x = np.random.default_rng(61).random((20, ae.input_dim))
    for noise in (("masking", 0.5), ("gaussian", 0.5)):
        path = plot_denoising(dae, ae, x, tmp_path / f"{noise[0]}.png", np.random.default_rng(0),
                              noise=noise, n=5, image_shape=IMAGE)
        assert_png(path)


def test_compare_autoencoders_quick(tmp_path, mnist):
    data = nv.Dataset(name="tiny", x_train=pooled_digits(mnist.x_train[:200]), y_train=None,
                      x_test=pooled_digits(mnist.x_test[:100]), y_test=None, image_shape=(14, 14))
    r = compare_autoencoders(data, tmp_path, epochs=1, quick=True, log=None, hidden_dims=(16,), code_dim=4)
    for key in ("ae_test_loss_clean", "ae_test_loss_corrupted", "dae_test_loss_clean", "dae_test_loss_corrupted",
                "vae_test_loss_at_mean", "ae_prior_mismatch", "vae_prior_mismatch"):
        assert math.isfinite(r[key]) and r[key] >= 0, key
    assert r["epochs"] == 1 and r["n_train"] == 200 and r["noise"] == ["masking", 0.5]
    assert_png(r["random_codes_png"])
    assert_png(r["denoising_png"])
    with open(tmp_path / "autoencoders.json") as f:
        assert json.load(f)["ae_test_loss_clean"] == r["ae_test_loss_clean"]


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize("noise, match", [
    (("blur", 0.1), "unknown noise kind"),
    (("masking", 1.0), "0 <= p < 1"),
    (("masking", -0.1), "0 <= p < 1"),
    (("gaussian", -1.0), ">= 0"),
    (("gaussian", float("nan")), ">= 0"),
    (("masking", True), "must be a number"),
    (("masking", "0.5"), "must be a number"),
    ("masking", "noise must be None"),
    (("masking",), "noise must be None"),
    (0.5, "noise must be None"),
])
def test_bad_noise_spec_raises(noise, match):
    with pytest.raises(ValueError, match=match):
        check_noise(noise)
    with pytest.raises(ValueError, match=match):
        Autoencoder(D, (5,), Z, noise=noise)
    with pytest.raises(ValueError, match=match):
        corrupt(np.zeros((2, D)), noise, np.random.default_rng(0))


def test_bad_input_raises():
    rng = np.random.default_rng(70)
    ae = Autoencoder(D, (5,), Z, seed=0)
    dae = Autoencoder(D, (5,), Z, noise=("masking", 0.5), seed=0)
    x = rng.random((B, D))
    with pytest.raises(ValueError, match=f"must have {D} columns"):
        ae.loss_and_grads(x[:, :-1])
    with pytest.raises(ValueError, match="must be 2-D"):
        ae.encode(x[0])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ae.loss_and_grads(bad)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        ae.loss_and_grads(x + 1.0)
    with pytest.raises(ValueError, match="pass rng="):
        dae.loss_and_grads(x)
    with pytest.raises(TypeError, match="Generator"):
        dae.loss_and_grads(x, rng=0)
    with pytest.raises(ValueError, match="x_noisy must have the shape of x"):
        dae.loss_and_grads(x, x_noisy=x[:2])
    with pytest.raises(ValueError, match="NaN"):
        dae.reconstruction_loss(x, x_noisy=bad)
    with pytest.raises(ValueError, match=f"must have {Z} columns"):
        ae.decode(np.zeros((2, Z + 1)))
    with pytest.raises(ValueError, match="unknown loss"):
        Autoencoder(D, loss="gaussian-learned")
    with pytest.raises(ValueError, match="unknown activation"):
        Autoencoder(D, activation="swish")
    with pytest.raises(TypeError, match="dtype"):
        Autoencoder(D, dtype=np.float16)
    with pytest.raises(ValueError, match="code_dim"):
        Autoencoder(D, code_dim=0)
    with pytest.raises(ValueError, match="epochs"):
        train_autoencoder(ae, x, epochs=0, log=None)
    with pytest.raises(ValueError, match="needs a corruption"):
        plot_denoising(dae, ae, x, "never.png", rng, noise=None, image_shape=(2, 3))
    # A corrupted input may leave [0, 1]; only targets are range-checked.
    assert ae.reconstruct(x + 5.0).shape == (B, D)
