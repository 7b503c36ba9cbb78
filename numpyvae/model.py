"""The Variational Autoencoder: one minibatch from pixels to ELBO and back to every gradient.

Generative model (docs/elbo.md, Eq. (E1), docs/elbo.md):   z ~ N(0, I),   x | z ~ p_theta(x | z)
Inference model (Eq. (E4), docs/elbo.md):                q_phi(z | x) = N(mu(x), diag(exp(logvar(x))))

The encoder is an MLP trunk followed by two Linear heads (mu and logvar); the decoder is
an MLP trunk with the hidden widths reversed, followed by one Linear head per output of
the likelihood ("out": logits or mean; "logvar" for the learned-variance Gaussian).

Per datapoint, with L reparameterized samples z_l = mu + exp(logvar/2) * eps_l,

    ELBO(x) = 1/L sum_l log p(x | z_l)  -  KL(q(z|x) || N(0, I))        Eq. (E6), docs/elbo.md

with the KL in closed form, Eq. (K2), docs/kl.md. ``loss_and_grads`` returns
loss = mean_b -( 1/L sum_l log p(x_b | z_bl) - beta * KL_b ) and its gradient with
respect to every parameter, computed by the backward pass of docs/backprop.md, Eq. (B7), docs/backprop.md.
"""

import math

import numpy as np

from . import _validate as check
from .distributions import (
    kl_diag_gaussian_standard, kl_diag_gaussian_standard_grad, log_standard_normal,
    make_likelihood, reparameterize, reparameterize_backward, LOG_2PI,
)
from .estimators import leave_one_out_baseline, score_function_grad, stl_path_grad_z
from .layers import MLP, Linear

__all__ = ["VAE", "ESTIMATORS"]

