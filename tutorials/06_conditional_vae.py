"""Tutorial 06: the conditional VAE: give the model the label, and z is left with the style.

A conditional VAE (numpyvae.conditional.ConditionalVAE) appends the one-hot label y to the
encoder's input and to the decoder's input, and bounds log p(x | y) instead of log p(x)
(Eq. (E8), docs/elbo.md):

    log p(x | y) >= E_q(z|x,y)[log p(x | z, y)] - KL(q(z | x, y) || N(0, I)).

Since the decoder is told the class, the code z need not say which digit it is; it is free to
hold the style (slant, thickness, width). Decoding one z with each of the ten labels draws one
handwriting as ten digits.

The script trains a ConditionalVAE and an unconditional VAE of the same size (784-400-2,
ReLU, Bernoulli, same seed and minibatches) and prints:

* their test ELBOs: the label is worth some nats, and the split shows where they come from.
  Two latent numbers cannot hold both a digit's class and its style; given the class, the
  code spends them all on style;
* importance-sampled log p(x | y) and log p(x) (Eq. (I2), docs/importance.md) on a few test
  digits. For one exact joint model, log p(x | y) - log p(x) = log p(y | x) - log p(y), which is at
  most -log p(y), about log 10 = 2.3 nats: a label cannot tell you more about a digit than the
  information in the label. Comparing two separately trained models (and two bounds), the gap
  can be larger: part of it is the unconditional model paying, in fit, for having to encode
  the class in z;
* the conditional model used as a classifier by Bayes' rule,
  p(y | x) proportional to p(x | y) p(y), with p(x | y) importance-sampled for every label, and
  log p(y | x) - log p(y) measured inside that one model (here the 2.3-nat ceiling holds). Summed
  over labels, p(x) = sum_y p(y) p(x | y) is itself a model of x: a VAE with an extra ten-way
  discrete latent, and that extra capacity, not the label's information, is most of the gap
  between the two ELBOs. (Caveat: for a wrong label the encoder's q(z | x, y) is a worse
  proposal, so its importance-sampled bound is looser, which also favours the true label.);
* how much the decoder listens to the label: the pixel spread of class_grid across the ten
  labels for one z, against its spread across z for one label.

Why a 2-D code: the encoder sees the label too, so nothing stops z from encoding the class
anyway, and with room to spare it does. Measured with latent_dim = 20 (LATENT_DIM below): after
5 epochs the spread across labels is 0.02 against 0.12 across z, the label is nearly ignored;
after 10 epochs every row of class_grid.png is still one and the same digit, and the ELBO gain
is 2.2 nats. With latent_dim = 2 the two spreads are about equal and each row runs through
0 ... 9 in one style.

Read alongside:
  docs/elbo.md, section "The conditional VAE", Eq. (E8); docs/importance.md, section 2
  numpyvae.conditional.ConditionalVAE (elbo_terms, log_likelihood, class_grid, encode, decode),
  numpyvae.conditional.one_hot, numpyvae.plotting.plot_class_grid, numpyvae.training.train
  (y_train=, y_test=)

Figures (in --out):
  class_grid.png      8 codes z ~ N(0, I), one per row, decoded with every label 0 ... 9
  style_transfer.png  real test digits (left column) encoded with their own label, then decoded
                      with every label: the style of each real digit, drawn as ten digits
  elbo_comparison.png test ELBO and test KL per epoch, conditional against unconditional
"""

import argparse
import math
import os
import time

import numpy as np
from matplotlib.figure import Figure

import numpyvae as nv
from numpyvae.plotting import image_grid, plot_class_grid
from numpyvae.training import TrainConfig, new_run, train

