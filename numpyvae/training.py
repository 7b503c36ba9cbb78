"""Training a VAE: minibatches, KL warm-up, per-epoch evaluation, checkpoints and resume.

One ``np.random.Generator`` (seeded by ``TrainConfig.seed``) drives everything random in
training, always in the same order: the dynamic binarisation of the epoch, the shuffle,
then the noise eps of each step. Its state is saved in the checkpoint at the end of every
epoch, together with the parameters and the optimiser state, so a run resumed from a
checkpoint continues bit for bit as if it had never stopped.

The test ELBO is computed every epoch with one fixed noise draw (made once from
``seed + 1``), so differences between epochs come from the model, not the noise.

A run directory holds:
    checkpoint.npz   parameters + optimiser state + metadata JSON (see numpyvae.checkpoint)
    history.json     per-epoch train/test ELBO, reconstruction and KL terms (nats), beta, time
    config.json      the model and training configuration, human-readable
    *.png            figures (numpyvae.plotting)
"""

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import __version__
from ._validate import check_positive_int
from .checkpoint import atomic_write_json, load_checkpoint, rng_from_json, rng_state_to_json, save_checkpoint
from .data import binarize
from .distributions import kl_diag_gaussian_standard_per_dim
from .estimators import BASELINES, make_baseline
from .conditional import ConditionalVAE
from .model import VAE
from .optim import SGD, Adam

__all__ = ["TrainConfig", "Run", "make_optimizer", "kl_warmup_beta", "minibatches", "evaluate_elbo",
           "prepare_pixels", "train", "save_run", "load_run", "new_run", "fixed_test_noise",
           "history_table", "HISTORY_KEYS"]

HISTORY_KEYS = ("epoch", "train_elbo", "train_rec", "train_kl", "test_elbo", "test_rec", "test_kl",
                "test_kl_per_dim", "beta", "seconds")
BINARIZE_MODES = ("none", "static", "dynamic")
CHECKPOINT = "checkpoint.npz"


@dataclass
class TrainConfig:
    """Training hyperparameters. Every field is a plain JSON value (stored in checkpoints).

    epochs          total number of epochs of the run (a resumed run continues up to it)
    batch_size      datapoints per minibatch
    lr              learning rate
    optimizer       "adam" (bias-corrected) or "sgd" (with ``momentum``)
    n_samples       L, Monte Carlo samples of z per datapoint in the training ELBO
    estimator       gradient estimator passed to VAE.loss_and_grads
    baseline        control variate for estimator="score": "none", "ema", "loo" (needs
                    n_samples >= 2) or "learned" (an MLP b(x), trained alongside)
    objective       "elbo" (Eq. E7) or "iwae": the importance-weighted bound with k samples
                    (Eq. I4, docs/importance.md), trained with its pathwise gradient
    k               importance samples per datapoint for objective="iwae"
    beta            final weight on the KL term
    warmup_epochs   KL warm-up: beta grows linearly from 0 to ``beta`` over this many epochs
                    (0 = no warm-up); Bowman et al. 2016, Sonderby et al. 2016
    binarize        "none" (grey values as Bernoulli targets), "static" (one fixed binary
                    sample of the data) or "dynamic" (a fresh binary sample every epoch)
    clip_norm       optional global gradient-norm clipping
    seed            seeds the training Generator (shuffles, noise, binarisation)
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    n_samples: int = 1
    estimator: str = "reparam"
    baseline: str = "none"
    objective: str = "elbo"
    k: int = 5
    beta: float = 1.0
    warmup_epochs: float = 0.0
    binarize: str = "none"
    clip_norm: "float | None" = None
    seed: int = 0

    def __post_init__(self):
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.n_samples, "n_samples")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number; got {self.lr!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {self.optimizer!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {list(BASELINES)}; got {self.baseline!r}")
        if self.baseline != "none" and self.estimator != "score":
            raise ValueError(f"baseline={self.baseline!r} needs estimator='score' (got {self.estimator!r})")
        if self.baseline == "loo" and self.n_samples < 2:
            raise ValueError("baseline='loo' needs n_samples >= 2")
        if self.objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be 'elbo' or 'iwae'; got {self.objective!r}")
        check_positive_int(self.k, "k")
        if self.objective == "iwae" and (self.estimator != "reparam" or self.beta != 1.0 or self.warmup_epochs):
            raise ValueError("objective='iwae' trains with its own pathwise gradient: it takes no --estimator, "
                             "--beta or --warmup")
        if self.binarize not in BINARIZE_MODES:
            raise ValueError(f"binarize must be one of {list(BINARIZE_MODES)}; got {self.binarize!r}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number >= 0; got {self.beta!r}")
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise ValueError(f"warmup_epochs must be >= 0; got {self.warmup_epochs!r}")


@dataclass
class Run:
    """Everything a training run carries from one epoch to the next."""

    model: VAE
    optimizer: object
    rng: np.random.Generator
    config: TrainConfig
    history: dict
    epoch: int = 0            # epochs completed
    data: dict = dataclasses.field(default_factory=dict)   # dataset name / data_dir, for reloading
    baseline: object = None   # None, "loo", or a stateful baseline (numpyvae.estimators)


def make_optimizer(model, config):
    if config.optimizer == "adam":
        return Adam(model.params, lr=config.lr, clip_norm=config.clip_norm)
    return SGD(model.params, lr=config.lr, momentum=config.momentum, clip_norm=config.clip_norm)


def kl_warmup_beta(step, steps_per_epoch, config):
    """beta at a global step: linear from 0 to config.beta over warmup_epochs, then constant."""
    if config.warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, step / (config.warmup_epochs * steps_per_epoch))


def minibatches(n, batch_size, rng):
    """A random permutation of range(n) cut into index arrays of at most batch_size."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def prepare_pixels(x_train, x_test, mode, seed, likelihood):
    """Apply the binarisation mode once, before training.

    "static" binarises both splits once from ``seed + 2``. "dynamic" leaves the training set
    grey (it is re-binarised every epoch) and binarises the test set once, so test ELBOs of
    different epochs and runs are measured on the same binary digits.
    """
    if mode != "none" and likelihood != "bernoulli":
        raise ValueError(f"binarize={mode!r} only makes sense with the bernoulli likelihood")
    if mode == "none":
        return x_train, x_test
    rng = np.random.default_rng(seed + 2)
    x_test_bin = binarize(x_test, rng)
    return (binarize(x_train, rng) if mode == "static" else x_train), x_test_bin


