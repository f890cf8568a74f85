"""What the command-line tests share: a tiny dense checkpoint with calibration data, and
in-process ``cli.main`` runs."""

import numpy as np

from nettrim_jax.cli import app as cli
from nettrim_jax.io import checkpoint as ck
from nettrim_jax.io import convert

FAST = ["--max-iters", "400", "-q"]


def mlp_layers(seed=0, sizes=(8, 16, 12, 3)):
    """Checkpoint layers of a random ReLU MLP (linear output layer)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "type": "dense",
            "activation": "relu" if j < len(sizes) - 2 else "linear",
            "kernel": (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(b)).astype(np.float32),
        }
        for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]


def write_setup(root):
    """``root/ckpt`` and ``root/calib.npz`` (150 samples, the model's own labels); returns
    (layers, x, y)."""
    layers = mlp_layers()
    ck.save(root / "ckpt", layers, (8,))
    x = np.random.default_rng(1).standard_normal((150, 8)).astype(np.float32)
    y = np.argmax(convert.apply(layers, x), -1).astype(np.int32)
    np.savez(root / "calib.npz", x=x, y=y)
    return layers, x, y


def run(args, capsys):
    """(exit code, stdout, stderr) of ``nettrim ARGS`` in-process."""
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def prune_args(root, out, *extra):
    return ["prune", root / "ckpt", "--data", root / "calib.npz", "--epsilon", "0.05", "--out", out, *FAST, *extra]
