"""Training a VAE: minibatches, KL warm-up, per-epoch evaluation, checkpoints and resume.

One ``np.random.Generator`` (seeded by ``TrainConfig.seed``) drives everything random in
training, always in the same order: the dynamic binarisation of the epoch, the shuffle,
then the noise eps of each step. Its state is saved in the checkpoint at the end of every
epoch, together with the parameters and the optimiser state, so a run resumed from a
checkpoint continues bit for bit as if it had never stopped.

The test ELBO is computed every epoch with one fixed noise draw (made once from
``seed + 1``), so differences between epochs come from the model, not the noise.

The same trainer trains a DiscreteVAE (numpyvae.discrete, a binary or categorical code) with one of
its estimators (score, nvil, vimco, gumbel, straight-through). Its noise is logistic or Gumbel
instead of Gaussian, its test ELBO the discrete model's Monte Carlo ELBO with fixed noise, its
per-dimension KL the KL of each unit or categorical variable (docs/discrete.md, section 2), NVIL's
baseline is checkpointed like any other, and the relaxed estimators' temperature follows the
schedule of ``temperature_at``, a function of the global step alone (nothing to save for it).

A run directory holds:
    checkpoint.npz   parameters + optimiser state + metadata JSON (see numpyvae.checkpoint)
    history.json     per-epoch train/test ELBO, reconstruction and KL terms (nats), beta, time
    config.json      the model and training configuration, human-readable
    *.png            figures (numpyvae.lab.plotting)
    run.lock         locked while a process writes into the directory (see run_lock)

One writer at a time: ``train`` (and ``save_run``) hold the run lock of their directory for as
long as they write into it, so two processes never mix their files in one directory. Every
file is written atomically, so a reader (``load_run``) that takes no lock still sees either
the previous checkpoint or the new one, never half of one.

Divergence: a step whose minibatch ELBO or gradient is not finite stops training with a
``TrainingDiverged`` error that names the epoch, the step and what went non-finite, before
the bad step touches the model; a checkpoint is only ever written from finite parameters.
Divergence that stays finite (bounded log-variances keep a runaway model's numbers finite) is
caught at the end of an epoch: a test ELBO more than ten times the best one's magnitude below
the best so far (the untrained model's, for a new run) stops training the same way.
"""

import contextlib
import dataclasses
import errno
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import __version__
from ._validate import array_mismatches, check_positive_int
from .checkpoint import (atomic_write_json, load_checkpoint, remove_stale_temporaries, rng_from_json,
                         rng_state_to_json, save_checkpoint)
from .data import binarize
from .distributions import kl_diag_gaussian_standard_per_dim
from .discrete import DiscreteVAE
from .discrete_estimators import ESTIMATORS as DISCRETE_ESTIMATORS
from .discrete_estimators import NVILBaseline
from .estimators import BASELINES, ESTIMATORS, make_baseline
from .conditional import ConditionalVAE
from .model import VAE, make_networks
from .optim import SGD, Adam

__all__ = ["TrainConfig", "Run", "make_optimizer", "kl_warmup_beta", "minibatches", "evaluate_elbo",
           "prepare_pixels", "train", "save_run", "load_run", "new_run", "fixed_test_noise",
           "history_table", "HISTORY_KEYS", "TrainingDiverged", "RunInUseError", "run_lock",
           "create_run_dir", "run_files", "estimate_parameters", "labels_for", "temperature_at",
           "history_keys", "check_config_for_model", "make_run_baseline", "RELAXED_ESTIMATORS"]

HISTORY_KEYS = ("epoch", "train_elbo", "train_rec", "train_kl", "test_elbo", "test_rec", "test_kl",
                "test_kl_per_dim", "test_kl_offdiag", "beta", "seconds")
# A run whose estimator relaxes a discrete code also records the temperature of each epoch's last step.
RELAXED_ESTIMATORS = ("gumbel", "straight-through")
BINARIZE_MODES = ("none", "static", "dynamic")
CHECKPOINT = "checkpoint.npz"
RUN_FILES = (CHECKPOINT, "history.json", "config.json")   # what makes a directory a run
LOCK_FILE = "run.lock"