def _labels(model, y, idx=None):
    """The extra positional argument a conditional model needs: (y[idx],), or () for a plain VAE."""
    if not isinstance(model, ConditionalVAE):
        return ()
    if y is None:
        raise ValueError("a ConditionalVAE needs the labels: pass y_train / y_test")
    return (y if idx is None else y[idx],)


def evaluate_elbo(model, x, eps, batch_size=1000, y=None):
    """Mean ELBO, reconstruction term and KL (nats per datapoint) of x (N, D) with fixed noise
    eps of shape (L, N, Z), in batches; also the KL of each latent dimension, averaged over x
    (a dimension with KL ~ 0 is unused: its posterior is the prior). Returns Python floats and
    a list for "kl_per_dim"."""
    sums = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
    kl_dims = np.zeros(model.latent_dim)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], _labels(model, y, slice(i, i + batch_size))
        terms = model.elbo_terms(xb, *yb, eps=eps[:, i:i + batch_size], n_samples=eps.shape[0])
        for k in sums:
            sums[k] += float(np.sum(terms[k], dtype=np.float64))
        mu, logvar = model.encode(xb, *yb)
        kl_dims += np.sum(kl_diag_gaussian_standard_per_dim(mu, logvar), axis=0, dtype=np.float64)
    result = {k: v / x.shape[0] for k, v in sums.items()}
    result["kl_per_dim"] = (kl_dims / x.shape[0]).tolist()
    return result


def fixed_test_noise(model, n, seed, n_samples=1):
    """The fixed noise of the per-epoch test ELBO, shape (n_samples, n, Z), from ``seed + 1``."""
    return np.random.default_rng(seed + 1).standard_normal((n_samples, n, model.latent_dim), dtype=model.dtype)


def _format_eta(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60:d}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds:d}s"


