"""Neural-network layers with hand-written backpropagation.

Every layer follows one small protocol (docs/backprop.md):

* ``y = layer.forward(x)`` computes the output and keeps in ``layer.cache`` what the
  backward pass will need;
* ``dx = layer.backward(dy)`` takes the gradient of a scalar loss with respect to ``y``
  and returns the gradient with respect to ``x``. A layer with parameters also stores
  the gradients of its parameters in ``layer.grads`` (same keys as ``layer.params``);
* ``named({prefix: layer}, "params" or "grads")`` gives a model's arrays their public names,
  e.g. "enc" and an MLP's "h0.W" -> "enc.h0.W".

Two economies keep the hot path lean without changing any result:
* activations may overwrite their input (``forward(x, inplace=True)``), which MLP uses
  because a Linear layer's output is read by nothing but the activation after it;
* ``Linear.backward(dy, need_dx=False)`` skips the input gradient (a whole matmul) for a
  first layer, whose input is data and needs no gradient.

Arrays are batch-first: ``x`` has shape ``(N, in_features)``. When a VAE draws L Monte
Carlo samples per datapoint they are stacked into the batch dimension (``N = L * B``)
so that every layer is a single BLAS matrix product, never a Python loop over rows.
The convolutional layers (Conv2d, ConvTranspose2d, at the end of this file) take images
``(N, channels, height, width)``, as PyTorch does, and turn each pass into a few matrix
products too, through im2col (docs/convolution.md); they have ``need_dx`` like Linear.

The elementwise functions sigmoid and softplus come from numpyvae.numerics, beside their
textbook forms.
"""

import numpy as np

from ._validate import (check_nonnegative_int, check_positive_int, check_real_array, check_rng,
                        float_dtype)
from .numerics import sigmoid, softplus
from .parallel import matmul, rowwise

__all__ = [
    "Linear", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "SoftClip", "Head", "MLP",
    "named", "glorot_uniform", "he_normal", "init_weights", "make_activation", "ACTIVATIONS",
    "Conv2d", "ConvTranspose2d", "conv2d", "conv2d_weight_grad", "conv2d_input_grad", "im2col",
    "col2im", "conv_output_size", "conv_transpose_output_size", "CONV_CHUNK_BYTES",
]


# ---------------------------------------------------------------------------
# The affine layer and its initialisers
# ---------------------------------------------------------------------------

class Linear:
    """Affine map y = x @ W + b.   Eq. (B1), docs/backprop.md

    Shapes: x (N, in), W (in, out), b (out,), y (N, out).
    Backward (Eq. (B2), docs/backprop.md):  dW = x^T dy,  db = sum_n dy_n,  dx = dy W^T.
    """

    def __init__(self, in_features, out_features, rng, dtype=np.float64, init="glorot"):
        W = init_weights(init, in_features, out_features, rng, dtype)
        self.params = {"W": W, "b": np.zeros(out_features, dtype=dtype)}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros(out_features, dtype=dtype)}
        self.cache = None  # the input x, kept by forward for dW = x^T dy

    @property
    def in_features(self):
        return self.params["W"].shape[0]

    @property
    def out_features(self):
        return self.params["W"].shape[1]

    def forward(self, x):
        self.cache = x
        return matmul(x, self.params["W"], bias=self.params["b"])   # the bias added in place

    def backward(self, dy, need_dx=True):
        x = self.cache
        # Fresh arrays each call: a gradient dict returned earlier is never overwritten.
        self.grads = {"W": matmul(x.T, dy), "b": dy.sum(axis=0)}
        return matmul(dy, self.params["W"].T) if need_dx else None


# Initialisers. Each draws from an explicit np.random.Generator.

def glorot_uniform(fan_in, fan_out, rng, dtype=np.float64, shape=None):
    """Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).

    Keeps the variance of activations and gradients roughly constant through
    tanh / sigmoid layers. Returns an array of shape (fan_in, fan_out), or ``shape``
    (a convolution kernel passes its own, with its fan-in and fan-out).
    """
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out) if shape is None else shape).astype(dtype)


