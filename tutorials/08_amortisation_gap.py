"""Tutorial 08 -- the amortisation gap: how much ELBO the encoder leaves on the table.

The ELBO's gap is a KL to the true posterior, log p(x) - ELBO(q) = KL(q(z|x) || p(z|x))
(Eq. (E3), docs/elbo.md). With an encoder q_phi(z|x) = N(mu(x), diag exp(logvar(x)))
(Eq. (E4)) that gap has two parts (Cremer, Li & Duvenaud, "Inference Suboptimality in
Variational Autoencoders", ICML 2018):

    log p(x) - ELBO(q_phi)  =  [log p(x) - ELBO(q*)]        approximation gap: the best
                                                             diagonal Gaussian q* is not the posterior
                             + [ELBO(q*) - ELBO(q_phi)]      amortisation gap: one network for all
                                                             x does not find each x's best q*

This script trains a VAE on mnist-mini, then, with the decoder frozen, optimises a separate
(mu, logvar) for each of some test digits by Adam on that digit's ELBO, starting from the
encoder's output. The gradient is the VAE's own backward pass cut short at z:

    ELBO(mu, logvar) = 1/L sum_l log p(x | z_l) - KL(N(mu, e^logvar) || N(0, I)),
    z_l = mu + exp(logvar/2) eps_l                                   Eq. (R1), (E6)
    d/dz_l  : the decoder's backward pass (likelihood.grad -> decoder heads -> decoder MLP)
    d/dmu, d/dlogvar of the data term : reparameterize_backward       Eq. (R2)
    d/dmu, d/dlogvar of the KL        : kl_diag_gaussian_standard_grad Eq. (K3)

checked once against central differences. log p(x) is estimated by importance sampling
(Eq. (I2), docs/importance.md) with both proposals, the encoder's q and the optimised q*,
and the larger (both are lower bounds in expectation) is used. The script prints the two
gaps in nats per digit.

Read: docs/elbo.md sections 3-6, docs/reparameterization.md, docs/kl.md section 3,
docs/importance.md; functions numpyvae.model.VAE.elbo_terms, VAE.log_likelihood,
numpyvae.distributions.reparameterize / reparameterize_backward /
kl_diag_gaussian_standard_grad, numpyvae.optim.Adam.

Run:  python tutorials/08_amortisation_gap.py [--quick] [--out DIR] [--seed S]
"""

import argparse
import math
import os
import time

import numpy as np
from matplotlib.figure import Figure

from numpyvae.data import load_dataset
from numpyvae.distributions import (
    kl_diag_gaussian_standard, kl_diag_gaussian_standard_grad, log_q_from_eps, log_standard_normal,
    reparameterize, reparameterize_backward,
)
from numpyvae.model import VAE
from numpyvae.optim import Adam
from numpyvae.training import TrainConfig, new_run, train

FIGURES = ("amortisation_curve.png", "amortisation_per_digit.png")


def decoder_log_lik(model, x, mu, logvar, eps):
    """log p(x | z_l) for z_l = mu + sigma eps_l: (L, B), keeping the forward pass for backward."""
    L, B, Z = eps.shape
    z = reparameterize(mu, logvar, eps)                             # Eq. (R1)
    out = model.decoder_outputs(z.reshape(L * B, Z))
    out = {k: v.reshape(L, B, -1) for k, v in out.items()}
    return model.likelihood.log_prob(x, out), out


def elbo_and_grads(model, x, mu, logvar, eps):
    """Per-datapoint ELBO (B,) and its gradient with respect to the free (mu, logvar), each (B, Z).

    The decoder is only read: its layers' gradient buffers get overwritten, its parameters never."""
    L, B, Z = eps.shape
    rec, out = decoder_log_lik(model, x, mu, logvar, eps)
    # d (1/L sum_l log p(x|z_l)) / d decoder outputs, then backward through heads and trunk.
    d_out = model.likelihood.grad(x, out)
    dh = sum(layer.backward(d_out[name].reshape(L * B, -1) / L) for name, layer in model.dec_heads.items())
    dz = model.decoder.backward(dh).reshape(L, B, Z)
    dmu, dlogvar = reparameterize_backward(dz, logvar, eps)          # Eq. (R2)
    kmu, klogvar = kl_diag_gaussian_standard_grad(mu, logvar)        # Eq. (K3)
    elbo = rec.mean(axis=0) - kl_diag_gaussian_standard(mu, logvar)
    return elbo, dmu - kmu, dlogvar - klogvar


