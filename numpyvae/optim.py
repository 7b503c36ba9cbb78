"""Gradient-descent optimisers: SGD with momentum, and Adam.

Usage:

    opt = Adam(model.params, lr=1e-3)
    for batch in batches:
        loss, grads = model.loss_and_grads(batch)
        opt.step(grads)              # updates model.params in place

`model.params` is a dict {name: ndarray} of the *live* parameter arrays: the
model's layers hold the very same array objects. So an optimiser must never
rebind a dict entry (`params[k] = params[k] - lr * g` would leave the layers
looking at the old array); every update below is written in place (`p -= ...`).

Each optimiser keeps per-parameter state (momentum buffers) in arrays of the
parameter's own dtype, so a float32 model stays float32 end to end.

`state_dict()` / `load_state_dict()` export and restore that state, so a run
resumed from a checkpoint continues bit-for-bit like an uninterrupted one.

Both `step` and `load_state_dict` are all-or-nothing: they check everything
first, and on a problem raise before a single number is written, so a refused
step or state leaves the model and the optimiser exactly as they were.
"""

import functools
import math
import sys

import numpy as np

from . import _validate as check
from .numerics import adam_update_fused
from .parallel import for_each

_UNIT_INTERVAL = dict(low=0.0, high=1.0, high_inclusive=False)    # [0, 1)


@functools.lru_cache(maxsize=None)
def _largest(dtype):
    """The largest finite number of a floating dtype, as a Python float."""
    return min(float(np.finfo(dtype).max), sys.float_info.max)   # long double: capped at float64's


def _global_norm(grads):
    """(norm, bad): the L2 norm of all gradients taken as one long vector, as a
    Python float, and None; or (NaN, name) where `name` is a gradient holding
    NaN or inf.

    Squares are summed in float64 (so float32 gradients cannot overflow) in
    sorted-name order (so the result does not depend on dict order). Only if
    that sum overflows, which needs float64 entries above ~1e154, are the
    gradients divided by their largest magnitude first (as hypot does); the
    norm is inf only if it really exceeds the float64 range.
    """
    names = sorted(grads)
    squared_sum = 0.0
    with np.errstate(over="ignore"):     # an overflow is handled below
        for name in names:
            squared_sum += float(np.sum(np.square(np.asarray(grads[name]), dtype=np.float64)))
    if math.isfinite(squared_sum):
        return math.sqrt(squared_sum), None
    for name in names:
        if not np.all(np.isfinite(grads[name])):
            return math.nan, name
    biggest = max(float(np.max(np.abs(grads[n]))) for n in names if np.size(grads[n]))
    scaled_sum = sum(float(np.sum(np.square(np.asarray(grads[n], dtype=np.float64) / biggest)))
                     for n in names)
    return biggest * math.sqrt(scaled_sum), None


def clip_grad_norm(grads, max_norm):
    """Rescale gradients so that their global L2 norm is at most `max_norm`.

    The global norm treats all gradient arrays as one long vector:

        total_norm = sqrt( sum over arrays g of sum(g ** 2) )

    If total_norm > max_norm, every gradient is multiplied by the same factor
    max_norm / total_norm, which shrinks the step but keeps its direction.

    grads: dict {name: array}, any shapes, never modified; max_norm: a positive float.
    Returns (clipped_grads, total_norm): a new dict, holding scaled copies (in the input
    dtypes) when scaling was needed and the input arrays themselves otherwise (no copy when
    nothing changes); and the norm *before* clipping, a float (for logging).

    Raises TypeError if grads is not a dict or max_norm not a number, and
    ValueError if max_norm is not positive and finite, if some gradient
    contains NaN or inf (clipping cannot repair those), or if the norm exceeds
    the float64 range.
    """
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict {{name: ndarray}}, got {type(grads).__name__}")
    max_norm = check.check_finite_number(max_norm, "max_norm", low=0.0, low_inclusive=False)
    total_norm, bad = _global_norm(grads)
    if bad is not None:
        raise ValueError(f"gradient {bad!r} contains NaN or inf; cannot clip it")
    if not math.isfinite(total_norm):
        raise ValueError("the global gradient norm exceeds the float64 range; cannot clip it")
    return _scale_to_norm(grads, max_norm, total_norm), total_norm


def _scale_to_norm(grads, max_norm, total_norm):
    """The gradients times max_norm / total_norm if total_norm > max_norm, else themselves."""
    if total_norm <= max_norm:
        return dict(grads)
    # A Python float, so that `g * scale` keeps g's dtype (a NumPy float64
    # scalar would silently upcast float32 gradients to float64).
    scale = max_norm / total_norm
    return {name: np.asarray(g) * scale for name, g in grads.items()}


def _number(**bounds):
    """A check (value, name) -> float for a finite number within ``bounds``."""
    return functools.partial(check.check_finite_number, **bounds)


