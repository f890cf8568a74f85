"""``nettrim prune --model pkg.module:factory --params ORBAX_DIR``: the user's own NNX model
(a BatchNorm ResNet) pruned from an Orbax checkpoint, written back as one; bad factory
paths, mismatched checkpoints and unprunable layers: one-line errors, exit 2, nothing in
--out."""

import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from nettrim_jax.cli.app import main
from nettrim_jax.models import resnet_factory

FACTORY = "nettrim_jax.models:resnet_factory"


def _save(path, state):
    c = ocp.StandardCheckpointer()
    c.save(path.absolute(), state)
    c.wait_until_finished()
    return path


@pytest.fixture()
def saved(tmp_path):
    m = resnet_factory()
    m.head.kernel.set_value(m.head.kernel.get_value() + 0.5)  # not the factory's own weights
    ckpt = _save(tmp_path / "ckpt", nnx.state(m))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return m, ckpt, tmp_path / "x.npy", x


def _run(*argv):
    return main(["prune", "-q", *map(str, argv)])


def test_prune_user_model_from_orbax(saved, tmp_path, capsys):
    m, ckpt, data, x = saved
    out = tmp_path / "out"
    rc = _run(
        "--model",
        FACTORY,
        "--params",
        ckpt,
        "--data",
        data,
        "--epsilon",
        "0.1",
        "--scheme",
        "parallel",
        "--max-iters",
        "300",
        "--out",
        out,
    )
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["model", "report.json", "report.md"]
    restored = ocp.StandardCheckpointer().restore((out / "model").absolute(), nnx.state(resnet_factory()))
    pruned = resnet_factory()
    nnx.update(pruned, restored)
    k0, k1 = m.block1.conv1.kernel.get_value(), pruned.block1.conv1.kernel.get_value()
    assert np.count_nonzero(k1) < np.count_nonzero(k0)
    np.testing.assert_array_equal(pruned.bn.scale.get_value(), m.bn.scale.get_value())  # BN kept
    m.eval()
    pruned.eval()
    dense, out_p = np.asarray(m(x)), np.asarray(pruned(x))
    rel = np.linalg.norm(out_p - dense) / np.linalg.norm(dense)
    assert rel < 0.3, rel  # 0.12 when written; a model written back wrong or all zeros gives ~1.0
    import json

    rep = json.loads((out / "report.json").read_text())
    assert [l["activation"] for l in rep["layers"]] == ["relu"] * 5 + ["linear"]
    assert rep["bound"] is None and "relu via affine epilogue" in (out / "report.md").read_text()


