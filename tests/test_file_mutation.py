"""
Damaged and crafted files: the two readers of files a user hands us
(`load_checkpoint` and `read_idx`) either return exactly what was saved or
raise ValueError, and their memory stays bounded whatever a file claims.

Byte mutations: a valid small checkpoint and a valid small IDX file (raw and
gzip) are damaged in a fixed, deterministic set of ways (every byte flipped /
zeroed / set to 0xFF, cut at every length, bytes appended, random bytes
changed by a seeded Generator). For each case the reader must raise
ValueError (never another exception) or return the original content. The one
exception is a changed *data* byte of a raw IDX file: the format has no
checksum, so the reader returns that pixel changed, and we check it is
exactly that pixel. (Checkpoints are zip files, whose CRC-32 catches changed
data; gzip has a CRC-32 too.)

Bombs: a gzip IDX file and a zip member that inflate to 64 MiB, measured with
tracemalloc; the real 1 GiB versions run under `-m slow`.
"""

import gzip
import io
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from numpyvae import checkpoint, data
from numpyvae.checkpoint import load_checkpoint, save_checkpoint

MiB = 1 << 20


def overwrite(path, blob):
    # Rewrite in place: opening with O_TRUNC costs ~3 ms on some file systems
    # (ext4 flushes a truncated file), which thousands of cases would feel.
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(blob)
        f.truncate()


def mutations(good, seed):
    """
    Yield (description, damaged bytes, changed positions) for a deterministic
    set of damages to `good`, skipping any that leave it unchanged. Positions
    are None for cuts and appends, which change the length.
    """
    for i in range(len(good)):
        for name, value in (("flipped", good[i] ^ 0xFF), ("zeroed", 0x00), ("set to 0xFF", 0xFF)):
            if value != good[i]:
                damaged = bytearray(good)
                damaged[i] = value
                yield f"byte {i} {name}", bytes(damaged), {i}
    for n in range(len(good)):
        yield f"cut to {n} bytes", good[:n], None
    for extra in (b"\x00", b"\xff\xff", bytes(100)):
        yield f"{len(extra)} bytes appended", good + extra, None
    rng = np.random.default_rng(seed)
    for k in range(300):
        damaged = bytearray(good)
        positions = rng.choice(len(good), size=rng.integers(1, 5), replace=False)
        for i in positions:
            damaged[i] = int(rng.integers(0, 256))
        if bytes(damaged) != good:
            yield f"random case {k}: bytes {sorted(positions.tolist())} changed", bytes(damaged), \
                set(positions.tolist())


# -------------------------------------------------------------- checkpoints


ARRAYS = {
    "enc.W": np.arange(6, dtype=np.float32).reshape(2, 3),
    "step_counts": np.array([-1, 2], dtype=np.int64),
}
METADATA = {"epoch": 3, "loss": 0.5, "history": [{"elbo": -1.25}, None]}


def same_checkpoint(arrays, metadata):
    return (
        list(arrays) == list(ARRAYS)
        and all(arrays[k].dtype == v.dtype and arrays[k].shape == v.shape
                and np.array_equal(arrays[k], v) for k, v in ARRAYS.items())
        and metadata == METADATA
    )


def test_damaged_checkpoints_load_exactly_or_raise_value_error(tmp_path):
    save_checkpoint(tmp_path / "good.npz", ARRAYS, METADATA)
    good = (tmp_path / "good.npz").read_bytes()
    path = tmp_path / "damaged.npz"
    cases = refused = 0
    for what, damaged, _ in mutations(good, seed=0):
        overwrite(path, damaged)
        cases += 1
        try:
            arrays, metadata = load_checkpoint(path)
        except ValueError as e:
            refused += 1
            assert str(path) in str(e), what
            continue
        # Loaded: only possible if the damage hit bytes nothing depends on
        # (a timestamp, a comment, trailing junk); the content must be intact.
        assert same_checkpoint(arrays, metadata), f"{what}: loaded different content"
    assert cases > 3 * len(good)  # every byte, three ways, plus cuts and random cases
    assert refused > cases // 2  # most damage is detected, not ignored


# -------------------------------------------------------------- IDX files


IDX_ARRAY = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)
IDX_HEADER = 16  # magic (4 bytes) + three int32 sizes


