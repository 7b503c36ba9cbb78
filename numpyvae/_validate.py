"""Input checks shared by the public functions: bad input gets a clear error naming what
was expected, never a silent NaN or a silent upcast."""

import numpy as np


def as_batch(x, width, dtype, name="x"):
    """Return ``x`` as a C-contiguous (B, width) array of ``dtype``.

    Accepts any real numeric array (ints and bools included, e.g. uint8 pixels already
    scaled by the caller). Raises TypeError for non-numeric input and ValueError for a
    wrong rank, a wrong width, an empty batch or NaN / inf entries.
    """
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (batch, {width}); got shape {arr.shape}")
    if arr.shape[1] != width:
        raise ValueError(f"{name} must have {width} columns (shape (batch, {width})); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_rng(rng, name="rng"):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (e.g. np.random.default_rng(0)); "
                        f"got {type(rng).__name__}")
    return rng


def check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def noise(eps, n_samples, batch, latent_dim, rng, dtype):
    """The standard-normal noise of shape (L, B, Z): ``eps`` when given (checked), else drawn
    from ``rng``. With neither, raise: every stochastic result must be reproducible."""
    n_samples = check_positive_int(n_samples, "n_samples")
    shape = (n_samples, batch, latent_dim)
    if eps is not None:
        e = np.asarray(eps)
        if e.shape != shape:
            raise ValueError(f"eps must have shape (n_samples, batch, latent_dim) = {shape}; got {e.shape}")
        if not np.issubdtype(e.dtype, np.floating):
            raise TypeError(f"eps must be a floating-point array; got dtype {e.dtype}")
        if not np.all(np.isfinite(e)):
            raise ValueError("eps contains NaN or inf")
        return np.asarray(e, dtype=dtype)
    if rng is None:
        raise ValueError("this call is stochastic: pass rng=np.random.default_rng(seed) or explicit "
                         f"eps of shape {shape}")
    check_rng(rng)
    return rng.standard_normal(shape, dtype=dtype)


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def hidden_widths(hidden_dims):
    """A tuple of positive ints from hidden_dims (any iterable of them; () for none)."""
    try:
        hidden = tuple(hidden_dims)
    except TypeError:
        raise TypeError(f"hidden_dims must be a tuple of positive ints; got {hidden_dims!r}") from None
    return tuple(check_positive_int(h, "each hidden width") for h in hidden)


def float_dtype(dtype):
    """np.dtype of float32 or float64, the two dtypes every model supports end to end."""
    d = np.dtype(dtype)
    if d not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be np.float32 or np.float64; got {dtype!r}")
    return d
