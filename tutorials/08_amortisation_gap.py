# %% [markdown]
# # Tutorial 08: the amortisation gap, how much ELBO the encoder leaves on the table
#
# The ELBO's gap is a KL to the true posterior, $\log p(x) - \mathrm{ELBO}(q) = \mathrm{KL}(q(z|x) \Vert p(z|x))$
# (Eq. (E3), docs/elbo.md). With an encoder $q_\phi(z|x) = \mathcal{N}(\mu(x), \mathrm{diag}\, e^{v(x)})$
# (Eq. (E4), docs/elbo.md) that gap has two parts (Cremer, Li & Duvenaud, "Inference Suboptimality in
# Variational Autoencoders", ICML 2018):
#
# $$\log p(x) - \mathrm{ELBO}(q_\phi) = \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation gap}}
#   + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\phi)}_{\text{amortisation gap}}$$
#
# * the **approximation gap**: the best diagonal Gaussian $q^*$ for $x$ is still not the posterior;
# * the **amortisation gap**: one network for all $x$ does not find each $x$'s best $q^*$.
#
# We train a VAE on mnist-mini, then, with the decoder frozen, optimise a separate $(\mu, v)$ for
# each of some test digits by Adam on that digit's ELBO, starting from the encoder's output, and
# estimate $\log p(x)$ by importance sampling. Everything goes through the model's public methods,
# which take a posterior given explicitly, `q={"mu": ..., "logvar": ...}`, in place of the encoder's.
#
# Read: docs/elbo.md sections 3-6, docs/reparameterization.md, docs/kl.md section 3,
# docs/importance.md. Functions: `numpyvae.model.VAE.elbo`, `VAE.posterior_grads`,
# `VAE.log_likelihood` (each with `q=`), `numpyvae.gradcheck.numerical_gradient`, `numpyvae.optim.Adam`.
#
# Figures (in `--out`):
# * `amortisation_curve.png`: the mean ELBO of the per-digit $q$ during the optimisation, with both gaps;
# * `amortisation_per_digit.png`: each digit's total gap, split into its two parts.

# %%
import os
import time

import numpy as np

from numpyvae.data import load_dataset
from numpyvae.distributions import kl_diag_gaussian_standard
from numpyvae.gradcheck import numerical_gradient, rel_error
from numpyvae.lab.plotting import new_figure, save_figure
from numpyvae.model import VAE
from numpyvae.optim import Adam
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("amortisation_curve.png", "amortisation_per_digit.png")
args = setup("08_amortisation_gap", quick="784-64-5 for 2 epochs, 10 digits, 150 steps: seconds")
rng = np.random.default_rng(args.seed)
start = time.perf_counter()

# n_digits test digits, Adam steps per digit with L samples each, L_eval samples for every ELBO
# compared, K importance samples for log p(x).
if args.quick:
    n_train, hidden, Z, epochs, n_digits, steps, L, L_eval, K = 1000, (64,), 5, 2, 10, 150, 4, 200, 200
else:
    n_train, hidden, Z, epochs, n_digits, steps, L, L_eval, K = 8000, (200,), 10, 15, 100, 400, 8, 1000, 2000

# %% [markdown]
# ## 1. An ordinary VAE, trained by the package's trainer
#
# A smaller network than the default (`DEFAULT_HIDDEN_DIMS = (400,)`, `DEFAULT_LATENT_DIM = 20`),
# so that optimising every digit's posterior and importance sampling with $K = 2000$ stay a matter
# of minutes; ReLU, as the default.

# %%
ds = load_dataset("mnist-mini")
model = VAE(784, hidden, Z, activation="relu", seed=args.seed)
run = new_run(model, TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=args.seed))
train(run, ds.x_train[:n_train], ds.x_test, log=lambda line: None, progress=False)
print(f"trained {model!r} on {n_train} digits for {epochs} epochs: test ELBO {run.history['test_elbo'][-1]:.2f} "
      f"nats ({time.perf_counter() - start:.0f} s)")

# %% [markdown]
# ## 2. A posterior of our own for each digit
#
# The model trains in float32; the per-digit optimisation and the gradient check need float64, so
# we copy the trained parameters into a float64 twin. The encoder's $(\mu(x), v(x))$ of the chosen
# digits are the starting point, and the posterior the amortisation gap is measured from.
#
# Given `q`, `VAE.elbo(x, eps=eps, n_samples=L, q=q)` is the ELBO of that posterior with the noise `eps`
# $(L, B, Z)$ (Eq. (E6), docs/elbo.md):
# $\frac{1}{L} \sum_l \log p(x | z_l) - \mathrm{KL}(\mathcal{N}(\mu, e^{v}) \Vert \mathcal{N}(0, I))$,
# $z_l = \mu + e^{v/2} \varepsilon_l$. Every ELBO we compare uses the same `L_eval` samples, taken
# 100 at a time to bound the memory (the decoder's output for all of them at once is
# $L \cdot B \cdot 784$ numbers).

# %%
m64 = VAE(**{**model.config, "dtype": np.float64})
for k, v in model.params.items():
    m64.params[k][...] = v