@dataclass
class TrainConfig:
    """Training hyperparameters. Every field is a plain JSON value (stored in checkpoints).

    epochs          total number of epochs of the run (a resumed run continues up to it)
    batch_size      datapoints per minibatch
    lr              learning rate
    optimizer       "adam" (bias-corrected) or "sgd" (with ``momentum``)
    n_samples       L, Monte Carlo samples of z per datapoint in the training ELBO (K for "vimco")
    estimator       gradient estimator passed to the model's loss_and_grads: for a VAE "reparam",
                    "score", "blocked" or "stl"; for a DiscreteVAE "score", "nvil", "vimco",
                    "gumbel" or "straight-through" (check_config_for_model matches the two)
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
    temperature     tau_0, the temperature of "gumbel" and "straight-through" (the others take none)
    temperature_min tau_min, the floor of the annealing schedule (None: no annealing)
    anneal_rate     r of the schedule tau = max(tau_min, tau_0 exp(-r t)), t the global step
                    (temperature_at); 0 = constant tau_0. Both or neither of the two.
    """

    epochs: int = 20
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
    temperature: float = 1.0
    temperature_min: "float | None" = None
    anneal_rate: float = 0.0

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
        self._check_discrete_options()

    def _check_discrete_options(self):
        """The options of the discrete estimators: each only where it means something."""
        if self.estimator not in {**ESTIMATORS, **DISCRETE_ESTIMATORS}:
            raise ValueError(f"unknown estimator {self.estimator!r}; expected one of {list(ESTIMATORS)} (a Gaussian "
                             f"code) or {list(DISCRETE_ESTIMATORS)} (a discrete code)")
        if not (_is_number(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number; got {self.temperature!r}")
        if not (_is_number(self.anneal_rate) and self.anneal_rate >= 0):
            raise ValueError(f"anneal_rate must be a number >= 0; got {self.anneal_rate!r}")
        if self.temperature_min is not None and not (_is_number(self.temperature_min)
                                                     and 0 < self.temperature_min <= self.temperature):
            raise ValueError(f"temperature_min must be a positive number no larger than temperature "
                             f"({self.temperature:g}); got {self.temperature_min!r}")
        if self.estimator not in RELAXED_ESTIMATORS and (self.temperature != 1.0 or self.anneal_rate
                                                         or self.temperature_min is not None):
            raise ValueError(f"temperature, temperature_min and anneal_rate apply to the estimators "
                             f"{list(RELAXED_ESTIMATORS)}, which relax the code; estimator={self.estimator!r} "
                             "takes none")
        if (self.anneal_rate > 0) != (self.temperature_min is not None):
            raise ValueError("annealing needs both anneal_rate > 0 and temperature_min (tau = max(temperature_min, "
                             f"temperature exp(-anneal_rate t))); got anneal_rate={self.anneal_rate!r}, "
                             f"temperature_min={self.temperature_min!r}")
        if self.estimator == "vimco":
            if self.n_samples < 2:
                raise ValueError(f"estimator='vimco' needs n_samples >= 2 (K samples, each with a leave-one-out "
                                 f"baseline from the others); got n_samples={self.n_samples}")
            if self.beta != 1.0 or self.warmup_epochs:
                raise ValueError("estimator='vimco' trains on the K-sample bound, which has no KL term to weight: "
                                 "it takes no beta or warmup_epochs")


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
    baseline: object = None   # None or a baseline object (numpyvae.estimators.make_baseline)


def make_optimizer(model, config):
    if config.optimizer == "adam":
        return Adam(model.params, lr=config.lr, clip_norm=config.clip_norm)
    return SGD(model.params, lr=config.lr, momentum=config.momentum, clip_norm=config.clip_norm)


def history_keys(config):
    """The per-epoch series a run of this configuration records: HISTORY_KEYS, and "temperature"
    (that of the epoch's last step) for the estimators that relax a discrete code."""
    return HISTORY_KEYS + (("temperature",) if config.estimator in RELAXED_ESTIMATORS else ())


def check_config_for_model(model, config):
    """ValueError unless the configuration's objective and estimator are those of the model's code:
    a VAE's estimators for a Gaussian code, a DiscreteVAE's for a discrete one (which trains on the
    K-sample bound with estimator "vimco", not objective "iwae")."""
    discrete = isinstance(model, DiscreteVAE)
    if discrete and config.objective != "elbo":
        raise ValueError(f"objective={config.objective!r} is for a Gaussian code; a discrete code trains on the "
                         "ELBO, or on the K-sample bound with estimator='vimco' and n_samples=K")
    names = DISCRETE_ESTIMATORS if discrete else ESTIMATORS
    if config.estimator not in names:
        code = f"a discrete ({model.posterior.name}) code" if discrete else "a Gaussian code"
        raise ValueError(f"estimator={config.estimator!r} does not train {code}; expected one of {list(names)}")


def make_run_baseline(model, config):
    """The baseline object a run carries (and checkpoints): NVIL's own (an NVILBaseline, seeded by
    config.seed) for estimator "nvil", else the one config.baseline names (None for "none")."""
    if config.estimator == "nvil":
        return NVILBaseline(model.input_dim, seed=config.seed, dtype=model.dtype)
    return make_baseline(config.baseline, model.input_dim, seed=config.seed, dtype=model.dtype)


def temperature_at(step, config):
    """The temperature of the relaxed estimators at global step t (0-based, counted over epochs):

        tau_t = max(tau_min, tau_0 exp(-r t))                    Eq. (H23), docs/discrete.md

    Jang et al. (2017)'s schedule, updated here at every step (they update it every N = 500 or 1000
    steps, a staircase of the same curve). tau_0 = config.temperature; without annealing
    (anneal_rate 0) tau_0 throughout. A function of the step alone: a resumed run needs no state."""
    if config.anneal_rate <= 0:
        return config.temperature
    return max(config.temperature_min, config.temperature * math.exp(-config.anneal_rate * step))


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


def labels_for(model, y, idx=None):
    """What a model's methods take as ``y=``: the labels y[idx] for a conditional model (one whose
    networks read a condition, cond_dim > 0), None for a plain VAE, which reads none."""
    if not model.cond_dim:
        return None
    if y is None:
        raise ValueError("a ConditionalVAE needs the labels: pass y_train / y_test")
    return y if idx is None else y[idx]


def evaluate_elbo(model, x, eps, batch_size=1000, y=None):
    """Mean ELBO, reconstruction term and KL (nats per datapoint) of x (N, D) with fixed noise
    eps of shape (L, N, Z), in batches, and the KL in its two parts, averaged over x:

        kl_per_dim  (Z,)  1/2 (mu_j^2 + exp(logvar_j) - 1 - logvar_j)     Eq. (A1), docs/ppca.md
        kl_offdiag        1/2 sum_{i>j} T_ij^2, 0 for a diagonal posterior   Eq. (A3), docs/ppca.md

    so that kl = sum(kl_per_dim) + kl_offdiag. For a diagonal posterior kl_per_dim is the KL of
    each latent dimension (~0: the dimension is unused). For a full-covariance one there is no
    such thing: kl_per_dim holds the diagonal terms of the KL and kl_offdiag what the
    correlations T add. For a DiscreteVAE, eps is its logistic or Gumbel noise (L, N, Z[, C]),
    the ELBO its Monte Carlo ELBO at the exact samples, kl_per_dim the KL of each unit or
    categorical variable (the KL of independent variables is their sum: docs/discrete.md,
    section 2), kl_offdiag 0. Returns Python floats and a list for "kl_per_dim"."""
    sums = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
    kl_dims = np.zeros(model.latent_dim)
    kl_offdiag = 0.0
    for i in range(0, x.shape[0], batch_size):
        if isinstance(model, DiscreteVAE):
            xb = x[i:i + batch_size]
            omega = model.encode(xb)                  # encoded once, for the ELBO and its parts
            terms = model.elbo_terms(xb, n_samples=eps.shape[0], noise=eps[:, i:i + batch_size], omega=omega)
            for k in sums:
                sums[k] += float(np.sum(terms[k], dtype=np.float64))
            kl_dims += np.sum(model.posterior.kl_per_variable(omega), axis=0, dtype=np.float64)
            continue
        xb, yb = x[i:i + batch_size], labels_for(model, y, slice(i, i + batch_size))
        q = model.posterior_params(xb, y=yb)          # encoded once, for the ELBO and its parts
        terms = model.elbo_terms(xb, eps=eps[:, i:i + batch_size], n_samples=eps.shape[0], y=yb, q=q)
        for k in sums:
            sums[k] += float(np.sum(terms[k], dtype=np.float64))
        kl_dims += np.sum(kl_diag_gaussian_standard_per_dim(q["mu"], q["logvar"]), axis=0, dtype=np.float64)
        if "tril" in q:
            kl_offdiag += 0.5 * float(np.sum(np.square(q["tril"], dtype=np.float64)))
    result = {k: v / x.shape[0] for k, v in sums.items()}
    result["kl_per_dim"] = (kl_dims / x.shape[0]).tolist()
    result["kl_offdiag"] = kl_offdiag / x.shape[0]
    return result


def fixed_test_noise(model, n, seed, n_samples=1):
    """The fixed noise of the per-epoch test ELBO, from ``seed + 1``: standard normal (n_samples, n, Z)
    for a VAE, the code's logistic or Gumbel noise (n_samples, n, Z[, C]) for a DiscreteVAE."""
    rng = np.random.default_rng(seed + 1)
    if isinstance(model, DiscreteVAE):
        return model.posterior.noise(n_samples, n, rng, model.dtype)
    return rng.standard_normal((n_samples, n, model.latent_dim), dtype=model.dtype)


def _format_eta(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60:d}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds:d}s"


class TrainingDiverged(FloatingPointError):
    """Training produced a non-finite number. Raised before the bad step changes the model,
    and before anything non-finite is saved: the checkpoint of the last completed epoch (if
    any) is the one on disk.

    Attributes: epoch (the epoch that diverged, 1-based), step (1-based step within it, or
    None when the end-of-epoch evaluation found it), steps (steps per epoch), reason (what
    went non-finite), saved_epoch (the epoch of the checkpoint on disk, 0 for none),
    out_dir, and the run's lr, clip_norm and (planned) epochs.
    """

    def __init__(self, run, epoch, step, steps, reason, out_dir):
        self.epoch, self.step, self.steps, self.reason, self.out_dir = epoch, step, steps, reason, out_dir
        self.saved_epoch = run.epoch if out_dir is not None else 0
        self.lr, self.clip_norm, self.epochs = run.config.lr, run.config.clip_norm, run.config.epochs
        where = (f"epoch {epoch}, step {step} of {steps}" if step is not None
                 else f"epoch {epoch} (at the evaluation after its last step)")
        if out_dir is None:
            saved = "nothing is saved (no out_dir)"
        elif self.saved_epoch == 0:
            saved = f"nothing was saved in {out_dir} (no epoch had finished)"
        else:
            saved = f"{out_dir} keeps the checkpoint of epoch {self.saved_epoch}"
        clip = "--clip-norm" if self.clip_norm is None else f"a smaller --clip-norm (now {self.clip_norm:g})"
        super().__init__(f"training diverged at {where}: {reason}; {saved}; "
                         f"try a smaller --lr (now {self.lr:g}) or {clip}")


def _nonfinite(values):
    """The name of the first entry of {name: array or number} holding NaN or inf, or None."""
    for name, value in values.items():
        if not np.all(np.isfinite(value)):
            return name
    return None


def _exploded(elbo, best):
    """Divergence that stays finite: an ELBO more than ten times the best one's magnitude below
    it (e.g. -1e10 nats after an ELBO of -540). Noise and ordinary setbacks of training move the
    test ELBO by a few nats; only runaway parameters move it this far."""
    return elbo < best - 10.0 * max(abs(best), 1.0)


def _progress_line(epoch, cfg, done, n_batches, steps_per_epoch, elbo_sum, n, start):
    elapsed = time.perf_counter() - start
    rate = done * cfg.batch_size / max(elapsed, 1e-9)
    eta = elapsed / done * (n_batches - done + steps_per_epoch * (cfg.epochs - epoch))
    return (f"\repoch {epoch}/{cfg.epochs}  step {done}/{n_batches}  "
            f"elbo {elbo_sum / min(done * cfg.batch_size, n):9.2f}  "
            f"{rate:7.0f} samples/s  ETA {_format_eta(eta)}   ")


def train(run, x_train, x_test, out_dir=None, log=print, progress=None, on_epoch_end=None,
          y_train=None, y_test=None):
    """Train ``run.model`` from epoch ``run.epoch`` up to ``run.config.epochs``.

    x_train, x_test: (N, D) arrays as given to prepare_pixels (already binarised if static).
    out_dir: when given, a checkpoint and history.json are written there after every epoch,
    holding the directory's run lock (``run_lock``) for the whole call; RunInUseError if
    another process holds it.
    log: called with one summary line per epoch. progress: ``True`` for an in-place progress
    line with rate and ETA during each epoch (default: when stdout is a terminal).
    y_train, y_test: integer labels, needed (only) when the model is a ConditionalVAE.
    Returns the run (updated in place).

    Raises TrainingDiverged (a FloatingPointError) at the first step whose minibatch ELBO or
    gradient is NaN or inf, or when an epoch ends with a non-finite test ELBO or parameter;
    the model is not updated by that step and nothing non-finite is saved.
    """
    if log is None:
        log = lambda line: None  # noqa: E731  (quiet)
    if progress is None:
        progress = sys.stdout.isatty()
    if out_dir is None:
        return _train_epochs(run, x_train, x_test, None, log, progress, on_epoch_end, y_train, y_test)
    os.makedirs(out_dir, exist_ok=True)
    with run_lock(out_dir):
        return _train_epochs(run, x_train, x_test, out_dir, log, progress, on_epoch_end, y_train, y_test)


def _train_epochs(run, x_train, x_test, out_dir, log, progress, on_epoch_end, y_train, y_test):
    model, cfg = run.model, run.config
    x_train = np.ascontiguousarray(x_train, dtype=model.dtype)
    x_test = np.ascontiguousarray(x_test, dtype=model.dtype)
    n = x_train.shape[0]
    if n == 0 or x_test.shape[0] == 0:
        raise ValueError(f"training needs data: x_train has {n} rows and x_test {x_test.shape[0]}")
    eps_test = fixed_test_noise(model, x_test.shape[0], cfg.seed)
    # The yardstick for divergence that stays finite: the best test ELBO so far (of the
    # untrained model, for a new run).
    best = max(run.history.get("test_elbo") or [evaluate_elbo(model, x_test, eps_test, y=y_test)["elbo"]])

    while run.epoch < cfg.epochs:
        start = time.perf_counter()
        epoch = run.epoch + 1
        # Non-finite numbers are caught explicitly (TrainingDiverged); numpy's overflow warnings
        # on the way there would only print noise above that one message.
        with np.errstate(all="ignore"):
            sums, beta, steps = _train_steps(run, x_train, y_train, out_dir, progress, start)
            test = evaluate_elbo(model, x_test, eps_test, y=y_test)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_elbo": sums["elbo"] / n, "train_rec": sums["rec"] / n,
               "train_kl": sums["kl"] / n, "test_elbo": test["elbo"], "test_rec": test["rec"],
               "test_kl": test["kl"], "test_kl_per_dim": test["kl_per_dim"], "test_kl_offdiag": test["kl_offdiag"],
               "beta": beta, "seconds": seconds, "temperature": temperature_at(run.epoch * steps + steps - 1, cfg)}
        # Checked before the row enters the history and before anything is saved.
        bad = _nonfinite({**{f"the {k.replace('_', ' ')}": row[k] for k in ("test_elbo", "test_rec", "test_kl")},
                          **{f"parameter {k!r}": v for k, v in model.params.items()}})
        if bad is not None:
            raise TrainingDiverged(run, epoch, None, steps, f"{bad} is not finite", out_dir)
        if _exploded(row["test_elbo"], best):
            raise TrainingDiverged(run, epoch, None, steps, f"the test ELBO fell to {row['test_elbo']:.4g} nats, "
                                   f"far below the best so far ({best:.4g})", out_dir)
        best = max(best, row["test_elbo"])
        for k in history_keys(cfg):
            run.history.setdefault(k, []).append(row[k])
        run.epoch = epoch
        remaining = sum(run.history["seconds"]) / len(run.history["seconds"]) * (cfg.epochs - epoch)
        tau = f"  tau {row['temperature']:.3f}" if "temperature" in history_keys(cfg) else ""
        log(f"epoch {epoch:3d}/{cfg.epochs}  train ELBO {row['train_elbo']:9.2f}  test ELBO {row['test_elbo']:9.2f}"
            f"  (rec {row['test_rec']:9.2f}, KL {row['test_kl']:6.2f})  beta {beta:.2f}{tau}"
            f"  {n / seconds:6.0f} samples/s  {seconds:5.1f}s  ETA {_format_eta(remaining)}")
        if out_dir is not None:
            _save_epoch(run, out_dir)
        if on_epoch_end is not None:
            on_epoch_end(run)
    return run


