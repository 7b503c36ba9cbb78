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

The elementwise functions sigmoid and softplus come from numpyvae.numerics, beside their
textbook forms.
"""

import numpy as np

from .numerics import sigmoid, softplus

__all__ = [
    "Linear", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "SoftClip", "Head", "MLP",
    "named", "glorot_uniform", "he_normal", "make_activation", "ACTIVATIONS",
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
        if init == "glorot":
            W = glorot_uniform(in_features, out_features, rng, dtype)
        elif init == "he":
            W = he_normal(in_features, out_features, rng, dtype)
        else:
            raise ValueError(f"unknown init {init!r}; expected 'glorot' or 'he'")
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
        y = x @ self.params["W"]
        y += self.params["b"]     # in place: saves a temporary of the output's size
        return y

    def backward(self, dy, need_dx=True):
        x = self.cache
        # Fresh arrays each call: a gradient dict returned earlier is never overwritten.
        self.grads = {"W": x.T @ dy, "b": dy.sum(axis=0)}
        return dy @ self.params["W"].T if need_dx else None


# Initialisers. Each draws from an explicit np.random.Generator.

def glorot_uniform(fan_in, fan_out, rng, dtype=np.float64):
    """Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).

    Keeps the variance of activations and gradients roughly constant through
    tanh / sigmoid layers. Returns an array of shape (fan_in, fan_out).
    """
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out)).astype(dtype)


def he_normal(fan_in, fan_out, rng, dtype=np.float64):
    """He et al. (2015): N(0, 2 / fan_in), the variance-preserving choice for ReLU
    (half of the units are zero, hence the factor 2). Shape (fan_in, fan_out)."""
    return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(dtype)


# ---------------------------------------------------------------------------
# Activations: elementwise, no parameters (their params and grads are empty). Each maps x of
# any shape to y of the same shape and dtype, and dx has the shape of dy.
# ---------------------------------------------------------------------------

class Tanh:
    """y = tanh(x);  dy/dx = 1 - y^2 (uses the output, so the cache is y).  Eq. (B3), docs/backprop.md"""

    params = {}
    grads = {}

    def forward(self, x, inplace=False):
        y = np.tanh(x, out=x if inplace else None)
        self.cache = y
        return y

    def backward(self, dy):
        y = self.cache
        return dy * (1 - y * y)


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
