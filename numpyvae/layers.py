"""Neural-network layers with hand-written backpropagation.

Every layer follows one small protocol (docs/backprop.md):

* ``y = layer.forward(x)`` computes the output and keeps in ``layer.cache`` what the
  backward pass will need;
* ``dx = layer.backward(dy)`` takes the gradient of a scalar loss with respect to ``y``
  and returns the gradient with respect to ``x``. A layer with parameters also stores
  the gradients of its parameters in ``layer.grads`` (same keys as ``layer.params``).

Two economies keep the hot path lean without changing any result:
* activations may overwrite their input (``forward(x, inplace=True)``), which MLP uses
  because a Linear layer's output is read by nothing but the activation after it;
* ``Linear.backward(dy, need_dx=False)`` skips the input gradient (a whole matmul) for a
  first layer, whose input is data and needs no gradient.

Arrays are batch-first: ``x`` has shape ``(N, in_features)``. When a VAE draws L Monte
Carlo samples per datapoint they are stacked into the batch dimension (``N = L * B``)
so that every layer is a single BLAS matrix product, never a Python loop over rows.
"""

import numpy as np
from scipy.special import expit

__all__ = [
    "Linear", "Tanh", "ReLU", "Sigmoid", "Softplus", "Identity", "MLP",
    "glorot_uniform", "he_normal", "make_activation", "ACTIVATIONS",
    "sigmoid", "softplus",
]


# ---------------------------------------------------------------------------
# Numerically stable scalar functions, shared by layers and likelihoods.
# ---------------------------------------------------------------------------

def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), stable for any finite x, dtype-preserving."""
    return expit(x)


def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): exp never sees a positive argument, so
    nothing overflows for large x, and log1p keeps full precision for very negative x.
    Eq. (B5), docs/backprop.md. Written in place on one buffer: it is the costliest elementwise
    step of a Bernoulli VAE (about twice as fast as np.logaddexp(0, x), measured in benchmarks/)."""
    out = np.abs(x)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out += np.maximum(x, 0)
    return out


# ---------------------------------------------------------------------------
# Initialisers. Each draws from an explicit np.random.Generator.
# ---------------------------------------------------------------------------

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
# Layers
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
        y = expit(x, out=x if inplace else None)
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


class MLP:
    """A stack Linear -> activation -> Linear -> activation -> ... (every Linear is followed
    by the activation). ``sizes = (in, h0, h1, ...)``; with ``sizes = (in,)`` the MLP is
    the identity map, which is how a VAE with ``hidden_dims=()`` gets linear heads.

    The Linear layers are named ``h0, h1, ...`` and their arrays are exposed through
    ``named_params()`` / ``named_grads()`` as ``"h0.W", "h0.b", ...``.
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

    def named_params(self):
        return {f"h{i}.{k}": v for i, lin in enumerate(self.linears) for k, v in lin.params.items()}

    def named_grads(self):
        return {f"h{i}.{k}": v for i, lin in enumerate(self.linears) for k, v in lin.grads.items()}
