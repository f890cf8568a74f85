"""The checkpoint's layer dicts: what ``model.json`` may describe, checked.

Layers are plain dicts (JSON-able fields plus numpy arrays)::

    {"type": "dense", "activation": "relu"|"linear", "kernel": (N, M), "bias": (M,) | None}
    {"type": "conv", "activation": ..., "kernel": (kh, kw, C_in, C_out), "bias": (C_out,) | None,
     "strides": [sh, sw], "padding": "SAME" | "VALID" | [[lo, hi], [lo, hi]], "dilation": [dh, dw]}
    {"type": "flatten"}
    {"type": "maxpool" | "avgpool", "window": [wh, ww], "strides": [sh, sw], "padding": ...}

``validate_layers`` normalizes and checks them (types, activations, ranks, dtypes, finite
values, chaining through ``infer_shapes``) and raises ``CheckpointError`` naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["CheckpointError", "validate_layers", "infer_shapes", "PARAM_TYPES", "OP_TYPES", "ACTIVATIONS"]


PARAM_TYPES = ("dense", "conv")
OP_TYPES = ("flatten", "maxpool", "avgpool")
ACTIVATIONS = ("relu", "linear")
_DTYPES = ("float16", "bfloat16", "float32", "float64")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message is one line naming the file."""


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
