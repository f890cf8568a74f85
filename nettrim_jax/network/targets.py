"""Sparsity targets: ``prune(..., sparsity=S)`` finds each layer's epsilon instead of taking it.

A target is the fraction of a layer's weights (kernel and bias) removed.  ``sparsity`` is one
fraction for the whole network or a ``{layer name: fraction}`` dict.  A global fraction is
split into per-layer keep counts by ``allocation``:

* ``"uniform"``: every pruned layer keeps the same fraction;
* ``"scores"``: one global threshold on the activation-weighted magnitudes |W_ij| rms(x_j)
  (Wanda's score with the input column's root-mean-square over the program's rows, so conv
  patches and Dense samples compare; computed on the calibration inputs), each output
  unit's scores normalised to unit l2 norm (a weight's share of its unit's response, so
  layers of different scales compare): layers whose weights matter less on the data give
  up more, no layer keeps fewer weights than it has output units, and the total matches S;
* ``"epsilon"``: no per-layer counts: Net-Trim's own allocation, one scalar epsilon (the
  parallel scheme: every layer's; the cascade: epsilon_1, later layers by the gamma rule, as
  in the paper), searched over whole prunes until the network's sparsity is within 0.5
  points of S (``one_epsilon``).  (One epsilon as every cascade layer's floor instead put
  the output layer far below the others' density and lost accuracy in a trial on
  LeNet-300-100 at 90%.)

Each layer's epsilon is then found by ``solve_to_count``: a safeguarded secant search on
log(epsilon) against log(nonzeros), every solve warm-started from the nearest one already
made, until the layer's nonzeros are within ``tol`` of its count.  The chosen epsilon is the
one reported (``LayerReport.epsilon``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.compiled import fro, jitted_solver, output_misfit
from nettrim_jax.network.specs import Conv, kernel_matrix, kernel_shape, program_rows

__all__ = ["parse_sparsity", "keep_counts", "solve_to_count", "one_epsilon", "prune_at_one_epsilon", "ALLOCATIONS"]

ALLOCATIONS = ("uniform", "scores", "epsilon")


def _fraction(v, what) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1), got {v!r}") from None
    if not (math.isfinite(f) and 0 <= f < 1):
        raise ValueError(f"{what} must be in [0, 1) (the fraction of weights removed), got {v!r}")
    return f


def parse_sparsity(sparsity, allocation: str) -> float | dict | None:
    """Validate ``sparsity`` (None, a fraction, or {name: fraction}) and ``allocation``."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if sparsity is None:
        return None
    if isinstance(sparsity, dict):
        if allocation == "epsilon":
            raise ValueError("allocation='epsilon' takes one global sparsity, not a per-layer dict")
        return {str(k): _fraction(v, f"sparsity[{k!r}]") for k, v in sparsity.items()}
    return _fraction(sparsity, "sparsity")


def _scores(spec, X, max_patches=None):
    """(scores, cap) of a layer.  scores: |W| weighted by the root-mean-square of each input
    column over the program's rows (bias row: its ones column, 1), then divided by the
    column's (output unit's) l2 norm of those, so each unit's scores have unit norm.  The
    mean, not the sum: a
    conv layer has one row per image patch (576 per image for a 5x5 conv on 28x28), a Dense
    layer one per sample, and column norms summed over rows ranked every conv weight above
    every Dense one (LeNet-5 at 98%: both Dense layers got no weights).  Among layers with
    the same rows, the order is Wanda's.  cap: about the most nonzeros an l1 solution of the
    layer's program keeps, min(N, R) * M for R program rows (conv: patches, at most
    ``max_patches``)."""
    # on the host: eager jnp ops compile once per shape (~30 ms each on XLA's CPU backend)
    rows = np.asarray(program_rows(spec, X), np.float32)  # the bias column(s) included
    rms = np.sqrt(np.mean(rows * rows, axis=0))
    scores = np.abs(np.asarray(kernel_matrix(spec), np.float32)) * rms[:, None]
    # Each output unit's scores to unit l2 norm: a weight's share of its unit's response, so
    # layers of different output scales compare (raw scores let the digits MLP's last layer
    # outbid the first: 34 of 4160 first-layer weights kept at 90%, a constant model).
    scores = scores / np.maximum(np.sqrt(np.sum(scores * scores, axis=0, keepdims=True)), np.finfo(np.float32).tiny)
    r = int(rows.shape[0])
    if isinstance(spec, Conv) and max_patches is not None:
        r = min(r, int(max_patches))
    n, m = scores.shape
    return scores, int(min(n, r) * m)