def _train_steps(run, x_train, y_train, out_dir, progress, start):
    """The minibatch steps of epoch run.epoch + 1. Returns the summed ELBO, reconstruction and KL
    terms over the epoch, the last beta, and the number of steps.

    Before each optimiser step the minibatch ELBO and the loss must be finite, and
    Optimizer.step checks every gradient before it changes anything: a non-finite value stops
    training (TrainingDiverged) with the model as it was before that step."""
    model, cfg, rng = run.model, run.config, run.rng
    n, epoch = x_train.shape[0], run.epoch + 1
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    x_epoch = binarize(x_train, rng) if cfg.binarize == "dynamic" else x_train
    sums = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
    batches = minibatches(n, cfg.batch_size, rng)
    try:
        for i, idx in enumerate(batches):
            global_step = run.epoch * steps_per_epoch + i
            beta = kl_warmup_beta(global_step, steps_per_epoch, cfg)
            loss, grads, terms = _loss_and_grads(run, x_epoch[idx], labels_for(model, y_train, idx), beta,
                                                 global_step)
            step = {k: float(np.sum(terms[k], dtype=np.float64)) for k in sums}
            try:
                for what, value in (("the minibatch ELBO", step["elbo"]), ("the loss", float(loss))):
                    if not math.isfinite(value):
                        raise FloatingPointError(f"{what} is {value}")
                run.optimizer.step(grads)
            except FloatingPointError as exc:
                # The optimiser's first sentence says what is wrong; our message gives the advice.
                reason = str(exc).split(". ")[0].rstrip(".")
                raise TrainingDiverged(run, epoch, i + 1, len(batches), reason, out_dir) from exc
            for k in sums:
                sums[k] += step[k]
            if progress and (i % 10 == 0 or i == len(batches) - 1):
                print(_progress_line(epoch, cfg, i + 1, len(batches), steps_per_epoch, sums["elbo"], n, start),
                      end="", flush=True)
    finally:
        if progress:
            print("\r" + " " * 100 + "\r", end="", flush=True)
    return sums, beta, len(batches)


