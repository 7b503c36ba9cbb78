"""numpyvae.numerics: every fast function against its textbook formula where that one is accurate,
and against extended-precision references where it is not.

Errors are counted in units in the last place (ulps) of the dtype, relative to the reference."""

import warnings

import numpy as np
import pytest

from numpyvae.numerics import (adam_update_fused, adam_update_textbook, log1p_textbook, log1p_unit,
                               sigmoid, sigmoid_textbook, softplus, softplus_and_sigmoid,
                               softplus_textbook)

DTYPES = [np.float32, np.float64]


def _ulps(value, reference, dtype):
    """|value - reference| in units of the last place of dtype, relative to the reference (the
    smallest normal number stands in for a zero or subnormal reference)."""
    reference = np.asarray(reference, dtype=np.longdouble)
    ref = np.abs(reference).clip(min=np.finfo(dtype).tiny)
    return np.abs(value.astype(np.longdouble) - reference) / ref / np.finfo(dtype).eps


def _largest_exp_argument(dtype):
    """Just below log(max) of the dtype: 709 for float64, 88 for float32."""
    return float(np.floor(np.log(np.finfo(dtype).max)))


# ------------------------------------------------------------------ log(1 + e), e in [0, 1]

@pytest.mark.parametrize("dtype", DTYPES)
def test_log1p_unit_equals_the_textbook_form_where_that_is_accurate(dtype):
    # For e >= 1/4 the textbook log(1 + e) is within 2.7 ulps (its docstring), log1p_unit within 2
    # (the next test): 4 ulps apart at most (measured: 2.0).
    e = np.linspace(0.25, 1.0, 20001).astype(dtype)
    fast = log1p_unit(e)
    assert fast.dtype == dtype
    assert _ulps(fast, log1p_textbook(e), dtype).max() <= 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_log1p_unit_is_accurate_where_the_textbook_form_cancels(dtype):
    e = np.concatenate([np.logspace(-30, 0, 3001), [0.0]]).astype(dtype)
    reference = np.log1p(e.astype(np.longdouble))
    assert _ulps(log1p_unit(e), reference, dtype).max() <= 2
    # The reason it exists: 1 + e rounds to 1 for e below half an ulp, and log gives 0, not e.
    tiny = e[(e > 0) & (e < np.finfo(dtype).eps / 4)]
    assert tiny.size and np.all(log1p_textbook(tiny) == 0) and np.array_equal(log1p_unit(tiny), tiny)


# ------------------------------------------------------------------ softplus, Eq. (B5), docs/backprop.md

@pytest.mark.parametrize("dtype", DTYPES)
def test_softplus_equals_the_textbook_form_where_that_is_accurate(dtype):
    # x >= -1 (no cancellation in 1 + e^x) and below exp's overflow: each form is within about
    # 2 ulps of the truth, so 4 ulps apart at most (measured: 2.2).
    top = _largest_exp_argument(dtype)
    x = np.concatenate([np.linspace(-1, top, 100001), np.logspace(-12, np.log10(top), 1001),
                        -np.logspace(-12, 0, 1001)]).astype(dtype)
    assert _ulps(softplus(x), softplus_textbook(x), dtype).max() <= 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_softplus_textbook_fails_where_softplus_does_not(dtype):
    top = _largest_exp_argument(dtype)
    x = np.array([-50.0, 2 * top], dtype=dtype)
    with np.errstate(over="ignore"):
        textbook = softplus_textbook(x)
    assert textbook[0] == 0 and textbook[1] == np.inf          # cancellation, overflow
    np.testing.assert_allclose(softplus(x), [np.exp(-50.0), 2 * top], rtol=4 * np.finfo(dtype).eps)


def test_softplus_is_stable():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    y = softplus(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [0.0, np.exp(-50.0), np.log(2.0), 50.0, 1e4], rtol=1e-12, atol=1e-300)
    assert softplus(np.float32([1e4, -1e4])).dtype == np.float32


# ------------------------------------------------------------------ sigmoid, Eq. (B6), docs/backprop.md

