"""Conv2d and ConvTranspose2d (docs/convolution.md): values against plain loops, gradients against
finite differences, the transposed convolution as the adjoint of the convolution, PyTorch's output
sizes and (when PyTorch is installed) PyTorch's numbers, argument errors, dtypes, bounded memory."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from numpyvae import layers
from numpyvae.gradcheck import check_layer_backward
from numpyvae.layers import (Conv2d, ConvTranspose2d, col2im, conv_output_size,
                             conv_transpose_output_size, im2col)

# (in_channels, out_channels, kernel_size, stride, padding, output_padding, height, width):
# strides 1-3, paddings 0-2, output paddings 0-2, square and non-square images, 1-3 channels.
CONFIGS = [
    (2, 3, 3, 1, 0, 0, 5, 6),
    (2, 3, 3, 2, 1, 1, 5, 6),
    (1, 2, 2, 2, 0, 1, 4, 7),
    (3, 2, 3, 2, 2, 0, 6, 5),
    (2, 2, 4, 3, 2, 2, 7, 5),
    (1, 3, 3, 1, 2, 0, 4, 5),
    (2, 1, 1, 1, 0, 0, 3, 4),
]


def make_pair(P, Q, F, s, p, op, seed=0, dtype=np.float64):
    """A Conv2d P -> Q and a ConvTranspose2d Q -> P with the same hyper-parameters and random biases
    (a zero bias would hide a bias gradient missing its sum)."""
    rng = np.random.default_rng(seed)
    conv = Conv2d(P, Q, F, stride=s, padding=p, rng=rng, dtype=dtype)
    up = ConvTranspose2d(Q, P, F, stride=s, padding=p, output_padding=op, rng=rng, dtype=dtype)
    conv.params["b"][:] = rng.standard_normal(Q)
    up.params["b"][:] = rng.standard_normal(P)
    return conv, up


# --------------------------------------------------------------------------- independent definitions

def direct_conv2d(x, W, b, stride, padding):
    """torch.nn.functional.conv2d's definition, one output pixel at a time:
    y[n, q, i, j] = b[q] + sum_{p, di, dj} W[q, p, di, dj] xp[n, p, stride i + di, stride j + dj]."""
    B, P, H, Wd = x.shape
    Q, _, F, _ = W.shape
    xp = np.zeros((B, P, H + 2 * padding, Wd + 2 * padding))
    xp[:, :, padding:padding + H, padding:padding + Wd] = x
    Ho, Wo = (H + 2 * padding - F) // stride + 1, (Wd + 2 * padding - F) // stride + 1
    y = np.zeros((B, Q, Ho, Wo))
    for n in range(B):
        for q in range(Q):
            for i in range(Ho):
                for j in range(Wo):
                    total = b[q]
                    for c in range(P):
                        for di in range(F):
                            for dj in range(F):
                                total += W[q, c, di, dj] * xp[n, c, stride * i + di, stride * j + dj]
                    y[n, q, i, j] = total
    return y


def direct_conv_transpose2d(x, W, b, stride, padding, output_padding):
    """torch.nn.functional.conv_transpose2d's definition as a scatter, one input pixel at a time:
    input pixel (i, j) adds x[n, p, i, j] W[p, q, di, dj] to output pixel
    (stride i + di - padding, stride j + dj - padding) when that pixel exists."""
    B, P, H, Wd = x.shape
    _, Q, F, _ = W.shape
    Ho = (H - 1) * stride - 2 * padding + F + output_padding
    Wo = (Wd - 1) * stride - 2 * padding + F + output_padding
    y = np.zeros((B, Q, Ho, Wo)) + b[:, None, None]
    for n in range(B):
        for c in range(P):
            for i in range(H):
                for j in range(Wd):
                    for q in range(Q):
                        for di in range(F):
                            for dj in range(F):
                                r, s = stride * i + di - padding, stride * j + dj - padding
                                if 0 <= r < Ho and 0 <= s < Wo:
                                    y[n, q, r, s] += x[n, c, i, j] * W[c, q, di, dj]
    return y


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("P, Q, F, s, p, op, H, W", CONFIGS)
def test_conv2d_forward_matches_direct_loops(P, Q, F, s, p, op, H, W):
    conv, _ = make_pair(P, Q, F, s, p, op)
    x = np.random.default_rng(1).standard_normal((2, P, H, W))
    expected = direct_conv2d(x, conv.params["W"], conv.params["b"], s, p)
    np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("P, Q, F, s, p, op, H, W", CONFIGS)
def test_conv_transpose2d_forward_matches_direct_loops(P, Q, F, s, p, op, H, W):
    conv, up = make_pair(P, Q, F, s, p, op)
    u = np.random.default_rng(1).standard_normal((2, Q) + conv.output_size(H, W))
    expected = direct_conv_transpose2d(u, up.params["W"], up.params["b"], s, p, op)
    np.testing.assert_allclose(up.forward(u), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("P, Q, F, s, p, op, H, W", CONFIGS)
def test_conv_transpose_is_the_adjoint_of_conv(P, Q, F, s, p, op, H, W):
    """<conv(x), u> = <x, convT(u)> with the same W and no bias, to rounding (Eq. (J7))."""
    conv, up = make_pair(P, Q, F, s, p, op)
    rng = np.random.default_rng(2)
    up.params["W"][...] = conv.params["W"]
    conv.params["b"][:] = 0.0
    up.params["b"][:] = 0.0
    H_up = conv_transpose_output_size(conv.output_size(H, W)[0], F, s, p, op)
    W_up = conv_transpose_output_size(conv.output_size(H, W)[1], F, s, p, op)
    x = rng.standard_normal((3, P, H_up, W_up))   # the size convT produces (output_padding included)
    y = conv.forward(x)
    u = rng.standard_normal(y.shape)
    lhs, rhs = np.sum(y * u), np.sum(x * up.forward(u))
    scale = np.sum(np.abs(x)) * np.max(np.abs(u)) * np.max(np.abs(conv.params["W"]))
    assert abs(lhs - rhs) <= 1e-13 * scale, (lhs, rhs)


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(3, 7),
       st.integers(3, 7))
def test_col2im_is_the_adjoint_of_im2col(P, F, s, p, H, W):
    """<im2col(x), X> = <x, col2im(X)> (Eq. (J6)): col2im adds back exactly what im2col copied."""
    rng = np.random.default_rng(3)
    assume(conv_output_size(min(H, W), F, s, p) >= 1)
    x = rng.standard_normal((2, P, H, W))
    X_of_x = im2col(x, F, s, p)
    X = rng.standard_normal(X_of_x.shape)
    lhs, rhs = np.sum(X_of_x * X), np.sum(x * col2im(X, x.shape, F, s, p))
    assert abs(lhs - rhs) <= 1e-12 * np.sum(np.abs(X)), (lhs, rhs)


def test_im2col_columns_are_patches():
    """Column (b, i, j) of im2col is the patch under output pixel (i, j) of image b, flattened
    like a filter W[q] (Eq. (J3))."""
    x = np.arange(2 * 2 * 5 * 4, dtype=np.float64).reshape(2, 2, 5, 4)
    X = im2col(x, 3, 2, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    Ho, Wo = conv_output_size(5, 3, 2, 1), conv_output_size(4, 3, 2, 1)
    assert X.shape == (2 * 3 * 3, 2 * Ho * Wo)
    for b in range(2):
        for i in range(Ho):
            for j in range(Wo):
                np.testing.assert_array_equal(X[:, (b * Ho + i) * Wo + j],
                                              xp[b, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].ravel())


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("P, Q, F, s, p, op, H, W", CONFIGS)
def test_conv2d_backward(P, Q, F, s, p, op, H, W, grad_report):
    conv, _ = make_pair(P, Q, F, s, p, op)
    rng = np.random.default_rng(4)
    errors = check_layer_backward(conv, rng.standard_normal((2, P, H, W)), rng=rng)
    assert set(errors) == {"x", "W", "b"}
    grad_report("layers.Conv2d", errors)


@pytest.mark.parametrize("P, Q, F, s, p, op, H, W", CONFIGS)
def test_conv_transpose2d_backward(P, Q, F, s, p, op, H, W, grad_report):
    conv, up = make_pair(P, Q, F, s, p, op)
    rng = np.random.default_rng(5)
    errors = check_layer_backward(up, rng.standard_normal((2, Q) + conv.output_size(H, W)), rng=rng)
    assert set(errors) == {"x", "W", "b"}
    grad_report("layers.ConvTranspose2d", errors)


@pytest.mark.parametrize("which", ["conv", "up"])
def test_backward_without_dx_gives_the_same_parameter_gradients(which):
    conv, up = make_pair(2, 3, 3, 2, 1, 1)
    layer = conv if which == "conv" else up
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, layer.in_channels, 5, 6))
    dy = rng.standard_normal(layer.forward(x).shape)
    dx = layer.backward(dy)
    full = dict(layer.grads)
    assert dx.shape == x.shape
    assert layer.backward(dy, need_dx=False) is None
    for k in full:
        np.testing.assert_array_equal(layer.grads[k], full[k])
        assert layer.grads[k] is not full[k], "each backward call gives fresh gradient arrays"


# --------------------------------------------------------------------------- shapes, dtypes, errors

@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.integers(1, 3), st.integers(0, 3),
       st.data())
def test_output_sizes_are_pytorchs(H, W, F, s, p, data):
    """Output sizes as in PyTorch's documentation of Conv2d and ConvTranspose2d (Eqs. (J2), (J8)),
    and the convolution maps the transposed convolution's output back to its input size."""
    op = data.draw(st.integers(0, s - 1))
    conv, up = make_pair(1, 2, F, s, p, op)
    torch_conv = ((H + 2 * p - F) // s + 1, (W + 2 * p - F) // s + 1)
    if min(torch_conv) < 1:
        with pytest.raises(ValueError, match="x of spatial size"):
            conv.forward(np.zeros((1, 1, H, W)))
    else:
        assert conv.forward(np.zeros((1, 1, H, W))).shape == (1, 2) + torch_conv
    torch_up = ((H - 1) * s - 2 * p + F + op, (W - 1) * s - 2 * p + F + op)
    if min(torch_up) < 1:
        with pytest.raises(ValueError, match="x of spatial size"):
            up.forward(np.zeros((1, 2, H, W)))
    else:
        assert up.forward(np.zeros((1, 2, H, W))).shape == (1, 1) + torch_up
        assert conv.output_size(*torch_up) == (H, W)


def test_keras_example_shapes():
    """The Keras VAE example's encoder and decoder: 28 -> 14 -> 7 -> 14 -> 28."""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    h = Conv2d(1, 32, 3, stride=2, padding=1, rng=rng, dtype=np.float32).forward(x)
    h = Conv2d(32, 64, 3, stride=2, padding=1, rng=rng, dtype=np.float32).forward(h)
    assert h.shape == (2, 64, 7, 7)
    h = ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1, rng=rng, dtype=np.float32).forward(h)
    h = ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1, rng=rng, dtype=np.float32).forward(h)
    assert h.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("which", ["conv", "up"])
