"""
Saving and loading checkpoints safely.

The rules:

1. Saves are atomic. We write to a temporary file in the same directory,
   flush it to disk, and then `os.replace` it onto the final name. A crash
   (or Ctrl-C) at any moment leaves either the old file or the new one,
   never a half-written one, and no stray temporary file.
2. Nothing is pickled. A checkpoint is one `.npz` file: every array under
   its name, plus the metadata as JSON text under the reserved name
   "__metadata__". It is read back with `np.load(..., allow_pickle=False)`,
   so loading a checkpoint can never run code hidden in it.
3. Loading fails loudly. A missing, truncated, corrupt or mismatched file
   raises an error that names the file and says what was wrong.

Metadata is JSON, so it may contain dicts with string keys, lists/tuples,
str, int, float, bool and None. Tuples come back as lists. NaN and infinity
are rejected with an error naming the offending entry, because standard JSON
cannot represent them (store None or a string instead); NumPy scalars are
rejected too (convert with int()/float()), so what you load is exactly what
you saved.

Example:

    save_checkpoint("run/ckpt.npz", {**model.params, **opt_arrays},
                    {"step": 100, "rng": rng_state_to_json(rng)})
    arrays, meta = load_checkpoint("run/ckpt.npz")
"""

import io
import json
import math
import os
import tempfile
import zipfile
import zlib

import numpy as np

METADATA_KEY = "__metadata__"

# The bit generators we know how to rebuild. An explicit table, rather than
# getattr(np.random, name), so a checkpoint cannot make us call anything else.
_BIT_GENERATORS = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


# ------------------------------------------------------------ atomic writes


def _current_umask():
    # os.umask can only be read by setting it; we set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask is process-wide, so we avoid toggling it
# later while other threads may be creating files.
_UMASK = _current_umask()


def atomic_write_bytes(path, data):
    """
    Write `data` (bytes) to `path` atomically: readers see the old file or the
    complete new file, never a partial one.

    How: write to a temporary file in the same directory (os.replace is only
    atomic within one filesystem), flush and fsync it so the bytes are on disk
    before the rename, then os.replace it onto `path`. If anything fails, the
    temporary file is removed and the exception re-raised; `path` is untouched.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates files readable only by us (0600); give the
        # checkpoint the permissions an ordinary open() would have.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    # On POSIX the rename itself is only durable once the directory entry is
    # flushed. Some platforms (Windows) cannot open a directory; skip there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text, encoding="utf-8"):
    """Write the string `text` to `path` atomically (no newline translation)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


def _check_json_safe(obj, where):
    """
    Raise ValueError unless `obj` survives a JSON round trip unchanged
    (tuples aside, which come back as lists). `where` names the entry, e.g.
    "metadata['history'][3]", so the error says exactly what to fix.
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):  # includes np.float64, a float subclass
        if not math.isfinite(obj):
            raise ValueError(
                f"{where} is {obj}; JSON cannot store NaN or infinity "
                "(store None or a string such as 'inf' instead)"
            )
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"{where} has a non-string key {key!r}; JSON keys must be strings"
                )
            _check_json_safe(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_json_safe(value, f"{where}[{i}]")
        return
    hint = " (convert NumPy values with int(), float() or .tolist())" if isinstance(
        obj, (np.generic, np.ndarray)
    ) else ""
    raise ValueError(f"{where} has type {type(obj).__name__}, which JSON cannot store{hint}")


def _to_json_text(obj, where):
    _check_json_safe(obj, where)
    # ensure_ascii keeps the text pure ASCII (no NUL or odd code points to
    # worry about when it is stored in a NumPy string array).
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=True)


def atomic_write_json(path, obj):
    """
    Write `obj` as JSON (indent=2, sorted keys) to `path` atomically.

    Raises ValueError, before touching the file, if `obj` contains something
    JSON cannot store exactly: NaN/infinity, non-string dict keys, NumPy
    scalars or arrays, or other objects.
    """
    atomic_write_text(path, _to_json_text(obj, "obj") + "\n")


# ------------------------------------------------------------- checkpoints


def _npz_bytes(arrays):
    """
    Build the bytes of an .npz file (a zip of .npy files, one per array).

    This is what np.savez does, written out because np.savez(f, **arrays)
    misbehaves for some names: an array called "file" is a TypeError, and one
    called "allow_pickle" is silently taken as the flag and not saved at all.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buffer.getvalue()