def kernel_sizes(specs: Sequence) -> list[int]:
    """Entries of each layer's program kernel (N * M, the bias row included): what a count
    is out of."""
    return [int(np.prod(kernel_shape(s))) for s in specs]


def keep_counts(
    names: Sequence[str],
    specs: Sequence,
    inputs: Sequence,
    programs: Sequence[str],
    sparsity,
    allocation: str,
    max_patches: int | None = None,
) -> list[int | None]:
    """Nonzeros to keep per layer (None: the layer keeps its epsilon rule; skipped layers).

    "scores" never asks a layer for more than its program can keep: an l1 solution has at
    most about one nonzero per program row in each output unit, so a layer with R rows
    (conv: patches, at most ``max_patches``) and an (N, M) kernel keeps at most
    min(N, R) * M; what a capped layer cannot take goes to the others (the threshold is
    lowered over the rest until the total is met or every layer is at its cap)."""
    sizes = kernel_sizes(specs)
    active = [p != "skipped" for p in programs]
    if isinstance(sparsity, dict):
        unknown = set(sparsity) - set(names)
        if unknown:
            raise ValueError(f"sparsity= names {sorted(unknown)} are not layers; layers: {list(names)}")
        return [
            round(size * (1 - sparsity[n])) if n in sparsity and a else None for n, size, a in zip(names, sizes, active)
        ]
    if allocation == "uniform":
        return [round(size * (1 - sparsity)) if a else None for size, a in zip(sizes, active)]
    scored = {i: _scores(s, X, max_patches) for i, (s, X, a) in enumerate(zip(specs, inputs, active)) if a}
    keep_total = round(sum(sc.size for sc, _ in scored.values()) * (1 - sparsity))
    if keep_total <= 0:
        return [0 if a else None for a in active]
    fixed: dict[int, int] = {}  # layers held at their cap
    while True:
        open_ = [i for i in scored if i not in fixed]
        budget = keep_total - sum(fixed.values())
        if not open_ or budget <= 0:
            break
        pool = np.concatenate([scored[i][0].ravel() for i in open_])
        budget = min(budget, pool.size)
        cut = np.partition(pool, pool.size - budget)[pool.size - budget]
        counts = {i: max(_floor(scored[i][0]), int(np.sum(scored[i][0] >= cut))) for i in open_}
        over = {i: scored[i][1] for i in open_ if counts[i] > scored[i][1]}
        fixed.update(over or counts)
        if not over:
            break
    return [fixed.get(i, 0) if a else None for i, a in enumerate(active)]


def _floor(scores: np.ndarray) -> int:
    """The fewest weights "scores" gives a layer: one per output unit (at most all of
    them), so no layer is left without weights by the global threshold."""
    return int(min(scores.size, scores.shape[1]))


def _bracket(lo, hi, point, too_dense: bool):
    """The bracket (lo: the densest-side point with the largest log epsilon, hi: the
    sparsest-side point with the smallest) narrowed by ``point`` = (log epsilon, log count)."""
    if too_dense:
        return (point if lo is None or point[0] > lo[0] else lo), hi
    return lo, (point if hi is None or point[0] < hi[0] else hi)


def _secant(lo, hi, target: float) -> float:
    """log epsilon where the secant through the bracket's ends meets ``target`` (log count),
    kept inside the bracket's middle 80% (the midpoint if both ends have one count)."""
    (u0, v0), (u1, v1) = lo, hi
    u = u0 + (target - v0) * (u1 - u0) / (v1 - v0) if v1 != v0 else 0.5 * (u0 + u1)
    return min(max(u, u0 + 0.1 * (u1 - u0)), u1 - 0.1 * (u1 - u0))


class CountedSolve(NamedTuple):
    """The solve ``solve_to_count`` kept: kernel (N, M), its solver info, its epsilon
    (absolute), its nonzeros, and how many solves the search made."""

    kernel: np.ndarray
    info: object
    epsilon: float
    nnz: int
    solves: int


