"""``prune``: Net-Trim over a whole network, the one route from every entry point (library,
command line, demo, notebook) to the layer solver.

    prune(model, x, *, scheme="cascade", epsilon=0.05, gamma=1.1, ...) -> PruneResult

``model`` is an ``nnx.Module``, a Linen ``(module, variables)`` pair, or a sequence of
``Dense`` / ``Conv`` specs and plain callables (``network.adapters``); ``x`` a batch of
calibration inputs in the model's layout.  Nothing is mutated.  The steps, each in its own
module:

1. input checks (``network.checks``) and the first forward pass (``adapters``),
2. one program per layer (``network.activations``: ReLU, linear, or skipped),
3. the scheme (``network.cascade`` / ``network.parallel``) solving each layer's program
   (``network.problems`` -> ``solver.solve_layer``), reporting each finished step to
   ``on_layer`` and continuing a ``resume`` state,
4. the report (``network.report``) with the scheme's a priori bound (``network.bounds``).

Epsilon: one value or one per prunable layer; with ``relative=True`` (default) epsilon_l =
value x ||Y_l||_F (Y_l the program's target on its rows), otherwise absolute.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nettrim_jax.network import checks
from nettrim_jax.network import epilogues as epi
from nettrim_jax.network.activations import choose_layers
from nettrim_jax.network.adapters import adapt
from nettrim_jax.network.cascade import solve_cascade
from nettrim_jax.network.evaluation import build_report
from nettrim_jax.network.parallel import solve_parallel
from nettrim_jax.network.problems import LayerOutcome, SolveConfig
from nettrim_jax.network.report import PruneReport
from nettrim_jax.network.specs import kernel_matrix, with_matrix
from nettrim_jax.network.targets import keep_counts, parse_sparsity, prune_at_one_epsilon
from nettrim_jax.solver.layer import check_solver_options

__all__ = ["prune", "PruneResult", "PruneState", "CollapsedModelError"]


class PruneResult(NamedTuple):
    """``model``: pruned model in the input's form; ``masks``: bool pytree matching the
    params (True where a weight survives); ``report``: ``PruneReport``."""

    model: Any
    masks: Any
    report: PruneReport

    def compact(self, x=None, module=None):
        """The pruned model with dead units and channels physically removed, same outputs
        (``network.compact``).  A spec network comes back as one; an NNX chain (Linear /
        Conv, ReLU, pooling, flatten: ``io.convert.from_model``) as an ``nnx.Sequential``
        of the compacted layers (``io.convert.to_nnx``; its classes fix their widths at
        construction, so the original class cannot hold them); a Linen chain as the
        compacted spec network (Linen variables would need a new module definition).
        ``x``: a few inputs to read an NNX / Linen chain from its forward pass; ``module``:
        the Linen module (a Linen result holds only its variables)."""
        from nettrim_jax.io import convert
        from nettrim_jax.network.compact import compact_network

        model = self.model
        if isinstance(model, list):
            return compact_network(model)
        if x is None:
            raise ValueError("compact() of an NNX or Linen model needs x, a few inputs to read its chain from")
        if not isinstance(model, nnx.Module):
            if module is None:
                raise ValueError("compact() of a Linen result needs module=, the Linen module (it holds the variables)")
            model = (module, model)
        specs = compact_network(convert.to_network(convert.from_model(model, x)[0]))
        return convert.to_nnx(specs) if isinstance(model, nnx.Module) else specs


class PruneState(NamedTuple):
    """Where a run stands: ``scheme`` and one entry per prunable layer, a ``LayerOutcome``
    for each finished layer (its dense-program kernel included) or None.  ``prune`` hands one
    to ``on_layer`` after every finished step; passing it back as ``resume=`` continues the
    run (a cascade from its last finished layer) with the same result as an uninterrupted
    run.  ``nettrim prune --resume`` stores it between processes."""

    scheme: str
    outcomes: tuple

    @property
    def finished(self) -> int:
        return sum(o is not None for o in self.outcomes)


def _check_resume(resume, scheme, orig) -> list:
    if resume is None:
        return [None] * len(orig)
    if not isinstance(resume, PruneState):
        raise ValueError(f"resume must be a PruneState (from on_layer), got {type(resume).__name__}")
    if resume.scheme != scheme:
        raise ValueError(f"resume state is from a {resume.scheme} run, not {scheme}")
    if len(resume.outcomes) != len(orig):
        raise ValueError(f"resume state has {len(resume.outcomes)} layers, the model has {len(orig)}")
    for i, (out, spec) in enumerate(zip(resume.outcomes, orig)):
        want = tuple(kernel_matrix(spec).shape)
        if out is not None and out.kernel is not None and tuple(out.kernel.shape) != want:
            raise ValueError(
                f"resume state: layer {i} kernel has shape {tuple(out.kernel.shape)}, the model's is {want}"
            )
    return list(resume.outcomes)


def _options(
    epsilon, gamma, relative, output_epsilon, per_neuron, solver, max_patches, seed, refit, solver_options
) -> dict:
    eps = epsilon if np.ndim(epsilon) == 0 and not isinstance(epsilon, (list, tuple)) else list(epsilon)
    return {
        "epsilon": eps,
        "gamma": float(gamma),
        "relative": bool(relative),
        "output_epsilon": output_epsilon,
        "refit": bool(refit),
        "per_neuron": bool(per_neuron),
        "solver": solver,
        "max_patches": max_patches,
        "seed": int(seed),
        **solver_options,
    }


def prune(
    model,
    x,
    *,
    scheme: str = "cascade",
    epsilon=0.05,
    gamma: float = 1.1,
    relative: bool = True,
    output_epsilon=None,
    per_neuron: bool = False,
    solver: str = "admm",
    activations: dict | None = None,
    on_unsupported: str = "linear",
    max_patches: int | None = 4096,
    seed: int = 0,
    scan="auto",
    devices=None,
    refit: bool = False,
    progress: bool = True,
    on_layer: Callable[[PruneState], None] | None = None,
    resume: PruneState | None = None,
    sparsity=None,
    allocation: str = "scores",
    structure: str = "unstructured",
    pattern=None,
    mesh=None,
    fold_batchnorm: bool = False,
    relu_budget: str = "output",
    reweight: int = 0,
    model_kwargs: dict | None = None,
    **solver_options,
) -> PruneResult:
    """Prune every Dense / Conv layer of ``model`` with Net-Trim (see the module doc).

    Args:
      model: ``nnx.Module`` | Linen ``(module, variables)`` | sequence of specs/callables.
      x: calibration inputs (P0, ...) in the model's input layout.
      scheme: "cascade" or "parallel".
      epsilon: scalar or one per prunable layer (cascade: entry 0 is epsilon_1, later
        entries are floors); relative to ||Y_l||_F unless ``relative=False``.
      gamma: cascade inflation, >= 1.
      output_epsilon: cascade only, linear output layer: the output layer's misfit budget
        (relative unless ``relative=False``), replacing its gamma rule and its entry of
        ``epsilon``; raised to 1.01 x the least-squares residual on the pruned features
        when below it (``network.cascade``).
      per_neuron: solve one program per output unit (epsilon split by ||y_m||).
      solver: "admm" | "pdhg" (see ``solve_layer``).
      activations: {layer name: "relu" | "linear" | "skip"} overrides, checked against the
        forward pass (``network.activations``).
      on_unsupported: for layers followed by an op with no Net-Trim program (GELU, tanh,
        softmax, LayerNorm, ...; not a ReLU behind an affine epilogue, which gets the exact
        ReLU program): "linear" (default: the linear program on the pre-activation), "error"
        or "skip" (keep the layer).  The report's ``reason`` says what each layer got.
      max_patches: cap on conv program rows (uniform random subset, ``seed``); None = all.
      scan: cascade only: "auto"/True use ``lax.scan`` over runs of stacked square Dense
        ReLU layers, False always loops.
      devices: devices for the parallel scheme (default ``jax.devices()``).
      refit: after each layer's solve, refit its kept weights to the layer's response on the
        same rows (``nettrim_jax.refit_layer``: same support, per-unit never worse in
        misfit^2 + threshold excess^2, so every bound still holds); in cascade the next
        layer then sees the refit layer's outputs.  The report's ``misfit`` is then
        sqrt(misfit^2 + excess^2) of the refit kernel.
      progress: tqdm bar over layers.
      on_layer: called with a ``PruneState`` after every finished step (a layer, or a
        ``lax.scan`` run of layers), e.g. to save it.
      resume: a ``PruneState`` from an interrupted run with the same model, data and
        settings: its finished layers are taken as they are.
      sparsity: a target instead of an epsilon: the fraction of weights (kernel and bias)
        removed, for the whole network or as {layer name: fraction}; each layer's epsilon is
        then searched (``network.targets``; ``epsilon`` only seeds the search) and reported.
        With ``output_epsilon`` the output layer keeps its budget instead of a target.
      allocation: how a global ``sparsity`` is split over layers: "scores" (one threshold on
        activation-weighted magnitudes), "uniform", or "epsilon" (one scalar epsilon, as if given
        as ``epsilon``, searched over whole prunes; ``network.targets``).
      structure: "unstructured" (||U||_1), or "units" (aliases "neurons", "channels"): the
        group-l1 program over input rows, which removes whole input units of Dense layers
        and input channels of Conv layers (certified like the l1 program; ``result.compact()``
        then removes them physically).
      mesh: a ``jax.sharding.Mesh`` with axes ("samples", "units"): every layer's solve is
        split over it (rows of X over "samples", output units over "units"), one layer at a
        time in either scheme; under ``jax.distributed`` it may span processes.
      pattern: "N:M" (e.g. "2:4"): at most N nonzeros in every M consecutive inputs of each
        output unit, selected by magnitude from Net-Trim's solution and refit on that support.
      fold_batchnorm: NNX models: fold each inference BatchNorm that directly follows a
        pruned Linear / Conv into it (``network.folding``; same zeros, the BatchNorm becomes
        the identity or a shift); default False keeps the BatchNorms and returns the
        unfolded kernels.  Other model kinds keep their BatchNorms (with a warning).
      relu_budget: what a ReLU layer's epsilon bounds (``solve_layer``): "output" (default)
        the ReLU output's error, misfit over Omega and excess off it in one budget (in
        cascade, V is the program's own threshold and W's excess counts in its gamma rule);
        "omega" the paper's program, misfit over Omega with XU <= V exactly off it (cascade:
        V = max(X_hat W, 0)).  "output" contains both the paper's feasible set and the linear
        program's, so it is never denser at the same output error; measured on a BatchNorm
        ResNet and LeNet-300-100 (README, "ReLU budget"), it keeps more accuracy at the same
        sparsity.
      reweight: rounds of reweighted l1 per layer (default 0): each re-solves the layer's
        program with the l1 norm weighted by ``reweighting_weights`` of the previous kernel,
        warm-started from it (``problems.solve_program``): at the same epsilon a sparser
        kernel, with a ``sparsity`` target a smaller misfit at the same count.  Each round
        costs about one more solve (a search, with a target).  Unstructured only.
      model_kwargs: keyword arguments of every call of the model (NNX ``model(x, **kw)``,
        Linen ``module.apply(variables, x, **kw)``), e.g. ``{"train": False}`` for a model
        whose BatchNorm / Dropout mode is an argument.  NNX models are called in ``eval()``
        mode either way.
      **solver_options: passed to ``solve_layer`` (max_iters, gap_tol, ...).

    Returns: ``PruneResult(model, masks, report)``.

    Raises ``ValueError`` (one line, before any solve) for: an unknown scheme / solver,
    gamma < 1, a negative or non-finite epsilon (scalar or any entry) or a wrong entry count,
    ``output_epsilon`` that is negative, non-finite, given with ``scheme="parallel"`` or for
    a model whose output layer is not linear (or is skipped), empty calibration data, NaN/Inf
    in ``x`` or in any prunable layer's kernel/bias (named), a layer input or pre-activation
    that is non-finite on ``x`` (overflow), ``x`` whose shape does not fit the model
    (``adapters.InputShapeError``, naming ``x``'s shape and the layer's expected input), an
    override the forward pass contradicts, and a ``resume`` state that does not fit.
    """
    call = dict(locals())  # the arguments, for allocation="epsilon"'s whole-network prunes
    checks.check_options(scheme, gamma, on_unsupported, solver, max_patches, scan, relu_budget)
    check_solver_options(solver, solver_options)
    checks.check_epsilon_values(epsilon)
    sparsity = parse_sparsity(sparsity, allocation)
    structure, pattern = checks.parse_structure(structure, pattern, per_neuron)
    reweight = checks.reweight_rounds(reweight, structure)
    if output_epsilon is not None:
        if scheme != "cascade":
            raise ValueError(
                "output_epsilon applies to scheme='cascade' only (parallel layers do not see the pruned features)"
            )
        output_epsilon = checks.epsilon_value(output_epsilon, what="output_epsilon")
    t_start = time.perf_counter()
    x = checks.check_calibration(x)
    net = adapt(model, x, model_kwargs)  # first forward pass: shape mismatches -> InputShapeError
    checks.check_layers(net)
    checks.check_weights(net)
    checks.check_forward(net)
    for name in net.unused:
        warnings.warn(f"layer {name!r} is not called by the forward pass; left unchanged", stacklevel=2)
    for name, why in getattr(net, "refused", {}).items():
        warnings.warn(f"layer {name!r} left unpruned: {why}", stacklevel=2)
    orig = list(net.specs)
    if allocation == "epsilon" and sparsity is not None:
        return prune_at_one_epsilon(prune, call, sparsity)
    done = _check_resume(resume, scheme, orig)
    eps_list, per_layer = checks.epsilon_list(epsilon, len(orig))
    choices = choose_layers(net, x, net.first, activations, on_unsupported)
    programs = [c.program for c in choices]
    eps_of = [c.epilogue for c in choices]
    if output_epsilon is not None and programs[-1] != "linear":
        raise ValueError(
            f"output_epsilon needs a linear output layer to refit; layer {net.names[-1]!r} has program {programs[-1]!r}"
        )
    keep = None
    if sparsity is not None:
        targeted = list(programs)
        if output_epsilon is not None:
            targeted[-1] = "skipped"  # the output layer keeps its own budget
        keep = keep_counts(net.names, orig, net.first.inputs, targeted, sparsity, allocation, max_patches)
    cfg = SolveConfig(
        per_neuron=bool(per_neuron),
        solver=solver,
        opts=tuple(sorted({**solver_options, "relu_budget": relu_budget}.items())),
        relative=bool(relative),
        max_patches=max_patches,
        seed=int(seed),
        gamma=float(gamma),
        per_layer=per_layer,
        refit=bool(refit),
        output_epsilon=output_epsilon,
        keep=keep or (),
        carry=not isinstance(sparsity, dict),
        structure=structure,
        pattern=pattern,
        mesh=mesh,
        reweight=reweight,
    )
    bar = _bar(len(orig), progress, scheme, sum(o is not None for o in done))

    def finished(step: dict[int, LayerOutcome]):
        for i, out in step.items():
            done[i] = out
        if bar is not None:
            bar.update(len(step))
        if on_layer is not None:
            on_layer(PruneState(scheme, tuple(done)))

    try:
        if scheme == "parallel":
            outcomes = solve_parallel(
                orig,
                net.first,
                programs,
                eps_list,
                cfg,
                devices,
                done,
                on_layer=lambda i, out: finished({i: out}),
                prebuilt=_epilogue_problems(net, x, orig, eps_of, done, cfg),
            )
        else:
            outcomes = solve_cascade(net, x, programs, eps_list, cfg, scan, done, on_layers=finished, epilogues=eps_of)
    finally:
        if bar is not None:
            bar.close()
    new = [
        spec if out.kernel is None else with_matrix(spec, jnp.asarray(out.kernel)) for spec, out in zip(orig, outcomes)
    ]
    report = build_report(
        net,
        x,
        scheme,
        orig,
        new,
        choices,
        outcomes,
        float(gamma),
        _options(
            epsilon,
            gamma,
            relative,
            output_epsilon,
            per_neuron,
            solver,
            max_patches,
            seed,
            refit,
            {
                **solver_options,
                "sparsity": sparsity,
                "allocation": allocation if sparsity is not None else None,
                "structure": structure,
                "pattern": None if pattern is None else f"{pattern[0]}:{pattern[1]}",
                "relu_budget": relu_budget,
                "reweight": reweight,
            },
        ),
        t_start,
    )
    if output_epsilon is None:  # else the output layer keeps its budget, not a share of S
        _warn_missed_target(sparsity, report)
    pruned = net.rebuild(new)
    if fold_batchnorm:
        pruned, report = _fold(pruned, x, net, report)
    result = PruneResult(model=pruned, masks=net.masks(new), report=report)
    _refuse_collapsed(result)
    return result


# The pruned outputs' variation over the calibration samples, relative to the original's,
# below which the model counts as collapsed (constant outputs measured 5e-6 of it).
COLLAPSE_SPREAD = 1e-3


class CollapsedModelError(RuntimeError):
    """``prune`` produced a model whose outputs no longer depend on its input.  The
    message names the emptiest layers; ``result`` holds the ``PruneResult`` for inspection."""

    def __init__(self, message: str, result: PruneResult):
        super().__init__(message)
        self.result = result


def _refuse_collapsed(result: PruneResult) -> None:
    report = result.report
    if not report.output_spread < COLLAPSE_SPREAD:
        return
    solved = [layer for layer in report.layers if layer.activation != "skipped"]
    emptiest = sorted(solved, key=lambda layer: layer.nnz_after / max(1, layer.N * layer.M))[:2]
    kept = ", ".join(f"{layer.name} keeps {layer.nnz_after} of {layer.N * layer.M}" for layer in emptiest)
    raise CollapsedModelError(
        f"the pruned model collapsed: its outputs vary {report.output_spread:.1e} times as much over the "
        f"calibration samples as the original's ({kept}); prune less (a lower sparsity or epsilon) or give "
        "more calibration samples (the pruned result is on this error's .result)",
        result,
    )


def _warn_missed_target(sparsity, report):
    """A global target missed by more than half a point: say so and the likely cause."""
    if not isinstance(sparsity, float) or report.nnz_before == 0:
        return
    reached = 1 - report.nnz_after / report.nnz_before
    if abs(reached - sparsity) > 0.005:
        rows = min(layer.rows for layer in report.layers)
        warnings.warn(
            f"sparsity target {sparsity:g} reached {reached:.4f}: a layer could not keep its count "
            f"(an l1 solution keeps at most about one nonzero per program row in each output unit, "
            f"{rows} rows here; more calibration samples or a lower target help)",
            RuntimeWarning,
            stacklevel=3,
        )


def _fold(model, x, net, report):
    from flax import nnx

    from nettrim_jax.network.folding import fold_batchnorm

    if not isinstance(model, nnx.Module):
        warnings.warn("fold_batchnorm applies to nnx.Module models only; BatchNorms kept", stacklevel=3)
        return model, report
    model, folded = fold_batchnorm(model, x, list(net.names))
    return model, report._replace(options={**report.options, "fold_batchnorm": folded})


def _bar(total, progress, scheme, initial):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"Net-Trim ({scheme})", unit="layer", leave=False)


def _epilogue_problems(net, x, orig, eps_of, done, cfg) -> dict:
    """Parallel scheme: the programs of layers behind an affine epilogue, on the original
    network (``network.epilogues``)."""
    out = {}
    for i, ep in enumerate(eps_of):
        if ep is not None and done[i] is None:
            c, u = epi.offsets(net, orig, x, i, ep)
            out[i] = epi.epilogue_problem(
                orig[i], net.first.inputs[i], jax.nn.relu(u), c, ep, cfg.max_patches, cfg.seed + i
            )
    return out
