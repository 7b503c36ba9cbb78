# %% [markdown]
# # Tutorial 14: convolution as a matrix product, its adjoint, and a convolutional VAE
#
# A convolutional layer slides one small set of weights over every position of an image. Written as
# loops it has six of them; written as **one matrix product** it is as fast as a Linear layer. Copy
# every patch the kernel sees into a column of a matrix $X_{\mathrm{col}}$ (*im2col*, Eq. (J3),
# docs/convolution.md), and
#
# $$Y_{\mathrm{row}} = W_{\mathrm{row}}\, X_{\mathrm{col}} + b_0 \mathbf 1^\top
# \qquad \text{Eq. (J4), docs/convolution.md}$$
#
# The backward pass is the Linear layer's (Eq. (J5), docs/convolution.md), plus one step, *col2im*,
# that adds the gradient of every copy back onto the pixel it came from (Eq. (J6),
# docs/convolution.md). The transposed convolution of a decoder is the **adjoint** of the
# convolution (Eq. (J7), docs/convolution.md): the same products in another order. We check each
# claim numerically, then train the convolutional VAE of the Keras example (Eqs. (J10), (J11),
# docs/convolution.md) beside the MLP VAE.
#
# Read alongside: docs/convolution.md (all of it); `numpyvae.layers.im2col`,
# `numpyvae.layers.col2im`, `numpyvae.layers.Conv2d`, `numpyvae.layers.ConvTranspose2d`,
# `numpyvae.gradcheck.check_layer_backward`, `numpyvae.convnet.ConvEncoder`,
# `numpyvae.convnet.ConvDecoder`, `numpyvae.model.VAE` (`arch="conv"`).
#
# Figures (in `--out`):
# * `copies_and_stamps.png`: how many patches see each pixel (col2im of ones), and what a transposed
#   convolution makes of one pixel and of a flat image;
# * `elbo_curves.png`: test ELBO per epoch, convolutional against MLP VAE;
# * `samples.png`: prior samples of the two models.

# %%
import os
import time

import numpy as np

import numpyvae as nv
from numpyvae.gradcheck import check_layer_backward
from numpyvae.lab.plotting import image_grid, new_figure, save_figure, show_image
from numpyvae.layers import Conv2d, ConvTranspose2d, col2im, conv2d, im2col
from numpyvae.training import TrainConfig, new_run, train
from tutorial import setup, show

FIGURES = ("copies_and_stamps.png", "elbo_curves.png", "samples.png")
args = setup("14_convolutional_vae", quick="1000 digits, 4 and 8 channels, 2 epochs, 50 digits for log p(x)")
start = time.perf_counter()
rng = np.random.default_rng(args.seed)

# %% [markdown]
# ## 1. A convolution as one matrix product
#
# One image with $P = 2$ channels of $5 \times 5$ pixels, a convolution to $Q = 3$ channels with a
# $3 \times 3$ kernel, stride 2 and one pixel of zero padding: by Eq. (J2) the output is
# $\lfloor (5 + 2 - 3)/2 \rfloor + 1 = 3$ pixels a side. `im2col` makes a matrix of $P F^2 = 18$ rows
# (channel, kernel row, kernel column) and one column per output pixel. Its column for output pixel
# $(1, 2)$ must be the padded patch whose corner is at $(2 \cdot 1, 2 \cdot 2)$.

# %%
x = rng.standard_normal((1, 2, 5, 5))                       # (B, P, H, W)
conv = Conv2d(2, 3, 3, stride=2, padding=1, rng=rng)        # W: (Q, P, F, F) = (3, 2, 3, 3)
conv.params["b"][:] = rng.standard_normal(3)                # a zero bias would hide a missing sum
W, b = conv.params["W"], conv.params["b"]

X_col = im2col(x, 3, 2, 1)
padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
patch = padded[0, :, 2:5, 4:7]                              # under output pixel (1, 2)
print(f"im2col: X_col {X_col.shape} (P F^2 rows, B H' W' columns); column of pixel (1, 2) is its patch: "
      f"{np.array_equal(X_col[:, 1 * 3 + 2], patch.reshape(-1))}")

