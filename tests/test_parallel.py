"""numpyvae.parallel: blocks and parts cover everything once, and change no bit of any result.

The blocked, threaded likelihood is held to the whole-array formulas bit for bit (float32 and
float64, extreme logits included); the products in parts and a whole IWAE step on own threads to
the same on one thread, to rounding. Tests that need numpyvae's own threads make BLAS report one thread (``own``) and use
small blocks, so that every path is taken on a small array.
"""

import threading

import numpy as np
import pytest

import numpyvae as nv
from numpyvae import parallel
from numpyvae.distributions import (bernoulli_log_likelihood, bernoulli_log_likelihood_and_grad,
                                    bernoulli_log_likelihood_grad)
from numpyvae.numerics import sigmoid, softplus


@pytest.fixture
def own(monkeypatch):
    """numpyvae's own threads in use (BLAS reported on one thread), 3 of them, blocks of 4 KiB,
    products split from 1 FLOP; returns a setter for the thread count."""
    monkeypatch.setattr(parallel, "blas_threads", lambda: 1)
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(parallel, "MATMUL_SPLIT_FLOPS", 1)
    previous = parallel.set_num_threads(3)
    yield parallel.set_num_threads
    parallel.set_num_threads(previous)


def test_own_threads_only_while_blas_runs_on_one(monkeypatch):
    previous = parallel.set_num_threads(2)
    try:
        for blas, expected in ((1, 2), (2, 1), (None, 1)):
            monkeypatch.setattr(parallel, "blas_threads", lambda: blas)
            assert parallel.own_threads() == expected
    finally:
        parallel.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("n_rows, period, row_bytes", [(10, None, 1000), (25, 5, 1500), (7, 7, 10 ** 7), (1, 1, 1),
                                                      (60, 4, 300), (60, 6, 300), (0, None, 10)])
