"""The variance lab: gradient statistics on samples whose answer we know, the estimators'
variance ordering on a small model, baselines left as they were found, and the lab's files.

Tolerances: with R draws from N(m, s^2), the sample variance has a relative standard error of
sqrt(2 / (R - 1)) and the SNR |m|/s one of about sqrt((1/SNR^2 + 1/2) / R). With R = 4000 both
are below 2.5% for the SNRs used here, so the 10% tolerances below are more than 4 standard
errors wide, while a mistake such as reporting the std instead of the variance, or
std / |mean| instead of |mean| / std, is off by far more than 10%.
"""

import csv
import json
import os

import numpy as np
import pytest

import numpyvae as nv
from numpyvae import cli
from numpyvae.lab import estimator_lab as lab
from numpyvae.estimators import EMABaseline, LearnedBaseline
from numpyvae.lab.variance import encoder_keys, gradient_samples, gradient_statistics, measure_estimator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUTPUT_FILES = ("estimators.csv", "variance_along_training.csv", "training_comparison.json", "lab.json",
                "variance_vs_L.png", "variance_along_training.png", "coordinate_histogram.png",
                "training_comparison.png")


# ----------------------------------------------------------------- gradient_statistics

def test_statistics_recover_known_mean_variance_and_snr():
    rng = np.random.default_rng(0)
    R = 4000
    mean = {"a": np.array([[1.0, -2.0, 0.5], [3.0, -0.8, 2.0]]), "b": np.array([4.0, -1.5])}
    std = {"a": np.array([[0.5, 1.0, 1.0], [1.0, 0.4, 2.5]]), "b": np.array([2.0, 1.0])}
    samples = {k: mean[k] + std[k] * rng.standard_normal((R,) + mean[k].shape) for k in mean}
    stats = gradient_statistics(samples)

    true_total = sum(float(np.sum(s ** 2)) for s in std.values())
    assert stats.total_variance == pytest.approx(true_total, rel=0.10)
    for k in mean:
        np.testing.assert_allclose(stats.variance[k], std[k] ** 2, rtol=0.10)
        np.testing.assert_allclose(stats.snr[k], np.abs(mean[k]) / std[k], rtol=0.10)
    true_snr = np.concatenate([(np.abs(mean[k]) / std[k]).ravel() for k in mean])
    assert stats.median_snr == pytest.approx(float(np.median(true_snr)), rel=0.10)
    assert (stats.n_estimates, stats.n_coordinates, stats.n_ignored, stats.n_deterministic) == (R, 8, 0, 0)


def test_statistics_use_unbiased_variance_and_skip_all_zero_coordinates():
    # Two estimates a, b: the unbiased (ddof = 1) variance is (a - b)^2 / 2, exactly.
    # Column 1 is always 0 (ignored), column 2 is a constant 3 (no noise: SNR = inf).
    samples = {"w": np.array([[1.0, 0.0, 3.0], [4.0, 0.0, 3.0]])}
    stats = gradient_statistics(samples)
    np.testing.assert_array_equal(stats.variance["w"], [4.5, 0.0, 0.0])
    assert stats.total_variance == 4.5
    assert stats.snr["w"][0] == pytest.approx(2.5 / np.sqrt(4.5))
    assert np.isnan(stats.snr["w"][1]) and stats.snr["w"][2] == np.inf
    assert (stats.n_coordinates, stats.n_ignored, stats.n_deterministic) == (3, 1, 1)
    assert stats.median_snr == np.inf          # median of {0.589, inf}: the 0/0 coordinate is left out


def test_statistics_reject_too_few_or_unequal_estimates():
    with pytest.raises(ValueError, match="at least R = 2"):
        gradient_statistics({"w": np.ones((1, 3))})
    with pytest.raises(ValueError, match="same number"):
        gradient_statistics({"w": np.ones((3, 2)), "v": np.ones((4, 2))})


# ----------------------------------------------------------------- measuring a model

@pytest.fixture(scope="module")
def small():
    """A 784-32-4 ReLU VAE and 20 real digits (float64, so tiny differences are not rounding)."""
    data = nv.load_dataset("mnist-mini")
    model = nv.VAE(784, (32,), 4, activation="relu", seed=0, dtype=np.float64)
    return model, data.x_test[:20].astype(np.float64), data.x_train[:500].astype(np.float64)


def test_gradient_samples_shapes_and_independence(small):
    model, x, _ = small
    before = {k: v.copy() for k, v in model.params.items()}
    samples = gradient_samples(model, x, "reparam", 5, np.random.default_rng(0))
    assert list(samples) == encoder_keys(model) and all(k.startswith("enc.") for k in samples)
    for k, g in samples.items():
        assert g.shape == (5,) + model.params[k].shape
    assert not np.allclose(samples["enc.mu.b"][0], samples["enc.mu.b"][1])   # fresh noise every call
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])                           # no step was taken
    with pytest.raises(ValueError, match="at least 2"):
        gradient_samples(model, x, "reparam", 1, np.random.default_rng(0))


