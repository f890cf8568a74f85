"""SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot"): OBS-style pruning with reconstruction.  Inputs are visited in
order; the mask of each block of inputs is chosen by w^2 / [H^-1]_ii^2 and the error of every
pruned weight is spread over the not-yet-visited inputs through the upper Cholesky factor of
H^-1, H = X^T X + lambda I."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nettrim_jax.baselines.common import check_keep, top_mask

__all__ = ["sparsegpt"]


def _block_prune_counts(n: int, m: int, keep: int, blocksize: int):
    """Zeros to make in each block of input rows so the total pruned is exactly n*m - keep,
    spread uniformly (cumulative rounding) as SparseGPT's uniform per-block sparsity."""
    total = n * m - keep
    bounds = list(range(0, n, blocksize)) + [n]
    counts, done = [], 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        target = round(total * hi / n)
        counts.append((lo, hi, target - done))
        done = target
    return counts


@functools.partial(jax.jit, static_argnames=("blocks",))
def _sparsegpt(w, uinv, dead, blocks):
    """w (N, M) kernel; uinv (N, N) upper Cholesky factor of H^-1; blocks static."""
    n = w.shape[0]
    mask = jnp.ones(w.shape, bool)
    rows = jnp.arange(n)
    d = jnp.diag(uinv)
    w = jnp.where(dead[:, None], 0, w)
    for lo, hi, prune in blocks:
        # Mask of this block: the `prune` smallest w^2 / d^2 (with the updates so far).
        score = (w[lo:hi] / d[lo:hi, None]) ** 2
        bmask = ~top_mask(-score, prune) if prune > 0 else jnp.ones(score.shape, bool)
        mask = mask.at[lo:hi].set(bmask)

        def step(i, w, mask=mask):
            q = jnp.where(mask[i], w[i], 0)
            err = (w[i] - q) / d[i]
            # Row i of uinv is zero left of the diagonal, so rows < i are untouched and
            # row i becomes exactly q; later rows absorb the compensation.
            upd = jnp.where(rows > i, uinv[i], 0)
            w = w - upd[:, None] * err[None, :]
            return w.at[i].set(q)

        w = jax.lax.fori_loop(lo, hi, step, w)
    return jnp.where(mask, w, 0)


def sparsegpt(kernel, X, keep: int, *, damp: float = 0.01, blocksize: int = 128) -> jnp.ndarray:
    """SparseGPT-style one-shot pruning with OBS reconstruction.

    Args:
      kernel: (N, M) kernel; its rows (input features) are SparseGPT's "columns".
      X: (P, N) calibration inputs of this layer.
      keep: exact number of nonzeros kept.
      damp: lambda = damp * mean(diag(X^T X)) added to the Hessian diagonal.
      blocksize: inputs per mask-selection block (adaptive mask selection); each block gets
        the same sparsity (up to rounding), as in the paper.

    Returns the pruned (N, M) kernel with exactly ``keep`` entries in its mask (fewer
    nonzeros only where an input is never active in X: its weights are irrelevant and set
    to zero).  It approximately minimises ||X W - X W_hat||_F over kernels with that mask.
    """
    kernel = jnp.asarray(kernel)
    X = jnp.asarray(X, kernel.dtype)
    keep = check_keep(kernel, keep)
    n, m = kernel.shape
    h = X.T @ X
    dead = jnp.diag(h) == 0
    h = jnp.where(jnp.diag(dead), 1.0, h)  # dead inputs: identity row, weight zeroed
    lam = damp * jnp.mean(jnp.diag(h))
    h = h + lam * jnp.eye(n, dtype=h.dtype)
    hinv = jnp.linalg.inv(h)
    hinv = (hinv + hinv.T) / 2
    uinv = jnp.linalg.cholesky(hinv).T  # upper: H^-1 = U^T U
    # Dead inputs (zero column of X) have their weights zeroed; their score is then 0, so
    # the block masks prune them first.
    blocks = tuple(_block_prune_counts(n, m, keep, max(1, int(blocksize))))
    return _sparsegpt(kernel, uinv, dead, blocks)