def he_normal(fan_in, fan_out, rng, dtype=np.float64, shape=None):
    """He et al. (2015): N(0, 2 / fan_in), the variance-preserving choice for ReLU
    (half of the units are zero, hence the factor 2). Shape (fan_in, fan_out), or ``shape``."""
    size = (fan_in, fan_out) if shape is None else shape
    return (rng.standard_normal(size) * np.sqrt(2.0 / fan_in)).astype(dtype)


INITIALISERS = {"glorot": glorot_uniform, "he": he_normal}


def init_weights(init, fan_in, fan_out, rng, dtype=np.float64, shape=None):
    """Weights drawn by the initialiser named ``init`` ('glorot' or 'he'), shape (fan_in, fan_out)
    or ``shape``. ValueError naming ``init`` for any other name."""
    if not isinstance(init, str) or init not in INITIALISERS:
        raise ValueError(f"unknown init {init!r}; expected 'glorot' or 'he'")
    return INITIALISERS[init](fan_in, fan_out, rng, dtype, shape=shape)


# ---------------------------------------------------------------------------
# Activations: elementwise, no parameters (their params and grads are empty). Each maps x of
# any shape to y of the same shape and dtype, and dx has the shape of dy.
# ---------------------------------------------------------------------------

class Tanh:
    """y = tanh(x);  dy/dx = 1 - y^2 (uses the output, so the cache is y).  Eq. (B3), docs/backprop.md"""

    params = {}
    grads = {}

    def forward(self, x, inplace=False):
        y = rowwise(np.tanh, x, out=x if inplace else None)     # np.tanh(x), in blocks on the threads
        self.cache = y
        return y

    def backward(self, dy):
        return rowwise(_tanh_backward, dy, self.cache)


def _tanh_backward(dy, y, out):
    """dy * (1 - y * y) into out, in that order (so the same bits), with no temporary."""
    np.multiply(y, y, out=out)
    np.subtract(1, out, out=out)
    return np.multiply(dy, out, out=out)


class ReLU:
    """y = max(x, 0);  dy/dx = 1[x > 0] (the subgradient 0 is taken at x = 0).  Eq. (B4), docs/backprop.md"""

    params = {}
    grads = {}

    def forward(self, x, inplace=False):
        self.cache = x > 0
        return np.maximum(x, 0, out=x if inplace else None)

    def backward(self, dy):
        return dy * self.cache


class Sigmoid:
    """y = 1 / (1 + exp(-x));  dy/dx = y (1 - y).  Eq. (B6), docs/backprop.md"""

    params = {}
    grads = {}

    def forward(self, x, inplace=False):
        y = sigmoid(x)            # a new array either way; x is not needed again
        self.cache = y
        return y

    def backward(self, dy):
        y = self.cache
        return dy * y * (1 - y)


class Softplus:
    """y = log(1 + exp(x));  dy/dx = sigmoid(x).  Eq. (B5), docs/backprop.md"""

    params = {}
    grads = {}

    def forward(self, x, inplace=False):
        self.cache = x            # the backward pass needs x itself, so never in place
        return softplus(x)

    def backward(self, dy):
        return dy * sigmoid(self.cache)


class Identity:
    """y = x; dx = dy. Lets an output head be written like any other layer."""

    params = {}
    grads = {}

    def forward(self, x, inplace=False):
        return x

    def backward(self, dy):
        return dy


