# %% [markdown]
# # Tutorial 04: checking a hand-written gradient with central differences
#
# Every backward pass in numpyvae is written by hand, so every one is checked against the
# derivative of its own forward pass, computed numerically (docs/gradcheck.md):
#
# $$\frac{\partial f}{\partial \theta_i} \approx \frac{f(\theta + h e_i) - f(\theta - h e_i)}{2h}
# \qquad \text{Eq. (C1), docs/gradcheck.md}$$
#
# and compared with the max-norm relative error (Eq. (C2), docs/gradcheck.md)
#
# $$\mathrm{rel}(a, n) = \frac{\max_i |a_i - n_i|}{\max(\max_i |a_i|, \max_i |n_i|)}.$$
#
# We do it step by step: on a tiny function, on one Linear layer, on the whole VAE loss, on a
# deliberately broken copy, and in float32.
#
# Read alongside: docs/gradcheck.md (all of it); docs/backprop.md, section 2;
# docs/reparameterization.md, section 2; `numpyvae.gradcheck.numerical_gradient`,
# `numpyvae.gradcheck.rel_error`, `numpyvae.gradcheck.check_layer_backward`,
# `numpyvae.gradcheck.check_param_grads`, `numpyvae.layers.Linear`,
# `numpyvae.model.VAE.loss_and_grads`, `numpyvae.distributions.DiagonalGaussianPosterior`.
#
# Figures (in `--out`):
# * `step_size.png`: error against h, for the tiny function (left) and the VAE (right), float64 and float32;
# * `per_array_errors.png`: relative error of every VAE parameter array: correct, broken backward, wrong objective.

# %%
import contextlib
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.distributions import DiagonalGaussianPosterior
from numpyvae.gradcheck import check_layer_backward, check_param_grads, numerical_gradient, rel_error
from numpyvae.lab.plotting import new_figure, save_figure
from tutorial import setup, show

FIGURES = ("step_size.png", "per_array_errors.png")
args = setup("04_gradient_checking", quick="a 16-6-2 VAE on 4 x 4 digits, fewer step sizes, one array in the VAE curve")
TOL = 1e-6        # what the test suite demands in float64 (GRAD_TOL in tests/conftest.py)
BUG = 1e-4        # above this, docs/gradcheck.md: "almost certainly a bug"
start = time.perf_counter()
rng = np.random.default_rng(args.seed)

# %% [markdown]
# ## 1. A tiny function: $f(x) = \sin x$ at $x = 1$
#
# Here $f'(x) = \cos x$ is known, so we can see the error of central against forward differences
# as a function of the step $h$. It is a U (docs/gradcheck.md, section 1): truncation error
# $h^2 |f'''| / 6$ on the right (only $O(h)$ for forward differences), rounding error
# $\sim \epsilon |f| / h$ on the left. The best $h$ balances the two, near $(3\epsilon)^{1/3}$.

# %%
def tiny_function_curve(hs):
    """|central difference - cos(1)| / |cos(1)| for sin at x = 1, in float64 and float32, and the
    forward difference in float64, for every h in hs: a dict of (len(hs),) arrays."""
    x0, exact = 1.0, np.cos(1.0)
    out = {"central float64": [], "central float32": [], "forward float64": []}
    for h in hs:
        out["central float64"].append(abs((np.sin(x0 + h) - np.sin(x0 - h)) / (2 * h) - exact) / abs(exact))
        x32, h32 = np.float32(x0), np.float32(h)
        d32 = (np.sin(x32 + h32) - np.sin(x32 - h32)) / (np.float32(2) * h32)
        out["central float32"].append(abs(float(d32) - exact) / abs(exact))
        out["forward float64"].append(abs((np.sin(x0 + h) - np.sin(x0)) / h - exact) / abs(exact))
    return {k: np.asarray(v) for k, v in out.items()}


# %%
hs = np.logspace(-12, 0, 25 if args.quick else 49)
tiny = tiny_function_curve(hs)
print(f"sin at x = 1, exact f'(1) = cos(1) = {np.cos(1.0):.10f}; relative errors in float64:")
for h in (1e-2, 1e-5, 1e-8):
    i = int(np.argmin(np.abs(hs - h)))
    print(f"  h = {hs[i]:.0e}: central difference {tiny['central float64'][i]:.1e}, "
          f"forward difference {tiny['forward float64'][i]:.1e}")