def _loss_and_grads(run, xb, labels, beta, global_step):
    """One minibatch's loss, gradients and per-datapoint ELBO terms, by the run's objective and
    estimator: the IWAE bound, the ELBO of a VAE, or the ELBO (bound, for "vimco") of a DiscreteVAE
    with the temperature of this step. Every draw comes from run.rng."""
    model, cfg, rng = run.model, run.config, run.rng
    if cfg.objective == "iwae":
        return model.iwae_loss_and_grads(xb, k=cfg.k, rng=rng, return_terms=True, y=labels)
    if isinstance(model, DiscreteVAE):
        return model.loss_and_grads(xb, n_samples=cfg.n_samples, rng=rng, estimator=cfg.estimator,
                                    temperature=temperature_at(global_step, cfg), beta=beta, return_terms=True,
                                    baseline=run.baseline)
    return model.loss_and_grads(xb, n_samples=cfg.n_samples, rng=rng, estimator=cfg.estimator, beta=beta,
                                return_terms=True, baseline=run.baseline, y=labels)


def _save_epoch(run, out_dir):
    """save_run, with an OSError (full disk, lost permission) that says which checkpoint is left."""
    try:
        save_run(run, out_dir)
    except OSError as exc:
        left = (f"the checkpoint of epoch {run.epoch - 1} is intact" if run.epoch > 1
                else "no checkpoint was written")
        raise OSError(exc.errno, f"could not save epoch {run.epoch} in {out_dir} "
                                 f"({exc.strerror or exc}); {left}") from exc


