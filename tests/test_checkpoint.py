"""
Tests for numpyvae/checkpoint.py: exact round trips, atomic saves that
survive interruption, and clear errors for every kind of bad file.
"""

import gc
import io
import json
import os
import signal
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from conftest import error_reading_fifo
from numpyvae import checkpoint
from numpyvae._validate import array_mismatches
from numpyvae.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    rng_from_json,
    rng_state_to_json,
    save_checkpoint,
)
from numpyvae.optim import SGD, Adam


def sample_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "enc.h0.W": rng.normal(size=(3, 5)).astype(np.float32),
        "enc.h0.b": rng.normal(size=(5,)),  # float64
        "counts": rng.integers(-1000, 1000, size=(2, 2, 2)).astype(np.int64),
        "mask": rng.random(7) < 0.5,  # bool
        "scalar": np.array(2.5),  # 0-d
        "empty": np.zeros((0, 4), dtype=np.float32),
        # Names that np.savez(f, **arrays) would mishandle.
        "file": np.arange(3, dtype=np.int16),
        "allow_pickle": np.ones(2, dtype=np.uint8),
    }


SAMPLE_METADATA = {
    "step": 1234,
    "loss": 0.123456789012345678,
    "tiny": 5e-324,
    "big_int": 2**100,
    "name": "vae-mnist ✓",  # non-ASCII survives
    "flags": [True, False, None],
    "nested": {"lr": 1e-3, "betas": [0.9, 0.999], "": "empty key"},
}


def files_in(directory):
    return sorted(os.listdir(directory))


# -------------------------------------------------------------- round trip


def test_round_trip_arrays_and_metadata_exactly(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = sample_arrays()
    save_checkpoint(path, arrays, SAMPLE_METADATA)

    loaded, meta = load_checkpoint(path)

    assert list(loaded) == list(arrays)  # same names, same order
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype, name
        assert loaded[name].shape == arr.shape, name
        np.testing.assert_array_equal(loaded[name], arr)
    assert meta == SAMPLE_METADATA
    assert type(meta["loss"]) is float and meta["loss"] == SAMPLE_METADATA["loss"]


def test_loaded_arrays_are_plain_writable_arrays(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(4.0)}, {})
    loaded, _ = load_checkpoint(path)
    assert type(loaded["w"]) is np.ndarray
    loaded["w"][0] = 99.0  # not a read-only view into the file
    os.remove(path)  # the file is closed (this would fail on Windows otherwise)
    assert loaded["w"][0] == 99.0


def test_file_is_a_plain_npz_that_loads_without_pickle(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, sample_arrays(), SAMPLE_METADATA)

    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(sample_arrays()) | {"__metadata__"}
        np.testing.assert_array_equal(npz["enc.h0.W"], sample_arrays()["enc.h0.W"])
        meta_text = str(npz["__metadata__"][()])
    assert json.loads(meta_text) == SAMPLE_METADATA


def test_saving_again_replaces_the_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"step": 1})
    save_checkpoint(path, {"w": np.ones(3)}, {"step": 2})
    loaded, meta = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["w"], np.ones(3))
    assert meta == {"step": 2}
    assert files_in(tmp_path) == ["ckpt.npz"]


def test_saved_file_gets_normal_permissions(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions only")
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.zeros(1)}, {})
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # what an ordinary open() creates
    assert os.stat(path).st_mode == os.stat(reference).st_mode


# -------------------------------------------------------- atomic writes