def solve_to_count(
    A,
    Y,
    V,
    program: str,
    keep: int,
    eps0: float,
    *,
    per_neuron: bool,
    solver: str,
    opts: tuple,
    tol: int | None = None,
    max_solves: int = 12,
    groups: tuple | None = None,
    coarse_iters: int = 300,
    omega=None,
    weights=None,
    warm=None,
    grid="auto",
) -> CountedSolve:
    """The layer's program at the epsilon whose solution keeps ``keep`` nonzeros (within
    ``tol``, default 0.25% of the kernel's entries): secant steps on log(epsilon) vs
    log(nonzeros + 1), kept inside a bracket once one is found, starting from ``eps0`` and
    stepping out (``_step_out``) until the count is bracketed.  Solves far from the count (more
    than 10 ``tol`` away) are capped at ``coarse_iters`` iterations: they only steer the
    search; the returned solve always ran with the full options, warm-started from the
    nearest one.  ``weights``: a weighted l1's (``solve_layer(l1_weights=)``); ``warm``: an
    (N, M) kernel the first solve starts from (default zeros).  ``grid``: the search opens
    with that many epsilons (x4 apart around ``eps0``) solved in one vmapped call, the
    accelerator batch that usually brackets the count at once; "auto" is 4 off CPU and 1
    (no batch: sequential steps cost the same there) on CPU.  A solve over its budget (an
    epsilon below what any kernel reaches, e.g. an output layer on pruned features) counts
    as too dense; when the secant lands twice on one
    side of the bracket the next step bisects.  Returns the full solve with the count
    nearest ``keep``."""
    relu = program == "relu"
    full = jitted_solver(program, per_neuron, solver, relu, opts, omega is not None, groups)
    limit = dict(opts).get("max_iters", 5000)
    coarse_opts = tuple(sorted({**dict(opts), "max_iters": min(limit, coarse_iters)}.items()))
    coarse = jitted_solver(program, per_neuron, solver, relu, coarse_opts, omega is not None, groups)
    size = int(A.shape[1] * Y.shape[1])
    tol = max(1, int(0.0025 * size)) if tol is None else tol
    norm_y = fro(Y) or 1.0
    # Every epsilon at or above the zero kernel's misfit has the optimum 0 (no weights): the
    # search stays below it (a cascade's gamma rule can start far above it, where coarse
    # solves from a dense kernel then miscounted: a TinyLM fc1 at 90% ended at 0 weights).
    ceiling = _zero_misfit(Y, V, program, omega, dict(opts).get("relu_budget") == "output")
    eps = eps0 if eps0 > 0 else 0.1 * norm_y
    below = ceiling * (1 - 1e-6)  # an epsilon rounded up to the ceiling counts as at it
    if keep > 0 and eps >= below:
        eps = 0.5 * ceiling
    tried: list[tuple[float, int, np.ndarray, Any, bool]] = []
    w0 = jnp.zeros((A.shape[1], Y.shape[1]), A.dtype) if warm is None else jnp.asarray(warm, A.dtype)
    target = math.log(keep + 1)
    lo = hi = None  # (log eps, log nnz) with nnz > keep / nnz < keep
    close = False
    last_side, same_side = None, 0
    width = (1 if jax.default_backend() == "cpu" else 4) if grid == "auto" else int(grid)
    if width > 1:  # one batch of coarse solves, then the steps below from the best bracket
        grid_eps = [eps * 4.0 ** (k - (width - 1) / 2) for k in range(width)]
        if keep > 0 and grid_eps[-1] >= below:  # the whole grid shifted below the ceiling
            grid_eps = [e * 0.5 * ceiling / grid_eps[-1] for e in grid_eps]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            Ks, infos = jax.device_get(_batched(coarse)(A, Y, jnp.asarray(grid_eps, A.dtype), V, omega, w0, weights))
        for k, e in enumerate(grid_eps):
            K, info = Ks[k], jax.tree.map(lambda a, k=k: a[k], infos)
            n = _count(K, info, size)
            tried.append((e, n, K, info, False))
            lo, hi = _bracket(lo, hi, (math.log(e), math.log(n + 1)), too_dense=n > keep)
        e, n, K, _, _ = min(tried, key=lambda t: abs(t[1] - keep))
        if lo is not None and hi is not None and abs(n - keep) > 10 * tol:
            e = math.exp(_secant(lo, hi, target))
        eps, w0 = e, _nearest_start(tried, math.log(e), w0)
    stale: int | None = None  # index in ``tried`` of an unconverged bracket end to solve again
    rechecks = 0
    while len(tried) < max_solves + rechecks:
        recheck = stale is not None
        with warnings.catch_warnings():
            if not (close or recheck):
                warnings.simplefilter("ignore", RuntimeWarning)
            K, info = jax.device_get(
                (full if close or recheck else coarse)(A, Y, jnp.asarray(eps, A.dtype), V, omega, w0, weights)
            )
        n = _count(K, info, size)
        # a capped solve that converged within its cap is the full solve: the options differ
        # only in max_iters, so it is kept as a final candidate and not solved again
        final = close or recheck or bool(np.all(info.converged))
        tried.append((eps, n, K, info, final))
        if stale is not None:  # the unconverged end is replaced by its full solve, the bracket
            # rebuilt: from the converged solves only when the end's count was on the wrong side
            refuted = (tried.pop(stale)[1] > keep) != (n > keep)
            stale, rechecks = None, rechecks + 1
            lo, hi = _bracket_of([t for t in tried if not refuted or _converged(t[3])], keep)
            last_side, same_side = None, 0
        if final and abs(n - keep) <= tol:
            break
        if abs(n - keep) <= 10 * tol and not close:
            close = True  # from here on, full solves
            if not final:  # this one again, warm, with the full cap
                w0 = jnp.asarray(K)
                continue
        point = (math.log(eps), math.log(n + 1))
        side = n > keep
        same_side = same_side + 1 if side == last_side else 0
        last_side = side
        lo, hi = _bracket(lo, hi, point, too_dense=n > keep)
        if lo is not None and hi is not None and abs(hi[0] - lo[0]) < 1e-4:
            # One epsilon gave counts on both sides (solves to gap_tol from other starts
            # differ): keep this solve's side and step out from it again.
            lo, hi = (point, None) if n > keep else (None, point)
        if lo is not None and hi is not None and same_side >= 2 and rechecks < _RECHECKS:
            # Three solves in a row on one side: the other end may be an unconverged solve's
            # count (a capped iterate is denser, or sparser, than its optimum; a ResNet
            # conv's capped 144 of 148 sat 1% in epsilon from converged 36s and the search
            # bisected onto it).  Solve that end again, from its iterate, with the full cap.
            end = _entry(tried, lo if n < keep else hi)
            if end is not None and not _converged(tried[end][3]):
                stale, eps, w0 = end, tried[end][0], jnp.asarray(tried[end][2])
                continue
        if lo is not None and hi is not None:
            u = _secant(lo, hi, target)
            if same_side >= 1:  # the secant keeps landing on one side (a kinked curve): bisect
                u = 0.5 * (lo[0] + hi[0])
        else:
            u = _step_out(tried, point, target, n > keep)
        eps = _below(math.exp(u), eps, ceiling) if keep > 0 else math.exp(u)
        w0 = _nearest_start(tried, u, w0)
    finals = [t for t in tried if t[4]]
    nearest = min(tried, key=lambda t: abs(t[1] - keep))
    miss = min((abs(t[1] - keep) for t in finals), default=None)
    if miss is None or (miss > tol and abs(nearest[1] - keep) < miss):
        # never came close with a full solve, or a capped solve came closer than any full one
        # (counts of capped solves are noisy): one full solve at the nearest epsilon, warm
        eps, _, K0, _, _ = nearest
        K, info = jax.device_get(full(A, Y, jnp.asarray(eps, A.dtype), V, omega, jnp.asarray(K0), weights))
        n = int(np.count_nonzero(K)) if miss is None else _count(K, info, size)
        finals.append((eps, n, K, info, True))
        tried.append(finals[-1])
    eps, n, K, info, _ = min(finals, key=lambda t: abs(t[1] - keep))
    return CountedSolve(K, info, float(eps), n, len(tried) + rechecks)


