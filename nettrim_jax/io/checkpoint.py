"""Checkpoints: a readable model description beside safetensors weights; never pickle.

A checkpoint is a directory::

    CKPT/
      model.json                   # format, version, input shape, layers, weights file + sha256
      weights-<sha12>.safetensors  # every tensor, named "<layer index>.<kernel|bias>"

``model.json`` is the commit point.  ``save`` writes the weights under a new content-addressed
name first, then replaces ``model.json`` with ``os.replace`` (atomic on POSIX and Windows),
then deletes weights no longer referenced.  A run interrupted at any moment leaves either the
old checkpoint or the new one, never a mix.  ``load`` checks everything it reads (JSON, format
version, checksum, tensor names, shapes, dtypes, finite values, layer chaining) and raises
``CheckpointError`` with one line naming the file and the problem.

Layers are plain dicts (JSON-able fields plus numpy arrays), described and checked in
``io.schema``.

Inputs are channels-last (NHWC) as in Flax; ``input_shape`` excludes the batch axis.
``save(..., compress=True)`` stores each kernel without its zeros where that is smaller: its
nonzero values under the kernel's tensor name and, under ``<name>.index``, int32 flat indices
or a packed bitmask (``io.sparse``); ``model.json`` then names the index tensor (version 2).
``io.convert`` turns models into layer dicts (``from_model``), layer dicts into the spec
network ``prune`` takes (``to_network``), runs them (``apply``) and writes a checkpoint's
weights back into one's own model (``load_into``).  Writes go through ``io.atomic``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nettrim_jax.io import sparse
from nettrim_jax.io.atomic import atomic_open, atomic_write_json
from nettrim_jax.io.data import file_sha256 as _sha256
from nettrim_jax.io.schema import (  # noqa: F401  (re-exported: the format's names)
    ACTIVATIONS,
    OP_TYPES,
    PARAM_TYPES,
    CheckpointError,
    infer_shapes,
    validate_layers,
)

FORMAT = "nettrim-jax-checkpoint"
VERSION = 2  # the newest format read and written (2: kernels may be stored without zeros)
MODEL_FILE = "model.json"


class Checkpoint(NamedTuple):
    """A loaded checkpoint.

    Attributes:
      layers: list of layer dicts (see the module docstring); tensors are numpy arrays.
      input_shape: per-sample input shape, e.g. (64,) or (28, 28, 1).
      metadata: free-form JSON-able dict stored with the model (provenance, pruning info).
      path: the directory it was read from.
    """

    layers: list
    input_shape: tuple
    metadata: dict
    path: Path | None = None


# ----------------------------------------------------------------------------- save / load


def save(
    path: str | os.PathLike,
    layers: Sequence[dict],
    input_shape: Sequence[int],
    metadata: dict | None = None,
    compress: bool = False,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring).

    Args:
      path: the checkpoint directory (created if missing; an existing checkpoint there is
        replaced only once the new one is complete).
      layers: layer dicts; tensors may be numpy or JAX arrays.
      input_shape: per-sample input shape.
      metadata: JSON-able dict stored in ``model.json``.
      compress: store each kernel without its zeros where that is smaller (``io.sparse``:
        the nonzero values plus int32 indices or a bitmask; format version 2).
    Returns:
      the directory path.
    Raises:
      CheckpointError: invalid layers, non-finite weights, or an existing non-checkpoint
        file at ``path``.
    """
    from safetensors.numpy import save as st_save

    path = Path(path)
    layers = validate_layers(list(layers), list(input_shape), where=str(path))
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a checkpoint directory")
    path.mkdir(parents=True, exist_ok=True)

    tensors, desc = {}, []
    for i, layer in enumerate(layers):
        d = {k: v for k, v in layer.items() if k not in ("kernel", "bias")}
        for name in ("kernel", "bias"):
            if name not in layer:
                continue
            if layer[name] is None:
                d[name] = None
                continue
            key = f"{i}.{name}"
            a = np.ascontiguousarray(layer[name])
            d[name] = {"tensor": key, "shape": list(a.shape), "dtype": a.dtype.name}
            packed = sparse.compress(a) if compress and name == "kernel" else None
            if packed is not None and sparse.compressed_nbytes(packed) < a.nbytes:
                tensors[key] = np.ascontiguousarray(packed.values)
                tensors[f"{key}.index"] = np.ascontiguousarray(packed.index)
                d[name]["index"] = f"{key}.index"
            else:
                tensors[key] = a
        desc.append(d)
    blob = st_save(tensors, metadata={"format": FORMAT})
    digest = hashlib.sha256(blob).hexdigest()
    wname = f"weights-{digest[:12]}.safetensors"
    wpath = path / wname
    if not (wpath.exists() and _sha256(wpath) == digest):
        with atomic_open(wpath, "wb") as f:
            f.write(blob)
    model = {
        "format": FORMAT,
        "version": 2 if any(isinstance(v, dict) and "index" in v for d in desc for v in d.values()) else 1,
        "input_shape": [int(a) for a in input_shape],
        "layers": desc,
        "weights": {"file": wname, "sha256": digest},
        "metadata": metadata or {},
    }
    try:
        atomic_write_json(path / MODEL_FILE, model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / MODEL_FILE}: metadata is not JSON-serializable ({e})") from None
    for old in path.glob("weights-*.safetensors"):
        if old.name != wname:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def _read_model_json(path: Path) -> dict:
    mfile = path / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (expected a folder holding {MODEL_FILE})")
    if not mfile.is_file():
        raise CheckpointError(f"{path}: not a nettrim checkpoint (no {MODEL_FILE})")
    try:
        model = json.loads(mfile.read_text("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{mfile}: not UTF-8 text (corrupt file)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{mfile}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); the file is corrupt or truncated"
        ) from None
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise CheckpointError(
            f"{mfile}: not a {FORMAT} file (format field is "
            f"{model.get('format') if isinstance(model, dict) else None!r})"
        )
    v = model.get("version")
    if not isinstance(v, int) or v > VERSION or v < 1:
        raise CheckpointError(
            f"{mfile}: unsupported format version {v!r} "
            f"(this nettrim-jax reads versions 1 to {VERSION}); upgrade nettrim-jax"
        )
    for key, typ in (("layers", list), ("input_shape", list), ("weights", dict)):
        if not isinstance(model.get(key), typ):
            raise CheckpointError(f"{mfile}: missing or malformed field {key!r}")
    return model


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and fully validate a checkpoint directory.

    Returns:
      ``Checkpoint(layers, input_shape, metadata, path)`` with numpy tensors.
    Raises:
      CheckpointError: one line naming the file: missing, corrupt or truncated files,
        checksum mismatch, unknown format version, missing/extra tensors, wrong shapes or
        dtypes, NaN/Inf weights, layers that do not chain.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    path = Path(path)
    model = _read_model_json(path)
    mfile = path / MODEL_FILE
    wfile = model["weights"].get("file")
    if not isinstance(wfile, str) or Path(wfile).name != wfile:
        raise CheckpointError(f"{mfile}: malformed weights file name {wfile!r}")
    wpath = path / wfile
    if not wpath.is_file():
        raise CheckpointError(f"{wpath}: weights file is missing")
    blob = wpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != model["weights"].get("sha256"):
        raise CheckpointError(f"{wpath}: checksum mismatch; the weights file is corrupt or truncated")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{wpath}: cannot read safetensors ({str(e).splitlines()[0]})") from None

    layers, used = [], set()
    for i, d in enumerate(model["layers"]):
        if not isinstance(d, dict):
            raise CheckpointError(f"{mfile}: layer {i} is not an object")
        layer = dict(d)
        for name in ("kernel", "bias"):
            ref = d.get(name)
            if ref is None:
                continue
            if not isinstance(ref, dict) or "tensor" not in ref:
                raise CheckpointError(f"{mfile}: layer {i} {name} is malformed")
            key = ref["tensor"]
            if key not in tensors:
                raise CheckpointError(f"{wpath}: tensor {key!r} (layer {i} {name}) is missing")
            a = tensors[key]
            if "index" in ref:  # stored without its zeros (io.sparse)
                if ref["index"] not in tensors:
                    raise CheckpointError(f"{wpath}: tensor {ref['index']!r} (layer {i} {name} index) is missing")
                try:
                    a = sparse.decompress(sparse.Compressed(tensors[ref["index"]], a, tuple(ref.get("shape", []))))
                except (TypeError, ValueError) as e:
                    raise CheckpointError(f"{wpath}: layer {i} {name}: damaged sparse tensor ({e})") from None
                used.add(ref["index"])
            if list(a.shape) != list(ref.get("shape", [])):
                raise CheckpointError(
                    f"{wpath}: tensor {key!r} has shape {list(a.shape)}, but {MODEL_FILE} declares {ref.get('shape')}"
                )
            if a.dtype.name != ref.get("dtype"):
                raise CheckpointError(
                    f"{wpath}: tensor {key!r} has dtype {a.dtype.name}, but {MODEL_FILE} declares {ref.get('dtype')}"
                )
            layer[name] = a
            used.add(key)
        layers.append(layer)
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(f"{wpath}: tensors {extra} are not described in {MODEL_FILE}")
    layers = validate_layers(layers, model["input_shape"], where=str(wpath))
    meta = model.get("metadata") or {}
    return Checkpoint(
        layers=layers,
        input_shape=tuple(model["input_shape"]),
        metadata=meta if isinstance(meta, dict) else {},
        path=path,
    )


def describe(path: str | os.PathLike) -> dict:
    """``model.json`` of a checkpoint, parsed and format-checked (tensors not read)."""
    return _read_model_json(Path(path))
