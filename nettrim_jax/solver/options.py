"""Solver options at the edge: ``admm.Options`` / ``pdhg.Options`` built from keywords with
the dtype's defaults, every value range-checked once in one line, and the iteration cap
split off so solves that differ only in it share one compiled program."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from nettrim_jax.solver import admm, pdhg
from nettrim_jax.solver.scaling import is_concrete


def make_options(solver: str, dtype, opts: dict):
    """The ``Options`` record of ``solver`` ("admm" or "pdhg") from keyword ``opts``, checked;
    margin and feas_tol default by ``dtype`` (1e-3 in single precision, 1e-5 / 1e-6 in double)."""
    cls = admm.Options if solver == "admm" else pdhg.Options
    opts = dict(opts)
    single = jnp.finfo(dtype).bits <= 32
    if opts.get("margin") is None:
        opts["margin"] = 1e-3 if single else 1e-5
    if opts.get("feas_tol") is None:
        opts["feas_tol"] = 1e-3 if single else 1e-6
    check_solver_options(solver, opts)
    return cls(**opts)


def solver_option_names(solver: str) -> tuple[str, ...]:
    """The option names of ``solver`` ("admm" | "pdhg"): its ``Options`` fields."""
    return (admm.Options if solver == "admm" else pdhg.Options)._fields


def check_solver_options(solver: str, options: dict) -> None:
    """Refuse solver options before any work: an unknown name (TypeError, as a bad keyword
    would), a wrong type or an out-of-range value (one-line ValueError: max_iters >= 1,
    check_every >= 1, tolerances >= 0, ...; ``_OPTION_RANGES``).  None means the default."""
    names = solver_option_names(solver)
    unknown = set(options) - set(names)
    if unknown:
        raise TypeError(f"unknown option(s) for solver={solver!r}: {sorted(unknown)}; valid: {list(names)}")
    for name, value in options.items():
        if value is not None or name not in ("margin", "feas_tol"):
            _check_option(name, value)


# option -> (kind, lower, upper, lower bound included); kind "int" (>= lower), "real" (in the
# range, upper bound excluded), "bool".  gap_tol = 0 is allowed: it runs max_iters exactly
# (experiments/bench_layer.py times iterations that way).  Unlisted options are unchecked.
_OPTION_RANGES: dict[str, tuple[str, Any, Any, Any]] = {
    "max_iters": ("int", 1, None, True),
    "check_every": ("int", 1, None, True),
    "adapt_every": ("int", 1, None, True),
    "eps_abs": ("real", 0.0, math.inf, True),
    "eps_rel": ("real", 0.0, math.inf, True),
    "gap_tol": ("real", 0.0, math.inf, True),
    "feas_tol": ("real", 0.0, math.inf, True),
    "margin": ("real", 0.0, 1.0, True),
    "relaxation": ("real", 0.0, 2.0, False),
    "step": ("real", 0.0, 1.0, False),
    "restart_decay": ("real", 0.0, 1.0, True),
    "adaptive_rho": ("bool", None, None, None),
    "residual_stop": ("bool", None, None, None),
}


def _check_option(name, value) -> None:
    """Raise a one-line ValueError for a solver option of the wrong type or out of range
    (ranges: ``_OPTION_RANGES``; reals must be finite and below their upper bound)."""
    rule = _OPTION_RANGES.get(name)
    if rule is None:
        return
    kind, lo, hi, closed = rule
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, np.integer) if kind == "int" else (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if kind == "int":
        if value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
        return
    ok = (value >= lo if closed else value > lo) and value < hi
    if not ok:
        bound = f"{'>=' if closed else '>'} {lo}" + ("" if hi == math.inf else f" and < {hi}")
        raise ValueError(f"{name} must be {bound}, got {value}")


def solver_options_static(options: dict) -> dict:
    """``options`` for validation and the static ``Options``: a traced ``max_iters`` (one
    compiled program for every cap, ``network.problems.jitted_solver``) is left out."""
    return {k: v for k, v in options.items() if not (k == "max_iters" and not is_concrete(v))}


def split_iterations(opts, options: dict):
    """(static options with max_iters 0, the cap as an int32 array): the compiled solve takes
    its iteration cap as an argument, so solves that differ only in it share one program."""
    cap = options.get("max_iters")
    iters = jnp.asarray(opts.max_iters if cap is None or is_concrete(cap) else cap, jnp.int32)
    return opts._replace(max_iters=0), iters
