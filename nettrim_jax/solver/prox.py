"""Proximal maps of the objectives the solvers minimise (shared by ADMM and PDHG)."""

from __future__ import annotations

import jax.numpy as jnp

from nettrim_jax.solver import structure


def soft_threshold(v: jnp.ndarray, t) -> jnp.ndarray:
    """Proximal map of t * ||.||_1: exact zeros where |v| <= t."""
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0)


def group_soft_threshold(v: jnp.ndarray, t, groups: jnp.ndarray) -> jnp.ndarray:
    """Proximal map of t * ||.||_G (``structure``) at v (N, M).

    Each group of rows is scaled by max(0, 1 - t / ||v_g||_F): whole groups become exact
    zeros where ||v_g||_F <= t.  Ungrouped rows (id < 0) are soft-thresholded entrywise.
    ``groups`` is the (N,) canonical id array of ``structure.parse``.
    """
    norms = structure.entry_norms(v, groups)
    tiny = jnp.finfo(v.dtype).tiny
    factor = jnp.maximum(1 - t / jnp.maximum(norms, tiny), 0)
    return jnp.where((groups >= 0)[:, None], v * factor, soft_threshold(v, t))


def shrink(v: jnp.ndarray, t, groups=None, weights=None) -> jnp.ndarray:
    """The objective's prox: ``soft_threshold`` for l1 (groups None; entry thresholds
    t * weights for the weighted l1 sum_ij weights_ij |U_ij|), else the group one."""
    if groups is not None:
        return group_soft_threshold(v, t, groups)
    return soft_threshold(v, t if weights is None else t * weights)


def norm(w: jnp.ndarray, groups=None, weights=None) -> jnp.ndarray:
    """The objective's value at w (N, M): ||w||_1, sum_ij weights_ij |w_ij|, or ||w||_G."""
    if groups is not None:
        return structure.norm(w, groups)
    return jnp.sum(jnp.abs(w) if weights is None else weights * jnp.abs(w))


def dual_argument(xt_lam: jnp.ndarray, weights=None) -> jnp.ndarray:
    """X^T lam (N, M) in the units the l1 dual norm (the largest |entry|) is taken in: the
    weighted l1's dual norm is max_ij |G_ij| / weights_ij."""
    return xt_lam if weights is None else xt_lam / weights
