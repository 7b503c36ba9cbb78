"""The convolutional encoder and decoder of the VAE, ``VAE(..., arch="conv")``, as in the Keras VAE example.

For images of H x W pixels (one channel) and ``channels`` = (c_1, ..., c_n), default (32, 64):

    encoder   x (B, H W)  ->  image (B, 1, H, W)
              -> Conv2d(1 -> c_1, 3, stride 2, padding 1), ReLU -> ... -> Conv2d(c_{n-1} -> c_n), ReLU
              -> flatten (B, c_n h_n w_n)  ->  the MLP of hidden_dims  ->  heads mu, logvar (Linear)
    decoder   z (N, Z)  ->  Linear (Z -> c_n h_n w_n), ReLU  ->  reshape (N, c_n, h_n, w_n)
              -> ConvTranspose2d(c_n -> c_n, 3, stride 2, padding 1), ReLU -> ... -> ConvTranspose2d(c_2 -> c_1), ReLU
              -> the output head: ConvTranspose2d(c_1 -> 1, 3, stride 1, padding 1), flattened to (N, H W)

Eqs. (J10) and (J11), docs/convolution.md. Each stride-2 convolution halves the image, rounding up
(Eq. (J2), docs/convolution.md: 28 -> 14 -> 7 for MNIST), and each transposed convolution doubles it
back; its output padding (Eq. (J8), docs/convolution.md) picks the size the encoder came from.

The VAE itself does not change: the two trunks keep the MLP's protocol (``forward``,
``backward(dy, need_dx)``, ``params``, ``grads``, ``out_features``) and read and write rows
(N, width), so the heads, the estimators, IWAE, the condition of a ConditionalVAE and checkpoints
work as they are. Only inside a trunk are the rows seen as images (B, C, H, W). The choice of
trunks and output layer is one small object, ``model.networks`` (ConvNetworks here; MLPNetworks in
numpyvae.model).
"""

import math

import numpy as np

from . import _validate as check
from .layers import (_INIT_FOR, MLP, ConvTranspose2d, Conv2d, Linear, conv_output_size,
                     conv_transpose_output_size, make_activation, named)

__all__ = ["ConvEncoder", "ConvDecoder", "Flattened", "ConvNetworks", "DEFAULT_CHANNELS", "feature_sizes",
           "output_padding"]

# The Keras example's channels: 32 then 64 feature maps, each layer a 3 x 3 kernel moved 2 pixels at
# a time, padded by one pixel on each side (Keras's padding="same" gives the same sizes; it pads at
# stride 2 on the bottom and right only).
DEFAULT_CHANNELS = (32, 64)
KERNEL_SIZE, STRIDE, PADDING = 3, 2, 1


def feature_sizes(image_shape, n_layers):
    """The spatial size (h_i, w_i) of the feature maps after each of ``n_layers`` stride-2
    convolutions, Eq. (J2), docs/convolution.md, applied n times: [(H, W), (h_1, w_1), ..., (h_n, w_n)],
    e.g. [(28, 28), (14, 14), (7, 7)]."""
    sizes = [tuple(image_shape)]
    for _ in range(n_layers):
        sizes.append(tuple(conv_output_size(s, KERNEL_SIZE, STRIDE, PADDING) for s in sizes[-1]))
    return sizes


