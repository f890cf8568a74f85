"""Linear Net-Trim programs in Gram space: per-iteration cost independent of the row count P.

For the linear program  minimize ||U||_1  s.t.  ||XU - Y||_F <= eps  with X (P, N), Y (P, M):
factor X^T X + delta I = R^T R (R (N, N) upper triangular; delta a ridge, 0 unless X^T X is
numerically singular: ``reduce``) and set
Q = R^-T X^T Y (N, M), B = R^-1 Q (the ridge least-squares kernel) and, per column,
c_m = ||y_m||^2 - ||q_m||^2.  For every U (exact identity, any delta):

    ||X u_m - y_m||^2 = ||R u_m - q_m||^2 - delta ||u_m||^2 + c_m.

With delta = 0 the program on P rows is the program on N rows with X -> R, Y -> Q and radius
sqrt(eps^2 - sum_m c_m) (per neuron: sqrt(eps_m^2 - c_m)); eps^2 below sum_m c_m (the
least-squares residual) is an infeasible program and a ``ValueError``.  With delta > 0 the
reduced constraint is *stricter* by delta ||U||^2, so every kernel it accepts meets the
original bound; the certificate is then recomputed for the original program (``certificate``),
so nothing reported leans on delta being zero.

Only X^T X (N, N), X^T Y (N, M), ||y_m||^2 (M,) and the row count are needed: ``GramStats``
accumulates them over row chunks (``accumulate``), so 10^6 rows take O(N^2 + NM) memory and
one pass.  Costs: accumulation 2 P N (N + M) flops (one GEMM pass), factorization N^3 / 3,
then every ADMM iteration works on N rows instead of P.

Rounding (float32).  c_m is a difference of two sums of P squares, so it carries an absolute
error of a few ulps of ||y_m||^2 (measured: below 1e-6 ||Y||^2 at P = 10^5), against
eps^2 = (0.01-0.1)^2 ||Y||^2 for typical budgets; the reported misfit carries the same error.
``solve_layer`` (which has X and Y in hand) removes it by computing c_m directly from the
least-squares residual (``exact_constant``: c_m = ||X b_m - y_m||^2 + delta ||b_m||^2, also an
identity) and reports the misfit from ||XU - Y|| itself.  All products here use
``precision=HIGHEST`` (no TF32 / bf16 passes on GPUs and TPUs).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.solver import admm, engine, scaling, sharding
from nettrim_jax.solver.options import make_options, solver_options_static, split_iterations
from nettrim_jax.solver.solution import LayerSolution, warn_unconverged

HIGHEST = jax.lax.Precision.HIGHEST


class GramStats(NamedTuple):
    """Sufficient statistics of a linear layer problem, accumulated over row chunks.

    Attributes:
      xtx: (N, N) X^T X.
      xty: (N, M) X^T Y.
      yty: (M,) per-column ||y_m||^2.
      rows: () number of rows accumulated (float, so it sums under jit and psum).
    """

    xtx: jnp.ndarray
    xty: jnp.ndarray
    yty: jnp.ndarray
    rows: jnp.ndarray


class Reduced(NamedTuple):
    """The N-row problem equivalent to a linear layer program (see the module doc).

    Attributes:
      r: (N, N) upper triangular, R^T R = X^T X + ridge I.
      q: (N, M) R^-T X^T Y.
      b: (N, M) R^-1 Q, the ridge least-squares kernel.
      c: (M,) c_m = ||y_m||^2 - ||q_m||^2, the part of column m's squared misfit no kernel
        removes (plus ridge ||b_m||^2).
      yty: (M,) ||y_m||^2, for the per-neuron split of a scalar epsilon.
      ridge: () delta.
    """

    r: jnp.ndarray
    q: jnp.ndarray
    b: jnp.ndarray
    c: jnp.ndarray
    yty: jnp.ndarray
    ridge: jnp.ndarray


def init(n: int, m: int, dtype=jnp.float32) -> GramStats:
    """Empty statistics for N input features and M outputs."""
    if n <= 0 or m <= 0:
        raise ValueError(f"GramStats needs n > 0 and m > 0, got n={n}, m={m}")
    z = lambda *s: jnp.zeros(s, dtype)
    return GramStats(xtx=z(n, n), xty=z(n, m), yty=z(m), rows=z())


@jax.jit
def _add(stats: GramStats, x, y) -> GramStats:
    x = x.astype(stats.xtx.dtype)
    y = y.astype(stats.xtx.dtype)
    return GramStats(
        xtx=stats.xtx + jnp.matmul(x.T, x, precision=HIGHEST),
        xty=stats.xty + jnp.matmul(x.T, y, precision=HIGHEST),
        yty=stats.yty + jnp.sum(y * y, axis=0),
        rows=stats.rows + x.shape[0],
    )


def accumulate(stats: GramStats, X_chunk, Y_chunk) -> GramStats:
    """Add a chunk of rows: X_chunk (p, N), Y_chunk (p, M) (any p >= 1).  Pure; jitted per
    chunk shape, so feed equal-sized chunks to compile once."""
    n, m = stats.xty.shape
    if jnp.ndim(X_chunk) != 2 or jnp.ndim(Y_chunk) != 2:
        raise ValueError(f"chunks must be 2-D, got X {jnp.shape(X_chunk)} and Y {jnp.shape(Y_chunk)}")
    if jnp.shape(X_chunk)[1] != n or jnp.shape(Y_chunk)[1] != m or jnp.shape(X_chunk)[0] != jnp.shape(Y_chunk)[0]:
        raise ValueError(
            f"chunk shapes X {jnp.shape(X_chunk)}, Y {jnp.shape(Y_chunk)} do not fit "
            f"stats for N={n}, M={m} (equal row counts needed)"
        )
    scaling.check_finite("X_chunk", X_chunk)
    scaling.check_finite("Y_chunk", Y_chunk)
    return _add(stats, jnp.asarray(X_chunk), jnp.asarray(Y_chunk))


def from_data(X, Y, chunk_rows: int | None = None, dtype=None) -> GramStats:
    """Statistics of X (P, N), Y (P, M), in chunks of ``chunk_rows`` (default: all at once)."""
    X = jnp.asarray(X) if not isinstance(X, np.ndarray) else X
    dtype = dtype or jnp.result_type(X.dtype, jnp.asarray(Y[:1]).dtype, jnp.float32)
    stats = init(X.shape[1], Y.shape[1], dtype)
    p = X.shape[0]
    step = p if chunk_rows is None else int(chunk_rows)
    if step <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    for i in range(0, p, step):
        stats = accumulate(stats, X[i : i + step], Y[i : i + step])
    return stats


def default_ridge(xtx) -> jnp.ndarray:
    """N * unit roundoff * max diagonal of X^T X: the jitter at which the Cholesky of
    X^T X + ridge I succeeds in floating point even for rank-deficient X (a dead input unit,
    a feature repeated or constant next to the bias column)."""
    n = xtx.shape[0]
    return n * jnp.finfo(xtx.dtype).eps * jnp.maximum(jnp.max(jnp.diagonal(xtx)), jnp.finfo(xtx.dtype).tiny)


def _factor(stats: GramStats, ridge) -> Reduced:
    n = stats.xtx.shape[0]
    g = 0.5 * (stats.xtx + stats.xtx.T) + ridge * jnp.eye(n, dtype=stats.xtx.dtype)
    r = jnp.linalg.cholesky(g).T  # upper, R^T R = g
    q = jax.scipy.linalg.solve_triangular(r, stats.xty, trans="T", lower=False)
    b = jax.scipy.linalg.solve_triangular(r, q, lower=False)
    c = stats.yty - jnp.sum(q * q, axis=0)
    return Reduced(r=r, q=q, b=b, c=jnp.maximum(c, 0), yty=stats.yty, ridge=jnp.asarray(ridge, g.dtype))


@jax.jit
def _reduce(stats: GramStats, ridge) -> Reduced:
    """ridge < 0 means automatic: none when every Cholesky pivot squared is above
    ``default_ridge`` (X well conditioned at this precision), else ``default_ridge``."""
    jitter = default_ridge(stats.xtx)
    plain = _factor(stats, jnp.where(ridge < 0, 0, ridge))
    pivots = jnp.diagonal(plain.r)
    ok = (ridge >= 0) | (jnp.all(jnp.isfinite(plain.r)) & jnp.all(pivots * pivots > jitter))
    return jax.lax.cond(ok, lambda: plain, lambda: _factor(stats, jitter))


def reduce(stats: GramStats, ridge=None) -> Reduced:
    """Factor the statistics into the N-row problem.  ``ridge`` None: no ridge unless X^T X is
    (numerically) singular, then ``default_ridge``; a number: that ridge."""
    ridge = -1.0 if ridge is None else ridge
    if ridge != -1.0 and float(ridge) < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    red = _reduce(stats, jnp.asarray(ridge, stats.xtx.dtype))
    if scaling.is_concrete(red.r) and not bool(jnp.all(jnp.isfinite(red.r))):
        raise ValueError("Cholesky of X^T X + ridge I failed (non-finite factor); pass a larger ridge")
    return red


@jax.jit
def range_reduction(X, Y) -> Reduced:
    """The reduction of X (P, N), Y (P, M) through the eigendecomposition X^T X = V L V^T,
    exact for rank-deficient X too (no ridge): R = L^1/2 V^T and Q = L^-1/2 V^T X^T Y on the
    eigenvalues above N x unit roundoff x the largest (0 on the others), so ||X U - Y||^2 =
    ||R U - Q||^2 + sum c for every U up to that roundoff, c from the least-squares residual
    itself.  R is square but not triangular.  A LayerNorm'd input with its bias column is
    exactly rank-deficient (every row's features sum to a constant), where the Cholesky
    route needs a ridge and a stricter program."""
    X = X.astype(jnp.result_type(X.dtype, jnp.float32))
    Y = Y.astype(X.dtype)
    g = jnp.matmul(X.T, X, precision=HIGHEST)
    lam, vec = jnp.linalg.eigh(0.5 * (g + g.T))
    n = g.shape[0]
    keep = lam > n * jnp.finfo(g.dtype).eps * jnp.max(lam)
    root = jnp.sqrt(jnp.where(keep, lam, 0))
    inv = jnp.where(keep, 1 / jnp.where(keep, root, 1), 0)
    r = root[:, None] * vec.T
    q = inv[:, None] * jnp.matmul(vec.T, jnp.matmul(X.T, Y, precision=HIGHEST), precision=HIGHEST)
    b = jnp.matmul(vec, inv[:, None] * q, precision=HIGHEST)
    d = jnp.matmul(X, b, precision=HIGHEST) - Y
    yty = jnp.sum(Y * Y, axis=0)
    return Reduced(r=r, q=q, b=b, c=jnp.sum(d * d, axis=0), yty=yty, ridge=jnp.zeros((), g.dtype))


@jax.jit
def exact_constant(red: Reduced, X, Y) -> Reduced:
    """c from the least-squares residual itself, c_m = ||X b_m - y_m||^2 + ridge ||b_m||^2
    (an identity; no cancellation between two sums of P squares).  X (P, N), Y (P, M)."""
    d = jnp.matmul(X.astype(red.r.dtype), red.b, precision=HIGHEST) - Y.astype(red.r.dtype)
    return red._replace(c=jnp.sum(d * d, axis=0) + red.ridge * jnp.sum(red.b * red.b, axis=0))


def column_misfit(red: Reduced, U) -> jnp.ndarray:
    """(M,) ||X u_m - y_m|| from the reduced problem alone (U (N, M))."""
    d = jnp.matmul(red.r, U, precision=HIGHEST) - red.q
    sq = red.c + jnp.sum(d * d, axis=0) - red.ridge * jnp.sum(U * U, axis=0)
    return jnp.sqrt(jnp.maximum(sq, 0))


def column_radii(red: Reduced, epsilon, per_neuron: bool):
    """Original per-unit budgets (M,) (a scalar split in proportion to ||y_m||, as
    ``solve_layer`` does), or the scalar budget when coupled."""
    if not per_neuron or jnp.ndim(epsilon) == 1:
        return epsilon
    norms = jnp.sqrt(red.yty)
    total = jnp.sqrt(jnp.sum(red.yty))
    m = red.yty.shape[0]
    share = jnp.where(total > 0, norms / jnp.where(total > 0, total, 1), 1 / math.sqrt(m))
    return epsilon * share


def reduced_radius(red: Reduced, eps_orig, per_neuron: bool):
    """sqrt(eps^2 - sum c) (coupled) or sqrt(eps_m^2 - c_m) (per neuron); NaN where the
    program is infeasible (eps below the least-squares residual)."""
    c = red.c if per_neuron else jnp.sum(red.c)
    left = eps_orig * eps_orig - c
    return jnp.where(left >= 0, jnp.sqrt(jnp.maximum(left, 0)), jnp.nan)


def certificate(red: Reduced, lam, eps_orig, per_neuron: bool):
    """Certified lower bound on the *original* program's optimum from a reduced dual point.

    ``lam`` (N, M) is a dual direction for the reduced ball constraint (any positive multiple).
    The original dual point is Lambda = X R^-1 lam + r t with r = Y - X B the least-squares
    residual and t = -||lam|| / eps' per block (the choice that makes the bound equal the
    reduced program's when ridge = 0).  Its three ingredients per column m come from the
    reduced problem alone (w = R^-1 lam; X^T r = ridge B; <r, Y> = c; ||r||^2 = c - ridge ||B||^2):

      X^T Lambda_m = R^T lam_m - ridge w_m + t ridge b_m
      <Lambda_m, y_m> = <lam_m, q_m> + t c_m
      ||Lambda_m||^2 = ||lam_m||^2 - ridge ||w_m||^2 + 2 t ridge <w_m, b_m> + t^2 (c_m - ridge ||b_m||^2)

    and the bound is that of ``constraints.dual_bound`` (whole-block and per-column
    rescalings, the larger), summed over units per neuron.
    """
    tiny = jnp.finfo(lam.dtype).tiny
    eps_red = reduced_radius(red, eps_orig, per_neuron)
    w = jax.scipy.linalg.solve_triangular(red.r, lam, lower=False)
    lam_sq = jnp.sum(lam * lam, axis=0)
    if per_neuron:
        t = -jnp.sqrt(lam_sq) / jnp.maximum(eps_red, tiny)
    else:
        t = -jnp.sqrt(jnp.sum(lam_sq)) / jnp.maximum(eps_red, tiny)
    xt_lam = jnp.matmul(red.r.T, lam, precision=HIGHEST) - red.ridge * w + t * red.ridge * red.b
    inner = jnp.sum(lam * red.q, axis=0) + t * red.c
    sq = (
        lam_sq
        - red.ridge * jnp.sum(w * w, axis=0)
        + 2 * t * red.ridge * jnp.sum(w * red.b, axis=0)
        + t * t * (red.c - red.ridge * jnp.sum(red.b * red.b, axis=0))
    )
    sq = jnp.maximum(sq, 0)
    col = jnp.max(jnp.abs(xt_lam), axis=0)
    inv = jnp.where(col > tiny, 1 / jnp.maximum(col, tiny), 0)
    if per_neuron:
        return jnp.sum(jnp.maximum(-(inner + eps_orig * jnp.sqrt(sq)) * inv, 0))
    value = -(jnp.sum(inner) + eps_orig * jnp.sqrt(jnp.sum(sq)))
    top = jnp.max(col)
    uniform = jnp.where((value > 0) & (top > tiny), value / jnp.maximum(top, tiny), 0)
    per_column = -(jnp.sum(inner * inv) + eps_orig * jnp.sqrt(jnp.sum(sq * inv * inv)))
    return jnp.maximum(uniform, jnp.where(jnp.isfinite(per_column), per_column, 0))


def dual_direction(state) -> jnp.ndarray:
    """The reduced solve's dual point (N, M) from its final state (ADMM: rho L1; PDHG: y);
    per-neuron states (M, N, 1) are turned back to (N, M)."""
    lam = state.rho[..., None, None] * state.l1 if isinstance(state, admm.State) else state.y
    if lam.ndim == 3:
        lam = jnp.moveaxis(lam[..., 0], 0, 1)
    return lam


# ----------------------------------------------------------------------------- the solve


@jax.jit
def _direct_misfit(X, Y, kernel):
    d = jnp.matmul(X.astype(kernel.dtype), kernel, precision=HIGHEST) - Y.astype(kernel.dtype)
    return jnp.sqrt(jnp.sum(d * d, axis=0))


@functools.partial(jax.jit, static_argnames=("per_neuron",))
def _report(red: Reduced, kernel, lam, eps_orig, col_misfit, info, *, per_neuron):
    if per_neuron:
        misfit, budget = col_misfit, eps_orig
    else:
        misfit, budget = jnp.sqrt(jnp.sum(col_misfit**2)), eps_orig
    residual = jnp.max(
        jnp.where(budget > 0, misfit / jnp.where(budget > 0, budget, 1), jnp.where(misfit > 0, jnp.inf, 0))
    )
    objective = jnp.sum(jnp.abs(kernel))
    lower = certificate(red, lam, eps_orig, per_neuron)
    gap = jnp.where(objective > 0, (objective - lower) / jnp.where(objective > 0, objective, 1), 0)
    return info._replace(objective=objective, lower_bound=lower, gap=gap, residual=residual)


class ReducedState(NamedTuple):
    """``LayerSolution.state`` of a Gram-space solve: the reduced solve's (state, sx, sy).
    Wrapped so that a direct (P-row) solve never mistakes it for its own state."""

    inner: tuple


def solve_reduced(
    red: Reduced,
    epsilon,
    *,
    per_neuron: bool = False,
    solver: str = "admm",
    warm_start=None,
    rho=None,
    data=None,
    mesh=None,
    **solver_options,
):
    """Solve the linear program given its reduced form; see ``solve_layer_gram``.

    ``data`` = (X, Y) when the rows are at hand: the reported misfit is then ||XU - Y||
    itself rather than the reduced identity.  ``mesh``: Q and the kernel are split over its
    "units" axis (the N-row problem has no samples axis to split).
    """
    dtype = red.r.dtype
    m = red.q.shape[1]
    eshape = jnp.shape(epsilon)
    if eshape not in ((), (m,)) or (eshape == (m,) and not per_neuron):
        vector = f" or an (M,) = ({m},) vector" if per_neuron else ""
        raise ValueError(f"epsilon must be a scalar{vector} (a vector needs per_neuron=True), got shape {eshape}")
    scaling.check_finite("epsilon", epsilon)
    if scaling.is_concrete(epsilon) and bool(np.any(np.asarray(epsilon) < 0)):
        raise ValueError(f"epsilon must be >= 0, got {np.asarray(epsilon)}")
    epsilon = jnp.asarray(epsilon, dtype)
    eps_orig = column_radii(red, epsilon, per_neuron)
    eps_red = reduced_radius(red, eps_orig, per_neuron)
    radius = sharding.host_value(eps_red)
    if radius is not None and bool(np.any(np.isnan(radius))):
        floor = np.sqrt(sharding.host_value(red.c if per_neuron else jnp.sum(red.c)))
        raise ValueError(
            f"infeasible linear program: epsilon {np.asarray(eps_orig)} is below the "
            f"least-squares misfit {floor} (no kernel fits Y that closely)"
        )
    opts, iters = split_iterations(make_options(solver, dtype, solver_options_static(solver_options)), solver_options)
    if (
        warm_start is not None
        and not isinstance(warm_start, LayerSolution)
        and tuple(jnp.shape(warm_start)) != tuple(red.b.shape)
    ):
        raise ValueError(f"warm_start kernel has shape {tuple(jnp.shape(warm_start))}, expected {tuple(red.b.shape)}")
    warm_kernel = warm_start.kernel if isinstance(warm_start, LayerSolution) else warm_start
    w0 = jnp.zeros_like(red.b) if warm_kernel is None else jnp.asarray(warm_kernel, dtype)
    warm = None
    if isinstance(warm_start, LayerSolution) and isinstance(warm_start.state, ReducedState):
        prev = warm_start.state.inner
        if engine.state_fits(prev[0], solver, per_neuron, *red.b.shape):
            warm = engine.rescale_state(prev, red.r, red.q)
    rho0 = None if rho is None else jnp.asarray(rho, dtype)
    q = red.q
    if mesh is not None:
        q = sharding.place(mesh, q, "kernel", dtype)
        w0 = sharding.place(mesh, w0, "kernel", dtype)
    kernel, info, solved = engine.solve(
        red.r,
        q,
        eps_red,
        jnp.zeros((), dtype),
        w0,
        warm,
        rho0,
        iters=iters,
        activation="linear",
        per_neuron=per_neuron,
        solver=solver,
        opts=opts,
    )
    state = solved[0]
    if data is None:
        col = column_misfit(red, kernel)
    else:
        col = _direct_misfit(data[0], data[1], kernel)
    info = _report(red, kernel, dual_direction(state), eps_orig, col, info, per_neuron=per_neuron)
    summary = [sharding.host_value(a) for a in (info.converged, info.iterations, info.gap, info.residual)]
    if all(v is not None for v in summary):
        warn_unconverged(*summary)
    return LayerSolution(kernel=kernel, info=info, state=ReducedState(solved))


def solve_layer_gram(
    stats,
    epsilon,
    *,
    per_neuron: bool = False,
    solver: str = "admm",
    warm_start=None,
    rho=None,
    ridge=None,
    **solver_options,
):
    """Net-Trim's linear program  min ||U||_1 s.t. ||XU - Y||_F <= eps  from ``GramStats``.

    Args:
      stats: ``GramStats`` accumulated over all rows (or an already ``Reduced`` problem).
      epsilon: misfit budget in the caller's units, as in ``solve_layer`` (scalar, or (M,)
        with ``per_neuron=True``; a scalar is split in proportion to ||y_m||).
      per_neuron, solver, rho, **solver_options: as in ``solve_layer``.
      warm_start: an (N, M) kernel or a previous ``LayerSolution`` (a Gram-space one's
        solver state is reused, any other's kernel).
      ridge: delta in R^T R = X^T X + delta I (default: 0, or ``default_ridge`` when X^T X
        is numerically singular; see ``reduce``).

    Returns:
      ``LayerSolution(kernel (N, M), info, state)`` (state: ``ReducedState``).  ``info`` is in the original
      program's terms: residual = sqrt(c + ||RU - Q||^2 - delta ||U||^2) / eps, lower_bound
      from a dual point of the original program (``certificate``).
    """
    red = stats if isinstance(stats, Reduced) else reduce(stats, ridge)
    return solve_reduced(
        red, epsilon, per_neuron=per_neuron, solver=solver, warm_start=warm_start, rho=rho, **solver_options
    )
