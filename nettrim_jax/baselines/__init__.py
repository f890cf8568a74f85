"""Layer-wise pruning baselines, for comparison with Net-Trim at equal sparsity.

Every function prunes one layer's kernel in Flax layout, ``kernel`` (N_in, M_out), to an
exact number of nonzeros ``keep`` (an int; use ``keep_count`` to turn a sparsity fraction
into one), so that a baseline can be given exactly the per-layer count Net-Trim chose.
Calibration inputs ``X`` are (P, N): one sample per row, the layer's inputs.  Biases are
not touched (prune ``kernel`` only and keep the bias dense).

Each method is its own module (``magnitude``, ``wanda``, ``sparsegpt``, ``alps``) over
``common``; ``model`` is the model-level driver.  This module re-exports them by name.

* ``magnitude``: keep the ``keep`` largest |W_ij| (Han et al., 2015).
* ``magnitude_global``: one threshold over several layers' kernels at a global sparsity.
* ``wanda``: score |W_ij| * ||X_:,i||_2, compared within each output unit
  (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models").
* ``sparsegpt``: OBS-style pruning with reconstruction (Frantar & Alistarh, 2023,
  "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"): inputs are
  visited in order; the mask of each block of inputs is chosen by w^2 / [H^-1]_ii^2 and
  the error of every pruned weight is spread over the not-yet-visited inputs through the
  upper Cholesky factor of H^-1, H = X^T X + lambda I.
* ``alps``: ADMM on the l0-constrained layer reconstruction, then a preconditioned
  conjugate-gradient refit on the final support (Meng, Behdin, Wang & Mazumder, 2024,
  "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for Large Language
  Models", arXiv 2406.07831; reference code github.com/mazumder-lab/ALPS).

All are pure functions returning a new kernel with exact zeros; ``mask_of`` gives the mask.
``prune_model`` applies one of them to every layer of a whole model (NNX, Linen or specs;
residual and BatchNorm models included) at given per-layer counts.
"""

from nettrim_jax.baselines.alps import alps
from nettrim_jax.baselines.common import keep_count, mask_of, reconstruction_error, sparsity_of
from nettrim_jax.baselines.magnitude import magnitude, magnitude_global
from nettrim_jax.baselines.model import METHODS, prune_model
from nettrim_jax.baselines.sparsegpt import sparsegpt
from nettrim_jax.baselines.wanda import wanda

__all__ = [
    "keep_count",
    "mask_of",
    "sparsity_of",
    "magnitude",
    "magnitude_global",
    "wanda",
    "sparsegpt",
    "alps",
    "reconstruction_error",
    "prune_model",
    "METHODS",
]