def test_float32_stays_float32(which):
    conv, up = make_pair(2, 3, 3, 2, 1, 1, dtype=np.float32)
    layer = conv if which == "conv" else up
    assert layer.params["W"].dtype == np.float32 and layer.params["b"].dtype == np.float32
    x = np.random.default_rng(0).standard_normal((2, layer.in_channels, 6, 5))   # float64 input
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == layer.grads["W"].dtype == layer.grads["b"].dtype == np.float32


def test_weight_shapes_are_pytorchs():
    conv, up = make_pair(2, 5, 3, 1, 0, 0)
    assert conv.params["W"].shape == (5, 2, 3, 3) and conv.params["b"].shape == (5,)
    assert up.params["W"].shape == (5, 2, 3, 3) and up.params["b"].shape == (2,)
    assert conv.grads["W"].shape == conv.params["W"].shape


@pytest.mark.parametrize("layer_class", [Conv2d, ConvTranspose2d])
def test_initialisation_uses_the_fans_of_a_convolution(layer_class):
    """fan_in = in_channels F^2, fan_out = out_channels F^2. He: std sqrt(2 / fan_in), checked to 10%
    (the sample std of 8 * 16 * 9 = 1152 draws has a relative standard error of 1 / sqrt(2 * 1152),
    2.1%, and swapping the two fans would change it by a factor sqrt(2)). Glorot: U(-a, a) with
    a = sqrt(6 / (fan_in + fan_out)), the largest of 1152 draws within 1% of a."""
    fan_in, fan_out = 8 * 9, 16 * 9
    he = layer_class(8, 16, 3, rng=np.random.default_rng(0), init="he").params["W"]
    assert abs(he.std() / np.sqrt(2 / fan_in) - 1) < 0.1
    glorot = layer_class(8, 16, 3, rng=np.random.default_rng(0)).params["W"]
    a = np.sqrt(6 / (fan_in + fan_out))
    assert 0.99 * a < np.max(np.abs(glorot)) <= a


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(out_channels=2.0), ValueError, "out_channels"),
    (dict(kernel_size=(3, 3)), ValueError, "kernel_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=1.5), TypeError, "padding"),
    (dict(rng=None), TypeError, "rng"),
    (dict(rng=0), TypeError, "rng"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(init="xavier"), ValueError, "init"),
    (dict(output_padding=2, stride=2), ValueError, "output_padding"),
    (dict(output_padding=1), ValueError, "output_padding"),
    (dict(output_padding=-1, stride=2), ValueError, "output_padding"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, error, name):
    args = dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=0,
                rng=np.random.default_rng(0))
    args.update(kwargs)
    classes = [ConvTranspose2d] if "output_padding" in kwargs else [Conv2d, ConvTranspose2d]
    for layer_class in classes:
        with pytest.raises(error, match=name):
            layer_class(**args)


