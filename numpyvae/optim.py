"""
Gradient-descent optimisers: SGD with momentum, and Adam.

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
"""

import math

import numpy as np


def clip_grad_norm(grads, max_norm):
    """
    Rescale gradients so that their global L2 norm is at most `max_norm`.

    The global norm treats all gradient arrays as one long vector:

        total_norm = sqrt( sum over arrays g of sum(g ** 2) )

    If total_norm > max_norm, every gradient is multiplied by the same factor
    max_norm / total_norm, which shrinks the step but keeps its direction.

    Inputs:
    - grads: dict {name: ndarray}. Never modified.
    - max_norm: positive float.

    Returns a tuple (clipped_grads, total_norm):
    - clipped_grads: a new dict. When scaling was needed it holds scaled
      copies (same dtypes as the inputs); otherwise it holds the input arrays
      themselves (no copy is made when nothing changes).
    - total_norm: float, the norm *before* clipping (useful for logging).

    Raises ValueError if max_norm is not a positive finite number, or if some
    gradient contains NaN or inf (clipping cannot repair those).
    """
    max_norm = float(max_norm)
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm}")

    # Accumulate in float64 so that large float32 gradients do not overflow
    # when squared; sort the names so the result does not depend on dict order.
    squared_sum = 0.0
    for name in sorted(grads):
        g = np.asarray(grads[name])
        squared_sum += float(np.sum(np.square(g, dtype=np.float64)))
        if not math.isfinite(squared_sum):
            raise ValueError(
                f"gradient {name!r} contains NaN or inf (or is too large to square); "
                "cannot clip it"
            )
    total_norm = math.sqrt(squared_sum)

    if total_norm <= max_norm:
        return dict(grads), total_norm

    # A Python float, so that `g * scale` keeps g's dtype (a NumPy float64
    # scalar would silently upcast float32 gradients to float64).
    scale = max_norm / total_norm
    clipped = {name: np.asarray(g) * scale for name, g in grads.items()}
    return clipped, total_norm


