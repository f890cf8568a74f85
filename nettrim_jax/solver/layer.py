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

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.solver import gram_space as gram_route
from nettrim_jax.solver import sharding
from nettrim_jax.solver import structure as structures
from nettrim_jax.solver.engine import MATMUL_PRECISION, rescale_state, solve, state_fits
from nettrim_jax.solver.options import make_options, solver_options_static, split_iterations
from nettrim_jax.solver.scaling import is_concrete, validate
from nettrim_jax.solver.solution import LayerInfo, LayerSolution, warn_unconverged

__all__ = ["LayerInfo", "LayerSolution", "reweighting_weights", "solve_layer"]


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
    opts, iters = split_iterations(make_options(solver, dtype, solver_options_static(solver_options)), solver_options)

    warm = None
    if isinstance(warm_start, LayerSolution):
        w0 = jnp.asarray(warm_start.kernel, dtype)
        prev = warm_start.state
        if prev is not None and state_fits(prev[0], solver, per_neuron, n, m):
            warm = rescale_state(prev, X, Y)
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
        kernel, info, state = solve(
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
        warn_unconverged(*summary)
    else:
        jax.debug.callback(warn_unconverged, info.converged, info.iterations, info.gap, info.residual)
    return LayerSolution(kernel=kernel, info=info, state=state)


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


def gram_space_solve(X, Y, epsilon, *, per_neuron, solver, warm_start, rho, mesh, **solver_options):
    """The linear program through ``gram_space`` with X (P, N), Y (P, M) at hand: statistics
    in one pass, c from the least-squares residual, misfit reported from ||XU - Y||."""
    red = gram_route.reduce(gram_route.from_data(X, Y))
    red = gram_route.exact_constant(red, X, Y)
    return gram_route.solve_reduced(
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
