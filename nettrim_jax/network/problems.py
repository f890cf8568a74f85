"""One layer's program inside a network: its rows and target, how it is solved (at an
epsilon, to a count, over a mesh), and what a finished layer records.

A layer with input rows X (P, N) (image patches for Conv; a ones column appended when the
layer has a bias, so the bias is pruned as the kernel's last row) and original
pre-activation Z gets the ReLU program (target relu(Z)) or the linear program (target Z).
Conv layers whose B x Ho x Wo patch rows exceed ``max_patches`` use a uniform random subset
of them (fixed seed, without replacement); the program then constrains only those rows.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.compiled import dispatch, fro, jitted_solver, misfit, output_misfit
from nettrim_jax.network.specs import Conv, conv_groups, grouped_targets, kernel_matrix, program_rows
from nettrim_jax.network.targets import solve_to_count
from nettrim_jax.solver import gram_space, patterns, structure
from nettrim_jax.solver.l0 import l0_finish
from nettrim_jax.solver.layer import reweighting_weights, solve_layer
from nettrim_jax.solver.refit import refit_layer

__all__ = [
    "LayerProblem",
    "LayerOutcome",
    "SolveConfig",
    "build_problem",
    "jitted_solver",
    "dispatch",
    "misfit",
    "output_misfit",
    "refit_or_measure",
    "carry_miss",
    "output_layer_epsilon",
    "absolute_epsilon",
]


class SolveConfig(NamedTuple):
    """Settings shared by every layer of one ``prune`` run (hashable parts key jit caches).

    per_neuron, solver: as ``solve_layer``; opts: sorted ``(name, value)`` solver options;
    relative: epsilons relative to ||Y_l||_F; max_patches, seed: conv row sampling; gamma:
    cascade inflation; per_layer: ``epsilon`` was given per layer (cascade: floors);
    refit: refit kept weights on the support; output_epsilon: cascade output budget or None;
    keep: per-layer keep counts of a sparsity target (the epsilon is then searched);
    structure: "units" removes whole input units (Dense) or channels (Conv) by the group-l1
    program (``solver.structure``); pattern: (n, m) keeps n of every m inputs per output
    unit (``solver.patterns``) on Net-Trim's solution, then refits; mesh: each layer's solve
    is split over the mesh (``solve_layer(mesh=)``: rows over "samples", units over "units");
    reweight: rounds of reweighted l1 (``solve_program``); finish: "l0" runs ``solver.l0``
    on every unstructured layer's kernel (``finish_kernel``); flat_channels: per layer, the
    channel count C of the conv feature map a Dense layer reads flattened (0: none), so that
    "units" groups its rows by channel (``layer_groups``).
    """

    per_neuron: bool
    solver: str
    opts: tuple
    relative: bool
    max_patches: int | None
    seed: int
    gamma: float
    per_layer: bool
    refit: bool
    output_epsilon: float | None
    keep: list | tuple = ()  # per-layer nonzeros to keep (``network.targets``); (): epsilon rule
    carry: bool = False  # a global target: a layer's miss is added to the next layer's count
    sizes: tuple = ()  # per-layer kernel entries (N * M, bias row included): a carried count's cap
    structure: str = "unstructured"  # or "units": group-l1 over input units / channels
    pattern: tuple | None = None  # (n, m): an N:M support along the input axis, then a refit
    mesh: Any = None  # a jax.sharding.Mesh ("samples", "units"): every layer sharded over it
    reweight: int = 0  # rounds of reweighted l1 after each layer's first solve
    finish: str | None = None  # "l0": hard-thresholding steps at the count after the refit
    flat_channels: tuple = ()  # per layer: C of a C-channel conv map it reads flattened, else 0

    @property
    def soft(self) -> bool:
        """The ReLU programs' budget covers the output error (``relu_budget="output"``, an
        entry of ``opts``) rather than the misfit over Omega alone."""
        return dict(self.opts).get("relu_budget", "omega") == "output"


class LayerProblem(NamedTuple):
    """inputs: (P, N[+1]) program rows (ones column if the layer has a bias); target: (P, M);
    subset: indices of the patch rows used (None: all); full_rows: all patch rows.

    A layer behind an affine epilogue (``network.epilogues``) also has omega: (P, M) bool
    Omega (else Y > 0); threshold: (P, M) V off Omega (else 0); scale: (M,) column scales
    of the kernel the program is solved for (kernel = solved kernel / scale)."""

    inputs: Any
    target: Any
    subset: Any
    full_rows: int
    omega: Any = None
    threshold: Any = None
    scale: Any = None


class LayerOutcome(NamedTuple):
    """A finished layer: kernel (N[+1], M) dense-program kernel (numpy; None for a skipped
    layer, which keeps its weights), the program's size (N, M, rows solved, subsampled), its
    epsilon and achieved misfit (absolute), the solver's iterations and convergence, wall
    seconds, the cascade floor used (None for epsilon_1 or an output budget), whether the
    layer was solved inside a ``lax.scan`` run, and the conjugate-gradient iterations of its
    refit or l0 finish (0 without one)."""

    kernel: Any
    N: int
    M: int
    rows: int
    subsampled: bool
    epsilon: float
    misfit: float
    iterations: int
    converged: bool
    seconds: float
    floor: float | None = None
    scan: bool = False
    refit_iterations: int = 0


def skipped_outcome(N: int, M: int) -> LayerOutcome:
    return LayerOutcome(
        kernel=None,
        N=N,
        M=M,
        rows=0,
        subsampled=False,
        epsilon=0.0,
        misfit=0.0,
        iterations=0,
        converged=True,
        seconds=0.0,
    )


def solved_outcome(
    prob: LayerProblem, kernel, eps, fit, info, seconds, floor=None, scan=False, refit_iterations=0
) -> LayerOutcome:
    return LayerOutcome(
        kernel=np.asarray(kernel),
        N=int(prob.inputs.shape[1]),
        M=int(prob.target.shape[1]),
        rows=int(prob.inputs.shape[0]),
        subsampled=bool(prob.inputs.shape[0] < prob.full_rows),
        epsilon=float(eps),
        misfit=float(fit),
        iterations=int(info.iterations),
        converged=bool(info.converged),
        seconds=float(seconds),
        floor=None if floor is None else float(floor),
        scan=scan,
        refit_iterations=int(refit_iterations),
    )


def layer_groups(cfg: SolveConfig, i: int, spec) -> tuple | None:
    """Group ids of layer ``i``'s (``spec``) kernel-matrix rows under ``cfg.structure``
    (None: plain l1): one group per input unit (Dense), per input channel (Conv), or, for a
    Dense layer reading a conv feature map flattened (``cfg.flat_channels``), per channel of
    that map; the bias row ungrouped."""
    if cfg.structure == "unstructured":
        return None
    bias = spec.bias is not None
    channels = cfg.flat_channels[i] if cfg.flat_channels else 0
    if isinstance(spec, Conv):
        kh, kw, ins, _ = spec.kernel.shape
        ids = structure.channel_groups(int(ins), int(kh), int(kw), bias)
    elif channels:
        ids = structure.flat_channel_groups(int(spec.kernel.shape[0]), int(channels), bias)
    else:
        ids = structure.row_groups(int(spec.kernel.shape[0]), bias)
    return tuple(int(g) for g in ids)


def solver_for(cfg: SolveConfig, i: int, spec, program: str, with_threshold: bool, with_omega: bool = False):
    """The compiled solver of layer ``i``'s (``spec``) program under ``cfg``."""
    return jitted_solver(
        program, cfg.per_neuron, cfg.solver, with_threshold, cfg.opts, with_omega, groups=layer_groups(cfg, i, spec)
    )


