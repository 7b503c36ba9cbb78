"""The discrete-latent lab: each estimator of a discrete code against the exact truth, then trained.

A code of 8 binary units (or 4 variables of 4 classes) has 256 states, so the gradient every
estimator of numpyvae.discrete_estimators approximates can be computed exactly by enumeration
(Eqs. (H20) and (H22), docs/discrete.md), on real 784-pixel digits. Two experiments
(``numpyvae discrete`` runs both):

1. ``bias_variance``: on such a small model, briefly trained, and a few binarised test digits,
   every estimator is drawn many times and compared with the exact gradient of the ELBO: its bias
   in standard errors and relative to the gradient's size, and the variance of one estimate of the
   encoder's gradient, against the number of samples K (score, score with the leave-one-out
   baseline and NVIL at L = K samples, the same cost as VIMCO with K) and against the temperature
   tau (gumbel, straight-through). VIMCO is also compared with its own target, the gradient of the
   expected 2-sample bound, where that is enumerable (K = 2).
2. ``compare_training``: one DiscreteVAE per estimator trained on binarised mnist-mini for the same
   epochs, same seed, architecture and cost per step, beside the Gaussian VAE of the same size:
   test ELBO and importance-weighted log p(x).

``run_discrete_lab`` runs both and writes CSV, JSON and figures; ``--quick`` shrinks everything
to a smoke test of seconds. ``active_units`` is the discrete counterpart of
numpyvae.lab.diagnostics.active_units (``numpyvae evaluate`` uses it for a discrete run).
"""

import dataclasses
import math
import os
import time

import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from ..checkpoint import atomic_write_json
from ..data import load_dataset
from ..discrete import DiscreteVAE
from ..discrete_estimators import NVILBaseline
from ..estimators import LeaveOneOutBaseline
from ..model import VAE
from ..training import TrainConfig, new_run, prepare_pixels, train
from .estimator_lab import write_csv
from .plotting import new_figure, save_figure
from .variance import frozen

__all__ = ["SETTINGS", "COLORS", "SMALL_CODES", "draw_estimates", "estimate_statistics", "small_model",
           "bias_variance", "compare_training", "active_units", "plot_bias_variance", "plot_training_comparison",
           "run_discrete_lab"]

# label -> (estimator for DiscreteVAE.loss_and_grads, baseline: None, "loo" or "nvil")
SETTINGS = {
    "score": ("score", None),
    "score+loo": ("score", "loo"),
    "nvil": ("nvil", "nvil"),
    "vimco": ("vimco", None),
    "gumbel": ("gumbel", None),
    "straight-through": ("straight-through", None),
}
COLORS = {"score": "tab:red", "score+loo": "tab:purple", "nvil": "tab:green", "vimco": "tab:orange",
          "gumbel": "tab:blue", "straight-through": "tab:cyan", "gaussian": "black"}

# The small codes of the bias-variance experiment: (latent_dim, n_categories), 256 states each.
SMALL_CODES = {"bernoulli": (8, 2), "categorical": (4, 4)}
# The codes trained on mnist-mini: Jang et al. (2017)'s, 200 binary units or 20 variables of 10 classes.
TRAINED_CODES = {"bernoulli": (200, 2), "categorical": (20, 10)}

# Sizes of the full lab and of the quick one (a smoke test of seconds).
LAB_DEFAULTS = dict(
    # bias_variance: the small model, its training, the digits, the draws
    small_hidden=(64,), small_epochs=5, n_digits=8, Ks=(2, 4, 8), taus=(2.0, 1.0, 0.5, 0.25, 0.1),
    relaxed_samples=2, M=50, rows=4096, codes=SMALL_CODES,
    # compare_training: mnist-mini, the default architecture's shape at half the width
    hidden=(200,), codes_trained=TRAINED_CODES, gaussian_dim=20, epochs=30, samples=2, importance=1000,
    temperature=1.0, temperature_min=0.5, anneal_rate=1e-3, n_train=None, n_test=None)
