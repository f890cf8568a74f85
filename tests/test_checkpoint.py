"""Checkpoints: round trip, atomic replacement, and one-line errors for every damage."""

import json
import os

import numpy as np
import pytest

from nettrim_jax.io import atomic
from nettrim_jax.io import checkpoint as ckpt
from nettrim_jax.io.checkpoint import CheckpointError


def _layers(seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "type": "conv",
            "activation": "relu",
            "kernel": rng.standard_normal((3, 3, 1, 4)).astype(np.float32),
            "bias": np.zeros(4, np.float32),
            "strides": [1, 1],
            "padding": "SAME",
            "dilation": [1, 1],
        },
        {"type": "maxpool", "window": [2, 2], "strides": [2, 2], "padding": "VALID"},
        {"type": "flatten"},
        {
            "type": "dense",
            "activation": "relu",
            "kernel": rng.standard_normal((64, 16)).astype(np.float32),
            "bias": rng.standard_normal(16).astype(np.float32),
        },
        {
            "type": "dense",
            "activation": "linear",
            "kernel": rng.standard_normal((16, 10)).astype(np.float32),
            "bias": None,
        },
    ]


def _weights_file(path):
    (w,) = list(path.glob("weights-*.safetensors"))
    return w


def test_round_trip(tmp_path):
    layers = _layers()
    path = ckpt.save(tmp_path / "ck", layers, (8, 8, 1), metadata={"note": "x"})
    got = ckpt.load(path)
    assert got.input_shape == (8, 8, 1)
    assert got.metadata == {"note": "x"}
    assert [l["type"] for l in got.layers] == [l["type"] for l in layers]
    for a, b in zip(got.layers, layers):
        for k in ("kernel", "bias"):
            if b.get(k) is not None:
                np.testing.assert_array_equal(a[k], b[k])
    assert got.layers[4]["bias"] is None
    model = json.loads((path / "model.json").read_text())
    assert model["version"] == 1  # dense tensors: readable by every version
    assert model["layers"][0]["kernel"]["shape"] == [3, 3, 1, 4]
    assert ckpt.infer_shapes(got.layers, got.input_shape)[-1] == (10,)
    assert not any(p.name.endswith(".tmp") for p in path.iterdir())


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    import pickle
    import struct

    def refuse(*a, **k):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    path = ckpt.save(tmp_path / "ck", _layers(), (8, 8, 1))
    ckpt.load(path)
    raw = _weights_file(path).read_bytes()  # safetensors: u64 header length + JSON header
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8 : 8 + n])["3.kernel"]["shape"] == [64, 16]
    json.loads((path / "model.json").read_text())


def test_overwrite_replaces_and_cleans(tmp_path):
    path = ckpt.save(tmp_path / "ck", _layers(0), (8, 8, 1))
    ckpt.save(path, _layers(1), (8, 8, 1))
    assert len(list(path.glob("weights-*.safetensors"))) == 1
    np.testing.assert_array_equal(ckpt.load(path).layers[3]["kernel"], _layers(1)[3]["kernel"])


@pytest.mark.parametrize("stage", ["weights", "model"])
def test_interrupted_save_keeps_old_checkpoint(tmp_path, monkeypatch, stage):
    path = ckpt.save(tmp_path / "ck", _layers(0), (8, 8, 1))
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real_open = atomic.atomic_open

    class Boom(KeyboardInterrupt):
        pass

    from contextlib import contextmanager

    @contextmanager
    def failing(p, mode="w"):
        with real_open(p, mode) as f:
            if (stage == "weights") == str(p).endswith(".safetensors"):
                f.write(b"partial" if "b" in mode else "partial")
                raise Boom()
            yield f

    monkeypatch.setattr(ckpt, "atomic_open", failing)
    monkeypatch.setattr(atomic, "atomic_open", failing)
    with pytest.raises(Boom):
        ckpt.save(path, _layers(1), (8, 8, 1))
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in path.iterdir()}
    if stage == "weights":
        assert after == before
    else:  # the new weights file may exist, unreferenced; the old checkpoint is intact
        assert {k: v for k, v in after.items() if k in before} == before
    np.testing.assert_array_equal(ckpt.load(path).layers[3]["kernel"], _layers(0)[3]["kernel"])
    # the next successful save removes the orphan
    ckpt.save(path, _layers(2), (8, 8, 1))
    assert len(list(path.glob("weights-*.safetensors"))) == 1
    assert not any(p.name.endswith(".tmp") for p in path.iterdir())