def test_row_blocks_cover_every_row_once_within_a_period(own, threads, n_rows, period, row_bytes):
    own(threads)
    seen, lock = [], threading.Lock()

    def record(start, stop):
        with lock:
            seen.append((start, stop))

    parallel.for_each_row_block(record, n_rows, row_bytes, period=period)
    rows = sorted(r for start, stop in seen for r in range(start, stop))
    assert rows == list(range(n_rows))
    p = period or n_rows
    within_one = [(stop - 1) // p == start // p for start, stop in seen]
    whole = [start % p == 0 and (stop - start) % p == 0 for start, stop in seen]
    assert all(a or b for a, b in zip(within_one, whole)), seen
    assert all(stop - start <= max(1, parallel.BLOCK_BYTES // row_bytes, p) for start, stop in seen)


def test_a_block_error_and_the_callers_error_settings_reach_the_caller(own):
    def overflow(start, stop):
        np.exp(np.full(stop - start, 1000.0))

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        parallel.for_each_row_block(overflow, 50, 1024)

    def fail(start, stop):
        if start >= 20:
            raise KeyError("block")

    with pytest.raises(KeyError):
        parallel.for_each_row_block(fail, 50, 1024)


def _extreme_logits(rng, shape, dtype):
    a = (rng.standard_normal(shape) * 8).astype(dtype)
    flat = a.reshape(-1)
    flat[:6] = [0.0, -1e4, 1e4, 30.0, -30.0, 88.0]
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lead", [(), (1,), (7,), (3, 2)])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("B", [40, 5])
def test_blocked_bernoulli_likelihood_equals_the_whole_array_formula(own, dtype, lead, threads, B):
    """B = 40: blocks of 13 (float64) or 27 rows, parts of a slab; B = 5: blocks of whole slabs."""
    own(threads)
    rng = np.random.default_rng(0)
    D = 37
    x = (rng.random((B, D)) < 0.4).astype(dtype)
    x[0] = rng.random(D).astype(dtype)                     # grey values too
    a = _extreme_logits(rng, lead + (B, D), dtype)
    log_p, grad = bernoulli_log_likelihood_and_grad(x, a)
    whole = np.sum(x * a - softplus(a), axis=-1)           # Eq. (L1), over the whole array at once
    np.testing.assert_array_equal(log_p, whole)
    np.testing.assert_array_equal(grad, x - sigmoid(a))    # Eq. (L2)
    np.testing.assert_array_equal(bernoulli_log_likelihood(x, a), whole)
    np.testing.assert_array_equal(bernoulli_log_likelihood_grad(x, a), x - sigmoid(a))
    assert log_p.dtype == grad.dtype == dtype and log_p.shape == lead + (B,) and grad.shape == a.shape


def test_shapes_that_only_broadcast_take_the_whole_array_formula(own):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 5, 6))
    for x in (rng.random((1, 6)), rng.random((4, 5, 6)), rng.random(6)):
        log_p, grad = bernoulli_log_likelihood_and_grad(x, a)
        np.testing.assert_array_equal(log_p, np.sum(x * a - softplus(a), axis=-1))
        np.testing.assert_array_equal(grad, x - sigmoid(a))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("m, k, n", [(300, 40, 20), (20, 40, 300), (197, 61, 197), (129, 300, 5)])
def test_product_in_parts_equals_the_whole_product(own, threads, m, k, n):
    """Each entry is the same sum; BLAS may round it differently in a part (matmul's docstring), so
    1e-13 relative to the entries' scale: far below any misplaced, missing or doubled part."""
    own(threads)
    rng = np.random.default_rng(2)
    a, b, bias = rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal(n)
    at, bt = rng.standard_normal((k, m)), rng.standard_normal((n, k))

    def close(actual, expected):
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-13 * np.max(np.abs(expected)))

    close(parallel.matmul(a, b), a @ b)
    close(parallel.matmul(a, b, bias=bias), a @ b + bias)
    # the layouts of a Linear layer's backward pass: x^T dy and dy W^T
    close(parallel.matmul(at.T, b), at.T @ b)
    close(parallel.matmul(a, bt.T), a @ bt.T)
    assert parallel.matmul(a.astype(np.float32), b.astype(np.float32)).dtype == np.float32


def test_one_thread_or_a_small_product_is_the_product_itself(own, monkeypatch):
    rng = np.random.default_rng(5)
    a, b, bias = rng.standard_normal((300, 40)), rng.standard_normal((40, 200)), rng.standard_normal(200)
    own(1)
    np.testing.assert_array_equal(parallel.matmul(a, b, bias=bias), a @ b + bias)
    own(2)
    monkeypatch.setattr(parallel, "MATMUL_SPLIT_FLOPS", 2 * 300 * 40 * 200 + 1)
    np.testing.assert_array_equal(parallel.matmul(a, b, bias=bias), a @ b + bias)


