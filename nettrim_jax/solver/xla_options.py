"""Compiler options for the package's compiled programs on XLA's CPU backend.

XLA's CPU backend generates the solver's fused loops faster without its newer fusion
emitters, and the programs run as fast: on a 2-core CPU a ReLU layer's solver compiled in
0.64 s against 1.1 s (4096 x 151 -> 16 and 4000 x 785 -> 300), with the same iterates and
the same or shorter run time (8192 x 129 -> 512, 400 iterations: 16.4-17.9 s against
17.5-18.2 s); the l0 finish (``solver.l0``) in 0.9-1.8 s against 1.4-1.9 s over four layer
shapes, with the same result.  A first prune of a small model spends most of its time
compiling.  JAX takes compiler options on a top-level ``jax.jit`` only: a program that may
also run inside another (a vmap, a scan) keeps a plain jit for that case.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

__all__ = ["cpu_compile_options"]

_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=1)
def cpu_compile_options() -> dict:
    """Compiler options for the CPU backend (``_CPU_OPTIONS``), {} elsewhere or where this
    XLA does not know them (checked once, on a trivial program)."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda a: a + 1, compiler_options=_CPU_OPTIONS)(np.float32(0)).block_until_ready()
    except Exception:  # an XLA without the option: its defaults
        return {}
    return dict(_CPU_OPTIONS)
