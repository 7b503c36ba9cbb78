"""The estimator lab: how noisy is each gradient estimator, and what does the noise cost?

Every estimator in docs/estimators.md except "blocked" is unbiased for the same encoder
gradient, so on average they all point the same way. What differs is the noise, and the noise
decides how fast SGD can go. The lab measures it in three ways:

1. ``variance_table``: at one fixed minibatch, the total variance and the median SNR of the
   encoder gradient under every setting, for several numbers of samples L
   (numpyvae.lab.variance does the measuring).
2. ``variance_along_training``: the same numbers after every epoch of an ordinary
   (reparameterized) training run, because an estimator's noise changes as the model learns.
3. ``compare_training``: one training run per setting, same seed and architecture: does the
   extra noise (or the bias of "blocked") show up in the test ELBO and the KL?

``run_lab`` does all three and draws the figures; ``numpyvae estimators`` runs it from the
command line. Settings are labelled ``"score+loo"`` etc.: the estimator, then the baseline
(control variate) subtracted from the score-function signal.
"""

import csv
import dataclasses
import io
import math
import os
import time

import numpy as np
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from ..checkpoint import atomic_write_json, atomic_write_text
from ..data import load_dataset
from ..estimators import LeaveOneOutBaseline, make_baseline
from ..model import VAE
from ..training import TrainConfig, new_run, train
from .plotting import new_figure, save_figure
from .variance import measure_estimator

__all__ = ["ESTIMATOR_SETTINGS", "DEFAULT_COMPARISON", "COORDINATE", "TABLE_COLUMNS", "ACTIVE_KL",
           "min_samples", "make_model", "warm_baseline", "measure_setting", "variance_table", "write_csv",
           "variance_along_training", "compare_training", "active_dims", "pure_noise_median_snr",
           "plot_variance_vs_L", "plot_variance_along_training", "plot_coordinate_histogram",
           "plot_training_comparison", "run_lab"]

# label -> (estimator for VAE.loss_and_grads, baseline name for numpyvae.estimators.make_baseline)
ESTIMATOR_SETTINGS = {
    "reparam": ("reparam", "none"),
    "stl": ("stl", "none"),
    "score": ("score", "none"),
    "score+ema": ("score", "ema"),
    "score+loo": ("score", "loo"),
    "score+learned": ("score", "learned"),
    "blocked": ("blocked", "none"),
}

# The four training runs of compare_training: the pathwise estimator, REINFORCE without and with
# the baseline that measured best at L = 1 (the table: a learned b(x) beats the EMA; leave-one-out
# would need L >= 2 and so twice the decoder work), and no encoder signal from the data at all.
DEFAULT_COMPARISON = ("reparam", "score", "score+learned", "blocked")

# The single encoder coordinate whose R estimates plot_coordinate_histogram shows: the bias of
# the first mean unit. Its gradient is the batch sum of d loss / d mu_1, the most direct view
# of what each estimator says about "which way should the posterior mean move".
COORDINATE = ("enc.mu.b", 0)

TABLE_COLUMNS = ("setting", "L", "total_variance", "median_snr", "seconds_per_estimate", "R", "note")

# A latent dimension is "active" when its KL to the prior, averaged over the test set, is above
# this many nats: an inactive one carries no information about x (its posterior is the prior).
ACTIVE_KL = 0.01

# One colour per setting, the same in every figure.
COLORS = {"reparam": "tab:blue", "stl": "tab:cyan", "score": "tab:red", "score+ema": "tab:orange",
          "score+loo": "tab:purple", "score+learned": "tab:green", "blocked": "tab:gray"}

# Sizes of the full lab and of the quick one (a smoke test that runs in seconds).
LAB_DEFAULTS = dict(epochs=5, R=100, Ls=(1, 10), hidden_dims=(400,), latent_dim=20, n_measure=100,
                    n_warmup=50, n_train=None, n_test=None)
QUICK_DEFAULTS = dict(epochs=1, R=20, Ls=(1, 2), hidden_dims=(64,), latent_dim=8, n_measure=16,
                      n_warmup=5, n_train=640, n_test=128)


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------

def _check_setting(label):
    if label not in ESTIMATOR_SETTINGS:
        raise ValueError(f"unknown setting {label!r}; expected one of {list(ESTIMATOR_SETTINGS)}")
    return ESTIMATOR_SETTINGS[label]


