"""Measuring a gradient estimator: draw it many times, look at the spread.

A gradient estimator is a random variable: every call of ``VAE.loss_and_grads`` draws fresh
noise eps and returns a slightly different gradient g. Two numbers summarise how useful it
is for stochastic gradient descent:

* the **total variance**  tr Cov[g] = sum_j Var[g_j]  over every coordinate j of the
  parameters we look at. It is the expected squared distance ||g - E[g]||^2 of one estimate
  from its own mean, so it is in the same units as a squared gradient.
* the **signal-to-noise ratio** of each coordinate (Eq. (V1), docs/estimators.md),

      SNR_j = |E[g_j]| / std[g_j],

  which does not depend on the scale of the parameter. SNR_j << 1 means one estimate of
  coordinate j is mostly noise: its sign is close to a coin flip.

We estimate both from R independent estimates for the same minibatch x: R calls of
``loss_and_grads`` with fresh noise, everything else (parameters, data, baseline) held
fixed. What is here, in the order you would use it:

    gradient_samples(model, x, estimator, R, rng)  ->  {name: (R, *shape) array}
    gradient_statistics(samples)                    ->  GradientStats (mean, variance, SNR, ...)
    measure_estimator(model, x, estimator, R, rng)  ->  the same, plus seconds per estimate

numpyvae.lab.estimator_lab uses these to compare every estimator of docs/estimators.md.
"""

import contextlib
import dataclasses
import time

import numpy as np

from .._validate import check_positive_int, check_rng

__all__ = ["encoder_keys", "frozen", "gradient_samples", "gradient_statistics", "measure_estimator",
           "GradientStats"]


def encoder_keys(model):
    """The names of the encoder's parameters ("enc.h0.W", ..., "enc.logvar.b"), in model order.

    These are the parameters the estimators disagree about: the decoder's gradient is the same
    pathwise gradient under every estimator, so its variance would only blur the comparison.
    """
    return [k for k in model.params if k.startswith("enc.")]


@contextlib.contextmanager
def frozen(baseline):
    """Inside the ``with`` block a stateful baseline does not learn; afterwards its ``frozen``
    flag is what it was before (also when the block raises).

    Why: EMABaseline and LearnedBaseline update themselves inside every loss_and_grads call. If
    they kept learning while we draw R estimates, the R estimates would come from R slightly
    different estimators and would not be identically distributed. ``None`` and a
    LeaveOneOutBaseline have no state, so there is nothing to freeze.
    """
    if baseline is None or not hasattr(baseline, "frozen"):
        yield baseline
        return
    before = baseline.frozen
    baseline.frozen = True
    try:
        yield baseline
    finally:
        baseline.frozen = before


def gradient_samples(model, x, estimator, R, rng, n_samples=1, baseline=None, beta=1.0, keys=None):
    """R independent estimates of the minibatch-loss gradient, for the same minibatch x.

    model     : a numpyvae.VAE (left unchanged; no optimiser step is taken).
    x         : (B, D) minibatch.
    estimator : "reparam" | "score" | "blocked" | "stl", passed to VAE.loss_and_grads.
    R         : number of estimates, R >= 2 (a variance needs at least two).
    rng       : np.random.Generator giving the fresh noise eps of every call.
    n_samples : L, samples of z per datapoint inside each estimate.
    baseline  : None or a baseline object (numpyvae.estimators); a stateful one is frozen while we measure.
    keys      : parameter names to keep (default: encoder_keys(model)).

    Returns {name: array of shape (R, *model.params[name].shape)}, in the model's dtype;
    row r of every array comes from the same call r.
    """
    R = check_positive_int(R, "R")
    if R < 2:
        raise ValueError("R must be at least 2: a variance needs two or more estimates")
    check_rng(rng)
    keys = encoder_keys(model) if keys is None else list(keys)
    unknown = [k for k in keys if k not in model.params]
    if unknown:
        raise KeyError(f"unknown parameter names {unknown}; the model has {list(model.params)}")

    samples = {k: np.empty((R,) + model.params[k].shape, dtype=model.dtype) for k in keys}
    with frozen(baseline):
        for r in range(R):
            _, grads = model.loss_and_grads(x, n_samples=n_samples, rng=rng, estimator=estimator,
                                            beta=beta, baseline=baseline)
            for k in keys:
                samples[k][r] = grads[k]
    return samples