# ---------------------------------------------------------------------------
# Saving and loading a run
# ---------------------------------------------------------------------------

def save_run(run, out_dir):
    """Write history.json, config.json and checkpoint.npz (each atomically) into out_dir,
    holding its run lock. The checkpoint goes last, so if any write fails (a full disk) the
    checkpoint on disk is still the previous one, complete."""
    os.makedirs(out_dir, exist_ok=True)
    opt_state = run.optimizer.state_dict()
    arrays = {f"param.{k}": v for k, v in run.model.params.items()}
    arrays.update({f"opt.{k}": v for k, v in opt_state["arrays"].items()})
    baseline_state = None
    if run.baseline is not None:
        state = run.baseline.state()
        arrays.update({f"baseline.{k}": v for k, v in state["arrays"].items()})
        baseline_state = state["scalars"]
    config = {"model": run.model.config, "train": dataclasses.asdict(run.config), "data": run.data}
    metadata = {"format": "numpyvae-checkpoint", "version": __version__, "epoch": run.epoch,
                "optimizer": opt_state["scalars"], "rng": rng_state_to_json(run.rng), "baseline": baseline_state,
                "history": run.history, **config}
    with run_lock(out_dir):
        atomic_write_json(os.path.join(out_dir, "history.json"), run.history)
        atomic_write_json(os.path.join(out_dir, "config.json"), {**config, "version": __version__})
        save_checkpoint(os.path.join(out_dir, CHECKPOINT), arrays, metadata)


# ---------------------------------------------------------------------------
# Run directories: unique creation and the run lock
# ---------------------------------------------------------------------------

class RunInUseError(RuntimeError):
    """Another process holds the run lock of a directory (it is training in it)."""


try:                       # POSIX
    import fcntl
except ImportError:        # Windows
    fcntl = None
    import msvcrt

# The locks this process holds: {real path of the directory: [fd, depth]}. A process that
# already holds a directory's lock may take it again (the CLI holds it around train(), which
# takes it too); flock would otherwise refuse a second open file of the same process.
_held_locks = {}
_held_locks_guard = threading.Lock()
_MSVCRT_LOCK_OFFSET = 1 << 20   # Windows: lock a byte past the text, so the text stays readable