def elbo_eval(model, x, mu, logvar, eps, chunk=100):
    """ELBO (B,) with many fixed samples eps (L, B, Z), L processed ``chunk`` at a time."""
    rec = sum(decoder_log_lik(model, x, mu, logvar, eps[i:i + chunk])[0].sum(axis=0)
              for i in range(0, eps.shape[0], chunk))
    return rec / eps.shape[0] - kl_diag_gaussian_standard(mu, logvar)


def importance_log_px(model, x, mu, logvar, K, rng, chunk=100):
    """log 1/K sum_k p(x|z_k) p(z_k) / q(z_k) with z_k ~ q = N(mu, e^logvar): (B,).  Eq. (I2)"""
    log_sum = np.full(x.shape[0], -np.inf)
    for start in range(0, K, chunk):
        eps = rng.standard_normal((min(chunk, K - start),) + mu.shape)
        rec, _ = decoder_log_lik(model, x, mu, logvar, eps)
        log_w = rec + log_standard_normal(reparameterize(mu, logvar, eps)) - log_q_from_eps(logvar, eps)
        m = log_w.max(axis=0)
        log_sum = np.logaddexp(log_sum, m + np.log(np.exp(log_w - m).sum(axis=0)))
    return log_sum - math.log(K)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, few digits, few steps (for tests)")
    parser.add_argument("--out", default=os.path.join("tutorial_output", "08_amortisation_gap"),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, the training and all sampling")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    if args.quick:
        n_train, hidden, Z, epochs, n_digits, steps, L, L_eval, K = 1000, (64,), 5, 2, 10, 150, 4, 200, 200
    else:
        n_train, hidden, Z, epochs, n_digits, steps, L, L_eval, K = 8000, (200,), 10, 15, 100, 400, 8, 1000, 2000

    # --- 1. an ordinary VAE, trained by the package's trainer ------------------------------
    ds = load_dataset("mnist-mini")
    model = VAE(784, hidden, Z, activation="relu", seed=args.seed)
    run = new_run(model, TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=args.seed))
    train(run, ds.x_train[:n_train], ds.x_test, log=lambda line: None, progress=False)
    print(f"trained {model!r} on {n_train} digits for {epochs} epochs: test ELBO {run.history['test_elbo'][-1]:.2f} "
          f"nats ({time.perf_counter() - t0:.0f} s)")

    # float64 copy of the trained model: the per-digit optimisation and the checks need the precision.
    m64 = VAE(784, hidden, Z, activation="relu", dtype=np.float64)
    for k, v in model.params.items():
        m64.params[k][...] = v
    pick = rng.choice(ds.x_test.shape[0], n_digits, replace=False)
    x = ds.x_test[pick].astype(np.float64)
    mu_enc, logvar_enc = m64.encode(x)

    # --- 2. the gradient, checked once against central differences ---------------------------
    eps_c = rng.standard_normal((3, 2, Z))
    _, gmu, glv = elbo_and_grads(m64, x[:2], mu_enc[:2], logvar_enc[:2], eps_c)
    h, j = 1e-5, 0
    e = np.zeros_like(mu_enc[:2])
    e[:, j] = h
    fd_mu = (elbo_eval(m64, x[:2], mu_enc[:2] + e, logvar_enc[:2], eps_c)
             - elbo_eval(m64, x[:2], mu_enc[:2] - e, logvar_enc[:2], eps_c)) / (2 * h)
    fd_lv = (elbo_eval(m64, x[:2], mu_enc[:2], logvar_enc[:2] + e, eps_c)
             - elbo_eval(m64, x[:2], mu_enc[:2], logvar_enc[:2] - e, eps_c)) / (2 * h)
    err = max(np.max(abs(fd_mu - gmu[:, j]) / (abs(fd_mu) + abs(gmu[:, j]) + 1e-12)),
              np.max(abs(fd_lv - glv[:, j]) / (abs(fd_lv) + abs(glv[:, j]) + 1e-12)))
    print(f"gradient check (2 digits, z_{j}): dELBO/dmu {gmu[0, j]:+.5f} vs central difference {fd_mu[0]:+.5f}; "
          f"largest relative error {err:.1e}")

    # --- 3. per-digit optimisation of (mu, logvar), decoder frozen ---------------------------
    eps_eval = rng.standard_normal((L_eval, n_digits, Z))      # the same noise for every ELBO we compare
    eps_curve = eps_eval[:100]
    q = {"mu": mu_enc.copy(), "logvar": logvar_enc.copy()}
    opt = Adam(q, lr=1e-2)
    curve_steps, curve = [0], [elbo_eval(m64, x, q["mu"], q["logvar"], eps_curve).mean()]
    for step in range(1, steps + 1):
        if step == 2 * steps // 3:
            opt.lr = 2e-3                                      # smaller steps: less Monte Carlo jitter at the end
        _, gmu, glv = elbo_and_grads(m64, x, q["mu"], q["logvar"], rng.standard_normal((L, n_digits, Z)))
        opt.step({"mu": -gmu, "logvar": -glv})                 # Adam minimises: descend -ELBO
        if step % max(1, steps // 40) == 0 or step == steps:
            curve_steps.append(step)
            curve.append(elbo_eval(m64, x, q["mu"], q["logvar"], eps_curve).mean())

    elbo_enc = elbo_eval(m64, x, mu_enc, logvar_enc, eps_eval)
    elbo_opt = elbo_eval(m64, x, q["mu"], q["logvar"], eps_eval)
    log_px_enc = m64.log_likelihood(x, n_importance=K, rng=rng)
    log_px_opt = importance_log_px(m64, x, q["mu"], q["logvar"], K, rng)
    log_px = np.maximum(log_px_enc, log_px_opt)
    amort, approx = elbo_opt - elbo_enc, log_px - elbo_opt

    print(f"{n_digits} test digits, {steps} Adam steps per digit (L={L} samples per step); ELBOs with the same "
          f"{L_eval} samples, log p(x) by importance sampling with K={K}:")
    print(f"  encoder ELBO         {elbo_enc.mean():9.2f} nats   (mean over the digits)")
    print(f"  optimised ELBO       {elbo_opt.mean():9.2f} nats   (best diagonal Gaussian found per digit)")
    print(f"  log p(x), IS from q  {log_px_enc.mean():9.2f} nats   (from q*: {log_px_opt.mean():.2f}; "
          f"using the larger per digit: {log_px.mean():.2f})")
    print(f"  approximation gap    {approx.mean():9.2f} nats   log p(x) - ELBO(q*): the diagonal Gaussian family")
    print(f"  amortisation gap     {amort.mean():9.2f} nats   ELBO(q*) - ELBO(q_phi): the shared encoder "
          f"({100 * amort.mean() / (log_px - elbo_enc).mean():.0f}% of the total gap {(log_px - elbo_enc).mean():.2f})")
    print(f"  per digit, the amortisation gap ranges {amort.min():.2f} .. {amort.max():.2f} nats "
          f"(median {np.median(amort):.2f}); the optimised KL is {kl_diag_gaussian_standard(q['mu'], q['logvar']).mean():.2f} "
          f"vs the encoder's {kl_diag_gaussian_standard(mu_enc, logvar_enc).mean():.2f} nats")
    sd_ratio = np.exp(0.5 * (q["logvar"] - logvar_enc))
    shift = np.median(abs(q["mu"] - mu_enc) / np.exp(0.5 * logvar_enc))
    print(f"  what the encoder gets wrong: q*'s std / the encoder's std, median {np.median(sd_ratio):.2f} "
          f"({'about the right width' if 0.9 < np.median(sd_ratio) < 1.1 else 'the widths differ'}); "
          f"|mu* - mu| / sigma, median {shift:.2f} ({'mostly the means' if shift > 0.3 else 'the means are close'})")
    print("  (importance sampling underestimates log p(x) a little, so the approximation gap is, if anything, "
          "larger than printed)")

    # --- figures -------------------------------------------------------------------------------
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
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
    fig.savefig(os.path.join(args.out, FIGURES[0]), dpi=100)

    order = np.argsort(amort + approx)
    fig = Figure(figsize=(9, 4.5), layout="constrained")
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
    fig.savefig(os.path.join(args.out, FIGURES[1]), dpi=100)

    print(f"figures: {', '.join(os.path.join(args.out, f) for f in FIGURES)}   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