def idx_bytes(array):
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) \
        + array.tobytes()


def test_damaged_raw_idx_files(tmp_path):
    good = idx_bytes(IDX_ARRAY)
    path = tmp_path / "damaged-idx"
    cases = 0
    for what, damaged, positions in mutations(good, seed=1):
        overwrite(path, damaged)
        cases += 1
        header_hit = positions is None or min(positions) < IDX_HEADER
        if header_hit:
            # A changed header, a cut or extra bytes: always detected, as the
            # header fixes the exact length.
            with pytest.raises(ValueError, match="damaged-idx"):
                data.read_idx(path)
            continue
        # Changed pixels only: undetectable in a format without checksum, so
        # the reader returns them, and exactly them.
        expected = np.frombuffer(damaged[IDX_HEADER:], dtype=np.uint8).reshape(IDX_ARRAY.shape)
        out = data.read_idx(path)
        assert out.shape == IDX_ARRAY.shape and np.array_equal(out, expected), what
    assert cases > 3 * len(good)


def test_damaged_gzip_idx_files(tmp_path):
    good = gzip.compress(idx_bytes(IDX_ARRAY), mtime=0)
    path = tmp_path / "damaged-idx.gz"
    cases = refused = 0
    for what, damaged, _ in mutations(good, seed=2):
        overwrite(path, damaged)
        cases += 1
        try:
            out = data.read_idx(path)
        except ValueError as e:
            refused += 1
            assert str(path) in str(e), what
            continue
        # The gzip CRC-32 covers every pixel: loading means nothing changed
        # (the damage hit the timestamp or the OS byte of the gzip header).
        assert out.shape == IDX_ARRAY.shape and np.array_equal(out, IDX_ARRAY), what
    assert cases > 3 * len(good) and refused > cases // 2


# ---------------------------------------------------------------- bombs