class SoftClip:
    """A smooth two-sided bound: y = low + softplus(x - low) - softplus(x - high).   Eq. (B8), docs/backprop.md

    The identity in the middle (off by at most e^{-(x - low)} + e^{-(high - x)}), tending to
    ``low`` as x -> -inf and to ``high`` as x -> +inf; dy/dx = sigmoid(x - low) - sigmoid(x - high),
    in (0, 1). The model puts it on every log-variance head (docs/elbo.md, section 4).

    Evaluated as the equal form clip(x, low, high) + softplus(-|x - low|) - softplus(-|x - high|)
    (docs/backprop.md): each softplus sees a non-positive argument and lies in (0, log 2], so
    nothing cancels. The textbook form loses the middle's precision (low + (x - low) is rounded
    at the scale of |low|, not of x) and, for |x| far beyond the bounds, is not even between them
    (float32, bounds +-30, x = 1e9: every term rounds to x or -x and the result is 0).
    Shapes: any; the dtype is kept.
    """

    params = {}
    grads = {}

    def __init__(self, low, high):
        low, high = float(low), float(high)
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"SoftClip needs finite bounds low < high; got low={low}, high={high}")
        self.low, self.high = low, high

    def forward(self, x, inplace=False):
        self.cache = x            # the backward pass needs x itself, so never in place
        # The bounds are Python floats, so a float32 x gives a float32 y.
        y = np.clip(x, self.low, self.high)
        y += softplus(-np.abs(x - self.low))
        y -= softplus(-np.abs(x - self.high))
        return y

    def backward(self, dy):
        x = self.cache
        return dy * (sigmoid(x - self.low) - sigmoid(x - self.high))

    def __repr__(self):
        return f"SoftClip({self.low:g}, {self.high:g})"


ACTIVATIONS = {"tanh": Tanh, "relu": ReLU, "sigmoid": Sigmoid, "softplus": Softplus,
               "identity": Identity}

# ReLU-like units get He initialisation; saturating units get Glorot.
_INIT_FOR = {"tanh": "glorot", "sigmoid": "glorot", "identity": "glorot",
             "relu": "he", "softplus": "he"}