class ConvEncoder:
    """The encoder trunk: stride-2 convolutions with ReLU, flattened, then an MLP.   Eq. (J10), docs/convolution.md

        X_0 = image(x),  X_i = act(conv_i(X_{i-1})) (i = 1..n),  h = MLP([flat(X_n), c])

    x (N, H W + C): an image flattened row by row, then its condition c (C = ``cond_dim``
    numbers, a ConditionalVAE's one-hot label; none for a plain VAE), which joins the features
    after the convolutions. h (N, out_features): out_features = hidden_dims[-1], or
    c_n h_n w_n + C with no hidden layer. Parameter names: "conv0.W" (c_1, 1, 3, 3), "conv0.b",
    ..., then the MLP's "h0.W" (c_n h_n w_n + C, hidden_dims[0]), "h0.b", ...
    """

    def __init__(self, image_shape, channels, hidden_dims, activation, rng, dtype, cond_dim=0):
        make_activation(activation)  # validates the name before any array is drawn
        self.image_shape, self.cond_dim = tuple(image_shape), cond_dim
        init = _INIT_FOR[activation]
        self.convs = [Conv2d(p, q, KERNEL_SIZE, stride=STRIDE, padding=PADDING, rng=rng, dtype=dtype, init=init)
                      for p, q in zip((1,) + tuple(channels[:-1]), channels)]
        self.activations = [make_activation(activation) for _ in self.convs]
        self.feature_shape = (channels[-1],) + feature_sizes(image_shape, len(channels))[-1]
        self.mlp = MLP((math.prod(self.feature_shape) + cond_dim,) + tuple(hidden_dims), activation, rng, dtype)

    @property
    def out_features(self):
        return self.mlp.out_features

    def forward(self, x):
        N, D = x.shape[0], math.prod(self.image_shape)
        h = x[:, :D].reshape((N, 1) + self.image_shape)
        for conv, act in zip(self.convs, self.activations):
            # The convolution's output is a fresh array read only by the activation: overwrite it.
            h = act.forward(conv.forward(h), inplace=True)
        features = h.reshape(N, -1)
        if self.cond_dim:
            features = np.concatenate([features, x[:, D:]], axis=1)
        return self.mlp.forward(features)

    def backward(self, dy, need_dx=True):
        """Backward through the MLP, then the convolutions in reverse. need_dx=False skips the
        first convolution's input gradient (returns None), for an encoder whose input is data."""
        dfeatures = self.mlp.backward(dy, need_dx=True)      # the convolutions below need it
        F = math.prod(self.feature_shape)
        dh = dfeatures[:, :F].reshape((-1,) + self.feature_shape)
        for i in reversed(range(len(self.convs))):
            dh = self.convs[i].backward(self.activations[i].backward(dh), need_dx=need_dx or i > 0)
        if not need_dx:
            return None
        return np.concatenate([dh.reshape(dh.shape[0], -1), dfeatures[:, F:]], axis=1)

    @property
    def params(self):
        return {**named(self._named_convs(), "params"), **self.mlp.params}

    @property
    def grads(self):
        return {**named(self._named_convs(), "grads"), **self.mlp.grads}

    def _named_convs(self):
        return {f"conv{i}": conv for i, conv in enumerate(self.convs)}


class ConvDecoder:
    """The decoder trunk: a Linear layer to the smallest feature maps, then stride-2 transposed
    convolutions with ReLU back to the image's size.   Eq. (J11), docs/convolution.md

        Y_n = unflat(act([z, c] W + b)),  Y_{i-1} = act(convT_i(Y_i)) (i = n..1),  output flat(Y_0)

    z (N, code_width) (the code, with a ConditionalVAE's condition appended) -> (N, c_1 H W): the
    feature maps Y_0 (N, c_1, H, W) as rows, which the output head (ConvNetworks.output_layer)
    turns into one number per pixel. The transposed convolutions mirror the encoder's
    convolutions: c_n -> c_n, c_n -> c_{n-1}, ..., c_2 -> c_1 channels (as the Keras example), each
    with the output padding (``output_padding``) that gives back the size the encoder's convolution
    came from.
    Parameter names: "h0.W" (code_width, c_n h_n w_n), "h0.b", "upconv0.W" (c_n, c_n, 3, 3), ...
    """

    def __init__(self, code_width, image_shape, channels, activation, rng, dtype):
        make_activation(activation)
        init = _INIT_FOR[activation]
        sizes = feature_sizes(image_shape, len(channels))          # [(H, W), ..., (h_n, w_n)]
        self.first_shape = (channels[-1],) + sizes[-1]
        self.dense = Linear(code_width, math.prod(self.first_shape), rng, dtype, init=init)
        self.dense_activation = make_activation(activation)
        ins, outs = (channels[-1],) + tuple(channels[:0:-1]), tuple(channels[::-1])
        self.upconvs = [ConvTranspose2d(p, q, KERNEL_SIZE, stride=STRIDE, padding=PADDING,
                                        output_padding=output_padding(sizes[i + 1], sizes[i]),
                                        rng=rng, dtype=dtype, init=init)
                        for p, q, i in zip(ins, outs, reversed(range(len(channels))))]
        self.activations = [make_activation(activation) for _ in self.upconvs]
        self.out_shape = (channels[0],) + sizes[0]

    @property
    def out_features(self):
        return math.prod(self.out_shape)

    def forward(self, z):
        N = z.shape[0]
        h = self.dense_activation.forward(self.dense.forward(z), inplace=True).reshape((N,) + self.first_shape)
        for up, act in zip(self.upconvs, self.activations):
            h = act.forward(up.forward(h), inplace=True)
        return h.reshape(N, -1)

    def backward(self, dy, need_dx=True):
        """Backward through the transposed convolutions in reverse, then the Linear layer; returns
        d loss / d input (N, code_width), or None with need_dx=False."""
        dh = dy.reshape((-1,) + self.out_shape)
        for up, act in zip(reversed(self.upconvs), reversed(self.activations)):
            dh = up.backward(act.backward(dh))
        dh = dh.reshape(dh.shape[0], -1)
        return self.dense.backward(self.dense_activation.backward(dh), need_dx=need_dx)

    @property
    def params(self):
        return named(self._named_layers(), "params")

    @property
    def grads(self):
        return named(self._named_layers(), "grads")

    def _named_layers(self):
        return {"h0": self.dense, **{f"upconv{i}": up for i, up in enumerate(self.upconvs)}}