def test_atomic_write_text_bytes_and_json(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01\xff")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01\xff"

    atomic_write_text(tmp_path / "a.txt", "héllo\nworld\r\n")
    assert (tmp_path / "a.txt").read_bytes() == "héllo\nworld\r\n".encode("utf-8")

    obj = {"b": [1, 2.5, None], "a": {"z": True}}
    atomic_write_json(tmp_path / "a.json", obj)
    text = (tmp_path / "a.json").read_text()
    assert json.loads(text) == obj
    assert text == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert files_in(tmp_path) == ["a.bin", "a.json", "a.txt"]


def test_atomic_write_rejects_wrong_types(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x", "not bytes")
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "x", b"not text")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"loss": float("nan")}, "'loss'"),
        ({"best": [1.0, float("inf")]}, "'best'][1]"),
        ({1: "int key"}, "1"),
        ({"x": np.float32(1.0)}, "'x'"),
        ({"x": np.int64(3)}, "'x'"),
        ({"x": np.zeros(2)}, "'x'"),
        ({"x": {1, 2}}, "'x'"),
    ],
)
def test_json_rejects_what_it_cannot_store_exactly(tmp_path, bad, where):
    path = tmp_path / "meta.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(ValueError) as info:
        atomic_write_json(path, bad)
    assert where in str(info.value)
    assert json.loads(path.read_text()) == {"ok": 1}  # old file intact
    assert files_in(tmp_path) == ["meta.json"]

    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(1)}, bad)
    assert files_in(tmp_path) == ["meta.json"]


def test_interrupted_replace_keeps_old_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"step": 1})
    old_bytes = path.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt("power cut")  # even non-Exception interrupts

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.ones(3)}, {"step": 2})
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert files_in(tmp_path) == ["ckpt.npz"]
    loaded, meta = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["w"], np.zeros(3))
    assert meta == {"step": 1}


def test_interrupted_write_midway_keeps_old_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"step": 1})
    old_bytes = path.read_bytes()

    # Fail after the temporary file exists and has been partly written.
    def failing_fsync(fd):
        assert len([f for f in os.listdir(tmp_path) if f.endswith(".tmp")]) == 1
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": np.ones(3)}, {"step": 2})
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert files_in(tmp_path) == ["ckpt.npz"]


def test_interrupted_serialisation_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"a": np.zeros(3), "b": np.zeros(2)}, {"step": 1})
    old_bytes = path.read_bytes()
    calls = []

    def write_array_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # crash on the second array
            raise RuntimeError("crash while serialising")
        return real_write_array(*args, **kwargs)

    real_write_array = np.lib.format.write_array
    monkeypatch.setattr(np.lib.format, "write_array", write_array_then_crash)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"a": np.ones(3), "b": np.ones(2)}, {"step": 2})
    monkeypatch.undo()

    assert len(calls) == 2  # the patch really was on the save path
    assert path.read_bytes() == old_bytes
    assert files_in(tmp_path) == ["ckpt.npz"]


# --------------------------------------------------------- bad saves


def test_object_arrays_are_rejected(tmp_path):
    for bad in (
        np.array([1, "two", None], dtype=object),
        np.zeros(2, dtype=[("a", "f8"), ("b", "O")]),
    ):
        with pytest.raises(ValueError, match="'bad'.*object"):
            save_checkpoint(tmp_path / "c.npz", {"ok": np.zeros(1), "bad": bad}, {})
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("name", ["__metadata__", "", "enc/W", 3])
def test_bad_array_names_are_rejected(tmp_path, name):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "c.npz", {name: np.zeros(1)}, {})
    assert files_in(tmp_path) == []


def test_save_rejects_non_dicts(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c.npz", [np.zeros(1)], {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(1)}, [1, 2])


# ---------------------------------------------------------- bad loads


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_checkpoint(tmp_path / "nope.npz")


def test_truncated_file_raises_clear_value_error(tmp_path):
    good = tmp_path / "good.npz"
    save_checkpoint(good, sample_arrays(), SAMPLE_METADATA)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 10):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError) as info:
            load_checkpoint(bad)
        message = str(info.value)
        assert str(bad) in message
        assert "truncated" in message


def test_failed_load_does_not_leak_the_file_handle(tmp_path):
    # np.load(path) leaves its file open when the zip is damaged; an open
    # handle would stop Windows from deleting or replacing the bad file.
    good = tmp_path / "good.npz"
    save_checkpoint(good, {"w": np.arange(100.0)}, {})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:-30])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            load_checkpoint(bad)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_corrupted_array_bytes_raise_value_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(1000.0)}, {})
    data = bytearray(path.read_bytes())
    data[data.index(b"w.npy") + 500] ^= 0xFF  # flip a byte inside the array data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, "random"])
