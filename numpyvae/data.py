"""Datasets: the IDX file format, the bundled ``mnist-mini`` set, full MNIST, toy sets.

What is here, top to bottom:

* ``read_idx`` / ``load_idx_pair``: a strict reader for the IDX format that MNIST and
  Fashion-MNIST are distributed in (optionally gzip-compressed).
* ``Dataset`` and ``load_dataset``: one entry point that returns float32 pixels in
  [0, 1], flattened to (N, 784), plus integer labels.
  - ``"mnist-mini"`` (the default) needs no network: the 10,000 official MNIST *test*
    images ship inside the package; the first 8,000 are our training set and the last
    2,000 our test set.
  - ``"mnist"`` is full MNIST (60,000 + 10,000) from a cache folder, downloaded on
    request by ``download_mnist``.
  - ``data_dir=...`` reads any folder of IDX files in the MNIST layout (full MNIST,
    Fashion-MNIST, ...).
* ``make_sin_surface`` / ``make_gaussian_mixture``: small synthetic sets for tutorials.
* ``binarize`` / ``binarize_threshold``: turn grey values into {0, 1} pixels, which is
  what a Bernoulli decoder strictly models.

Randomness always comes from an explicit ``np.random.Generator`` argument, never from
the global ``np.random`` state, so every result can be reproduced from a seed.
"""

import functools
import gzip
import hashlib
import http.client
import math
import os
import struct
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._validate import check_finite_number, check_positive_int, check_rng, float_dtype
from .checkpoint import atomic_writer, open_regular_file, read_into

__all__ = [
    "Dataset", "load_dataset", "DATASET_NAMES",
    "read_idx", "load_idx_pair",
    "download_mnist", "DEFAULT_MIRRORS", "MNIST_CHECKSUMS", "MNIST_FILE_NAMES",
    "make_sin_surface", "make_gaussian_mixture", "gaussian_mixture_centres",
    "binarize", "binarize_threshold",
]


# ---------------------------------------------------------------------------
# The IDX format.
#
#   bytes 0-1   always zero
#   byte  2     data type code (0x08 = unsigned byte, the only one MNIST uses)
#   byte  3     number of dimensions, d
#   then        d big-endian int32 sizes
#   then        the data, row-major, exactly prod(sizes) items
#
# So images start with 00 00 08 03 (0x00000803: uint8, 3-D N x rows x cols) and labels
# with 00 00 08 01 (0x00000801: uint8, 1-D N).
# ---------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8}  # other codes exist (0x09 int8, 0x0D float32, ...); MNIST needs none

# The most data one IDX file may declare: 512 MiB. Full MNIST's largest file (train images)
# declares 47,040,000 bytes and Fashion-MNIST's the same, so this admits them 11 times over,
# while a crafted header (or a gzip "bomb" that inflates to gigabytes) is refused before
# anything that size is allocated. Raise it to read bigger sets, e.g. EMNIST ByClass (547 MB).
MAX_IDX_BYTES = 512 * 2**20


def _read_up_to(f, n):
    """At most ``n`` bytes from ``f``, fewer only at the end of the file."""
    buffer = bytearray(n)
    return bytes(buffer[:read_into(f, buffer)])


