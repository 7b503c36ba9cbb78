"""Gradient estimators for a discrete code: how d loss / d omega reaches the encoder's logits.

A discrete z has no reparameterization: z is a step function of the noise, so dz/domega is zero
almost everywhere and the pathwise gradient of docs/reparameterization.md is zero too. Five ways
around it (derived in docs/discrete.md), each an entry of ESTIMATORS with three parts:

    decodes         what the decoder reads: "sample", the exact sample z (Eq. (H8)), or
                    "relaxed", the Gumbel-softmax sample zt (Eq. (H15))
    objective       the per-datapoint objective and its derivative in log p(x | code):
                    elbo_objective (the ELBO, analytic KL, Eq. (H9)) or bound_objective
                    (the K-sample bound L_K, Eq. (H13))
    posterior_grad  d loss / d omega, given the forward pass and d loss / d code:

        score             (log w - c) d log q / d omega, log w the ELBO's integrand    Eq. (H10)
        nvil              the same, centred by c + c_psi(x), scaled by 1 / s           Eq. (H11)
        vimco             VIMCO's per-sample leave-one-out signals for L_K             Eq. (H14)
        gumbel            pathwise through zt, plus the analytic KL's gradient          Eq. (H17)
        straight-through  the same backward pass, with the decoder at the hard z       Eq. (H18)

Every posterior_grad has one signature, like the Gaussian estimators of numpyvae.estimators:

    d_omega = posterior_grad(posterior, sample, dcode, beta, baseline)

``posterior`` is the family (numpyvae.discrete_posteriors), ``sample`` a DiscreteForwardPass, ``dcode``
= d loss / d code from the decoder's backward pass (L, B, Z[, C]); the result, (B, Z[, C]), is
the gradient of the *loss* (minus the objective, averaged over the batch B) with respect to omega.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .distributions import log_mean_exp, normalized_importance_weights
from .estimators import LearnedBaseline, check_baseline

__all__ = ["DiscreteForwardPass", "elbo_objective", "bound_objective", "log_weights",
           "score_function", "nvil", "vimco", "vimco_baselines", "relaxed_path",
           "DiscreteEstimator", "ESTIMATORS", "choose_estimator", "NVILBaseline"]


@dataclass
class DiscreteForwardPass:
    """What the objectives and estimators read of a forward pass of B datapoints with L samples each:
    x (B, D); omega, the encoder's logits (B, Z[, C]); the noise (L, B, Z[, C]) (logistic or Gumbel);
    z, the exact samples it gives (L, B, Z[, C]); code, what the decoder read (z, or the relaxed zt);
    log_px = log p(x_b | code_lb), (L, B); the temperature tau of the relaxation."""

    x: np.ndarray
    omega: np.ndarray
    noise: np.ndarray
    z: np.ndarray
    code: np.ndarray
    log_px: np.ndarray
    temperature: float


# ---------------------------------------------------------------------------
# The objectives: per datapoint, the value (B,) and its derivative in log p(x | code), (L, B).
# ---------------------------------------------------------------------------

def elbo_objective(posterior, sample, beta):
    """ELBO_b = 1/L sum_l log p(x_b | code_lb) - beta KL_b, with the KL analytic (Eq. (H4) or (H6));
    d ELBO_b / d log p(x_b | code_lb) = 1/L.   Eq. (H9), docs/discrete.md
    For "gumbel" the code is the relaxed zt, so this is the relaxed objective that estimator ascends."""
    L = sample.log_px.shape[0]
    value = sample.log_px.mean(axis=0) - beta * posterior.kl(sample.omega)
    return value, np.full_like(sample.log_px, 1.0 / L)


def log_weights(posterior, sample):
    """log w_lb = log p(x_b | z_lb) + log p(z_lb) - log q(z_lb | x_b), (L, B): the ELBO's integrand
    and the log importance weight.   Eq. (H12), docs/discrete.md"""
    return sample.log_px + posterior.log_prior - posterior.log_prob(sample.omega, sample.z)


def bound_objective(posterior, sample, beta):
    """The K-sample bound  L_K = log 1/K sum_k w_k  (K = L samples) and d L_K / d log w_k = w~_k,
    the normalised weights, which is also its derivative in log p(x | z_k).   Eq. (H13), docs/discrete.md
    ``beta`` is unused: the bound has no separate KL term (choose_estimator refuses beta != 1)."""
    log_w = log_weights(posterior, sample)
    return log_mean_exp(log_w, axis=0), normalized_importance_weights(log_w, axis=0)


# ---------------------------------------------------------------------------
# The estimators of d loss / d omega.
# ---------------------------------------------------------------------------

def _learning_signal(posterior, sample, beta):
    """log p(x|z) + beta (log p(z) - log q(z|x)), (L, B): the ELBO's integrand with the KL weighted
    by beta (log w of Eq. (H12) when beta = 1)."""
    return sample.log_px + beta * (posterior.log_prior - posterior.log_prob(sample.omega, sample.z))


def score_function(posterior, sample, dcode, beta, baseline=None):
    """REINFORCE with the full learning signal:   Eq. (H10), docs/discrete.md

        d loss / d omega_b = -1/(L B) sum_l (log w_lb - c_lb) (z_lb - rho_b),

    log w the ELBO's integrand (beta-weighted KL part), c from ``baseline`` (None: c = 0; any
    baseline object of numpyvae.estimators), which sees the signals first (value) and learns from
    them afterwards (observe). ``dcode`` is not used: no gradient passes through a discrete z."""
    L, B = sample.log_px.shape
    signal = _learning_signal(posterior, sample, beta)
    c = 0.0 if baseline is None else baseline.value(sample.x, signal)
    d_omega = posterior.weighted_score(sample.omega, sample.z, (signal - c) * (-1.0 / (L * B)))
    if baseline is not None:
        baseline.observe(sample.x, signal)
    return d_omega


def nvil(posterior, sample, dcode, beta, baseline):
    """NVIL (Mnih & Gregor 2014): the score function with the signal centred by the baseline
    c + c_psi(x) (an NVILBaseline) and divided by s = max(1, running std of the centred signal):
    Eq. (H11), docs/discrete.md

        d loss / d omega_b = -1/(L B s) sum_l (log w_lb - c - c_psi(x_b)) (z_lb - rho_b).

    So the encoder's gradient estimates the loss's divided by s (a step size set by the past only);
    the decoder's is not scaled. The baseline then learns from the signals (NVILBaseline.observe)."""
    L, B = sample.log_px.shape
    signal = _learning_signal(posterior, sample, beta)
    centred = signal - baseline.value(sample.x, signal)
    d_omega = posterior.weighted_score(sample.omega, sample.z, centred * (-1.0 / (L * B * baseline.scale())))
    baseline.observe(sample.x, signal)
    return d_omega


