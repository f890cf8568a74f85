"""``prune``'s options as three typed records, parsed once at the edge.

- ``Program``: what each layer's program is (scheme, epsilon and its rule, the ReLU budget,
  which layers get which program, the rows it is posed on);
- ``Target``: how much to prune and in what shape (a sparsity target and its allocation,
  unstructured / units / N:M, reweighting rounds);
- ``Run``: how to run it (solver and its options, scan, devices or mesh, progress, saving
  and resuming, how the model is called, BatchNorm folding).

``prune(model, x, Program(epsilon=0.1), Target(sparsity=0.9))`` and the flat form
``prune(model, x, epsilon=0.1, sparsity=0.9)`` are the same call; a keyword is applied on
top of the records.  ``gather`` checks every value before any work and refuses a keyword
that is no field of a record and no option of the chosen solver, listing the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from nettrim_jax.network import checks
from nettrim_jax.network.specs import Conv
from nettrim_jax.network.targets import parse_sparsity
from nettrim_jax.solver.options import check_solver_options, solver_option_names

__all__ = ["Program", "Target", "Run", "PruneOptions", "gather"]


@dataclasses.dataclass(frozen=True)
class Program:
    """What each layer's program is.

    Attributes:
      scheme: "cascade" (each layer fed the pruned layers before it) or "parallel".
      epsilon: the misfit budget, a scalar or one per prunable layer (cascade: entry 0 is
        epsilon_1, later entries are floors); relative to ||Y_l||_F unless ``relative``
        is False.
      gamma: cascade inflation of each layer's budget, >= 1.
      relative: epsilon as a fraction of ||Y_l||_F (True) or absolute.
      output_epsilon: cascade, linear output layer only: its own budget instead of the
        gamma rule (raised to 1.01 x the least-squares residual when below it).
      relu_budget: "output" (the ReLU output's error in one budget) or "omega" (the paper's
        program: misfit over Omega, XU <= V off it).
      per_neuron: one program per output unit (epsilon split by ||y_m||).
      activations: {layer name: "relu" | "linear" | "skip"} overrides.
      on_unsupported: "linear" | "error" | "skip" for layers behind an op with no program.
      max_patches: cap on a conv program's rows (a uniform random subset); None = all.
      seed: the row subset's seed.
      refit: refit each layer's kept weights to its response on the same rows.
      finish: "l0": after the refit, hard-thresholding steps at the layer's count that move
        its support while they lower the refit objective (``solver.l0``; with a
        ``structure``, whole units / channels at the layer's count of them; not with a
        pattern; the objective never rises); None: the refit alone; "auto" (the default):
        "l0" when ``refit`` is on and there is no N:M pattern, else None.
      joint_refit: at most this many L-BFGS iterations of a joint refit of every pruned
        layer's kept weights against the original model's output on the calibration data
        (``network.joint``; masks fixed, so counts are unchanged; it stops earlier when the
        output error stalls); 0: off; "auto" (the default): with ``refit``, at most
        ``JOINT_AUTO_ITERS`` iterations; on a model with a convolution only when the
        layer-wise result's relative squared output error is at least ``JOINT_AUTO_MIN_LOSS``
        (a convolution's gradient makes each iteration dear: ``joint_floor``); without
        ``refit``, off.
    """

    scheme: str = "cascade"
    epsilon: Any = 0.05
    gamma: float = 1.1
    relative: bool = True
    output_epsilon: float | None = None
    relu_budget: str = "output"
    per_neuron: bool = False
    activations: Mapping[str, str] | None = None
    on_unsupported: str = "linear"
    max_patches: int | None = 4096
    seed: int = 0
    refit: bool = False
    finish: str | None = "auto"
    joint_refit: int | str = "auto"


FINISHES = ("auto", "l0", None)
# joint_refit="auto": its iterations, and, on a model with a convolution, the layer-wise
# relative squared output error below which it is skipped (seed 0, test accuracy, 100
# iterations: LeNet-300-100 at 90 / 95 / 98%, errors 0.0078 / 0.025 / 0.082, +0.16 / +0.37 /
# +2.35 points in 4-8 s; LeNet-5 at 90%, error 0.0048, +0.03 points in 26 s).
JOINT_AUTO_ITERS = 100
JOINT_AUTO_MIN_LOSS = 0.005


def joint_floor(specs) -> float:
    """``joint_refit="auto"``'s error floor for a model of these layer ``specs``:
    ``JOINT_AUTO_MIN_LOSS`` when one is a convolution, else 0 (it always runs).  An iteration
    is one forward and backward pass over the calibration data; through a convolution that
    pass costs about 5x its forward on XLA's CPU backend (LeNet-5, 1000 images: 100
    iterations made a 4.5 s prune 30 s), through Dense layers little (LeNet-300-100, 4000
    rows: 4-8 s of a 40-50 s prune), and there it paid below the floor too (LeNet-300-100 on
    Fashion-MNIST, 3 seeds at 80% and 90%, errors 0.0004-0.0024: +0.02 to +0.27 points per
    seed, 90% from 0.09-0.19 behind ALPS to a tie)."""
    return JOINT_AUTO_MIN_LOSS if any(isinstance(s, Conv) for s in specs) else 0.0


@dataclasses.dataclass(frozen=True)
class Target:
    """How much to prune, and in what shape.

    Attributes:
      sparsity: None (epsilon decides), a fraction of the network's weights (kernel and
        bias) to remove, or {layer name: fraction}; each layer's epsilon is then searched.
      allocation: how a global sparsity is split: "scores" | "uniform" | "epsilon".
      structure: "unstructured" (||U||_1) or "units" / "neurons" / "channels" (group-l1
        over input rows: whole input units or channels removed; a Dense layer right after a
        Conv, reading its map flattened, loses whole channels of it).
      pattern: None or "N:M" (e.g. "2:4"), unstructured only.
      reweight: rounds of reweighted l1 per layer (>= 0), unstructured only.
    """

    sparsity: float | Mapping[str, float] | None = None
    allocation: str = "scores"
    structure: str = "unstructured"
    pattern: str | tuple[int, int] | None = None
    reweight: int = 0


@dataclasses.dataclass(frozen=True)
class Run:
    """How to run the prune.

    Attributes:
      solver: "admm" | "pdhg".
      solver_options: options of that solver (max_iters, gap_tol, ...; ``solve_layer``).
      scan: cascade only: "auto" / True use ``lax.scan`` over stacked square layers.
      devices: devices of the parallel scheme (default ``jax.devices()``).
      mesh: a ``jax.sharding.Mesh`` with axes ("samples", "units") for every layer's solve.
      progress: a tqdm bar over layers.
      on_layer: called with a ``PruneState`` after every finished step.
      resume: a ``PruneState`` of an interrupted run of the same prune.
      model_kwargs: keyword arguments of every call of the model (e.g. {"train": False}).
      fold_batchnorm: NNX models: fold each inference BatchNorm after a pruned layer into it.
    """

    solver: str = "admm"
    solver_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scan: Any = "auto"
    devices: Any = None
    mesh: Any = None
    progress: bool = True
    on_layer: Callable | None = None
    resume: Any = None
    model_kwargs: Mapping[str, Any] | None = None
    fold_batchnorm: bool = False


_RECORDS = (Program, Target, Run)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


class PruneOptions(NamedTuple):
    """The three records as given, and the values ``prune`` uses parsed from them.

    ``sparsity`` (float | {name: float} | None), ``structure`` ("unstructured" | "units"),
    ``pattern`` ((n, m) | None), ``reweight`` (rounds) and ``output_epsilon`` (float | None)
    are the parsed forms of the records' fields of those names; ``joint_iters`` and
    ``joint_min_loss`` are ``joint_refit``'s (``"auto"`` resolved: the joint refit runs at
    most ``joint_iters`` iterations when the layer-wise output error is >= ``joint_min_loss``;
    None: the model's ``joint_floor``, resolved by ``prune`` once it has the layers).
    """

    program: Program
    target: Target
    run: Run
    sparsity: float | dict | None
    structure: str
    pattern: tuple[int, int] | None
    reweight: int
    output_epsilon: float | None
    joint_iters: int = 0
    joint_min_loss: float | None = 0.0

    def keywords(self) -> dict[str, Any]:
        """The flat keywords of this call (solver options flattened in): ``prune(**kw)``."""
        out = {name: getattr(self.program, name) for name in _fields(Program)}
        out |= {name: getattr(self.target, name) for name in _fields(Target)}
        out |= {name: getattr(self.run, name) for name in _fields(Run) if name != "solver_options"}
        return out | dict(self.run.solver_options)


def gather(records: tuple, keywords: dict[str, Any]) -> PruneOptions:
    """``prune``'s positional records and flat keywords -> checked ``PruneOptions``.

    Raises ``TypeError`` for a positional argument that is not a record, a record given
    twice, or an unknown keyword (with the valid ones), and a one-line ``ValueError`` for a
    value out of range (scheme, gamma, epsilon, sparsity, structure, solver options, ...).
    """
    given: dict[type, Any] = {}
    for record in records:
        kind = type(record)
        if kind not in _RECORDS:
            raise TypeError(
                f"prune() takes the model, x and Program / Target / Run records positionally, "
                f"got {kind.__name__}; pass other options by keyword"
            )
        if kind in given:
            raise TypeError(f"prune() got two {kind.__name__} records")
        given[kind] = record
    program: Program = given.get(Program, Program())
    target: Target = given.get(Target, Target())
    run: Run = given.get(Run, Run())
    solver = keywords.get("solver", run.solver)
    fields = {cls: set(_fields(cls)) - {"solver_options"} for cls in _RECORDS}
    if solver not in checks.SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {checks.SOLVERS}")
    solver_names = set(solver_option_names(solver))
    unknown = set(keywords) - set().union(*fields.values()) - solver_names
    if unknown:
        valid = sorted(set().union(*fields.values()))
        raise TypeError(
            f"prune() got unknown keyword(s) {sorted(unknown)}; valid: {valid}, and the options of "
            f"solver={solver!r}: {sorted(solver_names)}"
        )
    program = dataclasses.replace(program, **{k: v for k, v in keywords.items() if k in fields[Program]})
    target = dataclasses.replace(target, **{k: v for k, v in keywords.items() if k in fields[Target]})
    solver_options = {**run.solver_options, **{k: v for k, v in keywords.items() if k in solver_names}}
    run = dataclasses.replace(
        run, solver_options=solver_options, **{k: v for k, v in keywords.items() if k in fields[Run]}
    )
    return _parsed(program, target, run)


def _parsed(program: Program, target: Target, run: Run) -> PruneOptions:
    checks.check_options(
        program.scheme,
        program.gamma,
        program.on_unsupported,
        run.solver,
        program.max_patches,
        run.scan,
        program.relu_budget,
    )
    for name, value in (("activations", program.activations), ("model_kwargs", run.model_kwargs)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a dict or None, got {type(value).__name__}")
    if not isinstance(run.solver_options, Mapping):
        raise ValueError(f"solver_options must be a dict, got {type(run.solver_options).__name__}")
    check_solver_options(run.solver, dict(run.solver_options))
    if program.finish not in FINISHES:
        raise ValueError(f"finish must be 'auto', 'l0' or None, got {program.finish!r}")
    joint = program.joint_refit
    if joint == "auto":
        joint_iters, joint_min_loss = (JOINT_AUTO_ITERS if program.refit else 0), None
    elif isinstance(joint, bool) or not isinstance(joint, int) or joint < 0:
        raise ValueError(f"joint_refit must be 'auto' or a number of iterations >= 0, got {joint!r}")
    else:
        joint_iters, joint_min_loss = joint, 0.0
    checks.check_epsilon_values(program.epsilon)
    sparsity = parse_sparsity(target.sparsity, target.allocation)
    structure, pattern = checks.parse_structure(target.structure, target.pattern, program.per_neuron)
    reweight = checks.reweight_rounds(target.reweight, structure)
    if program.finish == "auto":
        program = dataclasses.replace(program, finish="l0" if program.refit and pattern is None else None)
    output_epsilon = None
    if program.output_epsilon is not None:
        if program.scheme != "cascade":
            raise ValueError(
                "output_epsilon applies to scheme='cascade' only (parallel layers do not see the pruned features)"
            )
        output_epsilon = checks.epsilon_value(program.output_epsilon, what="output_epsilon")
    return PruneOptions(
        program, target, run, sparsity, structure, pattern, reweight, output_epsilon, joint_iters, joint_min_loss
    )
