"""A VAE with a discrete code: binary units or one-hot categorical variables.

Generative model:   z ~ p(z) (Bernoulli(1/2) per unit, or uniform over C classes per variable),
                    x | z ~ p_theta(x | z), the VAE's likelihoods
Inference model:    q_phi(z | x) = prod_j Bernoulli(sigmoid(omega_j(x)))       Eq. (H1), docs/discrete.md
                                 or prod_j Categorical(softmax(omega_j(x)))    Eq. (H2), docs/discrete.md

The encoder is the VAE's MLP with one head, the logits omega; the decoder is the VAE's, reading
the code z: (Z,) bits, or the Z one-hot rows of C classes flattened to (Z C,). Its plumbing (head
construction, parameter names, decoder forward and backward, encoder backward) is the VAE's own
methods, shared below, not copied. What the code means is the business of the posterior family
(``model.posterior``: numpyvae.discrete_posteriors.BernoulliPosterior or CategoricalPosterior).

    ELBO(x) = E_q[log p(x | z)] - KL(q(z|x) || p(z))                  Eq. (H9), docs/discrete.md

with the KL analytic. There is no reparameterization for a discrete z: ``loss_and_grads`` takes
one of the estimators of numpyvae.discrete_estimators (score, nvil, vimco, gumbel,
straight-through). With few states every expectation can also be computed exactly, by enumerating
all 2^Z (or C^Z) values of z: ``exact_elbo``, ``exact_loss_and_grads`` (the true gradient),
``exact_iwae_loss_and_grads`` and ``exact_log_likelihood``, the truth the estimators are tested
against (Eqs. (H19)-(H22), docs/discrete.md).
"""

import dataclasses
import math

import numpy as np

from . import _validate as check
from .discrete_estimators import DiscreteForwardPass, NVILBaseline, choose_estimator, elbo_objective
from .discrete_posteriors import MAX_STATES, make_discrete_posterior
from .distributions import log_mean_exp, normalized_importance_weights
from .model import DEFAULT_ACTIVATION, DEFAULT_HIDDEN_DIMS, DEFAULT_LATENT_DIM, VAE

__all__ = ["DiscreteVAE"]