def _read_idx_stream(f, path, ndim, file_size, hint):
    """Read an IDX file from the binary stream ``f`` (a plain file or a gzip stream).

    The header comes first and is checked before any data is read; the data go into an
    array of exactly the declared size (at most MAX_IDX_BYTES), then one more byte is
    asked for to prove the stream ends there. So memory is O(declared size), never
    O(what the stream would inflate to). ``file_size`` is the size of a plain file, which
    lets us compare it with the header before reading the data; None for a gzip stream.
    """
    magic = _read_up_to(f, 4)
    if len(magic) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(magic)} bytes, but the magic "
                         "number alone takes 4")
    if magic[0:2] != b"\x00\x00":
        raise ValueError(f"{path}: bad magic number 0x{magic.hex()}: an IDX file starts "
                         f"with two zero bytes (e.g. 0x00000803 for images, 0x00000801 for "
                         f"labels){hint}")
    dtype_code, n_dims = magic[2], magic[3]
    if dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unsupported IDX dtype code 0x{dtype_code:02x} in magic "
                         f"number 0x{magic.hex()}; only 0x08 (uint8) is supported")
    if n_dims == 0:
        raise ValueError(f"{path}: bad magic number 0x{magic.hex()}: it declares 0 dimensions")
    if ndim is not None and n_dims != ndim:
        raise ValueError(f"{path}: bad magic number 0x{magic.hex()}: expected "
                         f"0x{0x800 + ndim:08x} ({ndim}-D), found a {n_dims}-D file")

    header_size = 4 + 4 * n_dims
    sizes = _read_up_to(f, 4 * n_dims)
    if len(sizes) < 4 * n_dims:
        raise ValueError(f"{path}: truncated IDX header: {n_dims} dimensions need "
                         f"{header_size} header bytes, found {4 + len(sizes)}")
    shape = struct.unpack(f">{n_dims}i", sizes)  # big-endian int32
    if any(size < 0 for size in shape):
        raise ValueError(f"{path}: negative dimension in IDX header: shape {shape}")

    expected = math.prod(shape)  # bytes (uint8); Python ints, so no overflow
    if expected > MAX_IDX_BYTES:
        raise ValueError(f"{path}: IDX header declares shape {shape}, {expected} bytes of "
                         f"data, more than the {MAX_IDX_BYTES}-byte limit for one file "
                         "(numpyvae.data.MAX_IDX_BYTES; crafted or damaged header?)")
    if file_size is not None and file_size - header_size != expected:
        found = file_size - header_size
        if found < expected:
            raise ValueError(f"{path}: truncated IDX file: shape {shape} needs {expected} "
                             f"data bytes, found only {found}")
        raise ValueError(f"{path}: {found - expected} extra trailing bytes: shape {shape} "
                         f"needs exactly {expected} data bytes, found {found}")

    data = np.empty(expected, dtype=_IDX_DTYPES[dtype_code])
    found = read_into(f, data)
    if found < expected:
        raise ValueError(f"{path}: truncated IDX file: shape {shape} needs {expected} data "
                         f"bytes, found only {found}")
    if f.read(1):  # at most one byte more, however long the rest would be
        raise ValueError(f"{path}: extra trailing bytes: shape {shape} needs exactly "
                         f"{expected} data bytes, but the file holds more")
    return data.reshape(shape)


def read_idx(path, ndim=None):
    """Read one IDX file (raw or gzip-compressed) into a uint8 array.

    path: a regular file (str or os.PathLike). Gzip is recognised by the content (the magic
    bytes 1f 8b), not the name, so a gzip file saved without ``.gz`` (browsers do that) still
    works. ndim: None, or the number of dimensions the file must declare (3 for an image file,
    1 for a label file). Returns a fresh, writable uint8 array with the shape stored in the
    file, e.g. (10000, 28, 28) for MNIST test images or (10000,) for its labels.

    Memory: the returned array and a 1 MiB read buffer. The header is checked before any
    data is read, and a header declaring more than ``MAX_IDX_BYTES`` (512 MiB) is refused.

    Raises FileNotFoundError if ``path`` does not exist, and ValueError, naming the file and
    what was expected vs found, if it is not a regular file, the magic number is wrong, the
    dtype code is not 0x08 (uint8), the header declares more than ``MAX_IDX_BYTES``, the data
    is shorter or longer than the header says, or the gzip stream is corrupt.
    """
    path = Path(path)
    with open_regular_file(path, "IDX file") as f:
        compressed = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        if not compressed:
            hint = " (the name ends in .gz but the content is not gzip)" \
                if path.name.endswith(".gz") else ""
            return _read_idx_stream(f, path, ndim, os.fstat(f.fileno()).st_size, hint)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_idx_stream(stream, path, ndim, None, "")
        except (OSError, EOFError, zlib.error) as err:
            # OSError: bad header or CRC; EOFError: cut-off stream; zlib.error: garbled data.
            raise ValueError(f"{path}: corrupt gzip stream ({type(err).__name__}: {err}); "
                             "the file is damaged or incompletely downloaded") from err