def test_non_zip_files_raise_value_error(tmp_path, content):
    if content == "random":
        content = np.random.default_rng(0).bytes(1000)
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not an .npz"):
        load_checkpoint(path)


def test_a_directory_or_npy_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"\.npy"):
        load_checkpoint(tmp_path / "one.npy")


def test_npz_without_metadata_or_with_bad_json(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.zeros(2))
    with pytest.raises(ValueError, match="__metadata__"):
        load_checkpoint(tmp_path / "plain.npz")

    np.savez(tmp_path / "badjson.npz", w=np.zeros(2), __metadata__=np.array("{not json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path / "badjson.npz")

    np.savez(tmp_path / "list.npz", __metadata__=np.array("[1, 2]"))
    with pytest.raises(ValueError, match="JSON object"):
        load_checkpoint(tmp_path / "list.npz")


def test_npz_with_pickled_object_array_is_refused(tmp_path):
    # Written by someone else's np.savez (which does pickle): loading must
    # refuse rather than unpickle.
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object), __metadata__=np.array("{}"))
    with pytest.raises(ValueError, match="evil.npz"):
        load_checkpoint(path)


# ------------------------------------------------------- crafted files
#
# Files no save_checkpoint writes, built byte by byte: each must be refused
# with a ValueError naming the file, before anything large is allocated.


