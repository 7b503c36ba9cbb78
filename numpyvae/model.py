"""The Variational Autoencoder: one minibatch from pixels to ELBO and back to every gradient.

Generative model (Eq. (E1), docs/elbo.md):   z ~ N(0, I),   x | z ~ p_theta(x | z)
Inference model (Eq. (E4), docs/elbo.md):    q_phi(z | x) = N(mu(x), diag(exp(logvar(x))))

The encoder is an MLP trunk followed by Linear heads (mu and logvar, plus "tril" for a
full-covariance posterior); the decoder is an MLP trunk with the hidden widths reversed,
followed by one Linear head per output of the likelihood ("out": logits or mean; "logvar"
for the learned-variance Gaussian). Every log-variance head is a Linear layer followed by a
smooth bound, SoftClip (Eq. (B8), docs/backprop.md), and starts with zero weights and bias, so
every input starts at variance 1 (docs/elbo.md, section 4).

Per datapoint, with L reparameterized samples z_l = mu + exp(logvar/2) * eps_l,

    ELBO(x) = 1/L sum_l log p(x | z_l)  -  KL(q(z|x) || N(0, I))        Eq. (E6), docs/elbo.md

with the KL in closed form, Eq. (K2), docs/kl.md. ``loss_and_grads`` returns
loss = mean_b -( 1/L sum_l log p(x_b | z_bl) - beta * KL_b ) and its gradient with respect
to every parameter, by the backward pass of Eq. (B7), docs/backprop.md.

Internally every pass takes an optional condition ``c`` (B, C) that is concatenated to the
encoder's input and to the decoder's input; the plain VAE passes None, and
numpyvae.conditional.ConditionalVAE passes one-hot labels.
"""

import math

import numpy as np

from . import _validate as check
from .distributions import (
    LOGVAR_RANGE, kl_diag_gaussian_standard, kl_diag_gaussian_standard_grad, kl_full_gaussian_standard,
    log_q_from_eps, log_standard_normal, make_likelihood, normalized_importance_weights, reparameterize,
    reparameterize_backward, reparameterize_full, reparameterize_full_backward,
)
from .estimators import check_baseline, leave_one_out_baseline, score_function_grad, stl_path_grad_z
from .layers import MLP, Head, Linear, SoftClip

__all__ = ["VAE", "ESTIMATORS", "POSTERIORS"]

# How the data term's gradient reaches the encoder (docs/estimators.md):
#   reparam  through z = mu + sigma * eps                       (pathwise)
#   score    (f(z) - b) * d log q / d phi, f = log p(x|z)        (REINFORCE), optional baseline
#   blocked  not at all: only the KL term trains the encoder     (no reparameterization)
#   stl      pathwise, with the ELBO in its Monte Carlo entropy form and the score term dropped
ESTIMATORS = ("reparam", "score", "blocked", "stl")

# "diag": q = N(mu, diag(exp(logvar))); "full": q = N(mu, L L^T), L = diag(exp(logvar/2)) + T.
POSTERIORS = ("diag", "full")


# The range (low, high) of the posterior's log-variance, kept by a smooth bound on the "logvar" head
# (SoftClip, Eq. (B8), docs/backprop.md): distributions.LOGVAR_RANGE, (-40, 40), shared with the
# learned-variance decoder; the reasons for the numbers: docs/elbo.md, section 4.
POSTERIOR_LOGVAR_RANGE = LOGVAR_RANGE

# Peak memory one chunk of VAE.log_likelihood (and diagnostics.log_likelihood_prior_sampling) may
# take by default: decoder outputs and the likelihood's temporaries included.
LOG_LIKELIHOOD_CHUNK_BYTES = 64 << 20


