"""Layer-wise pruning baselines, for comparison with Net-Trim at equal sparsity.

Every function prunes one layer's kernel in Flax layout, ``kernel`` (N_in, M_out), to an
exact number of nonzeros ``keep`` (an int; use ``keep_count`` to turn a sparsity fraction
into one), so that a baseline can be given exactly the per-layer count Net-Trim chose.
Calibration inputs ``X`` are (P, N): one sample per row, the layer's inputs.  Biases are
not touched (prune ``kernel`` only and keep the bias dense).

* ``magnitude``: keep the ``keep`` largest |W_ij| (Han et al., 2015).
* ``magnitude_global``: one threshold over several layers' kernels at a global sparsity.
* ``wanda``: score |W_ij| * ||X_:,i||_2, compared within each output unit
  (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models").
* ``sparsegpt``: OBS-style pruning with reconstruction (Frantar & Alistarh, 2023,
  "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"): inputs are
  visited in order; the mask of each block of inputs is chosen by w^2 / [H^-1]_ii^2 and
  the error of every pruned weight is spread over the not-yet-visited inputs through the
  upper Cholesky factor of H^-1, H = X^T X + lambda I.
* ``alps``: ADMM on the l0-constrained layer reconstruction, then a preconditioned
  conjugate-gradient refit on the final support (Meng, Behdin, Wang & Mazumder, 2024,
  "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for Large Language
  Models", arXiv 2406.07831; reference code github.com/mazumder-lab/ALPS, ``alps.py``).

All are pure functions returning a new kernel with exact zeros; ``mask_of`` gives the mask.
``prune_model`` applies one of them to every layer of a whole model (NNX, Linen or specs;
residual and BatchNorm models included) at given per-layer counts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "keep_count",
    "mask_of",
    "sparsity_of",
    "magnitude",
    "magnitude_global",
    "wanda",
    "sparsegpt",
    "alps",
    "reconstruction_error",
    "prune_model",
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


def _check_keep(kernel, keep: int) -> int:
    keep = int(keep)
    if not 0 <= keep <= kernel.size:
        raise ValueError(f"keep must be in [0, {kernel.size}] for a kernel of shape {kernel.shape}, got {keep}")
    return keep


def _top_mask(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
    """Mask of exactly ``keep`` largest entries of ``scores`` (ties broken by index)."""
    flat = scores.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    mask = jnp.zeros(flat.shape, bool).at[order[:keep]].set(True)
    return mask.reshape(scores.shape)


def magnitude(kernel, keep: int) -> jnp.ndarray:
    """Keep the ``keep`` largest-magnitude entries of ``kernel`` (any shape); zero the rest."""
    kernel = jnp.asarray(kernel)
    keep = _check_keep(kernel, keep)
    return jnp.where(_top_mask(jnp.abs(kernel), keep), kernel, 0)


def magnitude_global(kernels, sparsity: float):
    """Prune a list of kernels with one magnitude threshold, to a global ``sparsity``.

    Returns the list of pruned kernels; exactly ``keep_count(total, sparsity)`` survive.
    """
    kernels = [jnp.asarray(k) for k in kernels]
    flat = jnp.concatenate([jnp.abs(k).reshape(-1) for k in kernels])
    mask = _top_mask(flat, keep_count(flat.size, sparsity))
    out, start = [], 0
    for k in kernels:
        out.append(jnp.where(mask[start : start + k.size].reshape(k.shape), k, 0))
        start += k.size
    return out


def _per_column_counts(scores: jnp.ndarray, keep: int) -> jnp.ndarray:
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


def _column_top_mask(scores: jnp.ndarray, counts: jnp.ndarray) -> jnp.ndarray:
    rank = jnp.argsort(jnp.argsort(-scores, axis=0, stable=True), axis=0)
    return rank < counts[None, :]


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
    keep = _check_keep(kernel, keep)
    scores = jnp.abs(kernel) * jnp.sqrt(jnp.sum(X * X, axis=0))[:, None]
    if per_output:
        mask = _column_top_mask(scores, _per_column_counts(scores, keep))
    else:
        mask = _top_mask(scores, keep)
    return jnp.where(mask, kernel, 0)


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
        bmask = ~_top_mask(-score, prune) if prune > 0 else jnp.ones(score.shape, bool)
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
    keep = _check_keep(kernel, keep)
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


def reconstruction_error(X, kernel, pruned) -> float:
    """||X W - X W_hat||_F / ||X W||_F."""
    X = jnp.asarray(X)
    ref = X @ jnp.asarray(kernel)
    return float(jnp.linalg.norm(ref - X @ jnp.asarray(pruned)) / jnp.linalg.norm(ref))


from nettrim_jax.alps import alps  # noqa: E402  (the fourth baseline, in its own module)
from nettrim_jax.network.one_shot import prune_model  # noqa: E402  (any model, per-layer counts)