QUICK_DEFAULTS = dict(
    small_hidden=(16,), small_epochs=1, n_digits=2, Ks=(2, 4), taus=(1.0, 0.1), relaxed_samples=2, M=8,
    rows=256, codes={"bernoulli": (3, 2), "categorical": (2, 3)},
    hidden=(16,), codes_trained={"bernoulli": (6, 2), "categorical": (3, 3)}, gaussian_dim=4, epochs=1, samples=2,
    importance=20,
    temperature=1.0, temperature_min=0.5, anneal_rate=1e-2, n_train=500, n_test=50)


# ---------------------------------------------------------------------------
# Drawing an estimator many times
# ---------------------------------------------------------------------------

def _flat(grads, keys):
    return np.concatenate([grads[k].ravel() for k in keys]).astype(np.float64)


def draw_estimates(model, x, estimator, n_samples, M, rows, rng, temperature=1.0, baseline=None):
    """(M, P) float64: M independent estimates of the gradient of the loss at the minibatch x (B, D),
    each the mean of R = max(1, rows // (B n_samples)) independent estimates, with P the number of
    parameters (in model.params order); and R.

    One loss_and_grads call on R stacked copies of x gives the mean of R independent estimates for x
    (the loss is a batch mean), at a cost of ``rows`` decoder rows. A learning baseline is frozen
    while drawing, so all draws come from one estimator. NVIL's encoder gradient is the loss's
    divided by the baseline's scale s (docs/discrete.md, section 7); it is multiplied back here, so
    every estimator is compared with the same exact gradient."""
    R = max(1, rows // (x.shape[0] * n_samples))
    xr = np.repeat(x, R, axis=0)
    keys = list(model.params)
    out = np.empty((M, sum(model.params[k].size for k in keys)))
    with frozen(baseline):
        for m in range(M):
            _, grads = model.loss_and_grads(xr, n_samples=n_samples, rng=rng, estimator=estimator,
                                            temperature=temperature, baseline=baseline)
            out[m] = _flat(grads, keys)
    if isinstance(baseline, NVILBaseline):
        out[:, _encoder_mask(model)] *= baseline.scale()
    return out, R


def _encoder_mask(model):
    return np.concatenate([np.full(v.size, k.startswith("enc.")) for k, v in model.params.items()])


def estimate_statistics(means, R, exact, encoder):
    """Bias and variance of an estimator from M batch means (M, P) of R estimates each, against the
    exact gradient (P,):

        bias_se     ||mean - exact|| / sqrt(sum_j se_j^2), se_j the standard error of coordinate j's
                    mean: about 1 or below for an unbiased estimator (E||mean - exact||^2 = sum_j se_j^2;
                    heavy tails make the typical error smaller than that root mean square), far above 1
                    for a biased one: "the bias in standard errors"
        rel_bias    ||mean - exact|| / ||exact||

    (A per-coordinate max |z| would not do here: a unit whose posterior is nearly certain makes some
    coordinates constant over every draw, se_j ~ 0, while the exact sum still holds the states of
    probability 1e-10 that no draw visits; their z-scores are huge without any bias. The norm is
    dominated by the coordinates that carry the noise.)
        variance    total variance sum_j Var[g_j] of ONE estimate (R times that of a batch mean) over
                    the encoder's coordinates (``encoder``, a boolean mask): the noise the encoder
                    receives per step
    """
    M = means.shape[0]
    mean = means.mean(axis=0)
    var_of_means = means.var(axis=0, ddof=1)
    se_norm = math.sqrt(np.sum(var_of_means) / M)
    error = np.linalg.norm(mean - exact)
    if se_norm == 0:            # every draw the same: a deterministic posterior on these digits
        raise ValueError("the estimates do not vary (the posterior of the digits measured is deterministic): "
                         "their bias cannot be measured in standard errors")
    return {"bias_se": float(error / se_norm),
            "rel_bias": float(error / np.linalg.norm(exact)),
            "variance": float(R * np.sum(var_of_means[encoder])),
            "draws": int(M * R)}


# ---------------------------------------------------------------------------
# 1. Bias and variance against enumeration
# ---------------------------------------------------------------------------

def small_model(data, latent, cfg, seed=0, log=print):
    """The small model of the bias-variance experiment and NVIL's baseline: DiscreteVAE(784,
    small_hidden, code of cfg["codes"][latent]) with ReLU, trained by numpyvae.training for
    small_epochs on the binarised training digits with NVIL, whose baseline (an NVILBaseline, the
    run's, trained alongside) is returned with it. float32, as trained.

    Why NVIL: an unbiased estimator leaves the posterior where the ELBO puts it. Trained with the
    Gumbel-softmax instead, this small encoder turns deterministic within one epoch (0.002 nats of
    entropy per categorical variable, 0.007 per bit, against 1.17 and 0.44 under NVIL after 5
    epochs): every sample is then the same code and every estimator trivially exact."""
    Z, C = cfg["codes"][latent]
    model = DiscreteVAE(data.input_dim, cfg["small_hidden"], Z, latent=latent, n_categories=C, activation="relu",
                        seed=seed)
    run = new_run(model, TrainConfig(epochs=cfg["small_epochs"], estimator="nvil", binarize="dynamic", seed=seed),
                  {"dataset": data.name})
    x_train, x_test = prepare_pixels(data.x_train, data.x_test, "dynamic", seed, "bernoulli")
    train(run, x_train, x_test, log=None, progress=False)
    log(f"[bias-variance] {model!r}: trained {run.epoch} epochs (nvil), test ELBO "
        f"{run.history['test_elbo'][-1]:.2f} nats")
    return model, run.baseline


def _float64_twin(model):
    """The same model in float64 (the exact gradients are summed over 256 states x 784 pixels)."""
    twin = DiscreteVAE(**{**model.config, "hidden_dims": tuple(model.config["hidden_dims"]), "dtype": np.float64})
    for k, v in model.params.items():
        np.copyto(twin.params[k], v)
    return twin


def bias_variance(data, latent, cfg, seed=0, log=print):
    """Every setting of SETTINGS against the exact gradient on a small trained model: a list of rows
    {"latent", "setting", "K", "temperature", "target", "bias_se", "rel_bias", "variance", "draws",
    "seconds"}. K is the number of samples per datapoint (the cost: K decoder passes);
    the relaxed estimators use ``relaxed_samples`` at every temperature. Target "elbo": the exact
    gradient of -mean ELBO (exact_loss_and_grads, docs/discrete.md section 11); "bound": of the
    expected 2-sample bound (exact_iwae_loss_and_grads), VIMCO's own target at K = 2."""
    model, nvil_baseline = small_model(data, latent, cfg, seed, log)
    rng = np.random.default_rng([seed, 1])
    _, x_test = prepare_pixels(data.x_train, data.x_test, "dynamic", seed, "bernoulli")
    x = x_test[:cfg["n_digits"]].astype(model.dtype)
    twin = _float64_twin(model)
    targets = {"elbo": _flat(twin.exact_loss_and_grads(x.astype(np.float64))[1], model.params)}
    if twin.posterior.n_states ** 2 <= 2 ** 16:
        targets["bound"] = _flat(twin.exact_iwae_loss_and_grads(x.astype(np.float64), 2)[1], model.params)
    encoder = _encoder_mask(model)
    exact_elbo = twin.exact_elbo(x.astype(np.float64))
    offset = np.mean(nvil_baseline.value(x, None) - exact_elbo)
    log(f"[bias-variance] NVIL's baseline: c + c_psi(x) - ELBO(x) = {offset:+.2f} nats on average over the "
        f"{x.shape[0]} digits measured (exact ELBO {exact_elbo.mean():.2f}), s = {nvil_baseline.scale():.2f}")
    runs = [(label, K, None) for K in cfg["Ks"] for label in ("score", "score+loo", "nvil", "vimco")]
    runs += [(label, cfg["relaxed_samples"], tau) for tau in cfg["taus"] for label in ("gumbel", "straight-through")]
    rows = []
    for label, K, tau in runs:
        start = time.perf_counter()
        estimator, baseline_name = SETTINGS[label]
        baseline = {"loo": LeaveOneOutBaseline(), "nvil": nvil_baseline, None: None}[baseline_name]
        means, R = draw_estimates(model, x, estimator, K, cfg["M"], cfg["rows"], rng,
                                  temperature=1.0 if tau is None else tau, baseline=baseline)
        seconds = time.perf_counter() - start
        for target in (["elbo", "bound"] if label == "vimco" and K == 2 and "bound" in targets else ["elbo"]):
            stats = estimate_statistics(means, R, targets[target], encoder)
            rows.append({"latent": latent, "setting": label, "K": K, "temperature": tau, "target": target,
                         **stats, "seconds": seconds})
            log(f"[bias-variance] {latent:11s} {label:16s} K={K:<3d} "
                + (f"tau={tau:<5g}" if tau is not None else " " * 9)
                + f" vs {target:5s}: bias {stats['bias_se']:8.2f} se, rel. bias {stats['rel_bias']:.3f}, "
                  f"variance {stats['variance']:9.4g}  ({seconds:.1f}s)")
    return rows


# ---------------------------------------------------------------------------
# 2. Training each estimator on mnist-mini
# ---------------------------------------------------------------------------

def active_units(model, x, threshold=0.01, batch_size=1000):
    """The discrete counterpart of numpyvae.lab.diagnostics.active_units (Burda et al. 2016): a unit
    (a categorical variable) is active when its posterior mean E_q[z_j|x] = rho_j moves with x,
    Var_x rho_j > threshold (for a variable, the sum of its classes' variances). Returns the count
    and the variances (Z,)."""
    rho = np.concatenate([model.posterior.probs(model.encode(x[i:i + batch_size]))
                          for i in range(0, x.shape[0], batch_size)]).astype(np.float64)
    var = rho.var(axis=0)
    var = var.sum(axis=-1) if var.ndim == 2 else var
    return int(np.sum(var > threshold)), var


def _train_one(model, config, data, x_train, x_test, importance, seed):
    """Train one model, then its test ELBO (the history's, fixed noise) and log p(x) with K =
    ``importance`` samples: a dict of numbers and the history."""
    start = time.perf_counter()
    run = new_run(model, config, {"dataset": data.name})
    train(run, x_train, x_test, log=None, progress=False)
    trained = time.perf_counter() - start
    rng = np.random.default_rng([seed, 2])
    ll = np.concatenate([model.log_likelihood(x_test[i:i + 100], n_importance=importance, rng=rng)
                         for i in range(0, x_test.shape[0], 100)]).astype(np.float64)
    result = {"test_elbo": run.history["test_elbo"][-1], "test_kl": run.history["test_kl"][-1],
              "test_log_likelihood": float(ll.mean()),
              "test_log_likelihood_stderr": float(ll.std(ddof=1) / math.sqrt(ll.size)) if ll.size > 1 else None,
              "train_seconds": trained, "evaluate_seconds": time.perf_counter() - start - trained,
              "history": {k: v for k, v in run.history.items() if k != "test_kl_per_dim"}}
    if isinstance(model, DiscreteVAE):
        result["active_units"] = active_units(model, x_test)[0]
    return result


def compare_training(data, latents, cfg, seed=0, log=print):
    """One model per (latent, estimator), with the code of cfg["codes_trained"][latent], and one Gaussian
    VAE of cfg["gaussian_dim"] dimensions: the same hidden widths (ReLU), epochs, batch 128, Adam 1e-3,
    seed and samples per datapoint (cfg["samples"] decoder passes per step for every one; K for vimco),
    trained on the dynamically binarised training digits. The relaxed estimators anneal
    tau = max(temperature_min, temperature exp(-anneal_rate t)) (numpyvae.training.temperature_at).
    Returns {name: {"test_elbo", "test_kl", "test_log_likelihood", "test_log_likelihood_stderr",
    "train_seconds", "evaluate_seconds", "history", ...}} with names "gaussian" and
    "<latent>/<estimator>"."""
    x_train, x_test = prepare_pixels(data.x_train, data.x_test, "dynamic", seed, "bernoulli")
    common = dict(epochs=cfg["epochs"], n_samples=cfg["samples"], binarize="dynamic", seed=seed)
    arch = dict(hidden_dims=cfg["hidden"], activation="relu", seed=seed)
    jobs = [("gaussian", VAE(data.input_dim, latent_dim=cfg["gaussian_dim"], **arch),
             TrainConfig(estimator="reparam", **common))]
    for latent in latents:
        Z, C = cfg["codes_trained"][latent]
        for label in ("score", "nvil", "vimco", "gumbel", "straight-through"):
            anneal = (dict(temperature=cfg["temperature"], temperature_min=cfg["temperature_min"],
                           anneal_rate=cfg["anneal_rate"]) if label in ("gumbel", "straight-through") else {})
            jobs.append((f"{latent}/{label}", DiscreteVAE(data.input_dim, latent_dim=Z, latent=latent, n_categories=C,
                                                          **arch),
                         TrainConfig(estimator=label, **common, **anneal)))
    results = {}
    for name, model, config in jobs:
        results[name] = _train_one(model, config, data, x_train, x_test, cfg["importance"], seed)
        r = results[name]
        log(f"[training] {name:28s} test ELBO {r['test_elbo']:8.2f}  log p(x) ~ {r['test_log_likelihood']:8.2f} nats "
            f"(K={cfg['importance']})  {r['train_seconds']:.0f}s + {r['evaluate_seconds']:.0f}s")
    return results


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def plot_bias_variance(rows, path):
    """Two rows of three panels for one latent: against K (top) and against the temperature (bottom),
    the bias in standard errors, the relative bias and the variance of one estimate of the encoder's
    gradient, all on log axes. The dotted line at 1 standard error is what an unbiased estimator
    shows."""
    latent = rows[0]["latent"]
    fig = new_figure(15, 8)
    axes = fig.subplots(2, 3)
    by_k = [r for r in rows if r["temperature"] is None]
    by_tau = [r for r in rows if r["temperature"] is not None]
    for ax_row, subset, xkey, xlabel in ((axes[0], by_k, "K", "K, samples per datapoint (equal cost per K)"),
                                         (axes[1], by_tau, "temperature", r"temperature $\tau$")):
        for label in dict.fromkeys(r["setting"] for r in subset):
            for target, style in (("elbo", "-"), ("bound", ":")):
                pts = sorted((r[xkey], r) for r in subset if r["setting"] == label and r["target"] == target)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                name = label if target == "elbo" else f"{label} vs its 2-sample bound"
                for ax, key in zip(ax_row, ("bias_se", "rel_bias", "variance")):
                    ax.plot(xs, [p[1][key] for p in pts], style, marker="o", color=COLORS[label], label=name)
        ticks = sorted({r[xkey] for r in subset})
        for ax, title in zip(ax_row, ("bias in standard errors", r"relative bias $\|\bar g - g\| / \|g\|$",
                                      "variance of one estimate (encoder)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.set_xlabel(xlabel)
            ax.set_title(title)
            ax.grid(alpha=0.3, which="both")
        ax_row[0].axhline(1.0, color="black", linestyle=":", linewidth=1)
        ax_row[0].legend(fontsize=8)
    fig.suptitle(f"{latent} code: each estimator against the exact gradient of the ELBO (enumeration)")
    return save_figure(fig, path)


def plot_training_comparison(results, path):
    """Test ELBO per epoch of every training run, one panel per latent, the Gaussian VAE in each."""
    latents = list(dict.fromkeys(name.split("/")[0] for name in results if "/" in name))
    fig = new_figure(6.5 * max(1, len(latents)), 4.6)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(latents))))
    for ax, latent in zip(axes, latents):
        for name, res in results.items():
            if name != "gaussian" and not name.startswith(latent + "/"):
                continue
            label = name.split("/")[-1]
            h = res["history"]
            ax.plot(h["epoch"], h["test_elbo"], marker="o", markersize=3, color=COLORS[label],
                    linestyle="--" if name == "gaussian" else "-",
                    label=f"{label}: log p(x) ~ {res['test_log_likelihood']:.1f}")
        ax.set_title(f"{latent} code (dashed: the Gaussian VAE of the same networks)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test ELBO (nats per digit)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training with each estimator on binarised mnist-mini: same seed, architecture, cost per step")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------