def output_padding(small, large):
    """The output padding of the stride-2 transposed convolution from size ``small`` back to ``large``
    (each (h, w)), Eq. (J8), docs/convolution.md, solved for opad: 1 where the convolution halved an
    even length, 0 for an odd one. One number serves both axes, so their parities must agree
    (ConvNetworks checks)."""
    pads = {n - conv_transpose_output_size(m, KERNEL_SIZE, STRIDE, PADDING) for m, n in zip(small, large)}
    assert len(pads) == 1 and pads <= {0, 1}, (small, large)
    return pads.pop()


class Flattened:
    """A convolutional layer that reads and writes rows, as the VAE's heads do: x (N, P H W) is
    seen as images of ``in_shape`` (P, H, W), and the layer's output (N, Q, H', W') is given back
    as rows (N, Q H' W'). Reshapes only: ``params``, ``grads`` and the arithmetic are the layer's,
    so "dec.out.W" is the transposed convolution's own weight."""

    def __init__(self, layer, in_shape):
        self.layer, self.in_shape = layer, tuple(in_shape)
        self.out_shape = (layer.out_channels,) + layer.output_size(*self.in_shape[1:])

    @property
    def params(self):
        return self.layer.params

    @property
    def grads(self):
        return self.layer.grads

    @property
    def in_features(self):
        return math.prod(self.in_shape)

    @property
    def out_features(self):
        return math.prod(self.out_shape)

    def forward(self, x):
        return self.layer.forward(x.reshape((-1,) + self.in_shape)).reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        dx = self.layer.backward(dy.reshape((-1,) + self.out_shape), need_dx=need_dx)
        return None if dx is None else dx.reshape(dx.shape[0], -1)