def save_checkpoint(path, arrays, metadata):
    """
    Save arrays and JSON metadata to one .npz file at `path`, atomically.

    Inputs:
    - path: file name; by convention ending in ".npz".
    - arrays: dict {name: ndarray}. Names are non-empty strings and may
      contain dots ("enc.h0.W"), but not slashes; "__metadata__" is reserved.
      Any numeric/bool/string dtype is fine; object arrays are rejected
      (they could only be stored by pickling).
    - metadata: dict of JSON-safe values (see the module docstring).

    Everything is validated before anything is written; if validation or the
    write fails, an existing file at `path` is left exactly as it was.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict {{name: ndarray}}, got {type(arrays).__name__}")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")

    checked = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        if name == METADATA_KEY:
            raise ValueError(f"array name {METADATA_KEY!r} is reserved for the metadata")
        if "/" in name or "\\" in name or "\x00" in name:
            raise ValueError(f"array name {name!r} must not contain '/', '\\\\' or NUL")
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype}, which holds Python objects; "
                "checkpoints never pickle, so convert it to a numeric array"
            )
        checked[name] = arr
    # A 0-d NumPy unicode array: loads with allow_pickle=False.
    checked[METADATA_KEY] = np.array(_to_json_text(metadata, "metadata"))

    atomic_write_bytes(path, _npz_bytes(checked))


def _normalise_expected(expected):
    """{name: (shape, dtype) or template array} -> {name: (shape, dtype)}."""
    spec = {}
    for name, item in expected.items():
        if hasattr(item, "shape") and hasattr(item, "dtype"):
            spec[name] = (tuple(item.shape), np.dtype(item.dtype))
        else:
            shape, dtype = item
            spec[name] = (tuple(shape), np.dtype(dtype))
    return spec


def load_checkpoint(path, expected=None):
    """
    Load a checkpoint written by save_checkpoint.

    Inputs:
    - path: the .npz file.
    - expected: optional dict {name: (shape, dtype)} or {name: template
      ndarray}. If given, the checkpoint must hold exactly these arrays with
      these shapes and dtypes.

    Returns (arrays, metadata): a dict {name: ndarray} of ordinary in-memory
    arrays (the file is closed), and the metadata dict.

    Raises:
    - FileNotFoundError if `path` does not exist.
    - ValueError, naming the file, if it is not a readable .npz checkpoint
      (not a zip, truncated, corrupt, contains pickled objects), has no or
      invalid metadata, or does not match `expected`. For `expected`, all
      missing, unexpected, wrong-shape and wrong-dtype arrays are listed in
      one message.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")

    def unreadable(e):
        return ValueError(
            f"cannot load checkpoint {path!r}: the .npz archive is damaged or holds "
            f"something other than plain arrays (truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        )

    # The errors a damaged file can raise, at open time or while reading a member.
    damaged = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError)

    try:
        f = open(path, "rb")
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path!r}: {e}") from e
    # We open the file ourselves, rather than passing np.load a path, because
    # np.load leaks its file handle when the zip turns out to be damaged.
    with f:
        # Check the first bytes ourselves: for unknown content np.load would
        # say "file contains pickled data", which is misleading here.
        magic = f.read(6)
        f.seek(0)
        if magic.startswith(b"\x93NUMPY"):
            raise ValueError(
                f"cannot load checkpoint {path!r}: it holds a single .npy array, "
                "expected an .npz archive written by save_checkpoint"
            )
        if not magic.startswith(b"PK\x03\x04"):
            raise ValueError(
                f"cannot load checkpoint {path!r}: not an .npz (zip) archive "
                f"(starts with {magic!r}; empty, truncated or not a checkpoint?)"
            )
        arrays = {}
        try:
            with np.load(f, allow_pickle=False) as npz:
                for name in npz.files:
                    arrays[name] = npz[name]  # reads the member into a fresh array
        except damaged as e:
            raise unreadable(e) from e

    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # NpzFile returns raw bytes for non-.npy members
            raise ValueError(f"checkpoint {path!r}: entry {name!r} is not a .npy array")

    if METADATA_KEY not in arrays:
        raise ValueError(
            f"checkpoint {path!r} has no {METADATA_KEY!r} entry; "
            "it was not written by save_checkpoint"
        )
    meta_arr = arrays.pop(METADATA_KEY)
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise ValueError(
            f"checkpoint {path!r}: {METADATA_KEY!r} should be a 0-d unicode string, "
            f"got shape {meta_arr.shape} dtype {meta_arr.dtype}"
        )
    try:
        metadata = json.loads(str(meta_arr[()]))
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {path!r}: metadata is not valid JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ValueError(
            f"checkpoint {path!r}: metadata should be a JSON object, "
            f"got {type(metadata).__name__}"
        )

    if expected is not None:
        problems = []
        spec = _normalise_expected(expected)
        missing = [k for k in spec if k not in arrays]
        unexpected = [k for k in arrays if k not in spec]
        if missing:
            problems.append(f"missing arrays: {missing}")
        if unexpected:
            problems.append(f"unexpected arrays: {unexpected}")
        for name, (shape, dtype) in spec.items():
            if name not in arrays:
                continue
            if arrays[name].shape != shape:
                problems.append(f"{name!r} has shape {arrays[name].shape}, expected {shape}")
            if arrays[name].dtype != dtype:
                problems.append(f"{name!r} has dtype {arrays[name].dtype}, expected {dtype}")
        if problems:
            raise ValueError(
                f"checkpoint {path!r} does not match what was expected:\n  "
                + "\n  ".join(problems)
            )

    return arrays, metadata


# ---------------------------------------------------------- random state


def rng_state_to_json(rng):
    """
    The state of an np.random.Generator as a JSON-safe dict.

    A Generator keeps all its state in its bit generator, so saving
    rng.bit_generator.state is enough to reproduce the random stream exactly.
    For PCG64 (the default) that state is plain ints and strings; other bit
    generators (MT19937, Philox, SFC64) hold small uint arrays, which we turn
    into lists of ints.

    Not saved: the SeedSequence the generator was created from, so
    rng.spawn() on a restored generator gives different children.
    """
    def plain(obj):
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, (np.ndarray, np.generic)):
            return obj.tolist()
        return obj

    return plain(rng.bit_generator.state)


def rng_from_json(state):
    """Rebuild an np.random.Generator from rng_state_to_json(...) output."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(
            f"unknown bit generator {name!r}; expected one of {sorted(_BIT_GENERATORS)}"
        )
    bit_generator = _BIT_GENERATORS[name]()
    bit_generator.state = state  # the setters accept lists for the arrays
    return np.random.Generator(bit_generator)
