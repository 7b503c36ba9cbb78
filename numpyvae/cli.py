"""The `numpyvae` command line (also `python -m numpyvae`).

    numpyvae train        train a VAE and write checkpoint, history and figures into a run directory
    numpyvae sample       decode prior samples of a trained run
    numpyvae reconstruct  reconstructions of test digits next to their inputs
    numpyvae evaluate     test ELBO and importance-weighted log-likelihood
    numpyvae plot         (re)draw every figure of a run
    numpyvae estimators   gradient-estimator lab: variance and SNR tables, figures, training comparison
    numpyvae autoencoders autoencoder vs denoising autoencoder vs VAE

Every command after `train` takes a run directory and defaults to the newest one under ./runs.
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from . import __version__
from .checkpoint import atomic_write_json
from .data import DATASET_NAMES, load_dataset
from .distributions import LIKELIHOODS
from .estimators import BASELINES
from .layers import ACTIVATIONS
from .conditional import ConditionalVAE
from .model import ESTIMATORS, POSTERIORS, VAE
from .training import (BINARIZE_MODES, CHECKPOINT, TrainConfig, evaluate_elbo, fixed_test_noise,
                       history_table, load_run, new_run, prepare_pixels, train)

RUNS_DIR = "runs"

# Defaults of `numpyvae train`: chosen so that a bare `numpyvae train` finishes well within three
# minutes on a 2-core laptop (19 s measured on an idle one) and its prior samples are recognisable digits.
DEFAULTS = dict(dataset="mnist-mini", epochs=20, latent_dim=20, hidden=[400], activation="relu",
                likelihood="bernoulli", batch_size=128, lr=1e-3, samples=1, binarize="none",
                seed=0, dtype="float32", optimizer="adam", beta=1.0, warmup=0.0)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="numpyvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"numpyvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a VAE (defaults: mnist-mini, 784-400-20 ReLU, 20 epochs)",
                       formatter_class=fmt,
                       description="Train a VAE and write checkpoint.npz, history.json, config.json and "
                                   "figures into --out. A checkpoint is written after every epoch; "
                                   "--resume continues a run bit for bit.")
    d = DEFAULTS
    t.add_argument("--dataset", default=d["dataset"], choices=DATASET_NAMES,
                   help="mnist-mini is bundled (offline); mnist is downloaded with --download")
    t.add_argument("--data-dir", default=None, help="folder of IDX files in the MNIST layout "
                   "(full MNIST, Fashion-MNIST); overrides --dataset")
    t.add_argument("--download", action="store_true", help="download full MNIST (with --dataset mnist)")
    t.add_argument("--epochs", type=_positive_int, default=d["epochs"],
                   help="total epochs (with --resume: train until this many)")
    t.add_argument("--latent-dim", type=_positive_int, default=d["latent_dim"])
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=d["hidden"],
                   help="encoder hidden widths, decoder mirrors them; give none for a linear VAE")
    t.add_argument("--activation", default=d["activation"], choices=[a for a in ACTIVATIONS if a != "identity"])
    t.add_argument("--likelihood", default=d["likelihood"], choices=LIKELIHOODS)
    t.add_argument("--obs-var", type=_positive_float, default=1.0, help="lambda for --likelihood gaussian")
    t.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    t.add_argument("--lr", type=_positive_float, default=d["lr"])
    t.add_argument("--optimizer", default=d["optimizer"], choices=["adam", "sgd"])
    t.add_argument("--samples", type=_positive_int, default=d["samples"], help="L, samples of z per datapoint")
    t.add_argument("--estimator", default="reparam", choices=ESTIMATORS,
                   help="gradient estimator for the encoder: reparameterization, score function "
                        "(REINFORCE), blocked (no reparameterization) or sticking-the-landing")
    t.add_argument("--baseline", default="none", choices=BASELINES,
                   help="control variate for --estimator score (loo needs --samples >= 2)")
    t.add_argument("--objective", default="elbo", choices=["elbo", "iwae"],
                   help="train on the ELBO or on the importance-weighted bound with --k samples (IWAE)")
    t.add_argument("--k", type=_positive_int, default=5, help="importance samples for --objective iwae")
    t.add_argument("--posterior", default="diag", choices=POSTERIORS,
                   help="diagonal Gaussian q, or full covariance through a Cholesky factor")
    t.add_argument("--conditional", action="store_true",
                   help="train a conditional VAE on the digit labels (q(z|x,y), p(x|z,y))")
    t.add_argument("--beta", type=float, default=d["beta"], help="weight on the KL term")
    t.add_argument("--warmup", type=float, default=d["warmup"],
                   help="KL warm-up: beta rises linearly from 0 over this many epochs")
    t.add_argument("--binarize", default=d["binarize"], choices=BINARIZE_MODES,
                   help="none: grey values as Bernoulli targets; static/dynamic binarisation")
    t.add_argument("--clip-norm", type=_positive_float, default=None, help="clip the global gradient norm")
    t.add_argument("--seed", type=int, default=d["seed"], help="seeds initialisation and training")
    t.add_argument("--dtype", default=d["dtype"], choices=["float32", "float64"])
    t.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--importance", type=int, default=0, metavar="K",
                   help="after training, also estimate log p(x) on the test set with K importance samples")
    t.add_argument("--no-figures", action="store_true", help="skip writing figures")
    t.set_defaults(func=cmd_train)

    def add_run(p):
        p.add_argument("run", nargs="?", default=None, help="run directory (default: newest under ./runs)")

    s = sub.add_parser("sample", help="decode samples from the prior", formatter_class=fmt)
    add_run(s)
    s.add_argument("-n", type=_positive_int, default=100, help="number of samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="PNG path (default: RUN/samples.png)")
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="test digits next to their reconstructions", formatter_class=fmt)
    add_run(r)
    r.add_argument("-n", type=_positive_int, default=10, help="number of test digits")
    r.add_argument("--out", default=None, help="PNG path (default: RUN/reconstructions.png)")
    r.set_defaults(func=cmd_reconstruct)

    e = sub.add_parser("evaluate", help="test ELBO and importance-weighted log-likelihood",
                       formatter_class=fmt)
    add_run(e)
    e.add_argument("--importance", type=_positive_int, default=1000, metavar="K",
                   help="importance samples per datapoint for log p(x)")
    e.add_argument("--limit", type=_positive_int, default=None, help="use only the first N test points")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="(re)draw every figure of a run", formatter_class=fmt)
    add_run(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_plot)

    est = sub.add_parser(
        "estimators", help="measure the variance of every gradient estimator and train with each",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The gradient-estimator lab (numpyvae.estimator_lab) on mnist-mini.\n\n"
                    "Measures the encoder gradient of one fixed minibatch (the first 100 test digits) R times\n"
                    "under each setting: reparam, stl, score (REINFORCE), score+ema, score+loo (L >= 2 only),\n"
                    "score+learned, blocked. Then trains one VAE per estimator with the same seed.\n\n"
                    "Writes into --out:\n"
                    "  estimators.csv               total variance and median SNR of the encoder gradient for every\n"
                    "                               setting and L, at initialisation (epoch 0) and after --epochs of\n"
                    "                               reparameterized training; seconds per estimate\n"
                    "  variance_along_training.csv  the same at the smallest L after every epoch of that training\n"
                    "  training_comparison.json     per-epoch test ELBO / KL / per-dimension KL of one training run\n"
                    "                               per estimator (reparam, score, score+learned, blocked)\n"
                    "  lab.json                     the configuration and the wall time of each step\n"
                    "  variance_vs_L.png            total variance against L (log-log), one line per setting\n"
                    "  variance_along_training.png  total variance and median SNR against epoch\n"
                    "  coordinate_histogram.png     the R estimates of one encoder coordinate under each setting\n"
                    "  training_comparison.png      test ELBO and active latent dimensions per epoch, per estimator\n\n"
                    "Defaults: the architecture of `numpyvae train` (784-400-20 ReLU, Bernoulli, batch 128,\n"
                    "Adam 1e-3), 5 epochs, R = 100, L in {1, 10}. --quick: a 784-64-8 model on 640 digits,\n"
                    "1 epoch, R = 20, L in {1, 2} (seconds); flags given explicitly still apply.")
    est.add_argument("--out", default=None, help="output directory (default: runs/estimators-<timestamp>)")
    est.add_argument("--epochs", type=_positive_int, default=None,
                     help="epochs of every training run (default: 5; 1 with --quick)")
    est.add_argument("--R", type=_positive_int, default=None, dest="R",
                     help="independent gradient estimates per measurement, >= 2 (default: 100; 20 with --quick)")
    est.add_argument("--samples", type=_positive_int, nargs="+", default=None, metavar="L",
                     help="values of L (samples of z per datapoint) for the table and variance_vs_L.png, e.g. "
                          "--samples 1 2 5 10 (default: 1 10; 1 2 with --quick)")
    est.add_argument("--hidden", type=_positive_int, nargs="*", default=None,
                     help=f"encoder hidden widths (default: {' '.join(map(str, d['hidden']))}; 64 with --quick)")
    est.add_argument("--latent-dim", type=_positive_int, default=None,
                     help=f"Z (default: {d['latent_dim']}; 8 with --quick)")
    est.add_argument("--seed", type=int, default=d["seed"], help="seeds initialisation, training and measuring")
    est.add_argument("--quick", action="store_true", help="a small, fast version of everything (a smoke test)")
    est.set_defaults(func=cmd_estimators)

    ae = sub.add_parser("autoencoders", formatter_class=fmt,
                        help="autoencoder vs denoising autoencoder vs VAE: random codes and noisy inputs",
                        description="Train an autoencoder and a denoising autoencoder (and a VAE, unless --vae "
                                    "names a trained run) and write random_codes.png (codes drawn from "
                                    "N(0, I) decoded by each model), denoising.png (corrupted digits "
                                    "reconstructed by each) and autoencoders.json (test losses and how far "
                                    "each model's codes are from N(0, I)).")
    ae.add_argument("--dataset", default="mnist-mini", choices=DATASET_NAMES)
    ae.add_argument("--epochs", type=_positive_int, default=10)
    ae.add_argument("--noise", default="masking:0.5",
                    help="corruption of the denoising autoencoder: masking:P (zero each pixel with "
                         "probability P) or gaussian:STD")
    ae.add_argument("--vae", default=None, metavar="RUN", help="use the VAE of this run directory")
    ae.add_argument("--seed", type=int, default=0)
    ae.add_argument("--quick", action="store_true", help="a smoke run on 1000 digits, at most 2 epochs")
    ae.add_argument("--out", default=None, help="output directory (default: runs/autoencoders-<timestamp>)")
    ae.set_defaults(func=cmd_autoencoders)
    return parser


# ---------------------------------------------------------------------------- helpers

def _newest_run(root=RUNS_DIR):
    if not os.path.isdir(root):
        return None
    runs = [os.path.join(root, d) for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, CHECKPOINT))]
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, CHECKPOINT))) if runs else None


def _resolve_run(path):
    path = path or _newest_run()
    if path is None:
        raise SystemExit("numpyvae: no run directory given and none found under ./runs; "
                         "train one first with `numpyvae train`")
    if not os.path.isfile(os.path.join(path, CHECKPOINT)):
        raise SystemExit(f"numpyvae: {path} is not a run directory (no {CHECKPOINT} in it)")
    return path


def _dataset_for(run_data):
    return load_dataset(run_data.get("dataset", "mnist-mini"), data_dir=run_data.get("data_dir"),
                        cache_dir=run_data.get("cache_dir"))


def _test_pixels(run, dataset):
    """The test set exactly as the run saw it (binarised the same way, if it was)."""
    _, x_test = prepare_pixels(dataset.x_train[:1], dataset.x_test, run.config.binarize, run.config.seed,
                               run.model.likelihood.name)
    return x_test


def _labels(run, y):
    """The labels argument a conditional model's methods need, or nothing for a plain VAE."""
    return (y,) if isinstance(run.model, ConditionalVAE) else ()


