"""Fast numerics, each beside the textbook formula it computes.

A ``*_textbook`` function is the formula as the derivation prints it; read it first. The function
after it computes the same number the way the package does, because the textbook form either fails
somewhere (overflow, cancellation: each textbook docstring says where) or costs more passes over
memory. tests/test_numerics.py holds every fast function to its textbook one where that one is
accurate, and to extended-precision references everywhere else.

    textbook                               fast (what the package calls)
    log1p_textbook(e)  = log(1 + e)        log1p_unit(e), for e in [0, 1]
    softplus_textbook(x) = log(1 + e^x)    softplus(x)                  Eq. (B5), docs/backprop.md
    sigmoid_textbook(x) = 1 / (1 + e^-x)   sigmoid(x)                   Eq. (B6), docs/backprop.md
                                           softplus_and_sigmoid(x): both from one exponential
    adam_update_textbook(...)              adam_update_fused(...)       Kingma & Ba (2015), Algorithm 1

The elementwise functions take an array of any shape and return one of the same shape and dtype
(float32 stays float32). softplus and sigmoid are the costliest elementwise steps of a Bernoulli
VAE; the measured costs behind the fast forms are in benchmarks/README.md ("Where the time goes").
"""

import math

import numpy as np

__all__ = [
    "log1p_textbook", "log1p_unit",
    "softplus_textbook", "softplus",
    "sigmoid_textbook", "sigmoid",
    "softplus_and_sigmoid",
    "adam_update_textbook", "adam_update_fused",
]


# ---------------------------------------------------------------------------
# log(1 + e) for e in [0, 1]
# ---------------------------------------------------------------------------

def log1p_textbook(e):
    """log(1 + e), as written.

    Rounding 1 + e moves it by up to eps/2 (float64 eps = 2.2e-16), which moves the log by up to
    eps/2 / (1 + e): a relative error of at most (eps/2) / log(1 + e), plus half an ulp for the log.
    That is at most 2.7 units in the last place (ulps) for e >= 1/4, so the textbook form is
    accurate there. It fails by cancellation for small e: the relative error grows like eps / (2e),
    and for e < eps / 2 the sum rounds to 1 and the result is 0 instead of about e.
    """
    return np.log(1 + e)


def log1p_unit(e):
    """log(1 + e) for e in [0, 1] (an array of any shape), as accurate as np.log1p.

    u = fl(1 + e) is 1 + e plus a rounding error d = (u - 1) - e, which floating point computes
    exactly (both subtractions are exact, by Sterbenz's lemma). Then
        log(1 + e) = log(u - d) = log(u) - d / u    up to (d/u)^2 / 2, far below one ulp.
    For e below the rounding unit, u = 1 and d = -e, so the result is e itself: the case
    log1p_textbook gets wrong (docs/backprop.md).

    Why not np.log1p: NumPy evaluates np.log1p one element at a time unless it can dispatch to its
    AVX-512 (SVML) kernels: 10 ns per element against 2 ns for np.log on the benchmark machine
    (benchmarks/README.md), while this form costs about two np.log on any CPU. Where NumPy has the
    AVX-512 kernel, np.log1p is the faster one (0.30 against 0.65 ns per float32 element, measured
    for issue 12); the form is kept there too, so that results do not depend on the CPU.
    Overwrites nothing: e is read only.
    """
    u = e + 1
    d = u - 1
    d -= e
    d /= u
    out = np.log(u, out=u)
    out -= d
    return out


# ---------------------------------------------------------------------------
# softplus and sigmoid, both from e = exp(-|x|)
#
# The fast forms write both functions with e = exp(-|x|), in [0, 1]: the exponent is never positive,
# so nothing overflows for any x, and a Bernoulli likelihood that needs both (the log-likelihood and
# its gradient) computes the exponential once (softplus_and_sigmoid). A branch on the sign of x is
# taken by multiplying with 0/1 masks: np.where or masked copies cost about 10 times as much
# (benchmarks/README.md), and the products are exact (x * 1 = x, x * 0 = 0, x + 0 = x).
# ---------------------------------------------------------------------------

def _exp_neg_abs(x):
    """e = exp(-|x|), in [0, 1]; a new array."""
    e = np.abs(x)
    np.negative(e, out=e)
    return np.exp(e, out=e)


def softplus_textbook(x):
    """softplus(x) = log(1 + exp(x)), as written.   Eq. (B5), docs/backprop.md

    Accurate to a few ulps for x >= -1 until exp(x) overflows. Fails at both ends: exp(x) overflows
    to inf for x > 709 in float64 (x > 88.7 in float32), and for negative x the sum 1 + exp(x)
    cancels as in log1p_textbook: the relative error grows like eps e^-x, and for x < -37 (float64;
    -16.6 in float32) the result is 0 instead of about e^x (x = -50: 0 instead of 1.9e-22).
    """
    return np.log(1 + np.exp(x))


def _softplus_from(x, e):
    """softplus(x) = max(x, 0) + log1p(e), given e = exp(-|x|)."""
    out = log1p_unit(e)
    out += np.maximum(x, 0)
    return out


def softplus(x):
    """softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)).   Eq. (B5), docs/backprop.md

    The two forms are equal because 1 + e^x = e^x (1 + e^-x). In the second, exp never sees a
    positive argument, so nothing overflows for large x, and log1p_unit keeps full precision for
    very negative x, where softplus_textbook returns 0. Accurate to 4 ulps wherever the result is a
    normal number (tests/test_numerics.py); inf -> inf, -inf -> 0, NaN -> NaN.
    """
    return _softplus_from(x, _exp_neg_abs(x))


