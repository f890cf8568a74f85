"""The compiled solve of one layer's program in the solver's scaled units: scale X and Y,
run ADMM or PDHG (vmapped over units in per-neuron mode), and report everything from the
returned kernel in the caller's units (``solve``); carrying a solver state over to a new
scaling for warm starts (``state_fits``, ``rescale_state``)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from nettrim_jax.solver import admm, constraints, gram, pdhg, prox
from nettrim_jax.solver.scaling import x_scale, y_scale
from nettrim_jax.solver.solution import LayerInfo

# ADMM's starting penalty in the solver's scaled units.  Measured on MNIST first layers
# (P = 1000-5000), a second layer, a linear layer and a per-neuron problem: iterations to a
# certified 1e-3 gap at rho0 = 2 were 0.21-0.58x those at the earlier sqrt(N / P), and
# within 1.8x of the best fixed rho among 1.5, 2, 2.5 and 4 on each.
ADMM_RHO0 = 2.0

# float32 matmul precision inside the solve.  GPUs (TF32) and TPUs (bf16 passes) otherwise run
# float32 products with a 10-bit (TF32) or 8-bit mantissa, a relative error near 1e-3 per
# product: the misfit ||XU - Y|| would then be off by about 1e-3 ||Y||, which is larger than
# the stopping test's margin (1e-3 epsilon, epsilon a few percent of ||Y||), so a kernel
# could be certified feasible that is not.  "highest" keeps full float32 products; on CPUs
# it changes nothing (their float32 GEMMs are exact float32 already).
MATMUL_PRECISION = "highest"


def column_radii(y_omega, epsilon, per_neuron):
    """Per-unit radii: epsilon split in proportion to ||y_m|| (sum of squares = epsilon^2)."""
    m = y_omega.shape[1]
    if not per_neuron:
        return epsilon
    if jnp.ndim(epsilon) == 1:
        return epsilon
    norms = jnp.sqrt(jnp.sum(y_omega * y_omega, axis=0))
    total = jnp.sqrt(jnp.sum(norms * norms))
    share = jnp.where(total > 0, norms / jnp.where(total > 0, total, 1), 1 / math.sqrt(m))
    return epsilon * share


@functools.partial(jax.jit, static_argnames=("activation", "per_neuron", "solver", "opts", "soft"))
def solve(
    X,
    Y,
    epsilon,
    threshold,
    w0,
    warm,
    rho0,
    groups=None,
    mask=None,
    weights=None,
    iters=None,
    *,
    activation,
    per_neuron,
    solver,
    opts,
    soft=False,
):
    dtype = X.dtype
    m = Y.shape[1]
    sx = x_scale(X, solver)
    sy = y_scale(Y)
    x = X / sx
    y = Y / sy
    # A scalar threshold and the linear program's all-true mask stay (1, M) rows that
    # broadcast, rather than (P, M) arrays the loop would carry (memory: see bench_scale.md).
    if activation != "relu":
        omega = jnp.ones((1, m), bool)
    else:
        omega = (y > 0) if mask is None else mask
    v = threshold / sy
    v = jnp.broadcast_to(v.reshape((1,) * (2 - v.ndim) + v.shape), (v.shape[0] if v.ndim == 2 else 1, m))
    radius = column_radii(jnp.where(omega, y, 0), epsilon / sy, per_neuron)
    w_init = w0 * (sx / sy)

    if solver == "admm":
        g = gram.factor(x)
        runner = functools.partial(admm.run, g)
        init = functools.partial(admm.init_state, g)
    else:
        runner = functools.partial(pdhg.run, x)
        init = functools.partial(pdhg.init_state, x)
    if rho0 is None:
        rho0 = jnp.asarray(ADMM_RHO0 if solver == "admm" else 1.0, dtype)

    def one(target, om, rad, thr, w, warm_state, wts):
        c = constraints.ConstraintSet(target=target, omega=om, radius=rad, threshold=thr, soft=soft)
        s0 = init(c, w, rho0) if warm_state is None else warm_state
        return runner(c, s0, opts, groups=groups, weights=wts, max_iters=iters)

    if per_neuron:
        cols = lambda a: jnp.moveaxis(a, 1, 0)[..., None]  # (P, M) -> (M, P, 1)
        wcols = None if weights is None else cols(weights)
        state, rep = jax.vmap(one)(cols(y), cols(omega), radius, cols(v), cols(w_init), warm, wcols)
        w = jnp.moveaxis(state.w[..., 0], 0, 1)
    else:
        state, rep = one(y, omega, radius, v, w_init, warm, weights)
        w = state.w
    kernel = w * (sy / sx)

    # Everything reported is recomputed from the returned kernel, in the caller's units.
    xk = X @ kernel
    out = jnp.where(omega, xk - Y, 0)
    if soft:  # the excess over V is part of the budget's misfit
        out = out + jnp.where(omega, 0, jnp.maximum(xk - jnp.broadcast_to(threshold, Y.shape), 0))
    eps_cols = radius * sy
    if per_neuron:
        misfit = jnp.sqrt(jnp.sum(out * out, axis=0))
    else:
        misfit = jnp.sqrt(jnp.sum(out * out))
    residual = jnp.max(
        jnp.where(eps_cols > 0, misfit / jnp.where(eps_cols > 0, eps_cols, 1), jnp.where(misfit > 0, jnp.inf, 0))
    )
    if activation == "relu" and not soft:
        excess = jnp.where(omega, -jnp.inf, xk - jnp.broadcast_to(threshold, Y.shape))
        violation = jnp.maximum(jnp.max(excess), 0)
    else:
        violation = jnp.zeros((), dtype)
    objective = prox.norm(kernel, groups, weights)
    lower = jnp.sum(rep.lower_bound) * (sy / sx)
    gap = jnp.where(objective > 0, (objective - lower) / jnp.where(objective > 0, objective, 1), 0)
    info = LayerInfo(
        iterations=jnp.max(rep.iterations),
        converged=jnp.all(rep.converged),
        objective=objective,
        lower_bound=lower,
        gap=gap,
        residual=residual,
        violation=violation,
        primal_residual=jnp.max(rep.primal_residual),
        dual_residual=jnp.max(rep.dual_residual),
        rho=rep.rho,
    )
    return kernel, info, (state, sx, sy)


def state_fits(state, solver, per_neuron, n, m) -> bool:
    """Whether a previous solver ``state`` can warm-start this solve (same solver and shape)."""
    cls = admm.State if solver == "admm" else pdhg.State
    if type(state) is not cls:
        return False
    expect = (m, n, 1) if per_neuron else (n, m)
    return tuple(state.w.shape) == expect


def rescale_state(prev, X, Y):
    """Carry a previous scaled state over to this problem's scaling (same X, Y: unchanged)."""
    state, sx_old, sy_old = prev
    sx = x_scale(X, "admm" if isinstance(state, admm.State) else "pdhg")
    sy = y_scale(Y)
    kw = (sy_old / sx_old) * (sx / sy)
    ky = sy_old / sy
    return state._replace(w=state.w * kw, z=state.z * ky, **_extra_rescale(state, kw, ky))


def _extra_rescale(state, kw, ky):
    if isinstance(state, admm.State):
        return dict(u=state.u * kw, xu=state.xu * ky)
    return pdhg.rescale_extra(state, kw, ky)
