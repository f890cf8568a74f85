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

Layers are plain dicts (JSON-able fields plus numpy arrays)::

    {"type": "dense", "activation": "relu"|"linear", "kernel": (N, M), "bias": (M,) | None}
    {"type": "conv", "activation": ..., "kernel": (kh, kw, C_in, C_out), "bias": (C_out,) | None,
     "strides": [sh, sw], "padding": "SAME" | "VALID" | [[lo, hi], [lo, hi]], "dilation": [dh, dw]}
    {"type": "flatten"}
    {"type": "maxpool" | "avgpool", "window": [wh, ww], "strides": [sh, sw], "padding": ...}

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
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nettrim_jax.io import sparse
from nettrim_jax.io.atomic import atomic_open, atomic_write_json
from nettrim_jax.io.data import file_sha256 as _sha256

FORMAT = "nettrim-jax-checkpoint"
VERSION = 2  # the newest format read and written (2: kernels may be stored without zeros)
MODEL_FILE = "model.json"
PARAM_TYPES = ("dense", "conv")
OP_TYPES = ("flatten", "maxpool", "avgpool")
ACTIVATIONS = ("relu", "linear")
_DTYPES = ("float16", "bfloat16", "float32", "float64")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message is one line naming the file."""


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


# ----------------------------------------------------------------------------- layer checks


def _fail(where, msg) -> CheckpointError:
    return CheckpointError(f"{where}: {msg}")


def _pair(v, what, where, i):
    if isinstance(v, int):
        v = [v, v]
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 2
        or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in v)
    ):
        raise _fail(where, f"layer {i}: {what} must be two positive integers, got {v!r}")
    return [int(a) for a in v]


def _padding(v, where, i):
    if isinstance(v, str):
        if v.upper() not in ("SAME", "VALID"):
            raise _fail(where, f"layer {i}: padding must be 'SAME', 'VALID' or [[lo, hi], [lo, hi]], got {v!r}")
        return v.upper()
    ok = (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(a, int) and a >= 0 for a in p) for p in v
        )
    )
    if not ok:
        raise _fail(where, f"layer {i}: padding must be 'SAME', 'VALID' or [[lo, hi], [lo, hi]], got {v!r}")
    return [[int(a) for a in p] for p in v]


def _out_len(n, k, s, pad, d=1):
    keff = (k - 1) * d + 1
    if pad == "SAME":
        return -(-n // s)
    lo, hi = (0, 0) if pad == "VALID" else pad
    return (n + lo + hi - keff) // s + 1


def infer_shapes(layers: Sequence[dict], input_shape: Sequence[int], where: str = "model") -> list:
    """Per-sample shape after each layer; raises CheckpointError on a mismatch.

    Args:
      layers: layer dicts with tensors (or tensor shapes under ``"kernel_shape"``).
      input_shape: per-sample input shape.
      where: name used in error messages (a file or "model").
    Returns:
      list of shape tuples, one per layer.
    """
    shape = tuple(int(a) for a in input_shape)
    out = []
    for i, layer in enumerate(layers):
        t = layer["type"]
        if t == "dense":
            kshape = _kshape(layer)
            if len(shape) != 1:
                raise _fail(
                    where, f"layer {i} (dense) needs flat input, but gets shape {shape}; insert a flatten layer"
                )
            if kshape[0] != shape[0]:
                raise _fail(
                    where,
                    f"layer {i} (dense) kernel {kshape} expects {kshape[0]} inputs, "
                    f"but the previous layer gives {shape[0]}",
                )
            shape = (kshape[1],)
        elif t == "conv":
            kshape = _kshape(layer)
            if len(shape) != 3:
                raise _fail(where, f"layer {i} (conv) needs (H, W, C) input, gets shape {shape}")
            if kshape[2] != shape[2]:
                raise _fail(
                    where, f"layer {i} (conv) kernel {kshape} expects {kshape[2]} input channels, but gets {shape[2]}"
                )
            s, d, pad = layer["strides"], layer["dilation"], layer["padding"]
            pads = [pad, pad] if isinstance(pad, str) else pad
            hw = [_out_len(shape[a], kshape[a], s[a], pads[a], d[a]) for a in range(2)]
            if min(hw) < 1:
                raise _fail(where, f"layer {i} (conv) kernel {kshape[:2]} does not fit input {shape[:2]}")
            shape = (hw[0], hw[1], kshape[3])
        elif t == "flatten":
            shape = (int(math.prod(shape)),)
        elif t in ("maxpool", "avgpool"):
            if len(shape) != 3:
                raise _fail(where, f"layer {i} ({t}) needs (H, W, C) input, gets shape {shape}")
            w, s, pad = layer["window"], layer["strides"], layer["padding"]
            pads = [pad, pad] if isinstance(pad, str) else pad
            hw = [_out_len(shape[a], w[a], s[a], pads[a]) for a in range(2)]
            if min(hw) < 1:
                raise _fail(where, f"layer {i} ({t}) window {w} does not fit input {shape[:2]}")
            shape = (hw[0], hw[1], shape[2])
        out.append(shape)
    return out


def _kshape(layer):
    if "kernel" in layer and layer["kernel"] is not None:
        return tuple(np.shape(layer["kernel"]))
    return tuple(layer["kernel_shape"])


def validate_layers(layers: Sequence[dict], input_shape, where: str = "model") -> list:
    """Normalize and check layer dicts (types, activations, tensor ranks, finite values,
    chaining).  Returns new dicts with numpy tensors; raises CheckpointError."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise _fail(where, "the model has no layers")
    if (
        not isinstance(input_shape, (list, tuple))
        or not input_shape
        or not all(isinstance(a, (int, np.integer)) and a >= 1 for a in input_shape)
    ):
        raise _fail(where, f"input_shape must be a list of positive integers, got {input_shape!r}")
    clean = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or "type" not in layer:
            raise _fail(where, f"layer {i} is not a dict with a 'type'")
        t = layer["type"]
        if t not in PARAM_TYPES + OP_TYPES:
            raise _fail(where, f"layer {i} has unsupported type {t!r}; supported: {', '.join(PARAM_TYPES + OP_TYPES)}")
        c = {"type": t}
        if t in PARAM_TYPES:
            act = layer.get("activation", "relu")
            if act not in ACTIVATIONS:
                raise _fail(
                    where, f"layer {i} ({t}) has unsupported activation {act!r}; supported: {', '.join(ACTIVATIONS)}"
                )
            c["activation"] = act
            rank = 2 if t == "dense" else 4
            for name in ("kernel", "bias"):
                v = layer.get(name)
                if v is None:
                    if name == "kernel":
                        raise _fail(where, f"layer {i} ({t}) has no kernel")
                    c[name] = None
                    continue
                a = np.asarray(v)
                if a.dtype.name not in _DTYPES:
                    raise _fail(where, f"layer {i} {name} has dtype {a.dtype}, expected a float type")
                want = rank if name == "kernel" else 1
                if a.ndim != want:
                    raise _fail(where, f"layer {i} ({t}) {name} must be {want}-D, got shape {a.shape}")
                if not np.all(np.isfinite(a)):
                    raise _fail(where, f"layer {i} {name} contains NaN or Inf values")
                c[name] = a
            if c["bias"] is not None and c["bias"].shape[0] != c["kernel"].shape[-1]:
                raise _fail(where, f"layer {i} ({t}) bias {c['bias'].shape} does not match kernel {c['kernel'].shape}")
            if t == "conv":
                c["strides"] = _pair(layer.get("strides", 1), "strides", where, i)
                c["dilation"] = _pair(layer.get("dilation", 1), "dilation", where, i)
                c["padding"] = _padding(layer.get("padding", "SAME"), where, i)
        elif t in ("maxpool", "avgpool"):
            c["window"] = _pair(layer.get("window", 2), "window", where, i)
            c["strides"] = _pair(layer.get("strides", c["window"]), "strides", where, i)
            c["padding"] = _padding(layer.get("padding", "VALID"), where, i)
        clean.append(c)
    infer_shapes(clean, input_shape, where)
    return clean


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