def sigmoid_textbook(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), as written.   Eq. (B6), docs/backprop.md

    Accurate to a few ulps for every x where exp(-x) is finite: 1 + exp(-x) adds two positive
    numbers, so nothing cancels. For x < -709 (float64; -88.7 in float32) exp(-x) overflows: NumPy
    warns (an error under np.errstate(over="raise")) and the result is 0, where the true value is
    a subnormal number down to x = -745. It also needs its own exponential: a Bernoulli likelihood
    that takes it with softplus_textbook pays for two.
    """
    return 1 / (1 + np.exp(-x))


def _sigmoid_from(x, e):
    """sigmoid(x) given e = exp(-|x|): 1/(1 + e) for x >= 0 and e/(1 + e) for x < 0, the two
    forms of 1/(1 + exp(-x)) that never overflow (multiply 1/(1 + e^-x) by e^x / e^x for x < 0).
    The branch is taken by 0/1 masks, which keeps a NaN input NaN."""
    r = e + 1
    np.reciprocal(r, out=r)              # sigmoid(|x|)
    neg = np.signbit(x)
    out = e * r                          # sigmoid(-|x|)
    out *= neg
    r *= ~neg
    out += r
    return out


def sigmoid(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), computed from e = exp(-|x|).   Eq. (B6), docs/backprop.md

    Equal to sigmoid_textbook to 4 ulps wherever that one is finite, and never overflows
    (x = -1e4 gives 0 without a warning); its exponential can be shared with softplus
    (softplus_and_sigmoid). inf -> 1, -inf -> 0, NaN -> NaN.
    """
    return _sigmoid_from(x, _exp_neg_abs(x))


def softplus_and_sigmoid(x):
    """(softplus(x), sigmoid(x)) from one exponential, bit for bit equal to the two functions.
    Eq. (B5), docs/backprop.md: sigmoid is softplus's derivative, so a Bernoulli likelihood
    needs both, for its value (Eq. L1) and its gradient (Eq. L2), docs/distributions.md."""
    e = _exp_neg_abs(x)
    return _softplus_from(x, e), _sigmoid_from(x, e)


# ---------------------------------------------------------------------------
# One step of Adam
# ---------------------------------------------------------------------------

def adam_update_textbook(p, g, m, v, t, lr, beta1, beta2, eps):
    """One Adam step, Kingma & Ba (2015), Algorithm 1, line by line; updates p, m, v in place.

        m     = beta1 m + (1 - beta1) g          running mean of g
        v     = beta2 v + (1 - beta2) g^2        running mean of g^2
        m_hat = m / (1 - beta1^t)                undo the bias towards 0 (m and v start at 0)
        v_hat = v / (1 - beta2^t)
        p     = p - lr m_hat / (sqrt(v_hat) + eps)

    p, g, m, v: arrays of one shape and dtype; t >= 1: the number of this step; lr, beta1, beta2,
    eps: Python floats. Accurate, but every operation allocates a temporary of p's size and m_hat and
    v_hat cost a pass over memory each: 16 passes and a dozen allocations per parameter array,
    against adam_update_fused's 12 passes and none. For the default model's 652,824 float32
    parameters that is 7.7-9.3 ms per step against 0.74-1.1 ms (measured for issue 12).
    """
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


def adam_update_fused(p, g, m, v, t, lr, beta1, beta2, eps, scratch=None):
    """adam_update_textbook with the bias corrections folded into two scalars; updates p, m, v in
    place. Kingma & Ba (2015), Algorithm 1, in the form of the end of their Section 2.

    With c1 = 1 - beta1^t and c2 = sqrt(1 - beta2^t),

        lr m_hat / (sqrt(v_hat) + eps) = lr (m / c1) / (sqrt(v) / c2 + eps)
                                       = step m / (sqrt(v) + eps_hat),
        step = lr c2 / c1,   eps_hat = eps c2,

    so the bias corrections cost two scalar operations instead of two passes over the array. Every
    intermediate goes into ``scratch`` (an array like p, reused step after step; a new one if None):
    12 passes over memory, no allocation. Adam.step spends most of its time here (1.8-2.0 ms for the
    default model's 652,824 float32 parameters in benchmarks/README.md; the textbook form takes
    about 8 times as long, adam_update_textbook).

    m and v come out bit for bit as in adam_update_textbook (the same operations in the same order).
    The step differs by rounding only: each form rounds it about six times, by at most half an ulp
    each, so the two agree to 6 ulps of the step (tests/test_numerics.py allows 8; measured 3.3).
    Returns scratch.
    """
    if scratch is None:
        scratch = np.empty_like(p)
    m *= beta1
    np.multiply(g, 1 - beta1, out=scratch)
    m += scratch
    v *= beta2
    np.multiply(g, g, out=scratch)
    scratch *= 1 - beta2
    v += scratch
    c2 = math.sqrt(1 - beta2**t)
    step = lr * c2 / (1 - beta1**t)
    np.sqrt(v, out=scratch)
    scratch += eps * c2
    np.divide(m, scratch, out=scratch)
    scratch *= step
    p -= scratch
    return scratch
