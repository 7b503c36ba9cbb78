"""The Variational Autoencoder: one minibatch from pixels to ELBO and back to every gradient.

Generative model (Eq. (E1), docs/elbo.md):   z ~ N(0, I),   x | z ~ p_theta(x | z)
Inference model (Eq. (E4), docs/elbo.md):    q_phi(z | x) = N(mu(x), diag(exp(logvar(x))))

The encoder is a trunk followed by one head per parameter of the posterior ("mu" and
"logvar", plus "tril" for a full-covariance posterior); the decoder is a trunk followed by one
head per output of the likelihood ("out": logits or mean; "logvar" for the learned-variance
Gaussian). The trunks are MLPs by default, the decoder's with the hidden widths reversed; with
arch="conv", convolutional networks (numpyvae.convnet). Which trunks and output layers a model
has is the business of ``model.networks`` (MLPNetworks below, or numpyvae.convnet.ConvNetworks).
Every log-variance head is a Linear layer (a transposed convolution at the end of a convolutional
decoder) followed by a smooth bound, SoftClip (Eq. (B8), docs/backprop.md), and starts with zero
weights and bias, so every input starts at variance 1 (docs/elbo.md, section 4). What the heads mean
is the business of two small objects: the posterior family (``model.posterior``,
numpyvae.distributions.DiagonalGaussianPosterior or FullGaussianPosterior) and the likelihood
(``model.likelihood``).

Per datapoint, with L reparameterized samples z_l = mu + exp(logvar/2) * eps_l,

    ELBO(x) = 1/L sum_l log p(x | z_l)  -  KL(q(z|x) || N(0, I))        Eq. (E6), docs/elbo.md

with the KL in closed form, Eq. (K2), docs/kl.md. ``loss_and_grads`` returns
loss = mean_b -( 1/L sum_l log p(x_b | z_lb) - beta * KL_b ) and its gradient with respect
to every parameter, by the backward pass of Eq. (B7), docs/backprop.md; read it top to bottom.

A condition: every public method takes labels ``y`` as a keyword. A plain VAE takes none;
numpyvae.conditional.ConditionalVAE turns them into one-hot rows c (B, C) that are appended to
the encoder's and the decoder's input (``_condition``), and nothing else differs.
"""

import math

import numpy as np

from . import _validate as check
from .distributions import (
    LOGVAR_RANGE, log_mean_exp, log_standard_normal, log_q_from_eps, make_likelihood, make_posterior,
    normalized_importance_weights,
)
from .convnet import ConvNetworks
from .estimators import ForwardPass, choose_estimator
from .layers import MLP, Head, Linear, SoftClip, named
from .parallel import rowwise

__all__ = ["VAE", "DEFAULT_HIDDEN_DIMS", "DEFAULT_LATENT_DIM", "DEFAULT_ACTIVATION", "MLPNetworks",
           "ARCHITECTURES", "make_networks"]

# The one default architecture: VAE(), the command line, the lab and the tutorials all start
# from it (784-400-20 ReLU on MNIST, as pytorch/examples' VAE).
DEFAULT_HIDDEN_DIMS = (400,)
DEFAULT_LATENT_DIM = 20
DEFAULT_ACTIVATION = "relu"

# The range (low, high) of the posterior's log-variance, kept by a smooth bound on the "logvar" head
# (SoftClip, Eq. (B8), docs/backprop.md): distributions.LOGVAR_RANGE, (-40, 40), shared with the
# learned-variance decoder; the reasons for the numbers: docs/elbo.md, section 4.
POSTERIOR_LOGVAR_RANGE = LOGVAR_RANGE

# Peak memory one chunk of VAE.log_likelihood (and lab.diagnostics.log_likelihood_prior_sampling) may
# take by default: decoder outputs and the likelihood's temporaries included.
LOG_LIKELIHOOD_CHUNK_BYTES = 64 << 20