pick = rng.choice(ds.x_test.shape[0], n_digits, replace=False)
x = ds.x_test[pick].astype(np.float64)
mu_enc, logvar_enc = m64.encode(x)
q_enc = {"mu": mu_enc, "logvar": logvar_enc}


def elbo_many_samples(model, x, q, eps, chunk=100):
    """The ELBO (B,) of the posterior q = {"mu", "logvar"} with the fixed noise eps (L, B, Z), L a
    multiple of ``chunk``: the mean of the ELBOs of its chunks of samples (the KL is exact in each)."""
    return np.mean([model.elbo(x, eps=eps[i:i + chunk], n_samples=chunk, q=q)
                    for i in range(0, eps.shape[0], chunk)], axis=0)


# %% [markdown]
# ## 3. The gradient with respect to a free posterior, checked once
#
# `VAE.posterior_grads(x, eps=eps, n_samples=L, q=q)` returns, for each digit $b$, the gradient of its own loss
# $-\mathrm{ELBO}_b$ with respect to $(\mu_b, v_b)$: the VAE's backward pass cut short at $q$. It goes
# back through the decoder (Eq. (B7), docs/backprop.md) to $\partial/\partial z_l$, along the path
# $z_l = \mu + e^{v/2}\varepsilon_l$ (Eq. (R2), docs/reparameterization.md), and adds the KL's gradient
# (Eq. (K3), docs/kl.md). We check it against central differences of `VAE.elbo` with the same
# noise, for 2 digits and every coordinate, by `numerical_gradient` (Eq. (C1), docs/gradcheck.md); the
# error is `rel_error`, the max-norm relative error (Eq. (C2), docs/gradcheck.md).

# %%
eps_c = rng.standard_normal((3, 2, Z))
q2 = {"mu": mu_enc[:2].copy(), "logvar": logvar_enc[:2].copy()}
d_mu, d_logvar = m64.posterior_grads(x[:2], eps=eps_c, n_samples=3, q=q2)


def loss_of_q2():
    """The summed loss -ELBO_b of the 2 digits: its gradient by q2 is each digit's own gradient."""
    return -m64.elbo(x[:2], eps=eps_c, n_samples=3, q=q2).sum()


fd_mu, fd_logvar = numerical_gradient(loss_of_q2, q2["mu"]), numerical_gradient(loss_of_q2, q2["logvar"])
print(f"gradient check (2 digits, all {Z} coordinates): dELBO/dmu_0 {-d_mu[0, 0]:+.5f} vs central difference "
      f"{-fd_mu[0, 0]:+.5f}; relative error mu {rel_error(d_mu, fd_mu):.1e}, "
      f"logvar {rel_error(d_logvar, fd_logvar):.1e}")

# %% [markdown]
# ## 4. Optimising each digit's $(\mu, v)$, decoder frozen
#
# Adam minimises, so it descends $-\mathrm{ELBO}$: exactly what `posterior_grads` returns. Each
# row of `q` is one digit's posterior; the digits do not interact. The step size drops for the
# last third to reduce the Monte Carlo jitter. Every few steps we record the mean ELBO with 100
# fixed samples, for the first figure.

