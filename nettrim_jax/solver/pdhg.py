"""Restarted PDHG for one Net-Trim block: factorization-free, for layers too wide to factor.

Primal-dual hybrid gradient (Chambolle and Pock 2011) on  min ||U||_1 + I_C(XU):

    U+ = soft(U - tau X^T y, tau)
    y+ = v - sigma proj_C(v / sigma),   v = y + sigma X (2 U+ - U)

with tau = eta / w, sigma = eta w, eta < 1 / ||X|| (X is scaled to unit norm) and primal
weight w.  Following PDLP (Applegate et al. 2021) the iterates are averaged and, every
``check_every`` iterations, the better of current and average (by a normalised KKT error)
becomes a restart point when that error has fallen enough; the primal weight is
rebalanced at restarts.  Each iteration costs one product with X and one with X^T and
needs no factorization; memory is O(PM + NM) beside X (and, on the CPU backend, a
contiguous copy of X^T: ``gram.transposed``).

The dual iterate is nonnegative outside Omega by construction, so the certified lower
bound of ``constraints.dual_bound`` is available at every check.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nettrim_jax.solver import admm, constraints, gram, loop, prox, structure
from nettrim_jax.solver.loop import Report


class Options(NamedTuple):
    """Static solver settings (hashable, so they key the jit cache)."""

    step: float = 0.95  # eta ||X|| < 1: the primal-dual step size fraction
    restart_decay: float = 0.2  # restart when the KKT error fell by this factor
    max_iters: int = 20000
    check_every: int = 20
    eps_abs: float = 1e-7
    eps_rel: float = 1e-4
    gap_tol: float = 1e-3
    margin: float | None = None  # radius shrink; solve_layer: 1e-3 (f32), 1e-5 (f64)
    feas_tol: float | None = None  # ||violation||_F / eps: 1e-3 (f32), 1e-6 (f64)


class State(NamedTuple):
    """PDHG iterates (scaled units); ``w`` is the sparse kernel returned."""

    w: jnp.ndarray  # (N, M) primal
    z: jnp.ndarray  # (P, M) X w
    y: jnp.ndarray  # (P, M) dual
    xty: jnp.ndarray  # (N, M) X^T y
    sum_w: jnp.ndarray
    sum_z: jnp.ndarray
    sum_y: jnp.ndarray
    sum_xty: jnp.ndarray
    count: jnp.ndarray  # type: ignore[assignment]  # iterations since the last restart (shadows tuple.count)
    restart_w: jnp.ndarray
    restart_y: jnp.ndarray
    restart_kkt: jnp.ndarray
    rho: jnp.ndarray  # primal weight
    margin: jnp.ndarray  # () the radius shrink in use (``admm.next_margin``)


def init_state(x, c: constraints.ConstraintSet, w0, rho0) -> State:
    z = x @ w0
    y = jnp.zeros_like(z)
    xty = jnp.zeros_like(w0)
    zero = jnp.zeros((), w0.dtype)
    return State(
        w=w0,
        z=z,
        y=y,
        xty=xty,
        sum_w=jnp.zeros_like(w0),
        sum_z=jnp.zeros_like(z),
        sum_y=jnp.zeros_like(y),
        sum_xty=jnp.zeros_like(xty),
        count=zero,
        restart_w=w0,
        restart_y=y,
        restart_kkt=jnp.asarray(jnp.inf, w0.dtype),
        rho=jnp.asarray(rho0, w0.dtype),
        margin=jnp.ones((), w0.dtype),
    )


def rescale_extra(state: State, kw, ky) -> dict:
    """Fields besides w and z to carry into a problem scaled differently (warm start)."""
    zero = jnp.zeros((), state.w.dtype)
    return dict(
        sum_w=jnp.zeros_like(state.sum_w),
        sum_z=jnp.zeros_like(state.sum_z),
        sum_y=jnp.zeros_like(state.sum_y),
        sum_xty=jnp.zeros_like(state.sum_xty),
        count=zero,
        restart_w=state.w * kw,
        restart_kkt=jnp.asarray(jnp.inf, zero.dtype),
    )


def _iterate(x, xt, outer, s: State, eta, groups=None, weights=None) -> State:
    inner = constraints.shrink(outer, s.margin)
    tau = eta / s.rho
    sigma = eta * s.rho
    w = prox.shrink(s.w - tau * s.xty, tau, groups, weights)
    z = x @ w
    v = s.y + sigma * (2 * z - s.z)
    # Moreau: prox of sigma I_C^*; outside omega written exactly so y stays >= 0 there
    # (C_soft's projection never moves a point up off omega: y >= 0 there in exact
    # arithmetic, and the clamp removes the rounding of v - sigma (v / sigma)).
    y = v - sigma * constraints.project(v / sigma, inner)
    off = jnp.maximum(y, 0) if inner.soft else jnp.maximum(v - sigma * inner.threshold, 0)
    y = jnp.where(inner.omega, y, off)
    xty = xt @ y
    return s._replace(
        w=w,
        z=z,
        y=y,
        xty=xty,
        sum_w=s.sum_w + w,
        sum_z=s.sum_z + z,
        sum_y=s.sum_y + y,
        sum_xty=s.sum_xty + xty,
        count=s.count + 1,
    )


def _norm(a):
    return jnp.sqrt(jnp.sum(a * a))


def _measure(outer, w, z, y, xty, rho, groups=None, weights=None):
    """Objective, certificate, feasibility and a normalised KKT error of one candidate."""
    objective = prox.norm(w, groups, weights)
    dual_xty = prox.dual_argument(xty, weights)
    cert = constraints.certificate(y, dual_xty, outer, groups)
    lower = cert.lower
    misfit, violation, viol_norm = constraints.misfit(z, outer)
    primal_inf = _norm(z - constraints.project(z, outer))
    dual_inf = _norm(jnp.maximum(jnp.abs(dual_xty) - 1, 0)) if groups is None else structure.dual_excess(xty, groups)
    gap = jnp.abs(objective - lower)
    kkt = jnp.sqrt(rho * primal_inf**2 + dual_inf**2 / rho + gap**2)
    return objective, lower, misfit, violation, viol_norm, primal_inf, dual_inf, kkt, cert.price


def _check(outer, opts: Options, s: State, iterations, groups=None, weights=None):
    dtype = s.w.dtype
    tiny = jnp.finfo(dtype).tiny
    rounding = 16 * jnp.finfo(dtype).eps
    n = jnp.maximum(s.count, 1)
    avg = (s.sum_w / n, s.sum_z / n, s.sum_y / n, s.sum_xty / n)
    cur = (s.w, s.z, s.y, s.xty)
    m_cur = _measure(outer, *cur, s.rho, groups, weights)
    m_avg = _measure(outer, *avg, s.rho, groups, weights)
    use_avg = m_avg[-2] < m_cur[-2]
    pick = lambda a, b: jax.tree_util.tree_map(lambda p, q: jnp.where(use_avg, p, q), a, b)
    cand = pick(avg, cur)
    objective, lower, misfit, violation, viol_norm, primal_inf, dual_inf, kkt, price = pick(m_avg, m_cur)

    slack = rounding * _norm(outer.target)
    feasible = (misfit <= outer.radius + slack) & (viol_norm <= opts.feas_tol * outer.radius + slack)
    gap_ok = objective - lower <= opts.gap_tol * jnp.maximum(objective, tiny)
    eps_pri = jnp.sqrt(s.z.size) * opts.eps_abs + opts.eps_rel * jnp.maximum(_norm(cand[1]), 1)
    converged = feasible & gap_ok & (primal_inf <= eps_pri)

    restart = converged | (kkt <= opts.restart_decay * s.restart_kkt) | (s.count >= 0.36 * jnp.maximum(iterations, 1))
    dw = _norm(cand[0] - s.restart_w)
    dy = _norm(cand[2] - s.restart_y)
    new_rho = jnp.where(
        (dw > tiny) & (dy > tiny),
        jnp.exp(0.5 * jnp.log(jnp.maximum(dy, tiny) / jnp.maximum(dw, tiny)) + 0.5 * jnp.log(s.rho)),
        s.rho,
    )
    new_rho = jnp.clip(new_rho, 1e-4, 1e4)
    zeros = lambda a: jnp.zeros_like(a)
    restarted = s._replace(
        w=cand[0],
        z=cand[1],
        y=cand[2],
        xty=cand[3],
        sum_w=zeros(s.sum_w),
        sum_z=zeros(s.sum_z),
        sum_y=zeros(s.sum_y),
        sum_xty=zeros(s.sum_xty),
        count=jnp.zeros_like(s.count),
        restart_w=cand[0],
        restart_y=cand[2],
        restart_kkt=kkt,
        rho=jnp.where(converged, s.rho, new_rho),
    )
    s = jax.tree_util.tree_map(lambda a, b: jnp.where(restart, a, b), restarted, s)
    s = s._replace(margin=admm.next_margin(s.margin, opts, objective, price))
    report = Report(iterations, converged, objective, lower, misfit, violation, primal_inf, dual_inf, s.rho)
    return s, report


def run(x, outer: constraints.ConstraintSet, state: State, opts: Options, groups=None, weights=None, max_iters=None):
    """Iterate from ``state`` until converged or ``max_iters`` (default ``opts.max_iters``;
    may be traced); returns (State, Report).

    ``groups``: the objective's (N,) group ids (``structure``), or None for ||U||_1;
    ``weights``: (N, M) positive entry weights of a weighted l1 (``prox.norm``), or None.
    """
    eta = jnp.asarray(opts.step, state.w.dtype)
    xt = gram.transposed(x)
    state = state._replace(margin=jnp.asarray(opts.margin, state.w.dtype))
    return loop.run(
        lambda s: _iterate(x, xt, outer, s, eta, groups, weights),
        lambda s, k: _check(outer, opts, s, k, groups, weights),
        state,
        opts.max_iters if max_iters is None else max_iters,
        opts.check_every,
    )
