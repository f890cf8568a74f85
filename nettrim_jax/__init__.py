"""nettrim-jax: Net-Trim convex pruning of trained ReLU networks, in JAX."""

from nettrim_jax.io.checkpoint import CheckpointError
from nettrim_jax.solver.layer import LayerInfo, LayerSolution, solve_layer
from nettrim_jax.network.masking import masked
from nettrim_jax.network.prune import LayerReport, PruneReport, PruneResult, prune
from nettrim_jax.solver.refit import RefitInfo, refit_layer
from nettrim_jax.network.specs import Conv, Dense

__all__ = ["LayerInfo", "LayerSolution", "solve_layer", "refit_layer", "RefitInfo",
           "prune", "PruneResult", "PruneReport", "LayerReport", "Dense", "Conv", "masked",
           "CheckpointError"]
__version__ = "0.1.0"