best = int(np.argmin(tiny["central float64"]))
print(f"  best h {hs[best]:.0e} (error {tiny['central float64'][best]:.1e}); "
      f"theory ~(3 eps)^(1/3) = {(3 * 2.2e-16) ** (1 / 3):.0e}")

# %% [markdown]
# ## 2. One Linear layer, $y = xW + b$
#
# The backward pass of Eq. (B2), docs/backprop.md, gives $dW = x^\top dy$ for the scalar
# $\sum y \odot dy$. We check it entry by entry with Eq. (C1) written out as a loop,
# `central_difference`. The package's `numpyvae.gradcheck.numerical_gradient` is the same loop, but
# refuses float32 on purpose (section 5 shows why); we need one that takes float32 too. Then
# `check_layer_backward` does the same for every array of the layer in one call: its error for
# `W` is the one we computed by hand.

# %%
def central_difference(f, p, h):
    """Eq. (C1), docs/gradcheck.md, for an array p of any dtype, which f() reads live: the
    central-difference gradient of the scalar f() with respect to p, in float64, shaped like p."""
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


# %%
layer = nv.Linear(5, 4, rng, dtype=np.float64)
layer.params["b"][...] = rng.standard_normal(4)
x = rng.standard_normal((3, 5))
dy = rng.standard_normal((3, 4))             # the upstream gradient: we check the scalar sum(y * dy)
layer.forward(x)
layer.backward(dy)
dW = layer.grads["W"]
num_dW = central_difference(lambda: np.sum(layer.forward(x) * dy), layer.params["W"], 1e-5)
print(f"by hand: rel_error(x^T dy, central differences) = {rel_error(dW, num_dW):.1e}")
errs = check_layer_backward(layer, x, dy=dy)
print("check_layer_backward: " + ", ".join(f"d{k} {v:.1e}" for k, v in errs.items()) + f"  (tolerance {TOL:.0e})")

# %% [markdown]
# ## 3. The whole VAE loss, float64
#
# `check_param_grads` compares every parameter array's gradient from `loss_and_grads` (the loss of
# Eq. (E7), docs/elbo.md, and its backward pass, Eq. (B7), docs/backprop.md) with central
# differences of the loss. That costs two loss evaluations per parameter, so the VAE is small:
# 49-10-3 on 7 x 7 digits (4 x 4 blocks of mnist-mini averaged), 1145 parameters (`--quick`:
# 16-6-2 on 4 x 4 digits, 260 parameters). It uses tanh rather than the default ReLU: ReLU's kinks
# make a difference quotient that straddles one disagree with both one-sided derivatives. The noise
# `eps` is fixed, so the loss is a deterministic function of the parameters. The biases are set to
# random values (they start at 0), so that a missing sum over the batch cannot hide
# (docs/gradcheck.md).

# %%
def small_digits(data, n, rng, side):
    """n training digits, 28 x 28 averaged over blocks down to side x side pixels (still in [0, 1]):
    an (n, side * side) float64 array."""
    idx = rng.choice(data.x_train.shape[0], size=n, replace=False)
    b = 28 // side
    x = data.x_train[idx].astype(np.float64).reshape(n, side, b, side, b).mean(axis=(2, 4))
    return x.reshape(n, side * side)


def make_vae(arch, seed, dtype):
    """A D-H-Z tanh VAE, arch = (D, H, Z), with random biases (seeded by seed + 7)."""
    D, H, Z = arch
    m = nv.VAE(D, (H,), Z, likelihood="bernoulli", activation="tanh", seed=seed, dtype=dtype)
    bias_rng = np.random.default_rng(seed + 7)
    for name, p in m.params.items():
        if name.endswith(".b"):
            p[...] = 0.1 * bias_rng.standard_normal(p.shape)
    return m


# %%
data = nv.load_dataset("mnist-mini")
side, arch = (4, (16, 6, 2)) if args.quick else (7, (49, 10, 3))
xs = small_digits(data, 4, rng, side)
L = 2
eps = rng.standard_normal((L, xs.shape[0], arch[2]))
m64 = make_vae(arch, args.seed, np.float64)


def loss64():
    """The float64 VAE's loss on xs with the fixed noise eps, reading m64's parameters live."""
    return m64.loss_and_grads(xs, eps=eps, n_samples=L)[0]


