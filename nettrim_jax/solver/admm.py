"""ADMM for one Net-Trim block:  minimize ||U||_1  s.t.  XU in C.

Splitting (as in Net-Trim's published algorithm): Z = XU carries the constraint, W = U
carries the L1 norm, and U couples them through the factored system of ``gram``:

    U    = (X^T X + I)^-1 (X^T (Z - L1) + W - L2)
    H1   = a XU + (1 - a) Z,   H2 = a U + (1 - a) W          (over-relaxation a)
    Z    = proj_C(H1 + L1),    W  = soft(H2 + L2, 1 / rho)
    L1  += H1 - Z,             L2 += H2 - W                  (scaled duals)

Every ``check_every`` iterations (one extra product with X and one with X^T) the loop
measures the feasibility of the sparse iterate W against the *unshrunken* set, a
certified lower bound from the dual point rho * L1 (see ``constraints.dual_bound``) and
Boyd et al. (2011, sec. 3.3) primal and dual residuals (reported; required only with
``residual_stop``).  The loop stops when W is feasible and the certified relative gap is
below ``gap_tol``: that is a proof of ``gap_tol``-optimality, which the residuals are only
a proxy for (requiring them as well cost 20-40% more iterations for the same kernel).
rho is rebalanced between W's infeasibility and the gap by rescaling the duals, which is
free because the factored matrix does not depend on rho.

All arrays are in the solver's scaled units (``scaling.x_scale`` / ``scaling.y_scale``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from nettrim_jax.solver import constraints, gram, loop, prox
from nettrim_jax.solver.loop import Report


class Options(NamedTuple):
    """Static solver settings (hashable, so they key the jit cache)."""

    max_iters: int = 5000
    check_every: int = 10
    eps_abs: float = 1e-7
    eps_rel: float = 1e-4
    gap_tol: float = 1e-3
    relaxation: float = 1.8
    adaptive_rho: bool = True
    adapt_every: int = 3  # checks between rho updates (ADMM needs time to settle)
    margin: float | None = None  # radius shrink; solve_layer: 1e-3 (f32), 1e-5 (f64)
    feas_tol: float | None = None  # ||violation||_F / eps: 1e-3 (f32), 1e-6 (f64)
    residual_stop: bool = False  # also require Boyd's residuals within eps_abs / eps_rel


class State(NamedTuple):
    """ADMM iterates, all in scaled units; W is the sparse kernel returned."""

    w: jnp.ndarray  # (N, M)
    z: jnp.ndarray  # (P, M)
    l1: jnp.ndarray  # (P, M) scaled dual of XU = Z
    l2: jnp.ndarray  # (N, M) scaled dual of U = W
    u: jnp.ndarray  # (N, M)
    xu: jnp.ndarray  # (P, M)
    rho: jnp.ndarray  # ()
    margin: jnp.ndarray  # () the radius shrink in use (``run`` starts it at opts.margin)
    cuts: RhoCuts  # what the last lowering of rho did (``_adapt_rho``)


class RhoCuts(NamedTuple):
    """Memory of ADMM's rho cuts, so a cut that did not help is undone and not repeated.

    Attributes:
      floor: () the lowest rho allowed from now on (raised above a cut that failed).
      cut_from: () rho before the last cut, 0 when the last due check made none.
      cut_gap: () the lagging measure (certified gap over its tolerance) at that cut.
    """

    floor: jnp.ndarray
    cut_from: jnp.ndarray
    cut_gap: jnp.ndarray


RHO_RANGE = (1e-3, 1e3)


def no_cuts(dtype) -> RhoCuts:
    zero = jnp.zeros((), dtype)
    return RhoCuts(floor=jnp.asarray(RHO_RANGE[0], dtype), cut_from=zero, cut_gap=zero)


def init_state(g: gram.Gram, c: constraints.ConstraintSet, w0: jnp.ndarray, rho0) -> State:
    """Start from kernel w0 (N, M): Z = proj_C(X w0) and, when w0 is not zero, the duals
    ``warm_dual`` guesses from it (zero duals otherwise)."""
    xw = g.x @ w0
    z = constraints.project(xw, c)
    rho = jnp.asarray(rho0, w0.dtype)
    lam = warm_dual(g, c, w0, xw)
    l1 = lam / rho
    one = jnp.ones((), w0.dtype)
    return State(w=w0, z=z, l1=l1, l2=-(g.xt @ l1), u=w0, xu=xw, rho=rho, margin=one, cuts=no_cuts(w0.dtype))


def warm_dual(g: gram.Gram, c: constraints.ConstraintSet, w0: jnp.ndarray, xw: jnp.ndarray) -> jnp.ndarray:
    """A dual point (P, M) for a warm start from kernel w0: mu times the outward normal
    of C at X w0 (the misfit on omega, the excess over V off it: ``constraints.normal``),
    with mu >= 0 fitted so that X^T lam best matches -sign(w0) on w0's support (the
    optimality condition of ||U||_1).  Zero for w0 = 0.

    Why: started from a kernel near the optimum (a search's neighbouring epsilon) with zero
    duals, W is feasible at once and only the certificate lags, which drove rho to its floor
    where ADMM stopped moving (a TinyLM projection: 5000 iterations uncertified from the
    kernel a 70-iteration solve had certified)."""
    d = constraints.normal(xw, c)
    xtd = g.xt @ d
    s = jnp.sign(w0)
    den = jnp.sum(jnp.where(s != 0, xtd * xtd, 0))
    mu = -jnp.sum(xtd * s) / jnp.maximum(den, jnp.finfo(w0.dtype).tiny)
    return jnp.maximum(mu, 0) * d


def next_margin(margin, opts, objective, price):
    """The radius shrink for the next block of iterations: at most ``opts.margin``, and
    small enough that the shrink alone costs at most a quarter of ``gap_tol`` of certified
    gap (``constraints.Certificate.price``), but not below a hundredth of ``opts.margin``
    (the misfit test's rounding).  Never raised within a solve.

    Why: the iterates converge to the optimum of the *shrunken* program, whose objective
    exceeds the true optimum by about margin * price.  At large epsilon (high sparsity)
    price / objective passes 1 (1.5 on an MNIST first layer at epsilon = 0.5 ||Y||), so a fixed
    margin of 1e-3 left a gap floor above gap_tol = 1e-3 that no number of iterations closed."""
    tiny = jnp.finfo(objective.dtype).tiny
    want = 0.25 * opts.gap_tol * objective / jnp.maximum(price, tiny)
    floor = 0.01 * opts.margin
    return jnp.minimum(margin, jnp.clip(want, floor, opts.margin))


def _iterate(g: gram.Gram, outer: constraints.ConstraintSet, s: State, a, groups=None, weights=None) -> State:
    inner = constraints.shrink(outer, s.margin)
    u, xu = gram.solve(g, s.z - s.l1, s.w - s.l2)
    h1 = a * xu + (1 - a) * s.z
    h2 = a * u + (1 - a) * s.w
    v1 = h1 + s.l1
    z = constraints.project(v1, inner)
    w = prox.shrink(h2 + s.l2, 1 / s.rho, groups, weights)
    return s._replace(w=w, z=z, l1=v1 - z, l2=h2 + s.l2 - w, u=u, xu=xu)


def _norm(x):
    return jnp.sqrt(jnp.sum(x * x))


def _check(g, outer, opts: Options, s: State, iterations, groups=None, weights=None):
    """Measure residuals, feasibility and the certificate; rebalance rho."""
    dtype = s.w.dtype
    tiny = jnp.finfo(dtype).tiny
    rounding = 16 * jnp.finfo(dtype).eps
    xw = g.x @ s.w
    xt_l1 = g.xt @ s.l1
    misfit, violation, viol_norm = constraints.misfit(xw, outer)
    slack = rounding * _norm(outer.target)
    viol_tol = opts.feas_tol * outer.radius + slack
    feasible = (misfit <= outer.radius + slack) & (viol_norm <= viol_tol)

    r = jnp.sqrt(jnp.sum((s.xu - s.z) ** 2) + jnp.sum((s.u - s.w) ** 2))
    dual = xt_l1 + s.l2
    sres = s.rho * _norm(dual)
    n_pri = s.z.size + s.w.size
    pri_scale = jnp.maximum(jnp.sqrt(_norm(s.xu) ** 2 + _norm(s.u) ** 2), jnp.sqrt(_norm(s.z) ** 2 + _norm(s.w) ** 2))
    dual_scale = s.rho * jnp.maximum(_norm(xt_l1), _norm(s.l2))
    eps_pri = jnp.sqrt(n_pri) * opts.eps_abs + opts.eps_rel * pri_scale
    eps_dual = jnp.sqrt(s.w.size) * opts.eps_abs + opts.eps_rel * dual_scale

    objective = prox.norm(s.w, groups, weights)
    cert = constraints.certificate(s.rho * s.l1, s.rho * prox.dual_argument(xt_l1, weights), outer, groups)
    lower = cert.lower
    gap, gap_allowed = objective - lower, opts.gap_tol * jnp.maximum(objective, tiny)
    gap_ok = gap <= gap_allowed
    converged = feasible & gap_ok
    if opts.residual_stop:
        converged = converged & (r <= eps_pri) & (sres <= eps_dual)

    rho, cuts = s.rho, s.cuts
    if opts.adaptive_rho:
        margin = s.margin
        unit = jnp.maximum(margin * outer.radius + slack, tiny)
        infeasible = jnp.maximum(
            jnp.maximum(misfit - (1 - margin) * outer.radius, 0) / unit, viol_norm / jnp.maximum(viol_tol, tiny)
        )
        due = (iterations // opts.check_every) % opts.adapt_every == 0
        rho, cuts = _adapt_rho(s.rho, s.cuts, infeasible, r / eps_pri, gap / gap_allowed, due & ~converged)
    margin = next_margin(s.margin, opts, objective, cert.price)
    s = s._replace(rho=rho, l1=s.l1 * (s.rho / rho), l2=s.l2 * (s.rho / rho), margin=margin, cuts=cuts)
    report = Report(iterations, converged, objective, lower, misfit, violation, r, sres, s.rho)
    return s, report


def _adapt_rho(rho, cuts: RhoCuts, infeasible, consensus, lagging, due):
    """(rho, cuts) after a check.

    Balances what the stopping test waits for: the certified gap over its tolerance
    (``lagging``) against W's infeasibility (misfit above the shrunken radius in units of
    the margin, threshold excess in units of feas_tol).  A large rho makes W feasible fast
    and closes the gap slowly, a small rho the reverse, so on a ``due`` check rho moves
    toward the lagging side once one side leads by 4x, by at most x3.  The consensus
    residual over its tolerance (``consensus``, Boyd's primal side) counts at a tenth, and
    rho is lowered only once it is within 10x: before ADMM settles, a lower rho made small
    problems swing between an infeasible W and a gap.  A cut must pay: if the gap has not
    halved by the next due check, rho goes back to where it was and never below again
    (the gap can lag because W is still far from optimal, not the dual; then a lower rho
    only stalls ADMM, down to its floor: a TinyLM projection warm-started near its optimum
    ran 5000 iterations at rho 1e-3 where rho = 1 converges in 100).

    On MNIST LeNet-300-100 layers (4000 rows, relative epsilon 0.1-0.6, both budgets) the
    rule took 1860 iterations over 10 solves, where counting the consensus residual in full
    with a 25x dead band (the rule before) took 4870."""
    tiny = jnp.finfo(rho.dtype).tiny
    failed = due & (cuts.cut_from > 0) & (lagging > 0.5 * cuts.cut_gap)
    floor = jnp.where(failed, jnp.maximum(cuts.floor, cuts.cut_from), cuts.floor)
    pri = jnp.maximum(infeasible, 0.1 * consensus)
    ratio = jnp.sqrt(jnp.maximum(pri, tiny) / jnp.maximum(lagging, tiny))
    ratio = jnp.where((ratio < 1) & (consensus > 10), 1.0, ratio)
    move = due & ((ratio > 2) | (ratio < 0.5)) & ((pri > 1) | (lagging > 1))
    proposed = jnp.where(move, rho * jnp.clip(ratio, 1 / 3, 3), rho)
    new = jnp.clip(jnp.where(failed, jnp.maximum(proposed, cuts.cut_from), proposed), floor, RHO_RANGE[1])
    cut = due & (new < rho)
    cuts = RhoCuts(
        floor=floor,
        cut_from=jnp.where(cut, rho, jnp.where(due, 0, cuts.cut_from)),
        cut_gap=jnp.where(cut, lagging, cuts.cut_gap),
    )
    return new, cuts


def run(
    g: gram.Gram,
    outer: constraints.ConstraintSet,
    state: State,
    opts: Options,
    groups=None,
    weights=None,
    max_iters=None,
):
    """Iterate from ``state`` until converged or ``max_iters`` (default ``opts.max_iters``;
    may be traced); returns (State, Report).

    ``outer`` is the true constraint set; iterates are projected onto its shrunken copy
    (radius times 1 - margin; margin starts at ``opts.margin`` and is lowered by
    ``next_margin`` where it would keep the gap above ``gap_tol``) so that the stopping test can demand that W meet
    the misfit bound of ``outer`` exactly; the threshold is met to ``opts.feas_tol``
    (Frobenius norm of the excess over omega^c, relative to the radius).  ``groups``: the
    objective's (N,) group ids (``structure``; W's step becomes a group soft-threshold), or
    None for ||U||_1; ``weights``: (N, M) positive entry weights of a weighted l1
    (``prox.norm``), or None.
    """
    a = jnp.asarray(opts.relaxation, state.w.dtype)
    state = state._replace(margin=jnp.asarray(opts.margin, state.w.dtype), cuts=no_cuts(state.w.dtype))
    return loop.run(
        lambda s: _iterate(g, outer, s, a, groups, weights),
        lambda s, k: _check(g, outer, opts, s, k, groups, weights),
        state,
        opts.max_iters if max_iters is None else max_iters,
        opts.check_every,
    )