def write_gzip_stream(path, header, n_zero_bytes):
    """A gzip file of `header` followed by `n_zero_bytes` zeros, compressed
    1 MiB at a time so that building it never holds the inflated data."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    zeros = bytes(MiB)
    with open(path, "wb") as f:
        f.write(compressor.compress(header))
        for start in range(0, n_zero_bytes, MiB):
            f.write(compressor.compress(zeros[:min(MiB, n_zero_bytes - start)]))
        f.write(compressor.flush())


def peak_traced_bytes(fn):
    """Run fn() (expecting ValueError) and return the peak traced allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("declared, message", [
    ((10, 28, 28), "extra trailing bytes"),  # honest header, then 64 MiB more
    ((1 << 20, 32, 32), "limit"),  # header declares 1 GiB
])
def test_gzip_bomb_is_refused_with_bounded_memory(tmp_path, declared, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_gzip_stream(path, bytes([0, 0, 8, 3]) + struct.pack(">3i", *declared), 64 * MiB)
    assert path.stat().st_size < MiB  # a bomb: 64 MiB inflated

    peak, error = peak_traced_bytes(lambda: data.read_idx(path))
    assert message in error and str(path) in error
    # The reader holds at most the declared data (7,840 bytes here) and its
    # read buffers; inflating the whole stream would take 64 MiB.
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


def npy_header(shape, dtype=np.float64):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                 "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_zip_bomb(path, header, n_zero_bytes):
    """An .npz with a __metadata__ member and one deflated member "w.npy":
    `header`, then `n_zero_bytes` zeros, written 1 MiB at a time."""
    zeros = bytes(MiB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("__metadata__.npy", "w") as f:
            np.lib.format.write_array(f, np.array("{}"))
        with zf.open("w.npy", "w") as f:
            f.write(header)
            for start in range(0, n_zero_bytes, MiB):
                f.write(zeros[:min(MiB, n_zero_bytes - start)])


def set_declared_size(blob, member, size):
    """Patch the uncompressed size of `member` in the zip directory (and in
    its zip64 extra field, where zipfile reads it from if there is one)."""
    blob = bytearray(blob)
    name = member.encode()
    at = blob.rindex(b"PK\x01\x02", 0, blob.rindex(name))  # its central directory entry
    name_len, extra_len = struct.unpack_from("<HH", blob, at + 28)
    struct.pack_into("<L", blob, at + 24, size if size < 0xFFFFFFFF else 0xFFFFFFFF)
    extra = at + 46 + name_len
    end = extra + extra_len
    while extra < end:
        tag, length = struct.unpack_from("<HH", blob, extra)
        if tag == 0x0001:  # zip64 extra: uncompressed size comes first
            struct.pack_into("<Q", blob, extra + 4, size)
        extra += 4 + length
    return bytes(blob)


def test_zip_bomb_member_above_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    # An honest member: its header and the zip directory both say 64 MiB.
    path = tmp_path / "checkpoint.npz"
    write_zip_bomb(path, npy_header((8 * MiB,)), 64 * MiB)
    assert path.stat().st_size < MiB
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 16 * MiB)

    peak, error = peak_traced_bytes(lambda: load_checkpoint(path))
    assert "MAX_CHECKPOINT_BYTES" in error and "'w.npy'" in error
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_zip_bomb_member_that_lies_about_its_size(tmp_path):
    # The .npy header claims 64 MiB of float64, the zip directory 1 MiB. (Not
    # less than 4 KiB: zipfile reads members 4 KiB ahead, so a tiny member is
    # read whole at once and fails its CRC check before its header is seen.)
    path = tmp_path / "checkpoint.npz"
    write_zip_bomb(path, npy_header((8 * MiB,)), 64 * MiB)
    path.write_bytes(set_declared_size(path.read_bytes(), "w.npy", MiB))

    peak, error = peak_traced_bytes(lambda: load_checkpoint(path))
    assert "header says shape (8388608,)" in error
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_zip_member_that_inflates_past_its_declared_size(tmp_path):
    # Header and directory agree on 4 KiB, but the deflate stream goes on for
    # 64 MiB: reading stops at 4 KiB and the CRC-32 (computed over all of it)
    # does not match. (zipfile already cut such reads off before this fix.)
    path = tmp_path / "checkpoint.npz"
    header = npy_header((512,))
    write_zip_bomb(path, header, 64 * MiB)
    path.write_bytes(set_declared_size(path.read_bytes(), "w.npy", len(header) + 4096))

    peak, error = peak_traced_bytes(lambda: load_checkpoint(path))
    assert "CRC" in error
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gzip-idx", "gzip-idx-honest-header", "zip", "zip-lying"])
def test_real_size_bombs_keep_resident_memory_small(tmp_path, kind):
    """The 1 GiB bombs of issue 11, read in a fresh process; its peak resident
    set (ru_maxrss) must stay far below the 1 GiB the old readers allocated."""
    gib = 1 << 30
    path = tmp_path / "bomb"
    if kind == "gzip-idx":  # header declares 1 GiB: refused at the header
        write_gzip_stream(path, bytes([0, 0, 8, 3]) + struct.pack(">3i", 1 << 20, 32, 32), gib)
        call = "data.read_idx(path)"
    elif kind == "gzip-idx-honest-header":  # header declares 10 images, 1 GiB follows
        write_gzip_stream(path, bytes([0, 0, 8, 3]) + struct.pack(">3i", 10, 28, 28), gib)
        call = "data.read_idx(path)"
    elif kind == "zip":  # a member of 1 GiB of zeros, declared as such
        write_zip_bomb(path, npy_header((gib // 8,)), gib)
        call = "checkpoint.load_checkpoint(path)"
    else:  # the same member, with the zip directory claiming 1 MiB
        write_zip_bomb(path, npy_header((gib // 8,)), gib)
        path.write_bytes(set_declared_size(path.read_bytes(), "w.npy", MiB))
        call = "checkpoint.load_checkpoint(path)"
    code = textwrap.dedent(f"""
        import resource, sys, time
        from numpyvae import checkpoint, data
        path = sys.argv[1]
        start = time.perf_counter()
        try:
            {call}
        except ValueError as e:
            print("refused:", str(e)[:200])
        print(f"seconds {{time.perf_counter() - start:.3f}}")
        print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True, timeout=600).stdout
    print(kind, f"{path.stat().st_size} bytes on disk:", out)
    assert "refused:" in out
    maxrss_mib = int(out.split("maxrss_kib")[1]) / 1024
    assert maxrss_mib < 200, f"{kind}: peak resident set {maxrss_mib:.0f} MiB"