def finish_kernel(cfg: SolveConfig, i: int, spec, A, Y, K, program: str, V=None, omega=None, scale=None):
    """(kernel, misfit, CG iterations) of solved layer ``i``: with ``cfg.finish == "l0"`` the l0 finish at the
    kernel's count (``solver.l0``: refit, then hard-thresholding steps that lower the refit
    objective, whole groups under ``cfg.structure``; its sqrt(2 x objective) as the
    misfit), else the N:M pattern applied
    (``cfg.pattern``, then always refit on it), else ``refit_or_measure``.  Under a
    structure, with an epsilon (no keep count), the refit or finish fits every entry of the
    kept groups (``structure.filled``: a kept unit is kept whole); a keep count counts
    entries, so there the support stays the solution's."""
    K = jnp.asarray(K)
    groups = layer_groups(cfg, i, spec)
    if groups is not None and (cfg.refit or cfg.finish == "l0") and not (cfg.keep and cfg.keep[i] is not None):
        K = structure.filled(K, jnp.asarray(groups, jnp.int32))
    if cfg.finish == "l0" and cfg.pattern is None:
        K, info = l0_finish(
            A,
            Y,
            K,
            activation=program,
            threshold=V if program == "relu" else None,
            omega=omega if program == "relu" else None,
            groups=groups,
            reference=_reference(program_kernel(spec, scale), K),
        )
        return K, info.error_after, info.cg_iterations
    if cfg.pattern is None:
        return refit_or_measure(cfg.refit, A, Y, K, program, V, omega, cfg.soft)
    mask = patterns.nm_mask(K, cfg.pattern[0], cfg.pattern[1], axis=0, bias=spec.bias is not None)
    return refit_or_measure(True, A, Y, jnp.where(mask, K, 0), program, V, omega, cfg.soft)


