"""The command line end to end on a tiny model: train, resume, sample, reconstruct, evaluate,
plot, and the errors a user meets first."""

import json
import os

import pytest

from numpyvae.cli import build_parser, main

TINY = ["--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--batch-size", "256"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_run(run_dir, capsys):
    files = set(os.listdir(run_dir))
    assert {"checkpoint.npz", "history.json", "config.json", "curves.png", "reconstructions.png",
            "samples.png", "interpolation.png", "latent.png", "manifold.png"} <= files
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [1] and history["test_elbo"][0] < 0


def test_refuses_to_overwrite_and_resumes(run_dir, capsys):
    before = (run_dir / "checkpoint.npz").read_bytes()
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["train", *TINY, "--out", str(run_dir)])
    assert (run_dir / "checkpoint.npz").read_bytes() == before
    with pytest.raises(SystemExit, match="already has 1 epochs"):
        main(["train", "--resume", "--out", str(run_dir), "--epochs", "1"])
    assert main(["train", "--resume", "--out", str(run_dir), "--epochs", "2", "--no-figures"]) == 0
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == [1, 2]
    assert "resuming" in capsys.readouterr().out


def test_run_commands(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run_dir), "-n", "5", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "r.png").stat().st_size > 0
    assert main(["evaluate", str(run_dir), "--importance", "20", "--limit", "50"]) == 0
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["n_test"] == 50 and result["importance_samples"] == 20
    # importance weighting tightens the bound (Burda et al.): above the ELBO on average
    assert result["test_log_likelihood"] > result["test_elbo"]
    assert main(["plot", str(run_dir)]) == 0
    assert "train ELBO" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "sample", "reconstruct", "evaluate", "plot"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage: numpyvae " + command in capsys.readouterr().out


def test_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not a run directory"):
        main(["sample", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_conditional_iwae_and_full_posterior_runs(tmp_path, capsys):
    tiny = ["--hidden", "16", "--latent-dim", "3", "--epochs", "1", "--batch-size", "256"]
    cv = tmp_path / "cv"
    assert main(["train", *tiny, "--conditional", "--out", str(cv)]) == 0
    assert (cv / "class_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((cv / "config.json").read_text())["model"]["n_classes"] == 10
    assert main(["evaluate", str(cv), "--importance", "5", "--limit", "20"]) == 0
    assert main(["sample", str(cv), "-n", "20"]) == 0 and main(["reconstruct", str(cv), "-n", "4"]) == 0
    iw = tmp_path / "iw"
    assert main(["train", *tiny, "--objective", "iwae", "--k", "3", "--posterior", "full", "--no-figures",
                 "--out", str(iw)]) == 0
    cfg = json.loads((iw / "config.json").read_text())
    assert cfg["train"]["objective"] == "iwae" and cfg["train"]["k"] == 3 and cfg["model"]["posterior"] == "full"
    assert main(["train", "--resume", "--out", str(iw), "--epochs", "2", "--no-figures"]) == 0
    assert main(["train", *tiny, "--objective", "iwae", "--estimator", "score", "--out", str(tmp_path / "x")]) == 1
    assert "takes no --estimator" in capsys.readouterr().err


def test_autoencoders_command(tmp_path, capsys):
    assert main(["autoencoders", "--quick", "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert {"random_codes.png", "denoising.png", "autoencoders.json"} <= set(os.listdir(tmp_path))
    assert "DAE" in capsys.readouterr().out
    assert main(["autoencoders", "--quick", "--noise", "salt", "--out", str(tmp_path)]) == 1