class ConvNetworks:
    """The convolutional architecture (arch="conv"): what the VAE builds its trunks and output heads
    from, and what it says about them (config, description, memory per row, parameter count).

    input_dim : int            D = H W.
    hidden_dims : tuple of int the encoder's dense widths after the convolutions (the Keras example
                               has (16,) for a 2-D code); the decoder has none: its one Linear layer
                               maps the code straight to the smallest feature maps, as Keras's.
    activation : str           after every convolution and dense layer (ReLU in the Keras example).
    image_shape : (H, W)       None: a square image, H = W = sqrt(D). Odd sizes are fine, but the
                               two sides must halve alike (both even or both odd at each level), as
                               one output padding serves both axes.
    channels : tuple of int    (c_1, ..., c_n), the feature maps of each convolution; None: DEFAULT_CHANNELS.
    """

    name = "conv"

    def __init__(self, input_dim, hidden_dims, activation, image_shape=None, channels=None):
        self.hidden_dims, self.activation = tuple(hidden_dims), activation
        self.image_shape = self._check_image_shape(image_shape, input_dim)
        self.channels = DEFAULT_CHANNELS if channels is None else self._check_channels(channels)
        self.sizes = feature_sizes(self.image_shape, len(self.channels))
        for large in self.sizes[:-1]:         # the sizes a transposed convolution gives back
            if large[0] % 2 != large[1] % 2:
                raise ValueError(f"image_shape {self.image_shape}: the feature maps of {large[0]} x {large[1]} "
                                 "pixels have one even and one odd side; the transposed convolutions cannot mirror "
                                 "the convolutions (use fewer channels entries or another image size)")

    @staticmethod
    def _check_image_shape(image_shape, input_dim):
        if image_shape is None:
            side = math.isqrt(input_dim)
            if side * side != input_dim:
                raise ValueError(f"image_shape is needed for arch='conv': input_dim {input_dim} is not a square "
                                 "number of pixels; pass image_shape=(height, width)")
            return (side, side)
        shape = check.image_shape(image_shape)
        if shape[0] * shape[1] != input_dim:
            raise ValueError(f"image_shape {shape} has {shape[0] * shape[1]} pixels but input_dim is {input_dim}")
        return shape

    @staticmethod
    def _check_channels(channels):
        try:
            channels = tuple(channels)
        except TypeError:
            raise TypeError(f"channels must be a tuple of positive ints; got {channels!r}") from None
        if not channels:
            raise ValueError("channels must name at least one convolution, e.g. (32, 64)")
        return tuple(check.check_positive_int(c, "each entry of channels") for c in channels)

    @property
    def config(self):
        """The constructor arguments of the architecture, for VAE.config (JSON)."""
        return {"arch": self.name, "image_shape": list(self.image_shape), "channels": list(self.channels)}

    def describe(self, input_dim, latent_dim):
        """"1x28x28-conv32-conv64-400-20" for __repr__."""
        parts = ["1x{}x{}".format(*self.image_shape)] + [f"conv{c}" for c in self.channels]
        return "-".join(parts + [str(h) for h in self.hidden_dims] + [str(latent_dim)])

    def encoder(self, in_width, rng, dtype):
        """The encoder trunk for inputs of ``in_width`` = H W + C numbers."""
        return ConvEncoder(self.image_shape, self.channels, self.hidden_dims, self.activation, rng, dtype,
                           cond_dim=in_width - math.prod(self.image_shape))

    def decoder(self, code_width, rng, dtype):
        """The decoder trunk for codes of ``code_width`` numbers (Z + C)."""
        return ConvDecoder(code_width, self.image_shape, self.channels, self.activation, rng, dtype)

    def output_layer(self, decoder, width, rng, dtype):
        """One output head's layer: a transposed convolution c_1 -> 1 at stride 1 (the Keras example's
        last layer, before its sigmoid), reading the decoder's feature maps; ``width`` = H W.
        The last step of Eq. (J11), docs/convolution.md."""
        layer = Flattened(ConvTranspose2d(decoder.out_shape[0], 1, KERNEL_SIZE, stride=1, padding=PADDING,
                                          rng=rng, dtype=dtype), decoder.out_shape)
        assert layer.out_features == width, (layer.out_features, width)
        return layer

    @property
    def activations_per_row(self):
        """Numbers the decoder keeps per row in a forward pass: its feature maps (c_n h_n w_n after the
        Linear layer, then each transposed convolution's output)."""
        maps = [self.channels[-1] * math.prod(self.sizes[-1])]
        maps += [c * math.prod(s) for c, s in zip(self.channels[::-1], self.sizes[-2::-1])]
        return sum(maps)

    def count_parameters(self, cond_dim, code_width, encoder_head_width, n_output_heads):
        """The parameters of a VAE with these networks, counted from the shapes alone (for
        numpyvae.training.estimate_parameters): the convolutions (c_out c_in 9 + c_out each), the
        encoder's MLP and its heads (``encoder_head_width`` outputs in all, a Linear layer each), the
        decoder's Linear layer and transposed convolutions, and ``n_output_heads`` output heads of
        c_1 9 + 1 parameters."""
        F2 = KERNEL_SIZE ** 2
        enc_channels = list(zip((1,) + self.channels[:-1], self.channels))
        dec_channels = list(zip((self.channels[-1],) + self.channels[:0:-1], self.channels[::-1]))
        convs = sum((p * F2 + 1) * q for p, q in enc_channels + dec_channels)
        features = self.channels[-1] * math.prod(self.sizes[-1])
        widths = (features + cond_dim,) + self.hidden_dims
        mlp = sum((m + 1) * n for m, n in zip(widths[:-1], widths[1:]))
        return (convs + mlp + (widths[-1] + 1) * encoder_head_width + (code_width + 1) * features
                + n_output_heads * (self.channels[0] * F2 + 1))
