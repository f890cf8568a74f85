"""nettrim-jax: Net-Trim convex pruning of trained ReLU networks, in JAX."""

from nettrim_jax.layer import LayerInfo, LayerSolution, solve_layer

__all__ = ["LayerInfo", "LayerSolution", "solve_layer"]
__version__ = "0.1.0"