def train(run, x_train, x_test, out_dir=None, log=print, progress=None, on_epoch_end=None,
          y_train=None, y_test=None):
    """Train ``run.model`` from epoch ``run.epoch`` up to ``run.config.epochs``.

    x_train, x_test: (N, D) arrays as given to prepare_pixels (already binarised if static).
    out_dir: when given, a checkpoint and history.json are written there after every epoch.
    log: called with one summary line per epoch. progress: ``True`` for an in-place progress
    line with rate and ETA during each epoch (default: when stdout is a terminal).
    y_train, y_test: integer labels, needed (only) when the model is a ConditionalVAE.
    Returns the run (updated in place).
    """
    model, cfg, rng = run.model, run.config, run.rng
    if log is None:
        log = lambda line: None  # noqa: E731  (quiet)
    x_train = np.ascontiguousarray(x_train, dtype=model.dtype)
    x_test = np.ascontiguousarray(x_test, dtype=model.dtype)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    eps_test = fixed_test_noise(model, x_test.shape[0], cfg.seed)
    if progress is None:
        progress = sys.stdout.isatty()

    while run.epoch < cfg.epochs:
        start = time.perf_counter()
        epoch = run.epoch + 1
        x_epoch = binarize(x_train, rng) if cfg.binarize == "dynamic" else x_train
        sums = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
        batches = minibatches(n, cfg.batch_size, rng)
        for i, idx in enumerate(batches):
            beta = kl_warmup_beta(run.epoch * steps_per_epoch + i, steps_per_epoch, cfg)
            labels = _labels(model, y_train, idx)
            if cfg.objective == "iwae":
                _, grads, terms = model.iwae_loss_and_grads(x_epoch[idx], *labels, k=cfg.k, rng=rng,
                                                            return_terms=True)
            else:
                _, grads, terms = model.loss_and_grads(x_epoch[idx], *labels, n_samples=cfg.n_samples, rng=rng,
                                                       estimator=cfg.estimator, beta=beta, return_terms=True,
                                                       baseline=run.baseline)
            run.optimizer.step(grads)
            for k in sums:
                sums[k] += float(np.sum(terms[k], dtype=np.float64))
            if progress and (i % 10 == 0 or i == len(batches) - 1):
                done = i + 1
                elapsed = time.perf_counter() - start
                rate = done * cfg.batch_size / max(elapsed, 1e-9)
                eta = elapsed / done * (len(batches) - done + steps_per_epoch * (cfg.epochs - epoch))
                print(f"\repoch {epoch}/{cfg.epochs}  step {done}/{len(batches)}  "
                      f"elbo {sums['elbo'] / min(done * cfg.batch_size, n):9.2f}  "
                      f"{rate:7.0f} samples/s  ETA {_format_eta(eta)}   ", end="", flush=True)
        if progress:
            print("\r" + " " * 100 + "\r", end="", flush=True)
        test = evaluate_elbo(model, x_test, eps_test, y=y_test)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_elbo": sums["elbo"] / n, "train_rec": sums["rec"] / n,
               "train_kl": sums["kl"] / n, "test_elbo": test["elbo"], "test_rec": test["rec"],
               "test_kl": test["kl"], "test_kl_per_dim": test["kl_per_dim"], "beta": beta, "seconds": seconds}
        for k in HISTORY_KEYS:
            run.history.setdefault(k, []).append(row[k])
        if not all(math.isfinite(row[k]) for k in ("train_elbo", "test_elbo")):
            raise FloatingPointError(f"training diverged at epoch {epoch} (ELBO is {row['train_elbo']}); "
                                     "try a smaller --lr or --clip-norm")
        run.epoch = epoch
        remaining = sum(run.history["seconds"]) / len(run.history["seconds"]) * (cfg.epochs - epoch)
        log(f"epoch {epoch:3d}/{cfg.epochs}  train ELBO {row['train_elbo']:9.2f}  test ELBO {row['test_elbo']:9.2f}"
            f"  (rec {row['test_rec']:9.2f}, KL {row['test_kl']:6.2f})  beta {beta:.2f}"
            f"  {n / seconds:6.0f} samples/s  {seconds:5.1f}s  ETA {_format_eta(remaining)}")
        if out_dir is not None:
            save_run(run, out_dir)
        if on_epoch_end is not None:
            on_epoch_end(run)
    return run


# ---------------------------------------------------------------------------
# Saving and loading a run
# ---------------------------------------------------------------------------

