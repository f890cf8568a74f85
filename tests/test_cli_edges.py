"""Command-line edges a newcomer hit (issue 16): unwritable --out, clean warnings, complete
reports, demo --out safety, small messages.  In-process ``cli.main`` runs, tiny models."""

import json
import os
import warnings

import numpy as np
import pytest

from nettrim_jax.io import checkpoint as ck
from nettrim_jax.cli import app as cli

FAST = ["--max-iters", "400", "-q"]


def _layers(seed=0, sizes=(8, 16, 12, 3)):
    rng = np.random.default_rng(seed)
    return [{"type": "dense", "activation": "relu" if j < len(sizes) - 2 else "linear",
             "kernel": (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
             "bias": (0.1 * rng.standard_normal(b)).astype(np.float32)}
            for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    layers = _layers()
    ck.save(root / "ckpt", layers, (8,))
    x = np.random.default_rng(1).standard_normal((150, 8)).astype(np.float32)
    y = np.argmax(ck.apply(layers, x), -1).astype(np.int32)
    np.savez(root / "calib.npz", x=x, y=y)
    return root


def _run(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _prune_args(root, out, *extra):
    return ["prune", root / "ckpt", "--data", root / "calib.npz", "--epsilon", "0.05",
            "--out", out, *FAST, *extra]


@pytest.fixture
def solves(monkeypatch):
    """Counts layer solves (the CLI's cascade and prune both call solver.layer.solve_layer)."""
    import nettrim_jax.network.prune as prune_mod
    import nettrim_jax.solver.layer as layer_mod

    calls = []
    real = layer_mod.solve_layer

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(layer_mod, "solve_layer", counted)
    monkeypatch.setattr(prune_mod, "solve_layer", counted)
    return calls


# ----------------------------------------------------------------------------- item 4


def test_out_beneath_a_file_is_refused_before_any_solve(setup, tmp_path, capsys, solves):
    """Fails even as root: a regular file cannot be a parent folder."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = _run(_prune_args(setup, blocker / "out"), capsys)
    assert rc == cli.EXIT_USAGE
    assert err == f"nettrim: error: {blocker / 'out'}: cannot create it: {blocker} is not a folder\n"
    assert solves == []


def test_out_without_write_permission_is_refused_before_any_solve(setup, capsys, solves):
    """/sys refuses new files even to root (a read-only sysfs); skipped where it does not."""
    import tempfile

    try:
        os.unlink(tempfile.mkstemp(dir="/sys")[1])
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    rc, _, err = _run(_prune_args(setup, "/sys/nettrim-out"), capsys)
    assert rc == cli.EXIT_USAGE
    assert err.startswith("nettrim: error: /sys/nettrim-out: cannot write there (") and err.count("\n") == 1
    assert solves == []
    assert not os.path.exists("/sys/nettrim-out")
