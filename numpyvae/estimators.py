"""Gradient estimators: how the loss's gradient reaches the posterior's parameters, and baselines.

For q_phi(z|x) = N(mu, diag(sigma^2)), sigma = exp(logvar / 2), and a per-sample signal
f(z) = log p(x|z), the encoder needs  d/d(mu, logvar) E_q[f(z)].  Three ways
(docs/estimators.md):

* **reparameterization** (Eq. (R2), docs/reparameterization.md): differentiate through
  z = mu + sigma * eps; uses df/dz, which the decoder's backward pass provides.
* **score function / REINFORCE** (Eq. (S1), docs/estimators.md): E_q[(f(z) - c) d log q(z)/dphi],
  which needs only the values f(z_l). For the diagonal Gaussian, written with eps = (z - mu)/sigma,
      d log q / d mu     = eps / sigma                 Eq. (S2), docs/estimators.md
      d log q / d logvar = (eps^2 - 1) / 2
  Any baseline c that does not depend on the sample z_l keeps it unbiased, because
  E_q[d log q / dphi] = 0.
* **sticking the landing** (Roeder, Wu & Duvenaud 2017; Eq. (T1), docs/estimators.md): the
  loss with its KL sampled too (the Monte Carlo entropy form, f - beta (log q(z|x) - log p(z))),
  differentiated along the path z(phi, eps) only. Of the two parts of d/dphi log q(z(phi)|x),
  the path and the score (Eq. (T3), docs/estimators.md), the score is dropped: its expectation
  is zero.

Every estimator is a function with one signature, registered in ESTIMATORS:

    dq = estimator(posterior, sample, dz, beta, baseline)

``posterior`` is the model's posterior family (numpyvae.distributions.DiagonalGaussianPosterior
or FullGaussianPosterior), ``sample`` the forward pass (a ForwardPass: x, q, eps, z, log_px),
``dz`` = d loss / dz from the decoder's backward pass, and the result maps each encoder head
("mu", "logvar"[, "tril"]) to d loss / d head, the KL term's share (times beta) included. These are
gradients of the *loss* (minus the objective, averaged over the batch), so VAE.loss_and_grads
sends them straight into the encoder's backward pass.

A baseline is an object with ``value(x, f)`` (the baseline for the signals f (L, B) of the
batch x, never using sample l's own signal for sample l) and ``observe(x, f)`` (learn from the
signals afterwards): LeaveOneOutBaseline, EMABaseline, LearnedBaseline, or one of your own.
"""

from dataclasses import dataclass

import numpy as np

from ._validate import check_finite_number, check_nonnegative_int
from .layers import MLP, Linear, named
from .optim import Adam

__all__ = ["ForwardPass", "reparameterization", "score_function", "blocked", "sticking_the_landing",
           "ESTIMATORS", "choose_estimator",
           "diag_gaussian_score", "score_function_grad", "leave_one_out_baseline", "stl_path_grad_z",
           "LeaveOneOutBaseline", "EMABaseline", "LearnedBaseline", "BASELINES", "make_baseline",
           "check_baseline"]


@dataclass
class ForwardPass:
    """What an estimator reads of a forward pass of a batch of B datapoints with L samples each:
    x (B, D); q, the posterior's parameters {"mu": (B, Z), "logvar": (B, Z)[, "tril"]}; the noise
    eps (L, B, Z); the codes z (L, B, Z); log_px = log p(x_b | z_lb), shape (L, B)."""

    x: np.ndarray
    q: dict
    eps: np.ndarray
    z: np.ndarray
    log_px: np.ndarray


# ---------------------------------------------------------------------------
# The estimators: d loss / d q for  loss = -1/B sum_b (1/L sum_l log p(x_b|z_lb) - beta KL_b).
# ---------------------------------------------------------------------------

def _plus_kl(dq, posterior, q, beta):
    """dq plus beta times the gradient of the batch-mean analytic KL (the posterior's kl_grad)."""
    B = q["mu"].shape[0]
    for name, g in posterior.kl_grad(q).items():
        dq[name] = dq[name] + (beta / B) * g
    return dq