@dataclasses.dataclass
class GradientStats:
    """Summary of R gradient estimates (see gradient_statistics).

    mean, variance, snr : {name: array of the parameter's shape}, float64. ``snr`` is NaN
                          where a coordinate is ignored (always exactly zero), inf where it
                          never varies but is not zero (e.g. "blocked": no noise reaches it).
    total_variance      : sum of every coordinate's variance = trace of the covariance.
    median_snr          : median of snr over the coordinates that are not ignored (NaN if none).
    n_estimates         : R.
    n_coordinates       : number of coordinates looked at (ignored ones included).
    n_ignored           : coordinates whose estimates were all exactly 0 (mean 0 and std 0),
                          e.g. first-layer weights of pixels that are black in the whole minibatch.
    n_deterministic     : coordinates with std 0 but mean != 0 (SNR = inf).
    seconds_per_estimate: wall time of one estimate, when measured (measure_estimator).
    """

    mean: dict
    variance: dict
    snr: dict
    total_variance: float
    median_snr: float
    n_estimates: int
    n_coordinates: int
    n_ignored: int
    n_deterministic: int
    seconds_per_estimate: "float | None" = None


def gradient_statistics(samples):
    """Mean, variance and signal-to-noise ratio of R gradient estimates.

    samples : {name: (R, *shape) array}, R >= 2 (e.g. from gradient_samples).

    For each coordinate j, over the R estimates g_j^(1..R):
        mean_j     = 1/R sum_r g_j^(r)
        variance_j = 1/(R-1) sum_r (g_j^(r) - mean_j)^2          (unbiased, ddof=1)
        SNR_j      = |mean_j| / sqrt(variance_j)                  Eq. (V1), docs/estimators.md
    and total_variance = sum_j variance_j, the trace of the covariance matrix of g.

    Reading the SNR: with R estimates, mean_j itself is off by about std_j / sqrt(R), so a
    coordinate whose true mean is 0 still shows an SNR of about |N(0, 1)| / sqrt(R); the median
    of that is 0.674 / sqrt(R) (0.067 for R = 100). A median SNR near that value means "no
    signal visible with this many estimates". Coordinates that are exactly 0 in every estimate
    have no SNR at all (0/0) and are left out of the median.
    Everything is accumulated in float64, so float32 gradients lose nothing in the sums.
    """
    if not samples:
        raise ValueError("samples is empty: give at least one parameter's estimates")
    counts = {k: np.shape(v)[0] if np.ndim(v) else 0 for k, v in samples.items()}
    R = next(iter(counts.values()))
    if any(c != R for c in counts.values()):
        raise ValueError(f"every parameter needs the same number of estimates R; got {counts}")
    if R < 2:
        raise ValueError(f"need at least R = 2 estimates per parameter for a variance; got R = {R}")

    mean, variance, snr = {}, {}, {}
    total_variance = 0.0
    n_coordinates = n_ignored = n_deterministic = 0
    for k, g in samples.items():
        g = np.asarray(g)
        m = np.mean(g, axis=0, dtype=np.float64)
        v = np.var(g, axis=0, ddof=1, dtype=np.float64)
        std = np.sqrt(v)
        ignored = (std == 0) & (m == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.abs(m) / std            # inf where std == 0 < |m|, NaN where both are 0
        s[ignored] = np.nan
        mean[k], variance[k], snr[k] = m, v, s
        total_variance += float(np.sum(v))
        n_coordinates += m.size
        n_ignored += int(np.sum(ignored))
        n_deterministic += int(np.sum((std == 0) & (m != 0)))

    counted = np.concatenate([s[~np.isnan(s)] for s in snr.values()])
    median_snr = float(np.median(counted)) if counted.size else float("nan")
    return GradientStats(mean=mean, variance=variance, snr=snr, total_variance=total_variance,
                         median_snr=median_snr, n_estimates=int(R), n_coordinates=int(n_coordinates),
                         n_ignored=n_ignored, n_deterministic=n_deterministic)


def measure_estimator(model, x, estimator, R, rng, n_samples=1, baseline=None, beta=1.0, keys=None,
                      return_samples=False):
    """gradient_samples followed by gradient_statistics, timed.

    Returns a GradientStats whose ``seconds_per_estimate`` is the wall time of drawing the R
    estimates divided by R (time.perf_counter; the statistics are not included). With
    ``return_samples=True`` returns ``(stats, samples)``.
    """
    start = time.perf_counter()
    samples = gradient_samples(model, x, estimator, R, rng, n_samples=n_samples, baseline=baseline,
                               beta=beta, keys=keys)
    seconds = (time.perf_counter() - start) / R
    stats = dataclasses.replace(gradient_statistics(samples), seconds_per_estimate=seconds)
    return (stats, samples) if return_samples else stats
