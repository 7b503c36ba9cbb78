"""Tutorial 01: an autoencoder is not a generative model; a VAE is.

Train a plain autoencoder and a VAE with the same widths (784-400-20, ReLU, Bernoulli
likelihood) on mnist-mini, then decode codes drawn from N(0, I) with both decoders.

* The autoencoder (docs/autoencoders.md, Eq. (D1)) squeezes x through a code c = f(x) and
  back. Nothing ties its codes to N(0, I): their location, scale and orientation are
  whatever training left them, so random N(0, I) codes decode to smudges.
* The VAE (docs/elbo.md, Eq. (E5)) trains its decoder on noisy codes z ~ q(z|x) and pulls
  their mixture, the aggregate posterior, towards N(0, I) with the KL term. Random prior codes
  land where its decoder was trained, and decode to (blurry) digits.

The script prints both test reconstruction losses (the autoencoder reconstructs better: it
pays no KL) and, for each model, how far N(0, I) is from the codes its decoder was trained
on: KL( N(0, I) || N(m, S) ) with (m, S) fitted to the autoencoder's codes (Eq. (D6)) or to
the VAE's aggregate posterior (Eq. (D7)); this is the prior mismatch of Eq. (D8),
docs/autoencoders.md, section 5.

Read alongside:
  docs/autoencoders.md, sections 1 and 5, Eq. (D1), Eq. (D6), Eq. (D7), Eq. (D8)
  numpyvae.autoencoder.Autoencoder.loss_and_grads, numpyvae.autoencoder.train_autoencoder,
  numpyvae.autoencoder.fit_code_gaussian, numpyvae.autoencoder.aggregate_posterior_gaussian,
  numpyvae.autoencoder.prior_mismatch, numpyvae.autoencoder.plot_random_codes,
  numpyvae.model.VAE.elbo_terms, numpyvae.training.train

Figures (in --out):
  random_codes.png     32 codes z ~ N(0, I) through each decoder, plus the autoencoder on
                       codes from the Gaussian fitted to its own codes (a fairer try)
  reconstructions.png  test digits, the autoencoder's and the VAE's reconstructions
  code_marginals.png   per code dimension, the spread of the training codes (autoencoder)
                       and of the aggregate posterior (VAE) against the N(0, 1) band
"""

import argparse
import os
import time

import numpy as np
from matplotlib.figure import Figure

import numpyvae as nv
from numpyvae.autoencoder import (Autoencoder, aggregate_posterior_gaussian, fit_code_gaussian,
                                  mean_reconstruction_loss, plot_random_codes, prior_mismatch,
                                  train_autoencoder)
from numpyvae.plotting import image_grid
from numpyvae.training import TrainConfig, new_run, train