def reparameterization(posterior, sample, dz, beta, baseline=None):
    """Pathwise: the data term's gradient through z = mu + sigma eps (Eq. (R2),
    docs/reparameterization.md; Eq. (F2), docs/kl.md for the full covariance), plus the KL's."""
    return _plus_kl(posterior.sample_backward(sample.q, sample.eps, dz), posterior, sample.q, beta)


def blocked(posterior, sample, dz, beta, baseline=None):
    """No path from the data term to phi: only the KL term trains the encoder."""
    return _plus_kl({name: np.zeros_like(v) for name, v in sample.q.items()}, posterior, sample.q, beta)


def score_function(posterior, sample, dz, beta, baseline=None):
    """REINFORCE: (f - c) d log q / d phi with f = log p(x|z) and a baseline c, Eq. (S1),
    docs/estimators.md, plus the KL's gradient. The baseline sees the signals first (value), then
    learns from them (observe)."""
    f = sample.log_px
    b = 0.0 if baseline is None else baseline.value(sample.x, f)
    dmu, dlogvar = score_function_grad(f, sample.eps, sample.q["logvar"], b)
    if baseline is not None:
        baseline.observe(sample.x, f)
    return _plus_kl({"mu": dmu, "logvar": dlogvar}, posterior, sample.q, beta)


def sticking_the_landing(posterior, sample, dz, beta, baseline=None):
    """Pathwise, with the loss in its Monte Carlo entropy form and the score term of log q dropped,
    Eq. (T1), docs/estimators.md: the gradient of the loss (beta included) along z = mu + sigma eps
    only. The KL's path gradient in z, beta (z - eps / sigma) (Eq. (T2)), times 1/(L B), joins the
    decoder's d loss / dz before the reparameterization backward pass."""
    L, B = sample.log_px.shape
    dz_kl = stl_path_grad_z(sample.eps, sample.z, sample.q["logvar"], beta) * (1.0 / (L * B))
    return posterior.sample_backward(sample.q, sample.eps, dz + dz_kl)


# How the data term's gradient reaches the encoder (docs/estimators.md):
#   reparam  through z = mu + sigma * eps                       (pathwise)
#   score    (f(z) - b) * d log q / d phi, f = log p(x|z)        (REINFORCE), optional baseline
#   blocked  not at all: only the KL term trains the encoder     (no reparameterization)
#   stl      pathwise, with the ELBO in its Monte Carlo entropy form and the score term dropped
ESTIMATORS = {"reparam": reparameterization, "score": score_function, "blocked": blocked,
              "stl": sticking_the_landing}


