"""Projections as dense programs: ``nnx.LinearGeneral`` / Linen ``DenseGeneral`` and
``nnx.Einsum`` / Linen ``Einsum`` that contract some input axes against a kernel and produce
some output axes.

A ``Plan`` says which axes: the input x (any leading axes, e.g. (batch, seq, ...)) has its
contracted axes moved to the end and flattened, so every leading position (a token, a
pixel) is one program row with N = prod(contracted) features; the output z has the kernel's
output axes moved to the end and flattened to M = prod(out) columns; the kernel is
transposed to (contracted..., out...) and reshaped to (N, M).  The layer is then a
``specs.Dense`` with that (N, M) kernel and the bias flattened to (M,), and the adapters
record ``rows(x)`` (..., N) and ``cols(z)`` (..., M).

Einsums are plain projections when every kernel letter is either contracted with the input
or appears in the output, no letter is in all three operands (a batched kernel), the input's
uncontracted letters ("free", an ellipsis included) keep their order in the output, and
the kernel has no repeated letter.  Anything else is left unpruned (``einsum_plan`` raises
``NotAProjection`` with the one-line reason the report states).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["Plan", "NotAProjection", "linear_general_plan", "einsum_plan"]


class NotAProjection(ValueError):
    """This einsum / general linear layer is not a projection Net-Trim can prune."""


def _norm(axes, ndim):
    return tuple(a % ndim for a in axes)


class Plan(NamedTuple):
    """in_axes: the input's contracted axes (negative or non-negative positions), in the
    order of the (N, M) matrix's rows; out_axes: the output's kernel axes, in the matrix's
    column order; kernel_perm: kernel transpose to (contracted..., out...); N, M."""

    in_axes: tuple
    out_axes: tuple
    kernel_perm: tuple
    N: int
    M: int

    def rows(self, x):
        """(..., contracted...) input -> (..., N): one program row per leading position."""
        k = len(self.in_axes)
        xm = jnp.moveaxis(x, _norm(self.in_axes, x.ndim), tuple(range(x.ndim - k, x.ndim)))
        return xm.reshape(xm.shape[: x.ndim - k] + (self.N,))

    def cols(self, z):
        """Output -> (..., M), the kernel's output axes last."""
        k = len(self.out_axes)
        zm = jnp.moveaxis(z, _norm(self.out_axes, z.ndim), tuple(range(z.ndim - k, z.ndim)))
        return zm.reshape(zm.shape[: z.ndim - k] + (self.M,))

    def uncols(self, zc, shape):
        """Inverse of ``cols`` for an output of ``shape``."""
        nd, k = len(shape), len(self.out_axes)
        src = _norm(self.out_axes, nd)
        moved = tuple(s for i, s in enumerate(shape) if i not in src) + tuple(shape[a] for a in src)
        return jnp.moveaxis(zc.reshape(moved), tuple(range(nd - k, nd)), src)

    def matrix(self, kernel):
        """Kernel (any layout) -> (N, M)."""
        return jnp.transpose(kernel, self.kernel_perm).reshape(self.N, self.M)

    def unmatrix(self, mat, kernel_shape):
        """(N, M) -> a kernel of ``kernel_shape`` (inverse of ``matrix``)."""
        permuted = tuple(kernel_shape[p] for p in self.kernel_perm)
        inverse = tuple(self.kernel_perm.index(i) for i in range(len(self.kernel_perm)))
        return jnp.transpose(jnp.reshape(mat, permuted), inverse)


def linear_general_plan(kernel_shape, axis, n_out: int, batch_axis=()) -> Plan:
    """``LinearGeneral`` / ``DenseGeneral``: kernel (in_features..., out_features...),
    ``axis`` the contracted input axes, output = uncontracted input axes + out_features."""
    if batch_axis:
        raise NotAProjection("a batched kernel (batch_axis) is not a projection")
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    shape = tuple(int(s) for s in kernel_shape)
    n = math.prod(shape[: len(axis)])
    m = math.prod(shape[len(axis) :])
    return Plan(in_axes=axis, out_axes=tuple(range(-n_out, 0)), kernel_perm=tuple(range(len(shape))), N=n, M=m)


def _tokens(s: str) -> list:
    out, i = [], 0
    while i < len(s):
        if s.startswith("...", i):
            out.append("...")
            i += 3
        else:
            out.append(s[i])
            i += 1
    return out


def _positions(tokens, wanted):
    """Axis positions of ``wanted`` letters: non-negative before an ellipsis, negative after."""
    cut = tokens.index("...") if "..." in tokens else None
    pos = []
    for w in wanted:
        j = tokens.index(w)
        pos.append(j if cut is None or j < cut else j - len(tokens))
    return tuple(pos)


def einsum_plan(einsum_str: str, kernel_shape) -> Plan:
    """Plan of ``einsum(einsum_str, x, kernel)`` if it is a plain projection (module doc)."""
    s = einsum_str.replace(" ", "")
    if "->" not in s or s.count(",") != 1:
        raise NotAProjection(f"einsum {einsum_str!r} needs the explicit form 'x,kernel->out'")
    lhs, rest = s.split(",")
    rhs, out = rest.split("->")
    tl, tr, to = _tokens(lhs), _tokens(rhs), _tokens(out)
    if "..." in tr:
        raise NotAProjection(f"einsum {einsum_str!r}: an ellipsis on the kernel is not a projection")
    if len(set(tr)) != len(tr) or len(set(tl)) != len(tl) or len(set(to)) != len(to):
        raise NotAProjection(f"einsum {einsum_str!r} repeats a letter (a trace or diagonal)")
    if len(tr) != len(kernel_shape):
        raise NotAProjection(f"einsum {einsum_str!r} does not match kernel shape {tuple(kernel_shape)}")
    if any(t in tl and t in tr and t in to for t in tr):
        raise NotAProjection(
            f"einsum {einsum_str!r} shares a letter among input, kernel and output (a batched kernel), not a projection"
        )
    contracted = [t for t in tl if t in tr]
    kout = [t for t in to if t in tr]
    free_in = [t for t in tl if t not in tr]
    free_out = [t for t in to if t not in tr]
    if set(tr) != set(contracted) | set(kout):
        raise NotAProjection(f"einsum {einsum_str!r} sums a kernel axis that is not contracted with the input")
    if free_in != free_out:
        raise NotAProjection(f"einsum {einsum_str!r} reorders or drops the input's free axes")
    perm = tuple(tr.index(t) for t in contracted + kout)
    shape = tuple(int(d) for d in kernel_shape)
    return Plan(
        in_axes=_positions(tl, contracted),
        out_axes=_positions(to, kout),
        kernel_perm=perm,
        N=math.prod(shape[tr.index(t)] for t in contracted),
        M=math.prod(shape[tr.index(t)] for t in kout),
    )
