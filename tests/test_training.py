"""Training: schedules, minibatches, that training improves the ELBO, bit-for-bit resume,
divergence caught at the step it happens, run directories and their lock, and safe
checkpoint loading (every field load_run reads is checked)."""

import copy
import math
import os
import re

import numpy as np
import pytest

import numpyvae as nv
from numpyvae.checkpoint import load_checkpoint, save_checkpoint
from numpyvae.training import (TrainConfig, TrainingDiverged, create_run_dir, estimate_parameters, evaluate_elbo,
                               fixed_test_noise, kl_warmup_beta, load_run, minibatches, new_run, prepare_pixels,
                               run_lock, temperature_at, train)


@pytest.fixture(scope="module")
def small_data():
    ds = nv.load_dataset("mnist-mini")
    return ds.x_train[:600], ds.x_test[:200]


def small_run(epochs, seed=0, latent=None, **cfg):
    """A 784-32-4 ReLU model (a VAE, or a DiscreteVAE with ``latent``, 3 classes when categorical)."""
    model = (nv.VAE(784, (32,), 4, activation="relu", seed=seed, dtype=np.float32) if latent is None else
             nv.DiscreteVAE(784, (32,), 4, latent=latent, n_categories=3 if latent == "categorical" else 2,
                            activation="relu", seed=seed, dtype=np.float32))
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


@pytest.mark.parametrize("extra", [
    {}, {"estimator": "score", "baseline": "learned"}, {"estimator": "score", "baseline": "ema"},
    {"latent": "bernoulli", "estimator": "nvil"},
    {"latent": "categorical", "estimator": "gumbel", "temperature": 2.0, "temperature_min": 0.5, "anneal_rate": 0.05},
], ids=["reparam", "learned", "ema", "discrete-nvil", "discrete-gumbel-annealed"])
def test_resume_is_bit_for_bit(small_data, tmp_path, extra):
    """3 epochs + resume for 3 more == 6 uninterrupted epochs, with dynamic binarisation and
    KL warm-up so every use of the random stream and of the epoch counter is exercised, and
    with stateful baselines whose state must travel in the checkpoint too (NVIL's for a discrete
    code), and a temperature annealed per global step across the resume (2 exp(-0.05 t) reaches
    its floor 0.5 at step 28 of 60)."""
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
    for key in ("train_elbo", "test_elbo", "beta") + (("temperature",) if "temperature" in extra else ()):
        assert straight.history[key] == resumed.history[key], key
    if straight.baseline is not None:
        b1, b2 = straight.baseline.state(), resumed.baseline.state()
        assert b1["scalars"] == b2["scalars"] and all(np.array_equal(b1["arrays"][k], b2["arrays"][k])
                                                      for k in b1["arrays"])
    # and the comparison can fail: a different seed gives different parameters
    other = train(small_run(1, seed=1), x_train, x_test, log=lambda s: None, progress=False)
    assert not np.array_equal(other.model.params["enc.h0.W"], straight.model.params["enc.h0.W"])


def test_checkpoint_holds_everything(small_data, tmp_path):
    run = train(small_run(1), *small_data, out_dir=tmp_path, log=lambda s: None, progress=False)
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["model"]["latent_dim"] == 4 and meta["version"] == nv.__version__
    assert {f"param.{k}" for k in run.model.params} <= set(arrays)
    assert any(k.startswith("opt.m.") for k in arrays) and meta["optimizer"]["t"] == 10
    assert set(os.listdir(tmp_path)) == {"checkpoint.npz", "history.json", "config.json", "run.lock"}
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
    with pytest.raises(ValueError, match=r"parameter 'enc\.h0\.W' has shape \(3, 3\), expected \(\d+, \d+\)"):
        load_run(tmp_path / "bad.npz")
    # a missing parameter
    del bad["param.enc.h0.W"]
    save_checkpoint(tmp_path / "bad.npz", bad, meta)
    with pytest.raises(ValueError, match=r"missing parameters: \['enc\.h0\.W'\]"):
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


# ---------------------------------------------------------------------------- divergence