def choose_estimator(name, posterior, baseline=None):
    """The estimator function registered under ``name``, after checking that the posterior family
    supports it and that a baseline is only given to "score" (and is a baseline object)."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {list(ESTIMATORS)}")
    if name not in posterior.estimators:
        raise ValueError(f"posterior={posterior.name!r} supports estimator "
                         f"{' or '.join(repr(e) for e in posterior.estimators)}; got {name!r}")
    if baseline is not None and name != "score":
        raise ValueError(f"a baseline only applies to estimator='score' (got estimator={name!r})")
    check_baseline(baseline)
    return ESTIMATORS[name]


# ---------------------------------------------------------------------------
# Their pieces for the diagonal Gaussian.
# ---------------------------------------------------------------------------

def diag_gaussian_score(eps, logvar):
    """d log q(z|x) / d(mu, logvar) at z = mu + sigma * eps.   Eq. (S2), docs/estimators.md

    eps (L, B, Z), logvar (B, Z) -> (d_mu, d_logvar), each (L, B, Z):
        d/dmu     log q = (z - mu) / sigma^2 = eps / sigma
        d/dlogvar log q = -1/2 + (z - mu)^2 / (2 sigma^2) = (eps^2 - 1) / 2
    """
    return eps * np.exp(-0.5 * logvar), 0.5 * (eps * eps - 1.0)


def score_function_grad(f, eps, logvar, baseline=0.0):
    """Score-function (REINFORCE) estimate of the loss gradient with respect to mu and logvar.
    Eq. (S1), docs/estimators.md

        loss_data = -1/(L B) sum_{l,b} f_lb
        d loss_data / d phi  ~=  -1/(L B) sum_{l,b} (f_lb - baseline_lb) d log q(z_lb) / d phi

    f: (L, B) values log p(x_b | z_lb), treated as constants (no gradient flows through them);
    eps: (L, B, Z); logvar: (B, Z); baseline: scalar, (B,) or (L, B), independent of z_lb.
    Returns (d_mu, d_logvar), each (B, Z).
    """
    L, B = f.shape
    signal = (f - baseline)
    if signal.ndim == 1:
        signal = np.broadcast_to(signal, (L, B))
    signal = signal[..., None] * (-1.0 / (L * B))
    s_mu, s_logvar = diag_gaussian_score(eps, logvar)
    return np.sum(signal * s_mu, axis=0), np.sum(signal * s_logvar, axis=0)


def leave_one_out_baseline(f):
    """c_lb = mean of f over the other L - 1 samples of datapoint b.   Eq. (S4), docs/estimators.md

    Independent of sample l, so it keeps the estimator unbiased; needs L >= 2. f: (L, B) -> (L, B).
    """
    L = f.shape[0]
    if L < 2:
        raise ValueError("the leave-one-out baseline needs n_samples >= 2 (it averages the other samples)")
    return (f.sum(axis=0, keepdims=True) - f) / (L - 1)


def stl_path_grad_z(eps, z, logvar, beta=1.0):
    """The z-gradient of the Monte Carlo KL term beta * (log q(z|x) - log p(z)) with the
    parameters of q held fixed (stopped), which is what sticking-the-landing keeps.
    Eq. (T2), docs/estimators.md

        d/dz [log q_stop(z) - log p(z)] = -(z - mu) / sigma^2 + z = -eps / sigma + z

    Returns the gradient of the *loss* term beta * (log q - log p), shape (L, B, Z).
    """
    return beta * (z - eps * np.exp(-0.5 * logvar))


# ---------------------------------------------------------------------------
# Baselines. Each has value(x, f) -> the baseline (a scalar, (B,) or (L, B)) for the signals
# f (L, B), independent of sample l's own signal for sample l, and observe(x, f) to learn from
# the signals afterwards; state() / load_state(state) for checkpoints.
# ---------------------------------------------------------------------------

class LeaveOneOutBaseline:
    """c_lb = the mean of f over the other L - 1 samples of datapoint b (needs L >= 2).
    Eq. (S4), docs/estimators.md. Stateless: it learns nothing."""

    frozen = False

    def value(self, x, f):
        return leave_one_out_baseline(f)

    def observe(self, x, f):
        pass

    def state(self):
        return {"arrays": {}, "scalars": {"type": "loo"}}

    def load_state(self, state):
        pass


class EMABaseline:
    """c = exponential moving average of the batch-mean signal:  c <- decay c + (1 - decay) mean(f).
    Eq. (S3), docs/estimators.md. It starts at the first minibatch's mean (0 before any). Computed
    from earlier minibatches only, so unbiased."""

    def __init__(self, decay=0.9):
        self.decay = check_finite_number(decay, "decay", low=0.0, high=1.0, high_inclusive=False)
        self.mean = None        # no estimate before the first observation
        self.frozen = False

    def value(self, x, f):
        return 0.0 if self.mean is None else self.mean

    def observe(self, x, f):
        if self.frozen:
            return
        m = float(np.mean(f))
        self.mean = m if self.mean is None else self.decay * self.mean + (1 - self.decay) * m

    def state(self):
        return {"arrays": {}, "scalars": {"type": "ema", "decay": self.decay, "mean": self.mean}}

    def load_state(self, state):
        self.decay, self.mean = float(state["scalars"]["decay"]), state["scalars"]["mean"]


class LearnedBaseline:
    """An input-dependent baseline c_psi(x): a running mean plus a small MLP regressing the signal
    (NVIL, Mnih & Gregor 2014).   Eq. (S5), docs/estimators.md

    c_psi(x) = c_bar + MLP_psi(x), MLP_psi = (Linear -> tanh) -> Linear -> scalar, and c_bar
    (``shift``) a running mean of the signal, so the network learns only the residual around it.
    After each minibatch: c_bar <- 0.9 c_bar + 0.1 mean_b fbar_b (the first minibatch's mean to
    start), then one Adam step on 1/2 mean_b (fbar_b - c_bar - MLP_psi(x_b))^2, where fbar_b is the
    mean of f over the L samples of x_b. Its output for the current minibatch is computed before
    both updates, so it does not depend on the samples it is subtracted from.
    """

    def __init__(self, input_dim, hidden=100, lr=1e-3, seed=0, dtype=np.float32, activation="tanh"):
        rng = np.random.default_rng(check_nonnegative_int(seed, "seed"))
        self.trunk = MLP((input_dim, hidden), activation, rng, dtype)
        self.head = Linear(hidden, 1, rng, dtype)
        self.params = named({"trunk": self.trunk, "head": self.head})
        self.optimizer = Adam(self.params, lr=lr)
        self.frozen = False
        self.shift = None  # c_bar of Eq. (S5): running mean of fbar; the net learns the residual

    def forward(self, x):
        return self.head.forward(self.trunk.forward(x))[:, 0] + (0.0 if self.shift is None else self.shift)

    def loss_and_grads(self, x, target):
        """Squared-error regression loss 1/2 mean (target - b(x))^2 and its parameter gradients."""
        b = self.forward(x)
        r = b - target
        loss = 0.5 * float(np.mean(r * r))
        dh = self.head.backward((r / r.shape[0])[:, None])
        self.trunk.backward(dh)
        return loss, named({"trunk": self.trunk, "head": self.head}, "grads")

    def value(self, x, f):
        return self.forward(x)

    def observe(self, x, f):
        if self.frozen:
            return
        target = f.mean(axis=0).astype(x.dtype)
        m = float(np.mean(target))
        self.shift = m if self.shift is None else 0.9 * self.shift + 0.1 * m
        _, grads = self.loss_and_grads(x, target)
        self.optimizer.step(grads)

    def state(self):
        opt = self.optimizer.state_dict()
        arrays = {f"param.{k}": v for k, v in self.params.items()}
        arrays.update({f"opt.{k}": v for k, v in opt["arrays"].items()})
        return {"arrays": arrays, "scalars": {"type": "learned", "shift": self.shift, "optimizer": opt["scalars"]}}

    def load_state(self, state):
        for k, v in self.params.items():
            np.copyto(v, state["arrays"][f"param.{k}"])
        self.optimizer.load_state_dict({"arrays": {k[4:]: v for k, v in state["arrays"].items() if k.startswith("opt.")},
                                        "scalars": state["scalars"]["optimizer"]})
        self.shift = state["scalars"]["shift"]


BASELINES = ("none", "ema", "loo", "learned")


def check_baseline(baseline):
    """``baseline`` as estimator="score" takes it: None, or an object with the methods
    ``value(x, f)`` and ``observe(x, f)`` (LeaveOneOutBaseline, EMABaseline, LearnedBaseline or one
    of your own). TypeError naming ``baseline`` otherwise."""
    if baseline is None:
        return None
    if not (callable(getattr(baseline, "value", None)) and callable(getattr(baseline, "observe", None))):
        hint = " (a baseline is an object: make_baseline('loo') or LeaveOneOutBaseline())" \
            if isinstance(baseline, str) else ""
        raise TypeError(f"baseline must be None or an object with methods value(x, f) and observe(x, f) "
                        f"(e.g. numpyvae.estimators.EMABaseline()); got {type(baseline).__name__}{hint}")
    return baseline


def make_baseline(name, input_dim=None, seed=0, dtype=np.float32):
    """A baseline by name (TrainConfig.baseline): None for "none", else a baseline object."""
    if name in ("none", None):
        return None
    if name == "loo":
        return LeaveOneOutBaseline()
    if name == "ema":
        return EMABaseline()
    if name == "learned":
        if input_dim is None:
            raise ValueError("the learned baseline needs input_dim")
        return LearnedBaseline(input_dim, seed=seed, dtype=dtype)
    raise ValueError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")