def vimco_baselines(log_w):
    """VIMCO's leave-one-out baselines, (K, B):   Eq. (H14), docs/discrete.md

        c_kb = log 1/K ( sum_{j != k} w_jb + w^_{-k,b} ),  log w^_{-k} = 1/(K-1) sum_{j != k} log w_j,

    the bound recomputed with sample k's weight replaced by the geometric mean of the others'. It does
    not depend on z_k. Computed as a log-mean-exp over a (K, K, B) array whose row k is log_w with entry
    k replaced: no subtraction of weights, so no cancellation. log_w (K, B), K >= 2."""
    K = log_w.shape[0]
    others = (log_w.sum(axis=0) - log_w) / (K - 1)             # log w^_{-k}, (K, B)
    swapped = np.repeat(log_w[None], K, axis=0)                 # (K, K, B), row k = log_w
    swapped[np.arange(K), np.arange(K)] = others
    return log_mean_exp(swapped, axis=1)


def vimco(posterior, sample, dcode, beta=1.0, baseline=None):
    """VIMCO (Mnih & Rezende 2016): the score part of the gradient of the K-sample bound, with
    per-sample leave-one-out baselines:   Eq. (H14), docs/discrete.md

        d loss / d omega_b = -1/B sum_k (L^_b - c_kb - w~_kb) (z_kb - rho_b),

    L^ the bound (Eq. (H13)), c_k from vimco_baselines, w~ the normalised weights (the -w~_k comes
    from log q inside log w_k). The decoder's part, sum_k w~_k d log p(x|z_k), is bound_objective's."""
    K, B = sample.log_px.shape
    log_w = log_weights(posterior, sample)
    bound = log_mean_exp(log_w, axis=0)
    signal = bound - vimco_baselines(log_w) - normalized_importance_weights(log_w, axis=0)
    return posterior.weighted_score(sample.omega, sample.z, signal * (-1.0 / B))


def relaxed_path(posterior, sample, dcode, beta, baseline=None):
    """Pathwise through the relaxed sample zt = relaxed(omega, noise, tau), plus the analytic KL's
    gradient:   Eq. (H17), docs/discrete.md

        d loss / d omega = relaxed_backward(zt, d loss / d code) + beta / B d KL / d omega.

    For "gumbel" the decoder read zt, and this is the exact gradient of the relaxed objective for the
    given noise. For "straight-through" the decoder read the hard z and d loss / d code was taken there:
    the same backward pass, applied to a gradient from another point (Eq. (H18), docs/discrete.md)."""
    B = sample.omega.shape[0]
    zt = posterior.relaxed(sample.omega, sample.noise, sample.temperature)
    return (posterior.relaxed_backward(zt, dcode, sample.temperature)
            + (beta / B) * posterior.kl_grad(sample.omega))