class Optimizer:
    """
    Shared plumbing for the optimisers: argument checks, gradient clipping,
    and saving/restoring state. Subclasses implement `_update(name, p, g)` and
    list their per-parameter state buffers in `self.state`.

    Attributes:
    - params: the dict of live parameter arrays (the same dict object the
      caller passed in; the optimiser never adds or replaces entries).
    - lr: learning rate; may be changed between steps (`opt.lr = 1e-4`).
    - clip_norm: None, or the max global gradient norm (see clip_grad_norm).
    - t: number of steps taken so far.
    - state: dict {buffer_name: {param_name: ndarray}}, e.g. state["m"]["enc.W"].
    """

    def __init__(self, params, lr, clip_norm=None):
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
        self.lr = lr
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise ValueError(f"clip_norm must be None or a positive number, got {clip_norm}")
        self.t = 0
        self.state = {}

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {value}")
        self._lr = value

    def _zeros_like_params(self):
        """One zero buffer per parameter, same shape and dtype (no upcast)."""
        return {name: np.zeros_like(p) for name, p in self.params.items()}

    def _check_grads(self, grads):
        """
        Raise ValueError unless `grads` has exactly the keys and shapes of
        self.params and contains only finite numbers. Runs *before* any update,
        so a bad gradient leaves the model and the optimiser state untouched.
        """
        if not isinstance(grads, dict):
            raise ValueError(f"grads must be a dict, got {type(grads).__name__}")
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
                raise ValueError(f"gradient {name!r} must be real numbers, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(
                    f"gradient {name!r} has shape {g.shape}, but the parameter has shape {p.shape}"
                )
            if not np.all(np.isfinite(g)):
                raise FloatingPointError(
                    f"gradient {name!r} contains NaN or inf; refusing to write it into the model"
                )

    def step(self, grads):
        """
        Take one optimisation step, updating every array in self.params in place.

        Inputs:
        - grads: dict {name: ndarray} with exactly the keys and shapes of params.
          Not modified.
        """
        self._check_grads(grads)
        if self.clip_norm is not None:
            grads, _ = clip_grad_norm(grads, self.clip_norm)
        self.t += 1
        for name, p in self.params.items():
            # Do the arithmetic in the parameter's dtype (float64 gradients
            # for a float32 model are rounded once, here).
            g = np.asarray(grads[name], dtype=p.dtype)
            self._update(name, p, g)

    def _update(self, name, p, g):
        raise NotImplementedError

    def _hyperparameters(self):
        """Subclass hyperparameters as plain Python numbers (JSON-safe)."""
        return {}

    def _set_hyperparameters(self, scalars):
        pass

    def state_dict(self):
        """
        Everything needed to resume: {"arrays": {...}, "scalars": {...}}.

        - arrays: {"<buffer>.<param name>": ndarray}, e.g. "m.enc.h0.W".
          These are copies, so later steps do not change a saved state.
        - scalars: plain Python numbers/strings (JSON-serialisable): the
          optimiser type, step count t, lr, clip_norm and the hyperparameters.
        """
        arrays = {}
        for buffer_name, buffers in self.state.items():
            for name, buf in buffers.items():
                arrays[f"{buffer_name}.{name}"] = buf.copy()
        scalars = {
            "type": type(self).__name__,
            "t": int(self.t),
            "lr": self.lr,
            "clip_norm": self.clip_norm,
        }
        scalars.update(self._hyperparameters())
        return {"arrays": arrays, "scalars": scalars}

    def load_state_dict(self, state):
        """
        Restore a state produced by state_dict(), copying into the existing
        buffers in place.

        All the scalars are restored too, *including lr*: the resumed optimiser
        is the one that was saved. To change the learning rate on resume, set
        `opt.lr` after calling this.

        Everything is checked before anything is changed; on a mismatch
        (wrong optimiser type, missing/unexpected/wrong-shape/wrong-dtype
        arrays, missing scalars) a ValueError lists all the problems.
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
        needed_scalars = ["t", "lr", "clip_norm", *self._hyperparameters()]
        missing_scalars = [k for k in needed_scalars if k not in scalars]
        if missing_scalars:
            problems.append(f"missing scalars: {missing_scalars}")

        targets = {}  # "m.enc.W" -> the live buffer to copy into
        for buffer_name, buffers in self.state.items():
            for name, buf in buffers.items():
                targets[f"{buffer_name}.{name}"] = buf
        missing = [k for k in targets if k not in arrays]
        unexpected = [k for k in arrays if k not in targets]
        if missing:
            problems.append(f"missing arrays: {missing}")
        if unexpected:
            problems.append(f"unexpected arrays: {unexpected}")
        for key, buf in targets.items():
            if key not in arrays:
                continue
            src = np.asarray(arrays[key])
            if src.shape != buf.shape:
                problems.append(f"{key!r} has shape {src.shape}, expected {buf.shape}")
            # Exact dtype match: casting would break bit-for-bit resumption.
            if src.dtype != buf.dtype:
                problems.append(f"{key!r} has dtype {src.dtype}, expected {buf.dtype}")
        if problems:
            raise ValueError("cannot load optimiser state:\n  " + "\n  ".join(problems))

        for key, buf in targets.items():
            np.copyto(buf, arrays[key])
        self.t = int(scalars["t"])
        self.lr = scalars["lr"]
        self.clip_norm = None if scalars["clip_norm"] is None else float(scalars["clip_norm"])
        self._set_hyperparameters(scalars)


class SGD(Optimizer):
    """
    Stochastic gradient descent with classical (heavy-ball) momentum.

    For each parameter p with gradient g, keeping a velocity v (starts at 0):

        v = momentum * v - lr * g
        p = p + v

    The velocity is a running, exponentially-decaying sum of past steps, so
    directions the gradient keeps agreeing on speed up, and directions where
    it flips sign cancel out. momentum=0 gives plain SGD: p = p - lr * g.

    Inputs:
    - params: dict {name: ndarray} of live, floating-point parameter arrays.
    - lr: learning rate (>= 0).
    - momentum: in [0, 1).
    - clip_norm: None, or clip the global gradient norm to this value first.
    """

    def __init__(self, params, lr, momentum=0.9, clip_norm=None):
        super().__init__(params, lr, clip_norm)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.state = {"velocity": self._zeros_like_params()}

    def _update(self, name, p, g):
        v = self.state["velocity"][name]
        v *= self.momentum
        v -= self.lr * g
        p += v

    def _hyperparameters(self):
        return {"momentum": self.momentum}

    def _set_hyperparameters(self, scalars):
        self.momentum = float(scalars["momentum"])


class Adam(Optimizer):
    """
    Adam (Kingma & Ba, 2015, Algorithm 1), with bias correction.

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

    Inputs:
    - params: dict {name: ndarray} of live, floating-point parameter arrays.
    - lr: learning rate (>= 0).
    - beta1, beta2: decay rates of the two running means, in [0, 1).
    - eps: small positive number that keeps the division finite.
    - clip_norm: None, or clip the global gradient norm to this value first.
    """

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, clip_norm=None):
        super().__init__(params, lr, clip_norm)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.state = {"m": self._zeros_like_params(), "v": self._zeros_like_params()}
        self._scratch = {}  # work buffers, not state: never saved

    def _update(self, name, p, g):
        m, v = self.state["m"][name], self.state["v"][name]
        tmp = self._scratch.get(name)
        if tmp is None:  # one reusable buffer per parameter: no allocation per step
            tmp = self._scratch[name] = np.empty_like(p)
        m *= self.beta1
        np.multiply(g, 1 - self.beta1, out=tmp)
        m += tmp
        v *= self.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - self.beta2
        v += tmp
        # m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)
        # equals step * m / (sqrt(v) + eps_hat) with the scalars below (Kingma & Ba 2015, Sec. 2):
        # the bias corrections cost two scalar operations instead of two passes over the array.
        c2 = math.sqrt(1 - self.beta2**self.t)
        step = self.lr * c2 / (1 - self.beta1**self.t)
        np.sqrt(v, out=tmp)
        tmp += self.eps * c2
        np.divide(m, tmp, out=tmp)
        tmp *= step
        p -= tmp

    def _hyperparameters(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _set_hyperparameters(self, scalars):
        self.beta1 = float(scalars["beta1"])
        self.beta2 = float(scalars["beta2"])
        self.eps = float(scalars["eps"])