def test_variance_ordering_reparam_below_score_and_loo_below_score(small):
    model, x, _ = small
    tv = {}
    for label, estimator, baseline in (("reparam", "reparam", None), ("score", "score", None),
                                       ("score+loo", "score", nv.estimators.LeaveOneOutBaseline())):
        stats = measure_estimator(model, x, estimator, 20, np.random.default_rng(1), n_samples=2, baseline=baseline)
        tv[label] = stats.total_variance
        assert stats.seconds_per_estimate > 0
    # Measured (seed 1): score is ~18000x reparam and ~2000x score+loo; we ask for 10x.
    assert tv["reparam"] * 10 < tv["score"], tv
    assert tv["score+loo"] * 10 < tv["score"], tv


def test_blocked_has_zero_variance(small):
    model, x, _ = small
    stats = measure_estimator(model, x, "blocked", 4, np.random.default_rng(0))
    assert stats.total_variance == 0.0 and stats.median_snr == np.inf


@pytest.mark.parametrize("make", [EMABaseline, lambda: LearnedBaseline(784, hidden=8, dtype=np.float64)],
                         ids=["ema", "learned"])
@pytest.mark.parametrize("was_frozen", [False, True])
def test_baseline_frozen_while_measuring_and_restored_after(small, make, was_frozen):
    model, x, x_warm = small
    baseline = make()
    for i in range(3):   # give it some state first
        model.posterior_grads(x_warm[20 * i:20 * (i + 1)], rng=np.random.default_rng(i), estimator="score",
                              baseline=baseline)
    baseline.frozen = was_frozen
    state = (baseline.mean if isinstance(baseline, EMABaseline)
             else {k: v.copy() for k, v in baseline.params.items()})
    gradient_samples(model, x, "score", 4, np.random.default_rng(0), baseline=baseline)
    assert baseline.frozen is was_frozen
    if isinstance(baseline, EMABaseline):
        assert baseline.mean == state                        # it did not learn while measured
    else:
        for k, v in baseline.params.items():
            np.testing.assert_array_equal(v, state[k])
    with pytest.raises(ValueError):                          # restored also when measuring fails
        gradient_samples(model, x, "no-such-estimator", 2, np.random.default_rng(0), baseline=baseline)
    assert baseline.frozen is was_frozen


# ----------------------------------------------------------------- the lab and the CLI

def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def check_lab_outputs(out, epochs, Ls):
    for name in OUTPUT_FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    for name in OUTPUT_FILES:
        if name.endswith(".png"):
            with open(os.path.join(out, name), "rb") as f:
                assert f.read(8) == PNG_SIGNATURE, name
    n_settings = len(lab.ESTIMATOR_SETTINGS)

    header, rows = read_csv(os.path.join(out, "estimators.csv"))
    assert header == ["epoch", "setting", "L", "total_variance", "median_snr", "seconds_per_estimate", "R", "note"]
    assert len(rows) == 2 * len(Ls) * n_settings                      # epoch 0 and the last epoch
    assert {r[0] for r in rows} == {"0", str(epochs)}
    loo_at_1 = [r for r in rows if r[1] == "score+loo" and r[2] == "1"]
    assert loo_at_1 and all(r[3] == "" and r[7].startswith("absent") for r in loo_at_1)
    reparam = [float(r[3]) for r in rows if r[1] == "reparam"]
    score = [float(r[3]) for r in rows if r[1] == "score"]
    assert all(a < b for a, b in zip(reparam, score))

    header, rows = read_csv(os.path.join(out, "variance_along_training.csv"))
    assert header[:4] == ["epoch", "setting", "L", "total_variance"]
    assert sorted({int(r[0]) for r in rows}) == list(range(epochs + 1))
    assert len(rows) == (epochs + 1) * n_settings

    with open(os.path.join(out, "training_comparison.json")) as f:
        comparison = json.load(f)
    assert comparison["settings"] == list(lab.DEFAULT_COMPARISON)
    assert set(comparison["runs"]) == set(lab.DEFAULT_COMPARISON)
    for res in comparison["runs"].values():
        assert len(res["history"]["test_elbo"]) == epochs and len(res["history"]["test_kl_per_dim"]) == epochs


def test_run_lab_quick_writes_every_file(tmp_path):
    out = tmp_path / "lab"
    lines = []
    result = lab.run_lab(str(out), quick=True, log=lines.append)
    check_lab_outputs(out, epochs=1, Ls=(1, 2))
    assert set(result["seconds"]) >= {"table_at_initialisation", "along_training", "compare_training", "total"}
    assert any("score+loo L=1" in line and "absent" in line for line in lines)


def test_cli_estimators_quick(tmp_path, capsys):
    out = tmp_path / "cli-lab"
    assert cli.main(["estimators", "--quick", "--out", str(out)]) == 0
    check_lab_outputs(out, epochs=1, Ls=(1, 2))
    assert str(out) in capsys.readouterr().out


def test_cli_estimators_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["estimators", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--samples", "--quick", "--R", "estimators.csv", "variance_along_training.csv",
                 "training_comparison.json", "coordinate_histogram.png"):
        assert word in text


def test_write_csv_leaves_out_arrays_and_writes_none_as_empty(tmp_path):
    path = tmp_path / "t.csv"
    lab.write_csv([{"setting": "a", "total_variance": None, "coordinate_samples": np.zeros(3)},
                   {"setting": "b", "total_variance": 1.5, "coordinate_samples": None}], str(path))
    assert path.read_text() == "setting,total_variance\na,\nb,1.5\n"
