"""The `numpyvae` command line (also `python -m numpyvae`).

    numpyvae train        train a VAE and write checkpoint, history and figures into a run directory
    numpyvae sample       decode prior samples of a trained run
    numpyvae reconstruct  reconstructions of test digits next to their inputs
    numpyvae evaluate     test ELBO and importance-weighted log-likelihood
    numpyvae plot         (re)draw every figure of a run
    numpyvae estimators   gradient-estimator lab: variance and SNR tables, figures, training comparison
    numpyvae discrete     discrete-latent lab: each estimator's bias and variance against exact
                          enumeration, and each one trained on mnist-mini beside a Gaussian VAE
    numpyvae autoencoders autoencoder vs denoising autoencoder vs VAE

Every command after `train` takes a run directory and defaults to the newest one under ./runs.

Threads: BLAS runs on one thread and numpyvae splits its large products and elementwise work over
NUMPYVAE_NUM_THREADS threads (default: the cores, at most 2), which stays fast when other programs
share the cores. Setting OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS) hands the threading to BLAS
instead; NUMPYVAE_NUM_THREADS=1 runs on one core (README, "Speed").

Exit status: 0 done; 1 an error, reported as one line "numpyvae COMMAND: error: ..."
(sometimes followed by one "hint:" line); 2 a usage error; 130 interrupted (Ctrl-C), with
a line that says what was saved.
"""

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
import tempfile
import time

import numpy as np

from . import __version__, parallel
from .checkpoint import atomic_write_json
from .data import DATASET_NAMES, load_dataset
from .distributions import DECODER_MEANS, LIKELIHOODS, POSTERIORS
from .discrete_estimators import ESTIMATORS as DISCRETE_ESTIMATORS
from .discrete_posteriors import LATENTS
from .estimators import BASELINES, ESTIMATORS
from .layers import ACTIVATIONS
from .conditional import ConditionalVAE
from .discrete import DiscreteVAE
from .model import ARCHITECTURES, DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM, VAE, make_networks
from .convnet import DEFAULT_CHANNELS
from .training import (BINARIZE_MODES, CHECKPOINT, RELAXED_ESTIMATORS, TrainConfig, TrainingDiverged,
                       check_config_for_model, create_run_dir, estimate_parameters, evaluate_elbo, fixed_test_noise,
                       history_table, load_run, new_run, labels_for, prepare_pixels, run_files, run_lock, train,
                       LOCK_FILE)

RUNS_DIR = "runs"

# Defaults of `numpyvae train`: chosen so that a bare `numpyvae train` finishes well within three
# minutes on a 2-core laptop (8 s measured on an idle one) and its prior samples are recognisable digits.
# The Gaussian likelihoods' defaults suit the pixels every run trains on, grey values in [0, 1]: a
# sigmoid mean and a floor of 0.05 on a learned standard deviation (the measurements behind them:
# docs/distributions.md, section 4).
_TRAIN = TrainConfig()    # the trainer's defaults, and the model's (numpyvae.model): one default run
DEFAULTS = dict(dataset="mnist-mini", epochs=_TRAIN.epochs, latent_dim=DEFAULT_LATENT_DIM,
                hidden=list(DEFAULT_HIDDEN_DIMS), activation=DEFAULT_ACTIVATION, likelihood="bernoulli",
                decoder_mean="sigmoid", obs_std_min=0.05, batch_size=_TRAIN.batch_size, lr=_TRAIN.lr,
                samples=_TRAIN.n_samples, binarize=_TRAIN.binarize, seed=_TRAIN.seed, dtype="float32",
                optimizer=_TRAIN.optimizer, beta=_TRAIN.beta, warmup=_TRAIN.warmup_epochs,
                estimator=_TRAIN.estimator, latent="gaussian", temperature=_TRAIN.temperature)

# A discrete --latent (numpyvae.discrete.DiscreteVAE) changes three defaults: its pixels are binarised
# afresh every epoch (as in the papers whose numbers docs/discrete.md compares with: binary MNIST), its
# estimator is one of the discrete ones, and a categorical variable has 10 classes (Jang et al. 2017).
DISCRETE_DEFAULTS = dict(binarize="dynamic", estimator="gumbel", categories=10)

# At most this many images in one figure of `sample` / `reconstruct`: 1024 prior samples make a
# 32 x 32 grid of 28-pixel digits that can still be read; beyond, a grid turns into moire.
MAX_FIGURE_IMAGES = 1024

# What `train --resume` may change (each change is printed), and what it refuses to change
# because the saved model, its optimiser state or its data were built from it. Every option of
# `train` is in exactly one of the two (tests/test_cli.py checks), besides --out and --resume.
RESUME_MAY_CHANGE = ("epochs", "lr", "clip_norm", "importance", "no_figures", "download")
RESUME_KEEPS = ("arch", "channels", "hidden", "latent_dim", "activation", "likelihood", "obs_var", "decoder_mean", "obs_std_min",
                "posterior", "conditional", "latent", "categories", "dtype", "objective", "k", "estimator", "baseline",
                "samples", "beta", "warmup", "binarize", "temperature", "temperature_min", "anneal_rate",
                "batch_size", "optimizer", "seed", "dataset", "data_dir")


# ---------------------------------------------------------------------------- argument types

def _number_type(convert, what, accept):
    """An argparse type: convert(text), refused with "expected WHAT, got TEXT" unless accept(value)."""
    def parse(text):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


_positive_int = _number_type(int, "a positive integer", lambda v: v >= 1)
_non_negative_int = _number_type(int, "an integer >= 0", lambda v: v >= 0)
_positive_float = _number_type(float, "a positive number", lambda v: 0 < v < float("inf"))
_non_negative_float = _number_type(float, "a number >= 0", lambda v: 0 <= v < float("inf"))
_figure_count = _number_type(int, f"a number of images from 1 to {MAX_FIGURE_IMAGES} (one figure)",
                             lambda v: 1 <= v <= MAX_FIGURE_IMAGES)
_at_least_two = _number_type(int, "an integer >= 2 (a variance needs two or more estimates)", lambda v: v >= 2)
_at_least_two_classes = _number_type(int, "an integer >= 2 (a variable of one class carries nothing)",
                                     lambda v: v >= 2)


