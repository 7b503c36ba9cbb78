"""The convolutional VAE (VAE(..., arch="conv"), numpyvae.convnet; docs/convolution.md, section 8): its
shapes and parameter names against the Keras example, its networks against a direct computation, the
whole model's gradient against finite differences (ELBO, IWAE, the score estimator; every likelihood,
the full-covariance posterior, the conditional VAE), bounded evaluation memory, argument errors, and
the command line: train, resume bit for bit, rebuild from the checkpoint, evaluate, sample, plot."""

import json
import struct

import numpy as np
import pytest

import numpyvae as nv
from numpyvae.cli import main
from numpyvae.conditional import ConditionalVAE
from numpyvae.distributions import kl_diag_gaussian_standard, log_normal_diag
from numpyvae.gradcheck import check_param_grads
from numpyvae.training import estimate_parameters, load_run

from conftest import randomise_biases

SMALL = dict(image_shape=(8, 8), channels=(2, 3), hidden_dims=(4,), latent_dim=2)


def small_conv_vae(likelihood="bernoulli", posterior="diag", conditional=False, activation="tanh", seed=0, **kw):
    """An 8 x 8 conv VAE in float64 with random biases and no zero weights (a zero bias hides a missing
    sum; the log-variance heads' zero weights would hide a wrong input gradient)."""
    args = dict(SMALL, likelihood=likelihood, posterior=posterior, activation=activation, seed=seed,
                dtype=np.float64, obs_var=0.7, arch="conv", **kw)
    model = ConditionalVAE(64, n_classes=3, **args) if conditional else nv.VAE(64, **args)
    rng = np.random.default_rng(seed + 100)
    randomise_biases(model, rng)
    for v in model.params.values():
        if not np.any(v):
            v[...] = 0.3 * rng.standard_normal(v.shape)
    return model


def data_for(likelihood, rng, batch=3, width=64):
    return rng.random((batch, width)) if likelihood == "bernoulli" else rng.standard_normal((batch, width))


# ----------------------------------------------------------------- architecture

def test_parameters_are_the_keras_examples():
    """28 x 28 -> 14 -> 7 with 32 and 64 channels, as the Keras VAE example; the decoder maps the code to
    7 x 7 x 64 and back through 64 -> 64 and 64 -> 32 transposed convolutions and a 32 -> 1 output."""
    m = nv.VAE(784, (16,), 2, arch="conv", image_shape=(28, 28))
    shapes = {k: v.shape for k, v in m.params.items()}
    assert shapes == {
        "enc.conv0.W": (32, 1, 3, 3), "enc.conv0.b": (32,), "enc.conv1.W": (64, 32, 3, 3), "enc.conv1.b": (64,),
        "enc.h0.W": (7 * 7 * 64, 16), "enc.h0.b": (16,), "enc.mu.W": (16, 2), "enc.mu.b": (2,),
        "enc.logvar.W": (16, 2), "enc.logvar.b": (2,),
        "dec.h0.W": (2, 7 * 7 * 64), "dec.h0.b": (7 * 7 * 64,), "dec.upconv0.W": (64, 64, 3, 3), "dec.upconv0.b": (64,),
        "dec.upconv1.W": (64, 32, 3, 3), "dec.upconv1.b": (32,), "dec.out.W": (32, 1, 3, 3), "dec.out.b": (1,)}
    assert [up.output_padding for up in m.decoder.upconvs] == [1, 1]
    x = nv.load_dataset("mnist-mini").x_test[:5]
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (5, 2) and m.decode(mu).shape == (5, 784)
    assert repr(m).startswith("VAE(1x28x28-conv32-conv64-16-2, ")
    assert m.config["arch"] == "conv" and m.config["image_shape"] == [28, 28] and m.config["channels"] == [32, 64]
    assert nv.VAE(784).config["arch"] == "mlp" and nv.VAE(784).config["channels"] is None