@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_equals_the_textbook_form_wherever_that_is_finite(dtype):
    # 1 + exp(-x) adds positive numbers: the textbook form is accurate while exp(-x) is finite,
    # and the two agree to 4 ulps (measured: 2.7).
    top = _largest_exp_argument(dtype)
    x = np.concatenate([np.linspace(-top, top, 200001), np.logspace(-12, np.log10(top), 1001),
                        -np.logspace(-12, np.log10(top), 1001), [0.0]]).astype(dtype)
    fast = sigmoid(x)
    assert fast.dtype == dtype
    assert _ulps(fast, sigmoid_textbook(x), dtype).max() <= 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_textbook_overflows_where_sigmoid_does_not(dtype):
    x = np.array([-2 * _largest_exp_argument(dtype)], dtype=dtype)
    with pytest.warns(RuntimeWarning, match="overflow"):
        sigmoid_textbook(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sigmoid(x)[0] == 0


# ------------------------------------------------------------------ both from one exponential

@pytest.mark.parametrize("dtype", DTYPES)
def test_softplus_and_sigmoid_are_accurate(dtype):
    # References in np.longdouble (64-bit mantissa on x86), from the textbook formulas, which
    # are accurate there because the exponent is kept non-positive by hand. Bound: 4 ulps. The
    # log1p correction in numpyvae.numerics matters: without it, log(1 + e) near x = -12 (float32)
    # is off by hundreds of ulps, and at x < -17 it returns 0 instead of about e^x.
    x = np.concatenate([np.linspace(-100, 100, 40001), -np.logspace(-12, 3, 301),
                        np.logspace(-12, 3, 301), [0.0, -0.0]]).astype(dtype)
    if dtype == np.float32:
        x = x[np.abs(x) < 85]     # keep e^x normal in float32 (its subnormals lose digits by design)
    xl = x.astype(np.longdouble)
    e = np.exp(-np.abs(xl))
    ref_softplus = np.maximum(xl, 0) + np.log1p(e)
    ref_sigmoid = np.where(xl >= 0, 1 / (1 + e), e / (1 + e))
    sp, sig = softplus_and_sigmoid(x)
    assert sp.dtype == dtype and sig.dtype == dtype
    assert _ulps(sp, ref_softplus, dtype).max() <= 4
    assert _ulps(sig, ref_sigmoid, dtype).max() <= 4
    np.testing.assert_array_equal(sp, softplus(x))
    np.testing.assert_array_equal(sig, sigmoid(x))


def test_softplus_and_sigmoid_at_the_ends():
    x = np.array([-np.inf, -1e4, 1e4, np.inf, np.nan])
    sp, sig = softplus_and_sigmoid(x)
    np.testing.assert_array_equal(sp[:4], [0.0, 0.0, 1e4, np.inf])
    np.testing.assert_array_equal(sig[:4], [0.0, 0.0, 1.0, 1.0])
    assert np.isnan(sp[4]) and np.isnan(sig[4])   # a NaN stays visible, never becomes a number


# ------------------------------------------------------------------ Adam, Kingma & Ba (2015), Algorithm 1

HYPER = [dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
         dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6),
         dict(lr=0.3, beta1=0.0, beta2=0.5, eps=1e-3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", HYPER)
def test_adam_fused_equals_the_textbook_update(dtype, hyper):
    """m and v bit for bit; the step to 8 ulps. Each form rounds the step about six times by at most
    half an ulp, so they agree to 6 ulps (measured: 3.3). Gradients span 1e-10 to 1e3, so sqrt(v_hat)
    runs from far below eps to far above it: a fused eps without its factor sqrt(1 - beta2^t), or a
    wrong bias correction, is off by far more than 8 ulps on the first steps."""
    rng = np.random.default_rng(0)
    shape = (60, 40)
    m_text, v_text = np.zeros(shape, dtype), np.zeros(shape, dtype)
    m_fused, v_fused = m_text.copy(), v_text.copy()
    scratch = np.empty(shape, dtype)
    for t in range(1, 21):
        g = (10.0 ** rng.uniform(-10, 3, size=shape) * rng.standard_normal(shape)).astype(dtype)
        g[0, 0] = 0.0
        # p starts at 0 each step, so p ends at minus the step itself, unrounded by p's own scale.
        p_text, p_fused = np.zeros(shape, dtype), np.zeros(shape, dtype)
        adam_update_textbook(p_text, g, m_text, v_text, t, **hyper)
        assert adam_update_fused(p_fused, g, m_fused, v_fused, t, scratch=scratch, **hyper) is scratch
        assert p_fused.dtype == dtype and m_fused.dtype == dtype and v_fused.dtype == dtype
        assert np.array_equal(m_fused, m_text) and np.array_equal(v_fused, v_text), t
        assert np.array_equal(p_fused == 0, p_text == 0)
        moved = p_text != 0
        assert _ulps(p_fused[moved], p_text[moved], dtype).max() <= 8, t


def test_adam_fused_needs_no_scratch_and_writes_only_p_m_v():
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    m, v = 0.1 * rng.standard_normal((5, 3)), rng.random((5, 3))
    given = [a.copy() for a in (p, g, m, v)]
    with_scratch = [a.copy() for a in (p, g, m, v)]
    adam_update_fused(*with_scratch, 3, 1e-2, 0.9, 0.999, 1e-8, scratch=np.empty((5, 3)))
    adam_update_fused(p, g, m, v, 3, 1e-2, 0.9, 0.999, 1e-8)
    for got, want in zip((p, g, m, v), with_scratch):
        assert np.array_equal(got, want)
    assert np.array_equal(g, given[1])                           # the gradient is read only
    assert not np.array_equal(p, given[0]) and not np.array_equal(m, given[2])