# ---------------------------------------------------------------------------- the parser

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and a pointer to --help, not the whole
    usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows "(default: X)" once for every option with a value default, unless its help text
    already says what the default is; nothing for None (the help text explains) or for flags."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("(default" in text or default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


class _RawHelpFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    pass


def build_parser():
    parser = _Parser(prog="numpyvae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"numpyvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = {}

    def command(name, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        parser.subcommands[name] = sub.add_parser(name, **kwargs)
        return parser.subcommands[name]

    d = DEFAULTS
    t = command("train", help="train a VAE (defaults: mnist-mini, 784-400-20 ReLU, 20 epochs)",
                description="Train a VAE and write checkpoint.npz, history.json, config.json and figures into "
                            "--out. A checkpoint is written after every epoch; --resume continues a run bit for "
                            "bit. While it trains, the run directory is locked (run.lock): a second process "
                            "that wants to write into it stops with an error. --resume may change --epochs, "
                            "--lr, --clip-norm, --importance and --no-figures (each change is printed); it "
                            "refuses to change the architecture, the objective and its estimator, the "
                            "optimiser, the seed and the data, and lists every such difference.")
    t.add_argument("--dataset", default=d["dataset"], choices=DATASET_NAMES,
                   help="mnist-mini is bundled (offline); mnist is downloaded with --download")
    t.add_argument("--data-dir", default=None, help="folder of IDX files in the MNIST layout "
                   "(full MNIST, Fashion-MNIST); overrides --dataset")
    t.add_argument("--download", action="store_true", help="download full MNIST (with --dataset mnist)")
    t.add_argument("--epochs", type=_positive_int, default=d["epochs"],
                   help="total epochs (with --resume: train until this many; default there: the saved total)")
    t.add_argument("--latent-dim", type=_positive_int, default=d["latent_dim"], help="Z, the latent dimension")
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=d["hidden"],
                   help="encoder hidden widths, decoder mirrors them; give none for a linear VAE")
    t.add_argument("--activation", default=d["activation"], choices=[a for a in ACTIVATIONS if a != "identity"],
                   help="hidden-layer nonlinearity")
    t.add_argument("--arch", default="mlp", choices=ARCHITECTURES,
                   help="the encoder and decoder: fully connected (mlp), or convolutional (conv) as in the Keras VAE "
                        "example: one stride-2 3x3 convolution per --channels entry, then the --hidden dense layers; "
                        "the decoder maps z to the smallest feature maps and back up by transposed convolutions "
                        "(docs/convolution.md, section 8)")
    t.add_argument("--channels", type=_positive_int, nargs="+", default=list(DEFAULT_CHANNELS),
                   help="feature maps of each convolution of --arch conv")
    t.add_argument("--likelihood", default=d["likelihood"], choices=LIKELIHOODS,
                   help="p(x|z): Bernoulli, Gaussian with fixed --obs-var, or Gaussian with a learned variance")
    t.add_argument("--obs-var", type=_positive_float, default=1.0, help="lambda for --likelihood gaussian")
    t.add_argument("--decoder-mean", default=d["decoder_mean"], choices=DECODER_MEANS,
                   help="the mean of --likelihood gaussian and gaussian-learned: sigmoid keeps it in [0, 1], "
                        "the range of the pixels; identity leaves the decoder's output as it is")
    t.add_argument("--obs-std-min", type=_positive_float, default=d["obs_std_min"],
                   help="for --likelihood gaussian-learned: the floor of every pixel's learned standard "
                        "deviation, in grey levels (pixels lie in [0, 1])")
    t.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="datapoints per minibatch")
    t.add_argument("--lr", type=_positive_float, default=d["lr"],
                   help="learning rate (a smaller one is the first thing to try when training diverges)")
    t.add_argument("--optimizer", default=d["optimizer"], choices=["adam", "sgd"],
                   help="bias-corrected Adam, or SGD with momentum 0.9")
    t.add_argument("--samples", type=_positive_int, default=d["samples"], help="L, samples of z per datapoint")
    t.add_argument("--estimator", default=None, choices=list(ESTIMATORS) + [e for e in DISCRETE_ESTIMATORS
                                                                             if e not in ESTIMATORS],
                   help=f"gradient estimator for the encoder (default: {d['estimator']}; "
                        f"{DISCRETE_DEFAULTS['estimator']} for a discrete --latent). A Gaussian code: "
                        "reparameterization, score function (REINFORCE), blocked (no reparameterization) or "
                        "sticking-the-landing. A discrete code (docs/discrete.md): score, nvil, vimco (needs "
                        "--samples K >= 2), gumbel or straight-through")
    t.add_argument("--baseline", default="none", choices=BASELINES,
                   help="control variate for --estimator score (loo needs --samples >= 2)")
    t.add_argument("--objective", default="elbo", choices=["elbo", "iwae"],
                   help="train on the ELBO or on the importance-weighted bound with --k samples (IWAE)")
    t.add_argument("--k", type=_positive_int, default=5, help="importance samples for --objective iwae")
    t.add_argument("--posterior", default="diag", choices=POSTERIORS,
                   help="diagonal Gaussian q, or full covariance through a Cholesky factor")
    t.add_argument("--conditional", action="store_true",
                   help="train a conditional VAE on the digit labels (q(z|x,y), p(x|z,y))")
    t.add_argument("--latent", default=d["latent"], choices=("gaussian",) + LATENTS,
                   help="the code z: Gaussian (a VAE), or discrete (a DiscreteVAE): --latent-dim binary units, or "
                        "--latent-dim one-hot variables of --categories classes; a discrete code trains with "
                        "--binarize dynamic and --estimator "
                        f"{DISCRETE_DEFAULTS['estimator']} unless told otherwise")
    t.add_argument("--categories", type=_at_least_two_classes, default=None, metavar="K",
                   help="classes of each variable of --latent categorical "
                        f"(default: {DISCRETE_DEFAULTS['categories']})")
    t.add_argument("--temperature", type=_positive_float, default=d["temperature"],
                   help="tau (tau_0 when annealed) of --estimator gumbel and straight-through")
    t.add_argument("--temperature-min", type=_positive_float, default=None, metavar="T_MIN",
                   help="anneal the temperature per step, tau = max(T_MIN, tau_0 exp(-R t)) with t the global step "
                        "(Jang et al. 2017); needs --anneal-rate (default: no annealing)")
    t.add_argument("--anneal-rate", type=_positive_float, default=None, metavar="R",
                   help="R of the annealing schedule; needs --temperature-min")
    t.add_argument("--beta", type=_non_negative_float, default=d["beta"], help="weight on the KL term")
    t.add_argument("--warmup", type=_non_negative_float, default=d["warmup"],
                   help="KL warm-up: beta rises linearly from 0 over this many epochs")
    t.add_argument("--binarize", default=None, choices=BINARIZE_MODES,
                   help="none: grey values as Bernoulli targets; static/dynamic binarisation "
                        f"(default: {d['binarize']}; {DISCRETE_DEFAULTS['binarize']} for a discrete --latent with the "
                        "bernoulli likelihood, as in the papers docs/discrete.md compares with)")
    t.add_argument("--clip-norm", type=_positive_float, default=None,
                   help="clip the global gradient norm to this value (default: no clipping)")
    t.add_argument("--seed", type=_non_negative_int, default=d["seed"], help="seeds initialisation and training")
    t.add_argument("--dtype", default=d["dtype"], choices=["float32", "float64"],
                   help="floating-point type of every parameter and computation")
    t.add_argument("--out", default=None,
                   help="run directory (default: a new runs/<dataset>-<date>-<time>, with -2, -3, ... "
                        "appended if that exists); a directory that holds a run is refused without --resume")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (see above for what it may change)")
    t.add_argument("--importance", type=_non_negative_int, default=0, metavar="K",
                   help="after training, also estimate log p(x) on the test set with K importance samples "
                        "(0: skip)")
    t.add_argument("--no-figures", action="store_true", help="skip writing figures")
    t.set_defaults(func=cmd_train)

    def add_run(p):
        p.add_argument("run", nargs="?", default=None, help="run directory (default: the newest under ./runs)")

    s = command("sample", help="decode samples from the prior")
    add_run(s)
    s.add_argument("-n", type=_figure_count, default=100,
                   help=f"number of samples, at most {MAX_FIGURE_IMAGES} (one readable figure)")
    s.add_argument("--seed", type=_non_negative_int, default=0, help="seeds the prior draws")
    s.add_argument("--out", default=None,
                   help="PNG path (default: RUN/sample-n<N>-seed<SEED>.png, beside the training figures)")
    s.set_defaults(func=cmd_sample)

    r = command("reconstruct", help="test digits next to their reconstructions")
    add_run(r)
    r.add_argument("-n", type=_figure_count, default=10,
                   help=f"number of test digits, at most {MAX_FIGURE_IMAGES}")
    r.add_argument("--out", default=None,
                   help="PNG path (default: RUN/reconstruct-n<N>.png, beside the training figures)")
    r.set_defaults(func=cmd_reconstruct)

    e = command("evaluate", help="test ELBO and importance-weighted log-likelihood; writes RUN/evaluation.json")
    add_run(e)
    e.add_argument("--importance", type=_positive_int, default=1000, metavar="K",
                   help="importance samples per datapoint for log p(x)")
    e.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N test points (default: all)")
    e.add_argument("--seed", type=_non_negative_int, default=0, help="seeds the importance samples")
    e.set_defaults(func=cmd_evaluate)

    p = command("plot", help="(re)draw every figure of a run")
    add_run(p)
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seeds the prior samples of samples.png")
    p.set_defaults(func=cmd_plot)

    est = command(
        "estimators", help="measure the variance of every gradient estimator and train with each",
        formatter_class=_RawHelpFormatter,
        description="The gradient-estimator lab (numpyvae.lab.estimator_lab) on mnist-mini.\n\n"
                    "Measures the encoder gradient of one fixed minibatch (the first 100 test digits) R times\n"
                    "under each setting: reparam, stl, score (REINFORCE), score+ema, score+loo (L >= 2 only),\n"
                    "score+learned, blocked. Then trains one VAE per estimator with the same seed.\n\n"
                    "Writes into --out:\n"
                    "  estimators.csv               total variance and median SNR of the encoder gradient for every\n"
                    "                               setting and L, at initialisation (epoch 0) and after --epochs of\n"
                    "                               reparameterized training; seconds per estimate\n"
                    "  variance_along_training.csv  the same at the smallest L after every epoch of that training\n"
                    "  training_comparison.json     per-epoch test ELBO / KL / per-dimension KL of one training run\n"
                    "                               per estimator (reparam, score, score+learned, blocked)\n"
                    "  lab.json                     the configuration and the wall time of each step\n"
                    "  variance_vs_L.png            total variance against L (log-log), one line per setting\n"
                    "  variance_along_training.png  total variance and median SNR against epoch\n"
                    "  coordinate_histogram.png     the R estimates of one encoder coordinate under each setting\n"
                    "  training_comparison.png      test ELBO and active latent dimensions per epoch, per estimator\n\n"
                    "Defaults: the architecture of `numpyvae train` (784-400-20 ReLU, Bernoulli, batch 128,\n"
                    "Adam 1e-3), 5 epochs, R = 100, L in {1, 10}. --quick: a 784-64-8 model on 640 digits,\n"
                    "1 epoch, R = 20, L in {1, 2} (seconds); flags given explicitly still apply.")
    est.add_argument("--out", default=None,
                     help="output directory (default: a new runs/estimators-<date>-<time>)")
    est.add_argument("--epochs", type=_positive_int, default=None,
                     help="epochs of every training run (default: 5; 1 with --quick)")
    est.add_argument("--R", type=_at_least_two, default=None, dest="R",
                     help="independent gradient estimates per measurement, >= 2 (default: 100; 20 with --quick)")
    est.add_argument("--samples", type=_positive_int, nargs="+", default=None, metavar="L",
                     help="values of L (samples of z per datapoint) for the table and variance_vs_L.png, e.g. "
                          "--samples 1 2 5 10 (default: 1 10; 1 2 with --quick)")
    est.add_argument("--hidden", type=_positive_int, nargs="*", default=None,
                     help=f"encoder hidden widths (default: {' '.join(map(str, d['hidden']))}; 64 with --quick)")
    est.add_argument("--latent-dim", type=_positive_int, default=None,
                     help=f"Z (default: {d['latent_dim']}; 8 with --quick)")
    est.add_argument("--seed", type=_non_negative_int, default=d["seed"],
                     help="seeds initialisation, training and measuring")
    est.add_argument("--quick", action="store_true", help="a small, fast version of everything (a smoke test)")
    est.set_defaults(func=cmd_estimators)

    dl = command(
        "discrete", help="discrete latents: each estimator's bias and variance against enumeration, and trained",
        formatter_class=_RawHelpFormatter,
        description="The discrete-latent lab (numpyvae.lab.discrete_lab; derivations in docs/discrete.md).\n\n"
                    "1. On a small code with 256 states (8 binary units, or 4 variables of 4 classes) and a\n"
                    "   784-64 ReLU network trained 5 epochs, on 8 binarised test digits: every estimator drawn\n"
                    "   many times against the exact gradient of the ELBO (by enumeration), against K (score,\n"
                    "   score with a leave-one-out baseline, NVIL with L = K samples; VIMCO with K) and against\n"
                    "   the temperature (gumbel, straight-through, L = 2).\n"
                    "2. One DiscreteVAE per estimator (784-200-[200 bits] and 784-200-[20x10 one-hot], the codes\n"
                    "   of Jang et al. 2017; L = 2 samples, --epochs on binarised mnist-mini) beside the Gaussian\n"
                    "   VAE of the same networks (784-200-20): test ELBO and log p(x) with --importance samples.\n\n"
                    "Writes into --out:\n"
                    "  bias_variance.csv            bias (in standard errors, and relative) and variance per setting\n"
                    "  bias_variance_<latent>.png   the same against K and against the temperature\n"
                    "  training_comparison.csv      test ELBO, log p(x), KL, active units, seconds per model\n"
                    "  training_comparison.json     the same with each run's per-epoch history\n"
                    "  training_comparison.png      test ELBO per epoch\n"
                    "  discrete_lab.json            the configuration and the wall time of each step\n\n"
                    "About 8 minutes on a 2-core machine. --quick: tiny codes and networks on 500 digits, 1\n"
                    "epoch (seconds); flags given explicitly still apply.")
    dl.add_argument("--out", default=None, help="output directory (default: a new runs/discrete-<date>-<time>)")
    dl.add_argument("--latent", nargs="+", choices=LATENTS, default=list(LATENTS),
                    help="the discrete codes to measure and train")
    dl.add_argument("--epochs", type=_positive_int, default=None,
                    help="epochs of every training run (default: 30; 1 with --quick)")
    dl.add_argument("--importance", type=_positive_int, default=None, metavar="K",
                    help="importance samples per test digit for log p(x) (default: 1000; 20 with --quick)")
    dl.add_argument("--seed", type=_non_negative_int, default=d["seed"],
                    help="seeds initialisation, training and measuring")
    dl.add_argument("--quick", action="store_true", help="a small, fast version of everything (a smoke test)")
    dl.set_defaults(func=cmd_discrete)

    ae = command("autoencoders",
                 help="autoencoder vs denoising autoencoder vs VAE: random codes and noisy inputs",
                 description="Train an autoencoder and a denoising autoencoder (and a VAE, unless --vae "
                             "names a trained run) and write random_codes.png (codes drawn from "
                             "N(0, I) decoded by each model), denoising.png (corrupted digits "
                             "reconstructed by each) and autoencoders.json (test losses and how far "
                             "each model's codes are from N(0, I)).")
    ae.add_argument("--dataset", default="mnist-mini", choices=DATASET_NAMES, help="the images to train on")
    ae.add_argument("--epochs", type=_positive_int, default=10, help="epochs of each model")
    ae.add_argument("--noise", default="masking:0.5",
                    help="corruption of the denoising autoencoder: masking:P (zero each pixel with "
                         "probability P) or gaussian:STD")
    ae.add_argument("--vae", default=None, metavar="RUN",
                    help="use the VAE of this run directory (default: train one alongside)")
    ae.add_argument("--seed", type=_non_negative_int, default=0, help="seeds every model and the corruption")
    ae.add_argument("--quick", action="store_true", help="a smoke run on 1000 digits, at most 2 epochs")
    ae.add_argument("--out", default=None, help="output directory (default: a new runs/autoencoders-<date>-<time>)")
    ae.set_defaults(func=cmd_autoencoders)
    return parser


def _given_options(argv):
    """The dests of the options typed on the command line (not filled in from defaults): argv
    parsed again by a parser whose defaults are all suppressed."""
    parser = build_parser()
    for p in parser.subcommands.values():
        for action in p._actions:
            action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace)) - {"command", "func"}