W_row = W.reshape(3, -1)                                     # (Q, P F^2): one filter per row
Y_row = W_row @ X_col + b[:, None]                           # Eq. (J4): (Q, B H' W')
y = conv.forward(x)                                          # (B, Q, H', W')


def direct_conv(x, W, b, stride, padding):
    """The definition, one output number at a time (Eq. (J1)): six loops."""
    B, P, H, Wd = x.shape
    Q, _, F, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = (H + 2 * padding - F) // stride + 1, (Wd + 2 * padding - F) // stride + 1
    out = np.zeros((B, Q, Ho, Wo))
    for n in range(B):
        for q in range(Q):
            for i in range(Ho):
                for j in range(Wo):
                    out[n, q, i, j] = b[q] + sum(W[q, p, di, dj] * xp[n, p, stride * i + di, stride * j + dj]
                                                 for p in range(P) for di in range(F) for dj in range(F))
    return out


reference = direct_conv(x, W, b, 2, 1)
y_from_rows = Y_row.reshape(3, 1, 3, 3).transpose(1, 0, 2, 3)   # (Q, B, H', W') -> (B, Q, H', W')
print(f"W_row @ X_col + b against the six loops: max difference {np.abs(y_from_rows - reference).max():.1e}; "
      f"Conv2d.forward: {np.abs(y - reference).max():.1e}")

# %% [markdown]
# ## 2. Its backward pass: the Linear layer's, then col2im
#
# With $dY_{\mathrm{row}}$ the output gradient in rows, Eq. (J5) gives
# $dW_{\mathrm{row}} = dY_{\mathrm{row}} X_{\mathrm{col}}^\top$ and
# $dX_{\mathrm{col}} = W_{\mathrm{row}}^\top dY_{\mathrm{row}}$: a gradient for every *copy* of a
# pixel. col2im (Eq. (J6)) adds the copies' gradients back onto their pixels. We compute both by
# hand, compare with `Conv2d.backward`, and check the layer against central differences (Eq. (C1),
# docs/gradcheck.md) in float64.
#
# How many copies does a pixel have? col2im of a matrix of ones counts them: with a $3 \times 3$ kernel
# at stride 2 the patches overlap unevenly, so pixels have 1, 2 or 4 copies.

# %%
dy = rng.standard_normal(y.shape)
conv.forward(x)
dx = conv.backward(dy)
dY_row = dy.transpose(1, 0, 2, 3).reshape(3, -1)            # (Q, B H' W')
dW_by_hand = (dY_row @ X_col.T).reshape(W.shape)             # Eq. (J5)
dx_by_hand = col2im(W_row.T @ dY_row, x.shape, 3, 2, 1)      # Eqs. (J5), (J6)
print(f"by hand against Conv2d.backward: dW {np.abs(dW_by_hand - conv.grads['W']).max():.1e}, "
      f"dx {np.abs(dx_by_hand - dx).max():.1e}")
errors = check_layer_backward(conv, x, dy=dy)
print("central differences: " + ", ".join(f"d{k} {v:.1e}" for k, v in errors.items()))

ones = np.ones((1, 1, 8, 8))
copies = col2im(im2col(ones, 3, 2, 1), ones.shape, 3, 2, 1)[0, 0]
print(f"copies of each pixel of an 8 x 8 image (F = 3, stride 2, padding 1): values "
      f"{sorted({int(v) for v in copies.ravel()})}, mean {copies.mean():.2f} "
      "(F^2 / stride^2 = 2.25 away from the border)")