# %%
eps_eval = rng.standard_normal((L_eval, n_digits, Z))      # the same noise for every ELBO we compare
eps_curve = eps_eval[:100]
q = {"mu": mu_enc.copy(), "logvar": logvar_enc.copy()}
opt = Adam(q, lr=1e-2)
curve_steps, curve = [0], [m64.elbo(x, eps=eps_curve, n_samples=100, q=q).mean()]
for step in range(1, steps + 1):
    if step == 2 * steps // 3:
        opt.lr = 2e-3                                      # smaller steps: less Monte Carlo jitter at the end
    d_mu, d_logvar = m64.posterior_grads(x, n_samples=L, rng=rng, q=q)      # a fresh eps (L, B, Z) each step
    opt.step({"mu": d_mu, "logvar": d_logvar})
    if step % max(1, steps // 40) == 0 or step == steps:
        curve_steps.append(step)
        curve.append(m64.elbo(x, eps=eps_curve, n_samples=100, q=q).mean())

# %% [markdown]
# ## 5. The two gaps
#
# Both ELBOs use the same `L_eval` samples. $\log p(x)$ is estimated by importance sampling
# (Eq. (I2), docs/importance.md) with two proposals: the encoder's $q_\phi$ (`VAE.log_likelihood`)
# and the optimised $q^*$ (the same with `q=q`). Both are lower bounds in expectation, so the
# larger one per digit is used. Importance sampling underestimates $\log p(x)$ a little, so the
# approximation gap is, if anything, larger than printed.
#
# Then: is the encoder's error in the widths or in the means? The ratio of the standard
# deviations, and how far the mean moved in units of the encoder's standard deviation.

# %%
elbo_enc = elbo_many_samples(m64, x, q_enc, eps_eval)
elbo_opt = elbo_many_samples(m64, x, q, eps_eval)
log_px_enc = m64.log_likelihood(x, n_importance=K, rng=rng)
log_px_opt = m64.log_likelihood(x, n_importance=K, rng=rng, q=q)
log_px = np.maximum(log_px_enc, log_px_opt)
amort, approx = elbo_opt - elbo_enc, log_px - elbo_opt
total = log_px - elbo_enc

print(f"{n_digits} test digits, {steps} Adam steps per digit (L={L} samples per step); ELBOs with the same "
      f"{L_eval} samples, log p(x) by importance sampling with K={K}:")
print(f"  encoder ELBO         {elbo_enc.mean():9.2f} nats   (mean over the digits)")
print(f"  optimised ELBO       {elbo_opt.mean():9.2f} nats   (best diagonal Gaussian found per digit)")
print(f"  log p(x), IS from q  {log_px_enc.mean():9.2f} nats   (from q*: {log_px_opt.mean():.2f}; "
      f"using the larger per digit: {log_px.mean():.2f})")
print(f"  approximation gap    {approx.mean():9.2f} nats   log p(x) - ELBO(q*): the diagonal Gaussian family")
print(f"  amortisation gap     {amort.mean():9.2f} nats   ELBO(q*) - ELBO(q_phi): the shared encoder "
      f"({100 * amort.mean() / total.mean():.0f}% of the total gap {total.mean():.2f})")
kl_opt, kl_enc = kl_diag_gaussian_standard(q["mu"], q["logvar"]), kl_diag_gaussian_standard(mu_enc, logvar_enc)
print(f"  per digit, the amortisation gap ranges {amort.min():.2f} .. {amort.max():.2f} nats "
      f"(median {np.median(amort):.2f}); the optimised KL is {kl_opt.mean():.2f} vs the encoder's "
      f"{kl_enc.mean():.2f} nats")
sd_ratio = np.exp(0.5 * (q["logvar"] - logvar_enc))
shift = np.median(abs(q["mu"] - mu_enc) / np.exp(0.5 * logvar_enc))
print(f"  what the encoder gets wrong: q*'s std / the encoder's std, median {np.median(sd_ratio):.2f} "
      f"({'about the right width' if 0.9 < np.median(sd_ratio) < 1.1 else 'the widths differ'}); "
      f"|mu* - mu| / sigma, median {shift:.2f} ({'mostly the means' if shift > 0.3 else 'the means are close'})")

# %% [markdown]
# ## 6. Figure: the optimisation, and the two gaps of the mean

# %%
fig = new_figure(7.5, 4.5)
ax = fig.add_subplot()
ax.plot(curve_steps, curve, color="tab:blue", lw=2, label="ELBO of the per-digit q (100 fixed samples)")
ax.axhline(elbo_enc.mean(), color="tab:orange", ls="--", label=f"encoder's ELBO {elbo_enc.mean():.2f}")
ax.axhline(elbo_opt.mean(), color="tab:blue", ls=":", label=f"optimised ELBO {elbo_opt.mean():.2f}")
ax.axhline(log_px.mean(), color="black", ls="-.", label=f"log p(x), importance sampling K={K}: {log_px.mean():.2f}")
ax.annotate("", xy=(steps * 0.97, elbo_opt.mean()), xytext=(steps * 0.97, elbo_enc.mean()),
            arrowprops=dict(arrowstyle="<->", color="tab:orange"))
ax.text(steps * 0.95, (elbo_opt.mean() + elbo_enc.mean()) / 2, f"amortisation\ngap {amort.mean():.2f}",
        ha="right", va="center", color="tab:orange")
ax.annotate("", xy=(steps * 0.97, log_px.mean()), xytext=(steps * 0.97, elbo_opt.mean()),
            arrowprops=dict(arrowstyle="<->", color="black"))
ax.text(steps * 0.95, (log_px.mean() + elbo_opt.mean()) / 2, f"approximation\ngap {approx.mean():.2f}",
        ha="right", va="center")
ax.set_xlabel("Adam step on each digit's own (mu, logvar)")
ax.set_ylabel(f"mean over {n_digits} test digits  [nats]")
ax.set_title("Optimising q per datapoint, decoder frozen")
ax.legend(loc="lower right", fontsize=8)
lo, hi = elbo_enc.mean(), log_px.mean()
ax.set_ylim(lo - 0.6 * (hi - lo), hi + 0.3 * (hi - lo))
show(save_figure(fig, os.path.join(args.out, FIGURES[0])))

# %% [markdown]
# ## 7. Figure: each digit's gap, split into its two parts

# %%
order = np.argsort(amort + approx)
fig = new_figure(9, 4.5)
ax = fig.add_subplot()
idx = np.arange(n_digits)
ax.bar(idx, approx[order], color="0.5", label="approximation gap  log p(x) - ELBO(q*)")
ax.bar(idx, amort[order], bottom=approx[order], color="tab:orange",
       label="amortisation gap  ELBO(q*) - ELBO(encoder)")
ax.set_xlabel("test digit (sorted by total gap)")
ax.set_ylabel("nats")
ax.set_title(f"log p(x) - encoder ELBO, split into its two parts, for {n_digits} test digits")
ax.legend(loc="upper left")
ax.set_xlim(-1, n_digits)
show(save_figure(fig, os.path.join(args.out, FIGURES[1])))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