def _try_lock(fd):
    """Take an exclusive lock on the open file fd without waiting; False if someone holds it.

    The lock belongs to the open file: the kernel drops it when the process exits, however it
    exits (kill -9 included), so a lock is never left behind by a dead process."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise
    return True


def _unlock(fd):
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _holder(fd):
    """What the lock file says about its holder: 'pid N (started ...)', or a fallback."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1024).decode("utf-8", "replace")
    except OSError:
        text = ""
    info = dict(line.partition(" ")[::2] for line in text.splitlines() if " " in line)
    pid = info.get("pid", "").strip()
    if not pid.isdigit():
        return "another process"
    host = info.get("host", "").strip()
    on_host = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {pid}{on_host} (started {info.get('started', '?').strip()})"


def _remove_stale_temporaries(directory):
    """Remove the temporaries that a save killed mid-way (kill -9, power loss) left beside the
    run files. Only called while holding the run lock: no writer of these files can be in the
    middle of a save then. (Figures and evaluation.json are also written by commands that only
    read the run and take no lock, so their temporaries are not touched: one might be live.)"""
    for name in RUN_FILES:
        remove_stale_temporaries(os.path.join(directory, name))


@contextlib.contextmanager
def run_lock(directory):
    """Hold the run lock of ``directory`` (an existing directory) for the ``with`` block.

    The lock is an exclusive, non-blocking lock (flock on POSIX, msvcrt.locking on Windows)
    on the file ``run.lock`` inside the directory, which records the holder's pid, host and
    start time for the error message. Because the operating system releases such a lock when
    its process ends, a process killed with kill -9 leaves the file but not the lock: there is
    no stale lock to detect or clean up, and the next process simply takes it. (The file stays
    in the directory; deleting a lock file races with a process that has just opened it.) On a
    network filesystem the lock is as reliable as that filesystem's locking (Linux NFS clients
    support it).

    On taking the lock, temporaries left by a killed save are removed. Re-entrant within one
    process. Raises RunInUseError ("DIR is in use by pid N (started ...); ...") if another
    process holds it, OSError if the directory cannot be written.
    """
    key = os.path.realpath(directory)
    with _held_locks_guard:
        held = _held_locks.get(key)
        if held is None:
            held = _held_locks[key] = [_acquire(directory), 0]
        held[1] += 1
    try:
        yield directory
    finally:
        with _held_locks_guard:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _held_locks[key]
        if last:
            try:
                _unlock(held[0])
            finally:
                os.close(held[0])


def _acquire(directory):
    path = os.path.join(directory, LOCK_FILE)
    # O_NOFOLLOW: a run.lock planted as a symlink must not make us truncate the file it points to.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o666)
    try:
        if not _try_lock(fd):
            raise RunInUseError(f"{directory} is in use by {_holder(fd)}; "
                                "wait for it to finish or choose another --out")
        info = (f"pid {os.getpid()}\nhost {socket.gethostname()}\n"
                f"started {time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, info)
        _remove_stale_temporaries(directory)
    except BaseException:
        os.close(fd)   # closing the file also releases the lock, if we had taken it
        raise
    return fd


def create_run_dir(base):
    """Create a new, empty directory named ``base`` or, if that exists, ``base-2``, ``base-3``, ...
    and return its path. Creation is atomic (os.mkdir fails if the name exists), so processes
    started in the same second never share a directory."""
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{base}: 10,000 run directories of that name exist already")


def run_files(directory):
    """The files of RUN_FILES present in ``directory`` (a non-empty list means it holds a run)."""
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(directory, name))]


# ---------------------------------------------------------------------------
# Loading a run, checking every field it reads
# ---------------------------------------------------------------------------

def _checkpoint_path(path):
    return os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path


