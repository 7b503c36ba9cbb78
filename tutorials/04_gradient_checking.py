"""Tutorial 04: checking a hand-written gradient with central differences.

Every backward pass in numpyvae is written by hand, so every one is checked against the
derivative of its own forward pass, computed numerically (docs/gradcheck.md):

    df/dtheta_i ~= ( f(theta + h e_i) - f(theta - h e_i) ) / (2 h)       Eq. (C1), docs/gradcheck.md

and compared with the max-norm relative error (Eq. (C2), docs/gradcheck.md)

    rel(a, n) = max_i |a_i - n_i| / max( max_i |a_i|, max_i |n_i| ).

The script does it by hand, step by step:

1. on a tiny function, f(x) = sin(x) at x = 1, where f'(x) = cos(x) is known: central against
   forward differences, and the error as a function of the step h, a U: truncation error
   h^2/6 |f'''| on the right, rounding error ~ eps |f| / h on the left (docs/gradcheck.md,
   section 1);
2. on one Linear layer (Eq. (B2), docs/backprop.md): dW = x^T dy checked entry by entry, then
   with numpyvae.gradcheck.check_layer_backward;
3. on the whole VAE loss (Eq. (E7), docs/elbo.md) in float64, every parameter array, with
   numpyvae.gradcheck.check_param_grads: a 49-10-3 VAE on 7 x 7 digits (4 x 4 blocks of
   mnist-mini averaged), small enough for two loss evaluations per parameter;
4. on a broken copy: the backward pass through z = mu + exp(logvar/2) eps with the 1/2 of
   d sigma / d logvar dropped (Eq. (R2), docs/reparameterization.md), patched into the model
   for a moment. The checker flags exactly the arrays the bug reaches. And its blind spot: a
   wrong *objective* whose gradient is right for it (the log sigma / log sigma^2 slip in the KL,
   docs/kl.md, section 2) passes, which is why the objective is tested against facts instead
   (docs/gradcheck.md, section 3);
5. in float32, where eps = 1.2e-7: at the default h = 1e-5 the rounding error swamps the
   difference quotient (relative errors ~1e-2 and worse) and no h gets below ~1e-4, which is why
   numpyvae.gradcheck.numerical_gradient refuses float32.

Read alongside:
  docs/gradcheck.md (all of it); docs/backprop.md, section 2; docs/reparameterization.md, section 2
  numpyvae.gradcheck.numerical_gradient, numpyvae.gradcheck.rel_error,
  numpyvae.gradcheck.check_layer_backward, numpyvae.gradcheck.check_param_grads,
  numpyvae.layers.Linear, numpyvae.model.VAE.loss_and_grads,
  numpyvae.distributions.reparameterize_backward

Figures (in --out):
  step_size.png        error against h: the tiny function (left) and the VAE (right), float64 and float32
  per_array_errors.png relative error of every VAE parameter array: correct, broken backward, wrong objective
"""

import argparse
import contextlib
import os
import time

import numpy as np
from matplotlib.figure import Figure

import numpyvae as nv
import numpyvae.model as model_module
from numpyvae.gradcheck import check_layer_backward, check_param_grads, numerical_gradient, rel_error

NAME = "04_gradient_checking"
FIGURES = ("step_size.png", "per_array_errors.png")
TOL = 1e-6        # what the test suite demands in float64 (GRAD_TOL in tests/conftest.py)
BUG = 1e-4        # above this, docs/gradcheck.md: "almost certainly a bug"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a 16-6-2 VAE on 4 x 4 digits, fewer step sizes, one array in the VAE curve: seconds")
    parser.add_argument("--out", default=os.path.join("tutorial_output", NAME),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data pick, the model and the noise")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- central differences, any dtype

def central_difference(f, p, h):
    """Eq. (C1), docs/gradcheck.md, written out for an array p of any dtype, which f() reads live.
    (numpyvae.gradcheck.numerical_gradient is the same loop, but refuses float32 on purpose.)"""
    grad = np.zeros(p.shape, dtype=np.float64)
    flat = p.reshape(-1)                       # a view: writing into it changes p
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        f_plus = float(f())
        flat[i] = old - h
        f_minus = float(f())
        flat[i] = old
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * h)
    return grad


