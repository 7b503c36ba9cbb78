#!/usr/bin/env python
"""Forward + backward time of Conv2d and ConvTranspose2d at the Keras VAE example's sizes, the share
of it in matrix products, and the peak temporary memory.

The four layers of the Keras example (batch 128, float32, images 1 x 28 x 28):

    enc.conv0  Conv2d(1, 32, 3, stride=2, padding=1)                             28 -> 14
    enc.conv1  Conv2d(32, 64, 3, stride=2, padding=1)                            14 -> 7
    dec.conv0  ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1)  7 -> 14
    dec.conv1  ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1)  14 -> 28

For each: the median time of ``y = layer.forward(x); layer.backward(dy)`` (need_dx=True, and for
enc.conv0, whose input is data, also need_dx=False); the layer's three matrix products replayed
alone on operands of the same shapes and layouts (forward, weight gradient, input gradient: see
docs/convolution.md) and their share of the layer's time; im2col and col2im alone; the peak memory
traced by tracemalloc during forward + backward less the arrays they return. With PyTorch
importable, the same layer in torch.nn.functional (eager, CPU, same thread count) for reference.

Fresh memory is slow on some machines: glibc hands large freed blocks back to the kernel (trim,
munmap), and each new array then page-faults on first touch. On the 2-core VM of the closing note
that costs more than the products themselves (a pass allocates several arrays of a few MiB).
``--keep-freed-memory`` calls mallopt so that glibc keeps freed memory for reuse, as a caching
allocator would, to show the layer times without that cost.

    python benchmarks/bench_conv.py [--threads 1] [--batch 128] [--repeats 7] [--no-torch]
"""

import argparse
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# name: (class, in_channels, out_channels, input size, extra keyword arguments)
LAYERS = {
    "enc.conv0": ("Conv2d", 1, 32, 28, {}),
    "enc.conv1": ("Conv2d", 32, 64, 14, {}),
    "dec.conv0": ("ConvTranspose2d", 64, 32, 7, {"output_padding": 1}),
    "dec.conv1": ("ConvTranspose2d", 32, 1, 14, {"output_padding": 1}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (set before numpy loads)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per quantity")
    p.add_argument("--block-seconds", type=float, default=0.2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="mallopt: glibc keeps freed memory instead of returning it to the kernel")
    return p.parse_args(argv)


def timed(fn, repeats, block_seconds):
    """Median seconds per call of fn() over ``repeats`` blocks of about ``block_seconds`` each."""
    fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(block_seconds / max(time.perf_counter() - t0, 1e-6)))
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t0) / n)
    return C.median(per_call)


def main(argv=None):
    args = parse_args(argv)
    C.set_thread_env(args.threads)
    if args.keep_freed_memory:
        C.keep_freed_memory()
    import numpy as np
    from numpyvae import layers as L

    torch = None if args.no_torch else C.import_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    C.report_load("start")
    print(C.blas_threads_line()[0])
    rng = np.random.default_rng(0)
    B, f32 = args.batch, np.float32
    rows = []
    for name, (cls, P, Q, size, extra) in LAYERS.items():
        layer = getattr(L, cls)(P, Q, 3, stride=2, padding=1, rng=rng, dtype=f32, **extra)
        x = rng.standard_normal((B, P, size, size), dtype=f32)
        dy = rng.standard_normal(layer.forward(x).shape, dtype=f32)

        def step(need_dx=True):
            layer.forward(x)
            layer.backward(dy, need_dx=need_dx)

        t_layer = timed(step, args.repeats, args.block_seconds)
        # The convolution whose products these are: for a ConvTranspose2d, the one it is the adjoint
        # of, from dy's shape to x's (its input is the transposed layer's output).
        conv_in, conv_out = (x, dy) if cls == "Conv2d" else (dy, x)
        W_row = layer.params["W"].reshape(layer.params["W"].shape[0], -1)
        X_col = L.im2col(conv_in, 3, 2, 1)
        dY_row = L._to_rows(conv_out)
        products = [lambda: W_row @ X_col, lambda: dY_row @ X_col.T, lambda: W_row.T @ dY_row]
        t_mm = sum(timed(f, args.repeats, args.block_seconds) for f in products)
        t_im2col = timed(lambda: L.im2col(conv_in, 3, 2, 1), args.repeats, args.block_seconds)
        t_col2im = timed(lambda: L.col2im(X_col, conv_in.shape, 3, 2, 1), args.repeats, args.block_seconds)
        gflop = 3 * 2 * W_row.size * X_col.shape[1] / 1e9

        tracemalloc.start()
        y = layer.forward(x)
        dx = layer.backward(dy)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        returned = y.nbytes + dx.nbytes + sum(g.nbytes for g in layer.grads.values())

        row = [name, f"{tuple(x.shape[1:])}->{tuple(y.shape[1:])}", t_layer * 1e3, t_mm * 1e3,
               f"{t_mm / t_layer:.0%}", t_im2col * 1e3, t_col2im * 1e3, gflop / t_layer,
               (peak - returned) / 2**20, X_col.nbytes / 2**20]
        if torch is not None:
            tx = torch.tensor(x, requires_grad=True)
            tW = torch.tensor(layer.params["W"], requires_grad=True)
            tb = torch.tensor(layer.params["b"], requires_grad=True)
            tdy = torch.tensor(dy)
            fn = (torch.nn.functional.conv2d if cls == "Conv2d" else
                  lambda *a, **k: torch.nn.functional.conv_transpose2d(*a, output_padding=1, **k))

            def torch_step():
                tx.grad = tW.grad = tb.grad = None
                fn(tx, tW, tb, stride=2, padding=1).backward(tdy)

            row.append(timed(torch_step, args.repeats, args.block_seconds) * 1e3)
        rows.append(row)
        if name == "enc.conv0":
            t_nodx = timed(lambda: step(need_dx=False), args.repeats, args.block_seconds)
            print(f"{name} with need_dx=False (input is data): {t_nodx * 1e3:.2f} ms")
    headers = ["layer", "shape", "fwd+bwd ms", "matmul ms", "matmul share", "im2col ms", "col2im ms",
               "GFLOP/s", "peak temp MiB", "im2col MiB"] + (["torch ms"] if torch is not None else [])
    print(f"batch {B}, float32, {args.threads} BLAS thread(s)"
          + (", glibc keeps freed memory" if args.keep_freed_memory else ""))
    C.print_table(headers, rows)
    total = sum(r[2] for r in rows)
    print(f"total fwd+bwd of the four layers: {total:.2f} ms, of which matmuls "
          f"{sum(r[3] for r in rows) / total:.0%}"
          + (f"; torch {sum(r[-1] for r in rows):.2f} ms" if torch is not None else ""))
    C.report_load("end", own_threads=args.threads)


if __name__ == "__main__":
    main()