@pytest.mark.parametrize("which", ["conv", "up"])
def test_bad_inputs_name_the_argument(which):
    conv, up = make_pair(2, 3, 3, 1, 0, 0)
    layer = conv if which == "conv" else up
    C = layer.in_channels
    with pytest.raises(ValueError, match="backward needs a forward pass"):
        layer.backward(np.zeros((1, layer.out_channels, 3, 3)))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        layer.forward(np.zeros((C, 5, 5)))
    with pytest.raises(ValueError, match=rf"x must have {C} channels"):
        layer.forward(np.zeros((1, C + 1, 5, 5)))
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        layer.forward(np.full((1, C, 5, 5), "a"))
    y = layer.forward(np.zeros((1, C, 5, 5)))
    with pytest.raises(ValueError, match="dy must have the shape"):
        layer.backward(np.zeros((1,) + y.shape))
    with pytest.raises(ValueError, match="dy must have the shape"):
        layer.backward(y[:, :, :-1])


def test_too_small_inputs_are_refused():
    conv = Conv2d(1, 1, 5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x of spatial size \(4, 9\) is smaller than kernel_size 5"):
        conv.forward(np.zeros((1, 1, 4, 9)))
    up = ConvTranspose2d(1, 1, 3, padding=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x of spatial size \(2, 2\) gives an empty output"):
        up.forward(np.zeros((1, 1, 2, 2)))


# --------------------------------------------------------------------------- memory

def _peak_temporary_bytes(layer, x, dy):
    """Peak memory traced during forward + backward, less the arrays they return."""
    tracemalloc.start()
    try:
        y = layer.forward(x)
        dx = layer.backward(dy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    returned = y.nbytes + dx.nbytes + sum(g.nbytes for g in layer.grads.values())
    return peak - returned, y, dx, dict(layer.grads)


@pytest.mark.parametrize("which", ["conv", "up"])
def test_conv_memory_is_bounded(which, monkeypatch):
    """A batch whose im2col matrix is 4.5 times the budget runs within the budget, in chunks, with
    the numbers of the unchunked run. Without chunks the same call exceeds the budget."""
    budget = 1 << 20
    layer = (Conv2d(4, 2, 3, padding=1, rng=np.random.default_rng(0)) if which == "conv" else
             ConvTranspose2d(2, 4, 3, padding=1, rng=np.random.default_rng(0)))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, layer.in_channels, 16, 16))
    dy = rng.standard_normal((64, layer.out_channels, 16, 16))
    im2col_bytes = 4 * 3 * 3 * 16 * 16 * 64 * 8          # the convolution from 4 channels, 16 x 16
    assert im2col_bytes > 4 * budget
    unchunked, y, dx, grads = _peak_temporary_bytes(layer, x, dy)
    assert unchunked > budget
    monkeypatch.setattr(layers, "CONV_CHUNK_BYTES", budget)
    chunked, y_c, dx_c, grads_c = _peak_temporary_bytes(layer, x, dy)
    assert chunked <= budget, f"peak temporary memory {chunked} bytes > budget {budget}"
    np.testing.assert_allclose(y_c, y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dx_c, dx, rtol=1e-13, atol=1e-13)
    for k in grads:
        np.testing.assert_allclose(grads_c[k], grads[k], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- PyTorch, when installed

@pytest.mark.parametrize("P, Q, F, s, p, op, H, W", CONFIGS)
def test_matches_pytorch(P, Q, F, s, p, op, H, W):
    """Values and gradients against torch.nn.functional (not a dependency: skipped without torch)."""
    torch = pytest.importorskip("torch")
    conv, up = make_pair(P, Q, F, s, p, op)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, P, H, W))
    u = rng.standard_normal((2, Q) + conv.output_size(H, W))
    for layer, inp, fn, extra in ((conv, x, torch.nn.functional.conv2d, {}),
                                  (up, u, torch.nn.functional.conv_transpose2d, {"output_padding": op})):
        t_in, t_W, t_b = (torch.tensor(a, requires_grad=True)
                          for a in (inp, layer.params["W"], layer.params["b"]))
        t_out = fn(t_in, t_W, t_b, stride=s, padding=p, **extra)
        y = layer.forward(inp)
        dy = rng.standard_normal(y.shape)
        t_out.backward(torch.tensor(dy))
        dx = layer.backward(dy)
        for ours, theirs in ((y, t_out), (dx, t_in.grad), (layer.grads["W"], t_W.grad),
                             (layer.grads["b"], t_b.grad)):
            np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-12)