def min_samples(label):
    """The smallest L a setting works with: 2 for leave-one-out (it averages the *other*
    samples of the same datapoint), 1 for everything else."""
    return 2 if _check_setting(label)[1] == "loo" else 1


def make_model(input_dim=784, hidden_dims=(400,), latent_dim=20, seed=0):
    """The lab's VAE: ReLU MLPs, Bernoulli likelihood on grey values (as `numpyvae train`)."""
    return VAE(input_dim, tuple(hidden_dims), latent_dim, likelihood="bernoulli", activation="relu", seed=seed)


def warm_baseline(label, model, x_warmup, L, rng, n_warmup=50, batch_size=100, seed=0):
    """The baseline of a setting, ready to measure with.

    Returns None (no baseline), a LeaveOneOutBaseline (stateless), or a new EMABaseline /
    LearnedBaseline that has already watched ``n_warmup`` minibatches of ``x_warmup`` (never the
    minibatch we then measure at). Why warm up: a fresh EMA is 0 and a fresh learned b(x) is untrained, and
    subtracting a useless baseline measures nothing. The model is not changed.
    """
    _, name = _check_setting(label)
    baseline = make_baseline(name, model.input_dim, seed=seed, dtype=model.dtype)
    if baseline is None or isinstance(baseline, LeaveOneOutBaseline):    # nothing to learn
        return baseline
    n = x_warmup.shape[0]
    for _ in range(n_warmup):
        xb = x_warmup[rng.choice(n, size=min(batch_size, n), replace=False)]
        # The baseline learns inside this call (value(x), then observe(x, f)). posterior_grads
        # stops before the encoder's backward pass, which the baseline does not need.
        model.posterior_grads(xb, n_samples=L, rng=rng, estimator="score", baseline=baseline)
    return baseline


def measure_setting(model, label, x_batch, x_warmup, L, R, seed=0, n_warmup=50, coordinate=None):
    """Measure one setting at one L: a GradientStats of the encoder gradient at x_batch
    (numpyvae.lab.variance.measure_estimator), or None when L is too small for the setting.

    The random numbers come from a Generator seeded by (seed, setting, L), so each number in
    the table is reproducible on its own, whatever else is measured. With ``coordinate =
    (name, flat index)`` returns ``(stats, the R estimates of that coordinate)``.
    """
    estimator, _ = _check_setting(label)
    if L < min_samples(label):
        return None
    rng = np.random.default_rng([seed, list(ESTIMATOR_SETTINGS).index(label), L])
    baseline = warm_baseline(label, model, x_warmup, L, rng, n_warmup=n_warmup, seed=seed)
    stats, samples = measure_estimator(model, x_batch, estimator, R, rng, n_samples=L, baseline=baseline,
                                       return_samples=True)
    if coordinate is None:
        return stats
    name, index = coordinate
    return stats, samples[name].reshape(R, -1)[:, index].astype(np.float64)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

def _row(label, L, R, stats):
    if stats is None:
        return {"setting": label, "L": L, "total_variance": None, "median_snr": None,
                "seconds_per_estimate": None, "R": R, "note": f"absent: needs L >= {min_samples(label)}"}
    note = ""
    if stats.total_variance == 0:
        note = "no variance: no noise reaches the encoder (biased)"
    return {"setting": label, "L": L, "total_variance": stats.total_variance, "median_snr": stats.median_snr,
            "seconds_per_estimate": stats.seconds_per_estimate, "R": R, "note": note}


def _describe(row):
    if row["total_variance"] is None:
        return f"{row['setting']:>13s} L={row['L']:<3d} {row['note']}"
    return (f"{row['setting']:>13s} L={row['L']:<3d} total variance {row['total_variance']:10.4g}  "
            f"median SNR {row['median_snr']:8.3g}  {1000 * row['seconds_per_estimate']:7.1f} ms/estimate")