def _write_figures(run, dataset, run_dir, seed=0):
    # matplotlib is only imported when figures are drawn
    from .plotting import plot_class_grid, plot_reconstructions, plot_training_curves, write_all_figures
    x_test = _test_pixels(run, dataset)
    rng = np.random.default_rng(seed)
    if not isinstance(run.model, ConditionalVAE):
        return write_all_figures(run.model, x_test, dataset.y_test, run.history, run_dir, rng,
                                 image_shape=dataset.image_shape)
    x, y = x_test[:10], dataset.y_test[:10]
    return {"curves": plot_training_curves(run.history, os.path.join(run_dir, "curves.png")),
            "reconstructions": plot_reconstructions(x, run.model.reconstruct(x, y),
                                                    os.path.join(run_dir, "reconstructions.png")),
            "class_grid": plot_class_grid(run.model, os.path.join(run_dir, "class_grid.png"), rng,
                                          image_shape=dataset.image_shape)}


# ---------------------------------------------------------------------------- commands

def cmd_train(args):
    if args.resume:
        if args.out is None:
            raise SystemExit("numpyvae: --resume needs --out RUN_DIR (the run to continue)")
        run = load_run(args.out)
        if args.epochs <= run.epoch:
            raise SystemExit(f"numpyvae: {args.out} already has {run.epoch} epochs; ask for more with --epochs")
        run.config = dataclasses.replace(run.config, epochs=args.epochs)
        dataset = _dataset_for(run.data)
        out = args.out
        print(f"resuming {out} at epoch {run.epoch} of {args.epochs}")
    else:
        name = args.dataset if args.data_dir is None else os.path.basename(os.path.normpath(args.data_dir))
        out = args.out or os.path.join(RUNS_DIR, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(os.path.join(out, CHECKPOINT)):
            raise SystemExit(f"numpyvae: {out} already holds a run; pass --resume to continue it "
                             "or choose another --out (nothing was overwritten)")
        dataset = load_dataset(args.dataset if args.data_dir is None else name, data_dir=args.data_dir,
                               download=args.download)
        arch = dict(hidden_dims=tuple(args.hidden), latent_dim=args.latent_dim, likelihood=args.likelihood,
                    obs_var=args.obs_var, activation=args.activation, seed=args.seed, dtype=np.dtype(args.dtype),
                    posterior=args.posterior)
        if args.conditional:
            if dataset.y_train is None:
                raise ValueError(f"--conditional needs labels, and {dataset.name} has none")
            model = ConditionalVAE(dataset.input_dim, n_classes=int(dataset.y_train.max()) + 1, **arch)
        else:
            model = VAE(dataset.input_dim, **arch)
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                             n_samples=args.samples, estimator=args.estimator, baseline=args.baseline,
                             objective=args.objective, k=args.k, beta=args.beta,
                             warmup_epochs=args.warmup, binarize=args.binarize, clip_norm=args.clip_norm,
                             seed=args.seed)
        data = {"dataset": name, "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir)}
        run = new_run(model, config, data)
        print(f"{dataset.name}: {dataset.x_train.shape[0]} train / {dataset.x_test.shape[0]} test, "
              f"D={dataset.input_dim}  ({dataset.source})")
        print(f"{model}\nwriting to {out}")

    x_train, x_test = prepare_pixels(dataset.x_train, dataset.x_test, run.config.binarize, run.config.seed,
                                     run.model.likelihood.name)
    start = time.perf_counter()
    train(run, x_train, x_test, out_dir=out, y_train=dataset.y_train, y_test=dataset.y_test)
    print(f"trained {run.epoch} epochs in {time.perf_counter() - start:.1f}s; "
          f"final train ELBO {run.history['train_elbo'][-1]:.2f}, test ELBO {run.history['test_elbo'][-1]:.2f} nats")
    if args.importance:
        _evaluate(run, x_test, args.importance, out, seed=0, y_test=dataset.y_test)
    if not args.no_figures:
        paths = _write_figures(run, dataset, out)
        print("figures: " + ", ".join(os.path.basename(p) for p in paths.values()))
    print(f"run directory: {out}")
    return 0


def _evaluate(run, x_test, K, run_dir, seed, limit=None, y_test=None):
    if limit is not None:
        x_test = x_test[:limit]
    start = time.perf_counter()
    # Labels go to a conditional model only; a plain VAE's encoder does not read them.
    y_test = y_test[:len(x_test)] if isinstance(run.model, ConditionalVAE) else None
    elbo = evaluate_elbo(run.model, x_test, fixed_test_noise(run.model, x_test.shape[0], run.config.seed), y=y_test)
    rng = np.random.default_rng(seed)
    ll = np.concatenate([run.model.log_likelihood(x_test[i:i + 100], *_labels(run, None if y_test is None else
                                                                          y_test[i:i + 100]),
                                                  n_importance=K, rng=rng)
                         for i in range(0, x_test.shape[0], 100)]).astype(np.float64)
    from .diagnostics import active_units
    n_active, unit_var = active_units(run.model, x_test, y=y_test)
    result = {"epoch": run.epoch, "n_test": int(x_test.shape[0]), "test_elbo": elbo["elbo"],
              "kl_per_dim": elbo["kl_per_dim"], "active_units": n_active,
              "active_unit_variance": unit_var.tolist(),
              "test_rec": elbo["rec"], "test_kl": elbo["kl"], "importance_samples": K,
              "test_log_likelihood": float(ll.mean()),
              "test_log_likelihood_stderr": float(ll.std(ddof=1) / np.sqrt(len(ll))) if len(ll) > 1 else None,
              "seconds": time.perf_counter() - start}
    print(f"test ELBO {result['test_elbo']:.2f} (rec {result['test_rec']:.2f}, KL {result['test_kl']:.2f});  "
          f"log p(x) ~ {result['test_log_likelihood']:.2f} nats (K={K}, {len(ll)} points, "
          f"{result['seconds']:.1f}s)")
    kl_dims = " ".join(f"{v:.2f}" for v in sorted(elbo["kl_per_dim"], reverse=True))
    print(f"active units (Var_x E[z_j|x] > 0.01): {n_active} of {run.model.latent_dim};  "
          f"KL per dimension, largest first: {kl_dims}")
    atomic_write_json(os.path.join(run_dir, "evaluation.json"), result)
    return result


def cmd_evaluate(args):
    run_dir = _resolve_run(args.run)
    run = load_run(run_dir)
    dataset = _dataset_for(run.data)
    _evaluate(run, _test_pixels(run, dataset), args.importance, run_dir, args.seed, args.limit, dataset.y_test)
    return 0


def cmd_sample(args):
    from .plotting import plot_image_grid
    run_dir = _resolve_run(args.run)
    run = load_run(run_dir)
    rng = np.random.default_rng(args.seed)
    if isinstance(run.model, ConditionalVAE):   # labels 0, 1, ..., cycling: one row per style
        images = run.model.sample(np.arange(args.n) % run.model.n_classes, rng)
        nrow = run.model.n_classes
    else:
        images, nrow = run.model.sample(args.n, rng), int(np.ceil(np.sqrt(args.n)))
    path = plot_image_grid(images, args.out or os.path.join(run_dir, "samples.png"),
                           nrow=nrow, title=f"{args.n} samples from the prior")
    print(path)
    return 0


def cmd_reconstruct(args):
    from .plotting import plot_reconstructions
    run_dir = _resolve_run(args.run)
    run = load_run(run_dir)
    dataset = _dataset_for(run.data)
    x = _test_pixels(run, dataset)[:args.n]
    rec = run.model.reconstruct(x, *_labels(run, dataset.y_test[:args.n] if dataset.y_test is not None else None))
    path = plot_reconstructions(x, rec, args.out or os.path.join(run_dir, "reconstructions.png"),
                                n=args.n)
    print(path)
    return 0


def cmd_plot(args):
    run_dir = _resolve_run(args.run)
    run = load_run(run_dir)
    print(history_table(run.history))
    for path in _write_figures(run, _dataset_for(run.data), run_dir, args.seed).values():
        print(path)
    return 0


def cmd_estimators(args):
    from .estimator_lab import run_lab  # matplotlib is only imported when the lab runs
    if args.R is not None and args.R < 2:
        raise ValueError("--R must be at least 2: a variance needs two or more estimates")
    out = args.out or os.path.join(RUNS_DIR, f"estimators-{time.strftime('%Y%m%d-%H%M%S')}")
    hidden = None if args.hidden is None else tuple(args.hidden)
    if hidden is None and not args.quick:
        hidden = tuple(DEFAULTS["hidden"])
    latent = args.latent_dim if args.latent_dim is not None or args.quick else DEFAULTS["latent_dim"]
    start = time.perf_counter()
    run_lab(out, dataset=DEFAULTS["dataset"], quick=args.quick, epochs=args.epochs, R=args.R, Ls=args.samples,
            hidden_dims=hidden, latent_dim=latent, seed=args.seed)
    print(f"estimator lab finished in {time.perf_counter() - start:.1f}s; output directory: {out}")
    return 0


def _parse_noise(text):
    kind, _, value = text.partition(":")
    if kind not in ("masking", "gaussian") or not value:
        raise ValueError(f"--noise must look like masking:0.5 or gaussian:0.3; got {text!r}")
    return (kind, float(value))


def cmd_autoencoders(args):
    from .autoencoder import compare_autoencoders
    out = args.out or os.path.join(RUNS_DIR, f"autoencoders-{time.strftime('%Y%m%d-%H%M%S')}")
    vae = load_run(_resolve_run(args.vae)).model if args.vae else None
    result = compare_autoencoders(args.dataset, out, epochs=args.epochs, quick=args.quick, seed=args.seed,
                                  vae=vae, noise=_parse_noise(args.noise))
    print(f"test loss (nats per digit), clean / corrupted input:  AE {result['ae_test_loss_clean']:.1f} / "
          f"{result['ae_test_loss_corrupted']:.1f}   DAE {result['dae_test_loss_clean']:.1f} / "
          f"{result['dae_test_loss_corrupted']:.1f}")
    print(f"KL(N(0,I) || codes): AE {result['ae_prior_mismatch']:.2f}, VAE {result['vae_prior_mismatch']:.2f} nats")
    print(f"output: {out}")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"numpyvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the last completed epoch is saved in the run's checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