class MLPNetworks:
    """The fully-connected architecture (arch="mlp", the default): what the VAE builds its trunks and
    output heads from. The encoder trunk is an MLP of ``hidden_dims``, the decoder's an MLP of the
    widths reversed, and each output head a Linear layer from the decoder's last width (or the code,
    with no hidden layer) to the D pixels. numpyvae.convnet.ConvNetworks is the other architecture,
    with the same methods."""

    name = "mlp"
    config = {"arch": "mlp", "image_shape": None, "channels": None}

    def __init__(self, hidden_dims, activation):
        self.hidden_dims, self.activation = tuple(hidden_dims), activation

    def describe(self, input_dim, latent_dim):
        """"784-400-20" for __repr__."""
        return "-".join(str(d) for d in (input_dim,) + self.hidden_dims + (latent_dim,))

    def encoder(self, in_width, rng, dtype):
        return MLP((in_width,) + self.hidden_dims, self.activation, rng, dtype)

    def decoder(self, code_width, rng, dtype):
        return MLP((code_width,) + self.hidden_dims[::-1], self.activation, rng, dtype)

    def output_layer(self, decoder, width, rng, dtype):
        return Linear(decoder.out_features, width, rng, dtype)

    @property
    def activations_per_row(self):
        """Numbers the decoder keeps per row in a forward pass: its hidden activations."""
        return sum(self.hidden_dims)


ARCHITECTURES = ("mlp", "conv")


def make_networks(arch, input_dim, hidden_dims, activation, image_shape=None, channels=None):
    """The architecture named ``arch``: MLPNetworks ("mlp"), or ConvNetworks ("conv") for images of
    ``image_shape`` (H, W) with H W = input_dim and ``channels`` (None: the defaults). ValueError
    naming the argument for an unknown arch, or for image_shape / channels given to "mlp"."""
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHITECTURES)}")
    if arch == "conv":
        return ConvNetworks(input_dim, hidden_dims, activation, image_shape, channels)
    for name, value in (("image_shape", image_shape), ("channels", channels)):
        if value is not None:
            raise ValueError(f"{name} applies to arch='conv' only; arch='mlp' reads rows of input_dim numbers")
    return MLPNetworks(hidden_dims, activation)


