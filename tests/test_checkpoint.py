"""
Tests for numpyvae/checkpoint.py: exact round trips, atomic saves that
survive interruption, and clear errors for every kind of bad file.
"""

import gc
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from numpyvae import checkpoint
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
