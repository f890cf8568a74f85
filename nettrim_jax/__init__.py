"""nettrim-jax: Net-Trim convex pruning of trained ReLU networks, in JAX."""

import nettrim_jax._versions  # noqa: F401  (first: the dependency floors, checked at import)
from nettrim_jax.io.checkpoint import CheckpointError
from nettrim_jax.network.masking import masked
from nettrim_jax.network.options import Program, Run, Target
from nettrim_jax.network.prune import PruneResult, PruneState, prune
from nettrim_jax.network.report import CollapsedModelError, LayerReport, PruneReport
from nettrim_jax.network.specs import Conv, Dense
from nettrim_jax.network.sweep import SweepPoint, sweep
from nettrim_jax.solver.layer import LayerInfo, LayerSolution, reweighting_weights, solve_layer
from nettrim_jax.solver.refit import RefitInfo, refit_layer

__all__ = [
    "LayerInfo",
    "LayerSolution",
    "solve_layer",
    "reweighting_weights",
    "refit_layer",
    "RefitInfo",
    "prune",
    "sweep",
    "SweepPoint",
    "Program",
    "Target",
    "Run",
    "PruneResult",
    "PruneState",
    "CollapsedModelError",
    "PruneReport",
    "LayerReport",
    "Dense",
    "Conv",
    "masked",
    "CheckpointError",
]
__version__ = "0.1.0"