class VAE:
    """A VAE with a Gaussian posterior and an MLP (or convolutional) encoder and decoder.

    Parameters
    ----------
    input_dim : int            D, the width of a datapoint (784 for MNIST).
    hidden_dims : tuple of int encoder widths; the decoder uses them reversed. ``()`` gives a
                               linear encoder and decoder. For arch="conv", the encoder's dense
                               widths after its convolutions.
    latent_dim : int           Z.
    likelihood : str           "bernoulli" (decoder gives logits), "gaussian" (fixed variance
                               ``obs_var``), or "gaussian-learned" (a per-pixel log-variance head).
    obs_var : float            lambda, the observation variance of likelihood="gaussian".
    activation : str           "tanh" | "relu" | "sigmoid" | "softplus".
    seed : int                 seeds the initialisation only; sampling takes ``eps`` or ``rng``.
    dtype : np.float32 | np.float64   every parameter and every computation uses this dtype.
    posterior : str            "diag" (default) or "full": a full-covariance Gaussian through a
                               Cholesky factor with an extra encoder head "enc.tril" (docs/kl.md, F1).
    decoder_mean : str         the mean of the Gaussian likelihoods: "identity" (the "out" head itself)
                               or "sigmoid" (sigmoid of it: for data in [0, 1] such as pixels, a mean
                               that cannot leave that range). docs/distributions.md, section 6.
    obs_std_min : float | None likelihood="gaussian-learned" only: the floor of every pixel's standard
                               deviation, in data units (None: no floor). docs/distributions.md, section 4.
                               Either one given to a likelihood that does not use it is a ValueError.
    arch : str                 "mlp" (default) or "conv": convolutional trunks as in the Keras VAE
                               example (numpyvae.convnet; Eqs. (J10), (J11) of docs/convolution.md).
    image_shape : (H, W)       arch="conv" only: the image a row of x holds (None: square).
    channels : tuple of int    arch="conv" only: the feature maps of each convolution (None: (32, 64)).
                               Parameter names for arch="conv": "enc.conv0.W", ..., "enc.h0.W", ...,
                               "dec.h0.W", "dec.upconv0.W", ..., "dec.out.W" (a transposed convolution).
    """

    cond_dim = 0   # C, the width of the condition appended to both networks' inputs (ConditionalVAE)

    def __init__(self, input_dim, hidden_dims=DEFAULT_HIDDEN_DIMS, latent_dim=DEFAULT_LATENT_DIM,
                 likelihood="bernoulli", obs_var=1.0, activation=DEFAULT_ACTIVATION, seed=0, dtype=np.float32,
                 posterior="diag", decoder_mean="identity", obs_std_min=None, arch="mlp", image_shape=None,
                 channels=None):
        self._keep_arguments(input_dim, hidden_dims, latent_dim, likelihood, obs_var, activation, seed, dtype,
                             decoder_mean, obs_std_min, arch, image_shape, channels)
        self.posterior = make_posterior(posterior, self.latent_dim)
        self._build_networks(code_width=self.latent_dim)
        if "tril" in self.enc_heads:
            # Start at a diagonal posterior: the off-diagonal factor grows only if it helps.
            self.enc_heads["tril"].params["W"][...] = 0.0
        # The live arrays, by their public names. Writing into them changes the model.
        self.params = self._named("params")

    def _keep_arguments(self, input_dim, hidden_dims, latent_dim, likelihood, obs_var, activation, seed, dtype,
                        decoder_mean, obs_std_min, arch="mlp", image_shape=None, channels=None):
        """Check and keep the arguments of the networks and the likelihood (numpyvae.discrete.DiscreteVAE
        shares this method, with the default MLP networks)."""
        self.input_dim = check.check_positive_int(input_dim, "input_dim")
        self.latent_dim = check.check_positive_int(latent_dim, "latent_dim")
        self.hidden_dims = check.hidden_widths(hidden_dims)
        self.dtype = check.float_dtype(dtype)
        # Checked whatever the likelihood: the config is saved as JSON, which cannot hold inf or NaN.
        self.obs_var = check.check_finite_number(obs_var, "obs_var", low=0.0, low_inclusive=False)
        self.seed = check.check_nonnegative_int(seed, "seed")
        self.likelihood = make_likelihood(likelihood, self.obs_var, decoder_mean, obs_std_min)
        # Both checked by make_likelihood (and refused for a likelihood that does not use them).
        self.decoder_mean = decoder_mean
        self.obs_std_min = None if obs_std_min is None else float(obs_std_min)
        self.activation = activation
        self.networks = make_networks(arch, self.input_dim, self.hidden_dims, activation, image_shape, channels)

    def _build_networks(self, code_width):
        """The encoder (a trunk, then one Linear head per entry of the posterior's head_widths) and the
        decoder (a trunk reading codes of ``code_width`` numbers, then one head per output of the
        likelihood), both reading the condition too; trunks and output layers from ``self.networks``,
        drawn from default_rng(seed) in this order (numpyvae.discrete.DiscreteVAE shares this method)."""
        rng = np.random.default_rng(self.seed)
        D, C, nets = self.input_dim, self.cond_dim, self.networks
        self.encoder = nets.encoder(D + C, rng, self.dtype)
        self.enc_heads = {name: self._make_head(Linear(self.encoder.out_features, width, rng, self.dtype),
                                                POSTERIOR_LOGVAR_RANGE if name == "logvar" else None)
                          for name, width in self.posterior.head_widths.items()}
        self.decoder = nets.decoder(code_width + C, rng, self.dtype)
        self.dec_heads = {name: self._make_head(nets.output_layer(self.decoder, D, rng, self.dtype),
                                                self.likelihood.head_ranges.get(name))
                          for name in self.likelihood.heads}

    def _make_head(self, linear, value_range=None):
        """An output head from its layer ``linear`` (a Linear layer, or the convolutional decoder's
        output layer): the layer itself, or, given a ``value_range`` (low, high), a log-variance head:
        the layer then SoftClip(low, high) (Eq. (B8), docs/backprop.md), which starts with zero weights
        and zero bias (docs/elbo.md, section 4)."""
        if value_range is None:
            return linear
        # Zero weights: every input starts at log-variance 0, i.e. variance 1 (the prior's, for the
        # posterior), whatever the scale of the data. Random weights make the initial log-variance a
        # random linear function of the input, as large as the input: up to +-15 to +-33 on 6-D data of
        # scale 5 (initial ELBOs of -2.5e4 to -1.6e12 nats) and several hundred on 0-255 pixels (NaN or
        # -inf in float32). The gradient dW = h^T dy is not zero, so the head learns from the first step.
        linear.params["W"][...] = 0.0
        return Head(linear, SoftClip(*value_range))

    def _named(self, attr):
        """The layers' ``params`` or ``grads`` under their public names: "enc.h0.W", "enc.mu.b", ..."""
        layers = {"enc": self.encoder, **{f"enc.{k}": v for k, v in self.enc_heads.items()},
                  "dec": self.decoder, **{f"dec.{k}": v for k, v in self.dec_heads.items()}}
        return named(layers, attr)

    # ------------------------------------------------------------------ description

    @property
    def config(self):
        """The constructor arguments, JSON-serialisable (used by checkpoints)."""
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims),
                "latent_dim": self.latent_dim, "likelihood": self.likelihood.name,
                "obs_var": self.obs_var, "activation": self.activation, "seed": self.seed,
                "dtype": self.dtype.name, "posterior": self.posterior.name, "decoder_mean": self.decoder_mean,
                "obs_std_min": self.obs_std_min, **self.networks.config}

    def __repr__(self):
        arch = self.networks.describe(self.input_dim, self.latent_dim)
        extra = "" if self.decoder_mean == "identity" else f"decoder_mean={self.decoder_mean!r}, "
        extra += "" if self.obs_std_min is None else f"obs_std_min={self.obs_std_min:g}, "
        return (f"{type(self).__name__}({arch}, likelihood={self.likelihood.name!r}, {extra}"
                f"activation={self.activation!r}, posterior={self.posterior.name!r}, dtype={self.dtype.name}, "
                f"{self.num_params()} parameters)")

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------ the pieces of a pass

    def _inputs(self, x, y):
        """The checked batch x (B, D) of the model's dtype and its condition c (B, C), or None."""
        x = check.as_batch(x, self.input_dim, self.dtype, "x")
        self.likelihood.check_targets(x)
        return x, self._condition(y, x.shape[0])

    def _condition(self, y, batch):
        """The condition appended to both networks' inputs for ``batch`` rows: None for a plain VAE,
        which takes no labels (ConditionalVAE supplies the one-hot rows)."""
        if y is not None:
            raise ValueError(f"y (class labels) is for a ConditionalVAE; {type(self).__name__} is unconditional")
        return None

    def _codes(self, z, y):
        """Checked codes z (N, Z) and their condition (N, C) or None."""
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        return z, self._condition(y, z.shape[0])

    @staticmethod
    def _join(a, c):
        """[a, c]: the input with its condition appended (a itself when there is none)."""
        return a if c is None else np.concatenate([a, c], axis=1)

    def _posterior(self, x, c, q):
        """The posterior's parameters: the encoder's for x, or ``q`` given explicitly (checked), a dict
        with the heads' shapes ({"mu": (B, Z), "logvar": (B, Z)[, "tril"]}): free variational parameters
        in place of the amortised ones (the amortisation gap, docs/elbo.md E3)."""
        if q is None:
            return self._encode(x, c)
        if not isinstance(q, dict) or set(q) != set(self.posterior.head_widths):
            raise ValueError(f"q must be a dict with the keys {sorted(self.posterior.head_widths)}; "
                             f"got {sorted(q) if isinstance(q, dict) else type(q).__name__}")
        return {name: check.as_batch(q[name], width, self.dtype, f"q[{name!r}]")
                for name, width in self.posterior.head_widths.items()}

    def _encode(self, x, c):
        """The posterior's parameters, Eq. (E4), docs/elbo.md: {"mu": (B, Z), "logvar": (B, Z)[, "tril"]}."""
        h = self.encoder.forward(self._join(x, c))
        return {name: head.forward(h) for name, head in self.enc_heads.items()}

    def _decode(self, z, c):
        """The decoder's heads for codes z (N, Z) or (L, B, Z), with the condition c (B, C) of each
        datapoint repeated for its L samples: {head: (N, D) or (L, B, D)}. The L samples are stacked
        into the batch axis, so each layer is one matmul for all of them."""
        lead = z.shape[:-1]
        if c is not None and z.ndim == 3:
            c = np.broadcast_to(c, (z.shape[0],) + c.shape).reshape(-1, c.shape[-1])
        h = self.decoder.forward(self._join(z.reshape(-1, z.shape[-1]), c))
        return {name: head.forward(h).reshape(lead + (self.input_dim,)) for name, head in self.dec_heads.items()}

    def _decoder_backward(self, dlogpx_dout, dloss_dlogpx):
        """Backward through the decoder (Eq. (B7), docs/backprop.md), filling its gradients.

        dlogpx_dout: d log p(x|z_lb) / d each decoder output, (L, B, D); dloss_dlogpx: d loss /
        d log p(x|z_lb), (L, B). Returns d loss / dz, (L, B, Z) (numpyvae.discrete.DiscreteVAE shares
        this method and _decode: its codes are (L, B, Z) or, one-hot, (L, B, Z C))."""
        L, B = dloss_dlogpx.shape
        dh = None
        for name, head in self.dec_heads.items():
            # d loss / d output = d log p / d output * d loss / d log p, in blocks on the threads
            dout = rowwise(np.multiply, dlogpx_dout[name], dloss_dlogpx[..., None])
            g = head.backward(dout.reshape(L * B, self.input_dim))
            dh = g if dh is None else dh + g
        # The decoder's input is [z, c]; only z's part of its gradient is wanted.
        dzc = self.decoder.backward(dh)
        width = dzc.shape[1] - self.cond_dim
        return dzc[:, :width].reshape(L, B, width)

    def _encoder_backward(self, dq):
        """Backward through the encoder heads and trunk (the last steps of Eq. (B7), docs/backprop.md):
        every head reads the same trunk output, so their input gradients add."""
        # The encoder's input is data: no gradient is needed for it (saves the first layer's
        # input-gradient matmul; with no hidden layer, the heads' own input gradients).
        trunk = bool(self.encoder.params)
        dh = None
        for name, g in dq.items():
            d = self.enc_heads[name].backward(g, need_dx=trunk)
            dh = d if dh is None else dh + d
        if trunk:
            self.encoder.backward(dh, need_dx=False)

    def _log_weights(self, x, c, q, eps):
        """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x), z_k from eps (K, B, Z): (K, B).
        Eq. (I1), docs/importance.md, with log q written with eps: Eq. (I3), docs/importance.md."""
        z = self.posterior.sample(q, eps)
        log_px = self.likelihood.log_prob(x, self._decode(z, c))
        return log_px + log_standard_normal(z) - log_q_from_eps(q["logvar"], eps)

    # ------------------------------------------------------------------ public API: the networks

    def encode(self, x, *, y=None):
        """Posterior parameters for a batch x (B, D): ``(mu, logvar)``, each (B, Z),
        with logvar = log sigma^2: q(z|x) = N(mu, diag(exp(logvar))), Eq. (E4), docs/elbo.md.
        For posterior="full", logvar is the log of the squared diagonal of the Cholesky factor
        (posterior_params has the whole factor)."""
        q = self._encode(*self._inputs(x, y))
        return q["mu"], q["logvar"]

    def posterior_params(self, x, *, y=None):
        """All of the posterior's parameters for a batch x (B, D): {"mu", "logvar"[, "tril"]}."""
        return self._encode(*self._inputs(x, y))

    def decode(self, z, *, y=None):
        """The mean of p(x|z) for codes z (B, Z): Bernoulli probabilities sigmoid(logits)
        or the Gaussian mean, shape (B, D)."""
        return self.likelihood.mean(self._decode(*self._codes(z, y)))

    def decoder_outputs(self, z, *, y=None):
        """The decoder's raw outputs for codes z (N, Z): a dict from head name to an (N, D) array.
        Bernoulli likelihood: {"out": logits}; fixed-variance Gaussian: {"out": mean, or the
        mean's logit for decoder_mean="sigmoid"}; learned-variance Gaussian: also "logvar", the
        per-pixel log-variance. decode(z) is the likelihood's mean computed from these."""
        return self._decode(*self._codes(z, y))

    def log_p_x_given_z(self, x, z, *, y=None):
        """log p(x | z), summed over the D pixels, for a batch x (B, D) and L codes per datapoint,
        z (L, B, Z): z[l, b] is paired with x[b]. Returns (L, B), from the likelihood's log_prob
        (the Bernoulli or Gaussian log-likelihoods of docs/distributions.md)."""
        x, c = self._inputs(x, y)
        z = np.asarray(z)
        if z.ndim != 3 or z.shape[1:] != (x.shape[0], self.latent_dim):
            raise ValueError(f"z must have shape (L, {x.shape[0]}, {self.latent_dim}) (L codes for each of "
                             f"the {x.shape[0]} rows of x); got shape {z.shape}")
        z = check.as_batch(z.reshape(-1, self.latent_dim), self.latent_dim, self.dtype, "z").reshape(z.shape)
        return self.likelihood.log_prob(x, self._decode(z, c))

    def reconstruct(self, x, *, y=None):
        """decode(mu(x)): the reconstruction at the posterior mean, shape (B, D)."""
        return self.decode(self.encode(x, y=y)[0], y=y)

    def sample(self, n, rng):
        """Decoded means of n codes drawn from the prior N(0, I): shape (n, D)."""
        n = check.check_positive_int(n, "n")
        return self.decode(check.check_rng(rng).standard_normal((n, self.latent_dim), dtype=self.dtype))

    # ------------------------------------------------------------------ public API: the objectives

    def elbo_terms(self, x, eps=None, n_samples=1, rng=None, *, y=None, q=None):
        """Per-datapoint ``{"elbo", "rec", "kl"}``, each (B,): rec = 1/L sum_l log p(x|z_l),
        kl = KL(q(z|x) || p(z)) in closed form, elbo = rec - kl.   Eq. (E6), docs/elbo.md
        ``q``: a posterior given explicitly ({"mu", "logvar"}, each (B, Z)) instead of the encoder's."""
        x, c = self._inputs(x, y)
        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)
        q = self._posterior(x, c, q)
        rec = self.likelihood.log_prob(x, self._decode(self.posterior.sample(q, eps), c)).mean(axis=0)
        kl = self.posterior.kl(q)
        return {"elbo": rec - kl, "rec": rec, "kl": kl}

    def elbo(self, x, eps=None, n_samples=1, rng=None, *, y=None, q=None):
        """The ELBO of each datapoint in nats, shape (B,).   Eq. (E6), docs/elbo.md

        The reconstruction term averages over L = n_samples reparameterized samples; the KL
        is analytic. Pass ``eps`` (L, B, Z) to fix the noise, or ``rng`` to draw it.
        """
        return self.elbo_terms(x, eps=eps, n_samples=n_samples, rng=rng, y=y, q=q)["elbo"]

    def loss_and_grads(self, x, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0,
                       return_terms=False, baseline=None, *, y=None):
        """The minibatch loss and its gradient with respect to every parameter.

            loss = 1/B sum_b -( 1/L sum_l log p(x_b | z_lb) - beta * KL_b )      Eq. (E7), docs/elbo.md

        ``estimator`` chooses how the data term's gradient reaches the encoder (a name in
        numpyvae.estimators.ESTIMATORS, docs/estimators.md); the decoder's gradient is pathwise in
        theta and the same for every estimator. The reported loss is the same number for every
        estimator (analytic KL), so runs with different estimators are comparable.
        ``baseline`` (estimator="score" only): None or a baseline object (numpyvae.estimators:
        LeaveOneOutBaseline, which needs L >= 2, EMABaseline, LearnedBaseline), updated after the
        estimate.

        Returns ``(loss, grads)``: a Python float and a dict with exactly the keys and
        shapes of ``self.params``. With ``return_terms=True`` also the per-datapoint
        ``{"elbo", "rec", "kl"}`` of this forward pass (what a trainer reports, at no extra cost).
        The backward pass is Eq. (B7), docs/backprop.md.
        """
        x, c = self._inputs(x, y)
        estimate_dq = choose_estimator(estimator, self.posterior, baseline)
        beta = check.check_finite_number(beta, "beta", low=0.0)
        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)   # (L, B, Z)
        L, B, _ = eps.shape

        # Forward: encode, sample, decode and score, the loss.
        q = self._encode(x, c)                                  # q(z|x), Eq. (E4): mu, logvar (B, Z)
        z = self.posterior.sample(q, eps)                       # z = mu + sigma eps, Eq. (R1): (L, B, Z)
        out = self._decode(z, c)                                # the decoder's heads, each (L, B, D)
        log_px, dlogpx_dout = self.likelihood.log_prob_and_grad(x, out)   # log p(x|z), (L, B), Eqs. (L1)/(G1)
        kl = self.posterior.kl(q)                               # KL(q || N(0, I)), Eq. (K2): (B,)
        rec = log_px.mean(axis=0)
        loss = -(rec - beta * kl).mean()                        # Eq. (E7)

        # Backward: the decoder, then d loss / dq by the estimator (with the KL's share), then the encoder.
        dz = self._decoder_backward(dlogpx_dout, np.full((L, B), -1.0 / (L * B), dtype=self.dtype))  # Eq. (B7)
        dq = estimate_dq(self.posterior, ForwardPass(x, q, eps, z, log_px), dz, beta, baseline)  # docs/estimators.md
        self._encoder_backward(dq)                              # Eq. (B7)
        grads = self._named("grads")
        if return_terms:
            return float(loss), grads, {"elbo": rec - kl, "rec": rec, "kl": kl}
        return float(loss), grads

    def posterior_grads(self, x, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0, baseline=None,
                        *, y=None, q=None):
        """Per-datapoint gradient estimates with respect to the posterior parameters.

        Returns ``(d_mu, d_logvar)``, each (B, Z): row b is the estimator's gradient of datapoint
        b's own loss  -(1/L sum_l log p(x_b|z_lb) - beta KL_b)  with respect to (mu_b, logvar_b),
        i.e. B times what loss_and_grads sends into the encoder heads. Rows are independent
        estimates, so a batch of R copies of one datapoint gives R independent draws of the
        estimator in one vectorised call (numpyvae.lab.variance uses this). The same pieces as
        loss_and_grads, stopping before the encoder. With ``q`` given explicitly, the gradient with
        respect to those free parameters (tutorials/08 optimises them, one datapoint at a time).
        """
        x, c = self._inputs(x, y)
        estimate_dq = choose_estimator(estimator, self.posterior, baseline)
        beta = check.check_finite_number(beta, "beta", low=0.0)
        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)
        L, B, _ = eps.shape
        q = self._posterior(x, c, q)
        z = self.posterior.sample(q, eps)
        log_px, dlogpx_dout = self.likelihood.log_prob_and_grad(x, self._decode(z, c))
        dz = self._decoder_backward(dlogpx_dout, np.full((L, B), -1.0 / (L * B), dtype=self.dtype))
        dq = estimate_dq(self.posterior, ForwardPass(x, q, eps, z, log_px), dz, beta, baseline)
        return dq["mu"] * B, dq["logvar"] * B

    def iwae_bound(self, x, k=5, eps=None, rng=None, *, y=None, q=None):
        """The importance-weighted estimate of each datapoint, shape (B,).   Eq. (I4), docs/importance.md

            L^_K(x) = log 1/K sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x),   K = ``k``

        A random number (one draw of K samples), the same quantity as log_likelihood. Its
        expectation L_K(x) is the bound: L_1 is the ELBO (L^_1 samples the KL too), and L_K never
        decreases with K and, for bounded weights, tends to log p(x).
        """
        x, c = self._inputs(x, y)
        eps = check.noise(eps, k, x.shape[0], self.latent_dim, rng, self.dtype, count_name="k")
        return log_mean_exp(self._log_weights(x, c, self._posterior(x, c, q), eps), axis=0)

    def iwae_loss_and_grads(self, x, k=5, eps=None, rng=None, return_terms=False, *, y=None):
        """The IWAE training loss -1/B sum_b L^_K(x_b) and its gradient (K = ``k``).   Eq. (I5), docs/importance.md

        With normalised weights w~_k = w_k / sum_k' w_k',  d L^_K / d params = sum_k w~_k d log w_k / d params,
        where log w_k reaches the parameters in three ways (Eq. (I7), docs/importance.md): through
        the decoder (log p(x|z_k)), along the path z_k = mu + G eps_k (in log p(x|z_k) + log p(z_k)),
        and directly through -log q = +1/2 sum_j (log 2pi + logvar_j + eps_kj^2), whose
        logvar-derivative is +1/2. As sum_k w~_k = 1, the direct path adds -1/(2B) to every
        d loss / d logvar_bj.
        """
        x, c = self._inputs(x, y)
        eps = check.noise(eps, k, x.shape[0], self.latent_dim, rng, self.dtype, count_name="k")   # (K, B, Z)
        K, B, _ = eps.shape

        # Forward: encode, sample, decode and score, the log-weights and the bound.
        q = self._encode(x, c)                                  # Eq. (E4)
        z = self.posterior.sample(q, eps)                       # Eq. (R1): (K, B, Z)
        log_px, dlogpx_dout = self.likelihood.log_prob_and_grad(x, self._decode(z, c))   # (K, B)
        log_w = log_px + log_standard_normal(z) - log_q_from_eps(q["logvar"], eps)      # Eqs. (I1), (I3)
        bound = log_mean_exp(log_w, axis=0)                     # L^_K, Eq. (I4): (B,)
        loss = -float(np.mean(bound))

        # Backward, Eq. (I5): d loss / d log w_k = -w~_k / B, then the three paths of Eq. (I7).
        dlogw = normalized_importance_weights(log_w, axis=0) * (-1.0 / B)    # (K, B)
        dz = self._decoder_backward(dlogpx_dout, dlogw)         # through log p(x|z)
        dz = dz + dlogw[..., None] * (-z)                       # through log p(z): d/dz = -z
        dq = self.posterior.sample_backward(q, eps, dz)         # along the path z = mu + G eps
        # through -log q directly: d(-log q)/dlogvar_j = +1/2, times sum_k (-w~_k / B) = -1/B: -1/(2B).
        dq["logvar"] = dq["logvar"] + 0.5 * dlogw.sum(axis=0)[:, None]
        self._encoder_backward(dq)
        grads = self._named("grads")
        if return_terms:
            # The ELBO's terms from the same samples, so IWAE runs report numbers comparable with ELBO runs.
            rec, kl = log_px.mean(axis=0), self.posterior.kl(q)
            return loss, grads, {"bound": bound, "elbo": rec - kl, "rec": rec, "kl": kl}
        return loss, grads

    def log_likelihood(self, x, n_importance=1000, rng=None, chunk_size=None, *, y=None, q=None):
        """Importance-weighted estimate of log p(x), shape (B,).   Eq. (I2), docs/importance.md

            log p(x) ~= log 1/K sum_k  p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x)

        computed with log-sum-exp over the K log-weights. The K samples are processed
        ``chunk_size`` at a time (default: log_likelihood_chunk_size, as many as fit in
        LOG_LIKELIHOOD_CHUNK_BYTES, 64 MiB of peak memory per chunk), so memory stays bounded for any
        K. The result is the random estimate L^_K(x) (docs/importance.md, section 3); its expectation
        L_K(x) is a lower bound on log p(x), never below the ELBO, that tightens with K (to log p(x)
        for bounded weights). ``q``: a posterior given explicitly, as in elbo_terms.
        """
        x, c = self._inputs(x, y)
        K = check.check_positive_int(n_importance, "n_importance")
        check.check_rng(rng)
        B = x.shape[0]
        chunk_size = check.check_positive_int(
            self.log_likelihood_chunk_size(B, K) if chunk_size is None else chunk_size, "chunk_size")
        log_sum = np.full(B, -np.inf)
        q = self._posterior(x, c, q)       # the same posterior for every chunk
        for start in range(0, K, chunk_size):
            k = min(chunk_size, K - start)
            eps = rng.standard_normal((k, B, self.latent_dim), dtype=self.dtype)
            # Combine chunks by log-sum-exp: log sum_all = logaddexp(log sum_before, log sum_chunk).
            log_sum = np.logaddexp(log_sum, log_mean_exp(self._log_weights(x, c, q, eps), axis=0) + math.log(k))
        return (log_sum - math.log(K)).astype(self.dtype)

    def log_likelihood_chunk_size(self, batch, n_samples):
        """How many of ``n_samples`` importance samples for ``batch`` datapoints one chunk of
        log_likelihood takes so that its peak memory stays within LOG_LIKELIHOOD_CHUNK_BYTES. Per
        sample: the decoder's activations (networks.activations_per_row: its hidden widths, or a
        convolutional decoder's feature maps), each decoder head's (B, D) output, and seven more
        (B, D) temporaries for the likelihood (measured peaks: 2.6 for the fixed-variance and 5.6 for
        the learned-variance Gaussian; the Bernoulli's were 4.6 until it was computed in cache-sized
        blocks, numpyvae.parallel, and are now a block's), and one more for a sigmoid mean,
        which lives beside them (decoder_mean="sigmoid"). test_log_likelihood_memory_is_bounded
        measures the peak. A convolutional decoder's im2col temporaries come on top, bounded apart by
        numpyvae.layers.CONV_CHUNK_BYTES."""
        temporaries = 7 + (self.decoder_mean == "sigmoid")
        per_sample = batch * self.dtype.itemsize * (
            self.input_dim * (len(self.dec_heads) + temporaries) + self.networks.activations_per_row)
        return max(1, min(n_samples, LOG_LIKELIHOOD_CHUNK_BYTES // per_sample))

