"""Numerical gradient checking: the test every hand-written backward pass must pass.

The analytic gradient from a backward pass is compared with central differences
(Eq. (C1), docs/gradcheck.md), for a scalar function f of an array x:

    df/dx_i  ~=  ( f(x + h e_i) - f(x - h e_i) ) / (2 h)

whose truncation error is h^2 f''' / 6 (f''' along e_i) and whose rounding error is about
u |f| / h, u = 1.1e-16 the unit roundoff of float64. The default h = 1e-5 balances the two in
float64 (measured on the VAE tests: the worst relative error is 1e-7 at h = 1e-6, 8e-9 at
h = 1e-5), so a correct gradient agrees to roughly 1e-8.

Piecewise-linear units (ReLU) have kinks: if a pre-activation lies within h of 0, the
difference quotient straddles the kink and disagrees with either one-sided derivative.
Checks of ReLU networks therefore use inputs whose pre-activations keep clear of 0.

Relative error (Eq. (C2), docs/gradcheck.md): for arrays a (analytic) and n (numerical),

    rel_error(a, n) = max_i |a_i - n_i|  /  max( max_i |a_i|, max_i |n_i| )

i.e. the worst absolute deviation measured against the largest entry of either array
(0 when both are exactly zero; inf when either holds a NaN or inf). Unlike an element-wise ratio it does not blow up on
entries that are zero up to rounding, yet a wrong sign or a missing factor of 2 in any
entry that is not negligible next to the largest one gives an error of order 1.
Rules of thumb in float64: < 1e-7 correct; > 1e-4 almost certainly a bug.

Everything here works on any function of NumPy arrays; nothing is VAE-specific.
"""

import numpy as np

from ._validate import check_finite_number

__all__ = ["rel_error", "numerical_gradient", "numerical_gradient_array",
           "check_param_grads", "check_layer_backward"]


def rel_error(a, n):
    """Max-norm relative error between two arrays of the same shape, Eq. (C2), docs/gradcheck.md."""
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {n.shape}")
    if a.size == 0:
        return 0.0
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(n))):
        return float("inf")  # a NaN or inf gradient is never "close", even next to zeros
    scale = max(np.max(np.abs(a)), np.max(np.abs(n)))
    if scale == 0.0:
        return 0.0
    return float(np.max(np.abs(a - n)) / scale)


def _require_float64(x, what):
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 {what} (float32 rounding swamps the "
                        f"finite differences); got {getattr(x, 'dtype', type(x).__name__)}")


def numerical_gradient(f, x, h=1e-5):
    """Central-difference gradient of a scalar function ``f()`` with respect to the array
    ``x``, which ``f`` reads (x is perturbed in place, one entry at a time, then restored).
    Eq. (C1), docs/gradcheck.md. Returns an array shaped like x. ``h``: a positive finite step."""
    _require_float64(x, "arrays")
    h = check_finite_number(h, "h", low=0.0, low_inclusive=False)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        f_plus = float(f())
        x[i] = old - h
        f_minus = float(f())
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def numerical_gradient_array(f, x, dy, h=1e-5):
    """Central-difference gradient of the scalar sum(f(x) * dy) with respect to x, where
    ``f(x)`` returns an array shaped like ``dy``: the vector-Jacobian product a layer's
    backward(dy) must return."""
    return numerical_gradient(lambda: np.sum(f(x) * dy), x, h)


def check_param_grads(loss_fn, params, grads, h=1e-5):
    """Compare analytic ``grads`` with central differences of ``loss_fn()`` for every array
    in the dict ``params`` (which ``loss_fn`` must read live). Returns ``{name: rel_error}``."""
    missing = set(params) ^ set(grads)
    if missing:
        raise ValueError(f"params and grads have different keys: {sorted(missing)}")
    return {name: rel_error(grads[name], numerical_gradient(loss_fn, params[name], h))
            for name in params}


def check_layer_backward(layer, x, dy=None, rng=None, h=1e-5):
    """Check a layer's backward against finite differences of its forward.

    Uses the scalar sum(forward(x) * dy) with a random ``dy`` (drawn from ``rng``) unless
    one is given. Returns ``{"x": err, "W": err, ...}`` for the input and every parameter.
    """
    _require_float64(x, "inputs")
    if dy is None:
        if rng is None:
            rng = np.random.default_rng(0)
        dy = rng.standard_normal(layer.forward(x).shape)
    layer.forward(x)
    dx = layer.backward(dy)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def loss():
        return np.sum(layer.forward(x) * dy)

    errors = {"x": rel_error(dx, numerical_gradient(loss, x, h))}
    errors.update(check_param_grads(loss, layer.params, grads, h))
    return errors
