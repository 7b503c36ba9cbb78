"""The command line end to end on a tiny model: train, resume, sample, reconstruct, evaluate,
plot; and every failure a user can cause, each of which must be one line (no traceback):
usage errors, unwritable or wrong --out, a full disk, absurd sizes, crafted run folders,
resume with options it cannot change, Ctrl-C. (tests/test_runs.py runs the command line as
separate processes: concurrent runs, kill -9, divergence, SIGINT.)"""

import argparse
import errno
import json
import os
import tempfile

import numpy as np
import pytest

from numpyvae import checkpoint, cli
from numpyvae.checkpoint import load_checkpoint, save_checkpoint
from numpyvae.cli import RESUME_KEEPS, RESUME_MAY_CHANGE, build_parser, main
from numpyvae.training import load_run

TINY = ["--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--batch-size", "256"]
SMALL = ["--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--batch-size", "512", "--no-figures"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A one-epoch run that no test changes."""
    out = tmp_path_factory.mktemp("saved") / "r"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.fixture
def fresh_run(tmp_path):
    """A one-epoch run a test may resume or damage."""
    out = tmp_path / "fresh"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return out


def one_line_error(capsys, argv, code=1):
    """Run the command; it must return `code` and print exactly one line to stderr, no traceback."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"numpyvae {argv[0]}: "), lines
    return lines[0]


def usage_error(capsys, argv):
    """argparse errors: exit 2, the one line that matters and a pointer to --help, no usage block."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[1] == f"(see `numpyvae {argv[0]} --help`)", lines
    return lines[0]


# ---------------------------------------------------------------------------- the happy path

def test_train_writes_run(run_dir, capsys):
    files = set(os.listdir(run_dir))
    assert {"checkpoint.npz", "history.json", "config.json", "curves.png", "reconstructions.png",
            "samples.png", "interpolation.png", "latent.png", "manifold.png", "run.lock"} <= files
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == [1] and history["test_elbo"][0] < 0


def test_refuses_to_overwrite_and_resumes(run_dir, capsys):
    before = (run_dir / "checkpoint.npz").read_bytes()
    line = one_line_error(capsys, ["train", *TINY, "--out", str(run_dir)])
    assert line == (f"numpyvae train: error: {run_dir} already holds a run (checkpoint.npz, history.json, "
                    "config.json); pass --resume to continue it or choose another --out (nothing was overwritten)")
    assert (run_dir / "checkpoint.npz").read_bytes() == before
    line = one_line_error(capsys, ["train", "--resume", "--out", str(run_dir), "--epochs", "1"])
    assert line.endswith(f"{run_dir} already has 1 epochs; ask for more with --epochs N (N > 1)")
    assert main(["train", "--resume", "--out", str(run_dir), "--epochs", "2", "--no-figures"]) == 0
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == [1, 2]
    out = capsys.readouterr().out
    assert "resuming" in out and "trained epoch 2 (1 in this call) in " in out


def test_run_commands(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run_dir), "-n", "5", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "r.png").stat().st_size > 0
    assert main(["evaluate", str(run_dir), "--importance", "20", "--limit", "50"]) == 0
    assert f"wrote {run_dir / 'evaluation.json'}" in capsys.readouterr().out
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["n_test"] == 50 and result["importance_samples"] == 20
    # importance weighting tightens the bound (Burda et al.): above the ELBO on average
    assert result["test_log_likelihood"] > result["test_elbo"]
    assert main(["plot", str(run_dir)]) == 0
    assert "train ELBO" in capsys.readouterr().out


def test_sample_and_reconstruct_leave_the_training_figures_alone(run_dir, capsys):
    training = {name: (run_dir / name).read_bytes() for name in ("samples.png", "reconstructions.png")}
    assert main(["sample", str(run_dir), "-n", "9", "--seed", "3"]) == 0
    assert main(["reconstruct", str(run_dir), "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run_dir / 'sample-n9-seed3.png'} (9 samples from the prior)" in out
    assert f"wrote {run_dir / 'reconstruct-n4.png'}" in out
    assert (run_dir / "sample-n9-seed3.png").read_bytes()[:4] == b"\x89PNG"
    assert all((run_dir / name).read_bytes() == data for name, data in training.items())


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
    line = one_line_error(capsys, ["train", *tiny, "--objective", "iwae", "--estimator", "score",
                                   "--out", str(tmp_path / "x")])
    assert "takes no --estimator" in line
    assert not (tmp_path / "x").exists(), "a refused configuration leaves no run directory"


DISCRETE = ["--hidden", "8", "--latent-dim", "3", "--epochs", "1", "--batch-size", "512"]


@pytest.mark.parametrize("latent, options", [
    ("bernoulli", ["--estimator", "score", "--baseline", "loo", "--samples", "2"]),
    ("categorical", ["--estimator", "nvil"]),
    ("bernoulli", ["--estimator", "vimco", "--samples", "2"]),
    ("categorical", []),                                  # the defaults: gumbel, tau 1, 10 classes
    ("bernoulli", ["--estimator", "straight-through", "--temperature", "2", "--temperature-min", "0.5",
                   "--anneal-rate", "0.1"]),
], ids=["score-loo", "nvil", "vimco", "defaults", "straight-through-annealed"])
def test_a_discrete_code_trains_through_the_cli(tmp_path, latent, options, capsys):
    """One epoch of a tiny DiscreteVAE per estimator; a discrete code binarises dynamically by
    default; the run loads back as a DiscreteVAE with its options, and every later command reads it."""
    out = tmp_path / "run"
    assert main(["train", *DISCRETE, "--latent", latent, *options, "--no-figures", "--out", str(out)]) == 0
    run = load_run(out)
    assert type(run.model).__name__ == "DiscreteVAE" and run.model.posterior.name == latent
    assert run.config.binarize == "dynamic" and run.history["epoch"] == [1]
    given = dict(zip(options[::2], options[1::2]))
    assert run.config.estimator == given.get("--estimator", "gumbel")
    if latent == "categorical":
        assert run.model.posterior.n_categories == 10
    if run.config.estimator in ("gumbel", "straight-through"):
        assert run.history["temperature"] == [max(0.5, float(given.get("--temperature", 1))
                                                  * np.exp(-float(given.get("--anneal-rate", 0)) * 15))]
    assert (run.baseline is not None) == (run.config.estimator in ("nvil", "score"))


def test_every_command_reads_a_discrete_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *DISCRETE, "--latent", "categorical", "--categories", "3", "--estimator", "nvil",
                 "--out", str(out)]) == 0
    assert {"curves.png", "reconstructions.png", "samples.png", "latent_pca.png"} <= set(os.listdir(out))
    assert not {"interpolation.png", "latent.png", "manifold.png"} & set(os.listdir(out))
    assert main(["evaluate", str(out), "--importance", "20", "--limit", "50"]) == 0
    assert "KL per variable, largest first" in capsys.readouterr().out
    result = json.loads((out / "evaluation.json").read_text())
    assert len(result["kl_per_dim"]) == 3 and len(result["active_unit_variance"]) == 3
    assert result["test_log_likelihood"] > result["test_elbo"]
    assert main(["sample", str(out), "-n", "9"]) == 0 and main(["reconstruct", str(out), "-n", "4"]) == 0
    assert main(["plot", str(out)]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    line = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--epochs", "2", "--latent", "bernoulli",
                                   "--categories", "4", "--estimator", "vimco", "--temperature", "0.5"])
    assert line == ("numpyvae train: error: --resume cannot change: --latent (saved categorical, given bernoulli), "
                    "--categories (saved 3, given 4), --estimator (saved nvil, given vimco), --temperature (saved 1, "
                    "given 0.5); start a new run (another --out) to train with different settings")
    assert (out / "checkpoint.npz").read_bytes() == before
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--latent", "categorical",
                 "--no-figures"]) == 0
    assert load_run(out).epoch == 2


@pytest.mark.parametrize("options, message", [
    (["--estimator", "nvil"], "--estimator nvil trains a discrete code: add --latent bernoulli or --latent "
                              "categorical"),
    (["--latent", "bernoulli", "--estimator", "stl"], "--estimator stl does not train a discrete code (--latent "
                                                      "bernoulli); choose one of score, nvil, vimco, gumbel, "
                                                      "straight-through"),
    (["--latent", "bernoulli", "--estimator", "vimco"], "--estimator vimco needs --samples K >= 2 (each of the K "
                                                        "samples gets a baseline from the others); got --samples 1"),
    (["--latent", "bernoulli", "--estimator", "vimco", "--samples", "2", "--beta", "0.5"],
     "estimator='vimco' trains on the K-sample bound, which has no KL term to weight"),
    (["--latent", "bernoulli", "--estimator", "score", "--temperature", "0.5"],
     "--temperature, --temperature-min and --anneal-rate apply to --estimator gumbel and straight-through, which "
     "relax the code; --estimator score takes none"),
    (["--temperature", "0.5"], "--estimator reparam takes none"),
    (["--latent", "bernoulli", "--temperature-min", "0.5"], "--temperature-min and --anneal-rate go together"),
    (["--latent", "bernoulli", "--anneal-rate", "0.5"], "--temperature-min and --anneal-rate go together"),
    (["--latent", "bernoulli", "--temperature-min", "2", "--anneal-rate", "0.1"],
     "--temperature-min 2.0 exceeds --temperature 1.0, where the annealing starts"),
    (["--latent", "bernoulli", "--categories", "4"], "--categories applies to --latent categorical only"),
    (["--categories", "4"], "--categories applies to --latent categorical only"),
    (["--latent", "categorical", "--posterior", "full"], "--posterior is the covariance of a Gaussian code"),
    (["--latent", "categorical", "--conditional"], "--conditional trains a conditional VAE with a Gaussian code"),
    (["--latent", "bernoulli", "--objective", "iwae"], "--objective iwae is for a Gaussian code; a discrete code "
                                                       "trains on the K-sample bound with --estimator vimco"),
    (["--latent", "bernoulli", "--likelihood", "gaussian", "--binarize", "dynamic"],
     "binarize='dynamic' only makes sense with the bernoulli likelihood"),
], ids=lambda v: v[0] if isinstance(v, list) and len(v) == 1 else " ".join(v) if isinstance(v, list) else "")
def test_bad_discrete_options_are_one_line(tmp_path, options, message, capsys):
    line = one_line_error(capsys, ["train", *DISCRETE, *options, "--out", str(tmp_path / "x")])
    assert message in line, line
    assert not (tmp_path / "x").exists(), "a refused configuration leaves no run directory"


@pytest.mark.parametrize("argv, line", [
    (["train", "--temperature", "0"], "numpyvae train: error: argument --temperature: expected a positive number, "
                                      "got 0"),
    (["train", "--categories", "1"], "numpyvae train: error: argument --categories: expected an integer >= 2 (a "
                                     "variable of one class carries nothing), got 1"),
    (["train", "--latent", "gumbel"], "numpyvae train: error: argument --latent: invalid choice: 'gumbel' (choose "
                                      "from 'gaussian', 'bernoulli', 'categorical')"),
    (["discrete", "--importance", "0"], "numpyvae discrete: error: argument --importance: expected a positive "
                                        "integer, got 0"),
])
def test_discrete_usage_errors_are_one_line(argv, line, capsys):
    assert usage_error(capsys, argv) == line


def test_autoencoders_command(tmp_path, capsys):
    assert main(["autoencoders", "--quick", "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert {"random_codes.png", "denoising.png", "autoencoders.json"} <= set(os.listdir(tmp_path))
    assert "DAE" in capsys.readouterr().out
    assert "--noise must look like" in one_line_error(capsys, ["autoencoders", "--quick", "--noise", "salt",
                                                               "--out", str(tmp_path)])


def test_new_run_directories_never_collide(tmp_path, monkeypatch, capsys):
    # Names have one-second resolution: freeze the clock so every run asks for the same name.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20240101-000000")
    for seed in ("1", "2", "3"):
        assert main(["train", *SMALL, "--seed", seed]) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["mnist-mini-20240101-000000", "mnist-mini-20240101-000000-2", "mnist-mini-20240101-000000-3"]
    seeds = [json.loads((tmp_path / "runs" / r / "config.json").read_text())["train"]["seed"] for r in runs]
    assert seeds == [1, 2, 3]


# ---------------------------------------------------------------------------- usage and --help

@pytest.mark.parametrize("argv, line", [
    (["train", "--epochs", "0"], "numpyvae train: error: argument --epochs: expected a positive integer, got 0"),
    (["train", "--lr", "nan"], "numpyvae train: error: argument --lr: expected a positive number, got nan"),
    (["train", "--seed", "-1"], "numpyvae train: error: argument --seed: expected an integer >= 0, got -1"),
    (["train", "--latent-dims", "2"], "numpyvae train: error: unrecognized arguments: --latent-dims 2"),
    (["sample", "-n", "100000"], "numpyvae sample: error: argument -n: expected a number of images from 1 to "
                                 "1024 (one figure), got 100000"),
    (["sample", "-n", "100000000000"], "numpyvae sample: error: argument -n: expected a number of images from 1 "
                                       "to 1024 (one figure), got 100000000000"),
    (["estimators", "--R", "1"], "numpyvae estimators: error: argument --R: expected an integer >= 2 (a variance "
                                 "needs two or more estimates), got 1"),
])
def test_usage_errors_are_one_line_and_blame_the_subcommand(argv, line, capsys):
    assert usage_error(capsys, argv) == line


@pytest.mark.parametrize("command", ["train", "sample", "reconstruct", "evaluate", "plot", "estimators",
                                     "discrete", "autoencoders"])
def test_help_shows_every_default_once(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage: numpyvae " + command in text and "(default: None)" not in text
    parser = build_parser().subcommands[command]
    for action in parser._actions:
        entry = help_entry(parser, action)
        has_value_default = action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool)
        # an option with a value default shows it exactly once; one without shows at most its own words
        assert entry.count("(default") == 1 if has_value_default else entry.count("(default") <= 1, entry


def help_entry(parser, action):
    """The --help entry of one option, as --help prints it, on one line."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def test_train_help_shows_the_defaults_the_readme_lists():
    parser = build_parser().subcommands["train"]
    entries = {a.option_strings[0]: help_entry(parser, a) for a in parser._actions}
    for option, default in (("--latent-dim", "20"), ("--hidden", "400"), ("--activation", "relu"),
                            ("--likelihood", "bernoulli"), ("--batch-size", "128"), ("--lr", "0.001"),
                            ("--optimizer", "adam"), ("--dtype", "float32"), ("--seed", "0"), ("--epochs", "20"),
                            ("--decoder-mean", "sigmoid"), ("--obs-std-min", "0.05")):
        assert entries[option].endswith(f"(default: {default})"), entries[option]


def test_every_train_option_is_either_changeable_or_kept_on_resume():
    dests = {a.dest for a in build_parser().subcommands["train"]._actions} - {"help", "out", "resume"}
    assert not set(RESUME_MAY_CHANGE) & set(RESUME_KEEPS)
    assert dests == set(RESUME_MAY_CHANGE) | set(RESUME_KEEPS)


# ---------------------------------------------------------------------------- --resume

@pytest.mark.parametrize("option, saved, given", [
    (["--latent-dim", "3"], "2", "3"), (["--hidden", "16"], "8", "16"), (["--hidden"], "8", "(none)"),
    (["--activation", "tanh"], "relu", "tanh"), (["--likelihood", "gaussian"], "bernoulli", "gaussian"),
    (["--obs-var", "0.5"], "1", "0.5"), (["--posterior", "full"], "diag", "full"),
    (["--conditional"], "off", "on"), (["--dtype", "float64"], "float32", "float64"),
    (["--objective", "iwae"], "elbo", "iwae"), (["--k", "7"], "5", "7"),
    (["--estimator", "score"], "reparam", "score"), (["--baseline", "ema"], "none", "ema"),
    (["--samples", "2"], "1", "2"), (["--beta", "0.5"], "1", "0.5"), (["--warmup", "2"], "0", "2"),
    (["--binarize", "static"], "none", "static"), (["--batch-size", "64"], "512", "64"),
    (["--optimizer", "sgd"], "adam", "sgd"), (["--seed", "1"], "0", "1"),
    (["--dataset", "mnist"], "mnist-mini", "mnist"),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_resume_refuses_each_option_it_cannot_change(saved_run, option, saved, given, capsys):
    before = (saved_run / "checkpoint.npz").read_bytes()
    line = one_line_error(capsys, ["train", "--out", str(saved_run), "--resume", "--epochs", "2", *option])
    assert line == (f"numpyvae train: error: --resume cannot change: {option[0]} (saved {saved}, given {given}); "
                    "start a new run (another --out) to train with different settings")
    assert (saved_run / "checkpoint.npz").read_bytes() == before


@pytest.fixture(scope="module")
def saved_learned_run(tmp_path_factory):
    """A one-epoch gaussian-learned run with the default decoder mean and floor."""
    out = tmp_path_factory.mktemp("learned") / "r"
    assert main(["train", *SMALL, "--likelihood", "gaussian-learned", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("likelihood, used", [("bernoulli", {"decoder_mean": "identity", "obs_std_min": None}),
                                              ("gaussian", {"decoder_mean": "sigmoid", "obs_std_min": None}),
                                              ("gaussian-learned", {"decoder_mean": "sigmoid", "obs_std_min": 0.05})])
def test_decoder_mean_and_floor_go_to_the_likelihoods_that_use_them(likelihood, used, saved_run, saved_learned_run,
                                                                   tmp_path):
    """The CLI's defaults (sigmoid, 0.05) reach the model only for the likelihoods that use them;
    the other likelihoods keep the model's defaults (the model refuses them)."""
    if likelihood == "gaussian":
        out = tmp_path / "g"
        assert main(["train", *SMALL, "--likelihood", "gaussian", "--out", str(out)]) == 0
    else:
        out = saved_run if likelihood == "bernoulli" else saved_learned_run
    model = json.loads((out / "config.json").read_text())["model"]
    assert {k: model[k] for k in used} == used


@pytest.mark.parametrize("option, saved, given", [(["--obs-std-min", "0.1"], "0.05", "0.1"),
                                                  (["--decoder-mean", "identity"], "sigmoid", "identity")])
def test_resume_refuses_a_different_decoder_mean_or_floor(saved_learned_run, option, saved, given, capsys):
    before = (saved_learned_run / "checkpoint.npz").read_bytes()
    line = one_line_error(capsys, ["train", "--out", str(saved_learned_run), "--resume", "--epochs", "2", *option])
    assert line == (f"numpyvae train: error: --resume cannot change: {option[0]} (saved {saved}, given {given}); "
                    "start a new run (another --out) to train with different settings")
    assert (saved_learned_run / "checkpoint.npz").read_bytes() == before


def test_resume_refuses_a_different_data_dir(saved_run, tmp_path, capsys):
    line = one_line_error(capsys, ["train", "--out", str(saved_run), "--resume", "--data-dir", str(tmp_path)])
    assert f"--data-dir (saved (none), given {tmp_path})" in line


def test_resume_applies_and_prints_what_it_may_change(fresh_run, capsys):
    # Options given with their saved values are no change, nor are options the run's likelihood does not
    # use (a Bernoulli run has no decoder mean or floor); --epochs omitted would mean "the saved total".
    assert main(["train", "--out", str(fresh_run), "--resume", "--epochs", "2", "--lr", "0.0005",
                 "--clip-norm", "5", "--latent-dim", "2", "--hidden", "8", "--decoder-mean", "identity",
                 "--obs-std-min", "0.2", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 1 -> 2\nlr: 0.001 -> 0.0005\nclip-norm: (none) -> 5\n" in out
    assert "trained epoch 2 (1 in this call)" in out
    run = load_run(fresh_run)
    assert (run.epoch, run.config.lr, run.config.clip_norm) == (2, 0.0005, 5.0)
    assert (run.optimizer.lr, run.optimizer.clip_norm) == (0.0005, 5.0)
    # and without --epochs a finished run has nothing left to do
    assert "already has 2 epochs" in one_line_error(capsys, ["train", "--out", str(fresh_run), "--resume"])


def test_resume_of_what_is_not_a_run(tmp_path, capsys):
    assert one_line_error(capsys, ["train", "--resume"]).endswith("--resume needs --out RUN_DIR (the run to "
                                                                  "continue)")
    assert "is not a directory" in one_line_error(capsys, ["train", "--resume", "--out", str(tmp_path / "no")])
    assert "holds no checkpoint" in one_line_error(capsys, ["train", "--resume", "--out", str(tmp_path)])


# ---------------------------------------------------------------------------- --out and the disk

def test_out_that_is_a_file_or_under_a_file(tmp_path, saved_run, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for command in (["train", *SMALL], ["estimators", "--quick"], ["autoencoders", "--quick"]):
        line = one_line_error(capsys, [*command, "--out", str(a_file)])
        assert line.endswith(f"--out {a_file} exists and is not a directory"), line
    assert a_file.read_text() == "x"
    for command in (["train", *SMALL], ["estimators", "--quick"], ["autoencoders", "--quick"]):
        for out in (a_file / "run", a_file / "sub" / "run"):
            line = one_line_error(capsys, [*command, "--out", str(out)])
            assert line.endswith(f"error: --out {out}: {a_file} is a file, not a directory"), line
    for command in ("sample", "reconstruct"):
        line = one_line_error(capsys, [command, str(saved_run), "--out", str(tmp_path)])
        assert line.endswith(f"--out {tmp_path} is a directory; give a file name such as "
                             f"{tmp_path / 'figure.png'}"), line
        line = one_line_error(capsys, [command, str(saved_run), "--out", str(a_file / "x.png")])
        assert line.endswith(f"{a_file} is a file, not a directory"), line


def unwritable_directory(tmp_path):
    """A directory nothing can be created in: /sys (refused even to root on Linux), or a
    read-only folder for a user that is not root."""
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pass
    except OSError:
        return "/sys"
    if os.name == "posix" and os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir(mode=0o500)
        return str(ro)
    pytest.skip("no unwritable directory available")


@pytest.mark.parametrize("command", [["train", *SMALL], ["estimators", "--quick"], ["autoencoders", "--quick"]])
def test_unwritable_out_fails_before_any_work(tmp_path, command, capsys):
    ro = unwritable_directory(tmp_path)
    for out in (ro, os.path.join(ro, "new-run")):
        line = one_line_error(capsys, [*command, "--out", out])
        assert out in line and ("Permission denied" in line or "not permitted" in line), line
        assert "epoch" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
def test_unwritable_figure_path_is_one_line(saved_run, tmp_path, command, capsys):
    path = os.path.join(unwritable_directory(tmp_path), "figure.png")
    line = one_line_error(capsys, [command, str(saved_run), "--out", path])
    assert line.startswith(f"numpyvae {command}: error: cannot write {path}: "), line


@pytest.mark.parametrize("command", ["sample", "reconstruct", "evaluate", "plot"])
def test_permission_error_while_writing_into_the_run_is_one_line(saved_run, monkeypatch, command, capsys):
    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", refuse)
    monkeypatch.setattr("numpyvae.lab.plotting.atomic_write_bytes", refuse)
    extra = ["--importance", "2", "--limit", "5"] if command == "evaluate" else []
    line = one_line_error(capsys, [command, str(saved_run), *extra])
    assert line.startswith(f"numpyvae {command}: error: cannot write ") and line.endswith("Permission denied"), line


def test_full_disk_is_one_line_and_keeps_the_checkpoint(fresh_run, monkeypatch, capsys):
    before = (fresh_run / "checkpoint.npz").read_bytes()
    write = checkpoint.atomic_write_bytes

    def full_disk(path, data):
        if os.path.basename(path) == "checkpoint.npz":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, data)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_disk)
    line = one_line_error(capsys, ["train", "--out", str(fresh_run), "--resume", "--epochs", "2"])
    assert line == (f"numpyvae train: error: could not save epoch 2 in {fresh_run} (No space left on device); "
                    "the checkpoint of epoch 1 is intact")
    assert (fresh_run / "checkpoint.npz").read_bytes() == before
    assert load_run(fresh_run).epoch == 1


# ---------------------------------------------------------------------------- sizes and crafted runs

@pytest.mark.parametrize("argv, start", [
    (["--hidden", "100000000000"], "--hidden 100000000000 is too large: the model needs about "),
    (["--latent-dim", "100000000000"], "--latent-dim 100000000000 is too large: the model needs about "),
    (["--samples", "1000000000000"], "--samples 1000000000000 is too large: one training step on 512 x "),
    (["--objective", "iwae", "--k", "1000000000000"], "--k 1000000000000 is too large: one training step on "),
])
def test_absurd_sizes_are_refused_before_allocating(tmp_path, argv, start, capsys):
    line = one_line_error(capsys, ["train", *SMALL, *argv, "--out", str(tmp_path / "x")])
    assert line.startswith(f"numpyvae train: error: {start}") and "this machine has" in line, line
    assert not (tmp_path / "x").exists()


def test_memory_error_is_one_line(saved_run, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 8.00 TiB for an array with shape (1000000000000,)")
    monkeypatch.setattr(cli, "load_run", no_memory)
    assert one_line_error(capsys, ["sample", str(saved_run)]) == (
        "numpyvae sample: error: out of memory: Unable to allocate 8.00 TiB for an array with shape (1000000000000,)")


@pytest.mark.parametrize("damage, field", [
    (lambda a, m: a.__setitem__("param.enc.h0.W", np.full_like(a["param.enc.h0.W"], np.nan)), "'param.enc.h0.W'"),
    (lambda a, m: m.__setitem__("epoch", -5), "field 'epoch'"),
    (lambda a, m: m.__setitem__("epoch", 1.5), "field 'epoch'"),
    (lambda a, m: m.pop("rng"), "field 'rng'"),
    (lambda a, m: m.pop("optimizer"), "field 'optimizer'"),
    (lambda a, m: m.pop("history"), "field 'history'"),
], ids=["nan-param", "epoch-5", "epoch-1.5", "no-rng", "no-optimizer", "no-history"])
@pytest.mark.parametrize("command", ["evaluate", "sample", "train"])
def test_crafted_run_folders_are_one_line(tmp_path, saved_run, damage, field, command, capsys):
    arrays, meta = load_checkpoint(saved_run / "checkpoint.npz")
    damage(arrays, meta)
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    save_checkpoint(crafted / "checkpoint.npz", arrays, meta)
    argv = {"evaluate": ["evaluate", str(crafted)], "sample": ["sample", str(crafted)],
            "train": ["train", "--out", str(crafted), "--resume", "--epochs", "3"]}[command]
    line = one_line_error(capsys, argv)
    assert line.startswith(f"numpyvae {command}: error: {crafted / 'checkpoint.npz'}: ") and field in line, line


# ---------------------------------------------------------------------------- Ctrl-C

@pytest.mark.parametrize("command, target, message", [
    ("evaluate", "_evaluate", "interrupted; {run}/evaluation.json was not written"),
    ("plot", "_write_figures", "interrupted; some figures in {run} may not have been redrawn (each file is the "
                               "old or the new figure, never half of one)"),
    ("sample", "plot_image_grid", "interrupted; nothing was written"),
])
def test_ctrl_c_says_what_was_written(saved_run, monkeypatch, command, target, message, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(f"numpyvae.{'lab.plotting' if target == 'plot_image_grid' else 'cli'}.{target}", interrupt)
    capsys.readouterr()
    assert main([command, str(saved_run)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"numpyvae {command}: " + message.format(run=saved_run)


def test_ctrl_c_in_the_estimator_lab(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("numpyvae.lab.estimator_lab.run_lab", interrupt)
    assert main(["estimators", "--quick", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == (f"numpyvae estimators: interrupted before the lab finished; "
                                               f"{tmp_path} holds none or only some of its files (run it again)")


def test_ctrl_c_in_the_discrete_lab(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("numpyvae.lab.discrete_lab.run_discrete_lab", interrupt)
    assert main(["discrete", "--quick", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == (f"numpyvae discrete: interrupted before the lab finished; "
                                               f"{tmp_path} holds none or only some of its files (run it again)")


def test_figure_count_type_accepts_its_bounds():
    assert cli._figure_count("1") == 1 and cli._figure_count("1024") == 1024
    with pytest.raises(argparse.ArgumentTypeError):
        cli._figure_count("1025")