# ---------------------------------------------------------------------------- run directories

def _newest_run(root=RUNS_DIR):
    if not os.path.isdir(root):
        return None
    runs = [os.path.join(root, d) for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, CHECKPOINT))]
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, CHECKPOINT))) if runs else None


def _resolve_run(path):
    path = path or _newest_run()
    if path is None:
        raise ValueError("no run directory given and none found under ./runs; train one first with `numpyvae train`")
    if not os.path.isfile(os.path.join(path, CHECKPOINT)):
        raise ValueError(f"{path} is not a run directory (no {CHECKPOINT} in it)")
    return path


def _timestamped(name):
    return os.path.join(RUNS_DIR, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def _check_writable(directory):
    """Fail now, before any work, if files cannot be created in directory (read-only, full)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write into {directory}: {exc.strerror}") from exc


def _out_dir(out, default_name):
    """(directory, created) for the output of train / estimators / autoencoders: by default a new
    runs/<default_name>-<date>-<time>, with -2, -3, ... if taken; else --out, created if missing
    (an existing directory is used as it is: `train` checks it for a run under the run lock).
    Checked to be writable, so a read-only place fails now rather than after the work."""
    if out is None:
        return create_run_dir(_timestamped(default_name)), True
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    _check_parents(out)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        os.mkdir(out)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create --out {out}: {exc.strerror}") from exc
    _check_writable(out)
    return out, created


def _discard_if_empty(out):
    """Remove a run directory this process created when nothing was saved in it (only run.lock)."""
    with contextlib.suppress(OSError):
        if set(os.listdir(out)) <= {LOCK_FILE}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, LOCK_FILE))
            os.rmdir(out)


@contextlib.contextmanager
def _writing(what):
    """Re-raise an OSError of the block as one line naming what was being written."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {what}: {exc.strerror or exc}") from exc


