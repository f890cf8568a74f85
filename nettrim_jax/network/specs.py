"""Layer specs: plain, framework-free descriptions of prunable layers.

API::

    Dense(kernel (N, M), bias (M,) | None = None, activation="relu")
    Conv(kernel (kh, kw, I / groups, O) HWIO, bias (O,) | None = None, activation="relu",
         strides=(1, 1), padding="SAME", dilation=(1, 1), groups=1)
    apply_layer(spec, x) -> pre-activation z          # Dense: (..., N) -> (..., M); Conv: NHWC
    apply_activation(spec_or_name, z)
    apply_specs(specs, x) -> network output           # a sequence of specs and plain callables
    layer_rows(spec, x) -> (P, N') inputs of the dense program (patches for Conv), no bias column
    program_rows(spec, x) -> layer_rows with the bias column(s) when the layer has a bias
    program_targets(spec, z) -> (P, M') the program's target rows of an output z
    kernel_matrix(spec) -> (N' [+1], M) dense-program kernel, bias as the last row
    kernel_shape(spec) -> kernel_matrix(spec).shape, from shapes alone
    with_matrix(spec, mat) -> spec with kernel (and bias) taken from a dense-program kernel

A plain network is a sequence whose items are ``Dense`` / ``Conv`` specs or any callable
``x -> x`` (pooling, reshape, ...), applied in order; a ``Dense`` receiving a > 2-D input
flattens it to (batch, -1) first (a Conv -> Dense transition).

``activation`` is "relu", "linear" (identity), or any callable (e.g. ``jax.nn.tanh``); Net-Trim
only has programs for ReLU and linear, so ``prune`` rejects (or, on request, skips) layers
with another activation.

Conv layers become a dense program on image patches: ``lax.conv_general_dilated_patches``
with NHWC/HWIO dimension numbers returns features ordered (I, kh, kw) (channel-major), so
the matching kernel matrix is ``kernel.transpose(2, 0, 1, 3).reshape(I * kh * kw, O)``; every
output pixel of every image is one row of the program, all rows sharing the kernel.

Grouped convolutions (``groups`` G > 1, depthwise included) are one block-diagonal program:
group g's patch columns (its I/G input channels) feed only its O/G outputs, so the rows are
stacked group-major, (G * P, G * n_g) with group g's patches in column block g, the target is
(G * P, O/G) (group g's output channels in row block g) and the kernel matrix is the G
per-group (n_g, O/G) kernels stacked, (G * n_g [+ G], O/G); with a bias, each row block has
its own ones column (bias rows last, one per group).  The solution is exactly the G
separate programs sharing one misfit ball (the coupled program's Frobenius norm over all
rows); rows cost G times the memory of an ungrouped layer's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "Dense",
    "Conv",
    "apply_layer",
    "apply_activation",
    "apply_specs",
    "layer_rows",
    "program_rows",
    "program_targets",
    "from_targets",
    "kernel_matrix",
    "kernel_shape",
    "with_matrix",
    "is_spec",
    "Flatten",
    "Pool",
    "normalize_padding",
    "pair",
    "with_ones",
]

_DN = ("NHWC", "HWIO", "NHWC")


class Dense(NamedTuple):
    """Fully connected layer ``z = x @ kernel + bias`` followed by ``activation``.

    kernel: (N, M) = (in, out); bias: (M,) or None; activation: "relu" | "linear" | callable.
    """

    kernel: Any
    bias: Any = None
    activation: Any = "relu"


class Conv(NamedTuple):
    """2-D convolution on NHWC images, HWIO kernel, followed by ``activation``.

    kernel: (kh, kw, I, O); bias: (O,) or None; strides: (sh, sw); padding: "SAME",
    "VALID" or ((top, bottom), (left, right)); dilation: kernel (rhs) dilation (dh, dw).
    """

    kernel: Any
    bias: Any = None
    activation: Any = "relu"
    strides: tuple = (1, 1)
    padding: Any = "SAME"
    dilation: tuple = (1, 1)
    groups: int = 1


class Flatten(NamedTuple):
    """Parameter-free op: (B, ...) -> (B, prod(...))."""

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class Pool(NamedTuple):
    """Parameter-free 2-D pooling on NHWC images: ``kind`` "max" | "avg", ``window`` and
    ``strides`` pairs, ``padding`` "VALID" | "SAME" | ((top, bottom), (left, right)).
    Average pooling divides by the full window (padding counts as zeros)."""

    kind: str = "max"
    window: tuple = (2, 2)
    strides: tuple = (2, 2)
    padding: Any = "VALID"

    def __call__(self, x):
        w, s = pair(self.window, "window"), pair(self.strides, "strides")
        pad = normalize_padding(self.padding)
        pads = pad if isinstance(pad, str) else ((0, 0),) + tuple(pad) + ((0, 0),)
        if self.kind == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, (1, *w, 1), (1, *s, 1), pads)
        total = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, (1, *w, 1), (1, *s, 1), pads)
        return total / (w[0] * w[1])


def is_spec(obj) -> bool:
    return isinstance(obj, (Dense, Conv))


def pair(v, name: str = "value") -> tuple:
    """An int or a pair (None: 1) -> a pair of ints; anything else is a ValueError."""
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def normalize_padding(padding):
    """ "SAME"/"VALID" (any case), an int, or pairs -> a lax padding argument."""
    if isinstance(padding, str):
        p = padding.upper()
        if p not in ("SAME", "VALID"):
            raise ValueError(f"unsupported conv padding {padding!r} (only SAME, VALID or explicit pairs)")
        return p
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = []
    for p in padding:
        pads.append((int(p), int(p)) if isinstance(p, int) else tuple(int(a) for a in p))
    if len(pads) != 2:
        raise ValueError(f"conv padding needs 2 spatial entries, got {padding}")
    return tuple(pads)


def _conv_args(spec: Conv):
    return pair(spec.strides, "strides"), normalize_padding(spec.padding), pair(spec.dilation, "dilation")


def apply_layer(spec, x):
    """Pre-activation output of one layer spec (Dense: (..., N) -> (..., M); Conv: NHWC)."""
    if isinstance(spec, Dense):
        if x.shape[-1] != spec.kernel.shape[0] and x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        z = x @ spec.kernel
    elif isinstance(spec, Conv):
        strides, padding, dilation = _conv_args(spec)
        dtype = jnp.result_type(x, spec.kernel)  # lax.conv needs one dtype; promote like x @ kernel
        z = lax.conv_general_dilated(
            jnp.asarray(x, dtype),
            jnp.asarray(spec.kernel, dtype),
            strides,
            padding,
            rhs_dilation=dilation,
            dimension_numbers=_DN,
            feature_group_count=spec.groups,
        )
    else:
        raise TypeError(f"not a layer spec: {type(spec).__name__}")
    return z if spec.bias is None else z + spec.bias


def apply_activation(activation, z):
    """Apply "relu", "linear" or a callable (a spec's ``activation`` field may be passed)."""
    if is_spec(activation):
        activation = activation.activation
    if activation is None or activation == "linear":
        return z
    if activation == "relu":
        return jax.nn.relu(z)
    if callable(activation):
        return activation(z)
    raise ValueError(f"unknown activation {activation!r}")


def apply_specs(specs: Sequence, x):
    """Run a plain network (specs and callables, in order) on ``x``."""
    for item in specs:
        if is_spec(item):
            x = apply_activation(item.activation, apply_layer(item, x))
        elif callable(item):
            x = item(x)
        else:
            raise TypeError(f"network items must be Dense/Conv specs or callables, got {type(item).__name__}")
    return x


def layer_rows(spec, x):
    """The dense program's (P, N') input rows for ``x`` (no bias column).

    Dense: ``x`` flattened to (P, N).  Conv: the (B * Ho * Wo, I * kh * kw) patch matrix.
    """
    if isinstance(spec, Dense):
        n = spec.kernel.shape[0]
        if x.shape[-1] != n and x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        return x.reshape(-1, n)
    strides, padding, dilation = _conv_args(spec)
    return _patch_rows(x, tuple(spec.kernel.shape[:2]), strides, padding, dilation, conv_groups(spec))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _patch_rows(x, size, strides, padding, dilation, g: int):
    """``layer_rows`` of a Conv, one compiled program per geometry and input shape."""
    p = lax.conv_general_dilated_patches(x, size, strides, padding, rhs_dilation=dilation, dimension_numbers=_DN)
    p = p.reshape(-1, p.shape[-1])
    if g == 1:
        return p
    rows, n = p.shape[0], p.shape[1] // g
    blocks = p.reshape(rows, g, n).transpose(1, 0, 2)  # (G, P, n_g)
    eye = jnp.eye(g, dtype=p.dtype)
    return (eye[:, None, :, None] * blocks[:, :, None, :]).reshape(g * rows, g * n)


def conv_groups(spec) -> int:
    return int(getattr(spec, "groups", 1) or 1)


def program_rows(spec, x):
    """``layer_rows`` with the bias column(s) when ``spec`` has a bias (one ones column; a
    grouped conv: one indicator column per group)."""
    rows = layer_rows(spec, x)
    if spec.bias is None:
        return rows
    g = conv_groups(spec)
    if g == 1:
        return with_ones(rows)
    ind = jnp.repeat(jnp.eye(g, dtype=rows.dtype), rows.shape[0] // g, axis=0)
    return jnp.concatenate([rows, ind], axis=1)


def program_targets(spec, z):
    """(P, M) target rows of an output ``z`` (..., M); a grouped conv: (G * P, M / G),
    group-major."""
    return grouped_targets(z, conv_groups(spec))


def grouped_targets(z, g: int):
    """``program_targets`` for a layer of ``g`` conv groups (1: not grouped)."""
    m = z.shape[-1]
    zr = z.reshape(-1, m)
    if g == 1:
        return zr
    return zr.reshape(-1, g, m // g).transpose(1, 0, 2).reshape(-1, m // g)


def from_targets(spec, t, m: int):
    """Inverse of ``program_targets`` on rows: (G * P, M / G) -> (P, M)."""
    g = conv_groups(spec)
    if g == 1:
        return t
    return t.reshape(g, -1, m // g).transpose(1, 0, 2).reshape(-1, m)


@jax.jit
def with_ones(rows):
    """(P, N) -> (P, N + 1): the constant-one input column that carries a layer's bias."""
    return jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)


def kernel_matrix(spec):
    """(N' [+1], M) kernel of the dense program, with the bias as the last row if present."""
    k = spec.kernel
    g = conv_groups(spec)
    if isinstance(spec, Conv):
        kh, kw, i, o = k.shape
        k = jnp.transpose(k, (2, 0, 1, 3)).reshape(i * kh * kw, o)
        if g > 1:  # (n_g, G * O_g) -> (G * n_g, O_g), group g's block in row block g
            k = k.reshape(i * kh * kw, g, o // g).transpose(1, 0, 2).reshape(g * i * kh * kw, o // g)
    if spec.bias is not None:
        b = jnp.reshape(spec.bias, (g, -1)).astype(k.dtype)
        k = jnp.concatenate([k, b], axis=0)
    return k


def kernel_shape(spec) -> tuple[int, int]:
    """``kernel_matrix(spec).shape``, from the spec's shapes alone (no array op)."""
    k, g = jnp.shape(spec.kernel), conv_groups(spec)
    n, m = (k[0] * k[1] * k[2] * g, k[3] // g) if isinstance(spec, Conv) else (k[0], k[1])
    return n + (g if spec.bias is not None else 0), m


def with_matrix(spec, mat):
    """Inverse of ``kernel_matrix``: a spec of the same geometry with weights from ``mat``."""
    k = spec.kernel
    conv = tuple(k.shape) if isinstance(spec, Conv) else None
    bias_dtype = None if spec.bias is None else jnp.asarray(spec.bias).dtype
    kernel, bias = _unpacked(jnp.asarray(mat), conv, conv_groups(spec), jnp.asarray(k).dtype, bias_dtype)
    return spec._replace(kernel=kernel, bias=bias)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _unpacked(mat, conv, g: int, kernel_dtype, bias_dtype):
    """(kernel, bias or None) of a program kernel ``mat``: ``conv`` the Conv kernel's shape
    (None: Dense), ``g`` its groups, ``bias_dtype`` None for a layer without a bias."""
    bias = None
    if bias_dtype is not None:
        mat, bias = mat[:-g], mat[-g:].reshape(-1).astype(bias_dtype)
    if conv is not None:
        kh, kw, i, o = conv
        if g > 1:
            mat = mat.reshape(g, i * kh * kw, o // g).transpose(1, 0, 2).reshape(i * kh * kw, o)
        mat = jnp.transpose(mat.reshape(i, kh, kw, o), (1, 2, 0, 3))
    return mat.astype(kernel_dtype), bias


def transition_gain(spec) -> float:
    """Upper bound on ||layer(x + d) - layer(x)||_F / (||d||_F * ||kernel_matrix||_2) over
    the input: 1 for Dense, sqrt(number of patches an input pixel can fall in) for Conv."""
    if isinstance(spec, Dense):
        return 1.0
    kh, kw = spec.kernel.shape[:2]
    # Each output pixel reads each input pixel at most once, and an input pixel is read by at
    # most kh * kw output pixels, so ||patches(d)||_F <= sqrt(kh * kw) ||d||_F.
    return float(kh * kw) ** 0.5
