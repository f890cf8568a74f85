"""Compiler options for the package's compiled programs on XLA's CPU backend.

XLA's CPU backend generates the solver's fused loops faster without its newer fusion
emitters, and the programs run as fast: on a 2-core CPU a ReLU layer's solver compiled in
0.64 s against 1.1 s (4096 x 151 -> 16 and 4000 x 785 -> 300), with the same iterates and
the same or shorter run time (8192 x 129 -> 512, 400 iterations: 16.4-17.9 s against
17.5-18.2 s); the l0 finish (``solver.l0``) in 0.9-1.8 s against 1.4-1.9 s over four layer
shapes, with the same result.  A first prune of a small model spends most of its time
compiling.  JAX takes compiler options on a top-level ``jax.jit`` only: a program that may
also run inside another jit, a scan or a cond keeps a plain jit for that case
(``top_or_nested``).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

__all__ = ["cpu_compile_options", "top_or_nested"]

_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=1)
def cpu_compile_options() -> dict:
    """Compiler options for the CPU backend (``_CPU_OPTIONS``), {} elsewhere or where this
    XLA does not know them (checked once, on a trivial program)."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        # lowered and compiled, not called: the check also holds when first made inside a trace
        jax.jit(lambda a: a + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # an XLA without the option: its defaults
        return {}
    return dict(_CPU_OPTIONS)


def top_or_nested(top, nested, *args, **kwargs):
    """``top(*args, **kwargs)`` (a jit with compiler options), or ``nested`` (the same program
    under a plain jit) where JAX refuses the options: arguments that are tracers, or a call
    inside another jit, scan or cond (JAX raises at trace time, before anything runs)."""
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((args, kwargs))):
        return nested(*args, **kwargs)
    try:
        return top(*args, **kwargs)
    except ValueError as e:
        if "top-level" not in str(e):
            raise
        return nested(*args, **kwargs)