def _check_parents(path):
    """Refuse an --out below a file (its missing folders could never be created)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: {parent} is a file, not a directory")


def _check_output_file(path):
    """The --out of `sample` / `reconstruct` must name a file (its folder is created if needed)."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path} is a directory; give a file name such as {os.path.join(path, 'figure.png')}")
    _check_parents(path)


# ---------------------------------------------------------------------------- memory preflight

def _physical_memory():
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _format_bytes(n):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.3g} PB" if n < 1000 else f"{n:,.0f} PB"


def _check_training_memory(model_config, batch_size, samples, sample_option):
    """Refuse, naming the option, a model or training step that cannot fit in this machine's memory.

    An estimate (never run, so absurd sizes are refused in microseconds instead of ending in a
    MemoryError or the OOM killer): the model needs 4 arrays per parameter (the parameter, its
    gradient and the optimiser's two moments); a step needs about 6 activations (forward caches
    and backward temporaries) per unit of every layer for each of batch_size x samples rows.
    """
    limit = _physical_memory()
    if limit is None:
        return
    item = np.dtype(model_config["dtype"]).itemsize
    hidden, Z = model_config["hidden_dims"], model_config["latent_dim"]
    model_bytes = 4 * item * estimate_parameters(model_config)
    rows = batch_size * samples
    # A convolutional model's feature maps, encoder's and decoder's (the decoder's are the larger).
    maps = (make_networks("conv", model_config["input_dim"], hidden, model_config["activation"],
                          model_config.get("image_shape"), model_config.get("channels")).activations_per_row
            if model_config.get("arch") == "conv" else 0)
    step_bytes = 6 * item * rows * (sum(hidden) + 2 * maps + model_config["input_dim"] + 3 * Z)
    have = f"this machine has {_format_bytes(limit)}"
    if model_bytes > limit:
        option = (f"--hidden {' '.join(map(str, hidden))}" if hidden and max(hidden) >= Z
                  else f"--latent-dim {Z}")
        raise ValueError(f"{option} is too large: the model needs about {_format_bytes(model_bytes)} of memory "
                         f"(parameters, gradients, optimiser state); {have}")
    if model_bytes + step_bytes > limit:
        options = sorted([(samples, sample_option), (batch_size, "--batch-size")], reverse=True)
        raise ValueError(f"{options[0][1]} {options[0][0]} is too large: one training step on {batch_size} x "
                         f"{samples} rows needs about {_format_bytes(model_bytes + step_bytes)} of memory; {have}")