_, grads = m64.loss_and_grads(xs, eps=eps, n_samples=L)
grads = {k: v.copy() for k, v in grads.items()}
numeric = {k: numerical_gradient(loss64, p) for k, p in m64.params.items()}     # h = 1e-5
correct = {k: rel_error(grads[k], numeric[k]) for k in m64.params}
names = list(m64.params)
assert max(correct.values()) < TOL, correct
same = check_param_grads(loss64, m64.params, grads)          # the package's one-call version
print(f"{m64!r}, B = {xs.shape[0]} digits, L = {L}")
print(f"worst relative error over {len(names)} parameter arrays: {max(correct.values()):.1e} "
      f"({max(correct, key=correct.get)}); check_param_grads agrees: {max(same.values()):.1e} (tolerance {TOL:.0e})")

# %% [markdown]
# ## 4. A broken backward pass, and a wrong objective
#
# Now a bug: the backward pass through $z = \mu + e^{\mathrm{logvar}/2} \epsilon$ with the $1/2$ of
# $d\sigma / d\,\mathrm{logvar}$ dropped (Eq. (R2), docs/reparameterization.md). The model's posterior
# family is one object, `model.posterior` (its `sample_backward` is that backward pass), so we give
# the model a buggy subclass for a moment. The checker should flag exactly the arrays the bug
# reaches: the logvar head's. (It would reach the shared trunk too, through the head's weights, but
# those start at zero, docs/elbo.md, section 4, so nothing flows back from the logvar head yet.)
#
# And the checker's blind spot: a wrong *objective* whose gradient is right for it. The KL written as
# if logvar were $\log\sigma$ (the slip of docs/kl.md, section 2), with the correct gradient of that
# wrong KL, passes; that is why the objective is tested against facts instead (docs/gradcheck.md,
# section 3).

# %%
class MissingHalfPosterior(DiagonalGaussianPosterior):
    """The diagonal Gaussian with a bug in its backward pass: d z / d logvar is
    (1/2) exp(logvar/2) eps, and the 1/2 has been forgotten."""

    def sample_backward(self, q, eps, dz):
        dmu = dz.sum(axis=0)
        dlogvar = (dz * eps * np.exp(0.5 * q["logvar"])).sum(axis=0)   # BUG: should be 0.5 * exp(0.5 * logvar)
        return {"mu": dmu, "logvar": dlogvar}


class LogSigmaSlipPosterior(DiagonalGaussianPosterior):
    """The diagonal Gaussian with its KL written as if logvar were log sigma (a wrong objective),
    and the *correct* gradient of that wrong KL."""

    def kl(self, q):
        mu, logvar = q["mu"], q["logvar"]
        return 0.5 * np.sum(mu * mu + np.exp(2 * logvar) - 1 - 2 * logvar, axis=-1)

    def kl_grad(self, q):
        return {"mu": q["mu"].copy(), "logvar": np.exp(2 * q["logvar"]) - 1}


@contextlib.contextmanager
def posterior_replaced(model, posterior):
    """Give model another posterior family for the duration of a with-block."""
    original, model.posterior = model.posterior, posterior
    try:
        yield
    finally:
        model.posterior = original


# %%
with posterior_replaced(m64, MissingHalfPosterior(m64.latent_dim)):
    _, broken_grads = m64.loss_and_grads(xs, eps=eps, n_samples=L)
    broken = {k: rel_error(broken_grads[k], numeric[k]) for k in m64.params}
flagged = [k for k in names if broken[k] > BUG]
print("1/2 dropped from d z / d logvar, flagged (> {:.0e}): ".format(BUG)
      + ", ".join(f"{k} {broken[k]:.2f}" for k in flagged))
print(f"  worst of the other arrays {max(broken[k] for k in names if k not in flagged):.1e}")
with posterior_replaced(m64, LogSigmaSlipPosterior(m64.latent_dim)):
    _, slip_grads = m64.loss_and_grads(xs, eps=eps, n_samples=L)
    slip_grads = {k: v.copy() for k, v in slip_grads.items()}
    slip = check_param_grads(loss64, m64.params, slip_grads)
    slip_loss = loss64()
print(f"log sigma slip in the KL, with the right gradient of that wrong KL: worst error "
      f"{max(slip.values()):.1e} (passes), although the loss is {slip_loss - loss64():+.2f} nats off")

# %% [markdown]
# The slip moves the loss by only about 0.01 nats here, because this untrained model's logvar $v$ is
# still near 0 (zero head weights, biases of about 0.1), where the right KL, about $v^2/4$ per
# dimension, and the slipped one, about $v^2$, are both tiny. The check would pass however far off
# the loss were: it compares a gradient with its own objective.

