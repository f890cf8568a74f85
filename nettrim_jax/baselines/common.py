"""What every layer-wise baseline shares: counts from a sparsity, masks, exact top-k
selection (over a kernel or within each output unit), and the reconstruction error."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "keep_count",
    "mask_of",
    "sparsity_of",
    "check_keep",
    "top_mask",
    "per_column_counts",
    "column_top_mask",
    "reconstruction_error",
]


def keep_count(size: int, sparsity: float) -> int:
    """Number of entries kept when ``size`` entries are pruned to ``sparsity`` (fraction zero)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return int(size - round(sparsity * size))


def mask_of(kernel) -> jnp.ndarray:
    """Boolean mask of the nonzero entries."""
    return jnp.asarray(kernel) != 0


def sparsity_of(kernel) -> float:
    """Fraction of exact zeros."""
    k = np.asarray(kernel)
    return float(np.mean(k == 0))


def check_keep(kernel, keep: int) -> int:
    """``keep`` as an int, refused in one line outside [0, kernel.size]."""
    keep = int(keep)
    if not 0 <= keep <= kernel.size:
        raise ValueError(f"keep must be in [0, {kernel.size}] for a kernel of shape {kernel.shape}, got {keep}")
    return keep


def top_mask(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """Mask of exactly ``keep`` largest entries of ``scores`` (ties broken by index)."""
    flat = scores.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    mask = jnp.zeros(flat.shape, bool).at[order[:keep]].set(True)
    return mask.reshape(scores.shape)


def per_column_counts(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """Split ``keep`` over the M columns of ``scores`` (N, M): floor(keep / M) each, and the
    remainder to the columns whose next candidate scores highest."""
    n, m = scores.shape
    base, extra = divmod(keep, m)
    counts = np.full(m, base)
    if extra:
        srt = jnp.sort(scores, axis=0)[::-1]  # descending per column
        nxt = np.asarray(srt[min(base, n - 1)])
        nxt = np.where(counts < n, nxt, -np.inf)
        counts[np.argsort(-nxt, kind="stable")[:extra]] += 1
    return jnp.asarray(counts)


def column_top_mask(scores: jnp.ndarray, counts: jnp.ndarray) -> jnp.ndarray:
    rank = jnp.argsort(jnp.argsort(-scores, axis=0, stable=True), axis=0)
    return rank < counts[None, :]


def reconstruction_error(X, kernel, pruned) -> float:
    """||X W - X W_hat||_F / ||X W||_F."""
    X = jnp.asarray(X)
    ref = X @ jnp.asarray(kernel)
    return float(jnp.linalg.norm(ref - X @ jnp.asarray(pruned)) / jnp.linalg.norm(ref))