class DiscreteVAE:
    """A VAE whose code is discrete, with an MLP encoder and decoder.

    Parameters
    ----------
    input_dim, hidden_dims, latent_dim, likelihood, obs_var, activation, seed, dtype, decoder_mean,
    obs_std_min : as for numpyvae.VAE (latent_dim is Z, the number of binary units or of categorical
                  variables).
    latent : str        "bernoulli": z in {0,1}^Z, prior Bernoulli(1/2) per unit;
                        "categorical": Z independent one-hot variables of C = n_categories classes,
                        uniform prior.
    n_categories : int  C >= 2, for latent="categorical" (latent="bernoulli" takes only 2).

    Parameter names: "enc.h0.W", ..., "enc.logits.W", "enc.logits.b", "dec.h0.W", ..., "dec.out.W",
    "dec.out.b" (+ "dec.logvar.*" for likelihood="gaussian-learned"). "enc.logits" has Z outputs
    (Bernoulli) or Z C (categorical, read as (Z, C)); "dec.h0.W" has Z or Z C inputs.
    """

    cond_dim = 0    # no condition: the shared VAE methods read this

    def __init__(self, input_dim, hidden_dims=DEFAULT_HIDDEN_DIMS, latent_dim=DEFAULT_LATENT_DIM,
                 latent="bernoulli", n_categories=2, likelihood="bernoulli", obs_var=1.0,
                 activation=DEFAULT_ACTIVATION, seed=0, dtype=np.float32, decoder_mean="identity",
                 obs_std_min=None):
        self._keep_arguments(input_dim, hidden_dims, latent_dim, likelihood, obs_var, activation, seed, dtype,
                             decoder_mean, obs_std_min)
        self.posterior = make_discrete_posterior(latent, self.latent_dim, n_categories)
        # The decoder reads the code flattened: Z numbers, or Z C for one-hot rows.
        self._build_networks(code_width=int(np.prod(self.posterior.event_shape)))
        self.params = self._named("params")
        self._nvil_baseline = None

    # The networks' plumbing is the VAE's ((B7) in docs/backprop.md): arguments, construction, heads,
    # names, decoder forward and backward, encoder backward, and the chunk size that bounds an
    # evaluation's memory. Shared, not copied: these are the VAE's own functions.
    _keep_arguments = VAE._keep_arguments
    _build_networks = VAE._build_networks
    _make_head = VAE._make_head
    _named = VAE._named
    _decode = VAE._decode
    _join = staticmethod(VAE._join)
    _decoder_backward = VAE._decoder_backward
    _encoder_backward = VAE._encoder_backward
    log_likelihood_chunk_size = VAE.log_likelihood_chunk_size
    num_params = VAE.num_params

    # ------------------------------------------------------------------ description

    @property
    def config(self):
        """The constructor arguments, JSON-serialisable (used by checkpoints)."""
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims), "latent_dim": self.latent_dim,
                "latent": self.posterior.name, "n_categories": self.posterior.n_categories,
                "likelihood": self.likelihood.name, "obs_var": self.obs_var, "activation": self.activation,
                "seed": self.seed, "dtype": self.dtype.name, "decoder_mean": self.decoder_mean,
                "obs_std_min": self.obs_std_min}

    def __repr__(self):
        code = (f"{self.latent_dim} bits" if self.posterior.name == "bernoulli"
                else f"{self.latent_dim}x{self.posterior.n_categories} one-hot")
        arch = "-".join(str(d) for d in (self.input_dim,) + self.hidden_dims)
        return (f"{type(self).__name__}({arch}-[{code}], likelihood={self.likelihood.name!r}, "
                f"activation={self.activation!r}, dtype={self.dtype.name}, {self.num_params()} parameters)")

    @property
    def nvil_baseline(self):
        """The NVILBaseline that loss_and_grads(estimator="nvil") uses when given none: created on
        first use (from the model's seed), then kept, since it learns. Pass your own to checkpoint it
        (its state() / load_state())."""
        if self._nvil_baseline is None:
            self._nvil_baseline = NVILBaseline(self.input_dim, seed=self.seed, dtype=self.dtype)
        return self._nvil_baseline

    # ------------------------------------------------------------------ the pieces of a pass

    def _inputs(self, x):
        """The checked batch x (B, D) of the model's dtype."""
        x = check.as_batch(x, self.input_dim, self.dtype, "x")
        self.likelihood.check_targets(x)
        return x

    def _noise(self, noise, n, batch, rng, count_name="n_samples"):
        """The noise of n samples for each of ``batch`` datapoints, (n, B, Z[, C]): ``noise`` when given
        (checked), else drawn from ``rng`` (logistic or Gumbel, by the family)."""
        n = check.check_positive_int(n, count_name)
        shape = (n, batch) + self.posterior.event_shape
        if noise is not None:
            arr = check.check_real_array(noise, "noise")
            if arr.shape != shape:
                raise ValueError(f"noise must have shape ({count_name}, batch) + {self.posterior.event_shape} "
                                 f"= {shape}; got {arr.shape}")
            return check.check_finite_array(arr, "noise", self.dtype)
        if rng is None:
            raise ValueError("this call is stochastic: pass rng=np.random.default_rng(seed) or explicit "
                             f"noise of shape {shape}")
        return self.posterior.noise(n, batch, rng, self.dtype)

    def _encode(self, x):
        """The logits omega of q(z|x), (B, Z) or (B, Z, C): Eq. (H1), docs/discrete.md (binary code) or
        Eq. (H2), docs/discrete.md (categorical)."""
        h = self.encoder.forward(x)
        return self.enc_heads["logits"].forward(h).reshape((x.shape[0],) + self.posterior.event_shape)

    def _decode_codes(self, z):
        """The decoder's heads for codes z (..., B, Z[, C]): {head: (..., B, D)}."""
        return self._decode(z.reshape(z.shape[:-len(self.posterior.event_shape)] + (-1,)), None)

    def _codes(self, z, name="z"):
        """Checked codes (N,) + event_shape (one-hot codes may also come flat, (N, Z C))."""
        arr = check.check_real_array(z, name)
        width = int(np.prod(self.posterior.event_shape))
        if arr.ndim == 1 + len(self.posterior.event_shape) and arr.shape[1:] == self.posterior.event_shape:
            arr = arr.reshape(arr.shape[0], width)
        flat = check.as_batch(arr, width, self.dtype, name)
        return flat.reshape((flat.shape[0],) + self.posterior.event_shape)

    # ------------------------------------------------------------------ public API: the networks

    def encode(self, x):
        """The logits omega of q(z|x) for a batch x (B, D): (B, Z), or (B, Z, C) for a categorical code.
        Probabilities: ``model.posterior.probs(model.encode(x))``. The posterior: Eq. (H1), docs/discrete.md
        or Eq. (H2), docs/discrete.md."""
        return self._encode(self._inputs(x))

    def decode(self, z):
        """The mean of p(x|z) for codes z, (N, Z) or (N, Z, C) (any real values: a relaxed code too):
        Bernoulli probabilities or the Gaussian mean, (N, D)."""
        return self.likelihood.mean(self._decode_codes(self._codes(z)))

    def reconstruct(self, x):
        """decode(the most probable code of q(z|x)), (B, D)."""
        return self.decode(self.posterior.mode(self.encode(x)))

    def sample(self, n, rng):
        """Decoded means of n codes drawn from the prior, (n, D)."""
        n = check.check_positive_int(n, "n")
        return self.decode(self.posterior.prior_sample(n, rng, self.dtype))

    def log_p_x_given_z(self, x, z):
        """log p(x_b | z_lb) for a batch x (B, D) and codes z (L, B, Z[, C]): (L, B)."""
        x = self._inputs(x)
        z = np.asarray(z)
        lead = z.shape[:2]
        if z.ndim != 2 + len(self.posterior.event_shape) or lead[1] != x.shape[0]:
            raise ValueError(f"z must have shape (L, {x.shape[0]}) + {self.posterior.event_shape}; got {z.shape}")
        z = self._codes(z.reshape((-1,) + self.posterior.event_shape)).reshape(z.shape)
        return self.likelihood.log_prob(x, self._decode_codes(z))

    # ------------------------------------------------------------------ Monte Carlo objectives

    def elbo_terms(self, x, n_samples=1, rng=None, *, noise=None, omega=None):
        """Per-datapoint {"elbo", "rec", "kl"}, each (B,): rec = 1/L sum_l log p(x|z_l) over L exact
        samples of q, kl analytic (Eq. (H4) or (H6)), elbo = rec - kl.   Eq. (H9), docs/discrete.md
        ``omega``: the logits of q(z|x) when the caller has them (encode(x)), else encoded here."""
        x = self._inputs(x)
        noise = self._noise(noise, n_samples, x.shape[0], rng)
        omega = self._encode(x) if omega is None else check.check_finite_array(omega, "omega", self.dtype)
        if omega.shape != (x.shape[0],) + self.posterior.event_shape:
            raise ValueError(f"omega must have shape {(x.shape[0],) + self.posterior.event_shape}; got {omega.shape}")
        rec = self.likelihood.log_prob(x, self._decode_codes(self.posterior.sample(omega, noise))).mean(axis=0)
        kl = self.posterior.kl(omega)
        return {"elbo": rec - kl, "rec": rec, "kl": kl}

    def elbo(self, x, n_samples=1, rng=None, *, noise=None):
        """The Monte Carlo ELBO of each datapoint in nats, (B,), analytic KL.   Eq. (H9), docs/discrete.md"""
        return self.elbo_terms(x, n_samples, rng, noise=noise)["elbo"]

    def loss_and_grads(self, x, n_samples=1, rng=None, estimator="score", temperature=1.0, beta=1.0,
                       return_terms=False, baseline=None, *, noise=None):
        """The minibatch loss and an estimate of its gradient with respect to every parameter.

            "score", "nvil", "gumbel", "straight-through":
                       loss = -1/B sum_b (1/L sum_l log p(x_b|z_lb) - beta KL_b), z_lb exact samples
            "vimco":   loss = -1/B sum_b L^_K(x_b), the K-sample bound with K = n_samples >= 2

        Eq. (H9), docs/discrete.md and Eq. (H13), docs/discrete.md. ``estimator``: a name in
        numpyvae.discrete_estimators.ESTIMATORS, which also says what the decoder reads and which
        gradient reaches the logits. "gumbel" is the one whose gradient is not that of its loss: its
        gradients are the exact gradients of the relaxed objective J_tau (``relaxed_loss``, the decoder at
        the Gumbel-softmax codes zt_lb of the same noise, Eq. (H17)), while the loss it returns is the
        discrete ELBO's above, from one more decoder pass at the exact z_lb (zt_lb tends to z_lb as tau
        falls). So every estimator reports the same number for the same noise, and training curves
        compare. ``temperature``: tau of "gumbel" and "straight-through". ``baseline``: for "score",
        None or any baseline object of numpyvae.estimators; for "nvil", None (the model's own
        ``nvil_baseline``) or an NVILBaseline. ``noise``: (L, B, Z[, C]) logistic or Gumbel noise
        instead of drawing it from ``rng``.

        Returns ``(loss, grads)``, a float and a dict with the keys and shapes of ``self.params``;
        with ``return_terms=True`` also {"elbo", "rec", "kl"} per datapoint from the exact samples
        (beta = 1), for "vimco" also "bound" (L^_K) and for "gumbel" also "relaxed_elbo" (J_tau's
        per-datapoint objective with beta = 1). The backward pass is that of (B7) in docs/backprop.md.
        """
        x = self._inputs(x)
        beta = check.check_finite_number(beta, "beta", low=0.0)
        tau = check.check_finite_number(temperature, "temperature", low=0.0, low_inclusive=False)
        est = choose_estimator(estimator, baseline, beta, check.check_positive_int(n_samples, "n_samples"))
        noise = self._noise(noise, n_samples, x.shape[0], rng)        # (L, B, Z[, C])
        L, B = noise.shape[:2]
        if estimator == "nvil" and baseline is None:
            baseline = self.nvil_baseline

        # Forward: encode, sample, decode and score, the objective.
        omega = self._encode(x)                                       # logits, Eqs. (H1)/(H2)
        z = self.posterior.sample(omega, noise)                       # exact samples, Eq. (H8)
        relaxed = est.decodes == "relaxed"
        # "gumbel" reports the discrete ELBO (H9) too: the decoder at the exact z of the same noise, run
        # before the relaxed pass, whose caches the backward pass below reads.
        log_px_exact = self.likelihood.log_prob(x, self._decode_codes(z)) if relaxed else None
        code = self.posterior.relaxed(omega, noise, tau) if relaxed else z     # Eq. (H15)
        log_px, dlogpx_dout = self.likelihood.log_prob_and_grad(x, self._decode_codes(code))  # (L, B)
        sample = DiscreteForwardPass(x, omega, noise, z, code, log_px, tau)
        value, dvalue_dlogpx = est.objective(self.posterior, sample, beta)   # ELBO (H9) or L_K (H13), (B,)
        if relaxed:     # value is J_tau's (H17), the objective differentiated; the loss is the ELBO's
            exact = dataclasses.replace(sample, code=z, log_px=log_px_exact)
            loss = -elbo_objective(self.posterior, exact, beta)[0].mean()
        else:
            log_px_exact, loss = log_px, -value.mean()

        # Backward: the decoder, then d loss / d omega by the estimator, then the encoder.
        dcode = self._decoder_backward(dlogpx_dout, dvalue_dlogpx * (-1.0 / B)).reshape(code.shape)  # Eq. (B7)
        d_omega = est.posterior_grad(self.posterior, sample, dcode, beta, baseline)   # Eqs. (H10)-(H18)
        self._encoder_backward({"logits": d_omega.reshape(B, -1)})
        grads = self._named("grads")
        if return_terms:
            rec, kl = log_px_exact.mean(axis=0), self.posterior.kl(omega)
            terms = {"elbo": rec - kl, "rec": rec, "kl": kl}
            if estimator == "vimco":
                terms["bound"] = value
            if relaxed:
                terms["relaxed_elbo"] = log_px.mean(axis=0) - kl
            return float(loss), grads, terms
        return float(loss), grads

    def relaxed_loss(self, x, n_samples=1, rng=None, temperature=1.0, beta=1.0, *, noise=None):
        """The relaxed objective that loss_and_grads(estimator="gumbel") differentiates, a float:

            J_tau = -1/B sum_b (1/L sum_l log p(x_b | zt_lb) - beta KL_b)        Eq. (H17), docs/discrete.md

        zt the Gumbel-softmax codes of the noise at temperature tau (Eq. (H15)), the KL the discrete one
        (Eq. (H4) or (H6)). For fixed ``noise`` a smooth function of the parameters, whose exact gradient
        "gumbel" returns (beside the discrete ELBO's loss). Arguments as for loss_and_grads."""
        x = self._inputs(x)
        beta = check.check_finite_number(beta, "beta", low=0.0)
        tau = check.check_finite_number(temperature, "temperature", low=0.0, low_inclusive=False)
        noise = self._noise(noise, n_samples, x.shape[0], rng)
        omega = self._encode(x)
        log_px = self.likelihood.log_prob(x, self._decode_codes(self.posterior.relaxed(omega, noise, tau)))
        return float(-np.mean(log_px.mean(axis=0) - beta * self.posterior.kl(omega)))

    def log_likelihood(self, x, n_importance=1000, rng=None, chunk_size=None):
        """Importance-weighted estimate of log p(x), (B,), with q(z|x) as the proposal:

            log p(x) ~= log 1/K sum_k w_k,
            log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)          Eq. (H12), docs/discrete.md

        Its expectation is a lower bound that rises to log p(x) as K grows (exact_log_likelihood is the
        limit). The K samples are drawn ``chunk_size`` at a time (default: log_likelihood_chunk_size,
        64 MiB of peak memory per chunk) and combined by log-sum-exp, so memory stays bounded."""
        x = self._inputs(x)
        K = check.check_positive_int(n_importance, "n_importance")
        check.check_rng(rng)
        B = x.shape[0]
        chunk_size = check.check_positive_int(
            self.log_likelihood_chunk_size(B, K) if chunk_size is None else chunk_size, "chunk_size")
        omega = self._encode(x)
        log_sum = np.full(B, -np.inf)
        for start in range(0, K, chunk_size):
            k = min(chunk_size, K - start)
            z = self.posterior.sample(omega, self.posterior.noise(k, B, rng, self.dtype))
            log_px = self.likelihood.log_prob(x, self._decode_codes(z))
            log_w = log_px + self.posterior.log_prior - self.posterior.log_prob(omega, z)
            log_sum = np.logaddexp(log_sum, log_mean_exp(log_w, axis=0) + math.log(k))
        return (log_sum - math.log(K)).astype(self.dtype)

    # ------------------------------------------------------------------ exact, by enumeration

    def _states(self):
        """Every value of z, (S, Z[, C]), after checking that there are at most MAX_STATES."""
        S = self.posterior.n_states
        if S > MAX_STATES:
            raise ValueError(f"exact enumeration visits every one of the {S} states of z "
                             f"({self.posterior.name}, latent_dim={self.latent_dim}); it is refused above "
                             f"{MAX_STATES} (2**16). Use a smaller latent_dim or the Monte Carlo methods")
        return self.posterior.states(self.dtype)

    def _state_chunks(self, states, batch):
        """Slices of the S states small enough that one chunk's likelihood (S_c, B, D) stays within
        the 64 MiB of log_likelihood_chunk_size."""
        size = self.log_likelihood_chunk_size(batch, states.shape[0])
        return [slice(a, min(a + size, states.shape[0])) for a in range(0, states.shape[0], size)]

    def _decode_states(self, x, states):
        """log p(x_b | z_s) and its gradient in the decoder's heads for states (S, Z[, C]): (S, B) and
        {head: (S, B, D)}. A state's decoding does not depend on x, so the decoder runs once per
        state (S rows) and only the likelihood sees every (state, datapoint) pair."""
        out = self._decode_codes(states)                                   # {head: (S, D)}
        pairs = {k: np.broadcast_to(v[:, None, :], (v.shape[0],) + x.shape) for k, v in out.items()}
        return self.likelihood.log_prob_and_grad(x, pairs)

    def _enumerate(self, x):
        """The logits (B, Z[, C]), every state, log p(x | z_s) and log q(z_s | x), each (S, B)."""
        omega = self._encode(x)
        states = self._states()
        log_px, log_q = [], []
        for c in self._state_chunks(states, x.shape[0]):
            log_px.append(self._decode_states(x, states[c])[0])
            log_q.append(self.posterior.log_prob(omega, states[c, None]))
        return omega, states, np.concatenate(log_px), np.concatenate(log_q)

    def _enumerated_backward(self, x, omega, states, d_logpx, d_logq):
        """The gradient of a loss that is a function of the table log p(x | z_s) and of the logits
        through log q(z_s | x), given d loss / d log p(x_b | z_s) and d loss / d log q(z_s | x_b), each
        (S, B) (the encoder's forward pass must be the one that gave omega). The decoder runs state
        chunk by state chunk, its gradients summed; the logits get sum_s d_logq (z_s - rho)
        (Eq. (H3), docs/discrete.md). Returns (d loss / d omega, the decoder's gradients)."""
        d_omega = np.zeros_like(omega)
        dec = {}
        for c in self._state_chunks(states, x.shape[0]):
            _, dlogpx_dout = self._decode_states(x, states[c])
            # A state's decoder output is shared by the B datapoints: sum their gradients first.
            per_state = {k: np.sum(v * d_logpx[c, :, None], axis=1, keepdims=True) for k, v in dlogpx_dout.items()}
            self._decoder_backward(per_state, np.ones((c.stop - c.start, 1), dtype=self.dtype))
            for k, g in self._named("grads").items():
                if k.startswith("dec."):
                    dec[k] = g if k not in dec else dec[k] + g
            d_omega += self.posterior.weighted_score(omega, states[c, None], d_logq[c])
        return d_omega, dec

    def _exact_grads(self, d_omega, dec):
        """Backward through the encoder from d loss / d omega; every parameter's gradient, the
        decoder's as given."""
        self._encoder_backward({"logits": d_omega.reshape(d_omega.shape[0], -1)})
        return {k: dec.get(k, g) for k, g in self._named("grads").items()}

    def exact_elbo(self, x):
        """The ELBO of each datapoint by enumerating every state z_s, (B,):

            ELBO(x) = sum_s q(z_s|x) log p(x|z_s) - KL(q(z|x) || p(z))        Eq. (H19), docs/discrete.md

        Refuses (ValueError) codes of more than 2**16 states."""
        x = self._inputs(x)
        omega, _, log_px, log_q = self._enumerate(x)
        return np.sum(np.exp(log_q) * log_px, axis=0) - self.posterior.kl(omega)

    def exact_loss_and_grads(self, x, beta=1.0):
        """The loss -1/B sum_b (E_q[log p(x_b|z)] - beta KL_b) and its exact gradient, by enumeration:

            d/dtheta = sum_s q(z_s|x) d log p(x|z_s)/dtheta,
            d/domega = sum_s q(z_s|x) log p(x|z_s) (z_s - rho) - beta dKL/domega   Eq. (H20), docs/discrete.md

        (the score identity d q / d omega = q d log q / d omega, summed exactly). Returns (loss, grads)
        with the keys and shapes of ``self.params``. Refuses more than 2**16 states."""
        x = self._inputs(x)
        beta = check.check_finite_number(beta, "beta", low=0.0)
        B = x.shape[0]
        omega, states, log_px, log_q = self._enumerate(x)
        q = np.exp(log_q)
        loss = -np.mean(np.sum(q * log_px, axis=0) - beta * self.posterior.kl(omega))
        d_omega, dec = self._enumerated_backward(x, omega, states, -q / B, -q * log_px / B)
        d_omega += (beta / B) * self.posterior.kl_grad(omega)
        return float(loss), self._exact_grads(d_omega, dec)

    def exact_iwae_loss_and_grads(self, x, k):
        """-1/B sum_b L_k(x_b), the *expected* k-sample bound L_k = E[log 1/k sum_i w_i], and its exact
        gradient, by enumerating all S^k tuples of states (refused above 2**16 tuples):
        Eq. (H22), docs/discrete.md

            L_k = sum_t Pr(t) L^(t),   Pr(t) = prod_i q(z_{t_i}|x) (the array Q),   L^(t) = log 1/k sum_i w(z_{t_i})

            d L_k = sum_s [ xi_s d log q(z_s|x) + zeta_s d log w(z_s) ],
            xi_s = sum_t Pr(t) L^(t) #{i: t_i = s},   zeta_s = sum_t Pr(t) sum_{i: t_i = s} w~_i(t)

        What VIMCO's estimate averages to (k = n_samples); k = 1 gives exact_loss_and_grads."""
        x = self._inputs(x)
        k = check.check_positive_int(k, "k")
        B = x.shape[0]
        omega, states, log_px, log_q = self._enumerate(x)
        S = states.shape[0]
        if S ** k > MAX_STATES:
            raise ValueError(f"exact_iwae_loss_and_grads enumerates S^k = {S}^{k} tuples of states; it is "
                             f"refused above {MAX_STATES} (2**16)")
        log_w = log_px + self.posterior.log_prior - log_q                   # (S, B), Eq. (H12)
        tuples = np.indices((S,) * k).reshape(k, -1)                        # (k, S^k): state of each position
        Q = np.exp(np.sum(log_q[tuples], axis=0))                           # (S^k, B)
        bound = log_mean_exp(log_w[tuples], axis=0)                         # L^(t), (S^k, B)
        w_tilde = normalized_importance_weights(log_w[tuples], axis=0)      # (k, S^k, B)
        xi, zeta = np.zeros_like(log_w), np.zeros_like(log_w)               # (S, B)
        for i in range(k):                                                  # k positions, not S^k tuples
            np.add.at(xi, tuples[i], Q * bound)
            np.add.at(zeta, tuples[i], Q * w_tilde[i])
        loss = -np.mean(np.sum(Q * bound, axis=0))
        # d log w = d log p(x|z) - d log q(z|x): the decoder gets zeta, the logits xi - zeta.
        d_omega, dec = self._enumerated_backward(x, omega, states, -zeta / B, -(xi - zeta) / B)
        return float(loss), self._exact_grads(d_omega, dec)

    def exact_log_likelihood(self, x):
        """log p(x) = log sum_s p(x|z_s) p(z_s) for each datapoint, (B,), by enumeration (log-sum-exp).
        Eq. (H21), docs/discrete.md. Refuses more than 2**16 states."""
        x = self._inputs(x)
        _, states, log_px, _ = self._enumerate(x)
        return log_mean_exp(log_px + self.posterior.log_prior, axis=0) + math.log(states.shape[0])
