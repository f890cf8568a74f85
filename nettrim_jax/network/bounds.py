"""A priori bounds on the output error ||Y_hat_L - Y_L||_F of the last prunable layer.

Each ReLU and the linear map are 1-Lipschitz, and the in-between ops are taken as 1-Lipschitz
(true for flatten/reshape, non-overlapping max or average pooling, dropout at inference); a
layer's gain is g_l ||U_l||_2 with g_l = 1 for Dense and sqrt(kh kw) for Conv
(``specs.transition_gain``), U_l the kernel without its bias row.

* parallel: with Delta_l = ||Y_hat_l - Y_l||_F along the pruned network,
  Delta_l <= e_l + g_l ||U_l||_2 Delta_{l-1} (Delta_0 = 0, e_l <= epsilon_l the achieved
  misfit), hence ||Y_hat_L - Y_L||_F <= sum_l epsilon_l prod_{j > l} g_j ||U_j||_2.
* cascade (derived here; the paper's theorem is the normalised special case): with
  a_l = g_l ||W_l||_2 B_{l-1} (W_l the original kernel),
  B_1 = epsilon_1,  B_l = max(gamma a_l, sqrt(f_l^2 + a_l^2)) (ReLU) or max(gamma a_l, f_l)
  (linear), f_l the layer's floor; = epsilon_1 prod_{l>=2} gamma g_l ||W_l||_2 without
  floors.  A layer given its own budget (epsilon_1, ``output_epsilon``) restarts the bound
  at that budget.
* A skipped layer passes the error on through its original kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nettrim_jax.network.problems import LayerOutcome
from nettrim_jax.network.specs import kernel_matrix, transition_gain

__all__ = ["output_bound"]


def _spectral(mat) -> float:
    if mat.size == 0:
        return 0.0
    return float(np.linalg.norm(np.asarray(mat, np.float64), 2))


def _gain(spec, K) -> float:
    bare = K[:-1] if spec.bias is not None else K
    return transition_gain(spec) * _spectral(bare)


def output_bound(
    scheme: str, orig: Sequence, programs: Sequence[str], outcomes: Sequence[LayerOutcome], gamma: float
) -> float:
    """The scheme's a priori bound on ||Y_L - Y_hat_L||_F (module doc)."""
    B = 0.0
    for spec, prog, out in zip(orig, programs, outcomes):
        if prog == "skipped":
            B = _gain(spec, kernel_matrix(spec)) * B
        elif scheme == "parallel":
            B = out.epsilon + _gain(spec, out.kernel) * B
        elif out.floor is None:  # first solved layer (epsilon_1) or output_epsilon
            B = out.epsilon
        else:
            a = _gain(spec, kernel_matrix(spec)) * B
            f = out.floor
            B = max(gamma * a, (f * f + a * a) ** 0.5) if prog == "relu" else max(gamma * a, f)
    return float(B)