def program_kernel(spec, scale=None):
    """The layer's original kernel matrix (N[+1], M) in its program's columns: times
    ``scale`` (M,), the column scales of an affine epilogue (``LayerProblem.scale``)."""
    W = kernel_matrix(spec)
    return W if scale is None else W * scale


def _reference(W, K):
    """``W`` (the program's original kernel), the l0 finish's second start, when it has the
    solved kernel ``K``'s shape, else None."""
    return jnp.asarray(W, K.dtype) if tuple(W.shape) == tuple(K.shape) else None


def solve_program(
    cfg: SolveConfig, i: int, spec, A, Y, eps: float, V, program: str, device=None, omega=None, scale=None
):
    """(kernel, info, epsilon) of layer ``i``'s program: at ``eps``, or, when the run has a
    keep count for the layer, at the epsilon the search finds (starting from
    ``seed_epsilon``, else ``eps``).
    ``omega``, ``scale``: Omega and the column scales of a layer behind an affine epilogue
    (``network.epilogues``).

    With ``cfg.reweight`` = r > 0, r more solves follow, each minimizing the l1 norm
    weighted by ``reweighting_weights`` of the previous kernel (Candes, Wakin & Boyd 2008:
    large entries cost less, so the support concentrates on them), warm-started from it: at
    the same epsilon (a sparser kernel in the same ball), or, with a keep count, at the
    epsilon the search finds for the count again (a smaller misfit at the same count)."""
    keep = cfg.keep[i] if cfg.keep else None
    gram = gram_reduction(cfg, A, Y, program, omega)
    if keep is not None and not cfg.per_neuron:  # the count search starts near its answer
        soft = dict(cfg.opts).get("relu_budget") == "output"
        floor_sq = 0.0 if gram is None else float(jnp.sum(gram.c))
        seed = seed_epsilon(program_kernel(spec, scale), A, Y, V, program, keep, omega, soft, floor_sq)
        eps = eps if seed is None else seed
    K, info, eps = _solve_once(cfg, i, spec, A, Y, eps, V, program, keep, device, omega, gram=gram)
    for _ in range(cfg.reweight):
        weights = reweighting_weights(jnp.asarray(K))
        K, info, eps = _solve_once(cfg, i, spec, A, Y, eps, V, program, keep, device, omega, weights, K, gram=gram)
    return K, info, eps


GRAM_ROWS = 2  # a linear program with more than GRAM_ROWS x N rows is solved on N rows


def gram_reduction(cfg: SolveConfig, A, Y, program: str, omega=None):
    """The N-row problem equivalent to a linear layer program (``gram_space.range_reduction``:
    R, Q and the constant c with ||A U - Y||_F^2 = ||R U - Q||_F^2 + sum c for every U,
    rank-deficient A included), when it is cheaper: the linear program, P > 2N rows, coupled
    (not per neuron), not over a mesh.  Decided by shapes alone, so layers of one shape
    share one compiled program.  Every iteration then costs N instead of P rows; a TinyLM
    projection has 8192 rows for N = 129."""
    if program != "linear" or omega is not None or cfg.per_neuron or cfg.mesh is not None:
        return None
    if int(A.shape[0]) <= GRAM_ROWS * int(A.shape[1]):
        return None
    return gram_space.range_reduction(jnp.asarray(A), jnp.asarray(Y))