def load_idx_pair(images_path, labels_path):
    """Read a matching (images, labels) pair of IDX files.

    Returns ``(images, labels)``: uint8 arrays of shapes (N, rows, cols) and (N,).
    Raises ValueError if the images are not 3-D, the labels not 1-D, the two files
    hold different numbers of examples, there are no images (N = 0) or an image has no
    pixels (rows or cols = 0). Label values are not checked (any uint8).
    """
    images = read_idx(images_path, ndim=3)
    n_images, rows, cols = images.shape
    if n_images == 0:
        raise ValueError(f"{images_path} holds 0 images; a data set needs at least one")
    if rows == 0 or cols == 0:
        raise ValueError(f"{images_path}: its images are {rows}x{cols} pixels; both sizes "
                         "must be positive")
    labels = read_idx(labels_path, ndim=1)
    if n_images != labels.shape[0]:
        raise ValueError(f"image/label count mismatch: {images_path} holds {n_images} "
                         f"images but {labels_path} holds {labels.shape[0]} labels")
    return images, labels


def _to_unit_float(images):
    """uint8 (N, rows, cols) -> float32 (N, rows * cols) grey values in [0, 1]."""
    n, rows, cols = images.shape
    x = images.reshape(n, rows * cols).astype(np.float32)  # astype makes a new array
    x /= np.float32(255.0)  # in place: stays float32, 255 -> exactly 1.0
    return x


# ---------------------------------------------------------------------------
# The Dataset container.
# ---------------------------------------------------------------------------

@dataclass
class Dataset:
    """A train/test split ready for training.

    Fields
    ------
    name : str
    x_train : (N_train, D) float32 array; for image sets grey values in [0, 1], D = rows * cols
    y_train : (N_train,) int64 labels, or None for unlabelled sets
    x_test, y_test : the same for the test split
    image_shape : (rows, cols) to reshape one row of x back into a picture; None when the
        points are not images (synthetic sets)
    source : one line of provenance (where the data comes from, licence, split)
    """

    name: str
    x_train: np.ndarray
    y_train: "np.ndarray | None"
    x_test: np.ndarray
    y_test: "np.ndarray | None"
    image_shape: "tuple[int, int] | None" = None
    source: str = ""

    @property
    def input_dim(self):
        """D, the length of one flattened example (784 for 28x28 images)."""
        return int(self.x_train.shape[1])

    def __repr__(self):
        # The default dataclass repr would print the arrays; the shapes say more.
        return (f"Dataset(name={self.name!r}, x_train={self.x_train.shape} {self.x_train.dtype}, "
                f"x_test={self.x_test.shape}, image_shape={self.image_shape}, "
                f"source={self.source!r})")


# ---------------------------------------------------------------------------
# mnist-mini: the bundled offline default.
# ---------------------------------------------------------------------------

MNIST_MINI_DIR = Path(__file__).resolve().parent / "datasets" / "mnist"
MNIST_MINI_N_TRAIN = 8000  # first 8,000 of the 10,000 test images; the last 2,000 are the test split
MNIST_MINI_SOURCE = ("MNIST test set (LeCun, Cortes, Burges; CC BY-SA 3.0): "
                     "first 8000 train / last 2000 test")

# sha256 of the bundled files, byte for byte the official t10k files.
_BUNDLED_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


def _file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _load_mnist_mini_uint8():
    """Decode the bundled files once per process: uint8 images (10000, 28, 28) and labels
    (10000,). Both are made read-only because every caller shares this cached copy."""
    paths = {}
    for filename, expected in _BUNDLED_SHA256.items():
        path = MNIST_MINI_DIR / filename
        if not path.is_file():
            raise FileNotFoundError(f"bundled dataset file {path} is missing: numpyvae was "
                                    "installed without its package data; reinstall it")
        found = _file_digest(path, "sha256")
        if found != expected:
            raise RuntimeError(f"bundled dataset file {path} is corrupt: sha256 {found}, "
                               f"expected {expected}; reinstall numpyvae")
        paths[filename] = path
    images, labels = load_idx_pair(paths["t10k-images-idx3-ubyte.gz"],
                                   paths["t10k-labels-idx1-ubyte.gz"])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _load_mnist_mini():
    images, labels = _load_mnist_mini_uint8()
    # _to_unit_float and astype build new arrays, so callers may modify what they get
    # without touching the cache.
    x, y = _to_unit_float(images), labels.astype(np.int64)
    n = MNIST_MINI_N_TRAIN
    return Dataset(name="mnist-mini", x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:],
                   image_shape=images.shape[1:], source=MNIST_MINI_SOURCE)


