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

import jax
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


def normal(z: jnp.ndarray, c: ConstraintSet) -> jnp.ndarray:
    """z minus its nearest point of K = {Z_omega = Y, Z_omega^c <= V} (P, M): the misfit on
    omega and the excess over V off it, the direction of the constraint's dual at a point
    on C's boundary (exactly so for the ball and for C_soft; off omega, for C, it marks the
    thresholds z already passes)."""
    return jnp.where(c.omega, z - c.target, jnp.maximum(z - c.threshold, 0))


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


class Certificate(NamedTuple):
    """A certified lower bound and what it costs to shrink the radius.

    Attributes:
      lower: () lower bound on min ||U||_1 s.t. XU in C, from a dual-feasible point lam'.
      price: () radius * ||lam'||_ball (the Frobenius norm over the ball's entries): the
        bound falls by about ``price * delta`` when the radius shrinks by the fraction delta,
        so a solve run on the radius shrunk by ``margin`` cannot certify a relative gap below
        about ``margin * price / objective`` (``admm`` keeps its margin under that).
    """

    lower: jnp.ndarray
    price: jnp.ndarray


def dual_bound(lam: jnp.ndarray, xt_lam: jnp.ndarray, c: ConstraintSet, groups=None) -> jnp.ndarray:
    """Certified lower bound on min ||U||_1 s.t. XU in C from any dual point lam (P, M):
    ``certificate(...).lower``."""
    return certificate(lam, xt_lam, c, groups).lower


def certificate(lam: jnp.ndarray, xt_lam: jnp.ndarray, c: ConstraintSet, groups=None) -> Certificate:
    """Certified lower bound on min ||U||_1 s.t. XU in C from any dual point lam (P, M).

    Lagrangian duality gives  min ||U||_1 >= -sigma_C(lam')  for every lam' >= 0 outside
    omega with ||X^T lam'||_inf <= 1.  ``xt_lam`` is X^T lam (N, M).  The constraint splits
    over columns, so every lam' = lam diag(t) with 0 <= t_m <= T_m = 1 / ||X^T lam_m||_inf
    is admissible (a column with a negative entry off omega gets t_m = 0), and

        -sigma_C(lam diag(t)) = sum_m a_m t_m - eps sqrt(sum_m b_m t_m^2)

    with a_m = -<lam_m, Y_m>_omega - <lam_m, V_m>_omega^c and b_m = ||lam_m||^2 over the
    ball's entries.  That is a concave function of t; its maximum over the box is found
    exactly (``_best_scales``) and compared with the two closed-form choices t = T and
    t = min(T) (one factor for the block), the largest bound returned.  Near the optimum the
    per-column choice halves the gap of the block factor, and the optimal one closes up to
    5x more of it early in a solve, where columns far from their dual constraint gain.

    With ``groups`` (the objective ||U||_G of ``structure``) the dual constraint is
    ||X^T lam'||_G* <= 1, the largest group l2 norm, which does not split over columns:
    only the whole-block factor 1 / ||X^T lam||_G* is used.
    """
    tiny = jnp.finfo(lam.dtype).tiny
    # The linear program's omega is a constant (1, M) all-True row: without the barrier XLA
    # constant-folds the reductions over it broadcast to (P, M), 1-2 s of every compile.
    c = c._replace(omega=jax.lax.optimization_barrier(c.omega))
    if groups is not None:
        return _group_certificate(lam, xt_lam, c, groups, tiny)
    a, b = _column_terms(lam, c)
    col_norm = jnp.max(jnp.abs(xt_lam), axis=0)
    admissible = jnp.all(jnp.where(c.omega, True, lam >= 0), axis=0) & (col_norm > tiny)
    top = jnp.where(admissible, 1 / jnp.maximum(col_norm, tiny), 0)
    candidates = jnp.stack(
        [top, jnp.where(admissible, 1 / jnp.maximum(jnp.max(col_norm), tiny), 0), _best_scales(a, b, top, c.radius)]
    )
    values = jax.vmap(lambda t: _scaled_value(a, b, t, c.radius))(candidates)
    best = jnp.argmax(values)
    t = candidates[best]
    lower = jnp.maximum(values[best], 0)
    price = jnp.where(lower > 0, c.radius * jnp.sqrt(jnp.sum(b * t * t)), 0)
    return Certificate(lower=lower, price=price)


def _column_terms(lam, c: ConstraintSet):
    """(a, b): per column, -(the support function's linear part) and ||lam_m||^2 over the
    ball's entries (every entry for C_soft, omega for C)."""
    a = -jnp.sum(jnp.where(c.omega, lam * c.target, lam * c.threshold), axis=0)
    b = jnp.sum(lam * lam if c.soft else jnp.where(c.omega, lam * lam, 0), axis=0)
    return a, b


def _scaled_value(a, b, t, radius):
    """sum_m a_m t_m - radius sqrt(sum_m b_m t_m^2): the bound at lam diag(t)."""
    return jnp.sum(a * t) - radius * jnp.sqrt(jnp.sum(b * t * t))


def _best_scales(a, b, top, radius, steps: int = 60):
    """argmax over 0 <= t <= top of ``_scaled_value`` (M,).

    Stationarity gives t_m(s) = clip(a_m s / b_m, 0, top_m) with s = ||sqrt(b) t|| / radius;
    g(s) = ||sqrt(b) t(s) / s|| - radius is nonincreasing in s, so its root is found by
    bisection in log s.  Columns with a_m <= 0 get 0; those with b_m = 0 < a_m get top_m.
    """
    dtype = a.dtype
    tiny = jnp.finfo(dtype).tiny
    pos = (a > 0) & (top > 0)
    ratio = jnp.where(pos & (b > 0), a / jnp.maximum(b, tiny), jnp.where(pos, jnp.inf, 0))

    def scales(log_s):
        return jnp.where(pos, jnp.minimum(ratio * jnp.exp(log_s), top), 0)

    def g(log_s):
        t = scales(log_s)
        return jnp.sqrt(jnp.sum(b * t * t)) * jnp.exp(-log_s) - radius

    # s_m = top_m / ratio_m is where column m reaches its bound; bracket all of them.
    knees = jnp.where(pos & jnp.isfinite(ratio) & (ratio > 0), top / jnp.maximum(ratio, tiny), 1.0)
    lo = jnp.log(jnp.maximum(jnp.min(knees), tiny)) - 1.0
    full = jnp.sqrt(jnp.sum(b * top * top)) / jnp.maximum(radius, tiny)
    hi = jnp.log(jnp.maximum(jnp.maximum(jnp.max(knees), full), tiny)) + 1.0

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = g(mid) > 0
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, steps, bisect, (lo, hi))
    return scales(hi)


def _group_certificate(lam, xt_lam, c, groups, tiny):
    dual_norm = structure.dual_norm(xt_lam, groups)
    value = -support(lam, c)
    ok = (value > 0) & (dual_norm > tiny)
    scale = 1 / jnp.maximum(dual_norm, tiny)
    a, b = _column_terms(lam, c)
    lower = jnp.where(ok, value * scale, 0)
    return Certificate(lower=lower, price=jnp.where(ok, c.radius * jnp.sqrt(jnp.sum(b)) * scale, 0))
