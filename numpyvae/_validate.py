"""Input checks shared by the public functions: bad input gets a clear error naming what
was expected, never a silent NaN or a silent upcast.

Every message starts with the argument's name. Non-numbers (strings, None, complex, object
arrays) raise TypeError; numbers of the right kind but a wrong value (NaN, inf, out of
range, wrong shape) raise ValueError."""

import math
import numbers

import numpy as np


def _expected(low, high, low_inclusive, high_inclusive):
    """(adjective, bounds) describing a range in words: ("positive ", "") for (0, inf), else
    ("", " >= 0"), ("", " in [0, 1)"), ... or ("", "") for no bounds."""
    if low == 0 and not low_inclusive and high is None:
        return "positive ", ""
    if low is not None and high is not None:
        return "", f" in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if low is not None:
        return "", f" {'>=' if low_inclusive else '>'} {low:g}"
    if high is not None:
        return "", f" {'<=' if high_inclusive else '<'} {high:g}"
    return "", ""


def check_finite_number(value, name, low=None, high=None, low_inclusive=True, high_inclusive=True):
    """``value`` as a Python float, after checking that it is a real, finite number within
    [low, high] (an open end with ``low_inclusive=False`` / ``high_inclusive=False``; None for
    no bound). Python and NumPy ints and floats are accepted; bool is not.

    Raises TypeError naming ``name`` for a non-number (str, None, bool, complex, an array) and
    ValueError naming ``name`` for NaN, inf or a value out of range, e.g.
    "lr must be a finite number >= 0; got nan", "sigma2 must be a positive finite number; got 0".
    """
    adjective, bounds = _expected(low, high, low_inclusive, high_inclusive)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a {adjective}number{bounds}, not {type(value).__name__}; got {value!r}")
    v = float(value)
    # Each comparison is written so that NaN fails it.
    ok = math.isfinite(v)
    if low is not None:
        ok = ok and (v >= low if low_inclusive else v > low)
    if high is not None:
        ok = ok and (v <= high if high_inclusive else v < high)
    if not ok:
        raise ValueError(f"{name} must be a {adjective}finite number{bounds}; got {value!r}")
    return v


def check_nonnegative_int(value, name):
    """``value`` as a Python int >= 0 (a seed, a step count): what np.random.default_rng takes
    and JSON stores. TypeError naming ``name`` for a non-integer (float, str, None, bool),
    ValueError for a negative one."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative integer, not {type(value).__name__}; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
    return int(value)


def check_real_array(x, name):
    """``x`` as a NumPy array of real numbers (ints, floats or bools); TypeError naming ``name``
    for strings, complex numbers or Python objects. Shapes and values are the caller's to check."""
    try:
        arr = np.asarray(x)
    except ValueError as exc:      # e.g. ragged nested lists
        raise TypeError(f"{name} must be a real numeric array; got {type(x).__name__} ({exc})") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real numeric array; got dtype {arr.dtype}")
    return arr


def check_finite_array(x, name, dtype=np.float64):
    """``x`` as a finite real array of ``dtype`` (any shape): check_real_array, then ValueError
    naming ``name`` if an entry is NaN or inf, or beyond the range of ``dtype`` (1e300 in a
    float32 model)."""
    given = check_real_array(x, name)
    with np.errstate(over="ignore"):          # a value beyond dtype's range becomes inf: refused below
        arr = np.asarray(given, dtype=dtype)
    if not np.all(np.isfinite(arr)):
        if given.dtype.kind == "f" and not np.all(np.isfinite(given)):
            raise ValueError(f"{name} contains NaN or inf")
        raise ValueError(f"{name} has values beyond the {arr.dtype.name} range "
                         f"(largest magnitude {float(np.max(np.abs(given))):.3g})")
    return arr