# How the data term's gradient reaches the encoder (docs/estimators.md):
#   reparam  through z = mu + sigma * eps                       (pathwise)
#   score    (f(z) - b) * d log q / d phi, f = log p(x|z)        (REINFORCE), optional baseline
#   blocked  not at all: only the KL term trains the encoder     (no reparameterization)
#   stl      pathwise, with the ELBO in its Monte Carlo entropy form and the score term dropped
ESTIMATORS = ("reparam", "score", "blocked", "stl")

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class VAE:
    """A VAE with a diagonal-Gaussian posterior and an MLP encoder and decoder.

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
    """

    def __init__(self, input_dim, hidden_dims=(400,), latent_dim=20, likelihood="bernoulli",
                 obs_var=1.0, activation="tanh", seed=0, dtype=np.float32):
        self.input_dim = check.check_positive_int(input_dim, "input_dim")
        self.latent_dim = check.check_positive_int(latent_dim, "latent_dim")
        try:
            hidden = tuple(hidden_dims)
        except TypeError:
            raise TypeError(f"hidden_dims must be a tuple of positive ints; got {hidden_dims!r}") from None
        self.hidden_dims = tuple(check.check_positive_int(h, "each hidden width") for h in hidden)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise TypeError(f"dtype must be np.float32 or np.float64; got {dtype!r}")
        self.likelihood = make_likelihood(likelihood, obs_var)
        self.activation = activation
        self.obs_var = float(obs_var)
        self.seed = seed

        rng = np.random.default_rng(seed)
        D, Z, H = self.input_dim, self.latent_dim, self.hidden_dims
        self.encoder = MLP((D,) + H, activation, rng, self.dtype)
        self.enc_heads = {"mu": Linear(self.encoder.out_features, Z, rng, self.dtype),
                          "logvar": Linear(self.encoder.out_features, Z, rng, self.dtype)}
        self.decoder = MLP((Z,) + H[::-1], activation, rng, self.dtype)
        self.dec_heads = {name: Linear(self.decoder.out_features, D, rng, self.dtype)
                          for name in self.likelihood.heads}

        # The live arrays, by their public names. Writing into them changes the model.
        self.params = {}
        self.params.update({f"enc.{k}": v for k, v in self.encoder.named_params().items()})
        for head, layer in self.enc_heads.items():
            self.params.update({f"enc.{head}.{k}": v for k, v in layer.params.items()})
        self.params.update({f"dec.{k}": v for k, v in self.decoder.named_params().items()})
        for head, layer in self.dec_heads.items():
            self.params.update({f"dec.{head}.{k}": v for k, v in layer.params.items()})

    # ------------------------------------------------------------------ description

    @property
    def config(self):
        """The constructor arguments, JSON-serialisable (used by checkpoints)."""
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims),
                "latent_dim": self.latent_dim, "likelihood": self.likelihood.name,
                "obs_var": self.obs_var, "activation": self.activation, "seed": self.seed,
                "dtype": self.dtype.name}

    def __repr__(self):
        arch = "-".join(str(d) for d in (self.input_dim,) + self.hidden_dims + (self.latent_dim,))
        return (f"VAE({arch}, likelihood={self.likelihood.name!r}, activation={self.activation!r}, "
                f"dtype={self.dtype.name}, {self.num_params()} parameters)")

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # ------------------------------------------------------------------ forward pieces

    def _check_x(self, x):
        x = check.as_batch(x, self.input_dim, self.dtype, "x")
        self.likelihood.check_targets(x)
        return x

    def _encode(self, x):
        h = self.encoder.forward(x)
        return self.enc_heads["mu"].forward(h), self.enc_heads["logvar"].forward(h)

    def _decode_outputs(self, z):
        """Decoder heads for a (N, Z) batch of codes: dict head -> (N, D)."""
        h = self.decoder.forward(z)
        return {name: layer.forward(h) for name, layer in self.dec_heads.items()}

    def encode(self, x):
        """Posterior parameters for a batch x (B, D): ``(mu, logvar)``, each (B, Z),
        with logvar = log sigma^2: q(z|x) = N(mu, diag(exp(logvar))), Eq. (E4), docs/elbo.md."""
        return self._encode(self._check_x(x))

    def decode(self, z):
        """The mean of p(x|z) for codes z (B, Z): Bernoulli probabilities sigmoid(logits)
        or the Gaussian mean, shape (B, D)."""
        z = check.as_batch(z, self.latent_dim, self.dtype, "z")
        return self.likelihood.mean(self._decode_outputs(z))

    def reconstruct(self, x):
        """decode(mu(x)): the reconstruction at the posterior mean, shape (B, D)."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    def sample(self, n, rng):
        """Decoded means of n codes drawn from the prior N(0, I): shape (n, D)."""
        n = check.check_positive_int(n, "n")
        z = check.check_rng(rng).standard_normal((n, self.latent_dim), dtype=self.dtype)
        return self.decode(z)

    def _forward(self, x, eps):
        """One pass from a checked batch x (B, D) and noise eps (L, B, Z) to the ELBO terms.

        Returns a dict with mu, logvar (B, Z); z (L, B, Z); the decoder outputs, each
        (L*B, D); rec = log p(x | z_l) of shape (L, B); kl of shape (B,).
        """
        L, B, Z = eps.shape
        mu, logvar = self._encode(x)
        z = reparameterize(mu, logvar, eps)                      # Eq. (R1), docs/reparameterization.md: (L, B, Z)
        # The L samples are stacked into the batch axis: one matmul per layer for all of them.
        out = self._decode_outputs(z.reshape(L * B, Z))
        out_lbd = {k: v.reshape(L, B, self.input_dim) for k, v in out.items()}
        rec = self.likelihood.log_prob(x, out_lbd)               # (L, B), x broadcasts over L
        kl = kl_diag_gaussian_standard(mu, logvar)               # Eq. (K2), docs/kl.md: (B,)
        return {"mu": mu, "logvar": logvar, "z": z, "out": out_lbd, "rec": rec, "kl": kl}

    # ------------------------------------------------------------------ objectives

    def elbo_terms(self, x, eps=None, n_samples=1, rng=None):
        """Per-datapoint ``{"elbo", "rec", "kl"}``, each (B,): rec = 1/L sum_l log p(x|z_l),
        kl = KL(q(z|x) || p(z)) in closed form, elbo = rec - kl.   Eq. (E6), docs/elbo.md"""
        x = self._check_x(x)
        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)
        f = self._forward(x, eps)
        rec = f["rec"].mean(axis=0)
        return {"elbo": rec - f["kl"], "rec": rec, "kl": f["kl"]}

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
        loss, dmu, dlogvar, terms = self._loss_and_posterior_grads(x, eps, n_samples, rng, estimator, beta,
                                                                   baseline)
        # --- encoder backward, the last steps of Eq. (B7), docs/backprop.md: both heads feed
        # the same trunk, so their input gradients add.
        dh = self.enc_heads["mu"].backward(dmu) + self.enc_heads["logvar"].backward(dlogvar)
        self.encoder.backward(dh)
        if return_terms:
            return loss, self._collect_grads(), terms
        return loss, self._collect_grads()

    def posterior_grads(self, x, eps=None, n_samples=1, rng=None, estimator="reparam", beta=1.0, baseline=None):
        """Per-datapoint gradient estimates with respect to the posterior parameters.

        Returns ``(d_mu, d_logvar)``, each (B, Z): row b is the estimator's gradient of datapoint
        b's own loss  -(1/L sum_l log p(x_b|z_bl) - beta KL_b)  with respect to (mu_b, logvar_b),
        i.e. B times what loss_and_grads sends into the encoder heads. Rows are independent
        estimates, so a batch of R copies of one datapoint gives R independent draws of the
        estimator in one vectorised call (numpyvae.variance uses this).
        """
        _, dmu, dlogvar, _ = self._loss_and_posterior_grads(x, eps, n_samples, rng, estimator, beta, baseline)
        B = dmu.shape[0]
        return dmu * B, dlogvar * B

    def _loss_and_posterior_grads(self, x, eps, n_samples, rng, estimator, beta, baseline):
        """Forward pass, decoder backward pass (filling the decoder's gradients) and the loss
        gradient with respect to mu and logvar (B, Z). Returns (loss, dmu, dlogvar, terms)."""
        if not isinstance(estimator, str) or estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; expected one of {list(ESTIMATORS)}")
        if baseline is not None and estimator != "score":
            raise ValueError(f"a baseline only applies to estimator='score' (got estimator={estimator!r})")
        if isinstance(baseline, str) and baseline != "loo":
            raise ValueError(f"baseline must be None, 'loo' or a baseline object; got {baseline!r}")
        if isinstance(beta, bool) or not np.isscalar(beta) or not np.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0; got {beta!r}")
        beta = float(beta)

        x = self._check_x(x)
        eps = check.noise(eps, n_samples, x.shape[0], self.latent_dim, rng, self.dtype)
        L, B, Z = eps.shape
        f = self._forward(x, eps)
        loss = -(f["rec"].mean(axis=0) - beta * f["kl"]).mean()

        # --- backward: decoder (Eq. (B7), docs/backprop.md). d loss / d log p(x|z_bl) = -1 / (L B).
        scale = -1.0 / (L * B)
        d_out = self.likelihood.grad(x, f["out"])
        dh = None
        for name, layer in self.dec_heads.items():
            g = layer.backward((d_out[name] * scale).reshape(L * B, self.input_dim))
            dh = g if dh is None else dh + g
        dz = self.decoder.backward(dh).reshape(L, B, Z)

        # --- encoder: the data term's gradient, by the chosen estimator ...
        logvar = f["logvar"]
        if estimator == "reparam":       # Eq. (R2), docs/reparameterization.md
            dmu, dlogvar = reparameterize_backward(dz, logvar, eps)
        elif estimator == "blocked":     # no path from the data term to phi
            dmu, dlogvar = np.zeros_like(f["mu"]), np.zeros_like(logvar)
        elif estimator == "score":       # Eq. (S1), docs/estimators.md
            if baseline is None:
                b = 0.0
            elif isinstance(baseline, str):
                b = leave_one_out_baseline(f["rec"])
            else:
                b = baseline.value(x)
            dmu, dlogvar = score_function_grad(f["rec"], eps, logvar, b)
            if baseline is not None and not isinstance(baseline, str):
                baseline.observe(x, f["rec"])
        else:                            # "stl", Eq. (T1), docs/estimators.md
            dz_kl = stl_path_grad_z(eps, f["z"], logvar, beta) * (1.0 / (L * B))
            dmu, dlogvar = reparameterize_backward(dz + dz_kl, logvar, eps)
        # ... plus beta times the analytic KL gradient (Eq. (K3), docs/kl.md), averaged over the batch
        # (stl has its KL in Monte Carlo form, already in dz_kl).
        if estimator != "stl":
            kl_dmu, kl_dlogvar = kl_diag_gaussian_standard_grad(f["mu"], logvar)
            dmu = dmu + (beta / B) * kl_dmu
            dlogvar = dlogvar + (beta / B) * kl_dlogvar

        rec = f["rec"].mean(axis=0)
        return float(loss), dmu, dlogvar, {"elbo": rec - f["kl"], "rec": rec, "kl": f["kl"]}

    def _collect_grads(self):
        grads = {f"enc.{k}": v for k, v in self.encoder.named_grads().items()}
        for head, layer in self.enc_heads.items():
            grads.update({f"enc.{head}.{k}": v for k, v in layer.grads.items()})
        grads.update({f"dec.{k}": v for k, v in self.decoder.named_grads().items()})
        for head, layer in self.dec_heads.items():
            grads.update({f"dec.{head}.{k}": v for k, v in layer.grads.items()})
        return grads

    # ------------------------------------------------------------------ evaluation

    def log_likelihood(self, x, n_importance=1000, rng=None, chunk_size=None):
        """Importance-weighted estimate of log p(x), shape (B,).   Eq. (I2), docs/importance.md

            log p(x) ~= log 1/K sum_k  p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x)

        computed with log-sum-exp over the K log-weights. The K samples are processed
        ``chunk_size`` at a time (default: about 64 MB of decoder output per chunk), so
        memory stays bounded for any K. Its expectation is a lower bound on log p(x)
        that tightens to log p(x) as K grows, and it is never below the ELBO in expectation.
        """
        x = self._check_x(x)
        K = check.check_positive_int(n_importance, "n_importance")
        check.check_rng(rng)
        B = x.shape[0]
        if chunk_size is None:
            per_sample = B * self.input_dim * self.dtype.itemsize * (1 + len(self.dec_heads))
            chunk_size = max(1, min(K, (64 << 20) // max(per_sample, 1)))
        chunk_size = check.check_positive_int(chunk_size, "chunk_size")

        mu, logvar = self._encode(x)
        log_sum = np.full(B, -np.inf)
        for start in range(0, K, chunk_size):
            k = min(chunk_size, K - start)
            eps = rng.standard_normal((k, B, self.latent_dim), dtype=self.dtype)
            z = reparameterize(mu, logvar, eps)
            out = self._decode_outputs(z.reshape(k * B, self.latent_dim))
            out = {name: v.reshape(k, B, self.input_dim) for name, v in out.items()}
            # log q(z|x) from eps directly: z - mu = sigma * eps, so the quadratic term is eps^2.
            log_q = -0.5 * np.sum(LOG_2PI + logvar + eps * eps, axis=-1)
            log_w = self.likelihood.log_prob(x, out) + log_standard_normal(z) - log_q   # (k, B)
            m = np.max(log_w, axis=0)
            m = np.where(np.isfinite(m), m, 0.0)   # an all -inf chunk adds exp(-inf) = 0, not NaN
            log_sum = np.logaddexp(log_sum, m + np.log(np.sum(np.exp(log_w - m), axis=0)))
        return (log_sum - math.log(K)).astype(self.dtype)