def test_bad_model_paths_and_checkpoints(saved, tmp_path, capsys, monkeypatch):
    _, ckpt, data, _ = saved
    small = _save(tmp_path / "small", nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0))))
    (tmp_path / "nonet.py").write_text(
        textwrap.dedent("""
        from flax import nnx
        class Pool(nnx.Module):
            def __init__(self):
                self.ln = nnx.LayerNorm(1, rngs=nnx.Rngs(0))
            def __call__(self, x):
                return self.ln(x).mean(axis=(1, 2))
        def make():
            return Pool()
        def number():
            return 3
        def dilated():
            return nnx.Conv(1, 4, (3, 3), input_dilation=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
    """)
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    import importlib

    nonet = importlib.import_module("nonet")
    cases = [
        ("nettrim_jax.models", ckpt, "expected 'package.module:factory'"),
        ("no_such_pkg.mod:f", ckpt, "cannot import 'no_such_pkg.mod'"),
        ("nettrim_jax.models:nope", ckpt, "has no callable 'nope'"),
        ("nonet:number", ckpt, "returned int, not an nnx.Module"),
        (FACTORY, small, "does not match the model"),
        (FACTORY, tmp_path / "missing", "no such checkpoint folder"),
        ("nonet:make", _save(tmp_path / "pool", nnx.state(nonet.make())), "no prunable layer"),
        ("nonet:dilated", _save(tmp_path / "g", nnx.state(nonet.dilated())), "input (lhs) dilation is not supported"),
    ]
    for factory, params, msg in cases:
        out = tmp_path / "out-bad"
        rc = _run("--model", factory, "--params", params, "--data", data, "--epsilon", "0.1", "--out", out)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (factory, err)
        assert msg in err and len(err.splitlines()) == 1, (factory, err)
        assert not out.exists()


def test_model_with_dropout_and_batchnorm(tmp_path, capsys, monkeypatch):
    """An NNX model holding nnx.Dropout (a PRNG key in its state) prunes from its Orbax
    checkpoint; accuracy is measured in inference mode (BatchNorm on running statistics,
    Dropout off) and on --eval-data when given; --strict returns 3 when a solve is
    uncertified; --compact is refused in one line (a --model state keeps its shapes)."""
    import json

    (tmp_path / "dropnet.py").write_text(
        textwrap.dedent("""
        from flax import nnx
        class Net(nnx.Module):
            def __init__(self, rngs):
                self.l1 = nnx.Linear(8, 16, rngs=rngs)
                self.bn = nnx.BatchNorm(16, rngs=rngs)
                self.drop = nnx.Dropout(0.5, rngs=rngs)
                self.l2 = nnx.Linear(16, 3, rngs=rngs)
            def __call__(self, x):
                return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))
        def make():
            return Net(nnx.Rngs(0))
    """)
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    import importlib

    dropnet = importlib.import_module("dropnet")
    m = dropnet.make()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    m.eval()
    y = np.asarray(np.argmax(np.asarray(m(x)), -1), np.int32)  # labels the model gets right in eval mode
    m.train()
    ckpt = _save(tmp_path / "ckpt", nnx.state(m))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "e.npz", x=x[:50], y=y[:50])
    out = tmp_path / "out"
    base = [
        "--model",
        "dropnet:make",
        "--params",
        ckpt,
        "--data",
        tmp_path / "d.npz",
        "--epsilon",
        "0.01",
        "--max-iters",
        "2000",
    ]
    assert _run(*base, "--out", out) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["run"]["accuracy_before"] == 1.0  # eval mode: the labels' own predictions
    assert rep["run"]["accuracy_after"] >= 0.9
    out2 = tmp_path / "out2"
    assert _run(*base, "--eval-data", tmp_path / "e.npz", "--out", out2) == 0
    assert json.loads((out2 / "report.json").read_text())["run"]["accuracy_on"].endswith("e.npz")
    capsys.readouterr()
    rc = _run(*base, "--compact", "--out", tmp_path / "out3")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--compact applies to model.json checkpoints only" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out3").exists()
    rc = _run(*base[:-2], "--max-iters", "1", "--strict", "--out", tmp_path / "out4")
    assert rc == 3


def test_sweep_user_model_from_orbax(saved, tmp_path, capsys):
    """``nettrim sweep --model --params``: the restored model's frontier, each row the prune
    of the restored model at that point (labels given: accuracy in eval mode)."""
    import json

    import nettrim_jax as nt

    m, ckpt, data, x = saved
    y = np.arange(len(x)) % 10
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "sw"
    rc = main(
        [
            "sweep",
            "-q",
            "--model",
            FACTORY,
            "--params",
            str(ckpt),
            "--data",
            str(data),
            "--labels",
            str(tmp_path / "y.npy"),
            "--epsilon",
            "0.1,0.4",
            "--scheme",
            "parallel",
            "--max-iters",
            "300",
            "--no-plot",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["run"]["checkpoint"] == FACTORY and doc["run"]["value"] == "accuracy"
    for row in doc["points"]:
        ref = nt.prune(m, x, epsilon=row["epsilon"], scheme="parallel", max_iters=300, progress=False)
        assert row["nnz_after"] == ref.report.nnz_after and 0 <= row["value"] <= 1
    assert doc["points"][1]["nnz_after"] < doc["points"][0]["nnz_after"]
    assert (
        main(
            ["sweep", "-q", "--model", FACTORY, "--data", str(data), "--epsilon", "0.1", "--out", str(tmp_path / "sw2")]
        )
        == 2
    )