# ---------------------------------------------------------------------------
# Folders of IDX files in the MNIST layout (full MNIST, Fashion-MNIST, ...).
# ---------------------------------------------------------------------------

MNIST_FILE_NAMES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def _find_mnist_layout(folder):
    """Map each name in MNIST_FILE_NAMES to an existing file, ``name.gz`` or ``name``."""
    folder = Path(folder).expanduser()
    found, missing = {}, []
    for name in MNIST_FILE_NAMES:
        for candidate in (folder / (name + ".gz"), folder / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def _load_mnist_layout(folder, name, source):
    found, missing = _find_mnist_layout(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing IDX files {', '.join(n + '[.gz]' for n in missing)}; a data "
            f"folder must hold all of: {', '.join(n + '[.gz]' for n in MNIST_FILE_NAMES)}")
    train_images, train_labels = load_idx_pair(found["train-images-idx3-ubyte"],
                                               found["train-labels-idx1-ubyte"])
    test_images, test_labels = load_idx_pair(found["t10k-images-idx3-ubyte"],
                                             found["t10k-labels-idx1-ubyte"])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"{folder}: train images are {train_images.shape[1:]} but test images "
                         f"are {test_images.shape[1:]}")
    return Dataset(name=name,
                   x_train=_to_unit_float(train_images), y_train=train_labels.astype(np.int64),
                   x_test=_to_unit_float(test_images), y_test=test_labels.astype(np.int64),
                   image_shape=train_images.shape[1:], source=source)


# ---------------------------------------------------------------------------
# Downloading full MNIST.
# ---------------------------------------------------------------------------

# The original yann.lecun.com host now refuses unauthenticated downloads; these two
# mirrors serve the identical gzip files.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# Published size in bytes and md5 of each file; a download must match both.
MNIST_CHECKSUMS = {
    "train-images-idx3-ubyte.gz": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}

DOWNLOAD_TIMEOUT = 60  # seconds without data before a mirror counts as failed


def _fetch_verified(url, final_path, n_bytes, md5, opener):
    """Download ``url`` into ``final_path``, all or nothing.

    The bytes go through checkpoint.atomic_writer: they are checked against the expected size
    and md5 before the block ends, and a failed check, like any error or Ctrl-C, discards them,
    so a half-written or wrong file never sits under the final name.
    """
    h, size = hashlib.md5(), 0
    with atomic_writer(final_path) as out, opener(url, timeout=DOWNLOAD_TIMEOUT) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            size += len(chunk)
            if size > n_bytes:  # stop early rather than fill the disk with a wrong file
                raise ValueError(f"more than the expected {n_bytes} bytes")
            h.update(chunk)
            out.write(chunk)
        if size != n_bytes:
            raise ValueError(f"got {size} bytes, expected {n_bytes}")
        if h.hexdigest() != md5:
            raise ValueError(f"md5 {h.hexdigest()}, expected {md5}")