def carry_miss(cfg: SolveConfig, i: int, kernel) -> None:
    """A global target's bookkeeping once layer ``i`` is final (``kernel``: what it keeps,
    after any refit or N:M pattern): the miss (count asked minus count kept) is added to the
    next targeted layer's count, so the network's total stays on target; no layer is asked
    for more than its kernel's entries nor less than 0 (what one cannot take goes on to the
    next).  The schemes call it for every layer in order, a resumed run for the finished
    layers it takes as they are too, so its later counts are the uninterrupted run's."""
    keep = cfg.keep[i] if cfg.keep else None
    if keep is None or not cfg.carry or not isinstance(cfg.keep, list):
        return
    miss = keep - int(np.count_nonzero(np.asarray(kernel)))
    for j in range(i + 1, len(cfg.keep)):
        if cfg.keep[j] is None or miss == 0:
            continue
        cap = cfg.sizes[j] if cfg.sizes else math.inf
        new = int(min(max(0, cfg.keep[j] + miss), cap))
        miss -= new - cfg.keep[j]
        cfg.keep[j] = new


def _solve_once(
    cfg: SolveConfig, i: int, spec, A, Y, eps, V, program: str, keep, device, omega, weights=None, warm=None, gram=None
):
    """One solve of the program (the l1 objective weighted by ``weights`` if given, started
    from the kernel ``warm``): searched to ``keep`` nonzeros, split over ``cfg.mesh``, or
    dispatched at ``eps``; returns (kernel, info, epsilon).  With ``gram`` (a
    ``gram_reduction``) the same program is solved on its N rows, epsilons mapped between
    sqrt(eps^2 - sum c) there and eps here (the kernel's misfit is measured on A, Y after)."""
    if gram is not None:  # the same program on the N rows (R, Q), its epsilon mapped there and back
        c = float(jnp.sum(gram.c))
        reduced = math.sqrt(max(float(eps) ** 2 - c, 0.0))
        V0 = jnp.zeros((), gram.r.dtype)
        K, info, found = _solve_once(
            cfg, i, spec, gram.r, gram.q, reduced, V0, program, keep, device, None, weights, warm
        )
        return K, info, (math.sqrt(float(found) ** 2 + c) if keep is not None else eps)
    if keep is not None:
        return _counted(cfg, i, spec, A, Y, V, program, keep, float(eps), omega, weights, warm)
    if cfg.mesh is not None:
        return (*_mesh_solve(cfg, i, spec, A, Y, eps, V, program, omega, weights, warm), eps)
    f = solver_for(cfg, i, spec, program, program == "relu", omega is not None)
    K, info = dispatch(f, A, Y, eps, V, device, cfg.per_neuron, omega, warm, weights)()
    return K, info, eps


# The l1 program's epsilon at a count sat 2.0-2.8x below the misfit of the original kernel
# cut to that count by Wanda's score on LeNet-300-100's three layers (2000 rows, 90%).
_SEED_RATIO = 2.5


@functools.partial(jax.jit, static_argnames=("program", "soft"))
def _cut_misfit(W, A, Y, V, omega, keep, *, program: str, soft: bool):
    """The program's misfit of ``W`` cut to its ``keep`` entries of largest |w_ij| ||a_i||."""
    score = jnp.abs(W) * jnp.sqrt(jnp.sum(A * A, axis=0))[:, None]
    cut = jnp.sort(score.ravel())[score.size - keep]
    return misfit(A, Y, jnp.where(score >= cut, W, 0), program, omega, V, soft)


def seed_epsilon(
    W, A, Y, V, program: str, keep: int, omega=None, soft: bool = False, floor_sq: float = 0.0
) -> float | None:
    """Where the count search starts: from the program's misfit m of ``W`` (N, M), the
    layer's original kernel in the program's columns, cut to its ``keep`` entries of largest
    |w_ij| * ||a_i|| (Wanda's score; ``A`` (P, N), ``Y`` (P, M)), the part above the misfit
    no kernel goes below (``floor_sq``, squared: a linear program's least-squares residual
    when it is known, else 0) divided by ``_SEED_RATIO``:
    sqrt(floor_sq + (m^2 - floor_sq) / ratio^2).  None when ``W`` is not the program's shape
    or nothing is kept."""
    if tuple(W.shape) != (A.shape[1], Y.shape[1]) or keep <= 0 or keep >= W.size:
        return None
    m = float(_cut_misfit(jnp.asarray(W, A.dtype), A, Y, V, omega, keep, program=program, soft=soft))
    if not math.isfinite(m) or m <= 0:
        return None
    return math.sqrt(floor_sq + max(m * m - floor_sq, 0.0) / _SEED_RATIO**2)


