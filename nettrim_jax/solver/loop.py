"""The shared outer loop: blocks of plain iterations, each followed by one check."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Report(NamedTuple):
    """What the last convergence check measured (solver's scaled units)."""

    iterations: jnp.ndarray
    converged: jnp.ndarray
    objective: jnp.ndarray
    lower_bound: jnp.ndarray
    misfit: jnp.ndarray
    violation: jnp.ndarray
    primal_residual: jnp.ndarray
    dual_residual: jnp.ndarray
    rho: jnp.ndarray


def run(iterate: Callable, check: Callable, state, max_iters, check_every: int):
    """Run ``iterate`` in blocks of ``check_every`` inside ``lax.while_loop``.

    After each block ``check(state, iterations) -> (state, Report)`` decides convergence;
    the loop ends when converged or after ceil(max_iters / check_every) blocks, with no
    host round-trip.  ``max_iters`` may be traced (one compiled program serves every cap).
    Returns the final (state, Report).
    """
    blocks = (max_iters + check_every - 1) // check_every

    def block(carry):
        s, _, k = carry
        s = jax.lax.fori_loop(0, check_every, lambda _, s: iterate(s), s)
        k = k + 1
        s, rep = check(s, k * check_every)
        return s, rep, k

    def keep_going(carry):
        _, rep, k = carry
        return (~rep.converged) & (k < blocks)

    zero = jnp.zeros((), state.w.dtype)
    rep0 = Report(jnp.zeros((), jnp.int32), jnp.zeros((), bool), zero, zero, zero, zero, zero, zero, state.rho)
    state, rep, _ = jax.lax.while_loop(keep_going, block, (state, rep0, jnp.zeros((), jnp.int32)))
    return state, rep
