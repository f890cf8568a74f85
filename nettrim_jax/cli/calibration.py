"""Calibration data for the command line: ``.npy``, ``.npz`` or a folder of MNIST-format IDX
files, checked and shaped to the model's input."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["UsageError", "load_calibration"]


class UsageError(ValueError):
    """Bad arguments or input data; exit code 2."""


def one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n")[0].split()) if "\n" in text else text


def _pick(arrays: dict, names: Sequence[str], path, what, key=None):
    if key is not None:
        if key not in arrays:
            raise UsageError(f"{path}: no array named {key!r} (has {sorted(arrays)})")
        return arrays[key]
    for n in names:
        if n in arrays:
            return arrays[n]
    return None


def _check_container(path: Path) -> None:
    """A .npz must be a zip archive and a .npy must start with numpy's magic; otherwise
    np.load falls back to unpickling and its error speaks of pickled data."""
    import zipfile

    if path.suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise UsageError(f"{path}: not a valid .npz (zip) file; corrupt or truncated, or not written by np.savez")
        return
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise UsageError(
                f"{path}: not a valid .npy file (no NumPy header); corrupt or truncated, or not written by np.save"
            )


def load_calibration(
    path: str | os.PathLike,
    input_shape: Sequence[int] | None,
    *,
    key: str | None = None,
    labels: str | None = None,
    split: str = "train",
    samples: int | None = None,
):
    """Calibration inputs (and labels if any) for a model with per-sample ``input_shape``.

    ``path`` is a ``.npy`` file (inputs), a ``.npz`` file (inputs under ``key`` or one of
    x/X/inputs/images/data, or its only array; labels under y/labels/targets if present), or
    a folder of MNIST-format IDX files (images scaled to [0, 1]).  Arrays are used as they
    are (cast to float32): preprocess them as for training.  Samples are reshaped to
    ``input_shape`` when the sizes agree ((P, 28, 28) -> (P, 784) or (P, 28, 28, 1)); with
    ``input_shape=None`` (a user's own model, ``--model``) they are used as they are and
    integer arrays (token ids) stay integers.

    Returns ``(x (P, *input_shape) float32, y (P,) int or None)``; raises UsageError.
    """
    from nettrim_jax.io import data as nt_data

    path = Path(path)
    y = None
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_dir():
        try:
            x, y = nt_data.load_idx_folder(path, split)
        except FileNotFoundError as e:
            raise UsageError(f"{e}; expected MNIST-format IDX files (or pass a .npy/.npz file)") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
    elif path.suffix in (".npy", ".npz"):
        _check_container(path)
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise UsageError(
                f"{path}: cannot read ({str(e).splitlines()[0]}); object/pickled arrays are refused"
            ) from None
        except Exception as e:  # noqa: BLE001 - OSError, EOFError, zipfile.BadZipFile, ...
            raise UsageError(f"{path}: cannot read ({one_line(e)}); the file is corrupt or truncated") from None
        if path.suffix == ".npy":
            x = loaded
        else:
            try:
                arrays = {k: loaded[k] for k in loaded.files}
            except Exception as e:  # zipfile / format errors on a damaged archive
                raise UsageError(f"{path}: cannot read ({e}); the file is corrupt or truncated") from None
            if not arrays:
                raise UsageError(f"{path}: holds no arrays (empty calibration set)")
            x = _pick(arrays, ("x", "X", "inputs", "images", "data"), path, "inputs", key)
            if x is None:
                if len(arrays) != 1:
                    raise UsageError(
                        f"{path}: cannot tell which array holds the inputs among {sorted(arrays)}; pass --key"
                    )
                x = next(iter(arrays.values()))
            y = _pick(arrays, ("y", "labels", "targets"), path, "labels")
    else:
        raise UsageError(f"{path}: unsupported data file; pass a .npy or .npz file or a folder of IDX files")
    if labels is not None:
        try:
            y = np.load(labels, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"{labels}: cannot read labels ({str(e).splitlines()[0]})") from None

    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise UsageError(f"{path}: inputs have dtype {x.dtype}; expected numbers")
    if x.ndim == 0 or x.shape[0] == 0:
        raise UsageError(f"{path}: empty calibration set (inputs of shape {x.shape})")
    if samples is not None:
        if samples < 1:
            raise UsageError(f"--samples must be >= 1, got {samples}")
        x = x[:samples]
        y = None if y is None else np.asarray(y)[:samples]
    if input_shape is None and x.dtype.kind in "iu":
        x = x.astype(np.int32)  # a user model's token ids stay integers
    else:
        x = x.astype(np.float32)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise UsageError(f"{path}: inputs contain {bad} NaN or Inf values")
    want = x.shape[1:] if input_shape is None else tuple(int(a) for a in input_shape)
    if x.shape[1:] != want:
        if math.prod(x.shape[1:]) != math.prod(want):
            raise UsageError(
                f"{path}: samples have shape {x.shape[1:]} ({math.prod(x.shape[1:])} values) "
                f"but the model expects input shape {want} ({math.prod(want)} values)"
            )
        x = x.reshape((x.shape[0],) + want)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
            raise UsageError(
                f"labels of shape {y.shape} and dtype {y.dtype} do not match "
                f"{x.shape[0]} samples (need integer class labels)"
            )
    return x, y