@dataclass(frozen=True)
class DiscreteEstimator:
    """One row of ESTIMATORS: what the decoder reads, which objective, which posterior gradient,
    and which baseline it takes ("any" baseline object, "nvil" an NVILBaseline, or "none")."""

    decodes: str
    objective: Callable
    posterior_grad: Callable
    baseline: str = "none"


#             decoder reads  objective         d loss / d omega
ESTIMATORS = {
    "score":            DiscreteEstimator("sample",  elbo_objective,  score_function, baseline="any"),
    "nvil":             DiscreteEstimator("sample",  elbo_objective,  nvil, baseline="nvil"),
    "vimco":            DiscreteEstimator("sample",  bound_objective, vimco),
    "gumbel":           DiscreteEstimator("relaxed", elbo_objective,  relaxed_path),
    "straight-through": DiscreteEstimator("sample",  elbo_objective,  relaxed_path),
}


def choose_estimator(name, baseline=None, beta=1.0, n_samples=1):
    """The DiscreteEstimator registered under ``name``, after checking the baseline it is given
    ("score": None or any baseline object; "nvil": None, for the model's own, or an NVILBaseline;
    the others: None) and, for "vimco", that n_samples >= 2 (each sample's baseline needs the others)
    and beta = 1 (the bound has no KL term to weight)."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {list(ESTIMATORS)}")
    est = ESTIMATORS[name]
    if est.baseline == "any":
        check_baseline(baseline)
    elif est.baseline == "nvil":
        if baseline is not None and not isinstance(baseline, NVILBaseline):
            raise TypeError(f"baseline for estimator='nvil' must be None (the model's own) or an "
                            f"NVILBaseline; got {type(baseline).__name__}")
    elif baseline is not None:
        raise ValueError(f"estimator={name!r} takes no baseline (got {type(baseline).__name__}); "
                         "baselines are for 'score' and 'nvil'")
    if name == "vimco" and n_samples < 2:
        raise ValueError(f"estimator='vimco' needs n_samples >= 2 (K samples, each with a leave-one-out "
                         f"baseline from the others); got n_samples={n_samples!r}")
    if name == "vimco" and beta != 1.0:
        raise ValueError(f"beta applies to the ELBO's KL term; estimator='vimco' optimises the K-sample "
                         f"bound, which has none (got beta={beta!r})")
    return est


class NVILBaseline(LearnedBaseline):
    """NVIL's baseline (Mnih & Gregor 2014): centring by c + c_psi(x) and variance normalisation.
    Eq. (H11), docs/discrete.md

    c + c_psi(x) is LearnedBaseline's output: c its running mean of the signal (``shift``, decay
    0.9; NVIL uses 0.8) and c_psi a small MLP regressing what is left ((S5) in docs/estimators.md).
    ``var`` is a running mean (decay 0.9) of the squared centred signal (log w - c - c_psi(x))^2 and
    scale() = max(1, sqrt(var)) divides the encoder's gradient. Each is computed before the minibatch
    it is used on, so none depends on the samples it centres or scales. ``frozen`` stops all learning.
    """

    decay = 0.9

    def __init__(self, input_dim, hidden=100, lr=1e-3, seed=0, dtype=np.float32, activation="tanh"):
        super().__init__(input_dim, hidden=hidden, lr=lr, seed=seed, dtype=dtype, activation=activation)
        self.var = None         # no estimate before the first observation

    def scale(self):
        """s = max(1, sqrt(running variance of the centred signal)); 1 before any observation."""
        return 1.0 if self.var is None else max(1.0, float(np.sqrt(self.var)))

    def observe(self, x, f):
        """Learn from the signals f (L, B) of the batch x: the running variance of the centred signal
        (with the baseline as it was), then c and c_psi (LearnedBaseline.observe)."""
        if self.frozen:
            return
        r = f - self.value(x, f)
        m = float(np.mean(r * r))
        self.var = m if self.var is None else self.decay * self.var + (1 - self.decay) * m
        super().observe(x, f)

    def state(self):
        s = super().state()
        s["scalars"].update(type="nvil", var=self.var)
        return s

    def load_state(self, state):
        super().load_state(state)
        self.var = state["scalars"]["var"]