def download_mnist(cache_dir, base_urls=DEFAULT_MIRRORS, opener=urllib.request.urlopen, log=None):
    """Download the four full-MNIST gzip files into ``cache_dir`` and verify them.

    cache_dir: a folder (str or os.PathLike), created if needed. base_urls: mirrors tried in
    order; each is a folder URL the file names are appended to (``file://`` URLs work too,
    which is how the tests run offline). opener: called as ``opener(url, timeout=seconds)``, it
    must return a context manager with ``read(n)``; ``urllib.request.urlopen`` by default.
    log: None, or a callable taking one short message per file (e.g. ``print``).

    A file already present with the right md5 is not fetched again; one with the wrong
    md5 is replaced. Each download is checked against the published size and md5
    (``MNIST_CHECKSUMS``) before it takes its final name.

    Returns the cache folder as a ``Path``. Raises RuntimeError listing every mirror's
    failure if some file could not be fetched from any mirror.
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(base_urls, str):
        base_urls = (base_urls,)
    for filename, (n_bytes, md5) in MNIST_CHECKSUMS.items():
        final_path = cache_dir / filename
        if final_path.is_file() and _file_digest(final_path, "md5") == md5:
            continue
        failures = []
        for base in base_urls:
            url = base if base.endswith("/") else base + "/"
            url += filename
            if log is not None:
                log(f"downloading {url}")
            try:
                _fetch_verified(url, final_path, n_bytes, md5, opener)
                break
            except (OSError, ValueError, http.client.HTTPException) as err:
                # OSError covers URLError, HTTPError and timeouts; ValueError a bad URL or
                # a failed size/md5 check. Either way: try the next mirror.
                failures.append(f"  {url}: {type(err).__name__}: {err}")
        else:
            raise RuntimeError(f"could not download {filename} from any mirror:\n"
                               + "\n".join(failures))
    return cache_dir


def _mnist_cache_dir(cache_dir=None):
    """Where full MNIST lives: ``cache_dir``, else $NUMPYVAE_DATA_DIR, else ~/.cache/numpyvae/mnist.
    The four files sit directly in this folder."""
    if cache_dir is None:
        cache_dir = os.environ.get("NUMPYVAE_DATA_DIR") or "~/.cache/numpyvae/mnist"
    return Path(cache_dir).expanduser()


# ---------------------------------------------------------------------------
# One entry point.
# ---------------------------------------------------------------------------

DATASET_NAMES = ("mnist-mini", "mnist")


def load_dataset(name="mnist-mini", data_dir=None, cache_dir=None, download=False):
    """Load a dataset as a ``Dataset`` with float32 x in [0, 1] of shape (N, 784) and int64 labels.

    * ``name="mnist-mini"`` (default): bundled with the package, no network, no files
      needed. 8,000 train / 2,000 test images (the official MNIST test set, split in
      file order).
    * ``name="mnist"``: full MNIST, 60,000 train / 10,000 test, read from the cache folder
      (``cache_dir``, else $NUMPYVAE_DATA_DIR, else ~/.cache/numpyvae/mnist). With
      ``download=True`` missing files are downloaded and verified first.
    * ``data_dir=...`` (any ``name``, used only as the label): read the four IDX files of
      the MNIST layout, ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
      ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``, from that folder.
      Works for Fashion-MNIST, whose files carry the same names.

    ``cache_dir`` only matters for ``"mnist"``. ``download=True`` is only allowed for
    ``"mnist"`` without ``data_dir``: anywhere else it would be silently meaningless.

    Every call returns fresh arrays the caller may modify; mnist-mini is decoded once per
    process and kept in memory (as read-only uint8), so repeated calls are cheap.
    """
    if download and (data_dir is not None or name != "mnist"):
        raise ValueError("download=True only applies to name='mnist' without data_dir "
                         f"(got name={name!r}, data_dir={data_dir!r})")
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        return _load_mnist_layout(folder, name, source=f"IDX files in {folder} (MNIST layout)")
    if name == "mnist-mini":
        return _load_mnist_mini()
    if name == "mnist":
        folder = _mnist_cache_dir(cache_dir)
        if download:
            download_mnist(folder, base_urls=DEFAULT_MIRRORS)  # read the global now, not at import
        found, missing = _find_mnist_layout(folder)
        if missing:
            raise FileNotFoundError(
                f"full MNIST not found in {folder} (missing {', '.join(missing)}). Download it "
                "with `numpyvae train --dataset mnist --download` or load_dataset('mnist', "
                "download=True), or point --data-dir / data_dir= at a folder that already "
                "holds the IDX files.")
        return _load_mnist_layout(
            folder, "mnist",
            source=f"MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0): 60000 train / 10000 test, from {folder}")
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)} "
                     "(or pass data_dir= for a folder of IDX files, e.g. Fashion-MNIST)")


# ---------------------------------------------------------------------------
# Synthetic sets for tutorials.
# ---------------------------------------------------------------------------

def _check_count(n):
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    return int(n)


def make_sin_surface(n, rng, noise=0.0, low=-3.0, high=3.0, dtype=np.float32):
    """Points on the surface z = sin(x + y): a 2-D manifold curled up in 3-D.

    x and y are uniform in [low, high); z = sin(x + y), plus N(0, noise^2) when
    noise > 0. z is computed from the already-rounded x and y in ``dtype``, so with
    noise=0 every returned row satisfies ``z == np.sin(x + y)`` exactly.

    Returns an (n, 3) array of ``dtype`` (float32 by default).
    """
    check_rng(rng)
    n = _check_count(n)
    dtype = float_dtype(dtype)
    noise = check_finite_number(noise, "noise", low=0.0)
    low, high = check_finite_number(low, "low"), check_finite_number(high, "high")
    if not low < high:
        raise ValueError(f"need low < high; got low={low!r}, high={high!r}")
    with np.errstate(over="ignore", invalid="ignore"):     # overflow is refused below
        xy = rng.uniform(low, high, size=(n, 2)).astype(dtype)
        z = np.sin(xy[:, 0] + xy[:, 1])
        if noise > 0:
            z = z + (noise * rng.standard_normal(n)).astype(dtype)
        points = np.column_stack([xy, z]).astype(dtype, copy=False)
    return _finite_points(points, f"low={low!r}, high={high!r} and noise={noise!r}")


def _finite_points(points, what):
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{what} give points beyond the {points.dtype.name} range")
    return points


def gaussian_mixture_centres(n_components=8, radius=4.0):
    """(n_components, 2) float64 centres equally spaced on a circle: centre k is at angle
    2 pi k / n_components, distance ``radius`` from the origin."""
    n_components = check_positive_int(n_components, "n_components")
    radius = check_finite_number(radius, "radius")
    angles = 2.0 * np.pi * np.arange(n_components) / n_components
    return radius * np.column_stack([np.cos(angles), np.sin(angles)])


def make_gaussian_mixture(n, rng, n_components=8, radius=4.0, std=0.5, dtype=np.float32):
    """Samples from a ring of equally weighted isotropic Gaussians in 2-D.

    Each point picks a component k uniformly at random, then is drawn from
    N(centre_k, std^2 I) with centre_k from ``gaussian_mixture_centres``.

    Returns ``(points, labels)``: (n, 2) ``dtype`` (float32 by default) and (n,) int64
    component indices.
    """
    check_rng(rng)
    n = _check_count(n)
    dtype = float_dtype(dtype)
    centres = gaussian_mixture_centres(n_components, radius)
    std = check_finite_number(std, "std", low=0.0)
    labels = rng.integers(0, n_components, size=n, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):     # overflow is refused below
        points = (centres[labels] + std * rng.standard_normal((n, 2))).astype(dtype)
    return _finite_points(points, f"radius={radius!r} and std={std!r}"), labels


# ---------------------------------------------------------------------------
# Pixel binarisation.
# ---------------------------------------------------------------------------

def _check_unit_interval(x):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be floating-point grey values in [0, 1]; got dtype {x.dtype} "
                        "(for uint8 pixels divide by 255 first)")
    if x.size and not (x.min() >= 0 and x.max() <= 1):  # written so that NaN fails too
        raise ValueError(f"x: grey values must lie in [0, 1]; found min {x.min()}, max {x.max()}")
    return x


def binarize(x, rng):
    """Stochastic binarisation: each pixel becomes 1 with probability equal to its grey value.

    ``x`` is a float array of any shape with values in [0, 1]; the result has the same
    shape and dtype, with values in {0, 1}. Its expectation is x itself.

    Call it once with a fixed seed for *static* binarisation (one fixed binary dataset),
    or once per epoch for *dynamic* binarisation (fresh samples each time, which acts as
    data augmentation and reduces overfitting).
    """
    check_rng(rng)
    x = _check_unit_interval(x)
    # Draw uniforms in the same precision as x; u < p happens with probability p.
    u = rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64)
    return (u < x).astype(x.dtype)


def binarize_threshold(x, t=0.5):
    """Deterministic binarisation: 1 where x > t, else 0. Same shape and dtype as x."""
    x = _check_unit_interval(x)
    t = check_finite_number(t, "threshold t", low=0.0, high=1.0)
    return (x > t).astype(x.dtype)