FILES = {"bias_variance": "bias_variance.csv", "comparison_table": "training_comparison.csv",
         "comparison": "training_comparison.json", "lab": "discrete_lab.json",
         "training_comparison": "training_comparison.png"}
BIAS_VARIANCE_COLUMNS = ("latent", "setting", "K", "temperature", "target", "bias_se", "rel_bias", "variance",
                         "draws", "seconds")
COMPARISON_COLUMNS = ("model", "test_elbo", "test_log_likelihood", "test_log_likelihood_stderr", "test_kl",
                      "active_units", "train_seconds", "evaluate_seconds")


def run_discrete_lab(out_dir, dataset="mnist-mini", quick=False, latents=("bernoulli", "categorical"), epochs=None,
                     importance=None, seed=0, log=print):
    """Run both experiments and write into out_dir:

        bias_variance.csv            one row per (latent, setting, K or temperature, target)
        bias_variance_<latent>.png   plot_bias_variance of each latent
        training_comparison.csv      test ELBO, log p(x) (K = importance), KL, active units, seconds
        training_comparison.json     the same with each run's per-epoch history
        training_comparison.png      test ELBO per epoch
        discrete_lab.json            the configuration and the wall time of each step

    quick=True: QUICK_DEFAULTS (tiny codes and networks on 500 digits, 1 epoch: seconds); epochs and
    importance override the configuration. Returns {"paths", "bias_variance", "comparison", "seconds"}."""
    cfg = dict(QUICK_DEFAULTS if quick else LAB_DEFAULTS)
    cfg.update({k: v for k, v in dict(epochs=epochs, importance=importance).items() if v is not None})
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if cfg["n_train"] is not None:
        data = dataclasses.replace(data, x_train=data.x_train[:cfg["n_train"]], y_train=None,
                                   x_test=data.x_test[:cfg["n_test"]], y_test=None)
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, v) for k, v in FILES.items()}
    log(f"discrete lab: {data.name} ({data.x_train.shape[0]} train / {data.x_test.shape[0]} test digits, "
        f"binarised), latents {list(latents)} -> {out_dir}")
    seconds, rows = {}, []
    for latent in latents:
        start = time.perf_counter()
        mine = bias_variance(data, latent, cfg, seed, log)
        rows += mine
        paths[f"bias_variance_{latent}"] = plot_bias_variance(mine, os.path.join(out_dir,
                                                                                 f"bias_variance_{latent}.png"))
        seconds[f"bias_variance_{latent}"] = time.perf_counter() - start
    write_csv(rows, paths["bias_variance"], BIAS_VARIANCE_COLUMNS)

    start = time.perf_counter()
    results = compare_training(data, latents, cfg, seed, log)
    seconds["compare_training"] = time.perf_counter() - start
    write_csv([{"model": name, **{k: r.get(k) for k in COMPARISON_COLUMNS[1:]}} for name, r in results.items()],
              paths["comparison_table"], COMPARISON_COLUMNS)
    architecture = "-".join(str(d) for d in (data.input_dim,) + tuple(cfg["hidden"]))
    atomic_write_json(paths["comparison"], {"dataset": data.name, "encoder": architecture,
                                            "codes": {k: list(v) for k, v in cfg["codes_trained"].items()},
                                            "gaussian_dim": cfg["gaussian_dim"],
                                            "epochs": cfg["epochs"], "samples": cfg["samples"],
                                            "importance": cfg["importance"], "seed": seed, "runs": results})
    plot_training_comparison(results, paths["training_comparison"])
    seconds["total"] = sum(seconds.values())
    atomic_write_json(paths["lab"], {"dataset": data.name, "quick": quick, "seed": seed, "latents": list(latents),
                                     **{k: ({a: list(b) for a, b in v.items()} if isinstance(v, dict) else
                                            list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                                     "seconds": seconds})
    log("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return {"paths": paths, "bias_variance": rows, "comparison": results, "seconds": seconds}