# %% [markdown]
# ## 5. The same check in float32
#
# The same weights rounded to float32, where machine epsilon is $1.2 \times 10^{-7}$. At the default
# $h = 10^{-5}$ the rounding error of each loss value, $\sim \epsilon |f|$, divided by $2h$, is as
# large as the gradient entries themselves: a correct gradient looks broken. This is why
# `numerical_gradient` refuses float32.

# %%
m32 = make_vae(arch, args.seed, np.float32)
for k in m32.params:
    m32.params[k][...] = m64.params[k]                 # the same weights, rounded to float32
xs32, eps32 = xs.astype(np.float32), eps.astype(np.float32)


def loss32():
    """The float32 VAE's loss on xs32 with the fixed noise eps32, reading m32's parameters live."""
    return m32.loss_and_grads(xs32, eps=eps32, n_samples=L)[0]


_, g32 = m32.loss_and_grads(xs32, eps=eps32, n_samples=L)
g32 = {k: v.copy() for k, v in g32.items()}
err32 = {k: rel_error(g32[k], central_difference(loss32, m32.params[k], 1e-5)) for k in names}
f32, eps_32 = abs(loss32()), np.finfo(np.float32).eps
g_scale = float(np.median([np.max(np.abs(g)) for g in g32.values()]))
print(f"float32 (eps {eps_32:.1e}), h = 1e-5, loss {loss32():.2f} nats: relative errors per array "
      f"median {np.median(list(err32.values())):.1e}, worst {max(err32.values()):.1e}")
print(f"  rounding of each loss value ~eps |f| = {eps_32 * f32:.1e} nats; over 2h: ~{eps_32 * f32 / 2e-5:.1e}; "
      f"gradient entries ~{g_scale:.1e} (median over arrays of the largest |entry|)")

# %% [markdown]
# ## 6. Is there any good $h$ on the VAE?
#
# The U of section 1 again, now on the VAE loss: the worst relative error over all arrays (`--quick`:
# the one array `enc.logvar.W`) for every $h$, in float64 and float32. In float64 a wide range of $h$
# meets the tolerance; in float32, if any $h$ does at all, the window is too narrow to trust. Check
# gradients in float64, train in float32.

# %%
hs_vae = np.logspace(-9, 0, 10 if args.quick else 28)
keys = ["enc.logvar.W"] if args.quick else names
curves = {"float64": [], "float32": []}
for h in hs_vae:
    curves["float64"].append(max(rel_error(grads[k], central_difference(loss64, m64.params[k], h)) for k in keys))
    curves["float32"].append(max(rel_error(g32[k], central_difference(loss32, m32.params[k], h)) for k in keys))
curves = {k: np.asarray(v) for k, v in curves.items()}
b64, b32 = int(np.argmin(curves["float64"])), int(np.argmin(curves["float32"]))
vae_label = "array enc.logvar.W" if args.quick else f"worst of all {len(names)} arrays"
print(f"best h on the VAE ({vae_label}): float64 h = {hs_vae[b64]:.0e} -> {curves['float64'][b64]:.1e}; "
      f"float32 h = {hs_vae[b32]:.0e} -> {curves['float32'][b32]:.1e}")
print(f"  float64 meets the {TOL:.0e} tolerance at {np.sum(curves['float64'] < TOL)} of {len(hs_vae)} steps h, "
      f"float32 at {np.sum(curves['float32'] < TOL)}")

# %% [markdown]
# ## 7. Figures
#
# `step_size.png` draws the U curves of sections 1 and 6, with the truncation and rounding
# asymptotes; `per_array_errors.png` the error of every parameter array from sections 3 and 4: the
# correct backward pass, the broken one, and the wrong objective.

# %%
def plot_step_size(hs, tiny, hs_vae, vae_curves, vae_label, arch, path):
    """Relative error against h: the tiny function's curves with their truncation and rounding
    asymptotes (left), the VAE's in float64 and float32 (right)."""
    fig = new_figure(12, 4.6)
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
    return save_figure(fig, path)


def plot_per_array(names, rows, arch, path):
    """One group of bars per parameter array: the relative error under each check in rows
    ({label: {array name: error}})."""
    fig = new_figure(11, 4.8)
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
    return save_figure(fig, path)


# %%
show(plot_step_size(hs, tiny, hs_vae, curves, vae_label, arch, os.path.join(args.out, "step_size.png")))
show(plot_per_array(names, {"correct backward pass": correct, "1/2 dropped in d z / d logvar": broken,
                            "log sigma slip in the KL (objective wrong, gradient consistent)": slip},
                    arch, os.path.join(args.out, "per_array_errors.png")))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
