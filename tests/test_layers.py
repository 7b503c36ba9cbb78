"""Layers: each backward against finite differences, forward against its definition,
shapes and dtypes preserved for random sizes."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from numpyvae.gradcheck import check_layer_backward
from numpyvae.layers import (ACTIVATIONS, MLP, Head, Identity, Linear, ReLU, Sigmoid, SoftClip, Softplus,
                             Tanh, glorot_uniform, he_normal, make_activation, named)
from numpyvae.numerics import softplus

ACTS = ["tanh", "relu", "sigmoid", "softplus", "identity"]
# Each activation's definition written independently of numpyvae.layers.
REFERENCE = {
    "tanh": np.tanh,
    "relu": lambda x: np.where(x > 0, x, 0.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "identity": lambda x: x,
}


def test_linear_forward_is_affine():
    rng = np.random.default_rng(0)
    lin = Linear(4, 3, rng, dtype=np.float64)
    x = rng.standard_normal((6, 4))
    W, b = lin.params["W"], lin.params["b"]
    assert W.shape == (4, 3) and b.shape == (3,)
    expected = np.array([[sum(x[n, i] * W[i, j] for i in range(4)) + b[j] for j in range(3)]
                         for n in range(6)])
    np.testing.assert_allclose(lin.forward(x), expected, rtol=1e-12)


def test_linear_backward(grad_report):
    rng = np.random.default_rng(1)
    lin = Linear(5, 4, rng, dtype=np.float64)
    lin.params["b"][:] = rng.standard_normal(4)
    grad_report("layers.Linear", check_layer_backward(lin, rng.standard_normal((7, 5)), rng=rng))


@pytest.mark.parametrize("name", ACTS)
def test_activation_forward_matches_definition(name):
    x = np.linspace(-4, 4, 81).reshape(9, 9)
    np.testing.assert_allclose(make_activation(name).forward(x), REFERENCE[name](x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ACTS)
def test_activation_backward(name, grad_report):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5)) * 2
    if name == "relu":
        x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink (see numpyvae.gradcheck)
    grad_report(f"layers.{name}", check_layer_backward(make_activation(name), x, rng=rng))


@pytest.mark.parametrize("name", ["tanh", "relu", "sigmoid", "softplus"])
def test_mlp_backward(name, grad_report):
    rng = np.random.default_rng(3)
    mlp = MLP((5, 6, 4), name, rng, dtype=np.float64)
    for lin in mlp.linears:
        lin.params["b"][:] = rng.standard_normal(lin.out_features) * 0.5
    x = rng.standard_normal((8, 5))
    dy = rng.standard_normal((8, 4))
    mlp.forward(x)
    dx = mlp.backward(dy)
    grads = {k: v.copy() for k, v in mlp.grads.items()}
    from numpyvae.gradcheck import numerical_gradient, rel_error
    f = lambda: np.sum(mlp.forward(x) * dy)  # noqa: E731
    errors = {"x": rel_error(dx, numerical_gradient(f, x))}
    errors.update({k: rel_error(grads[k], numerical_gradient(f, p)) for k, p in mlp.params.items()})
    grad_report(f"layers.MLP({name})", errors)


def test_mlp_without_hidden_layers_is_identity():
    mlp = MLP((5,), "tanh", np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 5))
    assert mlp.forward(x) is x and mlp.backward(x) is x and mlp.params == {} and mlp.grads == {}


def test_named_gives_every_array_its_public_name_in_order():
    """named({prefix: layer}): an MLP's "h0.W" under "enc" is "enc.h0.W", a Linear's or a Head's
    "W" under "enc.mu" is "enc.mu.W"; the arrays are the layers' own (params) or their current
    gradients (grads), never copies."""
    rng = np.random.default_rng(0)
    mlp = MLP((4, 3, 2), "tanh", rng)
    layers = {"enc": mlp, "enc.mu": Linear(2, 1, rng), "enc.logvar": Head(Linear(2, 1, rng), SoftClip(-1.0, 1.0))}
    params = named(layers, "params")
    assert list(params) == ["enc.h0.W", "enc.h0.b", "enc.h1.W", "enc.h1.b",
                            "enc.mu.W", "enc.mu.b", "enc.logvar.W", "enc.logvar.b"]
    assert params["enc.h1.W"] is mlp.linears[1].params["W"]
    assert params["enc.logvar.b"] is layers["enc.logvar"].linear.params["b"]
    x = rng.standard_normal((5, 4))
    h = mlp.forward(x)
    layers["enc.mu"].forward(h)
    layers["enc.logvar"].forward(h)
    mlp.backward(layers["enc.mu"].backward(np.ones((5, 1))) + layers["enc.logvar"].backward(np.ones((5, 1))))
    grads = named(layers, "grads")
    assert list(grads) == list(params)
    assert grads["enc.h0.W"] is mlp.linears[0].grads["W"] and grads["enc.mu.b"] is layers["enc.mu"].grads["b"]
    assert all(grads[k].shape == params[k].shape for k in params)


def test_named_refuses_two_arrays_of_one_name():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'enc.h0.W'"):
        named({"enc": MLP((4, 3), "tanh", rng), "enc.h0": Linear(4, 3, rng)})
    with pytest.raises(ValueError, match="attr must be 'params' or 'grads'"):
        named({"enc": Linear(4, 3, rng)}, "cache")


def test_initialisers_have_their_variances():
    rng = np.random.default_rng(0)
    fan_in, fan_out = 400, 300
    g = glorot_uniform(fan_in, fan_out, rng)
    h = he_normal(fan_in, fan_out, rng)
    # Var U(-a, a) = a^2 / 3 = 2 / (fan_in + fan_out); N(0, 2/fan_in). 120k draws: the sample
    # variance has relative standard error about sqrt(2/120000) = 0.4% (x 1.1 for the uniform).
    assert abs(g.var() / (2 / (fan_in + fan_out)) - 1) < 0.02
    assert abs(h.var() / (2 / fan_in) - 1) < 0.02
    assert np.max(np.abs(g)) <= np.sqrt(6 / (fan_in + fan_out))


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'gelu'.*expected one of"):
        make_activation("gelu")


@given(n=st.integers(1, 7), d_in=st.integers(1, 6), d_out=st.integers(1, 6),
       dtype=st.sampled_from([np.float32, np.float64]), name=st.sampled_from(ACTS))
def test_shapes_and_dtypes_preserved(n, d_in, d_out, dtype, name):
    rng = np.random.default_rng(0)
    lin, act = Linear(d_in, d_out, rng, dtype=dtype), ACTIVATIONS[name]()
    x = rng.standard_normal((n, d_in)).astype(dtype)
    y = act.forward(lin.forward(x))
    assert y.shape == (n, d_out) and y.dtype == dtype
    dx = lin.backward(act.backward(np.ones_like(y)))
    assert dx.shape == x.shape and dx.dtype == dtype
    assert lin.grads["W"].dtype == dtype and lin.grads["b"].dtype == dtype


def test_backward_returns_fresh_gradients():
    rng = np.random.default_rng(0)
    lin = Linear(3, 2, rng, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    lin.forward(x)
    lin.backward(np.ones((4, 2)))
    first = lin.grads["W"]
    kept = first.copy()
    lin.backward(2 * np.ones((4, 2)))
    assert np.array_equal(first, kept), "an earlier gradient must not be overwritten"


def test_layer_classes_exported():
    for cls in (Tanh, ReLU, Sigmoid, Softplus, Identity):
        assert cls().forward(np.zeros((1, 1))).shape == (1, 1)


# ----------------------------------------------------------------- SoftClip, Eq. (B8), docs/backprop.md

def test_soft_clip_matches_its_definition():
    # The textbook form low + softplus(x - low) - softplus(x - high), with np.logaddexp for softplus,
    # is accurate in float64 for these moderate x (its rounding is about |low| * 1e-16).
    low, high = -3.0, 4.0
    x = np.linspace(-40, 40, 801)
    want = low + np.logaddexp(0, x - low) - np.logaddexp(0, x - high)
    np.testing.assert_allclose(SoftClip(low, high).forward(x), want, rtol=0, atol=1e-13)


def test_soft_clip_backward(grad_report):
    # Inputs below, inside and above (-2, 3), where the derivative ranges from ~0 to ~1.
    rng = np.random.default_rng(4)
    x = rng.uniform(-8, 9, size=(7, 6))
    grad_report("layers.SoftClip", check_layer_backward(SoftClip(-2.0, 3.0), x, rng=rng))


def test_bounded_head_backward(grad_report):
    """Head = Linear then SoftClip: its W, b and input gradients, with pre-activations on both
    sides of the bounds (the chain rule through (B8) and (B2))."""
    rng = np.random.default_rng(5)
    head = Head(Linear(5, 4, rng, dtype=np.float64), SoftClip(-1.0, 1.5))
    head.params["W"][:] = 2.0 * rng.standard_normal((5, 4))
    head.params["b"][:] = rng.standard_normal(4)
    x = rng.standard_normal((8, 5))
    pre = x @ head.params["W"] + head.params["b"]
    assert pre.min() < -1.0 and pre.max() > 1.5          # both tails are exercised
    assert head.params is head.linear.params             # the Linear's live arrays, keys "W" and "b"
    grad_report("layers.Head(SoftClip)", check_layer_backward(head, x, rng=rng))


@given(x=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=20),
       low=st.floats(-50, 10), width=st.floats(0.5, 60), dtype=st.sampled_from([np.float32, np.float64]))
def test_soft_clip_is_a_smooth_bound(x, low, width, dtype):
    """For any finite or infinite input: the output lies in [low, high], is finite, is
    non-decreasing in x, stays within e^-(x-low) + e^-(high-x) of x (plus rounding), and its
    derivative lies in [0, 1]; the dtype is kept."""
    high = low + width
    clip = SoftClip(low, high)
    x = np.sort(np.array(x, dtype=dtype))
    y = clip.forward(x)
    assert y.dtype == dtype and np.all(np.isfinite(y))
    ulp = np.finfo(dtype).eps * max(abs(low), abs(high))
    assert np.all(y >= low - ulp) and np.all(y <= high + ulp)
    assert np.all(np.diff(y) >= -ulp)
    mid = (x > low) & (x < high)
    xm = x[mid].astype(np.float64)
    bound = np.exp(-(xm - low)) + np.exp(-(high - xm)) + 4 * np.finfo(dtype).eps * np.maximum(np.abs(xm), 1)
    assert np.all(np.abs(y[mid] - xm) <= bound)
    dx = clip.backward(np.ones_like(x))
    assert dx.dtype == dtype and np.all((dx >= 0) & (dx <= 1))


def test_soft_clip_at_the_ends():
    clip = SoftClip(-30.0, 30.0)
    for dtype in (np.float32, np.float64):
        big = np.finfo(dtype).max
        x = np.array([-np.inf, -big, -1e4, 0.0, 1e4, big, np.inf, np.nan], dtype=dtype)
        y = clip.forward(x)
        np.testing.assert_array_equal(y[:7], np.array([-30, -30, -30, 0, 30, 30, 30], dtype=dtype))
        assert np.isnan(y[7])                       # a NaN stays visible
    # The textbook form gets the far end wrong: x + 30 and x - 30 round to the same float32 number,
    # and so does -30 + softplus(x + 30), so it returns 0 instead of high = +30.
    x = np.array([1e9], dtype=np.float32)
    assert (np.float32(-30) + softplus(x + np.float32(30)) - softplus(x - np.float32(30)))[0] == 0
    assert clip.forward(x)[0] == 30


def test_soft_clip_needs_ordered_finite_bounds():
    for low, high in [(1.0, 1.0), (2.0, 1.0), (float("nan"), 1.0), (0.0, float("inf"))]:
        with pytest.raises(ValueError, match="SoftClip needs finite bounds low < high"):
            SoftClip(low, high)
