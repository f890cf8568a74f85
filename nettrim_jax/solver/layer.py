"""``solve_layer``: Net-Trim's convex program for one layer.

    relu:    minimize ||U||_1  s.t.  ||(XU - Y)_Omega||_F <= eps,  (XU)_{Omega^c} <= V
    linear:  minimize ||U||_1  s.t.  ||XU - Y||_F <= eps

and, with ``relu_budget="output"``, the ReLU program with one budget for both parts:

    relu, output budget:  ||(XU - Y)_Omega||_F^2 + ||(XU - V)_+ over Omega^c||_F^2 <= eps^2

which bounds the ReLU output's error ||relu(XU) - Y||_F when V = 0 (``constraints``).

with Omega = {Y > 0}.  Inputs are scaled before solving (``scaling``: for ADMM, X to unit
root-mean-square singular value; for PDHG, to unit spectral norm; Y to unit root-mean-square
entry) so one set of tolerances fits every layer; everything reported is in the caller's units.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.solver import admm, constraints, gram, pdhg, prox, sharding
from nettrim_jax.solver import structure as structures
from nettrim_jax.solver.scaling import is_concrete, validate, x_scale, y_scale

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


class LayerInfo(NamedTuple):
    """How a solve ended.  Scalars for the layer (per-neuron results are aggregated).

    Attributes:
      iterations: iterations run (the most over units in per-neuron mode).
      converged: True only if every stopping test passed (all units in per-neuron mode).
      objective: ||kernel||_1 in the caller's units (with ``structure="rows"``: the
        group-l1 norm sum_g ||kernel_g||_F plus l1 of ungrouped rows, ``structure.norm``).
      lower_bound: certified lower bound on the optimal objective, from a dual-feasible point.
      gap: (objective - lower_bound) / objective, the certified relative optimality gap
        when the kernel is feasible; a negative gap means the kernel is not yet feasible
        (its l1 norm is below the optimum), which only an unconverged solve returns.
      residual: misfit / epsilon over the program's balls (the largest, per-neuron); <= 1
        means the misfit constraint holds.  With ``relu_budget="output"`` the misfit is
        sqrt(||(XU - Y)_Omega||^2 + ||(XU - V)_+ over Omega^c||^2).
      violation: max(0, max of XU - threshold over Omega^c), caller's units (relu with
        ``relu_budget="omega"`` only: under "output" the excess is part of the misfit, and
        this is 0).
      primal_residual, dual_residual: the solver's last residual norms (scaled units).
      rho: the final ADMM penalty (or PDHG primal weight); (M,) per-neuron.
    """

    iterations: Any
    converged: Any
    objective: Any
    lower_bound: Any
    gap: Any
    residual: Any
    violation: Any
    primal_residual: Any
    dual_residual: Any
    rho: Any


class LayerSolution(NamedTuple):
    """Result of ``solve_layer``.

    Attributes:
      kernel: (N, M) sparse kernel with exact zeros; ``X @ kernel`` approximates the
        original pre-activation.
      info: ``LayerInfo``.
      state: the solver's final state (scaled units) with the scales used, for warm starts.
    """

    kernel: jnp.ndarray
    info: LayerInfo
    state: Any = None


# ----------------------------------------------------------------------------- the solve


def _options(solver, dtype, opts: dict):
    cls = admm.Options if solver == "admm" else pdhg.Options
    opts = dict(opts)
    single = jnp.finfo(dtype).bits <= 32
    if opts.get("margin") is None:
        opts["margin"] = 1e-3 if single else 1e-5
    if opts.get("feas_tol") is None:
        opts["feas_tol"] = 1e-3 if single else 1e-6
    check_solver_options(solver, opts)
    return cls(**opts)


def check_solver_options(solver: str, options: dict) -> None:
    """Refuse solver options before any work: an unknown name (TypeError, as a bad keyword
    would), a wrong type or an out-of-range value (one-line ValueError: max_iters >= 1,
    check_every >= 1, tolerances >= 0, ...; ``_OPTION_RANGES``).  None means the default."""
    cls = admm.Options if solver == "admm" else pdhg.Options
    unknown = set(options) - set(cls._fields)
    if unknown:
        raise TypeError(f"unknown option(s) for solver={solver!r}: {sorted(unknown)}; valid: {list(cls._fields)}")
    for name, value in options.items():
        if value is not None or name not in ("margin", "feas_tol"):
            _check_option(name, value)


# option -> (kind, lower, upper, lower bound included); kind "int" (>= lower), "real" (in the
# range, upper bound excluded), "bool".  gap_tol = 0 is allowed: it runs max_iters exactly
# (experiments/bench_layer.py times iterations that way).  Unlisted options are unchecked.
_OPTION_RANGES: dict[str, tuple[str, Any, Any, Any]] = {
    "max_iters": ("int", 1, None, True),
    "check_every": ("int", 1, None, True),
    "adapt_every": ("int", 1, None, True),
    "eps_abs": ("real", 0.0, math.inf, True),
    "eps_rel": ("real", 0.0, math.inf, True),
    "gap_tol": ("real", 0.0, math.inf, True),
    "feas_tol": ("real", 0.0, math.inf, True),
    "margin": ("real", 0.0, 1.0, True),
    "relaxation": ("real", 0.0, 2.0, False),
    "step": ("real", 0.0, 1.0, False),
    "restart_decay": ("real", 0.0, 1.0, True),
    "adaptive_rho": ("bool", None, None, None),
    "residual_stop": ("bool", None, None, None),
}


def _check_option(name, value) -> None:
    """Raise a one-line ValueError for a solver option of the wrong type or out of range
    (ranges: ``_OPTION_RANGES``; reals must be finite and below their upper bound)."""
    rule = _OPTION_RANGES.get(name)
    if rule is None:
        return
    kind, lo, hi, closed = rule
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, np.integer) if kind == "int" else (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if kind == "int":
        if value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
        return
    ok = (value >= lo if closed else value > lo) and value < hi
    if not ok:
        bound = f"{'>=' if closed else '>'} {lo}" + ("" if hi == math.inf else f" and < {hi}")
        raise ValueError(f"{name} must be {bound}, got {value}")


def _column_radii(y_omega, epsilon, per_neuron):
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
def _solve(
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
    radius = _column_radii(jnp.where(omega, y, 0), epsilon / sy, per_neuron)
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


def _warn_unconverged(converged, iterations, gap, residual):
    if not bool(np.all(converged)):
        warnings.warn(
            f"Net-Trim solve did not converge in {int(np.max(iterations))} iterations "
            f"(certified gap {float(np.max(gap)):.3g}, residual {float(np.max(residual)):.6g}); "
            "raise max_iters or loosen tolerances",
            RuntimeWarning,
            stacklevel=3,
        )


def solve_layer(
    X,
    Y,
    *,
    epsilon,
    activation: str = "relu",
    threshold=None,
    per_neuron: bool = False,
    solver: str = "admm",
    warm_start=None,
    rho=None,
    structure: str = "unstructured",
    groups=None,
    omega=None,
    gram_space="auto",
    mesh=None,
    relu_budget: str = "omega",
    l1_weights=None,
    **solver_options,
) -> LayerSolution:
    """Solve Net-Trim's program for one layer.

    Args:
      X: (P, N) layer inputs, one sample per row (append a ones column for a bias).
      Y: (P, M) original layer outputs (post-ReLU for ``activation="relu"``).
      epsilon: misfit budget, caller's units: a scalar, or with ``per_neuron=True`` an (M,)
        vector; a scalar is then split across units in proportion to ||y_m||.
      activation: "relu" or "linear".
      threshold: V, the bound on XU outside Omega (relu only): scalar or broadcastable to
        (P, M); default 0.
      per_neuron: one ball per output unit, solved as independent problems vmapped over units.
      solver: "admm" (factors an min(N, P)^2 matrix once) or "pdhg" (factorization-free).
      warm_start: an (N, M) kernel, or a previous ``LayerSolution`` for the same X and Y
        (its full solver state is reused).
      rho: initial ADMM penalty / PDHG primal weight (scaled units); default is adaptive.
      structure: "unstructured" (minimize ||U||_1) or "rows" (structured Net-Trim: the
        group-l1 norm sum_g ||U_g||_F over groups of input rows, so whole input units or
        channels become exact zeros; the certificate uses its dual, the largest group l2
        norm).  Not with ``per_neuron=True``.
      groups: with "rows", an (N,) integer array of group ids: rows sharing an id >= 0
        form one group (a conv channel: ``structure.channel_groups``), rows with id < 0
        keep the entrywise l1 (the bias row: ``structure.row_groups``).  Default: every
        row its own group, the last (bias) row included.
      gram_space: linear programs only: solve the equivalent N-row problem of
        ``gram_space`` (per-iteration cost independent of P).  "auto" (default) does so when
        P > 2N; True forces it, False never uses it.  Its ``state`` is for that problem
        (a warm start from it works for the Gram path; the direct path uses its kernel).
      mesh: a ``jax.sharding.Mesh`` with axes "samples" and "units": rows of X and Y are
        split over "samples", output units over "units" (``sharding``); works across
        processes under ``jax.distributed``.  The result is the unsharded one to the
        solver's tolerance.  A P or M the axis sizes do not divide is padded with zero rows
        and units (``_solve_padded``), which change nothing; arrays already spread over
        processes must fit.
      omega: (P, M) bool, relu only: Omega given explicitly instead of {Y > 0} (Y may
        then have any sign on it: the program of a layer behind an affine epilogue,
        ``network.epilogues``); entries of Y off Omega are ignored.
      relu_budget: relu only: "omega" (default; the paper's program: epsilon bounds the
        misfit over Omega and XU <= V holds exactly off it) or "output" (epsilon bounds the
        misfit over Omega and the excess over V off it together, hence the ReLU output's
        error ||relu(XU) - Y||_F for V = 0; a convex relaxation of the paper's program and of
        the linear one, so at least as sparse at the same output error).
      l1_weights: (N, M) positive finite weights: minimize the weighted l1
        sum_ij l1_weights_ij |U_ij| instead (one step of reweighted l1, Candes, Wakin & Boyd
        2008: ``reweighting_weights``); the reported objective and certificate are the
        weighted ones.  Not with structure="rows"; the direct path only (gram_space "auto"
        does not take the Gram route, True is an error).
      **solver_options: fields of ``admm.Options`` / ``pdhg.Options`` (max_iters,
        check_every, eps_abs, eps_rel, gap_tol, relaxation, adaptive_rho, margin,
        feas_tol; see their docstrings).

    Returns:
      ``LayerSolution(kernel (N, M), info, state)``.  Works under ``jax.jit`` and
      ``jax.vmap``; value checks (NaN, sign of epsilon) and the non-convergence warning are
      done only when the inputs are concrete.
    """
    warm_kernel = warm_start.kernel if isinstance(warm_start, LayerSolution) else warm_start
    if omega is not None:
        if activation != "relu" or jnp.shape(omega) != jnp.shape(Y):
            raise ValueError(
                f"omega applies to activation='relu' only and must have Y's shape "
                f"{tuple(jnp.shape(Y))}, got {tuple(jnp.shape(omega))}"
            )
        omega = jnp.asarray(omega, bool)
        Y = jnp.where(omega, Y, 0)
    validate(
        X,
        Y if omega is None else jnp.abs(Y),
        epsilon,
        activation,
        threshold,
        per_neuron,
        solver,
        None if warm_kernel is None else jnp.shape(warm_kernel),
    )
    groups = structures.parse(structure, groups, jnp.shape(X)[1], per_neuron)
    if relu_budget not in ("omega", "output"):
        raise ValueError(f"relu_budget must be 'omega' or 'output', got {relu_budget!r}")
    if gram_space not in ("auto", True, False):
        raise ValueError(f"gram_space must be 'auto', True or False, got {gram_space!r}")
    if l1_weights is not None:
        l1_weights = _checked_weights(l1_weights, (jnp.shape(X)[1], jnp.shape(Y)[1]), groups)
    if gram_space is True and (activation != "linear" or groups is not None or l1_weights is not None):
        raise ValueError("gram_space=True applies only to activation='linear' with the (unweighted) l1 objective")
    dtype = jnp.result_type(*(jax.dtypes.canonicalize_dtype(_dtype_of(a)) for a in (X, Y)), jnp.float32)
    p, n = jnp.shape(X)
    m = jnp.shape(Y)[1]
    if mesh is not None and any(sharding.padding(mesh, p, m)) and all(is_concrete(a) for a in (X, Y)):
        return _solve_padded(
            mesh,
            X,
            Y,
            epsilon,
            threshold,
            omega,
            warm_start,
            l1_weights,
            dict(
                activation=activation,
                per_neuron=per_neuron,
                solver=solver,
                rho=rho,
                structure=structure,
                groups=groups,
                gram_space=gram_space,
                relu_budget=relu_budget,
                **solver_options,
            ),
        )
    if mesh is not None:
        sharding.check_mesh(mesh, p, m)
        mesh = sharding.auto_axes(mesh)
        X, Y = sharding.place(mesh, X, "rows", dtype), sharding.place(mesh, Y, "outputs", dtype)
    X = jnp.asarray(X, dtype)
    Y = jnp.asarray(Y, dtype)
    # "auto" takes the Gram route only where it can check feasibility: concrete inputs (not
    # under an outer jit) and a budget above the least-squares misfit; a budget at or below
    # it (epsilon 0, say, where rounding puts the floor a hair above 0) goes the direct way,
    # which reports what it reached.  The Gram certificate is the l1 one: no groups.
    auto = (
        gram_space == "auto"
        and activation == "linear"
        and p > 2 * n
        and groups is None
        and l1_weights is None
        and all(is_concrete(a) for a in (X, Y, epsilon))
    )
    if gram_space is True or auto:
        try:
            with jax.default_matmul_precision(MATMUL_PRECISION):
                return gram_space_solve(
                    X,
                    Y,
                    epsilon,
                    per_neuron=per_neuron,
                    solver=solver,
                    warm_start=warm_start,
                    rho=rho,
                    mesh=mesh,
                    **solver_options,
                )
        except ValueError as e:
            if gram_space is True or "infeasible" not in str(e):
                raise
    epsilon = jnp.asarray(epsilon, dtype)
    threshold = jnp.zeros((), dtype) if threshold is None else jnp.asarray(threshold, dtype)
    opts, iters = split_iterations(_options(solver, dtype, solver_options_static(solver_options)), solver_options)

    warm = None
    if isinstance(warm_start, LayerSolution):
        w0 = jnp.asarray(warm_start.kernel, dtype)
        prev = warm_start.state
        if prev is not None and _state_fits(prev[0], solver, per_neuron, n, m):
            warm = _rescale_state(prev, X, Y)
    elif warm_start is not None:
        w0 = jnp.asarray(warm_start, dtype)
    else:
        w0 = jnp.zeros((n, m), dtype)
    rho0 = None if rho is None else jnp.asarray(rho, dtype)
    if groups is not None:
        groups = jnp.asarray(groups)
    weights = None if l1_weights is None else jnp.asarray(l1_weights, dtype)
    if mesh is not None:
        w0 = sharding.place(mesh, w0, "kernel", dtype)
        if weights is not None:
            weights = sharding.place(mesh, weights, "kernel", dtype)
        if jnp.ndim(threshold) == 2 and jnp.shape(threshold) == (p, m):
            threshold = sharding.place(mesh, threshold, "outputs", dtype)
        if omega is not None:
            omega = sharding.place(mesh, omega, "outputs", bool)
    with jax.default_matmul_precision(MATMUL_PRECISION):
        kernel, info, state = _solve(
            X,
            Y,
            epsilon,
            threshold,
            w0,
            warm,
            rho0,
            groups,
            omega,
            weights,
            iters,
            activation=activation,
            per_neuron=per_neuron,
            solver=solver,
            opts=opts,
            soft=activation == "relu" and relu_budget == "output",
        )
    summary = [sharding.host_value(a) for a in (info.converged, info.iterations, info.gap, info.residual)]
    if all(v is not None for v in summary):
        _warn_unconverged(*summary)
    else:
        jax.debug.callback(_warn_unconverged, info.converged, info.iterations, info.gap, info.residual)
    return LayerSolution(kernel=kernel, info=info, state=state)


def solver_options_static(options: dict) -> dict:
    """``options`` for validation and the static ``Options``: a traced ``max_iters`` (one
    compiled program for every cap, ``network.problems.jitted_solver``) is left out."""
    return {k: v for k, v in options.items() if not (k == "max_iters" and not is_concrete(v))}


def split_iterations(opts, options: dict):
    """(static options with max_iters 0, the cap as an int32 array): the compiled solve takes
    its iteration cap as an argument, so solves that differ only in it share one program."""
    cap = options.get("max_iters")
    iters = jnp.asarray(opts.max_iters if cap is None or is_concrete(cap) else cap, jnp.int32)
    return opts._replace(max_iters=0), iters


def _solve_padded(mesh, X, Y, epsilon, threshold, omega, warm_start, weights, kw) -> LayerSolution:
    """``solve_layer`` on ``mesh`` for a P or M its axis sizes do not divide: zero rows and
    zero units are appended, which change nothing (a zero row has misfit 0 and X U = 0 <= V
    with V = 0 there; a zero unit's optimal column is 0), and the kernel's extra columns are
    dropped.  The solver state stays padded (a warm start from it fits the same padding)."""
    p, m = np.shape(Y)
    dp, dm = sharding.padding(mesh, p, m)
    rows = lambda a, v: np.pad(np.asarray(a), ((0, dp), (0, 0)), constant_values=v)
    both = lambda a, v: np.pad(np.asarray(a), ((0, dp), (0, dm)), constant_values=v)
    cols = lambda a, v: np.pad(np.asarray(a), ((0, 0), (0, dm)), constant_values=v)
    if threshold is not None and np.ndim(threshold) > 0:
        threshold = both(np.broadcast_to(np.asarray(threshold), (p, m)), 0)
    if np.ndim(epsilon) == 1:
        epsilon = np.pad(np.asarray(epsilon), (0, dm))
    if isinstance(warm_start, LayerSolution):
        warm_start = warm_start._replace(kernel=jnp.asarray(cols(warm_start.kernel, 0)))
    elif warm_start is not None:
        warm_start = cols(warm_start, 0)
    sol = solve_layer(
        rows(X, 0),
        both(Y, 0),
        epsilon=epsilon,
        threshold=threshold,
        omega=None if omega is None else both(omega, False),
        warm_start=warm_start,
        l1_weights=None if weights is None else cols(weights, 1),
        mesh=mesh,
        **kw,
    )
    return sol._replace(kernel=sol.kernel[:, :m])


def _checked_weights(weights, shape, groups):
    """``l1_weights`` validated: the kernel's shape, finite and positive (concrete values;
    traced ones are taken as given)."""
    if groups is not None:
        raise ValueError("l1_weights= weights the entrywise l1; it does not combine with structure='rows'")
    if tuple(jnp.shape(weights)) != tuple(shape):
        raise ValueError(f"l1_weights must have the kernel's shape {tuple(shape)}, got {tuple(jnp.shape(weights))}")
    if is_concrete(weights):
        w = np.asarray(weights)
        if not (np.all(np.isfinite(w)) and np.all(w > 0)):
            raise ValueError("l1_weights must be finite and > 0 (a zero weight leaves an entry unpenalised)")
    return weights


def reweighting_weights(kernel, delta=None):
    """Weights (N, M) for the next reweighted-l1 solve after ``kernel`` (N, M):
    delta / (|kernel| + delta), 1 on the zeros and smaller on the large entries (Candes,
    Wakin & Boyd 2008, scaled so the weights lie in (0, 1]).  ``delta`` defaults to a tenth
    of the root-mean-square nonzero entry (all ones for an all-zero kernel)."""
    a = jnp.abs(jnp.asarray(kernel))
    if delta is None:
        nz = jnp.count_nonzero(a)
        rms = jnp.sqrt(jnp.sum(a * a) / jnp.maximum(nz, 1))
        delta = jnp.where(nz > 0, 0.1 * rms, 1.0)
    return delta / (a + delta)


def _dtype_of(a):
    return a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype


def _state_fits(state, solver, per_neuron, n, m) -> bool:
    cls = admm.State if solver == "admm" else pdhg.State
    if type(state) is not cls:
        return False
    expect = (m, n, 1) if per_neuron else (n, m)
    return tuple(state.w.shape) == expect


def _rescale_state(prev, X, Y):
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


def gram_space_solve(X, Y, epsilon, *, per_neuron, solver, warm_start, rho, mesh, **solver_options):
    """The linear program through ``gram_space`` with X (P, N), Y (P, M) at hand: statistics
    in one pass, c from the least-squares residual, misfit reported from ||XU - Y||."""
    from nettrim_jax.solver import gram_space

    red = gram_space.reduce(gram_space.from_data(X, Y))
    red = gram_space.exact_constant(red, X, Y)
    return gram_space.solve_reduced(
        red,
        epsilon,
        per_neuron=per_neuron,
        solver=solver,
        warm_start=warm_start,
        rho=rho,
        data=(X, Y),
        mesh=mesh,
        **solver_options,
    )