def test_an_iwae_step_on_own_threads_equals_the_step_on_one(own):
    x = nv.load_dataset("mnist-mini").x_test[:16].astype(np.float64)
    results = []
    for threads in (1, 3):
        own(threads)
        model = nv.VAE(784, (32, 32), 4, activation="tanh", seed=0, dtype=np.float64)
        eps = np.random.default_rng(3).standard_normal((6, 16, 4))
        results.append(model.iwae_loss_and_grads(x, k=6, eps=eps))
        results[-1] += (model.log_likelihood(x[:3], n_importance=40, rng=np.random.default_rng(4)),)
    (loss1, grads1, ll1), (loss3, grads3, ll3) = results
    # The products in parts may round an entry by an ulp (matmul), nothing more: 1e-12 relative.
    assert loss3 == pytest.approx(loss1, rel=1e-12, abs=0)
    for name in grads1:
        scale = np.max(np.abs(grads1[name]))
        np.testing.assert_allclose(grads3[name], grads1[name], rtol=0, atol=1e-12 * scale, err_msg=name)
    np.testing.assert_allclose(ll3, ll1, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_num_threads_refuses_anything_but_a_positive_integer(bad):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        parallel.set_num_threads(bad)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        parallel.set_blas_threads(bad)


def test_set_num_threads_returns_the_previous_number():
    previous = parallel.set_num_threads(5)
    try:
        assert parallel.set_num_threads(2) == 5 and parallel.get_num_threads() == 2
    finally:
        parallel.set_num_threads(previous)


@pytest.mark.parametrize("value, expected_error", [("", False), ("3", False), ("0", True), ("-2", True),
                                                    ("two", True), ("1.5", True)])
def test_the_thread_variable_is_read_or_kept_as_an_error(monkeypatch, value, expected_error):
    monkeypatch.setenv("NUMPYVAE_NUM_THREADS", value)
    n, error = parallel._threads_from_environment()
    assert (error is not None) == expected_error
    if expected_error:
        assert repr(value) in error and n == min(parallel.MAX_DEFAULT_THREADS, parallel._cores())
    elif value:
        assert n == int(value)


@pytest.mark.parametrize("variable", [None, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"])
def test_the_command_line_hands_the_threads_to_numpyvae_unless_blas_was_set(monkeypatch, variable):
    calls = []
    monkeypatch.setattr(parallel, "set_blas_threads", calls.append)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    if variable:
        monkeypatch.setenv(variable, "2")
    parallel.use_own_threads()
    assert calls == ([] if variable else [1])
    monkeypatch.setattr(parallel, "ENVIRONMENT_ERROR", "NUMPYVAE_NUM_THREADS must be a positive integer")
    with pytest.raises(ValueError, match="NUMPYVAE_NUM_THREADS"):
        parallel.use_own_threads()


@pytest.mark.parametrize("threads", [1, 3])
def test_rowwise_equals_the_function_on_the_whole_arrays(own, threads):
    own(threads)
    rng = np.random.default_rng(6)
    y, dy = np.tanh(rng.standard_normal((50, 7, 11))), rng.standard_normal((50, 7, 11)).astype(np.float32)
    w = rng.standard_normal((50, 7, 1))

    def tanh_backward(dy, y, out):
        out[...] = dy * (1 - y * y)
        return out

    np.testing.assert_array_equal(parallel.rowwise(tanh_backward, dy, y), dy * (1 - y * y))
    np.testing.assert_array_equal(parallel.rowwise(np.multiply, dy, w), dy * w)       # broadcast on the last axis
    x = rng.standard_normal((40, 30))
    expected = np.tanh(x)
    assert parallel.rowwise(np.tanh, x, out=x) is x
    np.testing.assert_array_equal(x, expected)
    assert parallel.rowwise(np.multiply, dy, w).dtype == np.float64


def test_for_each_runs_every_item_once_in_balanced_shares(own):
    own(2)
    done, threads, lock = [], {}, threading.Lock()

    def work(item):
        with lock:
            done.append(item)
            threads.setdefault(threading.get_ident(), []).append(item)

    sizes = {"a": 300_000, "b": 300_000, "c": 10, "d": 20, "e": 5}
    parallel.for_each(work, sizes, sizes.values())
    assert sorted(done) == sorted(sizes)
    assert sorted(sorted(share) for share in threads.values()) == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(KeyError):
        parallel.for_each(lambda item: {}[item], sizes, sizes.values())


def test_adam_on_own_threads_equals_adam_on_one(own):
    rng = np.random.default_rng(8)
    params = {f"p{i}": rng.standard_normal(shape) for i, shape in enumerate([(300, 200), (200,), (50, 40)])}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(3)]
    results = []
    for threads in (1, 2):
        own(threads)
        p = {k: v.copy() for k, v in params.items()}
        opt = nv.Adam(p, lr=1e-2)
        for g in grads:
            opt.step(g)
        results.append(p)
    for k in params:
        np.testing.assert_array_equal(results[0][k], results[1][k])
        assert not np.array_equal(results[0][k], params[k])