@contextlib.contextmanager
def patched(module, name, replacement):
    """Replace module.name for the duration of a with-block (in this process only)."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def reparameterize_backward_missing_half(dz, logvar, eps):
    """A buggy copy of numpyvae.distributions.reparameterize_backward: d z / d logvar is
    (1/2) exp(logvar/2) eps, and the 1/2 has been forgotten."""
    dmu = dz.sum(axis=0)
    dlogvar = (dz * eps * np.exp(0.5 * logvar)).sum(axis=0)          # BUG: should be 0.5 * exp(0.5 * logvar)
    return dmu, dlogvar


def kl_log_sigma_slip(mu, logvar):
    """The KL written as if logvar were log sigma (docs/kl.md): a wrong objective."""
    return 0.5 * np.sum(mu * mu + np.exp(2 * logvar) - 1 - 2 * logvar, axis=-1)


def kl_log_sigma_slip_grad(mu, logvar):
    """...and the *correct* gradient of that wrong objective."""
    return mu.copy(), np.exp(2 * logvar) - 1


# ---------------------------------------------------------------------------- the pieces

def tiny_function_curve(hs):
    """|central difference - cos(1)| / |cos(1)| for sin at x = 1, in float64 and float32, and the
    forward difference in float64, for every h."""
    x0, exact = 1.0, np.cos(1.0)
    out = {"central float64": [], "central float32": [], "forward float64": []}
    for h in hs:
        out["central float64"].append(abs((np.sin(x0 + h) - np.sin(x0 - h)) / (2 * h) - exact) / abs(exact))
        x32, h32 = np.float32(x0), np.float32(h)
        d32 = (np.sin(x32 + h32) - np.sin(x32 - h32)) / (np.float32(2) * h32)
        out["central float32"].append(abs(float(d32) - exact) / abs(exact))
        out["forward float64"].append(abs((np.sin(x0 + h) - np.sin(x0)) / h - exact) / abs(exact))
    return {k: np.asarray(v) for k, v in out.items()}


def small_digits(data, n, rng, side):
    """n training digits, 28 x 28 averaged over blocks down to side x side pixels (still in [0, 1])."""
    idx = rng.choice(data.x_train.shape[0], size=n, replace=False)
    b = 28 // side
    x = data.x_train[idx].astype(np.float64).reshape(n, side, b, side, b).mean(axis=(2, 4))
    return x.reshape(n, side * side)


def make_vae(arch, seed, dtype):
    D, H, Z = arch
    m = nv.VAE(D, (H,), Z, likelihood="bernoulli", activation="tanh", seed=seed, dtype=dtype)
    # Biases start at 0; random ones make sure a missing sum over the batch cannot hide (docs/gradcheck.md).
    rng = np.random.default_rng(seed + 7)
    for name, p in m.params.items():
        if name.endswith(".b"):
            p[...] = 0.1 * rng.standard_normal(p.shape)
    return m


def plot_step_size(hs, tiny, hs_vae, vae_curves, vae_label, arch, path):
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    styles = {"central float64": ("tab:blue", "-o"), "central float32": ("tab:red", "-s"),
              "forward float64": ("tab:green", "--^")}
    for k, v in tiny.items():
        color, style = styles[k]
        ax1.loglog(hs, np.maximum(v, 1e-17), style, color=color, ms=3, label=k)
    eps64, eps32 = np.finfo(np.float64).eps, np.finfo(np.float32).eps
    c = np.cos(1.0)
    ax1.loglog(hs, hs ** 2 / 6 * abs(np.cos(1.0)) / c, ":", color="grey", label=r"truncation $h^2 |f'''| / 6$")
    ax1.loglog(hs, eps64 * np.sin(1.0) / hs / c, ":", color="tab:blue", alpha=0.6,
               label=r"rounding $\epsilon_{64} |f| / h$")
    ax1.loglog(hs, eps32 * np.sin(1.0) / hs / c, ":", color="tab:red", alpha=0.6,
               label=r"rounding $\epsilon_{32} |f| / h$")
    ax1.set_title(r"$f(x) = \sin x$ at $x = 1$: relative error of $f'$", fontsize=10)
    for k, (color, style) in (("float64", ("tab:blue", "-o")), ("float32", ("tab:red", "-s"))):
        ax2.loglog(hs_vae, np.maximum(vae_curves[k], 1e-17), style, color=color, ms=3, label=f"central, {k}")
    ax2.set_title(f"VAE {'-'.join(map(str, arch))} loss: max-norm relative error (Eq. C2)\n{vae_label}",
                  fontsize=10)
    for ax in (ax1, ax2):
        ax.axvline(1e-5, color="black", lw=0.8, ls="--", label="default h = 1e-5")
        ax.axhline(TOL, color="tab:green", lw=0.8, label="suite tolerance 1e-6")
        ax.set_xlabel("step h")
        ax.grid(alpha=0.3, which="major")
        ax.set_ylim(1e-19, 30)
        ax.legend(fontsize=7, loc="lower left", ncol=2 if ax is ax1 else 1)
    ax1.set_ylabel("relative error")
    fig.suptitle("the U of central differences: truncation error (right) against rounding error (left)")
    fig.savefig(path, dpi=100)


def plot_per_array(names, rows, arch, path):
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    colors = ("tab:blue", "tab:red", "tab:orange")
    for k, ((label, errors), color) in enumerate(zip(rows.items(), colors)):
        vals = np.maximum([errors[n] for n in names], 1e-17)
        ax.bar(np.arange(len(names)) + (k - (len(rows) - 1) / 2) * width, vals, width, label=label, color=color)
    ax.set_yscale("log")
    ax.axhline(TOL, color="tab:green", lw=1, label="suite tolerance 1e-6")
    ax.axhline(BUG, color="black", lw=1, ls="--", label="above 1e-4: almost certainly a bug")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("relative error, analytic vs central difference")
    ax.set_title(f"gradient check of every parameter array of a {'-'.join(map(str, arch))} VAE (float64, h = 1e-5)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    hs = np.logspace(-12, 0, 25 if args.quick else 49)

    # 1. the tiny function ------------------------------------------------------
    print("=== 1. f(x) = sin(x) at x = 1; exact f'(1) = cos(1) = 0.5403023059")
    tiny = tiny_function_curve(hs)
    for h in (1e-2, 1e-5, 1e-8):
        i = int(np.argmin(np.abs(hs - h)))
        print(f"  h = {hs[i]:.0e}: central difference error {tiny['central float64'][i]:.1e}, "
              f"forward difference {tiny['forward float64'][i]:.1e}  (relative, float64)")
    best = int(np.argmin(tiny["central float64"]))
    print(f"  -> central is O(h^2), forward only O(h); the best h in float64 is {hs[best]:.0e} "
          f"(error {tiny['central float64'][best]:.1e}), theory says ~(3 eps)^(1/3) = {(3 * 2.2e-16) ** (1 / 3):.0e}")

    # 2. one Linear layer ---------------------------------------------------------
    print("=== 2. one Linear layer, y = x W + b (Eq. B2): dW = x^T dy")
    layer = nv.Linear(5, 4, rng, dtype=np.float64)
    layer.params["b"][...] = rng.standard_normal(4)
    x = rng.standard_normal((3, 5))
    dy = rng.standard_normal((3, 4))             # the upstream gradient: we check the scalar sum(y * dy)
    layer.forward(x)
    layer.backward(dy)
    dW = layer.grads["W"]
    num_dW = central_difference(lambda: np.sum(layer.forward(x) * dy), layer.params["W"], 1e-5)
    print(f"  by hand: rel_error(x^T dy, central differences) = {rel_error(dW, num_dW):.1e}")
    errs = check_layer_backward(layer, x, dy=dy)
    print("  check_layer_backward: " + ", ".join(f"d{k} {v:.1e}" for k, v in errs.items())
          + f"  -> all below {TOL:.0e}: the layer's backward pass is right")

    # 3. the whole VAE, float64 ---------------------------------------------------
    data = nv.load_dataset("mnist-mini")
    # 7 x 7 digits and a 49-10-3 VAE (1145 parameters); --quick: 4 x 4 digits, 16-6-2 (260 parameters).
    side, arch = (4, (16, 6, 2)) if args.quick else (7, (49, 10, 3))
    xs = small_digits(data, 4, rng, side)
    L = 2
    eps = rng.standard_normal((L, xs.shape[0], arch[2]))
    m64 = make_vae(arch, args.seed, np.float64)

    def loss64():
        return m64.loss_and_grads(xs, eps=eps, n_samples=L)[0]

    _, grads = m64.loss_and_grads(xs, eps=eps, n_samples=L)
    grads = {k: v.copy() for k, v in grads.items()}
    numeric = {k: numerical_gradient(loss64, p) for k, p in m64.params.items()}     # h = 1e-5
    correct = {k: rel_error(grads[k], numeric[k]) for k in m64.params}
    names = list(m64.params)
    assert max(correct.values()) < TOL, correct
    # The package's own one-call version gives the same numbers:
    same = check_param_grads(loss64, m64.params, grads)
    print(f"=== 3. whole VAE {m64!r}, B = 4 digits, L = {L}")
    print(f"  worst relative error over {len(names)} parameter arrays: {max(correct.values()):.1e} "
          f"({max(correct, key=correct.get)}); check_param_grads agrees: {max(same.values()):.1e}")
    print(f"  -> every array below the suite's {TOL:.0e}: backward pass (B7) matches the forward pass")

    # 4. a broken backward pass, and a wrong objective --------------------------------
    with patched(model_module, "reparameterize_backward", reparameterize_backward_missing_half):
        _, broken_grads = m64.loss_and_grads(xs, eps=eps, n_samples=L)
        broken = {k: rel_error(broken_grads[k], numeric[k]) for k in m64.params}
    flagged = [k for k in names if broken[k] > BUG]
    print("=== 4. the same check on a copy with the 1/2 dropped from d z / d logvar (Eq. R2)")
    print(f"  flagged (> {BUG:.0e}): " + ", ".join(f"{k} {broken[k]:.2f}" for k in flagged))
    print(f"  untouched: worst of the other arrays {max(broken[k] for k in names if k not in flagged):.1e}"
          " -> the bug is in the logvar path: only arrays upstream of logvar (its head, the shared trunk) move")
    with patched(model_module, "kl_diag_gaussian_standard", kl_log_sigma_slip), \
            patched(model_module, "kl_diag_gaussian_standard_grad", kl_log_sigma_slip_grad):
        _, slip_grads = m64.loss_and_grads(xs, eps=eps, n_samples=L)
        slip_grads = {k: v.copy() for k, v in slip_grads.items()}
        slip = check_param_grads(loss64, m64.params, slip_grads)
        slip_loss = loss64()
    print(f"  blind spot: a KL with the log sigma slip, and the right gradient *of that wrong KL*: worst error "
          f"{max(slip.values()):.1e} -> passes, although the loss is {slip_loss - loss64():+.2f} nats off")

    # 5. float32 --------------------------------------------------------------------
    m32 = make_vae(arch, args.seed, np.float32)
    for k in m32.params:
        m32.params[k][...] = m64.params[k]                 # the same weights, rounded to float32
    xs32, eps32 = xs.astype(np.float32), eps.astype(np.float32)

    def loss32():
        return m32.loss_and_grads(xs32, eps=eps32, n_samples=L)[0]

    _, g32 = m32.loss_and_grads(xs32, eps=eps32, n_samples=L)
    g32 = {k: v.copy() for k, v in g32.items()}
    err32 = {k: rel_error(g32[k], central_difference(loss32, m32.params[k], 1e-5)) for k in names}
    print(f"=== 5. the same VAE in float32 (machine epsilon {np.finfo(np.float32).eps:.1e}), h = 1e-5, "
          f"loss {loss32():.2f} nats")
    g_scale = float(np.median([np.max(np.abs(g)) for g in g32.values()]))
    print(f"  relative errors per array: median {np.median(list(err32.values())):.1e}, worst "
          f"{max(err32.values()):.1e} -> a correct gradient looks broken")
    print(f"  why: each loss value is rounded by ~eps |f| = {np.finfo(np.float32).eps * abs(loss32()):.1e} nats; "
          f"divided by 2h that is ~{np.finfo(np.float32).eps * abs(loss32()) / 2e-5:.1e}, against gradient "
          f"entries of ~{g_scale:.1e} (median over arrays of the largest |entry|)")

    # The step-size curve on the VAE: one array (quick) or every array (full), float64 and float32.
    hs_vae = np.logspace(-9, 0, 10 if args.quick else 28)
    keys = ["enc.logvar.W"] if args.quick else names
    curves = {"float64": [], "float32": []}
    for h in hs_vae:
        curves["float64"].append(max(rel_error(grads[k], central_difference(loss64, m64.params[k], h)) for k in keys))
        curves["float32"].append(max(rel_error(g32[k], central_difference(loss32, m32.params[k], h)) for k in keys))
    curves = {k: np.asarray(v) for k, v in curves.items()}
    b64, b32 = int(np.argmin(curves["float64"])), int(np.argmin(curves["float32"]))
    label = "array enc.logvar.W" if args.quick else f"worst of all {len(names)} arrays"
    print(f"  best h on the VAE ({label}): float64 h = {hs_vae[b64]:.0e} -> {curves['float64'][b64]:.1e}; "
          f"float32 h = {hs_vae[b32]:.0e} -> {curves['float32'][b32]:.1e}")
    if curves["float32"].min() > TOL:
        print(f"  -> float32 reaches the {TOL:.0e} tolerance at no h at all: check gradients in float64, "
              "train in float32")
    else:
        print(f"  -> float32 touches the {TOL:.0e} tolerance only at h = {hs_vae[b32]:.0e}, too narrow a window "
              "to trust: check gradients in float64, train in float32")

    plot_step_size(hs, tiny, hs_vae, curves, label, arch, os.path.join(args.out, "step_size.png"))
    plot_per_array(names, {"correct backward pass": correct, "1/2 dropped in d z / d logvar": broken,
                           "log sigma slip in the KL (objective wrong, gradient consistent)": slip},
                   arch, os.path.join(args.out, "per_array_errors.png"))
    print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
