"""Proximal maps of the objectives the solvers minimise (shared by ADMM and PDHG)."""

from __future__ import annotations

import jax.numpy as jnp


def soft_threshold(v: jnp.ndarray, t) -> jnp.ndarray:
    """Proximal map of t * ||.||_1: exact zeros where |v| <= t."""
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0)