def variance_table(model, x_batch, x_warmup, Ls=(1, 10), R=100, seed=0, settings=None, n_warmup=50,
                   coordinate=None, log=None):
    """Every setting at every L, measured at the same minibatch.

    model    : the VAE to measure (unchanged).
    x_batch  : (B, D) the fixed minibatch the gradient is estimated for.
    x_warmup : (N, D) data for warming up stateful baselines (should not contain x_batch).
    Ls       : numbers of samples L per datapoint.
    settings : labels of ESTIMATOR_SETTINGS (default: all of them).
    coordinate : optional (name, flat index); each row then also carries the R estimates of
                 that coordinate under "coordinate_samples" (a float64 array, not written to CSV).
    log      : called with one line per row, if given.

    Returns a list of row dicts with the keys TABLE_COLUMNS. A setting that needs more samples
    than L (leave-one-out at L = 1) gets a row with empty numbers and a note saying why.
    """
    settings = list(ESTIMATOR_SETTINGS) if settings is None else list(settings)
    rows = []
    for L in Ls:
        for label in settings:
            result = measure_setting(model, label, x_batch, x_warmup, L, R, seed=seed, n_warmup=n_warmup,
                                     coordinate=coordinate)
            if coordinate is not None and result is not None:
                stats, coordinate_samples = result
            else:
                stats, coordinate_samples = result, None
            row = _row(label, L, R, stats)
            if coordinate is not None:
                row["coordinate_samples"] = coordinate_samples
            rows.append(row)
            if log is not None:
                log(_describe(row))
    return rows


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".6g")     # "nan" and "inf" stay readable
    return str(value)


def write_csv(rows, path, columns=None):
    """Write rows (dicts) as CSV, atomically. columns: default every key whose values are all
    plain (str, number, None), in first-seen order; arrays such as "coordinate_samples" are left out.
    Empty cells stand for None. Returns path."""
    if columns is None:
        def plain(v):
            return v is None or isinstance(v, (str, int, float))
        keys = list(dict.fromkeys(k for row in rows for k in row))
        columns = [k for k in keys if all(plain(row.get(k)) for row in rows)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(k)) for k in columns])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------
# Experiments that train
# ---------------------------------------------------------------------------

def _as_dataset(dataset):
    return load_dataset(dataset) if isinstance(dataset, str) else dataset


def variance_along_training(dataset, epochs=5, hidden_dims=(400,), latent_dim=20, L=1, R=100, seed=0,
                            settings=None, n_measure=100, n_warmup=50, batch_size=128, lr=1e-3, log=print):
    """Train a VAE with the reparameterization estimator and measure every setting after each epoch.

    dataset : a numpyvae Dataset or a name for load_dataset (the lab uses "mnist-mini").
    The gradient is measured at a fixed minibatch, the first ``n_measure`` test digits, with L
    samples and R estimates (variance_table); epoch 0 is the initialisation. Measuring uses
    its own random numbers, so the training run is exactly the one ``numpyvae train`` would do.

    Returns ``(rows, run)``: rows as variance_table's with an "epoch" column first, and the
    trained numpyvae.training.Run (its history is the reparam run of compare_training).
    """
    data = _as_dataset(dataset)
    x_batch = data.x_test[:n_measure]
    model = make_model(data.input_dim, hidden_dims, latent_dim, seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, estimator="reparam", seed=seed)
    run = new_run(model, config, {"dataset": data.name})
    rows = []

    def measure(epoch):
        log(f"[along training] epoch {epoch}: measuring at L={L}, R={R}")
        table = variance_table(run.model, x_batch, data.x_train, Ls=(L,), R=R, seed=seed, settings=settings,
                               n_warmup=n_warmup, log=log)
        rows.extend({"epoch": epoch, **row} for row in table)

    measure(0)
    train(run, data.x_train, data.x_test, log=log, progress=False, on_epoch_end=lambda r: measure(r.epoch))
    return rows, run


