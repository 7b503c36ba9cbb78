"""numpyvae's own threads: large elementwise work in cache-sized row blocks and large matrix
products in parts, on both cores, and how they share the cores with BLAS.

NumPy runs each ufunc over a whole array in one thread, one pass at a time. For the
importance-weighted workloads (K = 50 samples of 100 digits: a (5000, 784) array of decoder
outputs) the Bernoulli log-likelihood and its gradient make about twenty such passes, each over
15.7 MB: more than a core's cache holds, and every temporary is fresh memory the kernel must map
on first touch (about 4,000 page faults and 20 ms per step, benchmarks/README.md). Cutting the rows
into blocks of about BLOCK_BYTES keeps the temporaries in the cache and lets the allocator reuse
them, and the blocks can run on several threads at once: NumPy's ufuncs release the GIL while
they loop.

    for_each_row_block(fn, n_rows, row_bytes)   fn(start, stop) for consecutive row blocks
    rowwise(fn, *arrays)                        an elementwise fn(*arrays) in row blocks
    for_each(fn, items, sizes)                  independent work items, e.g. each parameter's update
    matmul(a, b, bias)                          a @ b + bias, in parts for a large product

Each block or part writes its own rows (or columns) of the result. A block's rows are computed
exactly as over the whole array, so the blocked functions give the same bits whatever the block
size or thread count; a product in parts may round an entry by an ulp differently (matmul), so
float64 training on numpyvae's own threads matches one thread to about 1e-15, not bit for bit
(tests/test_parallel.py).

Who uses the cores. Exactly one of numpyvae and BLAS spreads work over threads: numpyvae uses its
own threads (own_threads) only while BLAS runs on one. Two parties each spreading over the same
two cores slow each other (OpenBLAS's idle threads keep spinning for a while after a product), and
OpenBLAS's fine-grained threads collapse when another process holds a core: beside one busy
process the default step took 16.5-24 ms on two BLAS threads against 8.5-8.9 on one, and the IWAE
k = 50 step 187-206 ms against 104-109, where numpyvae's coarse parts (two halves of each large
product or array) took 8.5-9.5 and 111-115 (benchmarks/bench_load.py). So the command line
(numpyvae.cli) and the tutorials set BLAS to one thread and let numpyvae spread the work
(use_own_threads), unless the user has set OPENBLAS_NUM_THREADS, OMP_NUM_THREADS or MKL_NUM_THREADS. The number of numpyvae threads:
NUMPYVAE_NUM_THREADS (read at import) or set_num_threads(n); by default the cores this process may
use, at most 2 (the machine the numbers were measured on has 2).
"""

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = [
    "BLOCK_BYTES", "MATMUL_SPLIT_FLOPS", "ENVIRONMENT_ERROR",
    "for_each_row_block", "rowwise", "for_each", "matmul",
    "get_num_threads", "set_num_threads", "own_threads", "blas_threads", "set_blas_threads", "use_own_threads",
]

# The L2 cache of one core of the benchmark machine: a block's input and its temporaries stay near
# the core, and a block is large enough that its ufunc calls are few (each call hands the GIL to
# the other thread and back). Measured for the (50, 100, 784) float32 likelihood and its gradient:
# blocks of 256 KiB, 512 KiB, 1, 2 and 4 MiB took 18-20, 18-22, 19-20, 23-24 and 27 ms on one
# thread and 18-19, 14, 11-12, 13 and 15-17 ms on two (the whole array at once: 22-30 ms).
BLOCK_BYTES = 1024 * 1024

MAX_DEFAULT_THREADS = 2


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not on Linux
        return os.cpu_count() or 1


def _threads_from_environment():
    """NUMPYVAE_NUM_THREADS, or the default; a value that is not a positive integer is kept as an
    error (ENVIRONMENT_ERROR) for the command line to report, and the default is used."""
    value = os.environ.get("NUMPYVAE_NUM_THREADS", "").strip()
    default = min(MAX_DEFAULT_THREADS, _cores())
    if not value:
        return default, None
    if value.isdigit() and int(value) >= 1:
        return int(value), None
    return default, f"NUMPYVAE_NUM_THREADS must be a positive integer (numpyvae's threads); got {value!r}"


_num_threads, ENVIRONMENT_ERROR = _threads_from_environment()
_pool = None
_pool_lock = threading.Lock()