# %% [markdown]
# ## 3. The transposed convolution is the adjoint
#
# Let $A_W$ be the convolution above without its bias, from 2 channels of $5 \times 5$ to 3 channels of
# $3 \times 3$. A `ConvTranspose2d(3, 2, ...)` holding the same weight maps back, and by Eq. (J7) it is
# $A_W^\top$ plus a bias: for every $x_1$ and $y_2$,
# $\langle A_W x_1, y_2\rangle = \langle x_1, A_W^\top y_2\rangle$. Its output size (Eq. (J8)) is
# $(3 - 1) \cdot 2 - 2 + 3 + \mathrm{opad}$: 5 with output padding 0, 6 with 1 (both map to 3 under
# the convolution). Each input pixel *stamps* the kernel onto the output, 2 pixels apart: that is how a
# decoder upsamples, and why an all-ones input comes out as a checkerboard of 1, 2 and 4 stamps. In
# the figure it is the same picture as the copies of section 2: a pixel receives one stamp from every
# input pixel whose patch, in the convolution, would contain it. The adjoint again, seen in the
# geometry.

# %%
up = ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=0, rng=rng)
up.params["W"][...] = W                                      # the same (3, 2, 3, 3) array
x1, y2 = rng.standard_normal((4, 2, 5, 5)), rng.standard_normal((4, 3, 3, 3))
lhs = float(np.sum(conv2d(x1, W, None, 2, 1) * y2))           # <A_W x1, y2>
rhs = float(np.sum(x1 * up.forward(y2)))                      # <x1, A_W^T y2>; up's bias is 0
print(f"<A_W x1, y2> = {lhs:.12f}\n<x1, A_W^T y2> = {rhs:.12f}   (difference {abs(lhs - rhs):.1e})")
sizes = [ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=op, rng=rng).output_size(3, 3) for op in (0, 1)]
print(f"ConvTranspose2d output size from 3 x 3: {sizes[0]} with output_padding 0, {sizes[1]} with 1")

stamp = ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, rng=rng)
stamp.params["W"][...] = 1.0
one_pixel = np.zeros((1, 1, 4, 4))
one_pixel[0, 0, 1, 2] = 1.0
stamped_pixel = stamp.forward(one_pixel)[0, 0]              # 4 x 4 -> 8 x 8: one 3 x 3 stamp
stamped_flat = stamp.forward(np.ones((1, 1, 4, 4)))[0, 0]   # every pixel stamped: 1, 2 and 4 overlaps
print(f"transposed convolution of a flat 4 x 4 image (kernel of ones): values "
      f"{sorted({int(v) for v in stamped_flat.ravel()})}")


# %%
def plot_copies_and_stamps(copies, stamped_pixel, stamped_flat, path):
    """Three integer images side by side, each with its numbers written in."""
    fig = new_figure(11, 4.4)
    titles = ("copies of each pixel in im2col\n(8 x 8, F = 3, stride 2, padding 1)",
              "transposed convolution of one pixel\n(4 x 4 -> 8 x 8, kernel of ones)",
              "transposed convolution of a flat image:\nstamps overlap 1, 2 or 4 times")
    for k, (image, title) in enumerate(zip((copies, stamped_pixel, stamped_flat), titles)):
        ax = fig.add_subplot(1, 3, k + 1)
        show_image(ax, image, 0, 4)
        for (i, j), v in np.ndenumerate(image):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="tab:red")
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


show(plot_copies_and_stamps(copies, stamped_pixel, stamped_flat, os.path.join(args.out, "copies_and_stamps.png")))

# %% [markdown]
# ## 4. A convolutional VAE against the MLP VAE
#
# `VAE(784, arch="conv")` is the Keras example's network: two stride-2 convolutions (32 and 64
# channels, $28 \to 14 \to 7$), a dense layer of `hidden_dims`, the heads $\mu$ and $\log\sigma^2$;
# the decoder maps $z$ to $64 \times 7 \times 7$ feature maps and back up by transposed convolutions
# ($7 \to 14 \to 28$) to one logit per pixel. Nothing else of the VAE changes: the two trunks read
# and write rows as the MLPs do, so `loss_and_grads`, the estimators, IWAE and checkpoints are the
# same code. Both models have Z = 20, a dense layer of 400, ReLU, a Bernoulli likelihood, the same
# seed and minibatches. We compare the test ELBO per epoch and, at the end, the importance-weighted
# $\log p(x)$ (Eq. (I2), docs/importance.md). `--quick` trains a tiny pair on 1000 digits for
# 2 epochs: a smoke run whose numbers mean little.

