"""ALPS (Meng, Behdin, Wang, Mazumder 2024, arXiv 2406.07831), the fourth layer-wise baseline
beside ``magnitude`` / ``wanda`` / ``sparsegpt``: ADMM on the l0-constrained layer
reconstruction, then a preconditioned conjugate-gradient refit on the final support.  The
defaults follow the reference implementation (mazumder-lab/ALPS); see ``alps``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nettrim_jax.baselines.common import check_keep


def _check_layer(kernel, X):
    """One-line ValueErrors for a kernel (N, M) and inputs X (P, N) that ALPS cannot use."""
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be 2-D (N_in, M_out), got shape {kernel.shape}")
    if X.ndim != 2 or X.shape[1] != kernel.shape[0]:
        raise ValueError(f"X must be (P, {kernel.shape[0]}) for a kernel of shape {kernel.shape}, got {X.shape}")
    if not (bool(jnp.all(jnp.isfinite(kernel))) and bool(jnp.all(jnp.isfinite(X)))):
        raise ValueError("kernel and X must be finite (found NaN or inf)")


def _alps_problem(kernel, X, damp):
    """The reference's scaled problem: min_B tr((B - B0)^T A (B - B0)) s.t. ||B||_0 <= k.

    A (N, N) = S^-1 (X^T X + lambda I) S^-1 with S = diag(sqrt(diag(X^T X + lambda I))),
    lambda = damp * mean(diag(X^T X)), so diag(A) = 1; B0 (N, M) = S W; Y = A B0 (N, M).
    Returns A, B0, Y and the scale s (N,), W = B / s[:, None].
    """
    h = X.T @ X
    lam = damp * jnp.mean(jnp.diag(h))
    h = h + lam * jnp.eye(h.shape[0], dtype=h.dtype)
    s = jnp.sqrt(jnp.diag(h)) + 1e-8
    a = h / s[:, None] / s[None, :]
    b0 = kernel * s[:, None]
    return a, b0, a @ b0, s


def _top_k_project(z, keep: int):
    """Projection onto {||B||_0 <= keep}: the ``keep`` largest |z| over the whole (N, M)
    matrix kept (unstructured, per layer), the rest zeroed.  Returns (projection, mask)."""
    _, idx = jax.lax.top_k(jnp.abs(z).reshape(-1), keep)
    mask = jnp.zeros(z.size, bool).at[idx].set(True).reshape(z.shape)
    return jnp.where(mask, z, 0), mask


def _rho_update(rho, started, change, keep):
    """The reference's penalty schedule, applied every ``update_iter`` iterations.

    ``change`` is the number of entries whose support membership flipped since the last
    update.  Returns (new rho, started, reset, stop): rho x1.3 when more than 10% of
    ``keep`` flipped, x1.2 above 0.5%, then x1.1 while anything still flips; before the
    support first moves that much, rho /= 5 (with a restart from the dense point when a
    few entries flip); once started, a round with no flip stops the ADMM.  rho <= 1e6.
    """
    frac = change / keep
    big, mid, some = frac > 0.1, frac > 0.005, change > 0.5
    factor = jnp.where(big, 1.3, jnp.where(mid, 1.2, jnp.where(started, 1.1, 0.2)))
    factor = jnp.where(some | ~started, factor, 1.0)
    reset = some & ~mid & ~started
    stop = ~some & started
    return jnp.minimum(rho * factor, 1e6), started | mid, reset, stop


@functools.partial(jax.jit, static_argnames=("keep", "max_iter", "update_iter", "switch_iter"))
def _alps_admm(a, b0, y, rho0, *, keep, max_iter, update_iter, switch_iter):
    """ADMM for min_B tr((B - B0)^T A (B - B0)) s.t. B = D, ||D||_0 <= keep (Algorithm 1 of
    the paper as in the reference code).  a (N, N), b0 and y = a @ b0 (N, M).

    B-update: (A + rho I)^-1 (Y - V + rho D) from the eigendecomposition A = Q diag(L) Q^T
    computed once; D-update: top-k projection of B + V / rho; V += rho (B - D).  Returns
    (top-k projection of the last B, its mask, ADMM iterations run); the reference takes
    the support from B, not D.
    """
    lam, q = jnp.linalg.eigh(a)
    d_init, m_init = _top_k_project(b0, keep)
    dt = b0.dtype

    def admm_step(rho, c):
        b, d, v, _ = c
        r = y - v + rho * d
        b = q @ ((q.T @ r) / (lam + rho)[:, None])
        d, mask = _top_k_project(b + v / rho, keep)
        return b, d, v + rho * (b - d), mask

    def round_(c):
        b, d, v, prev, rho, started, it, _ = c
        b, d, v, mask = jax.lax.fori_loop(0, update_iter, lambda _, s: admm_step(rho, s), (b, d, v, prev))
        it = it + update_iter
        change = jnp.sum(mask != prev).astype(dt)
        rho, started, reset, stop = _rho_update(rho, started, change, keep)
        b = jnp.where(reset, b0, b)
        d = jnp.where(reset, d_init, d)
        v = jnp.where(reset, 0, v)
        stop = stop | ((it - 1 >= switch_iter) & (change / keep < 3e-4))
        return b, d, v, mask, rho, started, it, stop

    def go_on(c):
        return (~c[-1]) & (c[-2] + update_iter <= max_iter)

    init = (
        b0,
        d_init,
        jnp.zeros_like(b0),
        m_init,
        jnp.asarray(rho0, dt),
        jnp.asarray(False),
        jnp.asarray(0),
        jnp.asarray(False),
    )
    out = jax.lax.while_loop(go_on, round_, init)
    return (*_top_k_project(out[0], keep), out[-2])


@functools.partial(jax.jit, static_argnames=("iters",))
def _alps_pcg(a, y, b, mask, rtol, *, iters):
    """Conjugate gradient for A_SS B_S = Y_S on each column's support S (mask), from b.

    a (N, N) has unit diagonal (the scaling in ``_alps_problem``), so this is the
    Jacobi-preconditioned CG of the reference on the unscaled X^T X.  Every column runs
    the same iterations; stops when each column's masked residual is below
    ``rtol * ||Y_:,j||`` or after ``iters`` iterations.  Returns (B (N, M), iterations).
    """
    r = jnp.where(mask, y - a @ b, 0)
    tol = (rtol * jnp.linalg.norm(y, axis=0)) ** 2
    rs = jnp.sum(r * r, axis=0)

    def step(c):
        b, r, p, rs, k = c
        ap = a @ p
        pap = jnp.sum(p * ap, axis=0)
        alpha = jnp.where(pap > 0, rs / jnp.where(pap > 0, pap, 1), 0)
        b = b + alpha * p
        r = jnp.where(mask, r - alpha * ap, 0)
        rs_new = jnp.sum(r * r, axis=0)
        beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1), 0)
        return b, r, r + beta * p, rs_new, k + 1

    def go_on(c):
        return (c[-1] < iters) & jnp.any(c[3] > tol)

    b, _, _, _, k = jax.lax.while_loop(go_on, step, (b, r, r, rs, jnp.asarray(0)))
    return jnp.where(mask, b, 0), k


def alps(
    kernel,
    X,
    keep: int,
    *,
    rho: float = 0.1,
    max_iter: int = 300,
    update_iter: int = 3,
    switch_iter: int = 30,
    damp: float = 0.01,
    cg_iters: int = 10,
    cg_rtol: float = 1e-4,
) -> jnp.ndarray:
    """ALPS one-shot pruning: ADMM on the l0-constrained reconstruction, then a PCG refit.

    Solves min_W ||X W_hat - X W||_F^2 (+ the ridge term below) s.t. ||W||_0 <= keep over
    the whole layer (one unstructured top-k over all N*M entries, not per column), as in
    Meng, Behdin, Wang & Mazumder (2024), arXiv 2406.07831, following the reference code
    (github.com/mazumder-lab/ALPS, ``alps.py``, ``ALPS_prune.ALPS_admm``) step by step:

    1. Ridge and scaling: H = X^T X + lambda I, lambda = ``damp`` * mean(diag(X^T X))
       (reference: 0.01), then inputs scaled to unit diag(H); the top-k therefore compares
       |W_ij| * sqrt(H_ii), and the start D is that top-k of the dense kernel.
    2. ADMM with penalty ``rho`` (reference default 0.1): W-update by the eigendecomposition
       of the scaled H, computed once (the reference recomputes Q diag(1/(L+rho)) Q^T when rho
       changes; we apply it as two products); D-update the top-k projection; dual ascent.
    3. rho schedule, every ``update_iter`` = 3 iterations, on the number of support flips
       since the last check (``_rho_update``): x1.3 above 10% of ``keep``, x1.2 above 0.5%,
       x1.1 while any flips once started; /5 (and a restart if a few flip) before that;
       capped at 1e6.  Stops when, once started, a check sees no flip, or when after
       ``switch_iter`` = 30 iterations fewer than 0.03% flip, or at ``max_iter`` = 300
       (whole rounds of ``update_iter`` only).
    4. Support from the top-k of the last W iterate; the kept weights are refit by CG on
       the normal equations restricted to the support, from the ADMM values.  On the scaled
       H (unit diagonal) plain CG is diagonal-preconditioned CG on X^T X.  The reference
       runs 10 iterations with rtol 1e-4 (``cg_iters``, ``cg_rtol``); it tests the residual
       off the support too, which does not vanish, so it always runs all 10.  Here the test
       is on the residual on the support, so CG can stop early.

    Args:
      kernel: (N, M) kernel.
      X: (P, N) calibration inputs of this layer (one sample per row).
      keep: exact number of nonzeros kept, 0 <= keep <= N*M.
      rho, max_iter, update_iter, switch_iter, damp, cg_iters, cg_rtol: as above.

    Returns the pruned (N, M) kernel, in the kernel's floating dtype (float32 by default,
    float64 under ``jax.enable_x64``), with exactly ``keep`` entries in its support (fewer
    nonzeros only if a refit weight lands exactly on 0).  keep = N*M returns ``kernel``
    (the exact minimiser), keep = 0 zeros.
    """
    kernel = jnp.asarray(kernel)
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        kernel = kernel.astype(jnp.float32)
    X = jnp.asarray(X, kernel.dtype)
    _check_layer(kernel, X)
    keep = check_keep(kernel, keep)
    if not (
        rho > 0
        and damp >= 0
        and cg_rtol >= 0
        and min(max_iter, update_iter) >= 1
        and cg_iters >= 0
        and switch_iter >= 0
    ):
        raise ValueError(
            "alps needs rho > 0, damp >= 0, max_iter, update_iter >= 1, switch_iter, cg_iters, cg_rtol >= 0"
        )
    if keep == kernel.size:
        return kernel
    if keep == 0:
        return jnp.zeros_like(kernel)
    a, b0, y, s = _alps_problem(kernel, X, damp)
    b, mask, _ = _alps_admm(
        a, b0, y, rho, keep=keep, max_iter=int(max_iter), update_iter=int(update_iter), switch_iter=int(switch_iter)
    )
    b, _ = _alps_pcg(a, y, b, mask, cg_rtol, iters=int(cg_iters))
    return jnp.where(mask, b / s[:, None], 0)