def _is_number(value):
    """A finite int or float from JSON (json.loads accepts NaN and Infinity; bool is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def estimate_parameters(model_config):
    """The number of parameters of the model a config dict (``VAE.config``) describes, counted
    from the widths alone, without building it: a Linear layer (m -> n) has (m + 1) n.

    Encoder (D + C) -> H_1 -> ... -> H_n, heads mu and logvar (Z each, plus Z (Z - 1) / 2 for
    posterior "full"); decoder (Z + C) -> H_n -> ... -> H_1, one head of width D per
    likelihood output (two for "gaussian-learned"). C = n_classes for a conditional model.
    A discrete code (``DiscreteVAE.config``, with "latent") has one head of logits and a decoder
    input of its code's width: Z, or Z K for "categorical" with K = n_categories.
    A convolutional model (arch "conv") is counted by its networks (ConvNetworks.count_parameters).
    Raises TypeError / ValueError for widths that are not positive integers."""
    D, Z = (check_positive_int(model_config[k], k) for k in ("input_dim", "latent_dim"))
    H = tuple(check_positive_int(h, "each hidden width") for h in model_config["hidden_dims"])
    C = check_positive_int(model_config["n_classes"], "n_classes") if "n_classes" in model_config else 0

    def linears(widths):
        return sum((m + 1) * n for m, n in zip(widths[:-1], widths[1:]))

    if "latent" in model_config:       # a discrete code: logits in, the code out
        K = check_positive_int(model_config.get("n_categories", 2), "n_categories")
        Z = Z * K if model_config["latent"] == "categorical" else Z
        encoder, decoder = (D,) + H, (Z,) + H[::-1]
        dec_heads = D * (2 if model_config.get("likelihood") == "gaussian-learned" else 1)
        return linears(encoder) + (encoder[-1] + 1) * Z + linears(decoder) + (decoder[-1] + 1) * dec_heads
    encoder, decoder = (D + C,) + H, (Z + C,) + H[::-1]
    enc_heads = 2 * Z + (Z * (Z - 1) // 2 if model_config.get("posterior") == "full" else 0)
    dec_heads = D * (2 if model_config.get("likelihood") == "gaussian-learned" else 1)
    if model_config.get("arch", "mlp") != "mlp":
        nets = make_networks(model_config["arch"], D, H, model_config.get("activation"),
                             model_config.get("image_shape"), model_config.get("channels"))
        return nets.count_parameters(C, Z + C, enc_heads, dec_heads // D)
    return (linears(encoder) + (encoder[-1] + 1) * enc_heads
            + linears(decoder) + (decoder[-1] + 1) * dec_heads)


def _check_epoch(epoch, config):
    if not _is_int(epoch) or not 0 <= epoch <= config.epochs:
        return f"must be an integer from 0 to {config.epochs} (the configured epochs); got {epoch!r}"
    return None


def _check_history(history, epoch, latent_dim, keys=HISTORY_KEYS):
    if not isinstance(history, dict):
        return f"must be a dict of per-epoch lists; got {type(history).__name__}"
    for key in keys:
        values = history.get(key)
        if not isinstance(values, list) or len(values) != epoch:
            got = f"{len(values)} entries" if isinstance(values, list) else repr(type(values).__name__)
            return f"[{key!r}] must be a list of {epoch} entries (one per epoch); got {got}"
        for i, v in enumerate(values):
            ok = (isinstance(v, list) and len(v) == latent_dim and all(map(_is_number, v))
                  if key == "test_kl_per_dim" else _is_number(v))
            if not ok:
                what = f"a list of {latent_dim} finite numbers" if key == "test_kl_per_dim" else "a finite number"
                return f"[{key!r}][{i}] is not {what}: {v!r}"
    if history["epoch"] != list(range(1, epoch + 1)):
        return f"['epoch'] must be 1, 2, ..., {epoch}; got {history['epoch']!r}"
    return None


def _history_with_kl_offdiag(history, posterior):
    """A history saved before "test_kl_offdiag" was recorded gets it back from what it holds:
    test_kl = sum(test_kl_per_dim) + test_kl_offdiag (docs/ppca.md, section 6), and the
    off-diagonal part is 0 for a diagonal posterior. Anything malformed is left for
    _check_history to report."""
    if not isinstance(history, dict) or "test_kl_offdiag" in history:
        return history
    kl, per_dim = history.get("test_kl"), history.get("test_kl_per_dim")
    if not (isinstance(kl, list) and isinstance(per_dim, list) and len(kl) == len(per_dim)):
        return history
    try:
        offdiag = [0.0 if posterior == "diag" else max(0.0, float(k) - math.fsum(p)) for k, p in zip(kl, per_dim)]
    except (TypeError, ValueError, OverflowError):
        return history
    return {**history, "test_kl_offdiag": offdiag}


def _check_optimizer_scalars(scalars, config):
    """The JSON scalars of the optimiser state: its type and every hyperparameter in range."""
    if not isinstance(scalars, dict):
        return f"must be a dict; got {type(scalars).__name__}"
    expected = {"adam": "Adam", "sgd": "SGD"}[config.optimizer]
    if scalars.get("type") != expected:
        return f"['type'] must be {expected!r} (the configured optimizer); got {scalars.get('type')!r}"
    checks = {"t": (_is_int, "an integer >= 0", lambda v: v >= 0),
              "lr": (_is_number, "a positive number", lambda v: v > 0),
              "clip_norm": (lambda v: v is None or _is_number(v), "None or a positive number",
                            lambda v: v is None or v > 0)}
    unit = (_is_number, "a number in [0, 1)", lambda v: 0 <= v < 1)
    checks.update({"beta1": unit, "beta2": unit, "eps": (_is_number, "a positive number", lambda v: v > 0)}
                  if expected == "Adam" else {"momentum": unit})
    for key, (is_type, expected_text, in_range) in checks.items():
        value = scalars.get(key, "<missing>")
        if not (is_type(value) and in_range(value)):
            return f"[{key!r}] must be {expected_text}; got {value!r}"
    return None


def _check_baseline_scalars(scalars, kind):
    """The JSON scalars of the baseline's state: a dict of its type (and, for NVIL's, a running
    variance that is None or a number >= 0: it divides the encoder's gradient by its square root)."""
    if not isinstance(scalars, dict) or scalars.get("type") != kind:
        got = scalars.get("type") if isinstance(scalars, dict) else type(scalars).__name__
        return f"must be the state of a {kind!r} baseline (the configured estimator's); got {got!r}"
    var = scalars.get("var")
    if kind == "nvil" and not (var is None or (_is_number(var) and var >= 0)):
        return f"['var'] must be None or a number >= 0 (NVIL's running variance); got {var!r}"
    return None


def _check_data(data):
    if not (isinstance(data, dict) and all(isinstance(data.get(k), (str, type(None)))
                                           for k in ("dataset", "data_dir", "cache_dir"))):
        return f"must be a dict of an optional 'dataset' name and 'data_dir' / 'cache_dir' paths; got {data!r}"
    return None


