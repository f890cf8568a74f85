"""The objective's structure: plain l1, or a group-l1 (l2,1) norm over groups of input rows.

Structured Net-Trim replaces ||U||_1 by

    ||U||_G = sum_g ||U_g||_F  +  sum_{i ungrouped, j} |U_ij|

where each group g is a set of rows of the (N, M) kernel (all M columns): one row is one
input unit of a dense layer, and the I*kh*kw rows of one input channel of a convolution
(channel-major (I, kh, kw) ordering, as ``network.specs.kernel_matrix`` lays them out) form
one channel.  A zero group is a removed input unit or channel.  Rows outside every group
(group id < 0; by convention the bias row) keep the entrywise l1 penalty: a bias is not a
unit that can be removed, and leaving it unpenalised would make the dual constraint on its
row an equality that no rescaling of a dual point can meet.  Every ungrouped entry is a
group of size one, so ||.||_G is a group-l1 norm over a partition of the entries and its
dual norm is the largest l2 norm of a group of the argument (for rows: the l2,inf norm).

Groups are given as an (N,) int32 array of canonical ids: ``-1`` for an ungrouped row,
else an id in [0, N); rows with the same id form one group.  ``None`` means plain l1 (the
default, handled by the unchanged l1 code paths).  ``parse`` turns the user's
``structure=`` / ``groups=`` into that form once, at the edge.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STRUCTURES = ("unstructured", "rows")


def parse(structure, groups, n: int, per_neuron: bool = False):
    """Validate ``structure`` / ``groups`` for a kernel with ``n`` input rows.

    Args:
      structure: "unstructured" (l1, the default) or "rows" (group-l1 over input rows).
      groups: None, or (with "rows") an (n,) integer array of group ids: rows with the same
        id >= 0 form one group, rows with a negative id are penalised entrywise (l1).
        None with "rows" makes every row its own group (the bias row included; pass
        ``row_groups(n - 1, bias=True)`` to keep the bias row entrywise).
      n: number of kernel rows N.
      per_neuron: the solve's per-neuron flag (groups span output units: refused).

    Returns:
      None for plain l1, else an (n,) int32 numpy array of canonical ids (-1 or in [0, n)).
    """
    if not isinstance(structure, str) or structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; expected one of {STRUCTURES}")
    if structure == "unstructured":
        if groups is not None:
            raise ValueError("groups= needs structure='rows'")
        return None
    if per_neuron:
        raise ValueError(
            "structure='rows' couples output units (a group spans all of them); it cannot be solved per_neuron=True"
        )
    if groups is None:
        return np.arange(n, dtype=np.int32)
    if isinstance(groups, jax.core.Tracer):
        raise ValueError("groups must be concrete (a numpy array), not a traced value")
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape (N,) = ({n},), one id per kernel row, got shape {g.shape}")
    if g.size and not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"groups must hold integer ids, got dtype {g.dtype}")
    ids = np.full(n, -1, np.int32)
    grouped = g >= 0
    if np.any(grouped):
        ids[grouped] = np.unique(g[grouped], return_inverse=True)[1].astype(np.int32)
    return ids


def row_groups(n_inputs: int, bias: bool = True) -> np.ndarray:
    """Ids for a dense layer: each of the ``n_inputs`` rows its own group, then (``bias``)
    one ungrouped (-1) bias row.  Shape (n_inputs [+1],)."""
    ids = np.arange(n_inputs, dtype=np.int32)
    return np.append(ids, np.int32(-1)).astype(np.int32) if bias else ids


def channel_groups(channels: int, kh: int, kw: int, bias: bool = True) -> np.ndarray:
    """Ids for a convolution's (I*kh*kw [+1], O) kernel matrix in channel-major (I, kh, kw)
    row order: the kh*kw rows of input channel c have id c; the bias row (``bias``) is -1."""
    ids = np.repeat(np.arange(channels, dtype=np.int32), kh * kw)
    return np.append(ids, np.int32(-1)).astype(np.int32) if bias else ids


def flat_channel_groups(n_inputs: int, channels: int, bias: bool = True) -> np.ndarray:
    """Ids for a dense layer that reads a ``channels``-channel NHWC feature map flattened
    (feature f is channel f % channels): the n_inputs / channels features of channel c have
    id c, so a zero group removes a channel of the layer before; the bias row (``bias``) is
    -1.  Shape (n_inputs [+1],)."""
    if channels < 1 or n_inputs % channels:
        raise ValueError(f"{n_inputs} flattened features do not split into {channels} channels")
    ids = np.arange(n_inputs, dtype=np.int32) % channels
    return np.append(ids, np.int32(-1)).astype(np.int32) if bias else ids


def group_sums(v, groups, n: int):
    """(n,) sum over each group's rows of ``v``'s (N, M) squared entries, indexed by id
    (ungrouped rows, id -1, left out)."""
    rows = jnp.sum(v * v, axis=1)
    return jax.ops.segment_sum(jnp.where(groups >= 0, rows, 0), jnp.maximum(groups, 0), num_segments=n)


def group_rows(held, groups):
    """(N, 1) bool: the rows of the groups ``held`` (n,) bool marks (ungrouped rows False)."""
    return ((groups >= 0) & held[jnp.maximum(groups, 0)])[:, None]


def kept_groups(kernel, groups):
    """(N,) bool indexed by id: the groups with a nonzero entry of ``kernel`` (N, M)."""
    return group_sums((kernel != 0).astype(kernel.dtype), groups, kernel.shape[0]) > 0


def filled(kernel, groups):
    """``kernel`` (N, M) with every row of a kept group (one with a nonzero entry) made fully
    nonzero: its zero entries set to 1e-6 of the kernel's largest |entry| (a refit then fits
    them; ungrouped rows, id -1, keep their own support).  A structured layer keeps whole
    units: the group-l1 solution can leave zeros inside a kept group that remove nothing."""
    small = jnp.maximum(1e-6 * jnp.max(jnp.abs(kernel)), jnp.finfo(kernel.dtype).tiny)
    return jnp.where(group_rows(kept_groups(kernel, groups), groups) & (kernel == 0), small, kernel)


def _parts(v, groups):
    """(N,) group norms indexed by id (0 for unused ids) and (N, M) |v| on ungrouped rows."""
    singles = jnp.where((groups >= 0)[:, None], 0, jnp.abs(v))
    return jnp.sqrt(group_sums(v, groups, v.shape[0])), singles


def norm(v, groups):
    """||v||_G of an (N, M) kernel: sum of group l2 norms plus l1 of ungrouped rows."""
    group_norms, singles = _parts(v, groups)
    return jnp.sum(group_norms) + jnp.sum(singles)


def dual_norm(v, groups):
    """Dual norm of ||.||_G at (N, M) v: the largest group l2 norm (ungrouped entries: |v_ij|)."""
    group_norms, singles = _parts(v, groups)
    return jnp.maximum(jnp.max(group_norms), jnp.max(singles))


def dual_excess(v, groups):
    """Distance-like measure of v from the dual unit ball: the l2 norm, over groups, of
    max(group norm - 1, 0) (for l1 this is ||max(|v| - 1, 0)||_F)."""
    group_norms, singles = _parts(v, groups)
    a = jnp.maximum(group_norms - 1, 0)
    b = jnp.maximum(singles - 1, 0)
    return jnp.sqrt(jnp.sum(a * a) + jnp.sum(b * b))


def entry_norms(v, groups):
    """(N, M): for each entry, the l2 norm of its group (|v_ij| for ungrouped rows)."""
    group_norms, singles = _parts(v, groups)
    grouped = groups >= 0
    return jnp.where(grouped[:, None], group_norms[jnp.where(grouped, groups, 0)][:, None], singles)


def zero_groups(kernel, groups) -> np.ndarray:
    """Boolean (N,) of rows that belong to a group whose entries are all exactly zero
    (ungrouped rows: False).  Concrete inputs only."""
    k = np.asarray(kernel)
    ids = np.asarray(groups)
    nonzero = np.zeros(k.shape[0], bool)
    g = ids >= 0
    rows_nz = np.any(k != 0, axis=1)
    np.logical_or.at(nonzero, ids[g], rows_nz[g])
    return g & ~nonzero[np.where(g, ids, 0)]