def save_run(run, out_dir):
    """Write checkpoint.npz (atomic), history.json and config.json into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    opt_state = run.optimizer.state_dict()
    arrays = {f"param.{k}": v for k, v in run.model.params.items()}
    arrays.update({f"opt.{k}": v for k, v in opt_state["arrays"].items()})
    baseline_state = None
    if run.baseline is not None and not isinstance(run.baseline, str):
        state = run.baseline.state()
        arrays.update({f"baseline.{k}": v for k, v in state["arrays"].items()})
        baseline_state = state["scalars"]
    config = {"model": run.model.config, "train": dataclasses.asdict(run.config), "data": run.data}
    metadata = {"format": "numpyvae-checkpoint", "version": __version__, "epoch": run.epoch,
                "optimizer": opt_state["scalars"], "rng": rng_state_to_json(run.rng), "baseline": baseline_state,
                "history": run.history, **config}
    save_checkpoint(os.path.join(out_dir, CHECKPOINT), arrays, metadata)
    atomic_write_json(os.path.join(out_dir, "history.json"), run.history)
    atomic_write_json(os.path.join(out_dir, "config.json"), {**config, "version": __version__})


def _checkpoint_path(path):
    return os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path


def load_run(path):
    """Rebuild a Run from a run directory (or a checkpoint file): the model with its parameters,
    the optimiser with its state, the training Generator where it stopped, and the history.

    Raises FileNotFoundError / ValueError with the path and the reason when the checkpoint is
    missing, corrupt, or does not match the architecture it records.
    """
    ckpt = _checkpoint_path(os.fspath(path))
    arrays, meta = load_checkpoint(ckpt)
    if meta.get("format") != "numpyvae-checkpoint":
        raise ValueError(f"{ckpt}: not a numpyvae training checkpoint (format={meta.get('format')!r})")
    try:
        model_cfg = dict(meta["model"])
        model_cfg["hidden_dims"] = tuple(model_cfg["hidden_dims"])
        model_cfg["dtype"] = np.dtype(model_cfg["dtype"])
        model = ConditionalVAE(**model_cfg) if "n_classes" in model_cfg else VAE(**model_cfg)
        config = TrainConfig(**meta["train"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{ckpt}: checkpoint metadata is incomplete or from another version: {exc}") from exc

    params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    problems = [f"missing parameter {k}" for k in model.params if k not in params]
    problems += [f"unexpected parameter {k}" for k in params if k not in model.params]
    problems += [f"{k}: shape {params[k].shape} / dtype {params[k].dtype}, expected "
                 f"{v.shape} / {v.dtype}" for k, v in model.params.items()
                 if k in params and (params[k].shape != v.shape or params[k].dtype != v.dtype)]
    if problems:
        raise ValueError(f"{ckpt}: parameters do not match the recorded architecture:\n  " + "\n  ".join(problems))
    for k, v in model.params.items():
        np.copyto(v, params[k])      # in place: the optimiser holds these very arrays

    optimizer = make_optimizer(model, config)
    optimizer.load_state_dict({"arrays": {k[len("opt."):]: v for k, v in arrays.items() if k.startswith("opt.")},
                               "scalars": meta["optimizer"]})
    baseline = make_baseline(config.baseline, model.input_dim, seed=config.seed, dtype=model.dtype)
    if meta.get("baseline") is not None:
        baseline.load_state({"arrays": {k[len("baseline."):]: v for k, v in arrays.items()
                                        if k.startswith("baseline.")}, "scalars": meta["baseline"]})
    return Run(model=model, optimizer=optimizer, rng=rng_from_json(meta["rng"]), config=config,
               history={k: list(v) for k, v in meta["history"].items()}, epoch=int(meta["epoch"]),
               data=dict(meta.get("data", {})), baseline=baseline)


def new_run(model, config, data=None):
    """A fresh Run: optimiser from the config, training Generator from config.seed."""
    return Run(model=model, optimizer=make_optimizer(model, config), rng=np.random.default_rng(config.seed),
               config=config, history={k: [] for k in HISTORY_KEYS}, epoch=0, data=dict(data or {}),
               baseline=make_baseline(config.baseline, model.input_dim, seed=config.seed, dtype=model.dtype))


def history_table(history):
    """The history as aligned text, one row per epoch."""
    lines = [f"{'epoch':>5} {'train ELBO':>11} {'test ELBO':>10} {'test rec':>9} {'test KL':>8} {'beta':>5} {'sec':>6}"]
    for i in range(len(history["epoch"])):
        lines.append(f"{history['epoch'][i]:5d} {history['train_elbo'][i]:11.2f} {history['test_elbo'][i]:10.2f} "
                     f"{history['test_rec'][i]:9.2f} {history['test_kl'][i]:8.2f} {history['beta'][i]:5.2f} "
                     f"{history['seconds'][i]:6.1f}")
    return "\n".join(lines)

