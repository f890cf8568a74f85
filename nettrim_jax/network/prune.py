"""``prune``: Net-Trim over a whole network, the one route from every entry point (library,
command line, demo, notebook) to the layer solver.

    prune(model, x, [Program(...), Target(...), Run(...)], **keywords) -> PruneResult

``model`` is an ``nnx.Module``, a Linen ``(module, variables)`` pair, or a sequence of
``Dense`` / ``Conv`` specs and plain callables (``network.adapters``); ``x`` a batch of
calibration inputs in the model's layout; the options are three records or their flat
keywords (``network.options``).  Nothing is mutated.  The stages, each a function here over
modules of their own:

0. the options checked and parsed (``network.options.gather``),
1. ``_adapted``: input checks (``network.checks``) and the first forward pass (``adapters``),
2. ``_plan``: one program per layer (``network.activations``: ReLU, linear, or skipped) and
   its budget (an epsilon, or a keep count of a sparsity target: ``network.targets``),
3. ``_solve``: the scheme (``network.cascade`` / ``network.parallel``) solving each layer's
   program (``network.problems`` -> ``solver.solve_layer``), reporting each finished step to
   ``on_layer`` and continuing a ``resume`` state,
4. ``_finish``: the pruned model and its report (``network.evaluation``) with the scheme's
   a priori bound (``network.bounds``), a collapsed model refused (``network.report``).

Epsilon: one value or one per prunable layer; with ``relative=True`` (default) epsilon_l =
value x ||Y_l||_F (Y_l the program's target on its rows), otherwise absolute.
"""

from __future__ import annotations

