"""Tracing a model's forward pass: the prunable layers are intercepted, each one's input and
pre-activation recorded in call order (``Recorder``), optionally replaced (an override, used
to detect activations), and every layer's input checked against its kernel.

Every adapter (``network.adapters``) satisfies the ``Adapter`` protocol.  The first forward
pass turns a shape mismatch, or a shape error raised elsewhere in the model's forward, into an
``InputShapeError`` (a ``ValueError``) naming the calibration data's shape and the layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax.numpy as jnp

from nettrim_jax.network.specs import Conv, pair

ACTIVE: list = []  # the recorders of the forward passes in progress (innermost last)


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


def key_name(key) -> str:
    """The report name of a layer key ``(path, index)``: "blocks/lin1" for a plain layer
    (index None), "blocks/lin1[2]" for the third layer of a stacked (scanned) one."""
    path, index = key
    return path_name(path) + ("" if index is None else f"[{index}]")


class InputShapeError(ValueError):
    """The calibration data does not fit the model's input (found on the first forward pass)."""


# jax's own messages for shape mismatches (dot_general, reshape, broadcasting, convolution)
_SHAPE_ERROR = re.compile(r"shape|dimension size|ndim")


def dense_mismatch(x, n_in, flatten=False):
    """None if ``x`` fits a dense layer with ``n_in`` inputs, else what is wrong."""
    shape = tuple(jnp.shape(x))
    if flatten and len(shape) > 2 and shape[-1] != n_in:
        size = 1
        for d in shape[1:]:
            size *= int(d)
        if size == n_in:
            return None
        return f"expects {n_in} input features (per sample, flattened), got input of shape {shape}"
    if len(shape) >= 1 and shape[-1] == n_in:
        return None
    return f"expects {n_in} input features on the last axis, got input of shape {shape}"


def conv_mismatch(x, kernel, groups=1):
    """None if ``x`` fits a channels-last convolution with kernel (spatial..., I, O) (batched:
    as many axes as the kernel), else what is wrong."""
    shape = tuple(jnp.shape(x))
    nd = len(jnp.shape(kernel))
    c = int(jnp.shape(kernel)[-2]) * int(groups or 1)
    if len(shape) == nd and shape[-1] == c:
        return None
    want = f"NHWC inputs (batch, H, W, {c})" if nd == 4 else f"{nd}-D inputs (batch, ..., {c})"
    return f"expects {want}, got input of shape {shape}"


def first_forward(fn, x):
    """Run the adapter's first forward pass; shape errors become one-line ``InputShapeError``
    naming the calibration data's shape (the original error is chained)."""
    where = f"calibration data x of shape {tuple(jnp.shape(x))} does not fit the model"
    try:
        return fn()
    except InputShapeError as e:
        raise InputShapeError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if not _SHAPE_ERROR.search(first):
            raise
        raise InputShapeError(f"{where} (the forward pass failed: {first})") from e


class Captured(NamedTuple):
    """One forward pass: ``output`` of the model, and per prunable layer (call order) its
    ``inputs`` (as the layer received them) and ``preacts`` (its output before any
    activation)."""

    output: Any
    inputs: list
    preacts: list


class Adapter(Protocol):
    """The layer-by-layer view of a model that ``prune`` works on.

    names: one per prunable layer, in call order ("layers/0", "Dense_1", "2").
    specs: ``Dense`` / ``Conv`` specs with the original weights and geometry (activation:
      declared for plain specs, None for Flax models).
    first: ``Captured`` of the unmodified model on the calibration batch.
    unused: names of prunable layers the forward pass never calls (left unchanged).
    refused: name -> why, for layers that hold a kernel and are left dense (an Einsum that is
      not a projection, a module Net-Trim does not know, weights applied from outside).
    """

    names: list
    specs: list
    first: Captured
    unused: list
    refused: dict

    def run(self, specs: Sequence, x, override=None) -> Captured:
        """The model with these weights on ``x``; ``override=(i, fn)`` replaces layer i's z."""
        ...

    def pure(self) -> tuple:
        """``(fn, consts)``: ``fn(consts, specs, x)`` is the model's output with these
        weights, a pure function (jit- and grad-able; no layer is recorded)."""
        ...

    def rebuild(self, specs: Sequence) -> Any:
        """A new model in the input's form with these weights (the input is not mutated)."""
        ...

    def masks(self, specs: Sequence) -> Any:
        """Bools matching the model's parameters: True where a weight survives."""
        ...


def left_dense(net) -> dict:
    """name -> why for every layer of ``net`` (an ``Adapter``) that holds a kernel and is
    left as it was: never called, or refused (the report's ``left_dense``)."""
    out = {name: "not called by the forward pass" for name in net.unused}
    out.update(net.refused)
    return out


class Recorder:
    """One forward pass's record of the prunable layers' calls.

    Layers are keyed ``(path, index)``: ``index`` is None for a plain layer and, for a path
    in ``stacked`` (parameters with a leading layer axis, applied by ``nnx.scan`` /
    ``nn.scan``), the number of earlier calls of that path in this pass (the scan step).
    """

    def __init__(self, override=None, namer=str, stacked=frozenset()):
        self.inputs: list = []
        self.preacts: list = []
        self.keys: list = []
        self.override = override
        self.namer = namer
        self.stacked = set(stacked)  # an adapter that finds them while tracing adds to it
        self.plans: dict = {}  # key -> projections.Plan for LinearGeneral / Einsum layers
        self.refused: dict = {}  # key -> why the layer is left unpruned (not a projection)
        self.seen: dict = {}  # key -> the layer object as called (a stacked layer's slice)
        self._calls: dict = {}

    def key(self, path) -> tuple:
        """The key of this call of the layer at ``path`` (call once per call)."""
        if path not in self.stacked:
            return (path, None)
        n = self._calls.get(path, 0)
        self._calls[path] = n + 1
        return (path, n)

    def check(self, key, problem):
        """Raise ``InputShapeError`` if the layer's input does not fit (``problem`` not None)."""
        if problem is not None:
            raise InputShapeError(f"layer {self.namer(key)!r} {problem}")

    def refuse(self, key, reason: str):
        """Note a layer that is left unpruned, with the one-line reason."""
        self.refused.setdefault(key, reason)

    def record(self, key, x, z):
        if key in self.keys:
            raise ValueError(
                f"layer {self.namer(key)!r} is called more than once in one forward pass; shared (re-used) layers are not supported"
            )
        i = len(self.keys)
        self.keys.append(key)
        self.inputs.append(x)
        self.preacts.append(z)
        if self.override is not None and self.override[0] == i:
            return self.override[1](z)
        return z


def conv_spec(kernel, bias, strides, padding, kernel_dilation, input_dilation, groups, where):
    if pair(input_dilation) != (1, 1):
        raise NotImplementedError(f"{where}: input (lhs) dilation is not supported")
    if jnp.ndim(kernel) != 4:
        raise NotImplementedError(f"{where}: only 2-D convolutions are supported")
    if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID"):
        raise NotImplementedError(f"{where}: padding {padding!r} is not supported")
    return Conv(
        kernel=kernel,
        bias=bias,
        activation=None,
        strides=pair(strides),
        padding=padding,
        dilation=pair(kernel_dilation),
        groups=int(groups or 1),
    )