# %%
data = nv.load_dataset("mnist-mini")
x_train, x_test = data.x_train, data.x_test
if args.quick:
    x_train, x_test = x_train[:1000], x_test[:500]
    hidden, channels, latent, epochs, n_ll, K = (32,), (4, 8), 8, 2, 50, 20
else:
    hidden, channels, latent, epochs, n_ll, K = (400,), (32, 64), 20, 10, 500, 200
models = {"conv": nv.VAE(784, hidden, latent, arch="conv", channels=channels, seed=args.seed),
          "MLP": nv.VAE(784, hidden, latent, seed=args.seed)}
runs, seconds = {}, {}
for name, model in models.items():
    print(f"--- training {model!r}")
    t0 = time.perf_counter()
    runs[name] = train(new_run(model, TrainConfig(epochs=epochs, seed=args.seed)), x_train, x_test,
                       log=lambda line, name=name: print(f"  {name:4s} {line}"), progress=False)
    seconds[name] = (time.perf_counter() - t0) / epochs

# %%
for name, model in models.items():
    ll = model.log_likelihood(x_test[:n_ll], n_importance=K, rng=np.random.default_rng(args.seed + 1))
    print(f"{name:4s}: {model.num_params():9,d} parameters, {seconds[name]:5.1f} s per epoch, test ELBO "
          f"{runs[name].history['test_elbo'][-1]:8.2f}, log p(x) ~ {ll.astype(np.float64).mean():8.2f} nats "
          f"(K = {K}, {n_ll} test digits)")

# %% [markdown]
# Measured (the full version, seed 0): after 10 epochs the two are level in test ELBO (-120.4 nats
# for the convolutional VAE, -120.6 for the MLP), and the convolutional one is ahead in $\log p(x)$
# (-116.4 against -118.5 on 500 test digits, K = 200). After 20 epochs (`numpyvae train --arch conv`,
# benchmarks/README.md) it leads by 1.8 nats of test ELBO (-113.8 against -115.6) and 3.9 of
# $\log p(x)$ (-106.1 against -109.9, K = 1000 on all 2000 test digits), with the same KL: the gain is
# in reconstruction. It has about twice the parameters (most of them in the dense layer after the
# convolutions, $3136 \times 400$) and costs about 20 times more per epoch (11.9 s against 0.5 s here):
# its transposed convolutions work on $32 \times 28 \times 28$ feature maps for every datapoint. What it
# buys is a decoder that draws each pixel from its neighbourhood, with weights shared across the image.

# %%
def plot_elbo_curves(runs, path):
    """Test ELBO per epoch of each run."""
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    for (name, run), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        h = run.history
        ax.plot(h["epoch"], h["test_elbo"], "-o", ms=4, color=color, label=f"{name} VAE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test ELBO (nats)")
    ax.set_title("convolutional against MLP VAE, mnist-mini", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_samples(models, rng, path, n=32):
    """n prior samples of each model, one panel per model."""
    fig = new_figure(10, 3.2)
    z = rng.standard_normal((n, next(iter(models.values())).latent_dim)).astype(np.float32)
    for k, (name, model) in enumerate(models.items()):
        ax = fig.add_subplot(1, len(models), k + 1)
        show_image(ax, image_grid(model.decode(z), nrow=8), 0, 1)
        ax.set_title(f"{name} VAE: the same {n} codes z ~ N(0, I)", fontsize=9)
    return save_figure(fig, path)


show(plot_elbo_curves(runs, os.path.join(args.out, "elbo_curves.png")))
show(plot_samples(models, np.random.default_rng(args.seed + 2), os.path.join(args.out, "samples.png")))
print(f"figures in {os.path.abspath(args.out)}: {', '.join(FIGURES)}   ({time.perf_counter() - start:.1f} s)")