import time
import warnings
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
from nettrim_jax.network.compiled import release_if_crowded
from nettrim_jax.network.evaluation import build_report
from nettrim_jax.network.joint import joint_refit
from nettrim_jax.network.options import Program, PruneOptions, Run, Target, gather, joint_floor
from nettrim_jax.network.parallel import solve_parallel
from nettrim_jax.network.problems import LayerOutcome, SolveConfig
from nettrim_jax.network.report import CollapsedModelError, PruneReport, refuse_collapsed  # noqa: F401  (re-export)
from nettrim_jax.network.specs import Conv, Dense, kernel_matrix, with_matrix
from nettrim_jax.network.targets import keep_counts, kernel_sizes, prune_at_one_epsilon

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
        Conv, ReLU, pooling, flatten: ``chain.read_chain``) as an ``nnx.Sequential``
        of the compacted layers (``chain.to_nnx``; its classes fix their widths at
        construction, so the original class cannot hold them); a Linen chain as the
        compacted spec network (Linen variables would need a new module definition).
        ``x``: a few inputs to read an NNX / Linen chain from its forward pass; ``module``:
        the Linen module (a Linen result holds only its variables)."""
        from nettrim_jax.network.chain import read_chain, to_nnx
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
        specs = compact_network(read_chain(model, x)[0])
        return to_nnx(specs) if isinstance(model, nnx.Module) else specs


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


def prune(model, x, *records: Program | Target | Run, **keywords: Any) -> PruneResult:
    """Prune every Dense / Conv layer of ``model`` with Net-Trim (see the module doc).

    ``prune(model, x, Program(...), Target(...), Run(...))`` or, the same call, with flat
    keywords: any field of the three records (``network.options``) or any option of the
    chosen solver (``max_iters``, ``gap_tol``, ...; ``solve_layer``), applied on top of
    the records.  The stages: adapt the model (``_adapted``), plan each layer's program and
    budget (``_plan``), solve the layers in the scheme (``_solve``), and finish the pruned
    model and its report (``_finish``).

    Args:
      model: ``nnx.Module`` | Linen ``(module, variables)`` | sequence of specs/callables.
      x: calibration inputs (P0, ...) in the model's input layout.
      *records: at most one each of ``Program`` (what each layer's program is: scheme,
        epsilon, gamma, relative, output_epsilon, relu_budget, per_neuron, activations,
        on_unsupported, max_patches, seed, refit), ``Target`` (how much to prune: sparsity,
        allocation, structure, pattern, reweight) and ``Run`` (how to run it: solver,
        solver_options, scan, devices, mesh, progress, on_layer, resume, model_kwargs,
        fold_batchnorm).  Each field is documented on its record.
      **keywords: any of those fields, or a solver option.

    Some fields in short (the records say more):
      scheme "cascade" | "parallel"; epsilon scalar or one per prunable layer (cascade: entry
      0 is epsilon_1, later entries are floors), relative to ||Y_l||_F unless
      ``relative=False``; gamma >= 1 the cascade inflation; output_epsilon the cascade's
      linear output layer's own budget; relu_budget "output" (default: the ReLU output's
      error) or "omega" (the paper's program); refit: each layer's kept weights refit to
      its response on the same rows (misfit^2 + excess^2 never worse, so every bound holds),
      then the l0 finish at each layer's count unless ``finish=None`` (``Program.finish``),
      then a joint refit of every layer's kept weights to the model's output (on a model
      with a convolution only where its output error is >= 0.005) unless ``joint_refit=0``
      (``Program.joint_refit``);
      sparsity a target instead of an epsilon (the fraction of kernel and bias weights
      removed, global or {layer name: fraction}; each layer's epsilon is then searched,
      ``network.targets``) split by allocation "scores" | "uniform" | "epsilon";
      structure "unstructured" | "units" (whole input units / channels, certified like the
      l1 program; ``result.compact()`` removes them); pattern "N:M"; reweight rounds of
      reweighted l1; on_layer / resume: save and continue an interrupted run (``PruneState``);
      model_kwargs: keyword arguments of every model call, e.g. ``{"train": False}`` (NNX
      models are called in ``eval()`` mode either way); fold_batchnorm: fold inference
      BatchNorms after pruned NNX layers into them.

    Returns: ``PruneResult(model, masks, report)``.

    Raises ``TypeError`` for an unknown keyword (listing the valid ones) or a positional
    argument that is not a record, and ``ValueError`` (one line, before any solve) for: an
    unknown scheme / solver, gamma < 1, a negative or non-finite epsilon (scalar or any
    entry) or a wrong entry count, ``output_epsilon`` that is negative, non-finite, given
    with ``scheme="parallel"`` or for a model whose output layer is not linear (or is
    skipped), empty calibration data, NaN/Inf in ``x`` or in any prunable layer's
    kernel/bias (named), a layer input or pre-activation that is non-finite on ``x``
    (overflow), ``x`` whose shape does not fit the model (``adapters.InputShapeError``,
    naming ``x``'s shape and the layer's expected input), an override the forward pass
    contradicts, and a ``resume`` state that does not fit.  ``CollapsedModelError`` when
    the pruned model's outputs collapsed (``network.report``).
    """
    opts = gather(records, keywords)
    t_start = time.perf_counter()
    release_if_crowded()  # a process near the kernel's mapping limit would crash in XLA
    raw_x = x
    x = checks.check_calibration(x)
    net = _adapted(model, x, opts)
    if opts.target.allocation == "epsilon" and isinstance(opts.sparsity, float):  # dicts are refused there
        return prune_at_one_epsilon(prune, {"model": model, "x": raw_x, **opts.keywords()}, opts.sparsity)
    plan = _plan(net, x, opts)
    outcomes = _solve(net, x, plan, opts)
    return _finish(net, x, plan, outcomes, opts, t_start)


def _adapted(model, x, opts: PruneOptions):
    """Stage 1: the model as a traced network (first forward pass), its weights and
    activations checked; warnings for layers the forward pass does not call or that stay."""
    net = adapt(model, x, _dict(opts.run.model_kwargs))  # shape mismatches -> InputShapeError
    checks.check_layers(net)
    checks.check_weights(net)
    checks.check_forward(net)
    for name in net.unused:
        warnings.warn(f"layer {name!r} is not called by the forward pass; left unchanged", stacklevel=3)
    for name, why in getattr(net, "refused", {}).items():
        warnings.warn(f"layer {name!r} left unpruned: {why}", stacklevel=3)
    return net


def _dict(mapping) -> dict | None:
    return None if mapping is None else dict(mapping)


class _Plan(NamedTuple):
    """Stage 2's result: per prunable layer, its original spec (``orig``), its outcome when
    a resumed run finished it (``done``), its program choice (``choices``: program and
    epilogue) and epsilon entry (``epsilons``); ``cfg`` the settings every solve shares."""

    orig: list
    done: list
    choices: list
    epsilons: list
    cfg: SolveConfig


def _plan(net, x, opts: PruneOptions) -> _Plan:
    """Stage 2: each layer's program and budget (an epsilon entry, or a keep count of the
    sparsity target), and the settings shared by every solve."""
    program, target, run = opts.program, opts.target, opts.run
    orig = list(net.specs)
    done = _check_resume(run.resume, program.scheme, orig)
    epsilons, per_layer = checks.epsilon_list(program.epsilon, len(orig))
    choices = choose_layers(net, x, net.first, _dict(program.activations), program.on_unsupported)
    programs = [c.program for c in choices]
    if opts.output_epsilon is not None and programs[-1] != "linear":
        raise ValueError(
            f"output_epsilon needs a linear output layer to refit; layer {net.names[-1]!r} has program {programs[-1]!r}"
        )
    keep = None
    if opts.sparsity is not None:
        targeted = list(programs)
        if opts.output_epsilon is not None:
            targeted[-1] = "skipped"  # the output layer keeps its own budget
        keep = keep_counts(
            net.names, orig, net.first.inputs, targeted, opts.sparsity, target.allocation, program.max_patches
        )
    cfg = SolveConfig(
        per_neuron=bool(program.per_neuron),
        solver=run.solver,
        opts=tuple(sorted({**run.solver_options, "relu_budget": program.relu_budget}.items())),
        relative=bool(program.relative),
        max_patches=program.max_patches,
        seed=int(program.seed),
        gamma=float(program.gamma),
        per_layer=per_layer,
        refit=bool(program.refit),
        output_epsilon=opts.output_epsilon,
        keep=keep or (),
        carry=not isinstance(opts.sparsity, dict),
        sizes=tuple(kernel_sizes(orig)),
        structure=opts.structure,
        pattern=opts.pattern,
        mesh=run.mesh,
        reweight=opts.reweight,
        finish=program.finish,
        flat_channels=_flat_channels(orig) if opts.structure == "units" else (),
    )
    return _Plan(orig, done, choices, epsilons, cfg)


def _flat_channels(orig: list) -> tuple:
    """Per layer, C when it is a Dense layer right after a Conv of C output channels with a
    multiple of C inputs above C (it reads that conv's NHWC feature map flattened, pooled or
    not, as ``compact`` reads it), else 0: ``structure="units"`` then removes channels."""
    out = [0]
    for prev, spec in zip(orig[:-1], orig[1:]):
        c = int(prev.kernel.shape[-1]) if isinstance(prev, Conv) else 0
        n = int(spec.kernel.shape[0])
        out.append(c if isinstance(spec, Dense) and c and n > c and n % c == 0 else 0)
    return tuple(out)


def _solve(net, x, plan: _Plan, opts: PruneOptions) -> list[LayerOutcome]:
    """Stage 3: every layer's program solved in the scheme, each finished step reported to
    ``on_layer`` as a ``PruneState`` (and to the progress bar)."""
    scheme, run = opts.program.scheme, opts.run
    done = list(plan.done)
    programs = [c.program for c in plan.choices]
    epilogues = [c.epilogue for c in plan.choices]
    bar = _bar(len(plan.orig), run.progress, scheme, sum(o is not None for o in done))

    def finished(step: dict[int, LayerOutcome]):
        for i, out in step.items():
            done[i] = out
        if bar is not None:
            bar.update(len(step))
        if run.on_layer is not None:
            run.on_layer(PruneState(scheme, tuple(done)))

    try:
        if scheme == "parallel":
            return solve_parallel(
                plan.orig,
                net.first,
                programs,
                plan.epsilons,
                plan.cfg,
                run.devices,
                done,
                on_layer=lambda i, out: finished({i: out}),
                prebuilt=_epilogue_problems(net, x, plan.orig, epilogues, plan.done, plan.cfg),
            )
        return solve_cascade(
            net, x, programs, plan.epsilons, plan.cfg, run.scan, done, on_layers=finished, epilogues=epilogues
        )
    finally:
        if bar is not None:
            bar.close()


def _finish(net, x, plan: _Plan, outcomes, opts: PruneOptions, t_start: float) -> PruneResult:
    """Stages 4-5: the pruned model (BatchNorms folded when asked) and its report; refuses a
    collapsed model (``CollapsedModelError``) and warns on a missed sparsity target."""
    new = [
        spec if out.kernel is None else with_matrix(spec, jnp.asarray(out.kernel))
        for spec, out in zip(plan.orig, outcomes)
    ]
    joint = None
    floor = joint_floor(plan.orig) if opts.joint_min_loss is None else opts.joint_min_loss
    opts = opts._replace(joint_min_loss=floor)
    if opts.joint_iters:
        pruned = [out.kernel is not None for out in outcomes]
        new, joint = joint_refit(net, x, new, pruned, opts.joint_iters, min_loss=floor)
    scheme = opts.program.scheme
    report = build_report(
        net,
        x,
        scheme,
        plan.orig,
        new,
        plan.choices,
        outcomes,
        float(opts.program.gamma),
        _report_options(opts),
        t_start,
    )
    if joint is not None:
        report = report._replace(joint=joint._asdict())
    if opts.output_epsilon is None:  # else the output layer keeps its budget, not a share of S
        _warn_missed_target(opts.sparsity, report, plan.cfg.keep)
    pruned = net.rebuild(new)
    if opts.run.fold_batchnorm:
        pruned, report = _fold(pruned, x, net, report)
    result = PruneResult(model=pruned, masks=net.masks(new), report=report)
    refuse_collapsed(result)
    return result


def _report_options(opts: PruneOptions) -> dict:
    """The options the report records (and the CLI writes to report.json)."""
    p = opts.program
    eps = p.epsilon if np.ndim(p.epsilon) == 0 and not isinstance(p.epsilon, (list, tuple)) else list(p.epsilon)
    return {
        "epsilon": eps,
        "gamma": float(p.gamma),
        "relative": bool(p.relative),
        "output_epsilon": opts.output_epsilon,
        "refit": bool(p.refit),
        "per_neuron": bool(p.per_neuron),
        "solver": opts.run.solver,
        "max_patches": p.max_patches,
        "seed": int(p.seed),
        **opts.run.solver_options,
        "sparsity": opts.sparsity,
        "allocation": opts.target.allocation if opts.sparsity is not None else None,
        "structure": opts.structure,
        "pattern": None if opts.pattern is None else f"{opts.pattern[0]}:{opts.pattern[1]}",
        "relu_budget": p.relu_budget,
        "reweight": opts.reweight,
        "finish": p.finish,
        "joint_refit": p.joint_refit if isinstance(p.joint_refit, str) else int(p.joint_refit),
        "joint_iters": opts.joint_iters,
        "joint_min_loss": opts.joint_min_loss,
    }


def _warn_missed_target(sparsity, report, keep=()):
    """A global target missed by more than half a point: say so, which layer is furthest from
    the count it was asked for (``keep``: per-layer counts after the carried misses), and the
    likely cause (warned at the caller of ``prune``, through ``_finish``)."""
    if not isinstance(sparsity, float) or report.nnz_before == 0:
        return
    reached = 1 - report.nnz_after / report.nnz_before
    if abs(reached - sparsity) <= 0.005:
        return
    asked = [(abs(layer.nnz_after - k), layer, k) for layer, k in zip(report.layers, keep) if k is not None]
    if asked:
        _, layer, k = max(asked, key=lambda t: t[0])
        where = f"layer {layer.name!r} kept {layer.nnz_after} of the {k} asked, {layer.rows} program rows"
    else:
        where = f"{min(layer.rows for layer in report.layers)} program rows in the smallest layer"
    warnings.warn(
        f"sparsity target {sparsity:g} reached {reached:.4f}: a layer could not keep its count "
        f"({where}; an l1 solution keeps at most about one nonzero per program row in each output "
        f"unit, so more calibration samples or a lower target help)",
        RuntimeWarning,
        stacklevel=4,
    )


def _fold(model, x, net, report):
    from flax import nnx

    from nettrim_jax.network.folding import fold_batchnorm

    if not isinstance(model, nnx.Module):
        warnings.warn("fold_batchnorm applies to nnx.Module models only; BatchNorms kept", stacklevel=4)
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
