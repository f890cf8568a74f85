"""Refit a pruned kernel on its own support (debiasing the l1 solution).

Net-Trim's l1 objective shrinks the weights it keeps: at the optimum the misfit sits on
the boundary eps of its ball.  With the support S of the solution fixed, this module
finds the kernel on S that best fits the layer's response:

    relu:    minimize  1/2 ||(XU - Y)_Omega||_F^2 + 1/2 ||(XU - V)_+ over Omega^c||_F^2
    linear:  minimize  1/2 ||XU - Y||_F^2
             over U with U_ij = 0 outside S.

The relu objective is exactly the bound Net-Trim's guarantee runs through
(||relu(XU) - Y||_F^2 <= twice the objective when V = 0), so a refit kernel that lowers
it keeps every layer-wise guarantee of the Net-Trim kernel it started from, with the same
or fewer nonzeros.  The objective separates over output units; each unit keeps whichever
of (Net-Trim kernel, refit kernel) has the smaller objective, so a refit never makes a
unit worse.

Solver: a few rounds of a semismooth Newton (active-set) method, each solving the masked
least-squares problem for the current active set {Omega} U {Omega^c with XU > V} by
conjugate gradients batched over units (two products with X per CG iteration).  A linear
layer's active set is every row, the same for all units, so with at least as many rows as
inputs (P >= N) its CG runs on the Gram matrix X^T X instead: one (N, N) x (N, M) product
per iteration in place of two (P, N) x (N, M) ones, after one P N^2 product to form it (a
transformer projection, 8192 rows of 129 inputs: 32x fewer flops per iteration).  The
objectives that decide which kernel is kept are still measured on the rows.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nettrim_jax.solver import scaling


class RefitInfo(NamedTuple):
    """How a refit ended (caller's units).

    Attributes:
      objective_before, objective_after: (M,) the refit objective per unit for the input
        kernel and for the returned one (after <= before always).
      improved: (M,) bool, units whose refit kernel was kept.
      error_before, error_after: sqrt(2 * sum of the objective): for relu with V = 0 an
        upper bound on ||relu(X kernel) - Y||_F, for linear its exact value.
      cg_iterations: () conjugate-gradient iterations run, all rounds together (each one
        product with X and one with X^T for every unit at once, or one with X^T X).
    """

    objective_before: Any
    objective_after: Any
    improved: Any
    error_before: Any
    error_after: Any
    cg_iterations: Any = 0


def _residual(xu, y, omega, v, relu):
    """(P, M) the refit objective's residual: the misfit on omega and the excess over v off
    it (relu), or xu - y."""
    return jnp.where(omega, xu - y, jnp.maximum(xu - v, 0)) if relu else xu - y


def _objective(xu, y, omega, v, relu):
    """(M,) per-unit refit objective."""
    r = _residual(xu, y, omega, v, relu)
    return 0.5 * jnp.sum(r * r, axis=0)


def _cg(apply, b, u0, iters, tol=0.0):
    """Batched CG on the (M independent) symmetric PSD systems apply(u) = b, columns of (N, M):
    at most ``iters`` iterations, fewer once every column's residual is within ``tol`` of
    its ||b|| (``tol`` 0: always ``iters``).  Returns (u, iterations run)."""
    tiny = jnp.finfo(b.dtype).tiny
    r = b - apply(u0)
    p = r
    rr = jnp.sum(r * r, axis=0)
    limit = (tol * tol) * jnp.sum(b * b, axis=0)

    def going(c):
        i, *_, rr = c
        return (i < iters) & jnp.any(rr > limit)

    def step(c):
        i, u, r, p, rr = c
        ap = apply(p)
        pap = jnp.sum(p * ap, axis=0)
        alpha = jnp.where(pap > tiny, rr / jnp.maximum(pap, tiny), 0)
        u = u + alpha * p
        r = r - alpha * ap
        rr_new = jnp.sum(r * r, axis=0)
        beta = jnp.where(rr > tiny, rr_new / jnp.maximum(rr, tiny), 0)
        return i + 1, u, r, r + beta * p, rr_new

    i, u, *_ = jax.lax.while_loop(going, step, (jnp.zeros((), jnp.int32), u0, r, p, rr))
    return u, i


def uses_gram(X, relu: bool) -> bool:
    """Whether a refit of a layer with inputs ``X`` (P, N) runs its CG on X^T X (module doc):
    a linear layer with P >= N (static: decided from shapes at trace time)."""
    return not relu and X.shape[0] >= X.shape[1]


def gram_system(X, Y):
    """(X^T X (N, N), X^T Y (N, M)): a linear layer's normal equations, in ``X``'s units;
    ``_refit(gram=)`` takes them precomputed so that repeated refits form them once."""
    return X.T @ X, X.T @ Y


@functools.partial(jax.jit, static_argnames=("relu", "rounds", "cg_iters", "cg_tol"))
def _refit(X, Y, kernel, threshold, mask=None, *, relu, rounds, cg_iters, cg_tol=0.0, gram=None):
    return refit_core(
        X, Y, kernel, threshold, mask, relu=relu, rounds=rounds, cg_iters=cg_iters, cg_tol=cg_tol, gram=gram
    )


def refit_core(X, Y, kernel, threshold, mask=None, *, relu, rounds, cg_iters, cg_tol=0.0, gram=None):
    """``_refit`` unjitted, for use inside another program: ``rounds`` and ``cg_iters`` may be
    traced () ints (one refit in a loop serves refits of several lengths: ``solver.l0``)."""
    # Scaled as the solver scales them (X to unit rms singular value, Y to unit rms) for CG.
    sx = scaling.x_scale(X, "admm")
    sy = scaling.y_scale(Y)
    x, y = X / sx, Y / sy
    v = jnp.broadcast_to(threshold / sy, y.shape)
    omega = ((y > 0) if mask is None else mask) if relu else jnp.ones(y.shape, bool)
    support = kernel != 0
    u0 = kernel * (sx / sy)
    before = _objective(x @ u0, y, omega, v, relu)

    if uses_gram(X, relu):  # one system for every unit: CG on the Gram matrix
        G, C = gram_system(X, Y) if gram is None else gram
        G, b = G / (sx * sx), jnp.where(support, C / (sx * sy), 0)

        def gram_round(_, carry):
            u, n = _cg(lambda p: jnp.where(support, G @ p, 0), b, carry[0], cg_iters, cg_tol)
            return u, carry[1] + n

        u, n = jax.lax.fori_loop(0, rounds, gram_round, (u0, jnp.zeros((), jnp.int32)))
        return _kept(x, y, u, u0, before, omega, v, relu, sx, sy, n)

    def newton_round(_, carry):
        u, n = carry
        xu = x @ u
        active = omega | (xu > v) if relu else omega
        target = jnp.where(omega, y, v)

        def apply(p):
            return jnp.where(support, x.T @ jnp.where(active, x @ p, 0), 0)

        b = jnp.where(support, x.T @ jnp.where(active, target, 0), 0)
        u, i = _cg(apply, b, u, cg_iters, cg_tol)
        return u, n + i

    u, n = jax.lax.fori_loop(0, rounds, newton_round, (u0, jnp.zeros((), jnp.int32)))
    return _kept(x, y, u, u0, before, omega, v, relu, sx, sy, n)


def _kept(x, y, u, u0, before, omega, v, relu, sx, sy, iterations):
    """The refit's result in the caller's units: per unit, whichever of ``u`` (refit) and
    ``u0`` (input) has the smaller objective on the (scaled) rows, and its ``RefitInfo``."""
    after = _objective(x @ u, y, omega, v, relu)
    improved = jnp.isfinite(after) & (after < before)
    u = jnp.where(improved[None, :], u, u0)
    after = jnp.where(improved, after, before)
    scale2 = sy * sy
    info = RefitInfo(
        objective_before=before * scale2,
        objective_after=after * scale2,
        improved=improved,
        error_before=jnp.sqrt(2 * jnp.sum(before)) * sy,
        error_after=jnp.sqrt(2 * jnp.sum(after)) * sy,
        cg_iterations=iterations,
    )
    return u * (sy / sx), info


def refit_layer(
    X, Y, kernel, *, activation: str = "relu", threshold=None, rounds: int = 4, cg_iters: int = 60, omega=None
):
    """Refit ``kernel`` on its support to the layer response (module docstring).

    Args:
      X: (P, N) layer inputs (with a ones column if the layer has a bias).
      Y: (P, M) target outputs: post-ReLU for ``activation="relu"``, else pre-activation.
      kernel: (N, M) pruned kernel; its zeros stay zero.
      activation: "relu" or "linear".
      threshold: V, the bound on XU outside Omega = {Y > 0} (relu only); default 0.
      rounds: active-set (semismooth Newton) rounds; cg_iters: CG iterations per round.
      omega: (P, M) bool, relu only: Omega given explicitly (Y may then have any sign on
        it, as for an affine epilogue, ``network.epilogues``); default Y > 0.

    Returns:
      (kernel (N, M), ``RefitInfo``).  Works under ``jax.jit``.
    """
    if omega is not None:
        omega = jnp.asarray(omega, bool)
        Y = jnp.where(omega, Y, 0)  # the program sees Y only on Omega
    scaling.validate(
        X, Y if omega is None else jnp.abs(Y), 0.0, activation, threshold, False, "admm", jnp.shape(kernel)
    )
    X = jnp.asarray(X)
    dtype = jnp.result_type(X.dtype, jnp.asarray(Y).dtype, jnp.float32)
    X, Y = X.astype(dtype), jnp.asarray(Y, dtype)
    scaling.check_finite("kernel", kernel)
    kernel = jnp.asarray(kernel, dtype)
    threshold = jnp.zeros((), dtype) if threshold is None else jnp.asarray(threshold, dtype)
    if rounds < 1 or cg_iters < 1:
        raise ValueError(f"rounds and cg_iters must be >= 1, got {rounds} and {cg_iters}")
    return _refit(X, Y, kernel, threshold, omega, relu=activation == "relu", rounds=rounds, cg_iters=cg_iters)