def get_num_threads():
    """The number of threads numpyvae may use (own_threads: those it uses while BLAS runs on one)."""
    return _num_threads


def set_num_threads(n):
    """Let numpyvae use ``n`` threads (a positive integer) from now on; 1 runs every block and
    product in the calling thread. Returns the previous number."""
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    with _pool_lock:
        previous, _num_threads = _num_threads, int(n)
        if _pool is not None and previous != _num_threads:
            _pool.shutdown(wait=True)
            _pool = None
    return previous


# ---------------------------------------------------------------------------
# BLAS's threads
# ---------------------------------------------------------------------------

_OPENBLAS_NAMES = (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"), ("openblas_", ""))
_openblas_functions = None


def _openblas():
    """(get_num_threads, set_num_threads) of the OpenBLAS library numpy has loaded, found among
    this process's shared libraries (/proc/self/maps); None for another BLAS or off Linux. SciPy's
    wheels bring an OpenBLAS of their own: numpy's (its path names numpy) is tried first."""
    global _openblas_functions
    if _openblas_functions is None:
        _openblas_functions = ()
        try:
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower()}
        except OSError:
            paths = set()
        for path in sorted(paths, key=lambda path: ("numpy" not in path, path)):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in _OPENBLAS_NAMES:
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, (ctypes.c_int,)
                    _openblas_functions = (get, put)
                    break
            if _openblas_functions:
                break
    return _openblas_functions or None


def blas_threads():
    """How many threads BLAS uses for a product: asked of OpenBLAS, else read from
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS; None when unknown."""
    functions = _openblas()
    if functions is not None:
        return int(functions[0]())
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def set_blas_threads(n):
    """Ask OpenBLAS to use ``n`` threads from now on. Returns True when it could be told; False for
    another BLAS (then set OPENBLAS_NUM_THREADS, OMP_NUM_THREADS or MKL_NUM_THREADS before Python starts)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    functions = _openblas()
    if functions is None:
        return False
    functions[1](int(n))
    return True


def own_threads():
    """The threads numpyvae spreads its own work over: get_num_threads() while BLAS runs on one
    thread, else 1 (BLAS already spreads the products; see the module's docstring)."""
    return _num_threads if _num_threads > 1 and blas_threads() == 1 else 1


def _get_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_num_threads, thread_name_prefix="numpyvae")
        return _pool


def _in_shares(fn, shares):
    """fn(item) for every item of every share, one share per thread: the first share in the calling
    thread (waking a pool thread costs tens of microseconds, and the caller would only wait), the
    others on the pool at the same time, each under the caller's floating-point error settings
    (np.errstate). The first exception raised is raised here, after every share has ended."""
    settings = np.geterr()

    def run(share):
        with np.errstate(**settings):
            for item in share:
                fn(item)

    futures = [_get_pool().submit(run, share) for share in shares[1:]]
    try:
        run(shares[0])
    finally:
        for future in futures:
            future.exception()               # wait for it, whatever happens here
    for future in futures:
        future.result()