def _json_safe(value):
    """Histories as plain JSON: NaN / inf (a diverged epoch) become None."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compare_training(dataset, epochs=5, settings=DEFAULT_COMPARISON, hidden_dims=(400,), latent_dim=20,
                     n_samples=1, seed=0, batch_size=128, lr=1e-3, log=print, reuse=None):
    """Train one VAE per setting, same seed (so the same initialisation and minibatch order)
    and the same architecture; only the encoder's gradient estimator differs.

    n_samples : L for every run; a setting that needs more (score+loo) gets min_samples of it.
    reuse     : optional {label: Run} of runs already trained with exactly this configuration
                (run_lab passes the reparam run of variance_along_training instead of training
                it a second time).

    Returns {label: {"estimator", "baseline", "n_samples", "epochs", "seconds", "diverged",
    "history"}}; history as numpyvae.training.train records it (test_elbo, test_kl,
    test_kl_per_dim, ... per epoch). A run that diverges stops there with diverged=True.
    """
    data = _as_dataset(dataset)
    reuse = reuse or {}
    results = {}
    for label in settings:
        estimator, baseline = _check_setting(label)
        L = max(n_samples, min_samples(label))
        start = time.perf_counter()
        diverged = False
        if label in reuse:
            run = reuse[label]
            log(f"[compare] {label}: reusing the run trained above")
        else:
            log(f"[compare] {label}: training {epochs} epochs (estimator={estimator}, baseline={baseline}, L={L})")
            model = make_model(data.input_dim, hidden_dims, latent_dim, seed)
            config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, n_samples=L, estimator=estimator,
                                 baseline=baseline, seed=seed)
            run = new_run(model, config, {"dataset": data.name})
            try:
                train(run, data.x_train, data.x_test, log=log, progress=False)
            except FloatingPointError as exc:      # the history keeps every epoch up to the failure
                log(f"[compare] {label}: {exc}")
                diverged = True
        results[label] = {"estimator": estimator, "baseline": baseline, "n_samples": L, "epochs": run.epoch,
                          "seconds": float(sum(run.history["seconds"])) if label in reuse
                          else time.perf_counter() - start,
                          "diverged": diverged, "history": _json_safe(run.history)}
    return results


def active_dims(kl_per_dim, threshold=ACTIVE_KL):
    """How many latent dimensions carry information: KL to the prior above ``threshold`` nats."""
    return int(np.sum(np.asarray(kl_per_dim, dtype=np.float64) > threshold))


# ---------------------------------------------------------------------------
# Figures (matplotlib's object API, no pyplot: see numpyvae/lab/plotting.py for why)
# ---------------------------------------------------------------------------

def _settings_in(rows):
    seen = []
    for row in rows:
        if row["setting"] not in seen:
            seen.append(row["setting"])
    return seen


def _positive(value):
    return value is not None and np.isfinite(value) and value > 0


def _log_ticks(ax, values):
    """Plain numbers (1, 2, 5, 10) as the ticks of a log-scaled x axis."""
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())


def pure_noise_median_snr(R):
    """The median SNR R estimates show when every coordinate's true mean is 0.

    The sample mean of R draws with std s is off by about s / sqrt(R), so a zero-mean
    coordinate still shows |mean| / std ~ |N(0, 1)| / sqrt(R), whose median is
    0.674 / sqrt(R) (0.674 = the median of |N(0, 1)|). A measured median SNR near this value
    says "no signal visible at this R", not "SNR = 0.07".
    """
    return 0.6745 / math.sqrt(R)


def plot_variance_vs_L(rows, path):
    """Total variance of the encoder gradient against L, log-log, one line per setting.

    rows: variance_table rows, optionally with an "epoch" column (then one panel per epoch,
    sharing the y axis). A dotted line shows the 1/L of averaging L independent samples; a
    setting with zero variance ("blocked") cannot be drawn on a log axis and is named instead.
    """
    epochs = sorted({row.get("epoch") for row in rows}, key=lambda e: -1 if e is None else e)
    fig = new_figure(5.2 * len(epochs) + 1.8, 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(epochs), sharey=True))
    for ax, epoch in zip(axes, epochs):
        panel = [r for r in rows if r.get("epoch") == epoch]
        zero = []
        for label in _settings_in(panel):
            pts = sorted((r["L"], r["total_variance"]) for r in panel
                         if r["setting"] == label and _positive(r["total_variance"]))
            if not pts:
                if any(r["setting"] == label and r["total_variance"] == 0 for r in panel):
                    zero.append(label)
                continue
            Ls, tv = zip(*pts)
            ax.plot(Ls, tv, marker="o", color=COLORS.get(label), label=label)
        reference = sorted((r["L"], r["total_variance"]) for r in panel
                           if r["setting"] == "reparam" and _positive(r["total_variance"]))
        all_Ls = sorted({r["L"] for r in panel})
        if reference and len(all_Ls) > 1:
            L0, tv0 = reference[0]
            ax.plot(all_Ls, [tv0 * L0 / L for L in all_Ls], linestyle=":", color="black", label=r"$\propto 1/L$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax, all_Ls)
        ax.set_xlabel("L, samples of z per datapoint")
        ax.set_title("at initialisation" if epoch == 0 else
                     ("" if epoch is None else f"after {epoch} epoch{'s' if epoch != 1 else ''}"))
        ax.grid(alpha=0.3, which="both")
        if zero:
            ax.text(0.02, 0.02, ", ".join(zero) + ": variance 0 (no noise, but biased)",
                    transform=ax.transAxes, fontsize=8, color="dimgray")
    axes[0].set_ylabel("total variance  tr Cov[g]  (encoder)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    fig.suptitle("gradient variance of each estimator, one fixed minibatch")
    return save_figure(fig, path)


def plot_variance_along_training(rows, path):
    """Two panels against epoch (0 = initialisation): total variance and median SNR of the
    encoder gradient, both on log axes, one line per setting. The SNR panel marks the median
    SNR that R estimates of pure noise would show (pure_noise_median_snr): an estimator on
    that line has no measurable signal in a typical coordinate at this R."""
    fig = new_figure(12.5, 4.4)
    ax_var, ax_snr = fig.subplots(1, 2)
    R, L = rows[0]["R"], rows[0]["L"]
    notes = []
    for label in _settings_in(rows):
        mine = sorted((r for r in rows if r["setting"] == label and r["total_variance"] is not None),
                      key=lambda r: r["epoch"])
        if not mine:
            notes.append(f"{label}: absent at L = {L}")
            continue
        if all(r["total_variance"] == 0 for r in mine):
            notes.append(f"{label}: variance 0, SNR infinite (no noise, but biased)")
            continue
        epochs = [r["epoch"] for r in mine]
        # A log axis cannot show 0 or inf: such points are left as gaps (NaN).
        tv = [r["total_variance"] if _positive(r["total_variance"]) else np.nan for r in mine]
        snr = [r["median_snr"] if _positive(r["median_snr"]) and np.isfinite(r["median_snr"]) else np.nan
               for r in mine]
        ax_var.plot(epochs, tv, marker="o", color=COLORS.get(label), label=label)
        ax_snr.plot(epochs, snr, marker="o", color=COLORS.get(label))
    ax_snr.axhline(pure_noise_median_snr(R), linestyle=":", color="black",
                   label=rf"pure noise: $0.674/\sqrt{{R}}$ (R = {R})")
    for ax, title, ylabel in ((ax_var, "total variance of the encoder gradient", "tr Cov[g]"),
                              (ax_snr, "median signal-to-noise ratio", r"median$_j$ |mean$_j$| / std$_j$")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch of reparameterized training (0 = initialisation)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    handles, labels = ax_var.get_legend_handles_labels()
    more_handles, more_labels = ax_snr.get_legend_handles_labels()
    fig.legend(handles + more_handles, labels + more_labels, loc="outside right center", frameon=False)
    if notes:
        fig.supxlabel(";   ".join(notes), fontsize=8, color="dimgray")
    fig.suptitle(f"estimator noise along training (L = {L}, R = {R} estimates per point, one fixed minibatch)")
    return save_figure(fig, path)


def plot_coordinate_histogram(samples, path, coordinate="enc.mu.b[0]", reference="reparam", ncols=3):
    """Small multiples: the R estimates of one encoder coordinate under each setting.

    samples : {label: (R,) array}. Each panel has its own x range, because the reparameterized
              histogram is far narrower than REINFORCE's; a red line in every panel marks the
              mean of the ``reference`` setting, a dashed line the panel's own mean. An
              unbiased estimator's histogram is centred on the red line whatever its width.
    """
    labels = [k for k, v in samples.items() if v is not None]
    ref_mean = float(np.mean(samples[reference])) if reference in samples else None
    nrows = math.ceil(len(labels) / ncols)
    fig = new_figure(4.0 * ncols, 2.9 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, label in zip(axes, labels):
        g = np.asarray(samples[label], dtype=np.float64)
        mean, std = float(np.mean(g)), float(np.std(g, ddof=1))
        lo, hi = float(np.min(g)), float(np.max(g))
        if ref_mean is not None:
            lo, hi = min(lo, ref_mean), max(hi, ref_mean)
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
        if std > 0:
            ax.hist(g, bins=20, range=(lo - pad, hi + pad), color=COLORS.get(label, "tab:blue"), alpha=0.75)
        else:                            # every estimate identical: one spike
            ax.bar([mean], [g.size], width=(hi - lo + 2 * pad) / 40, color=COLORS.get(label, "tab:gray"))
        if ref_mean is not None:
            ax.axvline(ref_mean, color="red", linewidth=1.5, label=f"{reference} mean")
        ax.axvline(mean, color="black", linestyle="--", linewidth=1, label="own mean")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_title(f"{label}:  mean {mean:.3g},  std {std:.3g}", fontsize=10)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_yticks([])
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, frameon=False)
    R = len(next(iter(samples[k] for k in labels)))
    fig.suptitle(f"{R} estimates of the gradient coordinate {coordinate} (each panel its own x range)")
    return save_figure(fig, path)


def plot_training_comparison(results, path, threshold=ACTIVE_KL):
    """Two panels per epoch, one line per training run (compare_training's results): the test
    ELBO, and the test KL(q(z|x) || p(z)) on a log axis, so that a posterior collapsing onto
    the prior (KL -> 0, as with "blocked") stays visible. The legend of the KL panel says how
    many latent dimensions are active (test KL above ``threshold`` nats) at the last epoch."""
    fig = new_figure(12.5, 4.4)
    ax_elbo, ax_kl = fig.subplots(1, 2)
    for label, res in results.items():
        h = res["history"]
        epochs = h["epoch"]
        elbo = [np.nan if v is None else v for v in h["test_elbo"]]
        kl = [np.nan if v is None or v <= 0 else v for v in h["test_kl"]]
        style = dict(marker="o", color=COLORS.get(label))
        ax_elbo.plot(epochs, elbo, label=label + (" (diverged)" if res.get("diverged") else ""), **style)
        legend = label
        if h["test_kl_per_dim"]:
            last = [np.nan if v is None else v for v in h["test_kl_per_dim"][-1]]
            legend += (f": KL {h['test_kl'][-1]:.3g} nats, {active_dims(last, threshold)}/{len(last)} "
                       "dims active")
        ax_kl.plot(epochs, kl, label=legend, **style)
    ax_elbo.set_title("test ELBO (higher is better)")
    ax_elbo.set_ylabel("nats per digit")
    ax_kl.set_title(r"test KL$(q(z|x)\,\|\,p(z))$; 0 = posterior collapsed to the prior")
    ax_kl.set_ylabel("nats per digit (log scale)")
    ax_kl.set_yscale("log")
    last = max((max(res["history"]["epoch"], default=1) for res in results.values()), default=1)
    for ax in (ax_elbo, ax_kl):
        ax.set_xlim(0.7, last + 0.3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"training with each estimator: same seed, same architecture "
                 f"(active: KL of a dimension > {threshold:g} nats)")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------

FILES = {"table": "estimators.csv", "along_training": "variance_along_training.csv",
         "comparison": "training_comparison.json", "lab": "lab.json",
         "variance_vs_L": "variance_vs_L.png", "variance_along_training": "variance_along_training.png",
         "coordinate_histogram": "coordinate_histogram.png", "training_comparison": "training_comparison.png"}


def run_lab(out_dir, dataset="mnist-mini", quick=False, epochs=None, R=None, Ls=None, hidden_dims=None,
            latent_dim=None, seed=0, comparison=DEFAULT_COMPARISON, log=print):
    """Run every experiment of the lab and write its files into out_dir.

    Arguments left as None take LAB_DEFAULTS (quick=False: 784-400-20, 5 epochs, R = 100,
    L in (1, 10), minibatch of 100 test digits) or QUICK_DEFAULTS (quick=True: 784-64-8 on
    640 training digits, 1 epoch, R = 20, L in (1, 2); a smoke test of a few seconds).

    Steps, and the file each one writes:
      1. variance_table at initialisation and after training, every L     -> estimators.csv
         (plus variance_vs_L.png and, from the trained model at the smallest L,
         coordinate_histogram.png)
      2. variance_along_training at the smallest L, epochs 0..N           -> variance_along_training.csv/.png
      3. compare_training for ``comparison``                              -> training_comparison.json/.png
    lab.json records the configuration and the wall time of each step.
    Returns {"paths": {key: path}, "table": rows, "along_training": rows, "comparison": results,
    "seconds": {step: wall time}}.
    """
    cfg = dict(QUICK_DEFAULTS if quick else LAB_DEFAULTS)
    given = dict(epochs=epochs, R=R, Ls=Ls, hidden_dims=hidden_dims, latent_dim=latent_dim)
    cfg.update({k: v for k, v in given.items() if v is not None})
    cfg["Ls"] = tuple(sorted(set(int(L) for L in cfg["Ls"])))
    cfg["hidden_dims"] = tuple(cfg["hidden_dims"])
    data = _as_dataset(dataset)
    if cfg["n_train"] is not None:
        data = dataclasses.replace(data, x_train=data.x_train[:cfg["n_train"]], y_train=None,
                                   x_test=data.x_test[:cfg["n_test"]], y_test=None)
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, v) for k, v in FILES.items()}
    arch = "-".join(str(d) for d in (data.input_dim,) + cfg["hidden_dims"] + (cfg["latent_dim"],))
    log(f"estimator lab: {data.name}, VAE {arch} (ReLU, Bernoulli), {cfg['epochs']} epochs, R={cfg['R']}, "
        f"L in {list(cfg['Ls'])}, minibatch of {cfg['n_measure']} test digits -> {out_dir}")
    seconds = {}
    model_args = dict(hidden_dims=cfg["hidden_dims"], latent_dim=cfg["latent_dim"], seed=seed)
    table_args = dict(Ls=cfg["Ls"], R=cfg["R"], seed=seed, n_warmup=cfg["n_warmup"], coordinate=COORDINATE, log=log)
    x_batch = data.x_test[:cfg["n_measure"]]

    # 1a. The table at initialisation (the same initial model the training run below starts from).
    start = time.perf_counter()
    log("[table] at initialisation")
    init_model = make_model(data.input_dim, **model_args)
    table = [{"epoch": 0, **row} for row in variance_table(init_model, x_batch, data.x_train, **table_args)]
    seconds["table_at_initialisation"] = time.perf_counter() - start

    # 2. Along training (which also trains the reparam model of steps 1b and 3).
    start = time.perf_counter()
    along, run = variance_along_training(data, epochs=cfg["epochs"], L=cfg["Ls"][0], R=cfg["R"],
                                         n_measure=cfg["n_measure"], n_warmup=cfg["n_warmup"], log=log, **model_args)
    seconds["along_training"] = time.perf_counter() - start

    # 1b. The table after training.
    start = time.perf_counter()
    log(f"[table] after {run.epoch} epochs of reparam training")
    table += [{"epoch": run.epoch, **row} for row in variance_table(run.model, x_batch, data.x_train, **table_args)]
    seconds["table_after_training"] = time.perf_counter() - start

    # 3. One training run per estimator.
    start = time.perf_counter()
    results = compare_training(data, epochs=cfg["epochs"], settings=comparison, seed=seed, log=log,
                               reuse={"reparam": run}, hidden_dims=cfg["hidden_dims"], latent_dim=cfg["latent_dim"])
    seconds["compare_training"] = time.perf_counter() - start

    start = time.perf_counter()
    columns = ("epoch",) + TABLE_COLUMNS
    write_csv(table, paths["table"], columns)
    write_csv(along, paths["along_training"], columns)
    atomic_write_json(paths["comparison"], {"dataset": data.name, "architecture": arch, "seed": seed,
                                            "settings": list(comparison), "active_kl_threshold": ACTIVE_KL,
                                            "runs": results})
    plot_variance_vs_L(table, paths["variance_vs_L"])
    plot_variance_along_training(along, paths["variance_along_training"])
    final = [r for r in table if r["epoch"] == run.epoch and r["L"] == cfg["Ls"][0]]
    plot_coordinate_histogram({r["setting"]: r["coordinate_samples"] for r in final
                               if r["coordinate_samples"] is not None}, paths["coordinate_histogram"],
                              coordinate=f"{COORDINATE[0]}[{COORDINATE[1]}] after {run.epoch} epoch(s), "
                                         f"L = {cfg['Ls'][0]}")
    plot_training_comparison(results, paths["training_comparison"])
    seconds["files_and_figures"] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    atomic_write_json(paths["lab"], {"dataset": data.name, "architecture": arch, "seed": seed, "quick": quick,
                                     **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                                     "comparison": list(comparison), "seconds": seconds})
    log("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    for key in ("table", "along_training", "comparison", "variance_vs_L", "variance_along_training",
                "coordinate_histogram", "training_comparison"):
        log(f"  {paths[key]}")
    return {"paths": paths, "table": table, "along_training": along, "comparison": results, "seconds": seconds}