def npy_bytes(header_text, data=b""):
    """A .npy file (format 1.0) with the given header dict text, padded as
    NumPy pads it, followed by `data`."""
    header = header_text.encode("latin-1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def npz_blob(members, compression=zipfile.ZIP_STORED):
    """Zip bytes from [(member name, array or raw bytes)], in order; repeated
    names are allowed (zipfile only warns)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
            for name, content in members:
                if isinstance(content, np.ndarray):
                    stream = io.BytesIO()
                    np.lib.format.write_array(stream, content)
                    content = stream.getvalue()
                zf.writestr(name, content)
    return buffer.getvalue()


def metadata_member(text="{}"):
    return ("__metadata__.npy", np.array(text))


def zip_header_offsets(blob):
    """Offsets of every local file header and every central directory entry."""
    size_cd, offset_cd = struct.unpack_from("<LL", blob, len(blob) - 22 + 12)
    local, central = [], []
    at = offset_cd
    while at < offset_cd + size_cd:
        central.append(at)
        local.append(struct.unpack_from("<L", blob, at + 42)[0])
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", blob, at + 28)
        at += 46 + name_len + extra_len + comment_len
    return local, central


def patch_headers(blob, local_field, central_field, value):
    """Set a 2-byte field (offset within the local header and within the
    central entry) of every member to `value`."""
    blob = bytearray(blob)
    local, central = zip_header_offsets(blob)
    for at in local:
        struct.pack_into("<H", blob, at + local_field, value)
    for at in central:
        struct.pack_into("<H", blob, at + central_field, value)
    return bytes(blob)


def refused(path, *needles):
    """Assert load_checkpoint raises ValueError naming `path` and each needle."""
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "checkpoint.npz"
    error = error_reading_fifo(load_checkpoint, fifo)
    assert isinstance(error, ValueError), error
    assert "FIFO" in str(error) and str(fifo) in str(error)


def test_a_device_is_refused():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero on this platform")
    with pytest.raises(ValueError, match="/dev/zero.*character device"):
        load_checkpoint("/dev/zero")


def test_encrypted_member_is_refused(tmp_path):
    path = tmp_path / "encrypted.npz"
    blob = npz_blob([("w.npy", np.zeros(3)), metadata_member()])
    path.write_bytes(patch_headers(blob, 6, 8, 0x0001))  # flag bit 0: encrypted
    refused(path, "encrypted")


@pytest.mark.parametrize("method", [1, 12, 14, 99])  # shrunk, bzip2, lzma, AES
def test_unknown_compression_method_is_refused(tmp_path, method):
    path = tmp_path / "method.npz"
    blob = npz_blob([("w.npy", np.zeros(3)), metadata_member()])
    path.write_bytes(patch_headers(blob, 8, 10, method))
    refused(path, f"compression method {method}")


def test_deflated_members_load(tmp_path):
    # np.savez_compressed writes deflated members; those are fine.
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, w=np.arange(100.0), __metadata__=np.array('{"a": 1}'))
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["w"], np.arange(100.0))
    assert meta == {"a": 1}


def test_duplicate_member_is_refused(tmp_path):
    path = tmp_path / "duplicate.npz"
    path.write_bytes(npz_blob([
        ("w.npy", np.zeros(3)), ("w.npy", np.ones(3)), metadata_member(),
    ]))
    refused(path, "'w.npy' appears twice")


def test_member_that_is_not_npy_is_refused(tmp_path):
    path = tmp_path / "extra.npz"
    path.write_bytes(npz_blob([("notes.txt", b"hello"), metadata_member()]))
    refused(path, "'notes.txt' is not a .npy array")


@pytest.mark.parametrize("header, needle", [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }",
     "shape (1000000000000,)"),  # 8 TB claimed, 16 bytes present
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (-2,), }", "negative dimension"),
    ("{'descr': ('<f8', (2,)), 'fortran_order': False, 'shape': (1,), }", "sub-array dtype"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", "Python objects"),
])
def test_npy_header_that_disagrees_with_the_zip_directory_is_refused(tmp_path, header, needle):
    path = tmp_path / "header.npz"
    path.write_bytes(npz_blob([("w.npy", npy_bytes(header, bytes(16))), metadata_member()]))
    refused(path, needle)


def test_npy_header_length_beyond_any_real_header_is_refused(tmp_path):
    member = bytearray(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                                 bytes(16)))
    member[6:8] = b"\x02\x00"  # version 2.0: a 4-byte header length...
    member[8:12] = struct.pack("<I", 2**31)  # ...claiming 2 GiB
    path = tmp_path / "header.npz"
    path.write_bytes(npz_blob([("w.npy", bytes(member)), metadata_member()]))
    refused(path, "header claims 2147483648 bytes")


def test_npy_format_3_is_refused_and_never_written(tmp_path):
    dtype = np.dtype([("名", "<f8")])  # a field name Latin-1 cannot encode
    with pytest.raises(ValueError, match="Latin-1"):
        save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(2, dtype)}, {})
    assert files_in(tmp_path) == []
    path = tmp_path / "v3.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Stored array in format 3.0"
        path.write_bytes(npz_blob([("w.npy", np.zeros(2, dtype)), metadata_member()]))
    refused(path, "version (3, 0)")
    # A Latin-1 field name needs no format 3.0: it round-trips.
    latin = np.zeros(2, dtype=[("é", "<f8")])
    save_checkpoint(tmp_path / "ok.npz", {"w": latin}, {})
    assert load_checkpoint(tmp_path / "ok.npz")[0]["w"].dtype == latin.dtype


def test_fortran_order_and_byte_order_round_trip(tmp_path):
    arrays = {
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "big_endian": np.arange(5, dtype=">i4"),
        "structured": np.array([(1, 2.5)], dtype=[("a", "<i2"), ("b", ">f8")]),
    }
    save_checkpoint(tmp_path / "c.npz", arrays, {})
    loaded, _ = load_checkpoint(tmp_path / "c.npz")
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype, name
        np.testing.assert_array_equal(loaded[name], arr)
    assert loaded["fortran"].flags.f_contiguous


def test_zip64_end_record_is_refused(tmp_path):
    blob = bytearray(npz_blob([("w.npy", np.zeros(3)), metadata_member()]))
    end = len(blob) - 22
    blob[end - 20:end - 16] = b"PK\x06\x07"  # a zip64 locator before the end record
    path = tmp_path / "crafted.npz"
    path.write_bytes(bytes(blob))
    refused(path, "zip64 end record")


# ---------------------------------------------------------- metadata JSON


def npz_with_metadata(tmp_path, text):
    path = tmp_path / "meta.npz"
    path.write_bytes(npz_blob([("w.npy", np.zeros(2)), metadata_member(text)]))
    return path


@pytest.mark.parametrize("depth", [64, 65, 100_000])
def test_metadata_nesting_depth_is_bounded(tmp_path, depth):
    text = '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    path = npz_with_metadata(tmp_path, text)
    if depth <= checkpoint.MAX_JSON_DEPTH:
        assert load_checkpoint(path)[1] == json.loads(text)
    else:
        refused(path, f"nested {depth} deep")


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    text = json.dumps({"a": "[{" * 1000, "b": ['"]', "\\\"[["]})
    assert load_checkpoint(npz_with_metadata(tmp_path, text))[1] == json.loads(text)


def test_save_refuses_metadata_nested_too_deep(tmp_path):
    def nested(depth):  # a dict holding lists, `depth` levels of [ and { in all
        inner = []
        for _ in range(depth - 2):
            inner = [inner]
        return {"deep": inner}

    limit = checkpoint.MAX_JSON_DEPTH
    save_checkpoint(tmp_path / "ok.npz", {}, nested(limit))
    assert load_checkpoint(tmp_path / "ok.npz")[1] == nested(limit)
    (tmp_path / "ok.npz").unlink()
    with pytest.raises(ValueError, match="nested more than"):
        save_checkpoint(tmp_path / "c.npz", {}, nested(limit + 1))
    loop = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="contains itself"):
        save_checkpoint(tmp_path / "c.npz", {}, loop)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("text, needle", [
    ('{"loss": NaN}', "NaN"),
    ('{"loss": Infinity}', "Infinity"),
    ('{"loss": [-Infinity]}', "-Infinity"),
    ('{"loss": 1e999}', "overflows"),
    ('{"epoch": 1, "epoch": 2}', "duplicate key 'epoch'"),
])
def test_metadata_must_be_standard_finite_json(tmp_path, text, needle):
    refused(npz_with_metadata(tmp_path, text), "not valid JSON", needle)


@pytest.mark.parametrize("code_unit", [b"\xff\xff\xff\xff", b"\x00\xd8\x00\x00"])
def test_metadata_with_invalid_code_points_is_refused(tmp_path, code_unit):
    path = tmp_path / "meta.npz"
    text = np.frombuffer(code_unit, dtype="<U1").reshape(())
    path.write_bytes(npz_blob([("w.npy", np.zeros(2)), ("__metadata__.npy", text)]))
    refused(path, "invalid Unicode")


# ------------------------------------------------------------------ limits


def test_file_above_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.npz"
    save_checkpoint(path, {"w": np.zeros(1000)}, {})
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 4000)
    refused(path, "MAX_CHECKPOINT_BYTES=4000")


def test_zip_directory_above_its_limit_is_refused_before_zipfile_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "many.npz"
    save_checkpoint(path, {f"a{i}": np.zeros(1) for i in range(20)}, {})
    monkeypatch.setattr(checkpoint, "MAX_ZIP_DIRECTORY_BYTES", 500)

    def no_zipfile(*args, **kwargs):
        raise AssertionError("zipfile.ZipFile must not parse an oversized directory")

    monkeypatch.setattr(checkpoint.zipfile, "ZipFile", no_zipfile)
    refused(path, "MAX_ZIP_DIRECTORY_BYTES=500")


@pytest.mark.parametrize("limit, value, arrays, metadata", [
    ("MAX_CHECKPOINT_BYTES", 4000, {"w": np.zeros(1000)}, {}),
    ("MAX_ZIP_DIRECTORY_BYTES", 500, {f"a{i}": np.zeros(1) for i in range(20)}, {}),
    ("MAX_METADATA_CHARS", 100, {}, {"history": list(range(100))}),
])
def test_save_refuses_what_load_would_refuse(tmp_path, monkeypatch, limit, value, arrays, metadata):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"old": np.zeros(1)}, {})
    old = path.read_bytes()
    monkeypatch.setattr(checkpoint, limit, value)
    with pytest.raises(ValueError, match=limit):
        save_checkpoint(path, arrays, metadata)
    assert path.read_bytes() == old and files_in(tmp_path) == ["c.npz"]


# ---------------------------------------------- temporaries of killed saves


def test_remove_stale_temporaries_after_kill_9(tmp_path):
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("no kill -9 on this platform")
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"step": 1})
    # A real kill -9 between writing the temporary file and renaming it.
    code = (
        "import os, signal, sys\n"
        "import numpy as np\n"
        "from numpyvae import checkpoint\n"
        "checkpoint.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpoint.save_checkpoint(sys.argv[1], {'w': np.ones(3)}, {'step': 2})\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], timeout=120)
    assert result.returncode == -signal.SIGKILL
    stale = [name for name in files_in(tmp_path) if name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".checkpoint.npz.")
    assert load_checkpoint(path)[1] == {"step": 1}  # the old checkpoint survived

    # Look-alikes that are not temporaries of checkpoint.npz must stay.
    decoys = [".checkpoint.npz.bak.abcd1234.tmp",  # a temporary of checkpoint.npz.bak
              ".other.npz.abcd1234.tmp", "checkpoint.npz.tmp", ".checkpoint.npz.tmp"]
    for name in decoys:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".checkpoint.npz.adir1234.tmp").mkdir()

    removed = checkpoint.remove_stale_temporaries(path)
    assert removed == [str(tmp_path / stale[0])]
    assert files_in(tmp_path) == sorted(["checkpoint.npz", ".checkpoint.npz.adir1234.tmp", *decoys])
    assert checkpoint.remove_stale_temporaries(path) == []
    assert checkpoint.remove_stale_temporaries(tmp_path / "missing-dir" / "c.npz") == []


# -------------------------------------------------------------- expected


def test_expected_accepts_shape_dtype_pairs_and_templates(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = {"W": np.zeros((3, 4), np.float32), "b": np.zeros(4)}
    save_checkpoint(path, arrays, {})
    loaded, _ = load_checkpoint(path, expected={"W": ((3, 4), "float32"), "b": ([4], np.float64)})
    assert set(loaded) == {"W", "b"}
    load_checkpoint(path, expected=arrays)  # ndarray templates


def test_expected_mismatches_are_all_listed_in_one_message(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(
        path,
        {
            "enc.W": np.zeros((3, 4)),
            "enc.b": np.zeros(4, np.float32),
            "dec.W": np.zeros((4, 3)),
            "extra.thing": np.zeros(1),
        },
        {},
    )
    expected = {
        "enc.W": ((4, 3), np.float64),  # wrong shape
        "enc.b": ((4,), np.float64),  # wrong dtype
        "dec.W": np.zeros((4, 3)),  # fine
        "dec.b": ((3,), np.float64),  # missing
    }
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, expected=expected)
    message = str(info.value)
    for needle in (
        str(path), "missing", "dec.b", "unexpected", "extra.thing",
        "enc.W", "(3, 4)", "(4, 3)", "enc.b", "float32", "float64",
    ):
        assert needle in message, needle
    assert "'dec.W'" not in message


def test_array_mismatches_lists_every_problem_in_one_order():
    """The one report behind load_checkpoint(expected=...), Optimizer.load_state_dict and load_run:
    missing, unexpected, then per name an unreadable value, a wrong shape, a wrong dtype."""
    expected = {"a": ((2, 3), np.float64), "b": np.zeros(4, np.float32), "c": ([1], "float64"),
                "d": ((2,), np.float64), "ok": np.zeros(2)}
    found = {"a": np.zeros((3, 2)), "b": np.zeros(4), "d": [[1.0, 2.0], [3.0]], "e": np.zeros(1),
             "ok": np.zeros(2)}
    assert array_mismatches(expected, found) == [
        "missing arrays: ['c']",
        "unexpected arrays: ['e']",
        "array 'a' has shape (3, 2), expected (2, 3)",
        "array 'b' has dtype float64, expected float32",
        "array 'd' cannot be read as an array (list)",
    ]
    assert array_mismatches({"w": ((2,), np.float32)}, {"w": np.zeros(3, np.float64)}, noun="parameter") == [
        "parameter 'w' has shape (3,), expected (2,)", "parameter 'w' has dtype float64, expected float32"]
    matching = {"a": np.zeros((2, 3)), "b": np.zeros(4, np.float32), "c": [0.0], "d": np.zeros(2), "ok": np.zeros(2)}
    assert array_mismatches(expected, matching) == []


def test_array_mismatches_checks_values_only_of_well_formed_arrays():
    seen = []

    def no_nan(name, arr):
        seen.append(name)
        return [f"array {name!r} contains NaN"] if np.isnan(arr).any() else []

    expected = {"x": ((2,), np.float64), "y": ((2,), np.float64), "z": ((2,), np.float64)}
    found = {"x": np.array([1.0, np.nan]), "y": np.array([np.nan]), "z": np.zeros(2)}
    assert array_mismatches(expected, found, check_values=no_nan) == [
        "array 'x' contains NaN", "array 'y' has shape (1,), expected (2,)"]
    assert seen == ["x", "z"]


# ------------------------------------------------------------ rng state


@pytest.mark.parametrize("bit_generator", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_rng_state_round_trip_reproduces_the_stream(bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(1234))
    rng.normal(size=7)
    rng.integers(0, 10, size=3, dtype=np.int32)  # leaves a buffered 32-bit half
    state = rng_state_to_json(rng)
    text = json.dumps(state, allow_nan=False)  # really JSON-safe

    def draw(g):
        return np.concatenate(
            [g.random(5), g.normal(size=5), g.integers(0, 2**31, size=5, dtype=np.int32)]
        )

    expected = draw(rng)
    restored = rng_from_json(json.loads(text))
    assert type(restored.bit_generator).__name__ == bit_generator
    np.testing.assert_array_equal(draw(restored), expected)
    # Guard: a freshly seeded generator would not have matched.
    fresh = np.random.Generator(getattr(np.random, bit_generator)(1234))
    assert not np.array_equal(draw(fresh), expected)


def test_rng_state_is_a_snapshot():
    rng = np.random.default_rng(5)
    state = rng_state_to_json(rng)
    first = rng.random(3)
    rng.random(100)  # advancing the generator must not change the saved state
    np.testing.assert_array_equal(rng_from_json(state).random(3), first)


def test_rng_from_json_rejects_unknown_bit_generators():
    with pytest.raises(ValueError, match="unknown bit generator"):
        rng_from_json({"bit_generator": "os.system", "state": {}})


# ------------------------------------------------------- whole resume


@pytest.mark.parametrize("Opt, kwargs", [(Adam, {"lr": 0.01}), (SGD, {"lr": 0.01})])
def test_resume_through_a_checkpoint_file_is_bit_for_bit(tmp_path, Opt, kwargs):
    """Model params + optimiser state + rng saved to disk, then resumed."""
    def make_run(seed=0):
        init = np.random.default_rng(99)
        params = {"W": init.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3)}
        return params, Opt(params, clip_norm=1.0, **kwargs), np.random.default_rng(seed)

    def train(params, opt, rng, steps):
        for _ in range(steps):
            grads = {k: 0.5 * p + rng.normal(size=p.shape) for k, p in params.items()}
            opt.step(grads)

    straight = make_run()
    train(*straight, steps=8)

    params, opt, rng = make_run()
    train(params, opt, rng, steps=4)
    opt_state = opt.state_dict()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(
        path,
        {**{f"param.{k}": p for k, p in params.items()},
         **{f"optim.{k}": a for k, a in opt_state["arrays"].items()}},
        {"optim": opt_state["scalars"], "rng": rng_state_to_json(rng), "step": 4},
    )
    del params, opt, rng

    arrays, meta = load_checkpoint(path)
    params2, opt2, _ = make_run(seed=12345)  # deliberately different rng
    for k, p in params2.items():
        np.copyto(p, arrays[f"param.{k}"])
    opt2.load_state_dict({
        "arrays": {k[len("optim."):]: a for k, a in arrays.items() if k.startswith("optim.")},
        "scalars": meta["optim"],
    })
    train(params2, opt2, rng_from_json(meta["rng"]), steps=4)

    for k in straight[0]:
        assert straight[0][k].dtype == params2[k].dtype
        assert np.array_equal(straight[0][k], params2[k]), k