def test_divergence_is_caught_at_its_step_before_it_touches_the_model(small_data, tmp_path):
    x_train, x_test = small_data
    run = train(small_run(1), x_train, x_test, out_dir=tmp_path, log=None, progress=False)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    run.config.epochs, run.config.lr = 3, 1e10
    run.optimizer.lr = run.config.lr
    with pytest.raises(TrainingDiverged) as info:
        train(run, x_train, x_test, out_dir=tmp_path, log=None, progress=False)
    exc = info.value
    assert (exc.epoch, exc.saved_epoch, exc.steps) == (2, 1, 10) and 1 <= exc.step <= 10
    assert str(exc).startswith(f"training diverged at epoch 2, step {exc.step} of 10: ")
    assert str(exc).endswith(f"{tmp_path} keeps the checkpoint of epoch 1; try a smaller --lr (now 1e+10) "
                             "or --clip-norm")
    assert run.epoch == 1 and run.history["epoch"] == [1], "the diverged epoch is not in the history"
    assert all(np.all(np.isfinite(v)) for v in run.model.params.values()), "no NaN was written into the model"
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_a_non_finite_minibatch_elbo_stops_training_at_that_step(small_data, monkeypatch):
    """Not at the end of the epoch: the step whose ELBO is NaN is not taken."""
    run = small_run(1)
    loss_and_grads, calls = run.model.loss_and_grads, []

    def third_is_nan(*args, **kwargs):
        loss, grads, terms = loss_and_grads(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            terms = {**terms, "elbo": np.full_like(terms["elbo"], np.nan)}
        return loss, grads, terms
    monkeypatch.setattr(run.model, "loss_and_grads", third_is_nan)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at epoch 1, step 3 of 10: the minibatch "
                                               r"ELBO is nan; nothing is saved \(no out_dir\)") as info:
        train(run, *small_data, log=None, progress=False)
    assert info.value.step == 3 and run.optimizer.t == 2 and len(calls) == 3


def test_a_non_finite_test_elbo_is_not_saved(small_data, tmp_path, monkeypatch):
    monkeypatch.setattr("numpyvae.training.evaluate_elbo",
                        lambda *a, **k: {"elbo": math.nan, "rec": math.nan, "kl": 1.0, "kl_per_dim": [1.0] * 4,
                                        "kl_offdiag": 0.0})
    run = small_run(1)
    with pytest.raises(TrainingDiverged, match="epoch 1 \\(at the evaluation after its last step\\): the test "
                                               "elbo is not finite; nothing was saved"):
        train(run, *small_data, out_dir=tmp_path, log=None, progress=False)
    assert run.epoch == 0 and run.history["epoch"] == [] and not (tmp_path / "checkpoint.npz").exists()


def test_a_finite_runaway_is_divergence_too(small_data, tmp_path):
    """With bounded log-variances a runaway model's ELBO stays finite (about -1e10 nats after one
    epoch at lr 10); it must stop all the same, and nothing of it is saved."""
    run = small_run(2, lr=10.0)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at epoch 1 \(at the evaluation after its "
                                               r"last step\): the test ELBO fell to -?[0-9.e+]+ nats, far below "
                                               r"the best so far \(-[0-9.]+\); nothing was saved") as info:
        train(run, *small_data, out_dir=tmp_path, log=None, progress=False)
    assert info.value.step is None and run.epoch == 0 and not (tmp_path / "checkpoint.npz").exists()


def test_ordinary_setbacks_are_not_divergence():
    """The rule is relative to the best ELBO's magnitude: only a tenfold drop counts."""
    from numpyvae.training import _exploded
    assert not _exploded(-130.0, -100.0) and not _exploded(-1000.0, -100.0)
    assert _exploded(-1101.0, -100.0) and _exploded(-1e10, -540.0)
    assert not _exploded(-5.0, 0.5) and _exploded(-11.0, 0.5)


# ---------------------------------------------------------------------------- run directories

def test_create_run_dir_never_reuses_a_name(tmp_path):
    base = str(tmp_path / "runs" / "mnist-mini-20240101-000000")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mnist-mini-20240101-000000-2").write_text("a file takes the name too")
    made = [create_run_dir(base) for _ in range(3)]
    assert made == [base, base + "-3", base + "-4"]
    assert all(os.listdir(d) == [] for d in made)