# ---------------------------------------------------------------------------- shared pieces

def _dataset_for(run_data, download=False):
    return load_dataset(run_data.get("dataset", "mnist-mini"), data_dir=run_data.get("data_dir"),
                        cache_dir=run_data.get("cache_dir"), download=download)


def _test_pixels(run, dataset):
    """The test set exactly as the run saw it (binarised the same way, if it was)."""
    _, x_test = prepare_pixels(dataset.x_train[:1], dataset.x_test, run.config.binarize, run.config.seed,
                               run.model.likelihood.name)
    return x_test


def _condition(model, y, idx=None):
    """The keyword arguments that carry a model's condition: {"y": the labels y[idx]} for a conditional
    VAE, {} for a model that reads none (a DiscreteVAE's methods take no y at all)."""
    return {"y": labels_for(model, y, idx)} if model.cond_dim else {}


def _write_figures(run, dataset, run_dir, seed=0):
    # matplotlib is only imported when figures are drawn
    from .lab.plotting import plot_class_grid, plot_reconstructions, plot_training_curves, write_all_figures
    x_test = _test_pixels(run, dataset)
    rng = np.random.default_rng(seed)
    with _writing(f"the figures into {run_dir}"):
        if not run.model.cond_dim:          # a plain VAE; a conditional one draws its class grid
            return write_all_figures(run.model, x_test, dataset.y_test, run.history, run_dir, rng,
                                     image_shape=dataset.image_shape)
        x, y = x_test[:10], dataset.y_test[:10]
        return {"curves": plot_training_curves(run.history, os.path.join(run_dir, "curves.png")),
                "reconstructions": plot_reconstructions(x, run.model.reconstruct(x, y=y),
                                                        os.path.join(run_dir, "reconstructions.png")),
                "class_grid": plot_class_grid(run.model, os.path.join(run_dir, "class_grid.png"), rng,
                                              image_shape=dataset.image_shape)}


def _epochs_saved(first, last):
    return f"epoch {last} is" if first == last else f"epochs {first}-{last} are"


# ---------------------------------------------------------------------------- train

def cmd_train(args):
    return _resume(args) if args.resume else _train_new(args)