def for_each_row_block(fn, n_rows, row_bytes, period=None):
    """Call ``fn(start, stop)`` for consecutive blocks [start, stop) covering range(n_rows).

    A block holds about BLOCK_BYTES / row_bytes rows (at least one). With ``period`` (n_rows a
    multiple of it), a block either lies within one period or is a run of whole periods, so a block
    of a flattened (N, B, D) array (period = B) is a part of one (B, D) slab or whole slabs. ``fn``
    must write only its own rows of its outputs. With more than one thread the blocks run on the
    pool, each under the caller's floating-point error settings (np.errstate), and the first
    exception a block raises is raised here.
    """
    rows = max(1, BLOCK_BYTES // max(1, row_bytes))
    period = max(1, n_rows if period is None else period)
    if rows >= period:
        rows -= rows % period
        blocks = [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]
    else:
        blocks = [(start, min(start + rows, slab + period, n_rows))
                  for slab in range(0, n_rows, period) for start in range(slab, min(slab + period, n_rows), rows)]
    if not blocks:
        return
    n = min(own_threads(), len(blocks))
    # One share per thread, each a contiguous run of blocks (n = 1: all of them, in order, here).
    _in_shares(lambda block: fn(*block), [blocks[len(blocks) * i // n: len(blocks) * (i + 1) // n] for i in range(n)])


# Below this many FLOPs a product is not split: handing half of it to another thread costs tens of
# microseconds.
MATMUL_SPLIT_FLOPS = 2 ** 23


def matmul(a, b, bias=None):
    """a @ b (+ bias) for 2-D a (m, k), b (k, n) and bias (n,), split over the threads for a large
    product: the rows of a into parts when m >= n, else the columns of b. Each part is an ordinary
    product written into its own rows or columns of the result, with the bias added there while
    that part is in the cache.

    Every entry is the same sum as in a @ b, but BLAS picks its kernels by the shape it is given, so
    an entry of a part may be rounded differently: float32 results measured equal bit for bit,
    float64 results differ by an ulp in up to 1% of the entries of some shapes (tests/test_parallel.py
    allows 1e-13 relative). One thread, or a product below MATMUL_SPLIT_FLOPS, is a @ b itself."""
    m, n = a.shape[0], b.shape[1]
    parts = min(own_threads(), max(m, n))
    if parts < 2 or 2 * m * n * a.shape[1] < MATMUL_SPLIT_FLOPS:
        out = a @ b
        if bias is not None:
            out += bias
        return out
    out = np.empty((m, n), dtype=np.result_type(a, b))
    length = m if m >= n else n
    cuts = [length * i // parts for i in range(parts + 1)]
    if m >= n:
        jobs = [(a[i:j], b, out[i:j], bias) for i, j in zip(cuts[:-1], cuts[1:])]
    else:
        jobs = [(a, b[:, i:j], out[:, i:j], None if bias is None else bias[i:j]) for i, j in zip(cuts[:-1], cuts[1:])]

    def product(job):
        a_part, b_part, out_part, bias_part = job
        np.matmul(a_part, b_part, out=out_part)
        if bias_part is not None:
            out_part += bias_part

    _in_shares(product, [[job] for job in jobs])
    return out


def for_each(fn, items, sizes):
    """fn(item) for every item, the items spread over numpyvae's own threads in shares of about
    equal total size (``sizes``: one number per item, e.g. an array's number of entries). For
    independent work, such as updating each parameter array (numpyvae.optim). On one thread, or
    below BLOCK_BYTES / 4 entries in all, a plain loop in order."""
    items, sizes = list(items), list(sizes)
    threads = own_threads()
    if threads == 1 or len(items) < 2 or sum(sizes) < BLOCK_BYTES // 4:
        for item in items:
            fn(item)
        return
    shares, totals = [[] for _ in range(threads)], [0] * threads
    for size, i in sorted(zip(sizes, range(len(items))), reverse=True):   # largest first, to the lightest share
        k = totals.index(min(totals))
        shares[k].append(items[i])
        totals[k] += size
    _in_shares(fn, [share for share in shares if share])


def rowwise(fn, *arrays, out=None):
    """fn(*arrays, out=out), computed block by block along the first axis on numpyvae's own threads.

    ``fn`` is elementwise and writes into ``out`` as a ufunc does (np.tanh, np.multiply, or a
    function written like one): each output row depends only on the same rows of the inputs, which
    share their first axis and broadcast on the others. ``out``: the result's array, a new one of
    the inputs' broadcast shape and result type when None (it may be one of the inputs). The result
    equals fn(*arrays) bit for bit. On one thread, or below two blocks, one call on the whole arrays."""
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    out = np.empty(shape, dtype=np.result_type(*arrays)) if out is None else out
    row_bytes = out.itemsize * (int(np.prod(shape[1:])) if len(shape) > 1 else 1)
    if own_threads() == 1 or len(shape) == 0 or shape[0] * row_bytes < 2 * BLOCK_BYTES:
        fn(*arrays, out=out)
        return out

    def block(i, j):
        fn(*(a[i:j] for a in arrays), out=out[i:j])

    for_each_row_block(block, shape[0], row_bytes)
    return out


def use_own_threads():
    """The command line's choice of who spreads the work (the module's docstring): BLAS on one
    thread and numpyvae on get_num_threads(), unless the user has set OPENBLAS_NUM_THREADS,
    OMP_NUM_THREADS or MKL_NUM_THREADS (then BLAS keeps that and numpyvae runs on one thread).
    Raises ValueError for a NUMPYVAE_NUM_THREADS that is not a positive integer."""
    if ENVIRONMENT_ERROR:
        raise ValueError(ENVIRONMENT_ERROR)
    if not any(os.environ.get(name, "").strip() for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                             "MKL_NUM_THREADS")):
        set_blas_threads(1)