def as_batch(x, width, dtype, name="x"):
    """Return ``x`` as a C-contiguous (B, width) array of ``dtype``.

    Accepts any real numeric array (ints and bools included, e.g. uint8 pixels already
    scaled by the caller). Raises TypeError for non-numeric input and ValueError for a
    wrong rank, a wrong width, an empty batch or NaN / inf entries.
    """
    arr = check_real_array(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (batch, {width}); got shape {arr.shape}")
    if arr.shape[1] != width:
        raise ValueError(f"{name} must have {width} columns (shape (batch, {width})); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape})")
    return np.ascontiguousarray(check_finite_array(arr, name, dtype))


def check_rng(rng, name="rng"):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (e.g. np.random.default_rng(0)); "
                        f"got {type(rng).__name__}")
    return rng


def check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def noise(eps, n_samples, batch, latent_dim, rng, dtype, count_name="n_samples"):
    """The standard-normal noise of shape (L, B, Z): ``eps`` when given (checked), else drawn
    from ``rng``. With neither, raise: every stochastic result must be reproducible.
    ``count_name``: what the caller calls L in its own signature ("n_samples", "k")."""
    n_samples = check_positive_int(n_samples, count_name)
    shape = (n_samples, batch, latent_dim)
    if eps is not None:
        e = check_real_array(eps, "eps")
        if e.shape != shape:
            raise ValueError(f"eps must have shape ({count_name}, batch, latent_dim) = {shape}; got {e.shape}")
        if not np.issubdtype(e.dtype, np.floating):
            raise TypeError(f"eps must be a floating-point array; got dtype {e.dtype}")
        return check_finite_array(e, "eps", dtype)       # finite in the model's dtype, not only in its own
    if rng is None:
        raise ValueError("this call is stochastic: pass rng=np.random.default_rng(seed) or explicit "
                         f"eps of shape {shape}")
    check_rng(rng)
    return rng.standard_normal(shape, dtype=dtype)


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def image_shape(shape, name="image_shape"):
    """``shape`` as a (height, width) tuple of positive ints: TypeError if it is not a sequence,
    ValueError if it is not a pair of positive integers."""
    try:
        pair = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be (height, width); got {shape!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be (height, width); got {shape!r}")
    return tuple(check_positive_int(side, f"each side of {name}") for side in pair)


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


def array_mismatches(expected, found, noun="array", check_values=None):
    """Every way the arrays ``found`` fail to match ``expected``, as a list of messages (empty:
    they match). The one report behind restoring saved arrays: optimiser state, checkpoints,
    a run's parameters.

    expected: {name: (shape, dtype)} or {name: template array}; found: {name: array-like}.
    The messages, in this order (``noun`` names the entries, e.g. "array" or "parameter"):

        missing arrays: ['dec.b']                            in expected, not in found
        unexpected arrays: ['extra']                         in found, not in expected
        array 'enc.W' cannot be read as an array (list)      np.asarray refuses it (ragged)
        array 'enc.W' has shape (3, 4), expected (4, 3)
        array 'enc.b' has dtype float32, expected float64    dtypes must match exactly: a cast
                                                             would break bit-for-bit restoring

    ``check_values(name, array)``, if given, runs on each array whose shape and dtype match and
    returns its own messages (e.g. about NaN), so that one call lists every problem at once.
    """
    spec = {}
    for name, item in expected.items():
        shape, dtype = (item.shape, item.dtype) if hasattr(item, "shape") and hasattr(item, "dtype") else item
        spec[name] = (tuple(shape), np.dtype(dtype))
    problems = []
    missing = [k for k in spec if k not in found]
    unexpected = [k for k in found if k not in spec]
    if missing:
        problems.append(f"missing {noun}s: {missing}")
    if unexpected:
        problems.append(f"unexpected {noun}s: {unexpected}")
    for name, (shape, dtype) in spec.items():
        if name not in found:
            continue
        try:
            arr = np.asarray(found[name])
        except ValueError:          # e.g. ragged nested lists
            problems.append(f"{noun} {name!r} cannot be read as an array ({type(found[name]).__name__})")
            continue
        wrong = []
        if arr.shape != shape:
            wrong.append(f"{noun} {name!r} has shape {arr.shape}, expected {shape}")
        if arr.dtype != dtype:
            wrong.append(f"{noun} {name!r} has dtype {arr.dtype}, expected {dtype}")
        if not wrong and check_values is not None:
            wrong = check_values(name, arr)
        problems += wrong
    return problems