NAME = "01_autoencoder_vs_vae"
FIGURES = ("random_codes.png", "reconstructions.png", "code_marginals.png")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (1000 digits, 784-32-8, 2 epochs): same code path, seconds")
    parser.add_argument("--out", default=os.path.join("tutorial_output", NAME),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, shuffles and noise")
    return parser.parse_args(argv)


def encode_all(encode, x, chunk=1000):
    """Apply an encoder batch by batch and stack the results."""
    return np.concatenate([encode(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def vae_loss_at_mean(vae, x, chunk=1000):
    """-log p(x | decoder(mu(x))) per datapoint: the VAE's reconstruction loss with its single
    "sample" at the posterior mean (eps = 0), the same quantity the autoencoder is scored on."""
    rec = [vae.elbo_terms(xb, eps=np.zeros((1, xb.shape[0], vae.latent_dim), dtype=vae.dtype))["rec"]
           for xb in (x[i:i + chunk] for i in range(0, x.shape[0], chunk))]
    return -float(np.mean(np.concatenate(rec), dtype=np.float64))


def plot_reconstructions(x, rows, path, n=12):
    """Test digits on top, then one row per model."""
    fig = Figure(figsize=(0.62 * n + 0.4, 1.0 + 0.75 * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, 1)
    for ax, (images, title) in zip(axes, [(x[:n], "test digits")] + rows):
        ax.imshow(image_grid(images[:n], n), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("reconstructions (decoded means)")
    fig.savefig(path, dpi=100)


def plot_code_marginals(ae_codes, vae_codes, path):
    """Box plots of every code dimension: autoencoder codes c = f(x) and VAE aggregate-posterior
    samples z = mu(x) + sigma(x) * eps, each against the central 95% of N(0, 1)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    titles = ("autoencoder: codes $c = f(x)$ of the training digits",
              "VAE: samples of the aggregate posterior $q(z)$")
    for ax, codes, title in zip(axes, (ae_codes, vae_codes), titles):
        ax.axhspan(-1.96, 1.96, color="tab:green", alpha=0.15, label="central 95% of N(0, 1)")
        ax.axhline(0.0, color="tab:green", lw=0.8)
        ax.boxplot(codes, whis=(2.5, 97.5), showfliers=False, widths=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("code dimension")
        ax.set_xticks(np.arange(1, codes.shape[1] + 1), [str(j) for j in range(codes.shape[1])], fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("value (box: quartiles, whiskers: 2.5% / 97.5%)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("where each decoder's training codes lie, dimension by dimension")
    fig.savefig(path, dpi=100)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    data = nv.load_dataset("mnist-mini")
    x_train, x_test = data.x_train, data.x_test
    if args.quick:
        x_train, x_test = x_train[:1000], x_test[:500]
        hidden, code_dim, epochs = (32,), 8, 2
    else:
        hidden, code_dim, epochs = (400,), 20, 10
    D = x_train.shape[1]

    ae = Autoencoder(D, hidden, code_dim, activation="relu", loss="bernoulli", seed=args.seed)
    print(f"--- training {ae!r}")
    train_autoencoder(ae, x_train, epochs, seed=args.seed, x_test=x_test, log=lambda s: print("  AE ", s))

    vae = nv.VAE(D, hidden, code_dim, likelihood="bernoulli", activation="relu", seed=args.seed)
    print(f"--- training {vae!r}")
    run = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
                log=lambda s: print("  VAE", s), progress=False)

    # --- reconstruction: the autoencoder has the easier job (no noise, no KL) ---
    ae_loss = mean_reconstruction_loss(ae, x_test)
    vae_loss = vae_loss_at_mean(vae, x_test)

    # --- how far N(0, I) is from the codes each decoder was trained on (Eq. (D8), docs/autoencoders.md) ---
    ae_codes = encode_all(ae.encode, x_train)
    ae_m, ae_S = fit_code_gaussian(ae_codes)                       # Eq. (D6), docs/autoencoders.md
    vae_m, vae_S = aggregate_posterior_gaussian(vae, x_train)      # Eq. (D7), docs/autoencoders.md
    ae_mismatch, vae_mismatch = prior_mismatch(ae_m, ae_S), prior_mismatch(vae_m, vae_S)
    ae_eig, vae_eig = np.linalg.eigvalsh(ae_S), np.linalg.eigvalsh(vae_S)

    # Samples of the VAE's aggregate posterior, for the marginals figure.
    rng = np.random.default_rng(args.seed + 10)
    mu, logvar = (np.concatenate(a) for a in zip(*(vae.encode(x_train[i:i + 1000])
                                                   for i in range(0, x_train.shape[0], 1000))))
    vae_codes = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape, dtype=vae.dtype)

    fig_rng = np.random.default_rng(args.seed + 20)
    plot_random_codes(ae, vae, os.path.join(args.out, "random_codes.png"), fig_rng, n=32, x_train=x_train)
    plot_reconstructions(x_test, [(ae.reconstruct(x_test[:12]), f"autoencoder ({ae_loss:.1f} nats per digit)"),
                                  (vae.reconstruct(x_test[:12]), f"VAE at the posterior mean ({vae_loss:.1f} nats)")],
                         os.path.join(args.out, "reconstructions.png"))
    plot_code_marginals(ae_codes, vae_codes, os.path.join(args.out, "code_marginals.png"))

    n_tr, n_te = x_train.shape[0], x_test.shape[0]
    print()
    print(f"=== autoencoder vs VAE, {D}-{'-'.join(map(str, hidden))}-{code_dim}, {epochs} epochs, "
          f"{n_tr} training / {n_te} test digits")
    print(f"test reconstruction loss, -log p(x | decoder(code(x))):  autoencoder {ae_loss:7.2f} nats, "
          f"VAE (at mu) {vae_loss:7.2f} nats")
    if ae_loss < vae_loss:
        print(f"  -> the autoencoder reconstructs better by {vae_loss - ae_loss:.2f} nats per digit: it pays no KL "
              "and never sees noisy codes")
    else:
        print(f"  -> the VAE reconstructs better here by {ae_loss - vae_loss:.2f} nats (too little training for the "
              "autoencoder's advantage, no KL and no noisy codes, to show)")
    print(f"VAE test ELBO {run.history['test_elbo'][-1]:.2f} nats (rec {run.history['test_rec'][-1]:.2f}, "
          f"KL {run.history['test_kl'][-1]:.2f}): the autoencoder has no such bound on log p(x)")
    print(f"prior mismatch KL(N(0,I) || N(m,S)):  autoencoder {ae_mismatch:8.2f} nats,  VAE {vae_mismatch:6.2f} nats")
    print(f"  -> N(0, I) codes land {ae_mismatch / max(vae_mismatch, 1e-12):.0f}x further (in nats) from the "
          "autoencoder's training codes than from the VAE's")
    print(f"code mean |m|: autoencoder {np.linalg.norm(ae_m):.2f}, VAE {np.linalg.norm(vae_m):.2f} (prior: 0)")
    print(f"code covariance eigenvalues: autoencoder {ae_eig.min():.3f} .. {ae_eig.max():.2f}, "
          f"VAE {vae_eig.min():.3f} .. {vae_eig.max():.2f} (prior: all 1)")
    print("  -> the autoencoder's code cloud has arbitrary location, scale and orientation; the VAE's is "
          "close to the prior, so its decoder turns prior samples into digits (random_codes.png)")
    if args.quick:
        print("(--quick is a smoke run of the same code: tiny model, little training; its numbers mean little)")
    print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