NAME = "06_conditional_vae"
FIGURES = ("class_grid.png", "style_transfer.png", "elbo_comparison.png")
LATENT_DIM = 2      # of both models; see the module docstring for what happens at 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (1000 digits, 784-32-2, 2 epochs, 20 digits for log p): same code path")
    parser.add_argument("--out", default=os.path.join("tutorial_output", NAME),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, shuffles and noise")
    return parser.parse_args(argv)


def plot_style_transfer(cvae, x, y, path):
    """Row i: test digit x_i, then decode(mu(x_i, y_i), c) for c = 0 ... 9."""
    mu, _ = cvae.encode(x, y)
    grid = cvae.class_grid(mu)                                     # (n, 10, D)
    images = np.concatenate([x[:, None, :], grid], axis=1).reshape(-1, x.shape[1])
    fig = Figure(figsize=(7.6, 0.66 * x.shape[0] + 0.9), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(image_grid(images, cvae.n_classes + 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([])
    ax.set_xticks(14.5 + 29 * np.arange(cvae.n_classes + 1), ["input"] + [str(c) for c in range(cvae.n_classes)])
    ax.set_xlabel("decoded with label")
    ax.set_title("style held, label varied: z = mu(x, y) of a real test digit, decoded with every label", fontsize=10)
    fig.savefig(path, dpi=100)


def plot_comparison(h_c, h_u, path):
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for h, label, color in ((h_c, "conditional VAE, bound on log p(x|y)", "tab:green"),
                            (h_u, "VAE, bound on log p(x)", "tab:blue")):
        ax1.plot(h["epoch"], h["test_elbo"], "-o", ms=4, color=color, label=label)
        ax2.plot(h["epoch"], h["test_kl"], "-o", ms=4, color=color, label=label)
    ax1.set_title("test ELBO", fontsize=10)
    ax2.set_title(r"test KL$(q\,\|\,p(z))$: what z has to encode", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per digit")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def log_p_x_given_every_label(cvae, x, K, seed):
    """Importance-sampled log p(x | c) for every class c: (B, n_classes). The same noise is used
    for every c (a fresh Generator from one seed), so the comparison across labels is not blurred
    by different draws."""
    cols = []
    for c in range(cvae.n_classes):
        y = np.full(x.shape[0], c)
        cols.append(cvae.log_likelihood(x, y, n_importance=K, rng=np.random.default_rng(seed)).astype(np.float64))
    return np.stack(cols, axis=1)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()

    data = nv.load_dataset("mnist-mini")
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if args.quick:
        x_train, y_train, x_test, y_test = x_train[:1000], y_train[:1000], x_test[:500], y_test[:500]
        hidden, epochs, n_ll, K = (32,), 2, 20, 20
    else:
        hidden, epochs, n_ll, K = (400,), 10, 200, 200
    latent = LATENT_DIM
    D = x_train.shape[1]

    cvae = nv.ConditionalVAE(D, 10, hidden, latent, likelihood="bernoulli", activation="relu", seed=args.seed)
    print(f"--- training {cvae!r}")
    run_c = train(new_run(cvae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
                  log=lambda s: print("  CVAE", s), progress=False, y_train=y_train, y_test=y_test)
    vae = nv.VAE(D, hidden, latent, likelihood="bernoulli", activation="relu", seed=args.seed)
    print(f"--- training {vae!r}")
    run_u = train(new_run(vae, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
                  log=lambda s: print("  VAE ", s), progress=False)
    h_c, h_u = run_c.history, run_u.history

    plot_class_grid(cvae, os.path.join(args.out, "class_grid.png"), np.random.default_rng(args.seed + 3), n_styles=8)
    pick = np.concatenate([np.flatnonzero(y_test == k)[:1] for k in (0, 2, 3, 4, 5, 7, 8, 9)])
    plot_style_transfer(cvae, x_test[pick], y_test[pick], os.path.join(args.out, "style_transfer.png"))
    plot_comparison(h_c, h_u, os.path.join(args.out, "elbo_comparison.png"))

    # --- importance-sampled log-likelihoods on the first n_ll test digits ---
    x_ll, y_ll = x_test[:n_ll], y_test[:n_ll]
    log_p_given = log_p_x_given_every_label(cvae, x_ll, K, args.seed + 100)        # (n, 10)
    log_prior_y = np.log(np.bincount(y_train, minlength=10) / y_train.shape[0])     # p(y): class frequencies
    log_joint = log_p_given + log_prior_y                                           # log p(x, c)
    m = log_joint.max(axis=1, keepdims=True)
    log_p_x_mix = (m + np.log(np.exp(log_joint - m).sum(axis=1, keepdims=True)))[:, 0]  # log sum_c p(c) p(x|c)
    log_post = log_joint - log_p_x_mix[:, None]                                     # log p(c | x)
    rows = np.arange(n_ll)
    log_p_true = log_p_given[rows, y_ll]
    log_p_vae = vae.log_likelihood(x_ll, n_importance=K, rng=np.random.default_rng(args.seed + 100)).astype(np.float64)
    accuracy = float(np.mean(np.argmax(log_post, axis=1) == y_ll))
    info = log_post[rows, y_ll] - log_prior_y[y_ll]                                 # log p(y|x) - log p(y)

    # How much the decoder listens to the label: spread over the 10 labels for one z, against over z for one label.
    grid = cvae.class_grid(np.random.default_rng(args.seed + 4).standard_normal((64, latent), dtype=cvae.dtype))
    spread_labels, spread_z = float(grid.std(axis=1).mean()), float(grid.std(axis=0).mean())

    d_elbo = h_c["test_elbo"][-1] - h_u["test_elbo"][-1]
    d_rec = h_c["test_rec"][-1] - h_u["test_rec"][-1]
    d_kl = h_c["test_kl"][-1] - h_u["test_kl"][-1]
    print()
    print(f"=== conditional vs unconditional VAE, {D}-{'-'.join(map(str, hidden))}-{latent}, {epochs} epochs, "
          f"{x_test.shape[0]} test digits (nats per digit)")
    print(f"test ELBO: conditional {h_c['test_elbo'][-1]:.2f} (bound on log p(x|y)), unconditional "
          f"{h_u['test_elbo'][-1]:.2f} (bound on log p(x)) -> the label is worth {d_elbo:+.2f} nats of ELBO")
    print(f"  split: reconstruction term {d_rec:+.2f}, minus-KL term {-d_kl:+.2f} (KL: conditional "
          f"{h_c['test_kl'][-1]:.2f}, unconditional {h_u['test_kl'][-1]:.2f})")
    if d_kl < 0:
        print(f"  -> z carries {-d_kl:.2f} nats less: the class no longer has to be encoded in it, only the style")
    else:
        print("  -> the conditional KL is not smaller: the code's capacity, freed from the class, went into "
              "describing the style better (reconstruction)")
    print(f"  label use: pixel std across the 10 labels (z fixed) {spread_labels:.3f}, across z (label fixed) "
          f"{spread_z:.3f} -> " + ("the label decides as much as the code: class_grid.png rows run through 0 ... 9"
                                  if spread_labels > 0.5 * spread_z else
                                  "the decoder mostly ignores the label; z carries the class"))
    print(f"importance sampling, K = {K}, first {n_ll} test digits:")
    print(f"  log p(x|y) conditional {np.mean(log_p_true):.2f}, log p(x) unconditional {np.mean(log_p_vae):.2f}: "
          f"difference {np.mean(log_p_true - log_p_vae):+.2f} +- "
          f"{np.std(log_p_true - log_p_vae, ddof=1) / math.sqrt(n_ll):.2f}")
    ceiling = float(np.mean(-log_prior_y[y_ll]))
    print(f"  ceiling for one exact model: -log p(y) = {ceiling:.2f} nats (log 10 = {math.log(10):.2f}); "
          "anything beyond it compares two different models (and bounds), not the label's information")
    print(f"  inside the conditional model, log p(x) = log sum_c p(c) p(x|c) = {np.mean(log_p_x_mix):.2f}, "
          f"so the label adds log p(y|x) - log p(y) = {np.mean(info):.2f} nats on average, median "
          f"{np.median(info):.2f} (ceiling {ceiling:.2f}; a few confident mistakes pull the mean down)")
    mix_gain = float(np.mean(log_p_x_mix - log_p_vae))
    print(f"  and that mixture over labels models x itself {abs(mix_gain):.2f} nats "
          f"{'better' if mix_gain > 0 else 'worse'} than the unconditional VAE does")
    if mix_gain > ceiling:
        print("  -> so most of the gap between the two ELBOs is capacity, not the label's information: summed over "
              "labels, the conditional model is a VAE with an extra 10-way discrete latent next to its 2 numbers")
    verdict = ("the label's information is in p(x|y), and Bayes' rule gets it back" if accuracy > 0.5 else
               "little better than guessing: too little training for p(x|y) to tell the classes apart")
    print(f"  the conditional model as a classifier, argmax_c p(x|c) p(c): {100 * accuracy:.1f}% of {n_ll} test digits "
          f"-> {verdict}")
    if args.quick:
        print("(--quick is a smoke run of the same code: tiny model, little training; its numbers mean little)")
    print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
