"""Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language
Models"): score |W_ij| * ||X_:,i||_2, compared within each output unit."""

from __future__ import annotations

import jax.numpy as jnp

from nettrim_jax.baselines.common import check_keep, column_top_mask, per_column_counts, top_mask

__all__ = ["wanda"]


def wanda(kernel, X, keep: int, *, per_output: bool = True) -> jnp.ndarray:
    """Wanda: prune by |W_ij| * ||X_:,i||_2, comparing weights of the same output unit.

    Args:
      kernel: (N, M) kernel.
      X: (P, N) calibration inputs of this layer.
      keep: total nonzeros kept; spread as evenly as possible over the M output units
        (``per_output=True``, the paper's choice) or chosen over the whole layer.
    """
    kernel = jnp.asarray(kernel)
    X = jnp.asarray(X, kernel.dtype)
    keep = check_keep(kernel, keep)
    scores = jnp.abs(kernel) * jnp.sqrt(jnp.sum(X * X, axis=0))[:, None]
    if per_output:
        mask = column_top_mask(scores, per_column_counts(scores, keep))
    else:
        mask = top_mask(scores, keep)
    return jnp.where(mask, kernel, 0)
