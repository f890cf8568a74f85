"""An l0 finish of a layer's Net-Trim solution: its count kept, its support improved.

Net-Trim's l1 program chooses a support under shrinkage, and ``refit_layer`` removes the
shrinkage on that support but cannot move it.  Started from the refit kernel U_0 with k
nonzeros, each step swaps entries on the refit's own objective f (``solver.refit``: the ReLU
output's error, misfit over Omega and excess over V off it; for a linear layer
||XU - Y||_F^2 / 2), in the manner of CoSaMP (Needell & Tropp 2009):

    T = supp(U_t) + the ``grow`` k entries outside it with the largest |grad f(U_t)|
    U_T = refit on T                          (one active-set round: it only ranks T)
    S = the k entries of U_T with the largest |u_ij| rms(x_i)   (one count per layer)
    U_{t+1} = refit on S

and keeps U_{t+1} only when it lowers f, so the result never has a larger objective than
U_0 and never more than k nonzeros; the first step that does not lower f ends the finish
(U, hence the next step, would be the same), as does one that lowers it by less than 1%.
Each step costs two refits (for a linear layer with at least as many rows as inputs, on
X^T X formed once: ``refit`` module doc).  On LeNet-300-100
at 95% (seed 0) 12 steps were accepted 10, 10 and 8 times in the three layers, and lifted
test accuracy from 96.77% (4 steps) to 97.19%.  Because f is the objective
every layer-wise guarantee of Net-Trim runs through (``refit`` module doc), a kernel with a
smaller f keeps them.  Plain iterative hard thresholding (a gradient step of 1/||X||^2,
then the k largest) was tried first: on an MNIST first layer the step is so short that 20
steps lowered f by 0.3%; this step lowered the error by 31% in 8 steps there.

The steps end where a whole step no longer pays; finer moves still do.  After them,
``swaps`` rounds of one-for-one exchanges (the move of SparseSwaps, arXiv 2512.10922, made
on this refit objective instead of a fixed-weight one): per output unit, the kept entry i
and pruned entry j whose exchange most lowers the objective's quadratic model at U (the
active set {Omega} U {XU > V} held fixed),

    f(u - u_i e_i + t e_j) - f(u) ~ -g_i u_i + H_ii u_i^2 / 2 - (g_j - H_ji u_i)^2 / (2 H_jj)

(g the gradient, H = X^T D X the unit's Hessian, t the new weight's 1-D optimum), among the
``candidates`` cheapest removals and dearest additions of that unit; then ``inner`` CG
iterations of a refit on the new supports (without them the stale weights let later rounds
undo right swaps); a unit whose objective rose goes back.  A last refit follows, kept only
if f falls.  Each unit keeps its count.  A round costs about three products with X (one CG
iteration's two, and X^2 against the active set for diag H) plus the refit's iterations.
On LeNet-300-100's first layer at 90% (4000 rows, seed 0), after the steps had ended at
9920: 9182 after 16 rounds without the inner refit, 8630 after the last refit, 8529 with 5
inner iterations (-14%).  Whole prunes (``prune(sparsity=S, refit=True)``, MNIST, seeds
0-2, side by side with ``swaps=0``): LeNet-300-100 (4000 rows) every layer's misfit 6-14%
lower at 90 / 95 / 98%, test accuracy +0.03 to +0.85 points at all 9 pairs (means 98.07 ->
98.17, 97.60 -> 97.70, 95.67 -> 96.33); LeNet-5 (1000 images, 90%) misfits 0-3% lower,
accuracy 0.00 / -0.09 / 0.00.

With ``groups`` (a structured layer: ``solver.structure``'s row groups, one per input unit or
channel) the same step moves whole groups: k counts the groups kept, T adds the groups with
the largest gradient norm ||grad f(U_t)_g||_F, and S keeps the k groups of U_T with the
largest ||(u_ij rms(x_i))_g||_F.  The group-l1 program picks its groups under shrinkage as
the l1 program picks entries; this is the group hard-thresholding finish of that choice.

Given the layer's original kernel as ``reference``, the finish also refits the k entries
(groups) of it with the largest score |w_ij| rms(x_i) (Wanda's; for groups, the activation
norm times the weights' norm) and starts its steps from whichever start has the smaller
objective: the convex program's support is not always the better start at high sparsity,
and the comparison costs one refit.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nettrim_jax.solver import refit, scaling, structure, xla_options

__all__ = ["L0Info", "l0_finish"]


class L0Info(NamedTuple):
    """How an l0 finish ended (caller's units).

    Attributes:
      objective_before, objective_after: () the layer's refit objective (summed over units)
        of the input kernel refit on its own support (the start) and of the returned
        kernel (after <= before).
      error_before, error_after: sqrt(2 x objective) (``RefitInfo``'s error).
      steps: () accepted swap steps; swapped: () support entries that moved.
      from_reference: () bool, the steps started from the reference's support.
      cg_iterations: () conjugate-gradient iterations of all its refits together (each one
        product with X and one with X^T for every unit at once, or one with X^T X for a
        linear layer with at least as many rows as inputs): the finish's cost in those units.
    """

    objective_before: Any
    objective_after: Any
    error_before: Any
    error_after: Any
    steps: Any
    swapped: Any
    from_reference: Any = False
    cg_iterations: Any = 0


def _total(X, Y, U, omega, V, relu):
    return jnp.sum(refit._objective(X @ U, Y, omega, V, relu))


def _gradient(X, Y, U, omega, V, relu, gram=None):
    """(N, M) grad f(U); with ``gram`` (``refit.gram_system``: a linear layer) from X^T X."""
    if gram is not None:
        return gram[0] @ U - gram[1]
    return X.T @ refit._residual(X @ U, Y, omega, V, relu)


def _spectral_sq(X, iters: int = 30):
    """||X||_2^2 by power iteration on X^T X (from a fixed start)."""
    v = jnp.ones((X.shape[1],), X.dtype) / jnp.sqrt(X.shape[1])

    def step(_, v):
        w = X.T @ (X @ v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(X.dtype).tiny)

    v = jax.lax.fori_loop(0, iters, step, v)
    return jnp.sum((X @ v) ** 2) * 1.01  # a little above: a step of 1/L must not overshoot


def _largest(scores, n):
    """Mask of the ``n`` largest positive ``scores`` (n >= 1, a traced int; ties at the n-th
    value all kept)."""
    return (scores >= jnp.sort(scores.ravel())[scores.size - n]) & (scores > 0)


def _swap_round(X, Y, U, XU, omega, V, relu, candidates: int, gram=None):
    """One round of one-for-one swaps (SparseSwaps' move, on the refit objective): per unit
    the best exchange of a kept entry i for a pruned entry j, judged on the objective's
    quadratic model at ``U`` (the active set {Omega} U {XU > V} fixed), among the
    ``candidates`` cheapest removals and dearest additions of that unit:

        f(u - u_i e_i + t e_j) - f(u) = -g_i u_i + H_ii u_i^2 / 2 - (g_j - H_ji u_i)^2 / (2 H_jj),
        t = -(g_j - H_ji u_i) / H_jj,

    with g = grad f(U) and H_m = X^T D_m X the unit's Hessian (for a linear layer with
    ``gram``, X^T X).  A unit whose best exchange does not lower the model keeps its kernel.
    Returns the (N, M) kernel after the swaps (each unit's count unchanged)."""
    n, m = U.shape
    tiny = jnp.finfo(U.dtype).tiny
    if gram is not None:
        G = gram[0] @ U - gram[1]
        Hd = jnp.broadcast_to(jnp.diagonal(gram[0])[:, None], U.shape)
    else:
        active = (omega | (XU > V)) if relu else jnp.ones(XU.shape, bool)
        G = X.T @ refit._residual(XU, Y, omega, V, relu)
        Hd = (X * X).T @ active.astype(X.dtype)
    kept = U != 0
    remove_cost = -G * U + 0.5 * Hd * U * U  # (N, M): the model's rise when u_ij is zeroed
    add_gain = jnp.where(~kept & (Hd > tiny), G * G / jnp.maximum(Hd, tiny), 0)  # its fall when added alone
    c = min(candidates, n)
    _, I = jax.lax.top_k(jnp.where(kept, -remove_cost, -jnp.inf).T, c)  # (M, c) removals
    _, J = jax.lax.top_k(jnp.where(~kept, add_gain, -1.0).T, c)  # (M, c) additions
    cols = jnp.arange(m)[:, None]
    ui, gj, hj = U[I, cols], G[J, cols], Hd[J, cols]  # (M, c)
    if gram is not None:
        Hji = gram[0][J[:, :, None], I[:, None, :]]  # (M, c, c)
    else:
        w = active.astype(X.dtype)
        Hji = jnp.einsum("pmc,pmd->mcd", X[:, J] * w[:, :, None], X[:, I])
    gj_after = gj[:, :, None] - Hji * ui[:, None, :]  # (M, c_j, c_i)
    valid = (U[J, cols] == 0)[:, :, None] & (ui != 0)[:, None, :] & (hj > tiny)[:, :, None]
    delta = remove_cost[I, cols][:, None, :] - gj_after**2 / (2 * jnp.maximum(hj, tiny))[:, :, None]
    delta = jnp.where(valid, delta, jnp.inf).reshape(m, -1)
    best = jnp.argmin(delta, axis=1)
    a, b = best // c, best % c
    rows = jnp.arange(m)
    i, j = I[rows, b], J[rows, a]
    t = -gj_after[rows, a, b] / jnp.maximum(hj[rows, a], tiny)
    swap = delta[rows, best] < 0
    U1 = U.at[i, rows].set(jnp.where(swap, 0, U[i, rows]))
    return U1.at[j, rows].set(jnp.where(swap, t, U1[j, rows]))


class _Stage(NamedTuple):
    """The finish's loop state (``_finish``): which refit runs next and what it has found.

    phase: () int32, one of ``_START`` .. ``_DONE``; U: (N, M) the best kernel so far, f: ()
    its objective, f0: () the start's; from_reference: () bool; accepted: () int32 steps
    accepted; its: () int32 CG iterations so far; W: (N, M) the next refit's start where a
    phase's after-step prepared it (the kept support's); swap state: Us (N, M) the swaps'
    kernel, XUs (P, M) its product with X, fs (M,) its per-unit objectives, r () int32
    rounds done (Us, XUs, fs are () placeholders when the finish runs no swaps)."""

    phase: Any
    U: Any
    f: Any
    f0: Any
    from_reference: Any
    accepted: Any
    its: Any
    W: Any
    Us: Any
    XUs: Any
    fs: Any
    r: Any


# the finish's phases, each one refit (``_finish``)
_START, _REFERENCE, _UNION, _KEPT, _SWAP, _LAST, _DONE = range(7)


def _finish(
    X,
    Y,
    U0,
    V,
    omega,
    grow,
    groups,
    reference,
    min_gain,
    *,
    relu,
    steps,
    rounds,
    cg_iters,
    cg_tol,
    union_rounds,
    swaps=0,
    candidates=8,
    inner=0,
):
    """The finish (module doc) as one loop with one refit in it: each pass prepares a start
    for its phase, refits it, and acts on the result (``_Stage``).  The refits differ only in
    their start and length, so one compiled refit serves them all.  On a 2-core CPU, four
    layer shapes (1000 x 785 -> 120, 4096 x 145 -> 16 and 4000 x 785 -> 300 ReLU, 1000 x 121
    -> 10 linear; two runs each), the finish with a refit at each of its six call sites
    compiled in 2.2-2.7 s a shape, this loop in 1.4-2.0 s, and 0.9-1.8 s with the CPU
    options (``xla_options``), to the same kernels (to float rounding) and CG counts in the
    same run time."""
    omega = ((Y > 0) if omega is None else omega) if relu else jnp.ones(Y.shape, bool)
    # a linear layer with P >= N: every refit's CG and every gradient on X^T X, formed once
    gram = refit.gram_system(X, Y) if refit.uses_gram(X, relu) else None
    lip = _spectral_sq(X)
    rms = jnp.sqrt(jnp.mean(X * X, axis=0))[:, None]  # (N, 1): an entry's score is |u_ij| rms(x_i)
    n = X.shape[1]
    tiny = jnp.finfo(X.dtype).tiny
    if groups is None:
        k = jnp.sum(U0 != 0)
    else:
        fixed = (groups < 0)[:, None] & (U0 != 0)  # ungrouped rows (the bias) keep their support
        k = jnp.sum(structure.kept_groups(U0, groups))
    swapping = bool(swaps) and groups is None  # one-for-one exchanges after the steps

    def count(U):
        return jnp.sum(U != 0) if groups is None else jnp.sum(structure.kept_groups(U, groups))

    def total(U):
        return _total(X, Y, U, omega, V, relu)

    def after_steps(going):  # the phase after the start, the reference or a step
        return jnp.where(going, _UNION, _SWAP if swapping else _DONE).astype(jnp.int32)

    # -- each phase's start for its refit: (stage, start kernel)
    def prepare_start(c):
        return c, U0

    def prepare_reference(c):  # the reference's k largest by score
        if reference is None:  # (never reached then)
            return c, c.U
        if groups is None:
            S = _largest(jnp.abs(reference) * rms, jnp.maximum(k, 1))
        else:
            S = structure.group_rows(
                _largest(jnp.sqrt(structure.group_sums(reference * rms, groups, n)), jnp.maximum(k, 1)), groups
            )
            S = S | fixed
        return c, jnp.where(S, jnp.where(reference != 0, reference, tiny), 0)

    def prepare_union(c):  # the support and the largest gradient entries (groups) outside it
        G = _gradient(X, Y, c.U, omega, V, relu, gram)
        more = jnp.maximum(1, (grow * k).astype(jnp.int32))
        if groups is None:
            T = (c.U != 0) | _largest(jnp.where(c.U != 0, -1.0, jnp.abs(G)), more)
            return c, jnp.where(T, jnp.where(c.U != 0, c.U, -G / lip), 0)
        kept = structure.kept_groups(c.U, groups)
        T = kept | _largest(jnp.where(kept, -1.0, jnp.sqrt(structure.group_sums(G, groups, n))), more)
        start = jnp.where(c.U != 0, c.U, jnp.where(G != 0, -G / lip, tiny))
        return c, jnp.where(structure.group_rows(T, groups) | fixed, start, 0)

    def prepare_kept(c):
        return c, c.W

    def prepare_swap(c):  # a round of exchanges (``_swap_round``) from the swaps' kernel
        if not swapping:
            return c, c.U

        def begin(c):
            XU = X @ c.U
            return c._replace(Us=c.U, XUs=XU, fs=refit._objective(XU, Y, omega, V, relu))

        c = jax.lax.cond(c.r == 0, begin, lambda c: c, c)
        return c, _swap_round(X, Y, c.Us, c.XUs, omega, V, relu, candidates, gram)

    def prepare_last(c):
        return c, (c.Us if swapping else c.U)

    # -- what each phase does with its refit W (cg: its CG iterations)
    def after_start(c, W, cg):
        f0 = total(W)
        nxt = jnp.int32(_REFERENCE) if reference is not None else after_steps(jnp.asarray(steps > 0))
        return c._replace(phase=nxt, U=W, f=f0, f0=f0, its=c.its + cg)

    def after_reference(c, W, cg):
        f_ref = total(W)
        better = jnp.isfinite(f_ref) & (f_ref < c.f0) & (count(W) <= k)
        return c._replace(
            phase=after_steps(jnp.asarray(steps > 0)),
            U=jnp.where(better, W, c.U),
            f=jnp.where(better, f_ref, c.f),
            from_reference=better,
            its=c.its + cg,
        )

    def after_union(c, W, cg):  # the union refit only ranks its entries: keep the k best
        if groups is None:
            S = _largest(jnp.where(W != 0, jnp.abs(W) * rms, 0), jnp.maximum(k, 1))
        else:  # (W is zero outside the union's groups, so their score is 0 there)
            S = structure.group_rows(
                _largest(jnp.sqrt(structure.group_sums(W * rms, groups, n)), jnp.maximum(k, 1)), groups
            )
            S = S | fixed
        return c._replace(phase=jnp.int32(_KEPT), W=jnp.where(S, W, 0), its=c.its + cg)

    def after_kept(c, W, cg):
        f1 = total(W)
        better = jnp.isfinite(f1) & (f1 < c.f) & (count(W) <= k)
        # a rejected step leaves U, hence the next step, unchanged: stop there (and after a
        # step that gained less than min_gain of the objective)
        gained = better & (f1 < (1 - min_gain) * c.f)
        accepted = c.accepted + better.astype(jnp.int32)
        return c._replace(
            phase=after_steps(gained & (accepted < steps)),
            U=jnp.where(better, W, c.U),
            f=jnp.where(better, f1, c.f),
            accepted=accepted,
            its=c.its + cg,
        )

    def after_swap(c, W, cg):  # a unit whose objective the round raised keeps its kernel
        if not swapping:
            return c._replace(phase=jnp.int32(_DONE))
        XU = X @ W
        f1 = refit._objective(XU, Y, omega, V, relu)
        better = jnp.isfinite(f1) & (f1 < c.fs)
        r = c.r + 1
        return c._replace(
            phase=jnp.where(r < swaps, _SWAP, _LAST).astype(jnp.int32),
            Us=jnp.where(better, W, c.Us),
            XUs=jnp.where(better, XU, c.XUs),
            fs=jnp.where(better, f1, c.fs),
            r=r,
            its=c.its + cg,
        )

    def after_last(c, W, cg):  # the swaps' kernel refit, kept only if f falls
        f1 = total(W)
        better = jnp.isfinite(f1) & (f1 < c.f)
        return c._replace(
            phase=jnp.int32(_DONE), U=jnp.where(better, W, c.U), f=jnp.where(better, f1, c.f), its=c.its + cg
        )

    # indexed by phase; no pass runs at _DONE (the loop's condition), so it has no entry
    prepares = (prepare_start, prepare_reference, prepare_union, prepare_kept, prepare_swap, prepare_last)
    afters = (after_start, after_reference, after_union, after_kept, after_swap, after_last)
    # each phase's refit length: (active-set rounds, CG iterations per round)
    lengths = jnp.asarray(
        [
            (rounds, cg_iters),
            (rounds, cg_iters),
            (union_rounds, cg_iters),
            (rounds, cg_iters),
            (1 if inner else 0, inner),  # the swaps' short refit (none with inner 0)
            (rounds, cg_iters),
        ],
        jnp.int32,
    )

    def body(c):
        c, W = jax.lax.switch(c.phase, prepares, c)
        length = lengths[c.phase]
        W1, info = refit.refit_core(
            X, Y, W, V, omega, relu=relu, rounds=length[0], cg_iters=length[1], cg_tol=cg_tol, gram=gram
        )
        W1 = jnp.where(length[0] > 0, W1, W)  # no rounds (the swaps with inner 0): the start itself
        return jax.lax.switch(c.phase, afters, c, W1, info.cg_iterations)

    zero = jnp.zeros((), X.dtype)
    swap_state = (U0, jnp.zeros(Y.shape, X.dtype), jnp.zeros(Y.shape[1], X.dtype)) if swapping else (zero,) * 3
    start = _Stage(
        jnp.int32(_START),
        U0,
        zero,
        zero,
        jnp.zeros((), bool),
        jnp.int32(0),
        jnp.int32(0),
        U0,
        *swap_state,
        jnp.int32(0),
    )
    c = jax.lax.while_loop(lambda c: c.phase != _DONE, body, start)
    swapped = jnp.sum((c.U != 0) & (U0 == 0))
    return c.U, c.f0, c.f, c.accepted, swapped, c.from_reference, c.its


_STATIC = ("relu", "steps", "rounds", "cg_iters", "cg_tol", "union_rounds", "swaps", "candidates", "inner")
_finish_nested = jax.jit(_finish, static_argnames=_STATIC)  # inside another program


@functools.lru_cache(maxsize=1)
def _finish_top():
    """``_finish`` compiled at the top level, with the CPU backend's options
    (``xla_options``: on a 2-core CPU 0.9-1.8 s a layer shape against 1.4-1.9 s)."""
    return jax.jit(_finish, static_argnames=_STATIC, compiler_options=xla_options.cpu_compile_options())


def l0_finish(
    X,
    Y,
    kernel,
    *,
    activation: str = "relu",
    threshold=None,
    omega=None,
    steps: int = 16,
    grow: float = 0.1,
    rounds: int = 3,
    cg_iters: int = 40,
    cg_tol: float = 1e-3,
    min_gain: float = 0.01,
    union_rounds: int = 1,
    groups=None,
    reference=None,
    swaps: int = 16,
    candidates: int = 8,
    inner: int = 5,
):
    """Improve ``kernel``'s support at its own count (module doc).

    Args:
      X: (P, N) layer inputs (with a ones column if the layer has a bias).
      Y: (P, M) target: post-ReLU for ``activation="relu"``, else the pre-activation.
      kernel: (N, M) a pruned kernel (Net-Trim's); its count k = nonzeros is kept.
      activation: "relu" or "linear"; threshold: V off Omega (relu; default 0);
      omega: (P, M) bool, relu only: Omega given explicitly (affine epilogues).
      steps: at most this many accepted swap steps (the first rejected one ends the
        finish, and so does one that lowers the objective by less than ``min_gain`` of
        it); grow: entries added per step, as a fraction of k;
      union_rounds: active-set rounds of the refit on the union T, which only ranks its
        entries (the kept support is then refit with ``rounds``).  On LeNet-300-100's
        first layer at 90% (4000 rows, seed 0) min_gain 0.01 and union_rounds 1 took the
        finish from 40.4 s to 20.8 s at the same objective (9849 against 9853); whole
        LeNet-5 prunes (3 seeds, 90-98%) took 3.9-4.9 s against 4.8-10.9 s, test accuracy
        -0.56 to +0.18 points (mean -0.07; seed 0 at 98% moved by -0.46 to -0.56 under each
        of the changes alone too).
      rounds, cg_iters: each refit's (``refit_layer``); cg_tol: a refit's CG also stops once
        every unit's residual is within this fraction of its right-hand side's norm (0: always
        ``cg_iters``; an exactly planted layer is then found to about this relative error,
        not to the last digit).  Most refits of the steps start near their solution: on
        LeNet-5 (MNIST, 3 seeds, 95% and 98%) 1e-4 made whole prunes with the finish
        1.6-2.3x faster than 0, test accuracy -0.14 to +0.13 points (mean 0.00); 1e-3
        (the default) took the finish on LeNet-300-100 (4000 rows, MNIST, 90% and 95%, seeds
        0-2; the 4 pairs of runs that had the machine to themselves) from 23-26 s to
        15-19 s and on LeNet-5 (1000 rows, 4 pairs) from 2.2-2.5 s to 1.4-1.6 s, test
        accuracy -0.06 to +0.16 points against 1e-4 (mean +0.03, 11 pairs); 1e-2 left the
        objective 14% higher on LeNet-300-100's first layer at 90%.
      groups: None (k counts entries), or (N,) int group id of each kernel row, -1 for an
        ungrouped row (``solver.structure``'s ids): k then counts groups with a nonzero
        entry, whole groups are swapped in and out (scored by the rms-weighted norm of their
        rows, added by their gradient's norm), and ungrouped rows keep their support.
      swaps: rounds of one-for-one exchanges after the steps (module doc; 0: none; not
        with ``groups``); candidates: removals and additions per unit a round weighs
        (their pairs' exact model change needs a (P, M, candidates) gather of X's columns);
        inner: CG iterations of the refit after each round.
      reference: None, or (N, M) a dense kernel (the layer's original): its k entries of
        largest |w_ij| rms(x_i) (Wanda's score; with ``groups`` the k groups of largest
        rms-weighted norm, the activation-norm score), refit, are a second start; the steps
        start from whichever of the two has the smaller objective.

    Returns:
      (kernel (N, M) with at most k nonzeros (k groups), ``L0Info``).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0 < grow <= 1:
        raise ValueError(f"grow must be in (0, 1], got {grow}")
    if not 0 <= min_gain < 1 or union_rounds < 1 or cg_tol < 0:
        raise ValueError(
            f"min_gain must be in [0, 1), union_rounds >= 1 and cg_tol >= 0, got {min_gain}, {union_rounds}, {cg_tol}"
        )
    if swaps < 0 or inner < 0 or candidates < 1:
        raise ValueError(f"swaps and inner must be >= 0 and candidates >= 1, got {swaps}, {inner} and {candidates}")
    if omega is not None:
        omega = jnp.asarray(omega, bool)
        Y = jnp.where(omega, Y, 0)
    scaling.validate(
        X, Y if omega is None else jnp.abs(Y), 0.0, activation, threshold, False, "admm", jnp.shape(kernel)
    )
    dtype = jnp.result_type(jnp.asarray(X).dtype, jnp.asarray(Y).dtype, jnp.float32)
    X, Y = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
    scaling.check_finite("kernel", kernel)
    kernel = jnp.asarray(kernel, dtype)
    V = jnp.zeros((), dtype) if threshold is None else jnp.asarray(threshold, dtype)
    if groups is not None:
        groups = jnp.asarray(groups, jnp.int32)
        if groups.shape != (X.shape[1],):
            raise ValueError(f"groups must have one id per kernel row, shape ({X.shape[1]},), got {groups.shape}")
    if reference is not None:
        scaling.check_finite("reference", reference)
        reference = jnp.asarray(reference, dtype)
        if reference.shape != kernel.shape:
            raise ValueError(f"reference must have the kernel's shape {kernel.shape}, got {reference.shape}")
    U, f0, f, accepted, swapped, from_reference, its = xla_options.top_or_nested(
        _finish_top(),
        _finish_nested,
        X,
        Y,
        kernel,
        V,
        omega,
        jnp.asarray(grow, dtype),
        groups,
        reference,
        jnp.asarray(min_gain, dtype),
        relu=activation == "relu",
        steps=steps,
        rounds=rounds,
        cg_iters=cg_iters,
        cg_tol=float(cg_tol),
        union_rounds=int(union_rounds),
        swaps=int(swaps),
        candidates=int(candidates),
        inner=int(inner),
    )
    info = L0Info(
        objective_before=f0,
        objective_after=f,
        error_before=jnp.sqrt(2 * f0),
        error_after=jnp.sqrt(2 * f),
        steps=accepted,
        swapped=swapped,
        from_reference=from_reference,
        cg_iterations=its,
    )
    return U, info
