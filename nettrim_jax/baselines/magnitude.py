"""Magnitude pruning (Han et al., 2015): keep the largest |W_ij|, in one kernel or over
several kernels with one global threshold."""

from __future__ import annotations

import jax.numpy as jnp

from nettrim_jax.baselines.common import check_keep, keep_count, top_mask

__all__ = ["magnitude", "magnitude_global"]


def magnitude(kernel, keep: int) -> jnp.ndarray:
    """Keep the ``keep`` largest-magnitude entries of ``kernel`` (any shape); zero the rest."""
    kernel = jnp.asarray(kernel)
    keep = check_keep(kernel, keep)
    return jnp.where(top_mask(jnp.abs(kernel), keep), kernel, 0)


def magnitude_global(kernels, sparsity: float):
    """Prune a list of kernels with one magnitude threshold, to a global ``sparsity``.

    Returns the list of pruned kernels; exactly ``keep_count(total, sparsity)`` survive.
    """
    kernels = [jnp.asarray(k) for k in kernels]
    flat = jnp.concatenate([jnp.abs(k).reshape(-1) for k in kernels])
    mask = top_mask(flat, keep_count(flat.size, sparsity))
    out, start = [], 0
    for k in kernels:
        out.append(jnp.where(mask[start : start + k.size].reshape(k.shape), k, 0))
        start += k.size
    return out
