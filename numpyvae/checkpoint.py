"""Saving and loading checkpoints safely.

The rules:

1. Saves are atomic. We write to a temporary file `.NAME.XXXXXXXX.tmp` in
   the same directory, flush it to disk, and then `os.replace` it onto the
   final name. A crash, an exception or Ctrl-C at any moment leaves either
   the old file or the new one, never a half-written one. An exception or
   Ctrl-C also removes the temporary file; a process killed outright
   (kill -9, power cut) cannot, so its temporary file stays behind until
   `remove_stale_temporaries(path)` deletes it. That is never done
   automatically (it would delete the file a concurrent writer is still
   writing); the training code calls it while it holds the run's lock.
2. Nothing is pickled. A checkpoint is one `.npz` file: every array under
   its name, plus the metadata as JSON text under the reserved name
   "__metadata__". Any `np.load(..., allow_pickle=False)` can read it;
   `load_checkpoint` reads it with its own small, strict reader instead, so
   that loading a checkpoint can never run code hidden in it and memory
   stays bounded whatever the file claims (rule 4).
3. Loading fails loudly. A missing file raises FileNotFoundError; anything
   else that is wrong (not a regular file, truncated, corrupt, crafted,
   mismatched) raises ValueError naming the file and what was wrong.
4. Loading is bounded. Before anything is allocated the reader checks the
   file (at most MAX_CHECKPOINT_BYTES = 1 GiB on disk, a regular file so a
   FIFO cannot block it), the zip directory (at most MAX_ZIP_DIRECTORY_BYTES,
   no duplicate names, no encryption, only stored or deflated members whose
   declared sizes add up to at most MAX_CHECKPOINT_BYTES) and each array's
   .npy header (no Python objects; shape x itemsize must equal the member's
   declared size). It then reads exactly that many bytes in bounded chunks,
   so a member that inflates past its declared size cannot get further
   (zipfile stops there and the CRC check fails). The metadata text is at
   most MAX_METADATA_CHARS long and nested at most MAX_JSON_DEPTH deep.
   save_checkpoint refuses to write anything the loader would refuse.

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

import contextlib
import io
import json
import math
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib

import numpy as np

from ._validate import array_mismatches

METADATA_KEY = "__metadata__"

# Limits of the loader (rule 4 of the module docstring). They are read when a
# function runs, so a caller who really needs more may raise them.
MAX_CHECKPOINT_BYTES = 1 << 30  # 1 GiB: the file, and all arrays once loaded
MAX_ZIP_DIRECTORY_BYTES = 4 << 20  # 4 MiB: ~50,000 members; a training run has < 100
MAX_METADATA_CHARS = 1 << 24  # 16 Mi characters of JSON; a 1,000-epoch history is < 1 Mi
MAX_JSON_DEPTH = 64  # nesting of [ and {; training metadata is 3 deep

_READ_CHUNK = 1 << 20  # bytes per read() call while filling an array

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


@contextlib.contextmanager
def atomic_writer(path):
    """A binary file that becomes `path` atomically when the block ends: readers see the old
    file or the complete new file, never a partial one.

        with atomic_writer(path) as f:
            f.write(...)        # an exception here (Ctrl-C included) leaves `path` untouched

    How: write to a temporary file in the same directory (os.replace is only
    atomic within one filesystem), flush and fsync it so the bytes are on disk
    before the rename, then os.replace it onto `path`. If anything fails, the
    temporary file is removed and the exception re-raised; `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates files readable only by us (0600); give the
        # file the permissions an ordinary open() would have.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically (atomic_writer)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_writer(path) as f:
        f.write(data)


def _temporary_name_pattern(path):
    # atomic_writer names its temporary file "." + basename + "." +
    # random + ".tmp", where mkstemp's random part never contains a dot; so a
    # dot-free middle tells our temporaries from those of, say, "NAME.bak".
    base = os.path.basename(path)
    return re.compile(re.escape("." + base + ".") + r"[^.]+" + re.escape(".tmp"))


def remove_stale_temporaries(path):
    """Delete the temporary files that atomic_write_bytes(path, ...) leaves
    behind when its process is killed outright (kill -9, power cut) between
    creating and renaming them: regular files named `.BASENAME.XXXXXXXX.tmp`
    in the directory of `path`. Returns the list of paths removed.

    Call it only while no other process can be writing `path` (e.g. while
    holding a lock on it): a live writer's temporary file looks the same, and
    deleting it makes that writer's save fail. That is why atomic_write_bytes
    never calls it itself.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = _temporary_name_pattern(path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        candidate = os.path.join(directory, name)
        if not pattern.fullmatch(name):
            continue
        try:
            if not stat.S_ISREG(os.lstat(candidate).st_mode):
                continue  # never a directory or a symlink's target
            os.remove(candidate)
        except FileNotFoundError:
            continue  # someone else removed it first
        removed.append(candidate)
    return removed


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


# ----------------------------------------------------------- bounded reads


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular_file(path, what="file"):
    """Open `path` for binary reading, refusing anything but a regular file.

    Returns an open binary file object (use it in a `with` block); its size
    is os.fstat(f.fileno()).st_size. Raises FileNotFoundError if `path` does
    not exist, and ValueError naming `what` and `path` if it cannot be opened
    or is a directory, FIFO, device or socket.

    Why not open(path, "rb"): opening a FIFO blocks until some other process
    opens it for writing, possibly forever, and a device such as /dev/zero
    never ends. We open with O_NONBLOCK, which makes the open itself return at
    once whatever the file is, check the kind of file on the descriptor we
    hold (no race with a rename in between), and only then read.
    """
    path = os.fspath(path)
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFO files
    try:
        fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path!r}") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror or e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
            raise ValueError(f"cannot read {what} {path!r}: it is {kind}, not a regular file")
        if nonblocking:
            os.set_blocking(fd, True)  # back to ordinary reads (a no-op for regular files)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_into(f, buffer):
    """Fill `buffer` (a writable bytes-like object, e.g. a uint8 array) from the
    binary file object `f`, in chunks of at most 1 MiB, stopping early at end
    of file. Returns the number of bytes read.

    Memory beyond `buffer` is one chunk, whatever `f` is (a file, a gzip or a
    zip member stream), because no single read asks for more.
    """
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view):
        n = f.readinto(view[filled:filled + _READ_CHUNK])
        if not n:
            break
        filled += n
    return filled


# -------------------------------------------------------------------- JSON


def _check_json_safe(obj, where, depth=0):
    """Raise ValueError unless `obj` survives a JSON round trip unchanged
    (tuples aside, which come back as lists) and nests at most MAX_JSON_DEPTH
    lists/dicts deep, as the loader requires. `where` names the entry, e.g.
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
    if isinstance(obj, (dict, list, tuple)) and depth + 1 > MAX_JSON_DEPTH:
        raise ValueError(
            f"{where} is nested more than MAX_JSON_DEPTH={MAX_JSON_DEPTH} lists/dicts deep "
            "(or contains itself)"
        )
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"{where} has a non-string key {key!r}; JSON keys must be strings"
                )
            _check_json_safe(value, f"{where}[{key!r}]", depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_json_safe(value, f"{where}[{i}]", depth + 1)
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


# A JSON string literal: quote, then characters other than quote and
# backslash, or backslash-escapes, then quote.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _json_nesting_depth(text):
    """How deeply [ and { nest in the JSON `text` (0 for a bare scalar, 1 for
    "[1, 2]"), ignoring brackets inside strings.

    A running sum (+1 per opening, -1 per closing bracket) instead of a
    parse: json.loads recurses once per level and raises RecursionError near
    1,000 levels, at a depth that depends on the caller's stack, so we
    measure first and refuse deep text before the parser sees it.
    """
    skeleton = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8"), dtype=np.uint8)
    opens = (skeleton == ord("[")) | (skeleton == ord("{"))
    closes = (skeleton == ord("]")) | (skeleton == ord("}"))
    return int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed (standard JSON has no NaN or infinity)")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # "1e999" parses to inf
        raise ValueError(f"number {text} overflows to {value}")
    return value


def _object_without_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r} in an object")
        obj[key] = value
    return obj


def _parse_strict_json(text):
    """json.loads for text we did not write ourselves: at most MAX_JSON_DEPTH
    deep, no NaN/Infinity/overflowing numbers, no repeated keys in an object
    (json.loads would silently keep the last). Raises ValueError.
    """
    depth = _json_nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"it is nested {depth} deep, more than MAX_JSON_DEPTH={MAX_JSON_DEPTH}")
    return json.loads(
        text,
        parse_constant=_reject_constant,
        parse_float=_finite_float,
        object_pairs_hook=_object_without_duplicate_keys,
    )


def atomic_write_json(path, obj):
    """Write `obj` as JSON (indent=2, sorted keys) to `path` atomically.

    Raises ValueError, before touching the file, if `obj` contains something
    JSON cannot store exactly: NaN/infinity, non-string dict keys, NumPy
    scalars or arrays, or other objects; or nests deeper than MAX_JSON_DEPTH.
    """
    atomic_write_text(path, _to_json_text(obj, "obj") + "\n")


# ------------------------------------------------------------- checkpoints


def _npz_bytes(arrays):
    """Build the bytes of an .npz file (a zip of .npy files, one per array).

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
    """Save arrays and JSON metadata to one .npz file at `path`, atomically.

    path: the file name, by convention ending in ".npz". arrays: dict {name: array}, any
    shapes; names are non-empty strings and may contain dots ("enc.h0.W") but not slashes, and
    "__metadata__" is reserved; any numeric, bool or string dtype is fine, object arrays are
    rejected (they could only be stored by pickling). metadata: dict of JSON-safe values (see
    the module docstring).

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
        if not _latin1(repr(np.lib.format.dtype_to_descr(arr.dtype))):
            # Such a header needs .npy format 3.0, which the loader does not read.
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype}, whose field names are not Latin-1"
            )
        checked[name] = arr
    text = _to_json_text(metadata, "metadata")
    if len(text) > MAX_METADATA_CHARS:
        raise ValueError(
            f"metadata is {len(text)} characters of JSON, more than "
            f"MAX_METADATA_CHARS={MAX_METADATA_CHARS} that load_checkpoint accepts"
        )
    # A 0-d NumPy unicode array: loads with allow_pickle=False.
    checked[METADATA_KEY] = np.array(text)

    data = _npz_bytes(checked)
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise ValueError(
            f"the checkpoint would be {len(data)} bytes, more than "
            f"MAX_CHECKPOINT_BYTES={MAX_CHECKPOINT_BYTES} that load_checkpoint accepts"
        )
    if _zip_directory_size(io.BytesIO(data), len(data)) > MAX_ZIP_DIRECTORY_BYTES:
        raise ValueError(
            f"{len(checked) - 1} arrays are more than load_checkpoint accepts (their zip "
            f"directory exceeds MAX_ZIP_DIRECTORY_BYTES={MAX_ZIP_DIRECTORY_BYTES})"
        )
    atomic_write_bytes(path, data)


def _latin1(text):
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class _Refused(ValueError):
    """A problem with a checkpoint file that the reader found and described
    itself (as opposed to an error raised inside zipfile or NumPy)."""


# The zip "general purpose" flag bits a checkpoint may carry: 0x0002/0x0004
# (deflate speed hints), 0x0008 (sizes repeated after the data) and 0x0800
# (UTF-8 names). Anything else (encryption, patched data, ...) is refused.
_ALLOWED_ZIP_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

_EOCD = struct.Struct("<4s4H2LH")  # zip "end of central directory" record, 22 bytes
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before a zip64 end record
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_EOCD_SEARCH = (1 << 16) + _EOCD.size  # how far from the end zipfile looks for the record

# numpy's own default cap on a .npy header; ours are about 100 characters.
_MAX_NPY_HEADER = 10_000
_NPY_HEADER_READERS = {  # .npy version -> (format of the header length, parser)
    (1, 0): ("<H", np.lib.format.read_array_header_1_0),
    (2, 0): ("<I", np.lib.format.read_array_header_2_0),
}


def _zip_directory_size(f, file_size):
    """The size in bytes of the central directory that zipfile.ZipFile(f) will
    read, or None if f has no end record (zipfile then says "not a zip file").

    Why: ZipFile turns every directory entry (46 bytes or more) into a
    ZipInfo object of several hundred bytes before we can look at any, so a
    file of millions of empty entries would take ~8x its size in memory. We
    bound the directory first. To bound what zipfile will read, we find the
    end record exactly as zipfile._EndRecData does: the last 22 bytes if they
    are an end record without comment, else the last signature in the final
    64 KiB + 22 bytes. A zip64 end record (which could claim any size) is
    refused: save_checkpoint never needs one below MAX_CHECKPOINT_BYTES.
    """
    window = min(file_size, _EOCD_SEARCH + _ZIP64_LOCATOR.size)
    f.seek(file_size - window)
    tail = f.read(window)
    last = tail[-_EOCD.size:]
    if len(last) == _EOCD.size and last.startswith(_EOCD_SIGNATURE) and last.endswith(b"\x00\x00"):
        at = len(tail) - _EOCD.size
    else:
        search_from = max(file_size - _EOCD_SEARCH, 0) - (file_size - window)
        at = tail.rfind(_EOCD_SIGNATURE, search_from)
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    before = tail[max(at - _ZIP64_LOCATOR.size, 0):at]
    if before[:4] == _ZIP64_LOCATOR_SIGNATURE and len(before) == _ZIP64_LOCATOR.size:
        raise _Refused("it has a zip64 end record, which checkpoints never need")
    return _EOCD.unpack_from(tail, at)[5]  # field 5: size of the central directory


def _check_members(infos):
    """Refuse, from the zip directory alone, anything a checkpoint never holds."""
    names = set()
    total = 0
    for info in infos:
        name = info.filename
        if name in names:
            raise _Refused(f"the zip member {name!r} appears twice")
        names.add(name)
        if not name.endswith(".npy") or name == ".npy":
            raise _Refused(f"entry {name!r} is not a .npy array")
        if info.flag_bits & 0x1:
            raise _Refused(f"member {name!r} is encrypted; checkpoints never are")
        if info.flag_bits & ~_ALLOWED_ZIP_FLAGS:
            raise _Refused(
                f"member {name!r} uses zip features checkpoints never use "
                f"(flag bits 0x{info.flag_bits:04x})"
            )
        if info.compress_type not in _ZIP_METHODS:
            raise _Refused(
                f"member {name!r} uses compression method {info.compress_type}; "
                f"a checkpoint's members are stored (0) or deflated (8)"
            )
        total += info.file_size
        if total > MAX_CHECKPOINT_BYTES:
            raise _Refused(
                f"its members declare more than MAX_CHECKPOINT_BYTES={MAX_CHECKPOINT_BYTES} "
                f"bytes in total (member {name!r} alone: {info.file_size})"
            )


def _read_npy_header(member, name):
    """Read and check the .npy header at the start of a zip member, reading
    exactly the header and nothing after it.

    Returns (shape, fortran_order, dtype, header_size). We read the header's
    length field ourselves and check it before reading the header, because
    NumPy's readers read the whole (up to 4 GiB) header before they check
    max_header_size.
    """
    magic = member.read(8)  # b"\x93NUMPY", major, minor
    version = np.lib.format.read_magic(io.BytesIO(magic))
    if version not in _NPY_HEADER_READERS:
        raise _Refused(f"array {name!r} uses .npy format version {version}; expected 1.0 or 2.0")
    length_format, read_header = _NPY_HEADER_READERS[version]
    length_field = member.read(struct.calcsize(length_format))
    if len(length_field) < struct.calcsize(length_format):
        raise _Refused(f"array {name!r}: the member ends inside its .npy header (truncated?)")
    (length,) = struct.unpack(length_format, length_field)
    if length > _MAX_NPY_HEADER:
        raise _Refused(f"array {name!r}: its .npy header claims {length} bytes, "
                       f"more than the {_MAX_NPY_HEADER} a header ever needs")
    header = io.BytesIO(length_field + member.read(length))
    shape, fortran_order, dtype = read_header(header, max_header_size=_MAX_NPY_HEADER)
    if dtype.hasobject:
        raise _Refused(
            f"array {name!r} has dtype {dtype}, which holds Python objects; "
            "only pickle could restore it and checkpoints never unpickle"
        )
    if dtype.subdtype is not None:  # e.g. ('<f8', (3,)): np.save never writes one
        raise _Refused(f"array {name!r} has a sub-array dtype {dtype}")
    if any(n < 0 for n in shape):
        raise _Refused(f"array {name!r} has a negative dimension in its shape {shape}")
    return shape, fortran_order, dtype, len(magic) + len(length_field) + length


def _read_member(zf, info):
    """One zip member -> a fresh ndarray, reading no more than its declared size.

    The .npy header states the shape and dtype; their product must equal the
    bytes the zip directory declares for the data, so a header claiming 1e12
    elements is refused before anything is allocated. Then exactly that many
    bytes are read, in chunks, into a preallocated array, and one more read
    must find the end of the member (reaching the end also makes zipfile
    compare the CRC-32, which catches changed data bytes).
    """
    name = info.filename[:-len(".npy")]
    with zf.open(info) as member:
        shape, fortran_order, dtype, header_size = _read_npy_header(member, name)
        n_bytes = info.file_size - header_size
        count = math.prod(shape)  # Python ints: no overflow
        # (count > limit only matters for zero-size items such as "S0")
        if count * dtype.itemsize != n_bytes or count > MAX_CHECKPOINT_BYTES:
            raise _Refused(
                f"array {name!r}: its header says shape {shape} of {dtype} "
                f"({count * dtype.itemsize} bytes), but the zip directory declares {n_bytes} "
                "bytes of data (truncated or corrupt?)"
            )
        flat = np.empty(count, dtype=dtype)
        if n_bytes:
            got = read_into(member, flat.view(np.uint8))
            if got != n_bytes:
                raise _Refused(f"array {name!r}: the member ends after {got} of "
                               f"{n_bytes} data bytes (truncated or corrupt?)")
        if member.read(1):
            raise _Refused(f"array {name!r}: data continues past its declared size")
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _read_arrays(f, file_size):
    """All arrays of the .npz archive open as `f`, in archive order."""
    directory_size = _zip_directory_size(f, file_size)
    if directory_size is not None and directory_size > MAX_ZIP_DIRECTORY_BYTES:
        raise _Refused(
            f"its zip directory is {directory_size} bytes, more than "
            f"MAX_ZIP_DIRECTORY_BYTES={MAX_ZIP_DIRECTORY_BYTES}"
        )
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        _check_members(infos)
        return {info.filename[:-len(".npy")]: _read_member(zf, info) for info in infos}


def _parse_metadata(meta_arr, path):
    """The 0-d unicode array under METADATA_KEY -> the metadata dict."""
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise ValueError(
            f"checkpoint {path!r}: {METADATA_KEY!r} should be a 0-d unicode string, "
            f"got shape {meta_arr.shape} dtype {meta_arr.dtype}"
        )
    n_chars = meta_arr.dtype.itemsize // 4
    if n_chars > MAX_METADATA_CHARS:
        raise ValueError(
            f"checkpoint {path!r}: metadata is {n_chars} characters, more than "
            f"MAX_METADATA_CHARS={MAX_METADATA_CHARS}"
        )
    # NumPy stores the text as UTF-32 code units; one above U+10FFFF makes
    # str() raise SystemError, and a lone surrogate cannot be JSON. Check them.
    codes = meta_arr.astype(meta_arr.dtype.newbyteorder("<")).reshape(-1).view("<u4")
    if np.any((codes > 0x10FFFF) | ((codes >= 0xD800) & (codes <= 0xDFFF))):
        raise ValueError(f"checkpoint {path!r}: metadata holds invalid Unicode code points")
    try:
        metadata = _parse_strict_json(str(meta_arr[()]))
    except ValueError as e:  # includes json.JSONDecodeError
        raise ValueError(f"checkpoint {path!r}: metadata is not valid JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ValueError(
            f"checkpoint {path!r}: metadata should be a JSON object, "
            f"got {type(metadata).__name__}"
        )
    return metadata


def load_checkpoint(path, expected=None):
    """Load a checkpoint written by save_checkpoint.

    path: the .npz file. expected: None, or {name: (shape, dtype)} or {name: template array}:
    the checkpoint must then hold exactly these arrays with these shapes and dtypes.
    Returns (arrays, metadata): a dict {name: array} of ordinary in-memory arrays (the file is
    closed), and the metadata dict, whose floats are all finite.

    Memory: at most MAX_CHECKPOINT_BYTES for the arrays, whatever the file
    claims (rule 4 of the module docstring), plus a 1 MiB read buffer.

    Raises FileNotFoundError if `path` does not exist, and ValueError, naming the file, if it
    is not a readable .npz checkpoint (not a regular file, not a zip, truncated, corrupt, over
    a size limit, crafted: encrypted or oddly compressed members, duplicate names, .npy
    headers that disagree with the zip directory, pickled objects), has no or invalid
    metadata (not JSON, NaN or infinity, too deeply nested), or does not match `expected`:
    then every missing, unexpected, wrong-shape and wrong-dtype array is listed in one
    message (_validate.array_mismatches).
    """
    path = os.fspath(path)

    def unreadable(e):
        return ValueError(
            f"cannot load checkpoint {path!r}: the .npz archive is damaged or holds "
            f"something other than plain arrays (truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        )

    # What zipfile and NumPy raise for damaged bytes, while opening the archive
    # or reading a member. NotImplementedError: a zip "version needed" field
    # zipfile cannot handle, found while it reads the directory.
    damaged = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError,
               NotImplementedError)

    with open_regular_file(path, "checkpoint file") as f:
        file_size = os.fstat(f.fileno()).st_size
        # Check the first bytes ourselves: they tell the most likely mistakes
        # apart better than any zip error would.
        magic = f.read(6)
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
        if file_size > MAX_CHECKPOINT_BYTES:
            raise ValueError(
                f"cannot load checkpoint {path!r}: it is {file_size} bytes, more than "
                f"MAX_CHECKPOINT_BYTES={MAX_CHECKPOINT_BYTES}"
            )
        try:
            arrays = _read_arrays(f, file_size)
        except _Refused as e:
            raise ValueError(f"cannot load checkpoint {path!r}: {e}") from None
        except damaged as e:
            raise unreadable(e) from e

    if METADATA_KEY not in arrays:
        raise ValueError(
            f"checkpoint {path!r} has no {METADATA_KEY!r} entry; "
            "it was not written by save_checkpoint"
        )
    metadata = _parse_metadata(arrays.pop(METADATA_KEY), path)

    if expected is not None:
        problems = array_mismatches(expected, arrays)
        if problems:
            raise ValueError(
                f"checkpoint {path!r} does not match what was expected:\n  "
                + "\n  ".join(problems)
            )

    return arrays, metadata


# ---------------------------------------------------------- random state


def rng_state_to_json(rng):
    """The state of an np.random.Generator as a JSON-safe dict.

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