def load_run(path):
    """Rebuild a Run from a run directory (or a checkpoint file): the model with its parameters,
    the optimiser with its state, the training Generator where it stopped, and the history.

    Every field read from the file is checked first: the format, the model and training
    configuration, ``epoch`` (an integer from 0 to the configured epochs), ``history`` (a list
    of ``epoch`` finite numbers per key), ``rng`` (a state a Generator can be rebuilt from),
    the optimiser's scalars, ``data``, the baseline state, and every array (finite; shapes and
    dtypes of the architecture). Raises FileNotFoundError when the checkpoint is missing and
    ValueError naming the file and the field for anything else.
    """
    ckpt = _checkpoint_path(os.fspath(path))
    arrays, meta = load_checkpoint(ckpt)

    def invalid(field, problem):
        return ValueError(f"{ckpt}: field {field!r} {problem}")

    if meta.get("format") != "numpyvae-checkpoint":
        raise ValueError(f"{ckpt}: not a numpyvae training checkpoint (format={meta.get('format')!r})")
    for field in ("model", "train", "epoch", "history", "rng", "optimizer"):
        if field not in meta:
            raise invalid(field, "is missing (the checkpoint is incomplete or from another version)")
    try:
        model_cfg = dict(meta["model"])
        model_cfg["hidden_dims"] = tuple(model_cfg["hidden_dims"])
        model_cfg["dtype"] = np.dtype(model_cfg["dtype"])
        # Before building it: a crafted config must not make us allocate a huge model.
        claimed = estimate_parameters(model_cfg)
        stored = sum(v.size for k, v in arrays.items() if k.startswith("param."))
        if claimed > 2 * stored + 1000:
            raise ValueError(f"it describes a model of {claimed:,} parameters, but the file holds {stored:,}")
        model = (DiscreteVAE(**model_cfg) if "latent" in model_cfg else
                 ConditionalVAE(**model_cfg) if "n_classes" in model_cfg else VAE(**model_cfg))
    except (KeyError, TypeError, ValueError) as exc:
        raise invalid("model", f"does not describe the saved model: {exc}") from exc
    try:
        config = TrainConfig(**meta["train"])
        check_config_for_model(model, config)
    except (TypeError, ValueError) as exc:
        raise invalid("train", f"is not a valid training configuration: {exc}") from exc
    bad = [k for k, v in arrays.items() if v.dtype.kind in "fc" and not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"{ckpt}: array {bad[0]!r} contains NaN or inf")
    params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    problems = array_mismatches(model.params, params, noun="parameter")
    if problems:
        raise ValueError(f"{ckpt}: parameters do not match the recorded architecture:\n  " + "\n  ".join(problems))

    history = _history_with_kl_offdiag(meta["history"], model.config.get("posterior", "diag"))
    keys = history_keys(config)
    for field, problem in (("epoch", _check_epoch(meta["epoch"], config)),
                           ("history", _check_history(history, meta["epoch"], model.latent_dim, keys)),
                           ("optimizer", _check_optimizer_scalars(meta["optimizer"], config)),
                           ("data", _check_data(meta.get("data", {})))):
        if problem is not None:
            raise invalid(field, problem)
    try:
        rng = rng_from_json(meta["rng"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise invalid("rng", f"is not a random-generator state: {exc}") from exc

    optimizer = make_optimizer(model, config)
    try:
        optimizer.load_state_dict({"arrays": {k[len("opt."):]: v for k, v in arrays.items() if k.startswith("opt.")},
                                   "scalars": meta["optimizer"]})
    except (TypeError, ValueError) as exc:
        raise invalid("optimizer", " ".join(str(exc).split())) from exc
    baseline = make_run_baseline(model, config)
    if baseline is not None:
        kind = baseline.state()["scalars"]["type"]
        problem = _check_baseline_scalars(meta.get("baseline"), kind)
        if problem is not None:
            raise invalid("baseline", problem)
        try:
            baseline.load_state({"arrays": {k[len("baseline."):]: v for k, v in arrays.items()
                                            if k.startswith("baseline.")}, "scalars": meta.get("baseline")})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise invalid("baseline", f"is not the state of a {kind!r} baseline: {exc!r}") from exc
    for k, v in model.params.items():
        np.copyto(v, params[k])      # in place: the optimiser holds these very arrays
    return Run(model=model, optimizer=optimizer, rng=rng, config=config,
               history={k: list(history[k]) for k in keys}, epoch=meta["epoch"],
               data=dict(meta.get("data", {})), baseline=baseline)


def new_run(model, config, data=None):
    """A fresh Run: optimiser from the config, training Generator from config.seed, the baseline
    of make_run_baseline. ValueError if the config's estimator does not train the model's code."""
    check_config_for_model(model, config)
    return Run(model=model, optimizer=make_optimizer(model, config), rng=np.random.default_rng(config.seed),
               config=config, history={k: [] for k in history_keys(config)}, epoch=0, data=dict(data or {}),
               baseline=make_run_baseline(model, config))


def history_table(history):
    """The history as aligned text, one row per epoch."""
    lines = [f"{'epoch':>5} {'train ELBO':>11} {'test ELBO':>10} {'test rec':>9} {'test KL':>8} {'beta':>5} {'sec':>6}"]
    for i in range(len(history["epoch"])):
        lines.append(f"{history['epoch'][i]:5d} {history['train_elbo'][i]:11.2f} {history['test_elbo'][i]:10.2f} "
                     f"{history['test_rec'][i]:9.2f} {history['test_kl'][i]:8.2f} {history['beta'][i]:5.2f} "
                     f"{history['seconds'][i]:6.1f}")
    return "\n".join(lines)

