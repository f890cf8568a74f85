"""Datasets: MNIST-format IDX files from a folder, and the nested spirals we generate.

The data folder is never hard-coded: pass it, or set ``NETTRIM_DATA`` to a folder holding
``mnist/`` and ``fashion-mnist/`` (each with the four ``*-idx?-ubyte[.gz]`` files).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

ENV_VAR = "NETTRIM_DATA"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_dir(folder: str | os.PathLike | None = None) -> Path | None:
    """The data root: ``folder`` if given, else ``$NETTRIM_DATA``, else None."""
    folder = folder if folder is not None else os.environ.get(ENV_VAR)
    return Path(folder) if folder else None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array.

    Raises ValueError naming the file if the header, magic number or size is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise ValueError(f"{path}: expected {count} values for shape {shape}, "
                         f"found {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {stem}[.gz]")


def load_idx_folder(folder: str | os.PathLike, split: str = "train"):
    """Images (n, 28, 28) float32 in [0, 1] and labels (n,) int32 from an MNIST-format folder."""
    folder = Path(folder)
    images_stem, labels_stem = _FILES[split]
    images = read_idx(_find(folder, images_stem))
    labels = read_idx(_find(folder, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def load_mnist(name: str = "mnist", split: str = "train", root=None):
    """MNIST or Fashion-MNIST (``name="fashion-mnist"``) from ``root`` / ``$NETTRIM_DATA``."""
    base = data_dir(root)
    if base is None:
        raise FileNotFoundError(f"no data folder: pass one or set {ENV_VAR}")
    return load_idx_folder(base / name, split)


def nested_spirals(n: int = 1000, turns: float = 2.0, noise: float = 0.0, seed: int = 0):
    """Two nested (interleaved) spirals in the plane, as in Net-Trim's supplement.

    Class k in {0, 1} follows r = t, angle = 2 pi turns t + k pi for t uniform in
    [0.05, 1], plus Gaussian noise of standard deviation ``noise``.  Returns points (n, 2)
    float32 and labels (n,) int32, classes alternating.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    t = rng.uniform(0.05, 1.0, n)
    angle = 2 * np.pi * turns * t + np.pi * labels
    pts = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    pts = pts + noise * rng.standard_normal(pts.shape)
    return pts.astype(np.float32), labels.astype(np.int32)
