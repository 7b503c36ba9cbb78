"""Tests for numpyvae.data. Offline and fast: the network is never touched (downloads use
file:// URLs into a temporary folder)."""

import gzip
import hashlib
import os
import shutil
import struct
import urllib.request

import numpy as np
import pytest

from conftest import error_reading_fifo
from numpyvae import data

BUNDLED = data.MNIST_MINI_DIR
IMAGES_GZ = BUNDLED / "t10k-images-idx3-ubyte.gz"
LABELS_GZ = BUNDLED / "t10k-labels-idx1-ubyte.gz"

# Copied by hand from /work/shared/data/mnist/README.md, independently of data.py's constants.
README_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
README_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, array, compress=False):
    """Tiny IDX writer: magic 00 00 08 <ndim>, big-endian int32 dims, raw uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = (bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
               + array.tobytes())
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.fixture
def labels_raw():
    """The uncompressed bytes of the bundled label file (small: 10,008 bytes)."""
    return gzip.decompress(LABELS_GZ.read_bytes())


@pytest.fixture
def fresh_cache():
    """Empty the mnist-mini cache before and after, so checks at load time really run."""
    data._load_mnist_mini_uint8.cache_clear()
    yield
    data._load_mnist_mini_uint8.cache_clear()


# ---------------------------------------------------------------------------
# mnist-mini
# ---------------------------------------------------------------------------

def test_bundled_files_match_readme_sha256():
    for name, sha in README_SHA256.items():
        assert hashlib.sha256((BUNDLED / name).read_bytes()).hexdigest() == sha
    assert data._BUNDLED_SHA256 == README_SHA256


def test_mnist_mini_shapes_dtype_range():
    ds = data.load_dataset()
    assert ds.name == "mnist-mini"
    assert ds.x_train.shape == (8000, 784) and ds.x_test.shape == (2000, 784)
    assert ds.y_train.shape == (8000,) and ds.y_test.shape == (2000,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0  # MNIST uses the full 0..255 range
    assert ds.image_shape == (28, 28) and ds.input_dim == 784
    assert "MNIST" in ds.source and "CC BY-SA 3.0" in ds.source


def test_mnist_mini_label_counts_match_readme():
    ds = data.load_dataset("mnist-mini")
    y = np.concatenate([ds.y_train, ds.y_test])
    assert np.bincount(y, minlength=10).tolist() == README_LABEL_COUNTS


def test_mnist_mini_split_is_first_8000_then_last_2000():
    ds = data.load_dataset("mnist-mini")
    images = data.read_idx(IMAGES_GZ)
    labels = data.read_idx(LABELS_GZ)
    expected = images.reshape(10000, 784).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds.x_train, expected[:8000])
    np.testing.assert_array_equal(ds.x_test, expected[8000:])
    np.testing.assert_array_equal(ds.y_train, labels[:8000])
    np.testing.assert_array_equal(ds.y_test, labels[8000:])


def test_mnist_mini_cache_cannot_be_corrupted_by_caller():
    first = data.load_dataset("mnist-mini")
    first.x_train[:] = -1.0
    first.y_test[:] = 99
    second = data.load_dataset("mnist-mini")
    assert second.x_train.min() == 0.0 and second.y_test.max() == 9
    cached_images, _ = data._load_mnist_mini_uint8()
    assert not cached_images.flags.writeable


def test_bundled_sha256_mismatch_is_detected(monkeypatch, fresh_cache):
    monkeypatch.setitem(data._BUNDLED_SHA256, "t10k-labels-idx1-ubyte.gz", "0" * 64)
    with pytest.raises(RuntimeError, match="corrupt: sha256"):
        data.load_dataset("mnist-mini")


def test_bundled_file_missing_is_reported(monkeypatch, tmp_path, fresh_cache):
    monkeypatch.setattr(data, "MNIST_MINI_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="package data"):
        data.load_dataset("mnist-mini")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="mnist-mini, mnist"):
        data.load_dataset("cifar")


def test_download_flag_rejected_where_meaningless(tmp_path):
    with pytest.raises(ValueError, match="download"):
        data.load_dataset("mnist-mini", download=True)
    with pytest.raises(ValueError, match="download"):
        data.load_dataset("mnist", data_dir=tmp_path, download=True)


# ---------------------------------------------------------------------------
# read_idx
# ---------------------------------------------------------------------------

def test_read_idx_raw_and_gzip_agree(tmp_path, labels_raw):
    raw_path = tmp_path / "labels-raw"
    raw_path.write_bytes(labels_raw)
    from_gz = data.read_idx(LABELS_GZ)
    from_raw = data.read_idx(raw_path)
    assert from_gz.dtype == np.uint8 and from_gz.shape == (10000,)
    np.testing.assert_array_equal(from_gz, from_raw)
    assert from_raw.flags.writeable


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "no-extension", arr, compress=True)
    np.testing.assert_array_equal(data.read_idx(path), arr)


def test_read_idx_image_file_shape():
    images = data.read_idx(IMAGES_GZ, ndim=3)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8


def test_truncated_file(tmp_path, labels_raw):
    path = tmp_path / "short"
    path.write_bytes(labels_raw[:-3])
    with pytest.raises(ValueError, match="truncated.*10000 data bytes, found only 9997") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_header(tmp_path, labels_raw):
    path = tmp_path / "short-header"
    path.write_bytes(labels_raw[:6])
    with pytest.raises(ValueError, match="truncated IDX header"):
        data.read_idx(path)


def test_extra_trailing_bytes(tmp_path, labels_raw):
    path = tmp_path / "long"
    path.write_bytes(labels_raw + b"\x00\x00")
    with pytest.raises(ValueError, match="2 extra trailing bytes") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_bad_magic(tmp_path, labels_raw):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x12\x34" + labels_raw[2:])
    with pytest.raises(ValueError, match="bad magic number 0x12340801") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_wrong_number_of_dimensions_for_role(labels_raw, tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(labels_raw)
    with pytest.raises(ValueError, match="expected 0x00000803"):
        data.read_idx(path, ndim=3)


def test_unsupported_dtype_code(tmp_path, labels_raw):
    path = tmp_path / "float-idx"
    path.write_bytes(labels_raw[:2] + b"\x0d" + labels_raw[3:])  # 0x0D = float32 in IDX
    with pytest.raises(ValueError, match="dtype code 0x0d"):
        data.read_idx(path)


def test_corrupt_gzip_stream(tmp_path):
    blob = bytearray(LABELS_GZ.read_bytes())
    for i in range(100, 140):  # scribble over the deflate data, past the gzip header
        blob[i] ^= 0xFF
    path = tmp_path / "garbled.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt gzip") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_cut_off_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(LABELS_GZ.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt gzip"):
        data.read_idx(path)


def test_load_idx_pair_count_mismatch(tmp_path):
    images = write_idx(tmp_path / "img", np.zeros((3, 2, 2), np.uint8))
    labels = write_idx(tmp_path / "lab", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        data.load_idx_pair(images, labels)
    with pytest.raises(ValueError, match="magic"):
        data.load_idx_pair(labels, labels)  # a 1-D file where 3-D images belong


def test_gzip_with_extra_trailing_data(tmp_path, labels_raw):
    path = tmp_path / "long.gz"
    path.write_bytes(gzip.compress(labels_raw + b"\x00\x00"))
    with pytest.raises(ValueError, match="extra trailing bytes.*10000 data bytes") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_header_declaring_more_than_the_limit_is_refused_before_reading(tmp_path):
    # Full MNIST's largest file (60000 x 28 x 28) is well inside the limit: a cut-off
    # copy of its header is "truncated", not "over the limit"...
    path = tmp_path / "header-only"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3i", 60000, 28, 28))
    with pytest.raises(ValueError, match="truncated IDX file"):
        data.read_idx(path)
    # ...while a header declaring one byte more than MAX_IDX_BYTES is refused as such.
    rows = data.MAX_IDX_BYTES + 1
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3i", 1, rows, 1))
    with pytest.raises(ValueError, match=f"{rows} bytes of data, more than the") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "t10k-labels-idx1-ubyte"
    error = error_reading_fifo(data.read_idx, fifo)
    assert isinstance(error, ValueError), error
    assert "FIFO" in str(error) and str(fifo) in str(error)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope-idx"):
        data.read_idx(tmp_path / "nope-idx")


# ---------------------------------------------------------------------------
# data_dir and full-MNIST loading
# ---------------------------------------------------------------------------

def write_mnist_layout(folder, n_train=5, n_test=3, shape=(4, 3), compress=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if compress else "")), arr, compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_load_from_data_dir(tmp_path, compress):
    arrays = write_mnist_layout(tmp_path, compress=compress)
    ds = data.load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.name == "fashion-mnist" and ds.image_shape == (4, 3) and ds.input_dim == 12
    assert ds.x_train.shape == (5, 12) and ds.x_test.shape == (3, 12)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(
        ds.x_train, arrays["train-images-idx3-ubyte"].reshape(5, 12).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("which", ["train", "t10k"])
def test_data_dir_with_zero_images_names_the_file(tmp_path, compress, which):
    sizes = {"n_train": 0} if which == "train" else {"n_test": 0}
    write_mnist_layout(tmp_path, compress=compress, **sizes)
    name = f"{which}-images-idx3-ubyte" + (".gz" if compress else "")
    with pytest.raises(ValueError, match=f"{name} holds 0 images"):
        data.load_dataset(data_dir=tmp_path)


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_data_dir_with_empty_images_names_the_file(tmp_path, shape):
    write_mnist_layout(tmp_path, shape=shape)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: its images are \d+x\d+ pixels"):
        data.load_dataset(data_dir=tmp_path)


def test_to_unit_float_handles_an_empty_batch():
    out = data._to_unit_float(np.zeros((0, 2, 3), np.uint8))
    assert out.shape == (0, 6) and out.dtype == np.float32


def test_data_dir_missing_files_are_listed(tmp_path):
    write_mnist_layout(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing IDX files t10k-labels-idx1-ubyte\[\.gz\]"):
        data.load_dataset(data_dir=tmp_path)


def test_full_mnist_missing_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPYVAE_DATA_DIR", str(tmp_path / "from-env"))
    with pytest.raises(FileNotFoundError, match="--download") as err:
        data.load_dataset("mnist")
    assert "from-env" in str(err.value)  # the environment variable picked the folder
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load_dataset("mnist", cache_dir=tmp_path / "explicit")


def test_full_mnist_loads_from_cache_dir(tmp_path):
    write_mnist_layout(tmp_path, n_train=6, n_test=2, shape=(28, 28), compress=True)
    ds = data.load_dataset("mnist", cache_dir=tmp_path)
    assert ds.name == "mnist" and ds.x_train.shape == (6, 784) and ds.x_test.shape == (2, 784)


# ---------------------------------------------------------------------------
# Downloader (file:// URLs only)
# ---------------------------------------------------------------------------

def fake_train_files():
    """Small valid gzip IDX files standing in for the 10 MB training files."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 6, dtype=np.uint8)
    header_i = bytes([0, 0, 8, 3]) + struct.pack(">3i", 6, 28, 28)
    header_l = bytes([0, 0, 8, 1]) + struct.pack(">i", 6)
    return {
        "train-images-idx3-ubyte.gz": gzip.compress(header_i + images.tobytes(), mtime=0),
        "train-labels-idx1-ubyte.gz": gzip.compress(header_l + labels.tobytes(), mtime=0),
    }


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A folder serving all four files, with the checksum table patched for the fake
    train files (the t10k files are the real ones, checked against the real md5)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    shutil.copy(IMAGES_GZ, folder)
    shutil.copy(LABELS_GZ, folder)
    for name, blob in fake_train_files().items():
        (folder / name).write_bytes(blob)
        monkeypatch.setitem(data.MNIST_CHECKSUMS, name, (len(blob), hashlib.md5(blob).hexdigest()))
    return folder