def _none_or_positive(value, name):
    return None if value is None else check.check_finite_number(value, name, low=0.0, low_inclusive=False)


class Optimizer:
    """Shared plumbing for the optimisers: argument checks, gradient clipping,
    and saving/restoring state. Subclasses implement `_update(name, p, g)` and
    `_grad_limit(dtype)`, list their per-parameter state buffers in
    `self.state`, and add their hyperparameters to `SCALARS`.

    Attributes: ``params``, the dict of live parameter arrays (the very dict the caller
    passed in; the optimiser never adds or replaces entries); ``lr``, the learning rate, which
    may be changed between steps (``opt.lr = 1e-4``); ``clip_norm``, None or the largest global
    gradient norm (clip_grad_norm); ``t``, the number of steps taken; ``state``, {buffer name:
    {parameter name: array shaped like the parameter}}, e.g. state["m"]["enc.W"].
    """

    # Every scalar setting and the check that defines its valid values, said once: used by
    # __init__, the lr setter and load_state_dict alike. Each check takes (value, name) and
    # returns the value as a plain Python number, or raises TypeError/ValueError naming it.
    SCALARS = {
        "t": check.check_nonnegative_int,
        "lr": _number(low=0.0),
        "clip_norm": _none_or_positive,
    }

    def __init__(self, params, lr, clip_norm=None, **hyperparameters):
        if not isinstance(params, dict) or not params:
            raise ValueError("params must be a non-empty dict {name: ndarray}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray):
                raise ValueError(
                    f"parameter {name!r} must be a numpy array, got {type(p).__name__}"
                )
            if not np.issubdtype(p.dtype, np.floating):
                raise ValueError(f"parameter {name!r} must be floating point, got {p.dtype}")
            if not p.flags.writeable:
                raise ValueError(f"parameter {name!r} is read-only; it cannot be updated in place")
        self.params = params
        scalars = {"t": 0, "lr": lr, "clip_norm": clip_norm, **hyperparameters}
        self._set_scalars({name: check_value(scalars[name], name)
                           for name, check_value in self.SCALARS.items()})
        self.state = {}

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = self.SCALARS["lr"](value, "lr")

    def _set_scalars(self, checked):
        for name, value in checked.items():
            setattr(self, name, value)

    def _zeros_like_params(self):
        """One zero buffer per parameter, same shape and dtype (no upcast)."""
        return {name: np.zeros_like(p) for name, p in self.params.items()}

    # ------------------------------------------------------------------ stepping

    def step(self, grads):
        """Take one optimisation step, updating every array in self.params in place.

        grads: dict {name: array} with exactly the keys and shapes of params; not modified.

        Raises, before anything is written (the parameters, the state and t stay exactly as
        they were), TypeError / ValueError if grads do not match params (type, keys, shapes),
        and FloatingPointError, naming the parameter, if a gradient as the update would use it
        (clipped, then cast to the parameter's dtype) contains NaN or inf, or is too large for
        the update to stay finite. That usually means training has diverged.
        """
        usable = self._usable_grads(grads)
        self.t += 1
        # Each array's update is independent of the others': spread them over numpyvae's threads.
        for_each(lambda name: self._update(name, self.params[name], usable[name]), self.params,
                 [p.size for p in self.params.values()])

    def _usable_grads(self, grads):
        """The gradients exactly as `_update` will use them, each checked: clipped
        (if clip_norm is set), then cast to its parameter's dtype (a float64
        gradient for a float32 model is rounded once, here), then compared with
        `_grad_limit`. Every gradient is checked before any is used, so a step
        is all-or-nothing.
        """
        self._check_grads(grads)
        if self.clip_norm is not None:
            total_norm, bad = _global_norm(grads)
            if bad is not None:
                raise self._refusal(bad, "contains NaN or inf")
            if not math.isfinite(total_norm):
                biggest = max((n for n in grads if np.size(grads[n])),
                              key=lambda n: float(np.max(np.abs(grads[n]))))
                raise self._refusal(biggest, "is so large that the global gradient norm "
                                             "exceeds the float64 range")
            grads = _scale_to_norm(grads, self.clip_norm, total_norm)

        with np.errstate(over="ignore"):   # a cast beyond the dtype's range gives inf: refused below
            usable = {name: np.asarray(grads[name], dtype=p.dtype) for name, p in self.params.items()}
        for name, g in usable.items():
            limit = self._grad_limit(g.dtype)
            # One read-only pass each for max and min (no temporary array). Written so that
            # NaN fails the test too: every comparison with NaN is False.
            if g.size and not (float(g.max()) <= limit and float(g.min()) >= -limit):
                raise self._refusal(name, self._describe_bad(grads[name], g.dtype, limit))
        return usable

    def _check_grads(self, grads):
        """TypeError / ValueError unless `grads` is a dict of real arrays with exactly the
        keys and shapes of self.params."""
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict {{name: ndarray}}, got {type(grads).__name__}")
        missing = [k for k in self.params if k not in grads]
        unexpected = [k for k in grads if k not in self.params]
        if missing or unexpected:
            raise ValueError(
                "grads must have exactly the same keys as params; "
                f"missing: {missing}, unexpected: {unexpected}"
            )
        for name, p in self.params.items():
            g = np.asarray(grads[name])
            if not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
                raise TypeError(f"gradient {name!r} must be real numbers, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(
                    f"gradient {name!r} has shape {g.shape}, but the parameter has shape {p.shape}"
                )

    def _describe_bad(self, g, dtype, limit):
        """What is wrong with a gradient that failed the limit test (the failure path only)."""
        g = np.asarray(g)
        if not np.all(np.isfinite(g)):
            return "contains NaN or inf"
        biggest = float(np.max(np.abs(g.astype(np.float64))))
        if biggest > _largest(dtype):
            return f"has an entry of magnitude {biggest:.3g}, beyond the {dtype.name} range"
        return (f"has an entry of magnitude {biggest:.3g}; {type(self).__name__} can apply at most "
                f"{limit:.3g} to {dtype.name} parameters without overflowing")

    def _refusal(self, name, what):
        return FloatingPointError(
            f"gradient {name!r} {what}; nothing was updated. Training has probably diverged "
            "or the gradients are badly scaled: lower the learning rate (lr) or clip the "
            "gradients (clip_norm, e.g. 10; --clip-norm on the command line)."
        )

    def _grad_limit(self, dtype):
        """The largest gradient magnitude the update can use in `dtype` without overflow."""
        raise NotImplementedError

    def _update(self, name, p, g):
        raise NotImplementedError

    # ------------------------------------------------------------------ saving and restoring

    def state_dict(self):
        """Everything needed to resume: {"arrays": {...}, "scalars": {...}}.

        - arrays: {"<buffer>.<param name>": ndarray}, e.g. "m.enc.h0.W".
          These are copies, so later steps do not change a saved state.
        - scalars: plain Python numbers/strings (JSON-serialisable): the
          optimiser type, step count t, lr, clip_norm and the hyperparameters.
        """
        arrays = {}
        for buffer_name, buffers in self.state.items():
            for name, buf in buffers.items():
                arrays[f"{buffer_name}.{name}"] = buf.copy()
        scalars = {"type": type(self).__name__}
        scalars.update({name: getattr(self, name) for name in self.SCALARS})
        return {"arrays": arrays, "scalars": scalars}

    def load_state_dict(self, state):
        """Restore a state produced by state_dict(), copying into the existing
        buffers in place.

        All the scalars are restored too, *including lr*: the resumed optimiser
        is the one that was saved. To change the learning rate on resume, set
        `opt.lr` after calling this.

        Everything is checked before anything is changed, so a refused state
        leaves the optimiser exactly as it was. A ValueError lists every
        problem: a wrong optimiser type; missing or unexpected scalars or
        arrays; a scalar outside its valid range (the checks of __init__);
        an array of the wrong shape or dtype (exact match: casting would break
        bit-for-bit resumption), with NaN or inf, or (Adam) a negative `v`.
        """
        if not (
            isinstance(state, dict)
            and isinstance(state.get("arrays"), dict)
            and isinstance(state.get("scalars"), dict)
        ):
            raise ValueError('state must be a dict with keys "arrays" and "scalars"')
        arrays, scalars = state["arrays"], state["scalars"]

        problems = []
        if scalars.get("type") != type(self).__name__:
            problems.append(
                f"state is for optimiser type {scalars.get('type')!r}, not {type(self).__name__!r}"
            )
        checked = {}
        for name, check_value in self.SCALARS.items():
            if name not in scalars:
                problems.append(f"missing scalar {name!r}")
                continue
            try:
                checked[name] = check_value(scalars[name], name)
            except (TypeError, ValueError) as exc:
                problems.append(str(exc))
        unexpected_scalars = [k for k in scalars if k != "type" and k not in self.SCALARS]
        if unexpected_scalars:
            problems.append(f"unexpected scalars: {unexpected_scalars}")

        targets = {f"{buffer_name}.{name}": buf            # "m.enc.W" -> the live buffer to copy into
                   for buffer_name, buffers in self.state.items() for name, buf in buffers.items()}
        problems += check.array_mismatches(targets, arrays, check_values=self._value_problems)
        if problems:
            raise ValueError("cannot load optimiser state:\n  " + "\n  ".join(problems))

        for key, buf in targets.items():
            np.copyto(buf, arrays[key])
        self._set_scalars(checked)

    def _value_problems(self, key, arr):
        """What is wrong with the values of ``arr``, the new content of state buffer ``key``
        (shape and dtype already match): a list of messages."""
        return [] if np.all(np.isfinite(arr)) else [f"array {key!r} contains NaN or inf"]


class SGD(Optimizer):
    """Stochastic gradient descent with classical (heavy-ball) momentum.

    For each parameter p with gradient g, keeping a velocity v (starts at 0):

        v = momentum * v - lr * g
        p = p + v

    The velocity is a running, exponentially-decaying sum of past steps, so
    directions the gradient keeps agreeing on speed up, and directions where
    it flips sign cancel out. momentum=0 gives plain SGD: p = p - lr * g.

    A step refuses gradients with lr * |g| > (1 - momentum) * sqrt(max / 2)
    (max: the largest number of the parameters' dtype; see `_grad_limit`).

    params: dict {name: array} of live, floating-point parameter arrays, any shapes; lr: the
    learning rate, >= 0; momentum: in [0, 1); clip_norm: None, or clip the global gradient norm
    to this value first.
    """

    SCALARS = {**Optimizer.SCALARS, "momentum": _number(**_UNIT_INTERVAL)}

    def __init__(self, params, lr, momentum=0.9, clip_norm=None):
        super().__init__(params, lr, clip_norm, momentum=momentum)
        self.state = {"velocity": self._zeros_like_params()}

    def _grad_limit(self, dtype):
        # |v| <= momentum |v| + lr |g|: with lr |g| <= (1 - momentum) V the velocity, a
        # geometric sum of the lr g, never exceeds V. With V = sqrt(max / 2) (1.3e19 in
        # float32, as Adam's limit) a parameter would need ~1e19 steps to overflow, and a
        # single step larger than that is divergence anyway.
        if self.lr == 0:
            return _largest(dtype)
        return min(_largest(dtype), (1 - self.momentum) * math.sqrt(_largest(dtype) / 2) / self.lr)

    def _update(self, name, p, g):
        v = self.state["velocity"][name]
        v *= self.momentum
        v -= self.lr * g
        p += v


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1), with bias correction.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        m = beta1 * m + (1 - beta1) * g          # running mean of g
        v = beta2 * v + (1 - beta2) * g**2       # running mean of g squared
        m_hat = m / (1 - beta1**t)               # undo the bias towards 0
        v_hat = v / (1 - beta2**t)               #   (m and v start at 0)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    Dividing by sqrt(v_hat) makes the step size roughly lr in every
    coordinate, whatever the scale of its gradient. On the very first step
    m_hat = g and v_hat = g**2, so each coordinate moves by lr * sign(g)
    (slightly less when |g| is comparable to eps).

    g**2 must fit in the parameters' dtype, so a step refuses gradients above
    sqrt(max / 2): about 1.3e19 for float32 and 9.5e153 for float64 (see
    `_grad_limit`; clip_norm keeps gradients far below that).

    params: dict {name: array} of live, floating-point parameter arrays, any shapes; lr: the
    learning rate, >= 0; beta1, beta2: decay rates of the two running means, in [0, 1); eps: a
    small positive number that keeps the division finite; clip_norm: None, or clip the global
    gradient norm to this value first.
    """

    SCALARS = {
        **Optimizer.SCALARS,
        "beta1": _number(**_UNIT_INTERVAL),
        "beta2": _number(**_UNIT_INTERVAL),
        "eps": _number(low=0.0, low_inclusive=False),
    }

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, clip_norm=None):
        super().__init__(params, lr, clip_norm, beta1=beta1, beta2=beta2, eps=eps)
        self.state = {"m": self._zeros_like_params(), "v": self._zeros_like_params()}
        self._scratch = {}  # work buffers, not state: never saved

    def _grad_limit(self, dtype):
        # _update forms g*g in the dtype before scaling it by (1 - beta2), so the exact
        # limit of that product is sqrt(max). Half of it, g*g <= max/2, also keeps
        # v = beta2 v + (1 - beta2) g*g <= (beta2 + (1 - beta2)/2) max < max from any
        # finite v, with margin for the rounding of beta2 in float32.
        return math.sqrt(_largest(dtype) / 2)

    def _update(self, name, p, g):
        # The class docstring's five lines are numerics.adam_update_textbook; the fused form computes
        # the same step with the bias corrections folded into two scalars, in one scratch buffer per
        # parameter that is reused every step (no allocation).
        scratch = self._scratch.get(name)
        if scratch is None:
            scratch = self._scratch[name] = np.empty_like(p)
        adam_update_fused(p, g, self.state["m"][name], self.state["v"][name], self.t,
                          self.lr, self.beta1, self.beta2, self.eps, scratch)

    def _value_problems(self, key, arr):
        problems = super()._value_problems(key, arr)
        if not problems and key.startswith("v.") and np.any(arr < 0):
            problems.append(f"array {key!r} has negative entries (v is a running mean of squares)")
        return problems