@pytest.mark.parametrize("kw", [
    {}, {"likelihood": "gaussian-learned"}, {"posterior": "full"}, {"hidden_dims": ()},
    {"channels": (2, 3, 4), "image_shape": (5, 13), "input_dim": 65}, {"n_classes": 4}, {"hidden_dims": (6, 5)},
], ids=["default", "learned", "full", "no-hidden", "three-layers-odd", "conditional", "two-hidden"])
def test_the_parameter_count_before_building_is_exact(kw):
    """training.estimate_parameters (the memory preflight, and the guard of load_run against a crafted
    config) counts a conv model's parameters from its config alone; the config rebuilds the model."""
    args = {"input_dim": 96, "image_shape": (8, 12), "channels": (3, 5), "hidden_dims": (7,), "latent_dim": 3,
            "arch": "conv", **kw}
    m = ConditionalVAE(**args) if "n_classes" in kw else nv.VAE(**args)
    config = json.loads(json.dumps(m.config))
    assert estimate_parameters(config) == m.num_params()
    rebuilt = ConditionalVAE(**config) if "n_classes" in kw else nv.VAE(**config)
    assert all(np.array_equal(rebuilt.params[k], v) for k, v in m.params.items())


def direct_conv(x, W, b, stride, padding):
    """torch.nn.functional.conv2d's definition, one kernel offset at a time (no im2col):
    y[n, q, i, j] = b[q] + sum_{p, di, dj} W[q, p, di, dj] xp[n, p, stride i + di, stride j + dj]."""
    F = W.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = ((n + 2 * padding - F) // stride + 1 for n in x.shape[2:])
    y = np.zeros((x.shape[0], W.shape[0], Ho, Wo)) + b[:, None, None]
    for di in range(F):
        for dj in range(F):
            window = xp[:, :, di:di + stride * (Ho - 1) + 1:stride, dj:dj + stride * (Wo - 1) + 1:stride]
            y += np.einsum("nphw,qp->nqhw", window, W[:, :, di, dj])
    return y


def direct_conv_transpose(x, W, b, stride, padding, output_padding):
    """torch.nn.functional.conv_transpose2d's definition as a scatter: input pixel (i, j) adds
    x[n, p, i, j] W[p, q, di, dj] to output pixel (stride i + di - padding, stride j + dj - padding)."""
    F = W.shape[2]
    H, Wd = x.shape[2:]
    full = np.zeros((x.shape[0], W.shape[1], (H - 1) * stride + F + output_padding,
                     (Wd - 1) * stride + F + output_padding))
    for di in range(F):
        for dj in range(F):
            full[:, :, di:di + stride * (H - 1) + 1:stride, dj:dj + stride * (Wd - 1) + 1:stride] += \
                np.einsum("nphw,pq->nqhw", x, W[:, :, di, dj])
    Ho, Wo = ((n - 1) * stride - 2 * padding + F + output_padding for n in (H, Wd))
    return full[:, :, padding:padding + Ho, padding:padding + Wo] + b[:, None, None]


def test_networks_match_a_direct_computation():
    """Eqs. (J10) and (J11) written out with the definitions of the two layers (not im2col), on
    non-square 8 x 12 images (8 -> 4 -> 2, 12 -> 6 -> 3), ReLU, and a condition."""
    m = ConditionalVAE(96, n_classes=3, image_shape=(8, 12), channels=(2, 3), hidden_dims=(5,), latent_dim=3,
                       arch="conv", activation="relu", seed=1, dtype=np.float64)
    randomise_biases(m, np.random.default_rng(2))
    p = m.params
    rng = np.random.default_rng(3)
    x, y, z = rng.random((4, 96)), np.array([0, 2, 1, 2]), rng.standard_normal((4, 3))
    relu, c = (lambda a: np.maximum(a, 0)), np.eye(3)[y]

    h = x.reshape(4, 1, 8, 12)
    for i in range(2):
        h = relu(direct_conv(h, p[f"enc.conv{i}.W"], p[f"enc.conv{i}.b"], 2, 1))
    assert h.shape == (4, 3, 2, 3)
    h = relu(np.concatenate([h.reshape(4, -1), c], axis=1) @ p["enc.h0.W"] + p["enc.h0.b"])
    mu, logvar = m.encode(x, y=y)
    np.testing.assert_allclose(mu, h @ p["enc.mu.W"] + p["enc.mu.b"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logvar, h @ p["enc.logvar.W"] + p["enc.logvar.b"], rtol=1e-12, atol=1e-12)

    u = relu(np.concatenate([z, c], axis=1) @ p["dec.h0.W"] + p["dec.h0.b"]).reshape(4, 3, 2, 3)
    u = relu(direct_conv_transpose(u, p["dec.upconv0.W"], p["dec.upconv0.b"], 2, 1, 1))   # 2 x 3 -> 4 x 6
    u = relu(direct_conv_transpose(u, p["dec.upconv1.W"], p["dec.upconv1.b"], 2, 1, 1))   # 4 x 6 -> 8 x 12
    logits = direct_conv_transpose(u, p["dec.out.W"], p["dec.out.b"], 1, 1, 0).reshape(4, 96)
    np.testing.assert_allclose(m.decoder_outputs(z, y=y)["out"], logits, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- gradients

@pytest.mark.parametrize("likelihood, posterior, conditional", [
    ("bernoulli", "diag", False), ("gaussian", "diag", False), ("gaussian-learned", "diag", False),
    ("bernoulli", "full", False), ("bernoulli", "diag", True),
], ids=["bernoulli", "gaussian", "gaussian-learned", "full-covariance", "conditional"])
def test_elbo_gradients(likelihood, posterior, conditional, grad_report):
    """Every parameter of the whole conv VAE, float64, tanh (ReLU's kinks would break the
    difference quotients), L = 2 samples, beta = 0.7."""
    m = small_conv_vae(likelihood, posterior, conditional, seed=4)
    rng = np.random.default_rng(5)
    x, eps = data_for(likelihood, rng), rng.standard_normal((2, 3, 2))
    kw = {"y": np.array([0, 2, 1])} if conditional else {}
    _, grads = m.loss_and_grads(x, eps=eps, n_samples=2, beta=0.7, **kw)
    errors = check_param_grads(lambda: m.loss_and_grads(x, eps=eps, n_samples=2, beta=0.7, **kw)[0], m.params, grads)
    grad_report(f"conv VAE[{likelihood}, {posterior}{', conditional' if conditional else ''}]", errors)


def test_iwae_gradients(grad_report):
    m = small_conv_vae("bernoulli", seed=6)
    rng = np.random.default_rng(7)
    x, eps = data_for("bernoulli", rng), rng.standard_normal((3, 3, 2))
    _, grads = m.iwae_loss_and_grads(x, k=3, eps=eps)
    grad_report("conv VAE[IWAE k=3]", check_param_grads(lambda: m.iwae_loss_and_grads(x, k=3, eps=eps)[0],
                                                        m.params, grads))


def test_score_estimator_gradients(grad_report):
    """The score estimator's gradient is the exact gradient of a surrogate loss with the codes z held
    fixed (not moved by the encoder) and the signal f = log p(x|z) held constant where it multiplies
    log q (Eq. (S1), docs/estimators.md):  1/(L B) sum -(log p_theta(x|z) + f log q_phi(z|x)) + beta KL."""
    m = small_conv_vae("bernoulli", seed=8)
    rng = np.random.default_rng(9)
    x, eps, beta = data_for("bernoulli", rng), rng.standard_normal((2, 3, 2)), 0.7
    _, grads = m.loss_and_grads(x, eps=eps, n_samples=2, beta=beta, estimator="score")
    mu, logvar = m.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps
    f = m.log_p_x_given_z(x, z)

    def surrogate():
        mu, logvar = m.encode(x)
        data = m.log_p_x_given_z(x, z) + f * log_normal_diag(z, mu, logvar)
        return -data.mean() + beta * kl_diag_gaussian_standard(mu, logvar).mean()

    grad_report("conv VAE[score estimator]", check_param_grads(surrogate, m.params, grads))


# ----------------------------------------------------------------- memory, errors

def test_log_likelihood_memory_is_bounded(monkeypatch):
    """A chunk of log_likelihood holds the decoder's feature maps (counted by the chunk size) and the
    convolutions' im2col temporaries (bounded apart by CONV_CHUNK_BYTES): the peak stays within the
    two budgets and a small fixed allowance. Without chunking, the decoder's feature maps alone would
    take K B (a few thousand numbers) 8 bytes = 60 MiB."""
    import tracemalloc
    from numpyvae import layers, model as model_module
    budget, conv_budget = 2 << 20, 1 << 20
    monkeypatch.setattr(model_module, "LOG_LIKELIHOOD_CHUNK_BYTES", budget)
    monkeypatch.setattr(layers, "CONV_CHUNK_BYTES", conv_budget)
    m = nv.VAE(256, (8,), 3, arch="conv", image_shape=(16, 16), channels=(4, 8), dtype=np.float64)
    x = np.random.default_rng(0).random((20, 256))
    K = 300
    assert K * 20 * m.networks.activations_per_row * 8 > 25 * budget
    assert 1 < m.log_likelihood_chunk_size(20, K) < K / 4
    tracemalloc.start()
    try:
        m.log_likelihood(x, n_importance=K, rng=np.random.default_rng(1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < budget + conv_budget + (1 << 18), peak / 2**20


@pytest.mark.parametrize("kw, error, match", [
    ({"arch": "cnn"}, ValueError, "unknown arch 'cnn'"),
    ({"image_shape": (8, 8)}, ValueError, "image_shape applies to arch='conv' only"),
    ({"channels": (4,)}, ValueError, "channels applies to arch='conv' only"),
    ({"arch": "conv", "image_shape": (8, 9)}, ValueError, r"image_shape \(8, 9\) has 72 pixels but input_dim is 64"),
    ({"arch": "conv", "image_shape": (64,)}, ValueError, "image_shape must be"),
    ({"arch": "conv", "image_shape": 8}, TypeError, "image_shape must be"),
    ({"arch": "conv", "image_shape": (32, 2)}, ValueError, "one even and one odd side"),
    ({"arch": "conv", "channels": ()}, ValueError, "channels must name at least one"),
    ({"arch": "conv", "channels": (4, 0)}, ValueError, "each entry of channels"),
    ({"arch": "conv", "channels": 4}, TypeError, "channels must be a tuple"),
    ({"arch": "conv", "activation": "cube"}, ValueError, "unknown activation"),
])
def test_bad_arguments_name_what_was_expected(kw, error, match):
    with pytest.raises(error, match=match):
        nv.VAE(64, (4,), 2, **kw)


def test_a_non_square_input_needs_its_image_shape():
    with pytest.raises(ValueError, match="input_dim 60 is not a square"):
        nv.VAE(60, arch="conv")
    assert nv.VAE(60, (4,), 2, arch="conv", image_shape=(6, 10)).decode(np.zeros((1, 2))).shape == (1, 60)


# ----------------------------------------------------------------- the command line

def write_idx(path, array):
    """An uncompressed IDX file: magic 00 00 08 <ndim>, big-endian int32 dims, uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
                     + array.tobytes())


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """256 training and 64 test digits of mnist-mini in the MNIST file layout (--data-dir)."""
    folder = tmp_path_factory.mktemp("digits")
    d = nv.load_dataset("mnist-mini")
    for name, array in (("train-images-idx3-ubyte", d.x_train[:256]), ("t10k-images-idx3-ubyte", d.x_test[:64])):
        write_idx(folder / name, np.round(array * 255).reshape(-1, 28, 28))
    write_idx(folder / "train-labels-idx1-ubyte", d.y_train[:256])
    write_idx(folder / "t10k-labels-idx1-ubyte", d.y_test[:64])
    return folder


CONV = ["--arch", "conv", "--channels", "4", "8", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64"]


def test_cli_trains_resumes_bit_for_bit_and_rebuilds_a_conv_vae(digits, tmp_path, capsys):
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert main(["train", *CONV, "--data-dir", str(digits), "--epochs", "2", "--no-figures", "--out", str(once)]) == 0
    assert main(["train", *CONV, "--data-dir", str(digits), "--epochs", "1", "--out", str(twice)]) == 0
    assert main(["train", "--out", str(twice), "--resume", "--epochs", "2", "--no-figures"]) == 0
    a, b = load_run(once), load_run(twice)
    assert a.model.networks.name == "conv" and type(a.model) is nv.VAE
    assert a.model.config == b.model.config and a.model.config["channels"] == [4, 8]
    assert a.model.config["image_shape"] == [28, 28] and a.model.params["enc.conv1.W"].shape == (8, 4, 3, 3)
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k
    assert a.history["test_elbo"] == b.history["test_elbo"] and a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.history["test_elbo"][1] > a.history["test_elbo"][0]        # it learns
    # what the figures, sample, reconstruct and evaluate need
    assert {"samples.png", "reconstructions.png", "latent.png", "manifold.png"} <= {p.name for p in twice.iterdir()}
    assert main(["evaluate", str(twice), "--importance", "20", "--limit", "30"]) == 0
    result = json.loads((twice / "evaluation.json").read_text())
    assert result["importance_samples"] == 20 and result["test_log_likelihood"] > result["test_elbo"]
    assert main(["sample", str(twice), "-n", "9"]) == 0 and main(["reconstruct", str(twice), "-n", "4"]) == 0
    assert (twice / "sample-n9-seed0.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def conv_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "r"
    assert main(["train", *CONV, "--data-dir", str(digits), "--epochs", "1", "--no-figures", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("option, saved, given", [
    (["--arch", "mlp"], "conv", "mlp"), (["--channels", "4", "16"], "4 8", "4 16"),
])
def test_resume_refuses_another_architecture(conv_run, option, saved, given, capsys):
    capsys.readouterr()
    assert main(["train", "--out", str(conv_run), "--resume", "--epochs", "2", *option]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"numpyvae train: error: --resume cannot change: {option[0]} (saved {saved}, given {given}); "
                   "start a new run (another --out) to train with different settings")


@pytest.mark.parametrize("argv, message", [
    (["--channels", "4"], "--channels applies to --arch conv only"),
    (["--arch", "conv", "--latent", "bernoulli"], "--arch conv trains a VAE with a Gaussian code"),
])
def test_options_that_need_another_architecture_are_refused(digits, tmp_path, argv, message, capsys):
    capsys.readouterr()
    assert main(["train", "--data-dir", str(digits), "--out", str(tmp_path / "r"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("numpyvae train: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("change, message", [
    # refused before building: three 3 x 3 kernels from 1e5 to 1e5 channels (enc.conv1, dec.upconv0,
    # dec.upconv1) are 2.7e11 parameters
    ({"channels": [10 ** 5, 10 ** 5]}, "describes a model of 270,0"),
    ({"arch": "cnn"}, "unknown arch 'cnn'"),
    ({"image_shape": [28, 27]}, "image_shape (28, 27) has 756 pixels but input_dim is 784"),
    ({"channels": "ab"}, "each entry of channels must be"),
    # an MLP of the same widths, (784 + 1) 16 + ... = 26,004 parameters, where the file holds 8,781
    ({"arch": "mlp"}, "describes a model of 26,004 parameters"),
], ids=["huge-channels", "unknown-arch", "image-shape", "channels-type", "arch-changed"])
def test_load_run_refuses_a_crafted_conv_config(conv_run, tmp_path, change, message):
    import copy
    from numpyvae.checkpoint import load_checkpoint, save_checkpoint
    arrays, meta = load_checkpoint(conv_run / "checkpoint.npz")
    meta = copy.deepcopy(meta)
    meta["model"].update(change)
    save_checkpoint(tmp_path / "crafted.npz", arrays, meta)
    with pytest.raises(ValueError) as info:
        load_run(tmp_path / "crafted.npz")
    assert "field 'model' does not describe the saved model" in str(info.value) and message in str(info.value)