def test_atomic_write_text_failure_leaves_old(tmp_path):
    f = tmp_path / "r.md"
    atomic.atomic_write_text(f, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(f) as h:
            h.write("new half")
            raise RuntimeError("disk full")
    assert f.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.md"]


def _damage_cases():
    def truncate_weights(p):
        w = _weights_file(p)
        w.write_bytes(w.read_bytes()[:100])

    def flip_byte(p):
        w = _weights_file(p)
        b = bytearray(w.read_bytes())
        b[-3] ^= 0xFF
        w.write_bytes(bytes(b))

    def truncate_json(p):
        m = p / "model.json"
        m.write_text(m.read_text()[:50])

    def garbage_json(p):
        (p / "model.json").write_bytes(b"\xff\xfe\x00garbage")

    def edit(fn):
        def go(p):
            m = json.loads((p / "model.json").read_text())
            fn(m)
            (p / "model.json").write_text(json.dumps(m))

        return go

    def rm_weights(p):
        _weights_file(p).unlink()

    def rm_model(p):
        (p / "model.json").unlink()

    return {
        "truncated weights": (truncate_weights, "checksum mismatch"),
        "flipped byte": (flip_byte, "checksum mismatch"),
        "truncated json": (truncate_json, "invalid JSON"),
        "binary json": (garbage_json, "model.json"),
        "future version": (edit(lambda m: m.update(version=99)), "unsupported format version 99"),
        "wrong format": (edit(lambda m: m.update(format="other")), "not a nettrim-jax-checkpoint"),
        "declared shape": (edit(lambda m: m["layers"][3]["kernel"].update(shape=[64, 17])), "declares [64, 17]"),
        "declared dtype": (edit(lambda m: m["layers"][3]["kernel"].update(dtype="float64")), "declares float64"),
        "missing tensor": (edit(lambda m: m["layers"][3]["kernel"].update(tensor="9.kernel")), "'9.kernel'"),
        "input shape": (edit(lambda m: m.update(input_shape=[8, 8, 3])), "expects 1 input channels, but gets 3"),
        "layer type": (edit(lambda m: m["layers"][1].update(type="attention")), "unsupported type 'attention'"),
        "activation": (edit(lambda m: m["layers"][3].update(activation="tanh")), "unsupported activation 'tanh'"),
        "no flatten": (edit(lambda m: m["layers"].pop(2)), "insert a flatten layer"),
        "no weights file": (rm_weights, "weights file is missing"),
        "no model.json": (rm_model, "not a nettrim checkpoint"),
    }


@pytest.mark.parametrize("case", list(_damage_cases()))
def test_damaged_checkpoint_one_line_error(tmp_path, case):
    damage, expect = _damage_cases()[case]
    path = ckpt.save(tmp_path / "ck", _layers(), (8, 8, 1))
    damage(path)
    with pytest.raises(CheckpointError) as e:
        ckpt.load(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert expect in msg
    assert e.value.__cause__ is None
    assert e.value.__context__ is None or e.value.__suppress_context__  # no chained library traceback


def test_missing_and_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.load(tmp_path / "nope")
    f = tmp_path / "file.bin"
    f.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        ckpt.load(f)


def test_save_refuses_bad_weights(tmp_path):
    layers = _layers()
    layers[3]["kernel"][0, 0] = np.nan
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        ckpt.save(tmp_path / "ck", layers, (8, 8, 1))
    assert not (tmp_path / "ck").exists()
    layers = _layers()
    with pytest.raises(CheckpointError, match="expects 16 inputs, but the previous layer gives 64"):
        ckpt.save(tmp_path / "ck", layers[:3] + layers[4:], (8, 8, 1))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask):
    """mkstemp creates 0600; atomic writes must leave what a plain open() leaves."""
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        ck = ckpt.save(tmp_path / "ck", _layers(), (8, 8, 1))
        atomic.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert (os.stat(tmp_path / "plain.txt").st_mode & 0o777) == want
    written = [tmp_path / "a.txt", *sorted(p for p in ck.iterdir() if p.is_file())]
    assert len(written) == 3  # model.json + weights
    assert {p.name: oct(os.stat(p).st_mode & 0o777) for p in written} == {p.name: oct(want) for p in written}


def test_rewrite_keeps_an_existing_files_mode(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic.atomic_write_text(target, "new")
    assert target.read_text() == "new" and (os.stat(target).st_mode & 0o777) == 0o640


def test_compressed_checkpoint_round_trip_and_size(tmp_path):
    """``save(compress=True)``: kernels stored without their zeros come back exactly, the
    weights file is smaller at high sparsity, and a dense-enough kernel stays dense."""
    layers = _layers(0)
    rng = np.random.default_rng(0)
    for layer in layers:
        if layer.get("kernel") is not None:
            k = np.asarray(layer["kernel"]).copy()
            k[rng.random(k.shape) < 0.9] = 0
            layer["kernel"] = k
    dense_path = ckpt.save(tmp_path / "dense", layers, (8, 8, 1))
    small_path = ckpt.save(tmp_path / "small", layers, (8, 8, 1), compress=True)
    got = ckpt.load(small_path)
    for a, b in zip(got.layers, layers):
        if b.get("kernel") is not None:
            np.testing.assert_array_equal(a["kernel"], b["kernel"])
    size = lambda p: sum(f.stat().st_size for f in p.glob("weights-*"))  # noqa: E731
    assert size(small_path) < 0.5 * size(dense_path)
    model = json.loads((small_path / "model.json").read_text())
    assert model["version"] == 2 and any("index" in (l.get("kernel") or {}) for l in model["layers"])
    assert json.loads((dense_path / "model.json").read_text())["version"] == 1