def make_activation(name):
    """Return a fresh activation layer by name ('tanh', 'relu', 'sigmoid', 'softplus', 'identity')."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


# ---------------------------------------------------------------------------
# Composite layers, and the model-level names of their arrays
# ---------------------------------------------------------------------------

class Head:
    """An output head: a Linear layer followed by a parameter-free elementwise layer ``then``
    (e.g. SoftClip), y = then(x @ W + b). Its ``params`` and ``grads`` are the Linear's, under the
    same keys "W" and "b", so a bounded head is named like a plain Linear one ("enc.logvar.W").
    ``backward(dy, need_dx)`` is the chain rule: then's backward, then Linear's (Eq. (B2)).
    Shapes: x (N, in) -> y (N, out), as Linear."""

    def __init__(self, linear, then):
        self.linear, self.then = linear, then

    @property
    def params(self):
        return self.linear.params

    @property
    def grads(self):
        return self.linear.grads

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    def forward(self, x):
        return self.then.forward(self.linear.forward(x))

    def backward(self, dy, need_dx=True):
        return self.linear.backward(self.then.backward(dy), need_dx=need_dx)


class MLP:
    """A stack Linear -> activation -> Linear -> activation -> ... (every Linear is followed
    by the activation). ``sizes = (in, h0, h1, ...)``; with ``sizes = (in,)`` the MLP is
    the identity map, which is how a VAE with ``hidden_dims=()`` gets linear heads.

    The Linear layers are named ``h0, h1, ...``: ``params`` and ``grads`` hold their arrays as
    ``"h0.W", "h0.b", "h1.W", ...``, so an MLP takes part in ``named`` like any other layer.
    Shapes: x (N, sizes[0]) -> y (N, sizes[-1]); layer i's W is (sizes[i], sizes[i+1]).
    """

    def __init__(self, sizes, activation, rng, dtype=np.float64):
        make_activation(activation)  # validates the name before any array is drawn
        init = _INIT_FOR[activation]
        self.sizes = tuple(int(s) for s in sizes)
        self.linears = [Linear(a, b, rng, dtype, init=init)
                        for a, b in zip(self.sizes[:-1], self.sizes[1:])]
        self.activations = [make_activation(activation) for _ in self.linears]

    @property
    def out_features(self):
        return self.sizes[-1]

    def forward(self, x):
        for lin, act in zip(self.linears, self.activations):
            # The Linear output is a fresh array read only by the activation: overwrite it.
            x = act.forward(lin.forward(x), inplace=True)
        return x

    def backward(self, dy, need_dx=True):
        """Backward through the stack. need_dx=False skips the first layer's input gradient
        (returns None), for an MLP whose input is data."""
        n = len(self.linears)
        for i, (lin, act) in enumerate(zip(reversed(self.linears), reversed(self.activations))):
            dy = lin.backward(act.backward(dy), need_dx=need_dx or i < n - 1)
        return dy

    @property
    def params(self):
        return named(self._named_linears(), "params")

    @property
    def grads(self):
        return named(self._named_linears(), "grads")

    def _named_linears(self):
        return {f"h{i}": lin for i, lin in enumerate(self.linears)}


def named(layers, attr="params"):
    """The arrays of several layers under model-level names: {f"{prefix}.{key}": array}.

    ``layers``: an ordered dict {prefix: layer} of anything with ``params`` and ``grads`` dicts
    (Linear, Head, MLP, another model's parts); ``attr``: "params" or "grads". The result follows
    the order of ``layers``, then of each layer's keys:

        named({"enc": MLP((4, 3), ...), "enc.mu": Linear(3, 2, ...)})
            -> {"enc.h0.W": (4, 3), "enc.h0.b": (3,), "enc.mu.W": (3, 2), "enc.mu.b": (2,)}

    The arrays are the layers' own, not copies: ``named(layers, "params")`` is the live dict an
    optimiser updates in place. Raises ValueError if two layers give the same name (e.g. prefixes
    "enc" and "enc.h0" beside an MLP's "h0.W"): one array would silently hide another.
    """
    if attr not in ("params", "grads"):
        raise ValueError(f"attr must be 'params' or 'grads'; got {attr!r}")
    out = {}
    for prefix, layer in layers.items():
        for key, array in getattr(layer, attr).items():
            name = f"{prefix}.{key}"
            if name in out:
                raise ValueError(f"two layers give the array name {name!r}; rename a prefix")
            out[name] = array
    return out


# ---------------------------------------------------------------------------
# Convolution, and the transposed convolution as its adjoint (docs/convolution.md)
#
# Images are (B, C, H, W) arrays, as in PyTorch. In the docstrings a convolution has P input and
# Q output channels, an F x F kernel, input size (H, W) and output size (H', W'). Each pass is a
# few large matrix products on the im2col matrix X_col: first the textbook pieces (output size,
# im2col, col2im), then the three products (forward, weight gradient, input gradient), then the
# two layers, which use those three products in two different orders.
# ---------------------------------------------------------------------------

# Peak temporary memory (padded images, im2col matrices, outputs in matrix form) that one chunk
# of images may take in conv2d, conv2d_weight_grad and conv2d_input_grad: a larger batch is
# processed in chunks, so memory stays bounded for any batch. Arrays a call returns are not counted.
CONV_CHUNK_BYTES = 64 << 20


def conv_output_size(size, kernel_size, stride, padding):
    """Output length along one spatial axis of a convolution, as torch.nn.Conv2d.
    Eq. (J2), docs/convolution.md

        H' = (H + 2 padding - kernel_size) // stride + 1

    the number of places an F-wide kernel fits in the padded axis, moving ``stride`` at a time.
    """
    return (size + 2 * padding - kernel_size) // stride + 1


def conv_transpose_output_size(size, kernel_size, stride, padding, output_padding=0):
    """Output length along one spatial axis of a transposed convolution, as
    torch.nn.ConvTranspose2d.   Eq. (J8), docs/convolution.md

        H = (H' - 1) stride - 2 padding + kernel_size + output_padding,   0 <= output_padding < stride

    The convolution maps each of these ``stride`` lengths H to the same H' (Eq. (J2) rounds
    down); output_padding says which of them its adjoint produces.
    """
    return (size - 1) * stride - 2 * padding + kernel_size + output_padding


def _window(di, dj, stride, out_height, out_width):
    """The pixels of a padded image that kernel offset (di, dj) meets, one per output pixel: the
    slices (rows, cols) such that ``xp[..., rows, cols]`` has shape (..., out_height, out_width)
    and holds, at output pixel (i, j), the padded pixel (stride i + di, stride j + dj). It replaces

        for i in range(out_height):
            for j in range(out_width):
                window[..., i, j] = xp[..., stride * i + di, stride * j + dj]
    """
    return (slice(di, di + stride * (out_height - 1) + 1, stride),
            slice(dj, dj + stride * (out_width - 1) + 1, stride))


def im2col(x, kernel_size, stride, padding):
    """Every patch a convolution sees, as one column of a matrix.   Eq. (J3), docs/convolution.md

    x (B, P, H, W) -> X_col (P F F, B H' W'), F = kernel_size, (H', W') by Eq. (J2). With xp the
    images zero-padded by ``padding`` on each side, row (p, di, dj) and column (b, i, j) of X_col
    (each flattened in C order) hold xp[b, p, stride i + di, stride j + dj]: column (b, i, j) is
    the P x F x F patch under output pixel (i, j) of image b, flattened as a filter W[q] is by
    W.reshape(Q, -1). The plain loops it replaces:

        for b, p, di, dj, i, j in every index:
            X_col[(p, di, dj), (b, i, j)] = xp[b, p, stride * i + di, stride * j + dj]

    Only the F^2 kernel offsets are a Python loop; each copies one strided window of every image.
    The padded images are laid out channel-major, (P, B, H, W) as X_col's rows and columns are,
    so that each copy keeps the order of the axes.
    """
    B, P, height, width = x.shape
    F = kernel_size
    out_h = conv_output_size(height, F, stride, padding)
    out_w = conv_output_size(width, F, stride, padding)
    xp = np.pad(x.transpose(1, 0, 2, 3), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    X_col = np.empty((P, F, F, B, out_h, out_w), dtype=x.dtype)
    for di in range(F):
        for dj in range(F):
            rows, cols = _window(di, dj, stride, out_h, out_w)
            X_col[:, di, dj] = xp[:, :, rows, cols]
    return X_col.reshape(P * F * F, B * out_h * out_w)


def col2im(X_col, image_shape, kernel_size, stride, padding):
    """The adjoint of im2col: add each entry of X_col back onto the pixel it was copied from.
    Eq. (J6), docs/convolution.md

    X_col (P F F, B H' W') -> an array of ``image_shape`` (B, P, H, W). A pixel that several
    patches share (stride < kernel_size) receives the sum of their entries; entries copied from
    the zero padding are dropped. The plain loops it replaces:

        for b, p, di, dj, i, j in every index:
            xp[b, p, stride * i + di, stride * j + dj] += X_col[(p, di, dj), (b, i, j)]
        x = xp[:, :, padding:padding + H, padding:padding + W]

    As in im2col, xp is laid out channel-major, (P, B, H, W); the result is a (B, P, H, W) view.
    """
    B, P, height, width = image_shape
    F = kernel_size
    out_h = conv_output_size(height, F, stride, padding)
    out_w = conv_output_size(width, F, stride, padding)
    X_col = X_col.reshape(P, F, F, B, out_h, out_w)
    xp = np.zeros((P, B, height + 2 * padding, width + 2 * padding), dtype=X_col.dtype)
    for di in range(F):
        for dj in range(F):
            rows, cols = _window(di, dj, stride, out_h, out_w)
            xp[:, :, rows, cols] += X_col[:, di, dj]
    return xp[:, :, padding:padding + height, padding:padding + width].transpose(1, 0, 2, 3)


def _to_rows(y):
    """Images (B, Q, H', W') -> the layout of the products, (Q, B H' W'): one row per channel,
    one column per (image, pixel), in the column order of im2col. A copy."""
    return y.transpose(1, 0, 2, 3).reshape(y.shape[1], -1)


def _from_rows(Y_row, out_size):
    """The inverse of _to_rows: (Q, B H' W') -> images (B, Q, H', W'), a view."""
    return Y_row.reshape((Y_row.shape[0], -1) + tuple(out_size)).transpose(1, 0, 2, 3)


def _images_per_chunk(in_channels, out_channels, kernel_size, in_size, out_size, padding, itemsize):
    """How many images one chunk of conv2d, conv2d_weight_grad or conv2d_input_grad takes so that
    its temporaries stay within CONV_CHUNK_BYTES (at least one). Per image, of the convolution
    from P = ``in_channels`` at ``in_size`` (H, W) to Q = ``out_channels`` at ``out_size``
    (H', W'): the padded image, P (H + 2 padding)(W + 2 padding) entries; its im2col columns (or
    their gradient), P F^2 H' W'; the output (or its gradient) in rows, Q H' W'. Besides these,
    numpy takes a fixed workspace for the strided in-place additions of col2im: a buffer of
    np.getbufsize() entries for each of their three operands. test_conv_memory_is_bounded
    measures the peak."""
    (height, width), (out_h, out_w) = in_size, out_size
    per_image = itemsize * (in_channels * (height + 2 * padding) * (width + 2 * padding)
                            + (in_channels * kernel_size ** 2 + out_channels) * out_h * out_w)
    workspace = 3 * np.getbufsize() * itemsize
    return max(1, (CONV_CHUNK_BYTES - workspace) // per_image)


def conv2d(x, W, b, stride, padding):
    """Convolution (cross-correlation, as torch.nn.functional.conv2d) as a matrix product.
    Eq. (J4), docs/convolution.md

        Y_row = W_row X_col + b,   W_row = W.reshape(Q, P F F),  X_col = im2col(x) (P F F, B H' W')

    x (B, P, H, W), W (Q, P, F, F), b (Q,) or None (no bias) -> y (B, Q, H', W'), (H', W') by
    Eq. (J2); Y_row (Q, B H' W') is y in rows. The batch goes through in chunks of images within
    CONV_CHUNK_BYTES, one product each, written as one expression so that a chunk's temporaries
    are freed before the next chunk's are made.
    """
    Q, P, F, _ = W.shape
    B, _, height, width = x.shape
    out_size = (conv_output_size(height, F, stride, padding), conv_output_size(width, F, stride, padding))
    y = np.empty((B, Q) + out_size, dtype=x.dtype)
    W_row = W.reshape(Q, P * F * F)
    n = _images_per_chunk(P, Q, F, (height, width), out_size, padding, x.dtype.itemsize)
    for start in range(0, B, n):
        chunk = slice(start, start + n)
        y[chunk] = _from_rows(W_row @ im2col(x[chunk], F, stride, padding), out_size)
    if b is not None:
        y += b[:, None, None]
    return y


def conv2d_weight_grad(x, dy, kernel_size, stride, padding):
    """Gradient of a convolution's weights, from its input and the gradient of its output.
    Eq. (J5), docs/convolution.md

        dW_row = dY_row X_col^T,   dY_row = dy in rows (Q, B H' W'),  X_col = im2col(x)

    x (B, P, H, W), dy (B, Q, H', W') -> dW (Q, P, F, F), summed over chunks of images.
    """
    B, P, height, width = x.shape
    Q, out_size = dy.shape[1], dy.shape[2:]
    F = kernel_size
    dW_row = np.zeros((Q, P * F * F), dtype=dy.dtype)
    n = _images_per_chunk(P, Q, F, (height, width), out_size, padding, x.dtype.itemsize)
    for start in range(0, B, n):
        chunk = slice(start, start + n)
        dW_row += _to_rows(dy[chunk]) @ im2col(x[chunk], F, stride, padding).T
    return dW_row.reshape(Q, P, F, F)


def conv2d_input_grad(dy, W, in_size, stride, padding):
    """Gradient of a convolution's input, from the gradient of its output: dX_col = W_row^T dY_row
    (Eq. (J5), docs/convolution.md), then dx = col2im(dX_col) (Eq. (J6), docs/convolution.md).

    dy (B, Q, H', W'), W (Q, P, F, F), ``in_size`` = the input's (H, W) -> dx (B, P, H, W). The
    input size is an argument because Eq. (J2) rounds down: several sizes give the same (H', W').
    This is also the forward pass of the transposed convolution, Eq. (J7), docs/convolution.md.
    """
    Q, P, F, _ = W.shape
    B, out_size = dy.shape[0], dy.shape[2:]
    dx = np.empty((B, P) + tuple(in_size), dtype=dy.dtype)
    W_row = W.reshape(Q, P * F * F)
    n = _images_per_chunk(P, Q, F, in_size, out_size, padding, dy.dtype.itemsize)
    for start in range(0, B, n):
        chunk = slice(start, start + n)
        dx[chunk] = col2im(W_row.T @ _to_rows(dy[chunk]), dx[chunk].shape, F, stride, padding)
    return dx


def _as_images(x, channels, dtype, name):
    """``x`` as a (B, channels, H, W) array of ``dtype``: TypeError naming ``name`` for non-numeric
    input, ValueError for a wrong rank or channel count."""
    arr = check_real_array(x, name)
    if arr.ndim != 4:
        raise ValueError(f"{name} must be 4-D with shape (batch, {channels}, height, width); "
                         f"got shape {arr.shape}")
    if arr.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, shape (batch, {channels}, height, "
                         f"width); got shape {arr.shape}")
    return arr.astype(dtype, copy=False)


class _ConvBase:
    """What Conv2d and ConvTranspose2d share: checked hyper-parameters, the weights and their
    initialisation, the checks of backward's input. Each layer gives its weight shape in
    PyTorch's layout (``weight_shape``).

    Initialisation as Linear's (``init``: 'glorot' for tanh / sigmoid nets, 'he' for ReLU nets),
    with the fan-in and fan-out of a convolution: an output pixel is a sum over
    fan_in = in_channels F^2 weighted inputs, and an input pixel reaches fan_out = out_channels F^2
    outputs. Both count kernel positions at stride 1 away from the borders, as PyTorch and Keras
    do (docs/convolution.md, section 6 has what changes at stride s).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, rng, dtype, init):
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.stride = check_positive_int(stride, "stride")
        self.padding = check_nonnegative_int(padding, "padding")
        self.dtype = float_dtype(dtype)
        check_rng(rng)
        F2 = self.kernel_size ** 2
        W = init_weights(init, self.in_channels * F2, self.out_channels * F2, rng, self.dtype,
                         shape=self.weight_shape())
        b = np.zeros(self.out_channels, dtype=self.dtype)
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}
        self.cache = None  # (x, shape of y), kept by forward

    def _cached_input_and(self, dy):
        """The input of the last forward pass, and ``dy`` checked against that pass's output."""
        if self.cache is None:
            raise ValueError("backward needs a forward pass first")
        x, y_shape = self.cache
        dy = check_real_array(dy, "dy")
        if dy.shape != y_shape:
            raise ValueError(f"dy must have the shape of the forward pass's output, {y_shape}; "
                             f"got {dy.shape}")
        return x, dy.astype(self.dtype, copy=False)