# rechecks of an unconverged bracket end per search (each one extra full solve)
_RECHECKS = 2


def _bracket_of(tried, keep: int):
    """The bracket (``_bracket``) of every solve in ``tried``."""
    lo = hi = None
    for e, n, *_ in tried:
        lo, hi = _bracket(lo, hi, (math.log(e), math.log(n + 1)), too_dense=n > keep)
    return lo, hi


def _converged(info) -> bool:
    """The solve converged in every unit."""
    return bool(np.all(info.converged))


def _entry(tried, point) -> int | None:
    """Index in ``tried`` of the (last) solve at bracket point ``point``."""
    for k in range(len(tried) - 1, -1, -1):
        e, n = tried[k][0], tried[k][1]
        if (math.log(e), math.log(n + 1)) == point:
            return k
    return None


# log count against log epsilon fell with slope -1.1 to -1.35 on LeNet-300-100's layers
_SLOPE = -1.2


def _step_out(tried, point, target: float, too_dense: bool) -> float:
    """log epsilon of the next solve while the count is not yet bracketed: the secant
    through the last two solves within its budget extended to ``target`` (log count falls
    about linearly in log epsilon), or, with fewer than two such solves or a slope of the
    wrong sign, a line of slope ``_SLOPE`` through this solve; the step kept between x1.05
    and x16 (x4 without a secant) in the direction the count asks."""
    u, v = point
    sign = 1.0 if too_dense else -1.0
    step = min(max(abs((target - v) / _SLOPE), math.log(1.05)), math.log(4.0))
    met = [(math.log(e), math.log(n + 1)) for e, n, _, info, _ in tried if _within_budget(info)]
    if len(met) >= 2:
        (u0, v0), (u1, v1) = met[-2], met[-1]
        if u1 != u0 and (v1 - v0) / (u1 - u0) < 0:
            step = min(max(abs((target - v1) * (u1 - u0) / (v1 - v0)), math.log(1.05)), math.log(16.0))
    return u + sign * step


