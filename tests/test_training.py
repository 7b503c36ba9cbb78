"""Training: schedules, minibatches, that training improves the ELBO, bit-for-bit resume,
and safe checkpoint loading."""

import os

import numpy as np
import pytest

import numpyvae as nv
from numpyvae.checkpoint import load_checkpoint, save_checkpoint
from numpyvae.training import (TrainConfig, kl_warmup_beta, load_run, minibatches, new_run, prepare_pixels,
                               train)


@pytest.fixture(scope="module")
def small_data():
    ds = nv.load_dataset("mnist-mini")
    return ds.x_train[:600], ds.x_test[:200]


def small_run(epochs, seed=0, **cfg):
    model = nv.VAE(784, (32,), 4, activation="relu", seed=seed, dtype=np.float32)
    config = TrainConfig(epochs=epochs, batch_size=64, seed=seed, **cfg)
    return new_run(model, config, {"dataset": "mnist-mini"})


def test_minibatches_partition_the_data():
    batches = minibatches(10, 3, np.random.default_rng(0))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(batches), np.arange(10))  # shuffled


def test_kl_warmup_schedule():
    cfg = TrainConfig(warmup_epochs=2, beta=1.0)
    assert kl_warmup_beta(0, 10, cfg) == 0.0
    assert kl_warmup_beta(5, 10, cfg) == pytest.approx(0.25)
    assert kl_warmup_beta(20, 10, cfg) == 1.0 and kl_warmup_beta(35, 10, cfg) == 1.0
    assert kl_warmup_beta(0, 10, TrainConfig(beta=0.5)) == 0.5


def test_config_validation():
    with pytest.raises(ValueError, match="binarize must be one of"):
        TrainConfig(binarize="sometimes")
    with pytest.raises(ValueError, match="lr must be a positive"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="needs estimator='score'"):
        TrainConfig(baseline="ema")
    with pytest.raises(ValueError, match="n_samples >= 2"):
        TrainConfig(estimator="score", baseline="loo")
    with pytest.raises(ValueError, match="only makes sense with the bernoulli"):
        prepare_pixels(np.zeros((2, 3)), np.zeros((2, 3)), "static", 0, "gaussian")


def test_binarisation_modes(small_data):
    x_train, x_test = small_data
    a_train, a_test = prepare_pixels(x_train, x_test, "static", 0, "bernoulli")
    b_train, b_test = prepare_pixels(x_train, x_test, "dynamic", 0, "bernoulli")
    assert set(np.unique(a_train)) <= {0.0, 1.0} and set(np.unique(a_test)) <= {0.0, 1.0}
    assert np.array_equal(a_test, b_test), "test set binarised once, the same way for both modes"
    assert b_train is x_train, "dynamic mode re-binarises the training set every epoch instead"


def test_training_improves_test_elbo(small_data):
    run = train(small_run(3), *small_data, log=lambda s: None, progress=False)
    h = run.history
    assert len(h["test_elbo"]) == 3 and run.epoch == 3
    # Untrained, the Bernoulli likelihood of a 784-pixel image is about -784 log 2 = -543 nats;
    # three epochs on 600 digits must improve on epoch 1 by a clear margin.
    assert h["test_elbo"][-1] > h["test_elbo"][0] + 10, h["test_elbo"]
    assert len(h["test_kl_per_dim"][-1]) == 4
    assert sum(h["test_kl_per_dim"][-1]) == pytest.approx(h["test_kl"][-1], rel=1e-4)
    for k in ("train", "test"):
        # float32 per-datapoint terms: equal to float32 rounding (~1e-7), far below the KL's size (~10 nats)
        np.testing.assert_allclose(np.array(h[f"{k}_elbo"]), np.array(h[f"{k}_rec"]) - np.array(h[f"{k}_kl"]),
                                   rtol=1e-6)


@pytest.mark.parametrize("extra", [{}, {"estimator": "score", "baseline": "learned"},
                                   {"estimator": "score", "baseline": "ema"}], ids=["reparam", "learned", "ema"])
def test_resume_is_bit_for_bit(small_data, tmp_path, extra):
    """3 epochs + resume for 3 more == 6 uninterrupted epochs, with dynamic binarisation and
    KL warm-up so every use of the random stream and of the epoch counter is exercised, and
    with stateful baselines whose state must travel in the checkpoint too."""
    cfg = dict(binarize="dynamic", warmup_epochs=2, **extra)
    x_train, x_test = prepare_pixels(*small_data, "dynamic", 0, "bernoulli")
    straight = train(small_run(6, **cfg), x_train, x_test, log=lambda s: None, progress=False)

    first = train(small_run(3, **cfg), x_train, x_test, out_dir=tmp_path, log=lambda s: None, progress=False)
    resumed = load_run(tmp_path)
    assert resumed.epoch == 3 and resumed.history["test_elbo"] == first.history["test_elbo"]
    resumed.config.epochs = 6
    train(resumed, x_train, x_test, out_dir=tmp_path, log=lambda s: None, progress=False)

    for k, v in straight.model.params.items():
        assert np.array_equal(v, resumed.model.params[k]), f"{k} differs after resume"
    s1, s2 = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert s1["scalars"] == s2["scalars"]
    assert all(np.array_equal(s1["arrays"][k], s2["arrays"][k]) for k in s1["arrays"])
    for key in ("train_elbo", "test_elbo", "beta"):
        assert straight.history[key] == resumed.history[key], key
    # and the comparison can fail: a different seed gives different parameters
    other = train(small_run(1, seed=1), x_train, x_test, log=lambda s: None, progress=False)
    assert not np.array_equal(other.model.params["enc.h0.W"], straight.model.params["enc.h0.W"])


def test_checkpoint_holds_everything(small_data, tmp_path):
    run = train(small_run(1), *small_data, out_dir=tmp_path, log=lambda s: None, progress=False)
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["model"]["latent_dim"] == 4 and meta["version"] == nv.__version__
    assert {f"param.{k}" for k in run.model.params} <= set(arrays)
    assert any(k.startswith("opt.m.") for k in arrays) and meta["optimizer"]["t"] == 10
    assert set(os.listdir(tmp_path)) == {"checkpoint.npz", "history.json", "config.json"}
    loaded = load_run(tmp_path)
    assert all(np.array_equal(loaded.model.params[k], v) for k, v in run.model.params.items())


def test_load_run_rejects_bad_checkpoints(small_data, tmp_path):
    run = train(small_run(1), *small_data, out_dir=tmp_path, log=lambda s: None, progress=False)
    path = tmp_path / "checkpoint.npz"
    arrays, meta = load_checkpoint(path)
    # a parameter with the wrong shape
    bad = dict(arrays)
    bad["param.enc.h0.W"] = np.zeros((3, 3), np.float32)
    save_checkpoint(tmp_path / "bad.npz", bad, meta)
    with pytest.raises(ValueError, match=r"enc\.h0\.W: shape \(3, 3\)"):
        load_run(tmp_path / "bad.npz")
    # a missing parameter
    del bad["param.enc.h0.W"]
    save_checkpoint(tmp_path / "bad.npz", bad, meta)
    with pytest.raises(ValueError, match="missing parameter enc.h0.W"):
        load_run(tmp_path / "bad.npz")
    # not a training checkpoint, and a truncated file
    save_checkpoint(tmp_path / "other.npz", arrays, {"format": "something else"})
    with pytest.raises(ValueError, match="not a numpyvae training checkpoint"):
        load_run(tmp_path / "other.npz")
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        load_run(tmp_path / "trunc.npz")
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nope.npz")
    assert run.epoch == 1