class Conv2d(_ConvBase):
    """2-D convolution y = conv(x; W) + b: a cross-correlation, as torch.nn.Conv2d.
    Eq. (J1), docs/convolution.md

    Shapes: x (B, P, H, W), W (Q, P, F, F), b (Q,), y (B, Q, H', W'), with P = in_channels,
    Q = out_channels, F = kernel_size and H' = (H + 2 padding - F) // stride + 1 (Eq. (J2)).
    Forward as one matrix product, Y_row = W_row im2col(x) + b (Eq. (J4)); backward (Eq. (J5)):
    dW_row = dY_row X_col^T, db = the sum of dy over images and pixels, and
    dx = col2im(W_row^T dY_row) (Eq. (J6)). ``backward(dy, need_dx=False)`` skips dx, for a first
    layer whose input is data. Initialisation: _ConvBase (fan_in = P F^2, fan_out = Q F^2).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, rng=None,
                 dtype=np.float64, init="glorot"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng, dtype, init)

    def weight_shape(self):
        """(out_channels, in_channels, F, F), as torch.nn.Conv2d."""
        return (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)

    def output_size(self, height, width):
        """(H', W') for an input of (height, width), Eq. (J2)."""
        return tuple(conv_output_size(n, self.kernel_size, self.stride, self.padding)
                     for n in (height, width))

    def forward(self, x):
        x = _as_images(x, self.in_channels, self.dtype, "x")
        if min(self.output_size(*x.shape[2:])) < 1:
            raise ValueError(f"x of spatial size {x.shape[2:]} is smaller than kernel_size "
                             f"{self.kernel_size} with padding {self.padding} on each side")
        y = conv2d(x, self.params["W"], self.params["b"], self.stride, self.padding)
        self.cache = (x, y.shape)
        return y

    def backward(self, dy, need_dx=True):
        x, dy = self._cached_input_and(dy)
        # Fresh arrays each call, as Linear's: a gradient dict returned earlier is never overwritten.
        self.grads = {"W": conv2d_weight_grad(x, dy, self.kernel_size, self.stride, self.padding),
                      "b": dy.sum(axis=(0, 2, 3))}
        if not need_dx:
            return None
        return conv2d_input_grad(dy, self.params["W"], x.shape[2:], self.stride, self.padding)


class ConvTranspose2d(_ConvBase):
    """Transposed convolution: the adjoint of a convolution, plus a bias, as torch.nn.ConvTranspose2d.
    Eq. (J7), docs/convolution.md (forward) and Eq. (J9), docs/convolution.md (backward)

    Let A be the convolution v -> conv(v; W) without bias, with this layer's W, stride and padding:
    it maps out_channels channels at (H, W) to in_channels channels at (H', W'). Then

        forward:   y  = A^T x + b  = conv2d_input_grad(x, W, (H, W)) + b
        backward:  dx = A dy       = conv2d(dy, W)
                   dW = conv2d_weight_grad(dy, x): A's weight gradient, its input and output
                        gradient in each other's places;   db = the sum of dy

    so each pass is one of Conv2d's, used the other way round. Shapes: x (B, P, H', W'),
    W (P, Q, F, F), b (Q,), y (B, Q, H, W), with P = in_channels, Q = out_channels and
    H = (H' - 1) stride - 2 padding + F + output_padding (Eq. (J8)), 0 <= output_padding < stride.
    Initialisation: _ConvBase (fan_in = P F^2, fan_out = Q F^2).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 rng=None, dtype=np.float64, init="glorot"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, rng, dtype, init)
        self.output_padding = check_nonnegative_int(output_padding, "output_padding")
        if self.output_padding >= self.stride:
            raise ValueError(f"output_padding must be smaller than stride ({self.stride}); "
                             f"got {self.output_padding}")

    def weight_shape(self):
        """(in_channels, out_channels, F, F), as torch.nn.ConvTranspose2d: the weight of the
        convolution it is the adjoint of, which maps out_channels to in_channels."""
        return (self.in_channels, self.out_channels, self.kernel_size, self.kernel_size)

    def output_size(self, height, width):
        """(H, W) for an input of (height, width), Eq. (J8)."""
        return tuple(conv_transpose_output_size(n, self.kernel_size, self.stride, self.padding,
                                                self.output_padding) for n in (height, width))

    def forward(self, x):
        x = _as_images(x, self.in_channels, self.dtype, "x")
        out_size = self.output_size(*x.shape[2:])
        if min(out_size) < 1:
            raise ValueError(f"x of spatial size {x.shape[2:]} gives an empty output: padding "
                             f"{self.padding} crops more than the transposed convolution produces")
        y = conv2d_input_grad(x, self.params["W"], out_size, self.stride, self.padding)
        y += self.params["b"][:, None, None]
        self.cache = (x, y.shape)
        return y

    def backward(self, dy, need_dx=True):
        x, dy = self._cached_input_and(dy)
        self.grads = {"W": conv2d_weight_grad(dy, x, self.kernel_size, self.stride, self.padding),
                      "b": dy.sum(axis=(0, 2, 3))}
        return conv2d(dy, self.params["W"], None, self.stride, self.padding) if need_dx else None