class VAE:
    """A VAE with a Gaussian posterior and an MLP encoder and decoder.

    Parameters
    ----------
    input_dim : int            D, the width of a datapoint (784 for MNIST).
    hidden_dims : tuple of int encoder widths; the decoder uses them reversed. ``()`` gives a
                               linear encoder and decoder.
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
    """

    cond_dim = 0   # width of the condition appended to encoder and decoder inputs (ConditionalVAE)

    def __init__(self, input_dim, hidden_dims=(400,), latent_dim=20, likelihood="bernoulli",
                 obs_var=1.0, activation="tanh", seed=0, dtype=np.float32, posterior="diag",
                 decoder_mean="identity", obs_std_min=None):
        self.input_dim = check.check_positive_int(input_dim, "input_dim")
        self.latent_dim = check.check_positive_int(latent_dim, "latent_dim")
        self.hidden_dims = check.hidden_widths(hidden_dims)
        self.dtype = check.float_dtype(dtype)
        if posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {posterior!r}; expected one of {list(POSTERIORS)}")
        self.posterior = posterior
        # Checked whatever the likelihood: the config is saved as JSON, which cannot hold inf or NaN.
        self.obs_var = check.check_finite_number(obs_var, "obs_var", low=0.0, low_inclusive=False)
        self.seed = check.check_nonnegative_int(seed, "seed")
        self.likelihood = make_likelihood(likelihood, self.obs_var, decoder_mean, obs_std_min)
        # Both checked by make_likelihood (and refused for a likelihood that does not use them).
        self.decoder_mean = decoder_mean
        self.obs_std_min = None if obs_std_min is None else float(obs_std_min)
        self.activation = activation

        rng = np.random.default_rng(seed)
        D, Z, H, C = self.input_dim, self.latent_dim, self.hidden_dims, self.cond_dim
        self.encoder = MLP((D + C,) + H, activation, rng, self.dtype)
        head_widths = {"mu": Z, "logvar": Z}
        if posterior == "full":
            head_widths["tril"] = Z * (Z - 1) // 2
        enc_ranges = {"logvar": POSTERIOR_LOGVAR_RANGE}
        self.enc_heads = {name: self._make_head(self.encoder.out_features, w, rng, enc_ranges.get(name))
                          for name, w in head_widths.items()}
        if posterior == "full":
            # Start at a diagonal posterior: the off-diagonal factor grows only if it helps.
            self.enc_heads["tril"].params["W"][...] = 0.0
        self.decoder = MLP((Z + C,) + H[::-1], activation, rng, self.dtype)
        self.dec_heads = {name: self._make_head(self.decoder.out_features, D, rng,
                                                self.likelihood.head_ranges.get(name))
                          for name in self.likelihood.heads}

        # The live arrays, by their public names. Writing into them changes the model.
        self.params = {}
        self.params.update({f"enc.{k}": v for k, v in self.encoder.named_params().items()})
        for head, layer in self.enc_heads.items():
            self.params.update({f"enc.{head}.{k}": v for k, v in layer.params.items()})
        self.params.update({f"dec.{k}": v for k, v in self.decoder.named_params().items()})
        for head, layer in self.dec_heads.items():
            self.params.update({f"dec.{head}.{k}": v for k, v in layer.params.items()})

    def _make_head(self, fan_in, width, rng, value_range=None):
        """An output head of ``width`` units on a trunk of ``fan_in``: a Linear layer, or, given a
        ``value_range`` (low, high), a log-variance head: Linear then SoftClip(low, high) (Eq. (B8),
        docs/backprop.md), which starts with zero weights and zero bias (docs/elbo.md, section 4)."""
        linear = Linear(fan_in, width, rng, self.dtype)     # drawn either way: the rng stream stays the same
        if value_range is None:
            return linear
        # Zero weights: every input starts at log-variance 0, i.e. variance 1 (the prior's, for the
        # posterior), whatever the scale of the data. Random weights make the initial log-variance a
        # random linear function of the input, as large as the input: up to +-15 to +-33 on 6-D data of
        # scale 5 (initial ELBOs of -2.5e4 to -1.6e12 nats) and several hundred on 0-255 pixels (NaN in
        # float32). The gradient dW = h^T dy is not zero, so the head learns from the first step.
        linear.params["W"][...] = 0.0
        return Head(linear, SoftClip(*value_range))

    # ------------------------------------------------------------------ description

    @property
    def config(self):
        """The constructor arguments, JSON-serialisable (used by checkpoints)."""
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims),
                "latent_dim": self.latent_dim, "likelihood": self.likelihood.name,
                "obs_var": self.obs_var, "activation": self.activation, "seed": self.seed,
                "dtype": self.dtype.name, "posterior": self.posterior, "decoder_mean": self.decoder_mean,
                "obs_std_min": self.obs_std_min}

    def __repr__(self):
        arch = "-".join(str(d) for d in (self.input_dim,) + self.hidden_dims + (self.latent_dim,))
        extra = "" if self.decoder_mean == "identity" else f"decoder_mean={self.decoder_mean!r}, "
        extra += "" if self.obs_std_min is None else f"obs_std_min={self.obs_std_min:g}, "
        return (f"{type(self).__name__}({arch}, likelihood={self.likelihood.name!r}, {extra}"
                f"activation={self.activation!r}, posterior={self.posterior!r}, dtype={self.dtype.name}, "
                f"{self.num_params()} parameters)")

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------ forward pieces

    def _check_x(self, x):
        x = check.as_batch(x, self.input_dim, self.dtype, "x")
        self.likelihood.check_targets(x)
        return x

    @staticmethod
    def _join(a, c):
        return a if c is None else np.concatenate([a, c], axis=1)

    def _encode(self, x, c=None):
        """The posterior's parameters: dict "mu", "logvar" (B, Z) and, if full, "tril"."""
        h = self.encoder.forward(self._join(x, c))
        return {name: layer.forward(h) for name, layer in self.enc_heads.items()}

    def _decode_outputs(self, z, c=None):
        """Decoder heads for a (N, Z) batch of codes (and conditions (N, C)): dict head -> (N, D)."""
        h = self.decoder.forward(self._join(z, c))
        return {name: layer.forward(h) for name, layer in self.dec_heads.items()}

    def _sample_z(self, q, eps):
        """z (L, B, Z) from the posterior q and the noise eps (L, B, Z)."""
        if self.posterior == "full":
            return reparameterize_full(q["mu"], q["logvar"], q["tril"], eps)   # Eq. (F1), docs/kl.md
        return reparameterize(q["mu"], q["logvar"], eps)                      # Eq. (R1), docs/reparameterization.md

    def _sample_z_backward(self, q, eps, dz):
        """The adjoint of _sample_z: dict of gradients for the encoder heads."""
        if self.posterior == "full":
            dmu, dlogvar, dtril = reparameterize_full_backward(dz, q["logvar"], q["tril"], eps)  # Eq. (F2), docs/kl.md
            return {"mu": dmu, "logvar": dlogvar, "tril": dtril}
        dmu, dlogvar = reparameterize_backward(dz, q["logvar"], eps)        # Eq. (R2), docs/reparameterization.md
        return {"mu": dmu, "logvar": dlogvar}

    def _kl(self, q):
        if self.posterior == "full":
            return kl_full_gaussian_standard(q["mu"], q["logvar"], q["tril"])   # Eq. (F3), docs/kl.md
        return kl_diag_gaussian_standard(q["mu"], q["logvar"])                # Eq. (K2), docs/kl.md

    def _kl_grad(self, q):
        dmu, dlogvar = kl_diag_gaussian_standard_grad(q["mu"], q["logvar"])  # Eq. (K3), docs/kl.md
        grads = {"mu": dmu, "logvar": dlogvar}
        if self.posterior == "full":
            grads["tril"] = q["tril"].copy()                                  # Eq. (F3), docs/kl.md
        return grads

    def _repeat_condition(self, c, L):
        """The condition of each datapoint repeated for its L samples: (L*B, C), matching z's rows."""
        return None if c is None else np.broadcast_to(c, (L,) + c.shape).reshape(L * c.shape[0], c.shape[1])

    def _forward(self, x, eps, c=None, with_grad=False):
        """One pass from a checked batch x (B, D) and noise eps (L, B, Z) to the ELBO terms.

        Returns a dict with q (the posterior's parameters, each (B, Z) or (B, Z(Z-1)/2));
        z (L, B, Z); the decoder outputs, each (L, B, D); rec = log p(x | z_l) of shape
        (L, B); kl of shape (B,); d_out as in _decode_log_prob.
        """
        q = self._encode(x, c)
        z = self._sample_z(q, eps)
        out, rec, d_out = self._decode_log_prob(x, z, c, with_grad)
        return {"q": q, "z": z, "out": out, "rec": rec, "d_out": d_out, "kl": self._kl(q)}

    def _decode_log_prob(self, x, z, c=None, with_grad=False):
        """Decode the codes z (L, B, Z) and score the batch x (B, D) under each of them.

        The L samples are stacked into the batch axis, so each layer is one matmul for all of
        them. Returns (out, rec, d_out): the decoder outputs, each (L, B, D); rec = log p(x | z_l),
        shape (L, B), with x broadcast over L; and, with ``with_grad=True``, d_out, the gradient of
        rec with respect to each output, computed together with rec because they share work
        (for a Bernoulli likelihood, one exponential); otherwise None.
        """
        L, B, Z = z.shape
        out = self._decode_outputs(z.reshape(L * B, Z), self._repeat_condition(c, L))
        out = {k: v.reshape(L, B, self.input_dim) for k, v in out.items()}
        if with_grad:
            rec, d_out = self.likelihood.log_prob_and_grad(x, out)
        else:
            rec, d_out = self.likelihood.log_prob(x, out), None
        return out, rec, d_out

    def _check_codes(self, z, batch):
        """z as an (L, batch, Z) array of the model's dtype: L codes for each row of a batch."""
        z = np.asarray(z)
        if z.ndim != 3 or z.shape[1:] != (batch, self.latent_dim):
            raise ValueError(f"z must have shape (L, {batch}, {self.latent_dim}) (L codes for each of "
                             f"the {batch} rows of x); got shape {z.shape}")
        return check.as_batch(z.reshape(-1, self.latent_dim), self.latent_dim, self.dtype, "z").reshape(z.shape)

    def _decoder_backward(self, d_out, weight):
        """Backward through the decoder from d loss / d log p(x|z_lb) = weight (L, B), given
        d_out = d log p(x|z) / d decoder outputs (from _decode_log_prob).
        Fills the decoder's gradients and returns d loss / dz, shape (L, B, Z)."""
        L, B = weight.shape
        dh = None
        for name, layer in self.dec_heads.items():
            g = layer.backward((d_out[name] * weight[..., None]).reshape(L * B, self.input_dim))
            dh = g if dh is None else dh + g
        # The decoder's input is [z, c]; only z's part of its gradient is wanted.
        return self.decoder.backward(dh)[:, :self.latent_dim].reshape(L, B, self.latent_dim)

    def _encoder_backward(self, dq):
        """Backward through the encoder heads and trunk (the last steps of Eq. (B7), docs/backprop.md):
        every head reads the same trunk output, so their input gradients add."""
        # The encoder's input is data: no gradient is needed for it (saves the first layer's
        # input-gradient matmul; with no hidden layer, the heads' own input gradients).
        trunk = bool(self.encoder.linears)
        dh = None
        for name, g in dq.items():
            d = self.enc_heads[name].backward(g, need_dx=trunk)
            dh = d if dh is None else dh + d
        if trunk:
            self.encoder.backward(dh, need_dx=False)

    # ------------------------------------------------------------------ public API

    def encode(self, x):
        """Posterior parameters for a batch x (B, D): ``(mu, logvar)``, each (B, Z),
        with logvar = log sigma^2: q(z|x) = N(mu, diag(exp(logvar))), Eq. (E4), docs/elbo.md.
        For posterior="full", logvar is the log of the squared diagonal of the Cholesky factor
        (see encode_full for the whole factor)."""
        q = self._encode(self._check_x(x))
        return q["mu"], q["logvar"]

    def encode_full(self, x):
        """All of the posterior's parameters: dict "mu", "logvar" and, if full, "tril"."""
        return self._encode(self._check_x(x))

    def decode(self, z):
        """The mean of p(x|z) for codes z (B, Z): Bernoulli probabilities sigmoid(logits)
        or the Gaussian mean, shape (B, D)."""
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        return self.likelihood.mean(self._decode_outputs(z))

    def decoder_outputs(self, z):
        """The decoder's raw outputs for codes z (N, Z): a dict from head name to an (N, D) array.
        Bernoulli likelihood: {"out": logits}; fixed-variance Gaussian: {"out": mean};
        learned-variance Gaussian: {"out": mean, "logvar": per-pixel log-variance}.
        decode(z) is the likelihood's mean computed from these."""
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        return self._decode_outputs(z)

    def log_p_x_given_z(self, x, z):
        """log p(x | z), summed over the D pixels, for a batch x (B, D) and L codes per datapoint,
        z (L, B, Z): z[l, b] is paired with x[b]. Returns (L, B), from the likelihood's log_prob
        (the Bernoulli or Gaussian log-likelihoods of docs/distributions.md)."""
        x = self._check_x(x)
        return self._decode_log_prob(x, self._check_codes(z, x.shape[0]))[1]

    def reconstruct(self, x):
        """decode(mu(x)): the reconstruction at the posterior mean, shape (B, D)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def sample(self, n, rng):
        """Decoded means of n codes drawn from the prior N(0, I): shape (n, D)."""
        n = check.check_positive_int(n, "n")
        z = check.check_rng(rng).standard_normal((n, self.latent_dim), dtype=self.dtype)
        return self.decode(z)

    def elbo_terms(self, x, eps=None, n_samples=1, rng=None):
        """Per-datapoint ``{"elbo", "rec", "kl"}``, each (B,): rec = 1/L sum_l log p(x|z_l),
        kl = KL(q(z|x) || p(z)) in closed form, elbo = rec - kl.   Eq. (E6), docs/elbo.md"""
        return self._elbo_terms(self._check_x(x), None, eps, n_samples, rng)

    def elbo(self, x, eps=None, n_samples=1, rng=None):
        """The ELBO of each datapoint in nats, shape (B,).   Eq. (E6), docs/elbo.md

        The reconstruction term averages over L = n_samples reparameterized samples; the KL
        is analytic. Pass ``eps`` (L, B, Z) to fix the noise, or ``rng`` to draw it.
        """
        return self.elbo_terms(x, eps=eps, n_samples=n_samples, rng=rng)["elbo"]

    def loss_and_grads(self, x, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0,
                       return_terms=False, baseline=None):
        """The minibatch loss and its gradient with respect to every parameter.

            loss = 1/B sum_b -( 1/L sum_l log p(x_b | z_bl) - beta * KL_b )      Eq. (E7), docs/elbo.md

        ``estimator`` chooses how the data term's gradient reaches the encoder (see
        ESTIMATORS and docs/estimators.md); the decoder's gradient is pathwise in theta and
        the same for every estimator. The reported loss is the same number for every
        estimator (analytic KL), so runs with different estimators are comparable.
        ``baseline`` (estimator="score" only): None, "loo" (leave-one-out over the L samples,
        needs L >= 2), or an object with ``value(x)`` and ``observe(x, f)`` such as
        numpyvae.estimators.EMABaseline or LearnedBaseline (it is updated after the estimate).

        Returns ``(loss, grads)``: a Python float and a dict with exactly the keys and
        shapes of ``self.params``. With ``return_terms=True`` also the per-datapoint
        ``{"elbo", "rec", "kl"}`` of this forward pass (what a trainer reports, at no extra cost).
        """
        return self._loss_and_grads(self._check_x(x), None, eps, n_samples, rng, estimator, beta,
                                    return_terms, baseline)

    def posterior_grads(self, x, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0, baseline=None):
        """Per-datapoint gradient estimates with respect to the posterior parameters.

        Returns ``(d_mu, d_logvar)``, each (B, Z): row b is the estimator's gradient of datapoint
        b's own loss  -(1/L sum_l log p(x_b|z_bl) - beta KL_b)  with respect to (mu_b, logvar_b),
        i.e. B times what loss_and_grads sends into the encoder heads. Rows are independent
        estimates, so a batch of R copies of one datapoint gives R independent draws of the
        estimator in one vectorised call (numpyvae.variance uses this).
        """
        _, dq, _ = self._loss_and_posterior_grads(self._check_x(x), None, eps, n_samples, rng, estimator,
                                                  beta, baseline)
        B = dq["mu"].shape[0]
        return dq["mu"] * B, dq["logvar"] * B

    def log_likelihood(self, x, n_importance=1000, rng=None, chunk_size=None):
        """Importance-weighted estimate of log p(x), shape (B,).   Eq. (I2), docs/importance.md

            log p(x) ~= log 1/K sum_k  p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x)

        computed with log-sum-exp over the K log-weights. The K samples are processed
        ``chunk_size`` at a time (default: as many as fit in LOG_LIKELIHOOD_CHUNK_BYTES, 64 MiB of
        peak memory per chunk, see _default_chunk_size), so
        memory stays bounded for any K. Its expectation is a lower bound on log p(x)
        that tightens to log p(x) as K grows, and it is never below the ELBO in expectation.
        """
        return self._log_likelihood(self._check_x(x), None, n_importance, rng, chunk_size)

    def iwae_bound(self, x, k=5, eps=None, rng=None):
        """The importance-weighted bound L_k of each datapoint, shape (B,).   Eq. (I4), docs/importance.md

            L_k(x) = log 1/k sum_i p(x, z_i) / q(z_i | x),   z_i ~ q(z | x)

        L_1 is the ELBO (with the KL sampled); L_k increases with k towards log p(x).
        """
        x = self._check_x(x)
        eps = check.noise(eps, k, x.shape[0], self.latent_dim, rng, self.dtype, count_name="k")
        log_w, _ = self._log_weights(x, None, eps)
        return self._log_mean_exp(log_w)

    def iwae_loss_and_grads(self, x, k=5, eps=None, rng=None, return_terms=False):
        """The IWAE training loss -1/B sum_b L_k(x_b) and its gradient.   Eq. (I5), docs/importance.md"""
        return self._iwae_loss_and_grads(self._check_x(x), None, k, eps, rng, return_terms)

    # ------------------------------------------------------------------ the passes, with a condition

    def _elbo_terms(self, x, c, eps, n_samples, rng):
        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)
        f = self._forward(x, eps, c)
        rec = f["rec"].mean(axis=0)
        return {"elbo": rec - f["kl"], "rec": rec, "kl": f["kl"]}

    def _loss_and_grads(self, x, c, eps, n_samples, rng, estimator, beta, return_terms, baseline):
        loss, dq, terms = self._loss_and_posterior_grads(x, c, eps, n_samples, rng, estimator, beta, baseline)
        self._encoder_backward(dq)
        if return_terms:
            return loss, self._collect_grads(), terms
        return loss, self._collect_grads()

    def _loss_and_posterior_grads(self, x, c, eps, n_samples, rng, estimator, beta, baseline):
        """Forward pass, decoder backward pass (filling the decoder's gradients) and the loss
        gradient with respect to the posterior's parameters. Returns (loss, dq, terms), where
        dq maps each encoder head ("mu", "logvar"[, "tril"]) to its (B, .) gradient."""
        if not isinstance(estimator, str) or estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; expected one of {list(ESTIMATORS)}")
        if self.posterior == "full" and estimator not in ("reparam", "blocked"):
            raise ValueError(f"posterior='full' supports estimator 'reparam' or 'blocked'; got {estimator!r}")
        if baseline is not None and estimator != "score":
            raise ValueError(f"a baseline only applies to estimator='score' (got estimator={estimator!r})")
        check_baseline(baseline)
        beta = check.check_finite_number(beta, "beta", low=0.0)

        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)
        L, B, Z = eps.shape
        f = self._forward(x, eps, c, with_grad=True)
        q = f["q"]
        loss = -(f["rec"].mean(axis=0) - beta * f["kl"]).mean()

        # --- backward: decoder (Eq. (B7), docs/backprop.md). d loss / d log p(x|z_bl) = -1 / (L B).
        dz = self._decoder_backward(f["d_out"], np.full((L, B), -1.0 / (L * B), dtype=self.dtype))

        # --- encoder: the data term's gradient, by the chosen estimator ...
        if estimator == "reparam":       # Eq. (R2), docs/reparameterization.md
            dq = self._sample_z_backward(q, eps, dz)
        elif estimator == "blocked":     # no path from the data term to phi
            dq = {name: np.zeros_like(v) for name, v in q.items()}
        elif estimator == "score":       # Eq. (S1), docs/estimators.md
            if baseline is None:
                b = 0.0
            elif isinstance(baseline, str):
                b = leave_one_out_baseline(f["rec"])
            else:
                b = baseline.value(x)
            dmu, dlogvar = score_function_grad(f["rec"], eps, q["logvar"], b)
            dq = {"mu": dmu, "logvar": dlogvar}
            if baseline is not None and not isinstance(baseline, str):
                baseline.observe(x, f["rec"])
        else:                            # "stl", Eq. (T1), docs/estimators.md
            dz_kl = stl_path_grad_z(eps, f["z"], q["logvar"], beta) * (1.0 / (L * B))
            dq = self._sample_z_backward(q, eps, dz + dz_kl)
        # ... plus beta times the analytic KL gradient (Eq. (K3), docs/kl.md), averaged over the batch
        # (stl has its KL in Monte Carlo form, already in dz_kl).
        if estimator != "stl":
            for name, g in self._kl_grad(q).items():
                dq[name] = dq[name] + (beta / B) * g

        rec = f["rec"].mean(axis=0)
        return float(loss), dq, {"elbo": rec - f["kl"], "rec": rec, "kl": f["kl"]}

    def _log_weights(self, x, c, eps, with_grad=False, q=None):
        """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x) for z_k = mu + L eps_k: shape (K, B).
        Eq. (I1), docs/importance.md. log q is written with eps (Eq. (I3), docs/importance.md): z - mu = L eps.
        Also returns the forward pass, for the IWAE backward pass (with d_out if with_grad).
        ``q``: the posterior's parameters if already computed (log_likelihood encodes once for all chunks)."""
        if q is None:
            q = self._encode(x, c)
        z = self._sample_z(q, eps)
        out, rec, d_out = self._decode_log_prob(x, z, c, with_grad)
        log_w = rec + log_standard_normal(z) - log_q_from_eps(q["logvar"], eps)
        return log_w, {"q": q, "z": z, "out": out, "rec": rec, "d_out": d_out}

    @staticmethod
    def _log_mean_exp(log_w):
        m = np.max(log_w, axis=0)
        m = np.where(np.isfinite(m), m, 0.0)   # an all -inf column gives -inf, not NaN
        with np.errstate(divide="ignore"):     # log(0) = -inf is the right answer there
            return m + np.log(np.mean(np.exp(log_w - m), axis=0))

    def _iwae_loss_and_grads(self, x, c, k, eps, rng, return_terms):
        """Eq. (I5), docs/importance.md: with normalised weights w~_i = w_i / sum_j w_j,

            d L_k / d params = sum_i w~_i  d log w_i / d params,

        where log w_i depends on the parameters through the decoder (log p(x|z_i)), through the
        path z_i = mu + L eps_i (in log p(x|z_i) + log p(z_i)), and directly through
        log q = -1/2 sum (log 2pi + logvar + eps^2), whose logvar-derivative is -1/2.
        """
        eps = check.noise(eps, k, x.shape[0], self.latent_dim, rng, self.dtype, count_name="k")
        K, B, Z = eps.shape
        log_w, f = self._log_weights(x, c, eps, with_grad=True)
        bound = self._log_mean_exp(log_w)
        loss = -float(np.mean(bound))
        weight = normalized_importance_weights(log_w, axis=0) * (-1.0 / B)      # d loss / d log w: (K, B)
        dz = self._decoder_backward(f["d_out"], weight)                          # through log p(x|z)
        dz = dz + weight[..., None] * (-f["z"])                                  # through log p(z): d/dz = -z
        dq = self._sample_z_backward(f["q"], eps, dz)
        # through -log q directly: d(-log q)/dlogvar_j = +1/2, weighted by sum_i w~_i = 1 per datapoint.
        dq["logvar"] = dq["logvar"] + 0.5 * weight.sum(axis=0)[:, None]
        self._encoder_backward(dq)
        if return_terms:
            # The ELBO's terms from the same samples, so IWAE runs report numbers comparable with ELBO runs.
            rec, kl = f["rec"].mean(axis=0), self._kl(f["q"])
            return loss, self._collect_grads(), {"bound": bound, "elbo": rec - kl, "rec": rec, "kl": kl}
        return loss, self._collect_grads()

    def _log_likelihood(self, x, c, n_importance, rng, chunk_size):
        K = check.check_positive_int(n_importance, "n_importance")
        check.check_rng(rng)
        B = x.shape[0]
        if chunk_size is None:
            chunk_size = self._default_chunk_size(B, K)
        chunk_size = check.check_positive_int(chunk_size, "chunk_size")
        log_sum = np.full(B, -np.inf)
        q = self._encode(x, c)             # the same posterior for every chunk
        for start in range(0, K, chunk_size):
            k = min(chunk_size, K - start)
            eps = rng.standard_normal((k, B, self.latent_dim), dtype=self.dtype)
            log_w, _ = self._log_weights(x, c, eps, q=q)
            # Combine chunks by log-sum-exp: log sum_all = logaddexp(log sum_before, log sum_chunk).
            log_sum = np.logaddexp(log_sum, self._log_mean_exp(log_w) + math.log(k))
        return (log_sum - math.log(K)).astype(self.dtype)

    def _default_chunk_size(self, B, K):
        """How many of K importance samples for B datapoints one chunk takes so that its peak memory
        stays within LOG_LIKELIHOOD_CHUNK_BYTES. Per sample: the decoder's hidden activations, each
        decoder head's (B, D) output, and seven more (B, D) temporaries for the likelihood (measured
        peaks: 4.6 for the Bernoulli, whose softplus holds exp(-|a|), 1 + exp(-|a|) and a rounding
        correction before x * a is formed; 2.6 for the fixed-variance and 5.6 for the learned-variance
        Gaussian), and one more for a sigmoid mean, which lives beside them (decoder_mean="sigmoid").
        test_log_likelihood_memory_is_bounded measures the peak."""
        temporaries = 7 + (self.decoder_mean == "sigmoid")
        per_sample = B * self.dtype.itemsize * (
            self.input_dim * (len(self.dec_heads) + temporaries) + sum(self.hidden_dims))
        return max(1, min(K, LOG_LIKELIHOOD_CHUNK_BYTES // per_sample))

    def _collect_grads(self):
        grads = {f"enc.{k}": v for k, v in self.encoder.named_grads().items()}
        for head, layer in self.enc_heads.items():
            grads.update({f"enc.{head}.{k}": v for k, v in layer.grads.items()})
        grads.update({f"dec.{k}": v for k, v in self.decoder.named_grads().items()})
        for head, layer in self.dec_heads.items():
            grads.update({f"dec.{head}.{k}": v for k, v in layer.grads.items()})
        return grads