def url_of(folder):
    return folder.as_uri() + "/"


def leftovers(folder):
    """Temporary files of checkpoint.atomic_writer (".NAME.XXXXXXXX.tmp") left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_published_checksums_are_the_readme_ones():
    assert data.MNIST_CHECKSUMS == {
        "train-images-idx3-ubyte.gz": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": (1648877, "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
    }


def test_download_places_verified_files(tmp_path, mirror):
    cache = tmp_path / "cache" / "mnist"
    assert data.download_mnist(cache, base_urls=[url_of(mirror)]) == cache
    for name in data.MNIST_CHECKSUMS:
        assert (cache / name).read_bytes() == (mirror / name).read_bytes()
    assert leftovers(cache) == []
    ds = data.load_dataset("mnist", cache_dir=cache)
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (10000, 784)


def test_download_rejects_wrong_md5_and_leaves_no_file(tmp_path, mirror, monkeypatch):
    name = "train-labels-idx1-ubyte.gz"
    size, _ = data.MNIST_CHECKSUMS[name]
    # Right size, wrong content: only the md5 check can catch it.
    monkeypatch.setitem(data.MNIST_CHECKSUMS, name, (size, "0" * 32))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=f"(?s)could not download {name}.*md5 [0-9a-f]{{32}}, expected 0{{32}}"):
        data.download_mnist(cache, base_urls=[url_of(mirror)])
    assert not (cache / name).exists()
    assert leftovers(cache) == []


@pytest.mark.parametrize("blob, message", [
    (b"x" * 10_000, "more than the expected 4542 bytes"),  # aborted while streaming
    (LABELS_GZ.read_bytes()[:-1], "got 4541 bytes, expected 4542"),  # cut short
])
def test_download_rejects_wrong_size(tmp_path, mirror, blob, message):
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(blob)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=message):
        data.download_mnist(cache, base_urls=[url_of(mirror)])
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists() and leftovers(cache) == []


def test_download_falls_back_to_next_mirror(tmp_path, mirror):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(b"not mnist")  # wrong bytes; others missing
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return urllib.request.urlopen(url, timeout=timeout)

    cache = tmp_path / "cache"
    data.download_mnist(cache, base_urls=[url_of(bad), url_of(mirror)], opener=opener)
    for name in data.MNIST_CHECKSUMS:
        assert (cache / name).read_bytes() == (mirror / name).read_bytes()
    assert len(calls) == 8 and sum(url.startswith(url_of(bad)) for url in calls) == 4
    assert leftovers(cache) == []


def test_download_all_mirrors_fail(tmp_path):
    cache = tmp_path / "cache"
    missing = [url_of(tmp_path / "nowhere-1"), url_of(tmp_path / "nowhere-2")]
    with pytest.raises(RuntimeError, match="nowhere-1.*\n.*nowhere-2"):
        data.download_mnist(cache, base_urls=missing)
    assert list(cache.iterdir()) == []


def test_download_skips_good_files_and_replaces_bad_ones(tmp_path, mirror):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(IMAGES_GZ, cache)                                   # good: keep
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")     # bad: re-fetch
    calls = []

    def opener(url, timeout):
        calls.append(url.rsplit("/", 1)[1])
        return urllib.request.urlopen(url, timeout=timeout)

    data.download_mnist(cache, base_urls=[url_of(mirror)], opener=opener)
    assert "t10k-images-idx3-ubyte.gz" not in calls and len(calls) == 3
    assert (cache / "t10k-labels-idx1-ubyte.gz").read_bytes() == LABELS_GZ.read_bytes()


def test_interrupted_download_leaves_nothing(tmp_path, mirror):
    class Interrupted(Exception):
        pass

    class BrokenResponse:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            raise Interrupted  # not an error the mirror loop catches: it must propagate

    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        data.download_mnist(cache, base_urls=[url_of(mirror)], opener=lambda url, timeout: BrokenResponse())
    assert list(cache.iterdir()) == []


def test_load_dataset_download_uses_mirrors(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(data, "DEFAULT_MIRRORS", (url_of(mirror),))
    ds = data.load_dataset("mnist", cache_dir=tmp_path / "c", download=True)
    assert ds.x_train.shape == (6, 784) and ds.y_test.shape == (10000,)


# ---------------------------------------------------------------------------
# Synthetic sets
# ---------------------------------------------------------------------------

def test_sin_surface_exact_without_noise():
    pts = data.make_sin_surface(500, np.random.default_rng(0))
    assert pts.shape == (500, 3) and pts.dtype == np.float32
    np.testing.assert_array_equal(pts[:, 2], np.sin(pts[:, 0] + pts[:, 1]))
    assert pts[:, :2].min() >= -3.0 and pts[:, :2].max() <= 3.0


def test_sin_surface_noise_and_range():
    rng = np.random.default_rng(1)
    pts = data.make_sin_surface(20_000, rng, noise=0.1, low=0.0, high=1.0)
    assert pts[:, :2].min() >= 0.0 and pts[:, :2].max() <= 1.0
    resid = pts[:, 2] - np.sin(pts[:, 0].astype(np.float64) + pts[:, 1])
    # Sample std of 20,000 normals has relative standard error ~1/sqrt(2n) = 0.5%; allow 5%.
    assert abs(resid.std() - 0.1) < 0.005


def test_sin_surface_is_reproducible():
    a = data.make_sin_surface(50, np.random.default_rng(7), noise=0.3)
    b = data.make_sin_surface(50, np.random.default_rng(7), noise=0.3)
    np.testing.assert_array_equal(a, b)


def test_gaussian_mixture_labels_and_means():
    n, k, radius, std = 16_000, 8, 4.0, 0.5
    pts, labels = data.make_gaussian_mixture(n, np.random.default_rng(0), k, radius, std)
    assert pts.shape == (n, 2) and pts.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(k))
    centres = data.gaussian_mixture_centres(k, radius)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), radius)
    np.testing.assert_allclose(centres[0], [radius, 0.0])
    for j in range(k):
        members = pts[labels == j].astype(np.float64)
        # Each coordinate of the sample mean has standard error std / sqrt(n_j); a
        # 5-sigma bound fails by chance with probability ~6e-7 per coordinate.
        tol = 5 * std / np.sqrt(len(members))
        assert np.all(np.abs(members.mean(axis=0) - centres[j]) < tol)
        # Per-coordinate sample std of ~2000 normals: relative standard error ~1.6%; allow 10%.
        assert np.all(np.abs(members.std(axis=0) - std) < 0.1 * std)


def test_rng_must_be_a_generator():
    for bad in (None, 0, np.random.RandomState(0)):
        with pytest.raises(TypeError, match="Generator"):
            data.make_sin_surface(3, bad)
        with pytest.raises(TypeError, match="Generator"):
            data.make_gaussian_mixture(3, bad)
        with pytest.raises(TypeError, match="Generator"):
            data.binarize(np.zeros(3, np.float32), bad)


# ---------------------------------------------------------------------------
# Binarisation
# ---------------------------------------------------------------------------

def test_binarize_values_dtype_and_mean():
    rng = np.random.default_rng(0)
    x = (rng.random((2000, 50)) ** 2).astype(np.float32)  # mean 1/3: asymmetric, so b = (u > x) would fail
    b = data.binarize(x, np.random.default_rng(1))
    assert b.dtype == np.float32 and b.shape == x.shape
    assert set(np.unique(b)) <= {0.0, 1.0}
    # Pixels are independent Bernoulli(x_i): Var(mean b) = sum x_i (1 - x_i) / N^2.
    # A 5-sigma bound on |mean b - mean x| fails by chance with probability ~6e-7.
    sigma = np.sqrt(np.sum(x * (1 - x), dtype=np.float64)) / x.size
    assert abs(b.mean(dtype=np.float64) - x.mean(dtype=np.float64)) < 5 * sigma


def test_binarize_extremes_are_exact():
    x = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float64)
    np.testing.assert_array_equal(data.binarize(x, np.random.default_rng(3)), x)
    assert data.binarize(x, np.random.default_rng(3)).dtype == np.float64


def test_binarize_reproducible_from_seed_and_redrawn_otherwise():
    x = data.load_dataset().x_test[:100]
    a = data.binarize(x, np.random.default_rng(42))
    b = data.binarize(x, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(42)
    assert not np.array_equal(data.binarize(x, rng), data.binarize(x, rng))  # dynamic: new draw


def test_binarize_rejects_out_of_range_and_ints():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize(np.array([0.5, 1.5]), rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize(np.array([0.5, np.nan]), rng)
    with pytest.raises(TypeError, match="divide by 255"):
        data.binarize(np.array([0, 255], dtype=np.uint8), rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize_threshold(np.array([-0.1]))


def test_binarize_threshold():
    x = np.array([0.0, 0.5, 0.51, 1.0], dtype=np.float32)
    out = data.binarize_threshold(x)
    np.testing.assert_array_equal(out, [0, 0, 1, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(data.binarize_threshold(x, t=0.0), [0, 1, 1, 1])
