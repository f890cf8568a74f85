"""What a layer solve returns: the kernel, how the solve ended (``LayerInfo``), and the
solver state for warm starts (``LayerSolution``); the one warning an unconverged solve gives."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np


class LayerInfo(NamedTuple):
    """How a solve ended.  Scalars for the layer (per-neuron results are aggregated).

    Attributes:
      iterations: iterations run (the most over units in per-neuron mode).
      converged: True only if every stopping test passed (all units in per-neuron mode).
      objective: ||kernel||_1 in the caller's units (with ``structure="rows"``: the
        group-l1 norm sum_g ||kernel_g||_F plus l1 of ungrouped rows, ``structure.norm``).
      lower_bound: certified lower bound on the optimal objective, from a dual-feasible point.
      gap: (objective - lower_bound) / objective, the certified relative optimality gap
        when the kernel is feasible; a negative gap means the kernel is not yet feasible
        (its l1 norm is below the optimum), which only an unconverged solve returns.
      residual: misfit / epsilon over the program's balls (the largest, per-neuron); <= 1
        means the misfit constraint holds.  With ``relu_budget="output"`` the misfit is
        sqrt(||(XU - Y)_Omega||^2 + ||(XU - V)_+ over Omega^c||^2).
      violation: max(0, max of XU - threshold over Omega^c), caller's units (relu with
        ``relu_budget="omega"`` only: under "output" the excess is part of the misfit, and
        this is 0).
      primal_residual, dual_residual: the solver's last residual norms (scaled units).
      rho: the final ADMM penalty (or PDHG primal weight); (M,) per-neuron.
    """

    iterations: Any
    converged: Any
    objective: Any
    lower_bound: Any
    gap: Any
    residual: Any
    violation: Any
    primal_residual: Any
    dual_residual: Any
    rho: Any


class LayerSolution(NamedTuple):
    """Result of ``solve_layer``.

    Attributes:
      kernel: (N, M) sparse kernel with exact zeros; ``X @ kernel`` approximates the
        original pre-activation.
      info: ``LayerInfo``.
      state: the solver's final state (scaled units) with the scales used, for warm starts.
    """

    kernel: jnp.ndarray
    info: LayerInfo
    state: Any = None


def warn_unconverged(converged, iterations, gap, residual):
    """A RuntimeWarning naming the iterations, certified gap and residual of a solve that did
    not converge (concrete values; nothing when it did)."""
    if not bool(np.all(converged)):
        warnings.warn(
            f"Net-Trim solve did not converge in {int(np.max(iterations))} iterations "
            f"(certified gap {float(np.max(gap)):.3g}, residual {float(np.max(residual)):.6g}); "
            "raise max_iters or loosen tolerances",
            RuntimeWarning,
            stacklevel=3,
        )
