"""The Net-Trim constraint set and the quantities measured against it.

For a block of outputs with target ``Y`` (P, M), mask ``omega = Y > 0`` (all True for a
linear layer), radius ``eps`` and threshold ``V`` the feasible set of pre-activations is

    C = {Z : ||(Z - Y)_omega||_F <= eps,  Z_{omega^c} <= V}                 (the paper's)

or, with ``soft`` (``relu_budget="output"``), the eps-neighbourhood of
K = {Z : Z_omega = Y, Z_{omega^c} <= V}:

    C_soft = {Z : ||(Z - Y)_omega||_F^2 + ||(Z - V)_+ over omega^c||_F^2 <= eps^2},

one budget for the misfit on omega and the excess over V off it.  With V = 0 (or V = -c
behind an affine epilogue) the left side bounds ||relu(Z) - Y||_F^2, the ReLU output's
own error; C_soft contains C and the linear program's ball {||Z - Y_pre|| <= eps} for every
pre-activation Y_pre with relu(Y_pre) = Y, so its optimum is at least as sparse as both.

Everything here is elementwise or a reduction over the block, so the same functions
serve the coupled program (one block = the whole layer) and, under ``jax.vmap`` over
columns, the per-neuron program (one block = one output unit).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from nettrim_jax.solver import structure


class ConstraintSet(NamedTuple):
    """C for one block, in the solver's (scaled) units.

    Attributes:
      target: (P, M) original outputs Y.
      omega: (P, M) bool, where the misfit is measured (Y > 0 for ReLU, all for linear).
      radius: () ball radius epsilon on the misfit over omega.
      threshold: (P, M) upper bound V on the pre-activation outside omega.
      soft: a Python bool (static): the excess over V counts toward the radius (C_soft)
        instead of being forbidden.
    """

    target: jnp.ndarray
    omega: jnp.ndarray
    radius: jnp.ndarray
    threshold: jnp.ndarray
    soft: bool = False


def shrink(c: ConstraintSet, margin) -> ConstraintSet:
    """C with the radius scaled by (1 - margin).

    A point within ``margin * radius`` (Frobenius, over omega) of the shrunken set meets
    the misfit bound of ``c`` itself; the solvers stop only once this holds.  The
    threshold is not shrunk (that would make an all-zero unit infeasible); its constraint
    is met to a stopping tolerance instead.
    """
    return c._replace(radius=c.radius * (1 - margin))


def project(z: jnp.ndarray, c: ConstraintSet) -> jnp.ndarray:
    """Euclidean projection of z (P, M) onto C (C_soft: onto K, then back toward z by
    what the radius allows, the projection onto a set's eps-neighbourhood)."""
    nearest = jnp.where(c.omega, c.target, jnp.minimum(z, c.threshold))  # onto K
    d = z - nearest if c.soft else jnp.where(c.omega, z - c.target, 0)
    norm = jnp.sqrt(jnp.sum(d * d))
    factor = jnp.where(norm > c.radius, c.radius / jnp.maximum(norm, jnp.finfo(z.dtype).tiny), 1)
    if c.soft:
        return nearest + d * factor
    return jnp.where(c.omega, c.target + d * factor, nearest)


def misfit(xu: jnp.ndarray, c: ConstraintSet):
    """Misfit and threshold violation of pre-activations xu (P, M).

    Returns (||(XU - Y)_omega||_F, max(0, max over omega^c of XU - V),
    ||(XU - V)_+ over omega^c||_F).  Since relu is 1-Lipschitz and Y > 0 on omega,
    ||relu(XU) - Y||_F^2 <= misfit^2 + violation_norm^2 when V = 0.  For C_soft the excess
    is part of the budget: (sqrt(misfit^2 + violation_norm^2), 0, 0).
    """
    d = jnp.where(c.omega, xu - c.target, 0)
    excess = jnp.where(c.omega, 0, jnp.maximum(xu - c.threshold, 0))
    if c.soft:
        zero = jnp.zeros((), xu.dtype)
        return jnp.sqrt(jnp.sum(d * d) + jnp.sum(excess * excess)), zero, zero
    return jnp.sqrt(jnp.sum(d * d)), jnp.max(excess, initial=0), jnp.sqrt(jnp.sum(excess * excess))


def support(lam: jnp.ndarray, c: ConstraintSet) -> jnp.ndarray:
    """Support function sup_{Z in C} <lam, Z>, for lam >= 0 outside omega (else +inf).
    C_soft = K + eps B: sigma_K(lam) + eps ||lam||_F (the ball term over every entry)."""
    inner = jnp.sum(jnp.where(c.omega, lam * c.target, 0))
    ball = c.radius * jnp.sqrt(jnp.sum(lam * lam if c.soft else jnp.where(c.omega, lam * lam, 0)))
    outside = jnp.where(c.omega, 0, lam)
    bound = jnp.sum(jnp.where(c.omega, 0, lam * c.threshold))
    return jnp.where(jnp.all(outside >= 0), inner + ball + bound, jnp.inf)


def dual_bound(lam: jnp.ndarray, xt_lam: jnp.ndarray, c: ConstraintSet, groups=None) -> jnp.ndarray:
    """Certified lower bound on min ||U||_1 s.t. XU in C from any dual point lam (P, M).

    Lagrangian duality gives  min ||U||_1 >= -sigma_C(lam')  for every lam' >= 0 outside
    omega with ||X^T lam'||_inf <= 1.  Two rescalings of lam are admissible and both are
    evaluated, the larger bound returned: one factor for the whole block,
    1 / ||X^T lam||_inf, and one per column, 1 / ||X^T lam_m||_inf (the constraint
    ||X^T lam'||_inf <= 1 splits over columns, so a column far inside it is not shrunk
    for the sake of the worst one; near the optimum this halves the gap or better).
    ``xt_lam`` is X^T lam (N, M).

    With ``groups`` (the objective ||U||_G of ``structure``) the dual constraint is
    ||X^T lam'||_G* <= 1, the largest group l2 norm, which does not split over columns:
    only the whole-block factor 1 / ||X^T lam||_G* is used.
    """
    tiny = jnp.finfo(lam.dtype).tiny
    if groups is not None:
        return _group_bound(lam, xt_lam, c, groups, tiny)
    col_norm = jnp.max(jnp.abs(xt_lam), axis=0)
    dual_norm = jnp.max(col_norm)
    value = -support(lam, c)
    uniform = jnp.where((value > 0) & (dual_norm > tiny), value / jnp.maximum(dual_norm, tiny), 0)
    scale = jnp.where(col_norm > tiny, 1 / jnp.maximum(col_norm, tiny), 0)
    per_column = -support(lam * scale, c)
    return jnp.maximum(uniform, jnp.where(jnp.isfinite(per_column), per_column, 0))


def _group_bound(lam, xt_lam, c, groups, tiny):
    dual_norm = structure.dual_norm(xt_lam, groups)
    value = -support(lam, c)
    return jnp.where((value > 0) & (dual_norm > tiny), value / jnp.maximum(dual_norm, tiny), 0)
