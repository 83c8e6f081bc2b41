"""Checkpoints (format, atomic writes, every kind of bad file) and determinism of training."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest

import graphc as gc
from graphc import checkpoint, schedules

pytestmark = pytest.mark.needs_cc


def net(name: str = "ckpt", width: int = 6) -> gc.Graph:
    g = gc.Graph(name)
    x = g.input("x", 5)
    y = g.input("y", (), dtype="int32")
    h = gc.dense(x, width, activation="tanh", name="hidden")
    h = gc.dropout(h, 0.25, name="drop")
    logits = gc.dense(h, 3, name="out")
    g.output("probs", gc.softmax(logits))
    g.minimize(gc.softmax_cross_entropy(logits, y))
    return g


def compile_net(name: str = "ckpt", width: int = 6, dtype: str = "float64", **kwargs):
    kwargs.setdefault("seed", 21)
    optimizer = kwargs.pop(
        "optimizer", gc.Adam(schedules.InverseTime(0.02, per="step"), clip_norm=1.0)
    )
    return gc.compile(net(name, width), batch_size=8, dtype=dtype, optimizer=optimizer, **kwargs)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 5)), rng.integers(0, 3, size=60).astype(np.int32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data):
    """A model trained for 2 epochs and its checkpoint file."""
    model = compile_net()
    model.fit(*data, epochs=2, shuffle=True)
    path = tmp_path_factory.mktemp("ckpt") / "model.gcc"
    model.save(path)
    return model, path


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


# --- determinism ----------------------------------------------------------------------------
def test_resume_is_bit_identical(saved, data) -> None:
    """2 epochs + save + load into a fresh model + 2 epochs == 4 uninterrupted epochs."""
    model, path = saved
    straight = compile_net()
    straight.fit(*data, epochs=4, shuffle=True)
    resumed = compile_net(seed=999)  # the checkpoint brings the seed back
    resumed.load(path)
    assert (resumed.step, resumed.epoch, resumed.seed) == (model.step, model.epoch, 21)
    resumed.fit(*data, epochs=2, shuffle=True)
    assert resumed.step == straight.step and resumed.epoch == straight.epoch == 4
    assert_same(resumed.params, straight.params)
    assert_same(resumed.optimizer_state["out.W"], straight.optimizer_state["out.W"])


def test_same_seed_same_results_any_thread_count(data) -> None:
    runs = []
    for threads in (1, 2, 1):
        model = compile_net(num_threads=threads)
        history = model.fit(*data, epochs=2, shuffle=True)
        runs.append((model.params, history["loss"]))
    for params, losses in runs[1:]:
        assert_same(params, runs[0][0])
        assert losses == runs[0][1]
    other_seed = compile_net(seed=22)
    other_seed.fit(*data, epochs=2, shuffle=True)
    assert not np.array_equal(other_seed.params["out.W"], runs[0][0]["out.W"])


# --- the file -------------------------------------------------------------------------------
def test_roundtrip_and_gc_load(saved) -> None:
    model, path = saved
    ckpt = gc.load(path)
    assert isinstance(ckpt, gc.Checkpoint)
    assert (ckpt.graph, ckpt.dtype, ckpt.version) == ("ckpt", "float64", 1)
    assert (ckpt.step, ckpt.epoch, ckpt.seed) == (model.step, model.epoch, model.seed)
    assert ckpt.lr == 0.02 and ckpt.optimizer.startswith("Adam(")
    assert_same(ckpt.params, model.params)
    for name, states in model.optimizer_state.items():
        assert_same(ckpt.state[name], states)
    fresh = compile_net()
    assert fresh.load(ckpt) is fresh
    assert_same(fresh.params, model.params)


def test_documented_layout(saved) -> None:
    """Magic, version, JSON header, little-endian arrays, CRC-32: readable without graphc."""
    model, path = saved
    raw = path.read_bytes()
    magic, version, header_len = struct.unpack_from("<8sII", raw)
    assert magic == b"\x89GRAPHC\n" and version == 1
    header = json.loads(raw[16 : 16 + header_len])
    assert header["format"] == "graphc-checkpoint" and header["graph"] == "ckpt"
    (crc,) = struct.unpack("<I", raw[-4:])
    assert crc == zlib.crc32(raw[:-4])
    entry = next(t for t in header["tensors"] if t["name"] == "hidden.W" and t["role"] == "param")
    start = 16 + header_len + entry["offset"]
    array = np.frombuffer(raw, dtype="<f8", count=30, offset=start).reshape(entry["shape"])
    assert np.array_equal(array, model.params["hidden.W"])
    roles = {(t["name"], t["state"]) for t in header["tensors"] if t["role"] == "state"}
    assert ("hidden.W", "m") in roles and ("out.b", "v") in roles


def test_atomic_write(saved, tmp_path, monkeypatch) -> None:
    model, _ = saved
    path = tmp_path / "m.gcc"
    model.save(path)
    good = path.read_bytes()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.gcc"]  # no temporary file left behind


def frame(header: bytes, data: bytes) -> bytes:
    """A file of the documented layout around ``header`` and ``data``, with a valid CRC."""
    body = struct.pack("<8sII", b"\x89GRAPHC\n", 1, len(header)) + header + data
    return body + struct.pack("<I", zlib.crc32(body))


def rebuild(raw: bytes, edit) -> bytes:
    """The file with its JSON header changed by ``edit`` (and a valid CRC again)."""
    _, _, header_len = struct.unpack_from("<8sII", raw)
    header = json.loads(raw[16 : 16 + header_len])
    edit(header)
    return frame(json.dumps(header).encode(), raw[16 + header_len : -4])


def bad_files(raw: bytes) -> dict[str, tuple[bytes, str]]:
    """Name -> (file contents, what the error must say)."""
    flipped_data = bytearray(raw)
    flipped_data[-20] ^= 0x01
    flipped_header = bytearray(raw)
    flipped_header[30] ^= 0x20

    def set_field(key, value):
        return lambda h: h.__setitem__(key, value)

    def first_tensor(key, value):
        return lambda h: h["tensors"][0].__setitem__(key, value)

    return {
        "empty": (b"", "truncated"),
        "prefix only": (raw[:10], "truncated"),
        "cut in header": (raw[:40], "truncated"),
        "cut in data": (raw[: len(raw) // 2], "truncated"),
        "cut CRC": (raw[:-1], "truncated"),
        "appended": (raw + b"\0", "unexpected bytes"),
        "magic": (b"PK\x03\x04" + raw[4:], "not a graphc checkpoint"),
        "version": (raw[:8] + struct.pack("<I", 7) + raw[12:], "version 7"),
        "data bit": (bytes(flipped_data), "CRC"),
        "header bit": (bytes(flipped_header), "corrupt"),
        "json": (frame(b"{not json", b""), "does not parse"),
        "deep json": (frame(b"[" * 100000 + b"]" * 100000, b""), "does not parse"),
        "no tensors": (rebuild(raw, lambda h: h.pop("tensors")), "'tensors'"),
        "shape": (rebuild(raw, first_tensor("shape", [10**9, 10**9])), "truncated"),
        "offset": (rebuild(raw, first_tensor("offset", -8)), "tensor entry 0"),
        "tensor dtype": (rebuild(raw, first_tensor("dtype", "<i8")), "tensor entry 0"),
        "dtype": (rebuild(raw, set_field("dtype", "float16")), "float16"),
        "step": (rebuild(raw, set_field("step", "7")), "'step'"),
    }


def test_bad_files_raise_checkpoint_error(saved, tmp_path) -> None:
    model, path = saved
    raw = path.read_bytes()
    before = model.params
    for name, (contents, message) in bad_files(raw).items():
        target = tmp_path / f"{name.replace(' ', '_')}.gcc"
        target.write_bytes(contents)
        with pytest.raises(gc.CheckpointError, match=message):
            model.load(target)
        assert_same(model.params, before)
    with pytest.raises(gc.CheckpointError, match="cannot read"):
        gc.load(tmp_path / "missing.gcc")


def test_random_corruption_never_crashes(saved) -> None:
    _, path = saved
    raw = path.read_bytes()
    rng = np.random.default_rng(3)
    for _ in range(200):
        data = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=rng.integers(1, 4)):
            data[pos] ^= int(rng.integers(1, 256))
        cut = int(rng.integers(0, len(raw) + 1)) if rng.random() < 0.3 else len(raw)
        with pytest.raises(gc.CheckpointError):
            checkpoint.parse(bytes(data[:cut]))


def test_mismatched_models_are_named(saved, tmp_path) -> None:
    model, path = saved
    cases = [
        (compile_net("other"), "graph 'other'|from graph 'ckpt'"),
        (compile_net(width=7), "'hidden.W' has shape"),
        (compile_net(dtype="float32"), "float64 tensors .* float32"),
        (compile_net(optimizer=gc.RMSProp(0.01)), "no optimizer state 's'"),
    ]
    for other, message in cases:
        before = other.params
        with pytest.raises(gc.CheckpointError, match=message):
            other.load(path)
        assert_same(other.params, before)
    # a different graph: transfer by name instead
    renamed = cases[0][0]
    renamed.set_params(gc.load(path).params, strict=False)
    assert_same(renamed.params, model.params)
    renamed.set_params({k: np.zeros_like(v) for k, v in model.params.items()})
    renamed.set_params(gc.load(path))  # a Checkpoint stands for its params
    assert_same(renamed.params, model.params)
    # the frozen variant of the same graph loads it, ignoring state it does not keep
    frozen = compile_net().freeze("hidden")
    frozen.load(path)
    assert_same(frozen.params, model.params)
