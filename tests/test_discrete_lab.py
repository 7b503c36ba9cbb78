"""The discrete-latent lab (numpyvae.lab.discrete_lab, `numpyvae discrete`) in its --quick mode: the
files it writes, and that its numbers say what docs/discrete.md says they say."""

import csv
import json

import numpy as np
import pytest

import numpyvae as nv
from numpyvae.cli import main
from numpyvae.lab.discrete_lab import estimate_statistics


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("discrete_lab") / "out"
    assert main(["discrete", "--quick", "--out", str(out)]) == 0
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_lab_writes_its_files(lab):
    for name in ("bias_variance_bernoulli.png", "bias_variance_categorical.png", "training_comparison.png"):
        assert (lab / name).read_bytes()[:4] == b"\x89PNG", name
    rows = read_csv(lab / "bias_variance.csv")
    # per latent: score, score+loo, nvil, vimco at K = 2, 4 (+ vimco against its bound at K = 2),
    # gumbel and straight-through at two temperatures
    assert len(rows) == 2 * (4 * 2 + 1 + 2 * 2), len(rows)
    assert {r["setting"] for r in rows} == {"score", "score+loo", "nvil", "vimco", "gumbel", "straight-through"}
    assert all(float(r["variance"]) > 0 and float(r["bias_se"]) >= 0 for r in rows)
    table = {r["model"]: r for r in read_csv(lab / "training_comparison.csv")}
    assert set(table) == {"gaussian"} | {f"{latent}/{e}" for latent in ("bernoulli", "categorical")
                                         for e in ("score", "nvil", "vimco", "gumbel", "straight-through")}
    for name, r in table.items():
        # importance weighting tightens the bound in expectation (Burda et al. 2016)
        assert float(r["test_log_likelihood"]) > float(r["test_elbo"]), name
    runs = json.loads((lab / "training_comparison.json").read_text())["runs"]
    assert runs["bernoulli/gumbel"]["history"]["epoch"] == [1] and "temperature" in runs["bernoulli/gumbel"]["history"]
    config = json.loads((lab / "discrete_lab.json").read_text())
    assert config["quick"] is True and config["seconds"]["total"] > 0


def test_quick_lab_tells_biased_from_unbiased(lab):
    """Even at quick sizes (8 batch means per setting) the unbiased estimators stay within 5 standard
    errors of the exact gradient (the bias_se of an unbiased estimator is about 1; measured 0.6-1.4)
    while the Gumbel-softmax at tau = 1 is many away (measured 18 and 19), VIMCO is unbiased for its own
    target and not for the ELBO's, and lowering tau trades the Gumbel-softmax's bias for variance."""
    rows = read_csv(lab / "bias_variance.csv")
    for latent in ("bernoulli", "categorical"):
        mine = [r for r in rows if r["latent"] == latent]
        pick = {(r["setting"], r["K"], r["temperature"], r["target"]): r for r in mine}
        for r in mine:
            if r["setting"] in ("score", "score+loo", "nvil") or r["target"] == "bound":
                assert float(r["bias_se"]) < 5, r
        assert float(pick["vimco", "2", "", "elbo"]["bias_se"]) > 3 * float(pick["vimco", "2", "", "bound"]["bias_se"])
        hot, cold = pick["gumbel", "2", "1", "elbo"], pick["gumbel", "2", "0.1", "elbo"]
        assert float(hot["bias_se"]) > 5
        assert float(cold["rel_bias"]) < float(hot["rel_bias"]) and float(cold["variance"]) > float(hot["variance"])


def test_bias_in_standard_errors_is_about_one_without_bias():
    """estimate_statistics on synthetic draws: unbiased Gaussian means give bias_se ~ 1 (the squared
    error's expectation is the summed squared standard errors; over P = 400 coordinates the ratio is
    within 10 % of 1); a shift of 5 standard errors in every coordinate gives sqrt(1 + 5^2)."""
    rng = np.random.default_rng(0)
    M, P, R = 200, 400, 10
    exact = rng.standard_normal(P)
    means = exact + rng.standard_normal((M, P))            # each batch mean has standard deviation 1
    stats = estimate_statistics(means, R, exact, np.ones(P, bool))
    assert abs(stats["bias_se"] - 1) < 0.1 and stats["draws"] == M * R
    assert abs(stats["variance"] / (R * P) - 1) < 0.05      # one estimate's variance: R times a mean's
    shifted = estimate_statistics(means + 5 / np.sqrt(M), R, exact, np.ones(P, bool))
    assert abs(shifted["bias_se"] - np.sqrt(26)) < 0.3      # sqrt(1 + 5^2): noise and bias add in squares
    with pytest.raises(ValueError, match="deterministic"):
        estimate_statistics(np.ones((5, 3)), 1, np.zeros(3), np.ones(3, bool))


def test_discrete_active_units_counts_moving_posterior_means():
    from numpyvae.lab.discrete_lab import active_units
    dm = nv.DiscreteVAE(6, (), 3, latent="categorical", n_categories=3, seed=0, dtype=np.float64)
    dm.params["enc.logits.W"][...] = 0.0
    dm.params["enc.logits.W"][0, :3] = [20.0, -20.0, 0.0]       # variable 0 follows pixel 0; 1 and 2 do not
    x = np.zeros((4, 6))
    x[::2, 0] = 1.0     # rho_0 = (1, 0, 0) or (1/3, 1/3, 1/3): variances 1/9 + 1/36 + 1/36 = 1/6
    n, var = active_units(dm, x)
    assert n == 1 and var.shape == (3,) and var[0] == pytest.approx(1 / 6, rel=1e-6) and np.all(var[1:] == 0)