def _counted(
    cfg: SolveConfig, i: int, spec, A, Y, V, program: str, keep: int, eps0: float, omega, weights=None, warm=None
):
    found = solve_to_count(
        A,
        Y,
        V,
        program,
        keep,
        float(eps0),
        per_neuron=cfg.per_neuron,
        solver=cfg.solver,
        opts=cfg.opts,
        groups=layer_groups(cfg, i, spec),
        omega=omega,
        weights=weights,
        warm=warm,
    )
    return found.kernel, found.info, found.epsilon


def _mesh_solve(cfg: SolveConfig, i: int, spec, A, Y, eps, V, program: str, omega=None, weights=None, warm=None):
    """(kernel as numpy, info) of a solve split over ``cfg.mesh`` (``weights``: a weighted
    l1's, ``warm``: a kernel to start from)."""
    from nettrim_jax.solver.sharding import host_value

    groups = layer_groups(cfg, i, spec)
    extra: dict[str, Any] = {} if groups is None else {"structure": "rows", "groups": np.asarray(groups, np.int32)}
    sol = solve_layer(
        A,
        Y,
        epsilon=eps,
        activation=program,
        threshold=V if program == "relu" else None,
        per_neuron=cfg.per_neuron,
        solver=cfg.solver,
        mesh=cfg.mesh,
        omega=omega,
        l1_weights=weights,
        warm_start=warm,
        **extra,
        **dict(cfg.opts),
    )
    kernel = host_value(sol.kernel)
    if kernel is None:  # spans processes: gather the kernel (N x M) to every host
        from jax.experimental import multihost_utils

        kernel = np.asarray(multihost_utils.process_allgather(sol.kernel, tiled=True))
    return kernel, jax.tree.map(lambda a: host_value(a), sol.info)


def build_problem(spec, X, Z, program: str, max_patches: int | None, seed: int) -> LayerProblem:
    """The program of ``spec`` on inputs ``X`` (model layout) against pre-activation ``Z``."""
    A = program_rows(spec, X)  # the bias column(s) included
    full = int(A.shape[0])
    subset = None
    if isinstance(spec, Conv) and max_patches is not None and full > max_patches:
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(full, size=int(max_patches), replace=False))
    A, Y = _program_arrays(A, Z, subset, groups=conv_groups(spec), relu=program == "relu")
    return LayerProblem(A, Y, subset, full)


@functools.partial(jax.jit, static_argnames=("groups", "relu"))
def _program_arrays(A, Z, subset, *, groups: int, relu: bool):
    """(A, Y): the rows ``subset`` (None: all) of the program's inputs and of its targets
    (``Z``'s rows, through the ReLU for a ReLU program), in one compiled program."""
    Zr = grouped_targets(Z, groups)
    if subset is not None:
        A, Zr = A[subset], Zr[subset]
    return A, jax.nn.relu(Zr) if relu else Zr


def absolute_epsilon(e, target, relative: bool) -> float:
    """An epsilon entry in the program's units (0 for None: no floor)."""
    if e is None:
        return 0.0
    return e * fro(target) if relative else e


def refit_or_measure(refit: bool, A, Y, K, program: str, V=None, omega=None, soft: bool = False):
    """(kernel, misfit, CG iterations) of a solved layer: with ``refit``, the kernel refit on
    its support (``refit_layer``), its sqrt(misfit^2 + excess^2) and the refit's CG
    iterations; otherwise K, its misfit (``misfit``) and 0.  Traceable, so the scan path
    calls it too."""
    if not refit:
        return K, misfit(A, Y, K, program, omega, V, soft), 0
    K2, info = refit_layer(
        A,
        Y,
        K,
        activation=program,
        threshold=V if program == "relu" else None,
        omega=omega if program == "relu" else None,
    )
    return K2, info.error_after, info.cg_iterations


def output_layer_epsilon(A, Y, budget: float) -> float:
    """epsilon_L of a linear output layer under ``output_epsilon``: ``budget`` (absolute),
    raised to 1.01 x the least-squares residual min_U ||A U - Y||_F (float64) when below it,
    with a ``RuntimeWarning``.  A (P, N) rows on the pruned features, Y (P, M) the original
    outputs."""
    a = np.asarray(A, np.float64)
    y = np.asarray(Y, np.float64)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    floor = 1.01 * float(np.linalg.norm(a @ coef - y))
    if budget < floor:
        warnings.warn(
            f"output_epsilon {budget:.4g} is below what any kernel can reach on the "
            f"pruned features (least-squares residual {floor / 1.01:.4g}); using "
            f"{floor:.4g}",
            RuntimeWarning,
            stacklevel=4,
        )
        return floor
    return float(budget)