def _below(step: float, eps: float, ceiling: float) -> float:
    """The next epsilon: ``step``, or halfway (in log) from ``eps`` to the ``ceiling`` when
    ``step`` is at or above it, rounding included (x2 from half the ceiling can land 1 ulp
    under it in float64 and on it in float32)."""
    if step >= ceiling * (1 - 1e-6):
        return math.sqrt(eps * ceiling)
    return step


def _zero_misfit(Y, V, program: str, omega, soft: bool) -> float:
    """The program's misfit at the zero kernel: an epsilon at or above it has the optimum 0.
    inf for the paper's ReLU program when 0 breaks a threshold (V < 0 off Omega)."""
    broken, m = _at_zero(Y, V, omega, program=program, soft=soft)
    return math.inf if bool(broken) else float(m)


@functools.partial(jax.jit, static_argnames=("program", "soft"))
def _at_zero(Y, V, omega, *, program: str, soft: bool):
    """(whether the zero kernel breaks the paper's ReLU thresholds, its misfit)."""
    mask = (Y > 0) if omega is None else omega
    broken = program == "relu" and not soft and jnp.any(jnp.where(mask, False, jnp.broadcast_to(V, Y.shape) < 0))
    return broken, output_misfit(jnp.zeros_like(Y), Y, program, omega, V, soft)


def _nearest_start(tried, u: float, fallback):
    """The kernel to warm-start a solve at log epsilon ``u``: the nearest solve that met its
    budget (an over-budget one is a dense kernel far from any optimum), else ``fallback``."""
    ok = [t for t in tried if _within_budget(t[3])]
    if not ok:
        return fallback
    return jnp.asarray(min(ok, key=lambda t: abs(math.log(t[0]) - u))[2])


def _within_budget(info) -> bool:
    """The solve met its budget (relative residual at most 1.01 in every unit)."""
    return float(np.max(info.residual)) <= 1.01


def _count(K, info, size: int) -> int:
    """K's nonzeros as the search sees them: a solve over its budget (an epsilon below what
    any kernel reaches here) counts as ``size``, too dense, so a larger epsilon is tried."""
    return int(np.count_nonzero(K)) if _within_budget(info) else size


@functools.lru_cache(maxsize=64)
def _batched(solve):
    """``solve`` (a ``problems.jitted_solver``) over a vector of epsilons, in one call."""
    batch = jax.vmap(solve, in_axes=(None, None, 0, None, None, None, None))

    def nettrim_layer_solve_batch(*args):
        return batch(*args)

    return jax.jit(nettrim_layer_solve_batch)


