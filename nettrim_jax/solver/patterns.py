"""N:M sparsity patterns: at most N nonzeros in every M consecutive inputs of each output unit.

Hardware with N:M sparse kernels (e.g. 2:4 on NVIDIA Ampere and later) needs the pattern
along the input (reduction) axis.  ``solve_layer_nm`` gets it in two steps: Net-Trim's
convex program picks which weights matter (``solve_layer``), ``nm_mask`` keeps, in each
group of M consecutive inputs of each output unit, the N of largest magnitude in that
solution, and ``refit_layer`` re-fits the kernel on the masked support (debiasing the l1
shrinkage and compensating for the weights the pattern removed).

The last group along the axis may be partial (M does not divide the length): it keeps at
most N entries as well.  A bias row (``bias=True``: the last row along the axis, where
``network.specs.kernel_matrix`` puts it) is exempt: it is in no group, and its entries are
kept as the solution has them; no N:M kernel reduces over a bias.
"""

from __future__ import annotations

import numbers
import re
from typing import NamedTuple

import jax.numpy as jnp

from nettrim_jax.solver import refit as refit_mod
from nettrim_jax.solver.layer import LayerInfo, solve_layer
from nettrim_jax.solver.refit import RefitInfo


class Pattern(NamedTuple):
    """An N:M pattern: at most ``n`` nonzeros in every ``m`` consecutive inputs."""

    n: int
    m: int

    def __str__(self):
        return f"{self.n}:{self.m}"


_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern) -> Pattern:
    """A ``Pattern`` from "N:M" (e.g. "2:4"), an (n, m) pair or a ``Pattern``; 0 < N < M.

    Raises a one-line ``ValueError`` for anything else.
    """
    if isinstance(pattern, str):
        match = _PATTERN.match(pattern)
        if match is None:
            raise ValueError(f"pattern must look like 'N:M' (e.g. '2:4'), got {pattern!r}")
        n, m = int(match.group(1)), int(match.group(2))
    elif (
        isinstance(pattern, tuple)
        and len(pattern) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pattern)
    ):
        n, m = int(pattern[0]), int(pattern[1])
    else:
        raise ValueError(f"pattern must be an 'N:M' string or an (n, m) pair of ints, got {pattern!r}")
    if not 0 < n < m:
        raise ValueError(f"pattern {n}:{m} needs 0 < N < M")
    return Pattern(n, m)


def nm_mask(kernel, n: int, m: int, axis: int = 0, bias: bool = False) -> jnp.ndarray:
    """Boolean mask of ``kernel``'s shape keeping, in each group of ``m`` consecutive entries
    along ``axis`` (per index of the other axes: per output unit), the ``n`` of largest
    magnitude (ties: the lower index).

    Args:
      kernel: array of any rank >= 1, e.g. an (N, M) kernel matrix with ``axis=0``.
      n, m: the pattern, 0 < n < m.
      axis: the input (reduction) axis the groups run along.
      bias: the last index along ``axis`` is a bias row: exempt (True in the mask) and in
        no group.

    Returns:
      bool array, kernel's shape; ``kernel * mask`` holds at most ``n`` nonzeros in each
      group (a last, partial group included).  Pure; works under ``jax.jit``.
    """
    n, m = parse_pattern((n, m))
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 1 or not -kernel.ndim <= axis < kernel.ndim:
        raise ValueError(f"axis {axis} out of range for a kernel of shape {kernel.shape}")
    k = jnp.moveaxis(kernel, axis, 0)
    rest = k.shape[1:]
    k = k.reshape(k.shape[0], -1)
    length = k.shape[0] - (1 if bias else 0)
    if length < 0:
        raise ValueError("bias=True needs at least one row along the axis")
    mag = jnp.abs(k[:length])
    groups = -(-length // m)
    pad = groups * m - length
    mag = jnp.concatenate([mag, jnp.full((pad, mag.shape[1]), -1, mag.dtype)], axis=0)
    mag = mag.reshape(groups, m, -1)
    order = jnp.argsort(-mag, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    keep = (rank < n).reshape(groups * m, -1)[:length]
    if bias:
        keep = jnp.concatenate([keep, jnp.ones((1, keep.shape[1]), bool)], axis=0)
    return jnp.moveaxis(keep.reshape((k.shape[0],) + rest), 0, axis)


def group_counts(kernel, m: int, axis: int = 0, bias: bool = False):
    """Nonzeros in each group of ``m`` consecutive entries along ``axis`` (bias row excluded):
    an int array of shape (ceil(L / m),) + the other axes, L the non-bias length."""
    k = jnp.moveaxis(jnp.asarray(kernel), axis, 0)
    if bias:
        k = k[:-1]
    nz = (k != 0).astype(jnp.int32)
    groups = -(-k.shape[0] // m)
    nz = jnp.concatenate([nz, jnp.zeros((groups * m - k.shape[0],) + k.shape[1:], jnp.int32)])
    return nz.reshape((groups, m) + k.shape[1:]).sum(axis=1)


class NMSolution(NamedTuple):
    """Result of ``solve_layer_nm``.

    Attributes:
      kernel: (N, M) kernel obeying the pattern along the input axis (bias row exempt).
      mask: (N, M) bool, the pattern's support (``nm_mask`` of the Net-Trim kernel).
      info: the Net-Trim solve's ``LayerInfo`` (before the pattern).
      refit: ``RefitInfo`` of the refit on the masked support; its ``objective_before`` /
        ``error_before`` measure the plainly masked kernel, ``*_after`` the returned one.
    """

    kernel: jnp.ndarray
    mask: jnp.ndarray
    info: LayerInfo
    refit: RefitInfo


def solve_layer_nm(
    X,
    Y,
    *,
    epsilon,
    pattern,
    activation: str = "relu",
    threshold=None,
    bias: bool = False,
    rounds: int = 4,
    cg_iters: int = 60,
    **solve_options,
) -> NMSolution:
    """Net-Trim, then the N:M pattern selected from its solution, then a refit on it.

    Args:
      X: (P, N) layer inputs (a ones column last for a bias); Y: (P, M) layer outputs.
      epsilon, activation, threshold, **solve_options: as for ``solve_layer`` (unstructured).
      pattern: "N:M" (e.g. "2:4"), an (n, m) pair or a ``Pattern``.
      bias: X's last column is the bias's ones column: the bias row is exempt.
      rounds, cg_iters: the refit's (``refit_layer``).

    Returns:
      ``NMSolution``.  The refit keeps each unit's better of masked and refit kernel, so
      its objective is never above plain masking's.
    """
    pat = parse_pattern(pattern)
    sol = solve_layer(X, Y, epsilon=epsilon, activation=activation, threshold=threshold, **solve_options)
    mask = nm_mask(sol.kernel, pat.n, pat.m, axis=0, bias=bias)
    masked = jnp.where(mask, sol.kernel, 0)
    kernel, info = refit_mod.refit_layer(
        X, Y, masked, activation=activation, threshold=threshold, rounds=rounds, cg_iters=cg_iters
    )
    return NMSolution(kernel=kernel, mask=mask, info=sol.info, refit=info)