def _train_new(args):
    if args.out is not None and os.path.isdir(args.out) and run_files(args.out):   # checked again under the lock
        raise ValueError(f"{args.out} already holds a run ({', '.join(run_files(args.out))}); pass --resume to "
                         "continue it or choose another --out (nothing was overwritten)")
    name = args.dataset if args.data_dir is None else os.path.basename(os.path.normpath(args.data_dir))
    dataset = load_dataset(args.dataset if args.data_dir is None else name, data_dir=args.data_dir,
                           download=args.download)
    code = _code_options(args)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                         n_samples=args.samples, estimator=code["estimator"], baseline=args.baseline,
                         objective=args.objective, k=args.k, beta=args.beta,
                         warmup_epochs=args.warmup, binarize=code["binarize"], clip_norm=args.clip_norm,
                         seed=args.seed, temperature=args.temperature, temperature_min=args.temperature_min,
                         anneal_rate=args.anneal_rate or 0.0)
    arch = dict(hidden_dims=tuple(args.hidden), latent_dim=args.latent_dim, likelihood=args.likelihood,
                obs_var=args.obs_var, activation=args.activation, seed=args.seed, dtype=np.dtype(args.dtype),
                **_likelihood_options(args.likelihood, vars(args)))
    networks = _network_options(args, dataset)
    arch.update({"latent": args.latent, "n_categories": code["categories"]} if args.latent != "gaussian"
                else {"posterior": args.posterior, **networks})
    if args.conditional and dataset.y_train is None:
        raise ValueError(f"--conditional needs labels, and {dataset.name} has none")
    n_classes = int(dataset.y_train.max()) + 1 if args.conditional else None
    _check_training_memory({"input_dim": dataset.input_dim, **arch, **({"n_classes": n_classes} if n_classes else {})},
                           config.batch_size, config.k if config.objective == "iwae" else config.n_samples,
                           "--k" if config.objective == "iwae" else "--samples")
    model = (DiscreteVAE(dataset.input_dim, **arch) if args.latent != "gaussian" else
             ConditionalVAE(dataset.input_dim, n_classes=n_classes, **arch) if args.conditional
             else VAE(dataset.input_dim, **arch))
    check_config_for_model(model, config)       # before any directory is made
    data = {"dataset": name, "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir)}

    out, created = _out_dir(args.out, name)
    run = new_run(model, config, data)
    with run_lock(out):
        try:
            held = run_files(out)
            if held:
                raise ValueError(f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it "
                                 "or choose another --out (nothing was overwritten)")
            print(f"{dataset.name}: {dataset.x_train.shape[0]} train / {dataset.x_test.shape[0]} test, "
                  f"D={dataset.input_dim}  ({dataset.source})")
            print(f"{model}\nwriting to {out}")
            return _train_and_report(args, run, dataset, out)
        except BaseException:
            if created and run.epoch == 0:
                _discard_if_empty(out)
            raise


def _code_options(args):
    """The estimator, binarisation and number of classes of a new run: as typed, else the defaults of
    its code (DEFAULTS for a Gaussian one, DISCRETE_DEFAULTS for a discrete one), after refusing, one
    line each, the options that mean nothing for that code or that estimator."""
    latent, given = args.latent, args.given
    discrete = latent != "gaussian"
    estimator = args.estimator or (DISCRETE_DEFAULTS if discrete else DEFAULTS)["estimator"]
    refusals = [
        (discrete and "posterior" in given, f"--posterior is the covariance of a Gaussian code; --latent {latent} "
                                            "has none"),
        (discrete and args.conditional, f"--conditional trains a conditional VAE with a Gaussian code, not with "
                                        f"--latent {latent}"),
        (discrete and args.objective != "elbo", f"--objective {args.objective} is for a Gaussian code; a discrete "
                                                "code trains on the K-sample bound with --estimator vimco --samples K"),
        ("categories" in given and latent != "categorical", "--categories applies to --latent categorical only"),
        (discrete and estimator not in DISCRETE_ESTIMATORS,
         f"--estimator {estimator} does not train a discrete code (--latent {latent}); choose one of "
         f"{', '.join(DISCRETE_ESTIMATORS)}"),
        (not discrete and estimator not in ESTIMATORS,
         f"--estimator {estimator} trains a discrete code: add --latent bernoulli or --latent categorical"),
        (estimator == "vimco" and args.samples < 2,
         f"--estimator vimco needs --samples K >= 2 (each of the K samples gets a baseline from the others); "
         f"got --samples {args.samples}"),
        (estimator not in RELAXED_ESTIMATORS and bool({"temperature", "temperature_min", "anneal_rate"} & given),
         f"--temperature, --temperature-min and --anneal-rate apply to --estimator {' and '.join(RELAXED_ESTIMATORS)}, "
         f"which relax the code; --estimator {estimator} takes none"),
        ((args.temperature_min is None) != (args.anneal_rate is None),
         "--temperature-min and --anneal-rate go together: tau = max(T_MIN, tau_0 exp(-R t))"),
        (args.temperature_min is not None and args.temperature_min > args.temperature,
         f"--temperature-min {args.temperature_min} exceeds --temperature {args.temperature}, where the "
         "annealing starts"),
    ]
    for refused, message in refusals:
        if refused:
            raise ValueError(message)
    binarize = args.binarize or (DISCRETE_DEFAULTS["binarize"] if discrete and args.likelihood == "bernoulli"
                                 else DEFAULTS["binarize"])
    categories = (args.categories or DISCRETE_DEFAULTS["categories"]) if latent == "categorical" else 2
    return {"estimator": estimator, "binarize": binarize, "categories": categories}


def _network_options(args, dataset):
    """The model's arguments for --arch: {"arch": "conv", "image_shape": the dataset's, "channels": ...}
    for conv, {} for the MLP (the VAE's default), after refusing --channels without --arch conv and
    --arch conv with a discrete --latent (DiscreteVAE has MLP networks only)."""
    if args.arch != "conv":
        if "channels" in args.given:
            raise ValueError("--channels applies to --arch conv only")
        return {}
    if args.latent != "gaussian":
        raise ValueError(f"--arch conv trains a VAE with a Gaussian code; --latent {args.latent} has MLP networks only")
    if dataset.image_shape is None:
        raise ValueError(f"--arch conv needs images, and {dataset.name} has no image shape")
    return {"arch": "conv", "image_shape": tuple(dataset.image_shape), "channels": tuple(args.channels)}


def _likelihood_options(likelihood, options):
    """The options a likelihood uses, out of ``options`` (a dict with decoder_mean and obs_std_min):
    decoder_mean for the two Gaussians, obs_std_min for gaussian-learned. The others are not given
    to the model (VAE refuses them), nor compared on --resume: for that likelihood they mean nothing."""
    used = {"gaussian": ("decoder_mean",), "gaussian-learned": ("decoder_mean", "obs_std_min")}
    return {k: options[k] for k in used.get(likelihood, ())}


def _saved_options(run):
    """The value each option of RESUME_KEEPS had when the run was created, as argparse gives it
    (the options its likelihood does not use are left out)."""
    m, c, d = run.model.config, run.config, run.data
    return {"arch": m.get("arch", "mlp"), "channels": m.get("channels"),
            "hidden": list(m["hidden_dims"]), "latent_dim": m["latent_dim"], "activation": m["activation"],
            "likelihood": m["likelihood"], "obs_var": m["obs_var"], "posterior": m.get("posterior", "diag"),
            "latent": m.get("latent", "gaussian"),
            "categories": m["n_categories"] if m.get("latent") == "categorical" else None,
            "temperature": c.temperature, "temperature_min": c.temperature_min,
            "anneal_rate": c.anneal_rate if c.anneal_rate else None,
            "conditional": "n_classes" in m, "dtype": m["dtype"], "objective": c.objective, "k": c.k,
            "estimator": c.estimator, "baseline": c.baseline, "samples": c.n_samples, "beta": c.beta,
            "warmup": c.warmup_epochs, "binarize": c.binarize, "batch_size": c.batch_size,
            "optimizer": c.optimizer, "seed": c.seed, "dataset": d.get("dataset", "mnist-mini"),
            "data_dir": d.get("data_dir"), **_likelihood_options(m["likelihood"], m)}


def _show(value):
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _apply_resume_options(run, args, out):
    """Check the options typed with --resume against the saved run: refuse (one ValueError
    listing every difference) any of RESUME_KEEPS that differs; apply --epochs, --lr and
    --clip-norm to the run and its optimiser. Returns the lines "lr: 0.001 -> 0.0005"."""
    saved = _saved_options(run)
    given = {dest: getattr(args, dest) for dest in args.given if dest in RESUME_KEEPS}
    if "data_dir" in given:
        given["data_dir"] = os.path.abspath(given["data_dir"])
    refused = [f"--{dest.replace('_', '-')} (saved {_show(saved[dest])}, given {_show(given[dest])})"
               for dest in RESUME_KEEPS if dest in given and dest in saved and given[dest] != saved[dest]]
    if refused:
        raise ValueError(f"--resume cannot change: {', '.join(refused)}; start a new run (another --out) "
                         "to train with different settings")
    changes = {dest: getattr(args, dest) for dest in ("epochs", "lr", "clip_norm")
               if dest in args.given and getattr(args, dest) != getattr(run.config, dest)}
    lines = [f"{dest.replace('_', '-')}: {_show(getattr(run.config, dest))} -> {_show(value)}"
             for dest, value in changes.items()]
    if changes.get("epochs", run.config.epochs) <= run.epoch:
        raise ValueError(f"{out} already has {run.epoch} epochs; ask for more with --epochs N (N > {run.epoch})")
    run.config = dataclasses.replace(run.config, **changes)
    run.optimizer.lr, run.optimizer.clip_norm = run.config.lr, run.config.clip_norm
    return lines


def _resume(args):
    out = args.out
    if out is None:
        raise ValueError("--resume needs --out RUN_DIR (the run to continue)")
    if not os.path.isdir(out):
        raise ValueError(f"--out {out} is not a directory; --resume continues the run saved in one")
    _check_writable(out)
    with run_lock(out):
        if not os.path.isfile(os.path.join(out, CHECKPOINT)):
            raise ValueError(f"{out} holds no checkpoint (no epoch of it finished); start it again without --resume")
        run = load_run(out)
        changes = _apply_resume_options(run, args, out)
        dataset = _dataset_for(run.data, download=args.download)
        print(f"resuming {out} at epoch {run.epoch} of {run.config.epochs}")
        for line in changes:
            print(line)
        return _train_and_report(args, run, dataset, out)


def _train_and_report(args, run, dataset, out):
    """Train a prepared run (the caller holds the run lock of out), then evaluate and draw."""
    first = run.epoch + 1

    def interrupted():
        if run.epoch == 0:
            removed = "" if os.path.isdir(out) else f" (the new run directory {out} was removed)"
            return f"interrupted during epoch 1; nothing was saved{removed}"
        return (f"interrupted during epoch {run.epoch + 1}; {_epochs_saved(1, run.epoch)} saved in {out}: resume "
                f"with `numpyvae train --out {shlex.quote(out)} --resume --epochs {run.config.epochs}`")

    args.on_interrupt = interrupted
    x_train, x_test = prepare_pixels(dataset.x_train, dataset.x_test, run.config.binarize, run.config.seed,
                                     run.model.likelihood.name)
    start = time.perf_counter()
    train(run, x_train, x_test, out_dir=out, y_train=dataset.y_train, y_test=dataset.y_test)
    this_call = f" ({run.epoch - first + 1} in this call)" if first > 1 else ""
    span = f"epoch {first}" if first == run.epoch else f"epochs {first}-{run.epoch}"
    print(f"trained {span}{this_call} in {time.perf_counter() - start:.1f} s; final train ELBO "
          f"{run.history['train_elbo'][-1]:.2f}, test ELBO {run.history['test_elbo'][-1]:.2f} nats")
    saved = f"all {run.epoch} epochs are saved in {out}"
    if args.importance:
        args.on_interrupt = lambda: f"interrupted during the evaluation; {saved}; run `numpyvae evaluate {out}`"
        _evaluate(run, x_test, args.importance, out, seed=0, y_test=dataset.y_test)
    if not args.no_figures:
        args.on_interrupt = lambda: f"interrupted while drawing the figures; {saved}; run `numpyvae plot {out}`"
        paths = _write_figures(run, dataset, out)
        print("figures: " + ", ".join(os.path.basename(p) for p in paths.values()))
    print(f"run directory: {out}")
    return 0


def _divergence_hint(exc):
    lr = f"{exc.lr / 10:g}"
    if exc.saved_epoch and exc.out_dir is not None:
        return (f"resume from epoch {exc.saved_epoch} with a smaller step: numpyvae train "
                f"--out {shlex.quote(exc.out_dir)} --resume --epochs {exc.epochs} --lr {lr}")
    return f"start again with a smaller step, e.g. --lr {lr}, or with --clip-norm"


# ---------------------------------------------------------------------------- the other commands

def _evaluate(run, x_test, K, run_dir, seed, limit=None, y_test=None):
    if limit is not None:
        x_test = x_test[:limit]
    start = time.perf_counter()
    y_test = labels_for(run.model, y_test, slice(len(x_test)))
    elbo = evaluate_elbo(run.model, x_test, fixed_test_noise(run.model, x_test.shape[0], run.config.seed), y=y_test)
    rng = np.random.default_rng(seed)
    ll = np.concatenate([run.model.log_likelihood(x_test[i:i + 100], n_importance=K, rng=rng,
                                                  **_condition(run.model, y_test, slice(i, i + 100)))
                         for i in range(0, x_test.shape[0], 100)]).astype(np.float64)
    if isinstance(run.model, DiscreteVAE):
        from .lab.discrete_lab import active_units
    else:
        from .lab.diagnostics import active_units
    n_active, unit_var = active_units(run.model, x_test, **_condition(run.model, y_test))
    result = {"epoch": run.epoch, "n_test": int(x_test.shape[0]), "test_elbo": elbo["elbo"],
              "kl_per_dim": elbo["kl_per_dim"], "kl_offdiag": elbo["kl_offdiag"], "active_units": n_active,
              "active_unit_variance": unit_var.tolist(),
              "test_rec": elbo["rec"], "test_kl": elbo["kl"], "importance_samples": K,
              "test_log_likelihood": float(ll.mean()),
              "test_log_likelihood_stderr": float(ll.std(ddof=1) / np.sqrt(len(ll))) if len(ll) > 1 else None,
              "seconds": time.perf_counter() - start}
    print(f"test ELBO {result['test_elbo']:.2f} (rec {result['test_rec']:.2f}, KL {result['test_kl']:.2f});  "
          f"log p(x) ~ {result['test_log_likelihood']:.2f} nats (K={K}, {len(ll)} points, "
          f"{result['seconds']:.1f}s)")
    kl_dims = " ".join(f"{v:.2f}" for v in sorted(elbo["kl_per_dim"], reverse=True))
    # A full-covariance posterior's KL has no per-dimension split: its diagonal terms are listed
    # and the part its correlations add is given apart (docs/ppca.md, section 6).
    # A discrete code's KL is the sum of its units' (variables') KLs (docs/discrete.md, section 2).
    posterior = run.model.config.get("posterior")
    kl_parts = (f"KL per {'unit' if run.model.posterior.name == 'bernoulli' else 'variable'}, largest first: "
                f"{kl_dims}" if posterior is None else
                f"KL per dimension, largest first: {kl_dims}" if posterior == "diag" else
                f"diagonal terms of the KL, largest first: {kl_dims}; off-diagonal part {elbo['kl_offdiag']:.2f}")
    print(f"active units (Var_x E[z_j|x] > 0.01): {n_active} of {run.model.latent_dim};  {kl_parts}")
    path = os.path.join(run_dir, "evaluation.json")
    with _writing(path):
        atomic_write_json(path, result)
    print(f"wrote {path}")
    return result


def cmd_evaluate(args):
    run_dir = _resolve_run(args.run)
    run = load_run(run_dir)
    dataset = _dataset_for(run.data)
    args.on_interrupt = lambda: f"interrupted; {os.path.join(run_dir, 'evaluation.json')} was not written"
    _evaluate(run, _test_pixels(run, dataset), args.importance, run_dir, args.seed, args.limit, dataset.y_test)
    return 0


def cmd_sample(args):
    from .lab.plotting import plot_image_grid
    run_dir = _resolve_run(args.run)
    path = args.out or os.path.join(run_dir, f"sample-n{args.n}-seed{args.seed}.png")
    _check_output_file(path)
    run = load_run(run_dir)
    rng = np.random.default_rng(args.seed)
    if run.model.cond_dim:          # a conditional model: labels 0, 1, ..., cycling, one row per style
        images = run.model.sample(np.arange(args.n) % run.model.n_classes, rng)
        nrow = run.model.n_classes
    else:
        images, nrow = run.model.sample(args.n, rng), int(np.ceil(np.sqrt(args.n)))
    with _writing(path):
        plot_image_grid(images, path, nrow=nrow, title=f"{args.n} samples from the prior")
    print(f"wrote {path} ({args.n} samples from the prior)")
    return 0


def cmd_reconstruct(args):
    from .lab.plotting import plot_reconstructions
    run_dir = _resolve_run(args.run)
    path = args.out or os.path.join(run_dir, f"reconstruct-n{args.n}.png")
    _check_output_file(path)
    run = load_run(run_dir)
    dataset = _dataset_for(run.data)
    x = _test_pixels(run, dataset)[:args.n]
    rec = run.model.reconstruct(x, **_condition(run.model, dataset.y_test, slice(args.n)))
    with _writing(path):
        plot_reconstructions(x, rec, path, n=args.n)
    print(f"wrote {path} ({len(x)} test digits above their reconstructions)")
    return 0


def cmd_plot(args):
    run_dir = _resolve_run(args.run)
    run = load_run(run_dir)
    print(history_table(run.history))
    args.on_interrupt = lambda: (f"interrupted; some figures in {run_dir} may not have been redrawn "
                                 "(each file is the old or the new figure, never half of one)")
    for path in _write_figures(run, _dataset_for(run.data), run_dir, args.seed).values():
        print(f"wrote {path}")
    return 0


def cmd_estimators(args):
    from .lab.estimator_lab import run_lab  # matplotlib is only imported when the lab runs
    hidden = None if args.hidden is None else tuple(args.hidden)
    if hidden is None and not args.quick:
        hidden = tuple(DEFAULTS["hidden"])
    latent = args.latent_dim if args.latent_dim is not None or args.quick else DEFAULTS["latent_dim"]
    _check_training_memory({"input_dim": 784, "hidden_dims": (64,) if hidden is None else hidden,
                            "latent_dim": latent or 8, "dtype": "float32"}, 100, max(args.samples or [10]), "--samples")
    out, _ = _out_dir(args.out, "estimators")
    with run_lock(out):
        args.on_interrupt = lambda: (f"interrupted before the lab finished; {out} holds none or only some of its "
                                     "files (run it again)")
        start = time.perf_counter()
        run_lab(out, dataset=DEFAULTS["dataset"], quick=args.quick, epochs=args.epochs, R=args.R,
                Ls=args.samples, hidden_dims=hidden, latent_dim=latent, seed=args.seed)
    print(f"estimator lab finished in {time.perf_counter() - start:.1f}s; output directory: {out}")
    return 0


def cmd_discrete(args):
    from .lab.discrete_lab import run_discrete_lab  # matplotlib is only imported when the lab runs
    out, _ = _out_dir(args.out, "discrete")
    with run_lock(out):
        args.on_interrupt = lambda: (f"interrupted before the lab finished; {out} holds none or only some of its "
                                     "files (run it again)")
        start = time.perf_counter()
        run_discrete_lab(out, dataset=DEFAULTS["dataset"], quick=args.quick, latents=tuple(dict.fromkeys(args.latent)),
                         epochs=args.epochs, importance=args.importance, seed=args.seed)
    print(f"discrete lab finished in {time.perf_counter() - start:.1f}s; output directory: {out}")
    return 0


def _parse_noise(text):
    kind, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = None
    if kind not in ("masking", "gaussian") or number is None:
        raise ValueError(f"--noise must look like masking:0.5 or gaussian:0.3; got {text!r}")
    return kind, number


def cmd_autoencoders(args):
    from .lab.autoencoders import compare_autoencoders
    noise = _parse_noise(args.noise)
    vae = load_run(_resolve_run(args.vae)).model if args.vae else None
    out, _ = _out_dir(args.out, "autoencoders")
    with run_lock(out):
        args.on_interrupt = lambda: (f"interrupted before the comparison finished; {out} holds none or only some "
                                     "of its files (run it again)")
        result = compare_autoencoders(args.dataset, out, epochs=args.epochs, quick=args.quick, seed=args.seed,
                                      vae=vae, noise=noise)
    print(f"test loss (nats per digit), clean / corrupted input:  AE {result['ae_test_loss_clean']:.1f} / "
          f"{result['ae_test_loss_corrupted']:.1f}   DAE {result['dae_test_loss_clean']:.1f} / "
          f"{result['dae_test_loss_corrupted']:.1f}")
    print(f"KL(N(0,I) || codes): AE {result['ae_prior_mismatch']:.2f}, VAE {result['vae_prior_mismatch']:.2f} nats")
    print(f"output: {out}")
    return 0


# ---------------------------------------------------------------------------- one error path

# The exceptions a user can cause (bad values, files, permissions, a full disk, sizes, divergence,
# a locked run). Each is reported as one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, MemoryError, FloatingPointError, RuntimeError)


def _one_line(exc):
    """The message of exc on one line: an OSError as "what: reason", a multi-line message with
    its lines joined by "; "."""
    if isinstance(exc, MemoryError):
        text = f"out of memory: {exc}" if str(exc) else "out of memory"
    elif isinstance(exc, OSError) and exc.strerror:
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        text = f"{names}: {exc.strerror}" if names else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] + " " + "; ".join(lines[1:])).strip() if lines else type(exc).__name__


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:   # blame the subcommand whose options were misspelled, not the top-level parser
        (parser.subcommands[args.command] if args.command else parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    args.given = _given_options(argv)
    args.on_interrupt = lambda: "interrupted; nothing was written"
    prefix = f"numpyvae {args.command}"
    try:
        parallel.use_own_threads()
        return args.func(args)
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            print(file=sys.stdout)    # end the progress line
        print(f"{prefix}: {args.on_interrupt()}", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        if isinstance(exc, TrainingDiverged):
            print(f"hint: {_divergence_hint(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