def test_run_lock_is_reentrant_and_cleans_stale_temporaries(tmp_path):
    stale = [".checkpoint.npz.abcd1234.tmp", ".history.json.x_y2z9ab.tmp", ".config.json.00000000.tmp"]
    kept = [".samples.png.abcd1234.tmp", "notes.tmp", "checkpoint.npz"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    with run_lock(tmp_path):
        assert sorted(os.listdir(tmp_path)) == sorted(kept + ["run.lock"])
        with run_lock(tmp_path):       # the same process may take it again (the CLI around train())
            pass
        text = (tmp_path / "run.lock").read_text()
        assert text.startswith(f"pid {os.getpid()}\n") and "started " in text


def test_a_symlinked_lock_file_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(victim, run_dir / "run.lock")
    with pytest.raises(OSError):
        with run_lock(run_dir):
            pass
    assert victim.read_text() == "keep me"


def test_estimate_parameters_counts_what_the_model_builds():
    models = [nv.VAE(784, (400,), 20, activation="tanh"), nv.VAE(6, (), 3), nv.VAE(10, (7, 5), 4, posterior="full", activation="tanh"),
              nv.VAE(10, (8,), 2, likelihood="gaussian-learned", activation="tanh"), nv.ConditionalVAE(784, 10, (16,), 3, activation="tanh")]
    models += [nv.DiscreteVAE(10, (7, 5), 4), nv.DiscreteVAE(10, (), 3, latent="categorical", n_categories=5),
               nv.DiscreteVAE(10, (8,), 2, latent="categorical", n_categories=3, likelihood="gaussian-learned")]
    for model in models:
        assert estimate_parameters(model.config) == model.num_params(), model


# ---------------------------------------------------------------------------- load_run checks every field

@pytest.fixture(scope="module")
def saved(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    train(small_run(1), *small_data, out_dir=out, log=None, progress=False)
    return load_checkpoint(out / "checkpoint.npz")


def with_nan(array):
    array = array.copy()
    array.flat[0] = np.nan
    return array


@pytest.mark.parametrize("change, message", [
    (lambda a, m: a.update({"param.enc.h0.W": with_nan(a["param.enc.h0.W"])}),
     "array 'param.enc.h0.W' contains NaN or inf"),
    (lambda a, m: a.update({"opt.v.dec.out.b": with_nan(a["opt.v.dec.out.b"])}),
     "array 'opt.v.dec.out.b' contains NaN or inf"),
    (lambda a, m: m.update(epoch=-5), "field 'epoch' must be an integer from 0 to 1 (the configured epochs); "
                                      "got -5"),
    (lambda a, m: m.update(epoch=1.5), "field 'epoch' must be an integer from 0 to 1 (the configured epochs); "
                                       "got 1.5"),
    (lambda a, m: m.update(epoch=True), "field 'epoch' must be an integer"),
    (lambda a, m: m.pop("rng"), "field 'rng' is missing"),
    (lambda a, m: m.pop("optimizer"), "field 'optimizer' is missing"),
    (lambda a, m: m.pop("history"), "field 'history' is missing"),
    (lambda a, m: m.pop("model"), "field 'model' is missing"),
    (lambda a, m: m.update(rng={"bit_generator": "os.system"}), "field 'rng' is not a random-generator state"),
    (lambda a, m: m.update(rng={"bit_generator": "PCG64", "state": "x"}), "field 'rng' is not a random-generator"),
    (lambda a, m: m.update(history=[]), "field 'history' must be a dict of per-epoch lists; got list"),
    (lambda a, m: m["history"].update(test_elbo=[]), "field 'history' ['test_elbo'] must be a list of 1 entries"),
    (lambda a, m: m["history"].update(test_elbo=["-90"]), "field 'history' ['test_elbo'][0] is not a finite"),
    (lambda a, m: m["history"].update(epoch=[7]), "field 'history' ['epoch'] must be 1, 2, ..., 1; got [7]"),
    (lambda a, m: m["optimizer"].update(t=-1), "field 'optimizer' ['t'] must be an integer >= 0; got -1"),
    (lambda a, m: m["optimizer"].update(t="x"), "field 'optimizer' ['t'] must be an integer >= 0; got 'x'"),
    (lambda a, m: m["optimizer"].update(beta1=5), "field 'optimizer' ['beta1'] must be a number in [0, 1); got 5"),
    (lambda a, m: m["optimizer"].update(eps=-1), "field 'optimizer' ['eps'] must be a positive number; got -1"),
    (lambda a, m: m["optimizer"].update(lr=0.0), "field 'optimizer' ['lr'] must be a positive number; got 0.0"),
    (lambda a, m: m["optimizer"].update(type="SGD"), "field 'optimizer' ['type'] must be 'Adam'"),
    (lambda a, m: m.update(data=5), "field 'data' must be a dict"),
    (lambda a, m: m["train"].update(lr=-1), "field 'train' is not a valid training configuration: lr must be"),
    # refused before the model is built (it would take terabytes): (785 + 5) 1e9 + (1e9 + 1)(8 + 784) parameters
    (lambda a, m: m["model"].update(hidden_dims=[10 ** 9]), "field 'model' does not describe the saved model: it "
                                                             "describes a model of 1,582,000,000,792 parameters"),
], ids=lambda v: "" if callable(v) else v[:40])
def test_load_run_checks_every_field(saved, tmp_path, change, message):
    arrays, meta = dict(saved[0]), copy.deepcopy(saved[1])
    change(arrays, meta)
    save_checkpoint(tmp_path / "crafted.npz", arrays, meta)
    with pytest.raises(ValueError) as info:
        load_run(tmp_path / "crafted.npz")
    assert str(info.value).startswith(f"{tmp_path / 'crafted.npz'}: "), info.value
    assert message in str(info.value), info.value



# ---------------------------------------------------------------------------- a discrete code

def test_temperature_is_annealed_per_global_step(small_data, monkeypatch):
    """tau_t = max(tau_min, tau_0 exp(-r t)) (Jang et al. 2017), t the global step: the trainer passes
    exactly that temperature to every step, across epochs, and records the last step's per epoch."""
    cfg = TrainConfig(estimator="gumbel", temperature=2.0, temperature_min=0.5, anneal_rate=0.1)
    assert temperature_at(0, cfg) == 2.0 and temperature_at(5, cfg) == pytest.approx(2.0 * math.exp(-0.5))
    assert temperature_at(14, cfg) == 0.5 and temperature_at(10 ** 6, cfg) == 0.5      # 2 e^{-1.4} < 0.5
    assert temperature_at(10 ** 6, TrainConfig(estimator="gumbel", temperature=0.7)) == 0.7   # no annealing
    run = small_run(2, latent="bernoulli", estimator="gumbel", temperature=2.0, temperature_min=0.5, anneal_rate=0.1)
    seen, original = [], run.model.loss_and_grads

    def recording(*args, temperature, **kwargs):
        seen.append(temperature)
        return original(*args, temperature=temperature, **kwargs)

    monkeypatch.setattr(run.model, "loss_and_grads", recording)
    train(run, *small_data, log=None, progress=False)
    steps = math.ceil(600 / 64)
    assert seen == [temperature_at(t, run.config) for t in range(2 * steps)]
    assert seen[0] == 2.0 and seen[-1] == 0.5 and seen[5] < seen[4]
    assert run.history["temperature"] == [seen[steps - 1], seen[-1]]


@pytest.mark.parametrize("latent", ["bernoulli", "categorical"])
def test_a_discrete_code_trains_and_reports_its_own_kl(small_data, latent):
    """Two epochs of "vimco" (K = 2) improve the test ELBO; the test ELBO is the discrete model's Monte
    Carlo ELBO with the fixed noise of fixed_test_noise (logistic or Gumbel, (1, N, Z[, C])); the
    per-dimension KL is each unit's or variable's, summing to the KL."""
    x_train, x_test = prepare_pixels(*small_data, "dynamic", 0, "bernoulli")
    run = train(small_run(2, latent=latent, estimator="vimco", n_samples=2, binarize="dynamic"), x_train, x_test,
                log=None, progress=False)
    h = run.history
    assert h["test_elbo"][1] > h["test_elbo"][0] + 5, h["test_elbo"]
    noise = fixed_test_noise(run.model, x_test.shape[0], 0)
    assert noise.shape == (1, x_test.shape[0]) + run.model.posterior.event_shape
    test = evaluate_elbo(run.model, x_test, noise)
    assert test["elbo"] == h["test_elbo"][-1]
    assert test["elbo"] == pytest.approx(float(np.mean(run.model.elbo(x_test, noise=noise))), rel=1e-6)
    assert len(h["test_kl_per_dim"][-1]) == 4 and h["test_kl_offdiag"] == [0.0, 0.0]
    assert sum(h["test_kl_per_dim"][-1]) == pytest.approx(h["test_kl"][-1], rel=1e-5)
    assert "temperature" not in h


def test_discrete_options_are_checked():
    for kwargs, message in [
        (dict(estimator="nvil2"), "unknown estimator 'nvil2'"),
        (dict(estimator="gumbel", temperature=0.0), "temperature must be a positive number"),
        (dict(estimator="gumbel", temperature=float("inf")), "temperature must be a positive number"),
        (dict(estimator="score", temperature=0.5), "apply to the estimators ['gumbel', 'straight-through']"),
        (dict(estimator="gumbel", anneal_rate=0.1), "annealing needs both"),
        (dict(estimator="gumbel", temperature_min=0.5), "annealing needs both"),
        (dict(estimator="gumbel", temperature_min=2.0, anneal_rate=0.1), "no larger than temperature"),
        (dict(estimator="gumbel", anneal_rate=-1.0), "anneal_rate must be a number >= 0"),
        (dict(estimator="vimco"), "needs n_samples >= 2"),
        (dict(estimator="vimco", n_samples=2, beta=0.5), "no KL term to weight"),
        (dict(estimator="vimco", n_samples=2, warmup_epochs=1), "no KL term to weight"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(**kwargs)
    vae = nv.VAE(784, (8,), 2)
    dm = nv.DiscreteVAE(784, (8,), 2)
    for model, cfg, message in [(vae, TrainConfig(estimator="nvil"), "does not train a Gaussian code"),
                                (dm, TrainConfig(estimator="reparam"), "does not train a discrete (bernoulli) code"),
                                (dm, TrainConfig(objective="iwae"), "estimator='vimco'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            new_run(model, cfg)


@pytest.fixture(scope="module")
def saved_nvil(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved_nvil")
    train(small_run(1, latent="categorical", estimator="nvil"), *small_data, out_dir=out, log=None, progress=False)
    return load_checkpoint(out / "checkpoint.npz")


@pytest.mark.parametrize("change, message", [
    (lambda a, m: m["baseline"].update(var=-1.0), "field 'baseline' ['var'] must be None or a number >= 0"),
    (lambda a, m: m["baseline"].update(var="x"), "field 'baseline' ['var'] must be None or a number >= 0"),
    (lambda a, m: m["baseline"].update(type="learned"), "field 'baseline' must be the state of a 'nvil' baseline"),
    (lambda a, m: m.update(baseline=None), "field 'baseline' must be the state of a 'nvil' baseline"),
    (lambda a, m: m["train"].update(estimator="reparam"), "field 'train' is not a valid training configuration: "
                                                          "estimator='reparam' does not train a discrete"),
    (lambda a, m: m["model"].update(n_categories=10 ** 6), "field 'model' does not describe the saved model: it "
                                                           "describes a model of"),
    (lambda a, m: m["model"].update(latent="gaussian"), "field 'model' does not describe the saved model: unknown "
                                                        "latent"),
], ids=lambda v: "" if callable(v) else v[:40])
def test_load_run_checks_a_discrete_run(saved_nvil, tmp_path, change, message):
    arrays, meta = dict(saved_nvil[0]), copy.deepcopy(saved_nvil[1])
    loaded = load_run_from(tmp_path / "good.npz", arrays, meta)
    assert isinstance(loaded.model, nv.DiscreteVAE) and loaded.baseline.var is not None
    change(arrays, meta)
    with pytest.raises(ValueError) as info:
        load_run_from(tmp_path / "crafted.npz", arrays, meta)
    assert message in str(info.value), info.value


def load_run_from(path, arrays, meta):
    save_checkpoint(path, arrays, meta)
    return load_run(path)