def one_epsilon(run, target: float, eps0: float, *, tol: float = 0.004, max_runs: int = 10, coarse_iters: int = 300):
    """``allocation="epsilon"``: the prune ``run(epsilon, max_iters or None)`` (a
    ``PruneResult``; ``epsilon`` one relative value for every layer) whose network sparsity
    is within ``tol`` of ``target``.  Secant steps on log(epsilon) against log(kept
    fraction), kept inside the bracket once there is one, x2 steps (x4 when more than 0.1
    away) until then; while more than 3 points away the prunes run at most ``coarse_iters``
    iterations per solve (they only steer); the one returned always ran in full.  Returns
    (result, epsilon, prunes run); a search that ends outside ``tol`` returns the nearest
    full prune with a warning."""
    want = math.log(1 - target)
    e = eps0 if eps0 > 0 else 0.05
    lo = hi = None  # (log e, log kept): too dense / too sparse
    best = None  # (|miss|, result, e)
    runs, full = 0, False
    while runs < max_runs:
        res = run(e, None if full else coarse_iters)
        runs += 1
        kept = res.report.nnz_after / max(res.report.nnz_before, 1)
        miss = (1 - kept) - target
        if full and (best is None or abs(miss) < best[0]):
            best = (abs(miss), res, e)
        if full and abs(miss) <= tol:
            break
        if not full and abs(miss) <= 0.03:
            full = True  # near: the next prunes run in full, starting here
            continue
        point = (math.log(e), math.log(max(kept, 1e-12)))
        lo, hi = _bracket(lo, hi, point, too_dense=miss < 0)
        if lo is not None and hi is not None:
            u = _secant(lo, hi, want)
        else:
            step = math.log(4.0) if abs(miss) > 0.1 else math.log(2.0)
            u = point[0] + (step if miss < 0 else -step)
        e = math.exp(u)
    if best is None:
        res = run(e, None)
        runs += 1
        kept = res.report.nnz_after / max(res.report.nnz_before, 1)
        best = (abs(1 - kept - target), res, e)
    if best[0] > tol:
        warnings.warn(
            f"sparsity {target}: one epsilon for all layers reached {target + best[0]:.4f} or "
            f"{target - best[0]:.4f} at best after {runs} prunes",
            RuntimeWarning,
            stacklevel=3,
        )
    return best[1], best[2], runs


def prune_at_one_epsilon(prune, call: dict, target: float):
    """``prune(..., sparsity=target, allocation="epsilon")``: ``prune`` itself at one scalar
    epsilon (``call``: its model, x and flat keywords), searched by ``one_epsilon``; the report's options say
    so (``epsilon_search_prunes``: prunes run).  With ``reweight`` = R > 0 the search runs
    without it (reweighting makes a kernel sparser at one epsilon, so it would move the
    count being searched) and a last prune takes the counts the search found, per layer, as
    targets with R rounds of reweighted l1: Net-Trim's allocation, a reweighted support."""
    if call["on_layer"] is not None or call["resume"] is not None:
        raise ValueError("allocation='epsilon' runs whole prunes; on_layer= and resume= do not apply")
    kw = dict(call)
    kw.update(sparsity=None, allocation="scores", progress=False)
    rounds = int(kw.get("reweight", 0))

    def run(e, iters):
        from nettrim_jax.network.report import CollapsedModelError

        try:
            return prune(**{**kw, "epsilon": e, "reweight": 0, **({} if iters is None else {"max_iters": iters})})
        except CollapsedModelError as err:  # a search step past the target: its count still steers
            return err.result

    eps0 = float(np.max(call["epsilon"])) if np.size(call["epsilon"]) else 0.05
    res, e, runs = one_epsilon(run, target, eps0)
    if rounds:
        counts = {
            layer.name: 1 - layer.nnz_after / (layer.N * layer.M)
            for layer in res.report.layers
            if layer.activation != "skipped"
        }
        res = prune(**{**kw, "epsilon": e, "sparsity": counts})
        runs += 1
    opts = {**res.report.options, "sparsity": target, "allocation": "epsilon", "epsilon_search_prunes": runs}
    return res._replace(report=res.report._replace(options=opts))
