"""What a pruning run reports: one schema (``LayerReport`` rows in a ``PruneReport``) and one
markdown renderer, shared by the library, the command line and the demo.

``PruneReport.to_dict()`` is the JSON form (the command line's ``report.json`` is that dict
plus a ``run`` block: data, checkpoint, accuracy); ``PruneReport.from_dict`` reads it back,
so ``nettrim report`` re-renders a stored run with the same code that printed it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "LayerReport",
    "PruneReport",
    "render_markdown",
    "CollapsedModelError",
    "COLLAPSE_SPREAD",
    "refuse_collapsed",
]


class LayerReport(NamedTuple):
    """One prunable layer.

    name: layer name (NNX attribute path, Linen scope path, or spec index); kind: "dense" |
    "conv"; activation: the program used ("relu", "linear", or "skipped"); N, M:
    dense-program input width (incl. the bias row) and outputs; rows: program rows P the
    solver saw; subsampled: rows < all patch rows; nnz_before / nnz_after: nonzero weights
    (kernel + bias); epsilon: absolute epsilon_l; misfit: achieved program misfit (absolute,
    same norm as epsilon); discrepancy: ||Z_l - Z_hat_l||_F / ||Z_l||_F along the pruned
    network on the calibration data (Z: post-ReLU output for ReLU layers, pre-activation
    otherwise); iterations, converged: solver outcome; seconds: wall time of this layer's
    solve (parallel scheme: from dispatch until its result was ready; layers overlap);
    reason: why this program ("relu", "linear (output layer)", "relu via affine epilogue
    relu(a*z + c)", "linear (followed by an op with no Net-Trim program)", "... (override)";
    ``activations.LayerChoice``; "" in reports written before it existed); refit_iterations:
    conjugate-gradient iterations of the layer's refit, N:M refit or l0 finish, each one
    product with the layer's rows X and one with X^T (or one with X^T X); 0 when none ran,
    and in reports written before it existed.
    """

    name: str
    kind: str
    activation: str
    N: int
    M: int
    rows: int
    subsampled: bool
    nnz_before: int
    nnz_after: int
    epsilon: float
    misfit: float
    discrepancy: float
    iterations: int
    converged: bool
    seconds: float
    reason: str = ""
    refit_iterations: int = 0


class PruneReport(NamedTuple):
    """Whole-network summary.

    scheme: "cascade" | "parallel"; gamma: cascade inflation (not used by parallel);
    layers: tuple of ``LayerReport``; nnz_before / nnz_after: the pruned layers' nonzero
    weights; output_discrepancy: relative, model output; output_error: absolute
    ||Y_L - Y_hat_L||_F of the last prunable layer; bound: the scheme's a priori bound on
    ``output_error`` (``nettrim_jax.network.bounds``; inf, None in JSON, when some layer has
    an affine epilogue: not derived there); seconds: total; options: every
    setting that shaped the result (epsilon, gamma, relative, output_epsilon, refit,
    per_neuron, solver, max_patches, seed, solver options), JSON-able; output_spread: how
    much of the model outputs' variation over the calibration samples the pruned model
    keeps, ||out - mean over samples||_F relative to the original's (near 0: the outputs
    no longer depend on the input, a collapsed model, which ``prune`` refuses to return);
    left_dense: name -> why, for every layer that holds a kernel and was left as it was (not
    called, a module Net-Trim does not prune, an Einsum that is not a projection, weights
    applied from outside the model's parameters); joint: how the joint refit ended
    (``network.joint.JointRefit`` as a dict: loss_before, loss_after, iterations, seconds,
    evaluations, stopped),
    empty without one.
    """

    scheme: str
    gamma: float
    layers: tuple
    nnz_before: int
    nnz_after: int
    output_discrepancy: float
    output_error: float
    bound: float
    seconds: float
    options: dict = {}
    output_spread: float = 1.0
    left_dense: dict = {}
    joint: dict = {}

    def to_dict(self) -> dict:
        """JSON-able dict (numbers as Python floats/ints; layers as dicts)."""
        d = self._asdict()
        d["layers"] = [dict(layer._asdict()) for layer in self.layers]
        if d["bound"] == float("inf"):
            d["bound"] = None  # no a priori bound (affine epilogues); JSON has no inf
        return json.loads(json.dumps(d, default=_plain))

    @classmethod
    def from_dict(cls, d: dict) -> PruneReport:
        """Inverse of ``to_dict`` (extra keys, such as the command line's ``run``, ignored)."""
        layers = tuple(LayerReport(**{k: row[k] for k in LayerReport._fields if k in row}) for row in d["layers"])
        fields = {k: d[k] for k in cls._fields if k in d and k != "layers"}
        if "bound" in fields and fields["bound"] is None:
            fields["bound"] = float("inf")
        return cls(layers=layers, **fields)

    def to_markdown(self, title: str | None = None, notes: Sequence[str] = ()) -> str:
        """The per-layer table and a summary line (see ``render_markdown``)."""
        return render_markdown(self, title, notes)


def _plain(x: Any):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _program(layer: LayerReport) -> str:
    """The program column: the program, and its reason when that says more."""
    if not layer.reason or layer.reason == layer.activation:
        return layer.activation
    if layer.reason.startswith(layer.activation):
        return layer.reason
    return f"{layer.activation}: {layer.reason}"


def _option_line(options: dict) -> str:
    shown = [f"{k} `{v}`" for k, v in options.items() if v is not None]
    return ", ".join(shown)


def converged_summary(report: PruneReport) -> str:
    """'k/n solves converged' over the solved layers (skipped ones left out), with the
    unconverged ones' count spelled out: the line a reader checks before trusting a result."""
    solved = [layer for layer in report.layers if layer.activation != "skipped"]
    ok = sum(bool(layer.converged) for layer in solved)
    text = f"{ok}/{len(solved)} solves converged"
    return text if ok == len(solved) else f"{text} ({len(solved) - ok} NOT certified)"


def render_markdown(report: PruneReport, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """GitHub markdown: optional ``# title``, the options, the per-layer table, the summary
    line (nonzeros, output discrepancy, output error against the bound), ``notes`` (one line
    each, e.g. accuracy), and a warning naming every layer whose solve did not converge."""
    lines = []
    if title:
        lines += [f"# {title}", ""]
    if report.options:
        lines += [_option_line(report.options), ""]
    lines += [
        "| layer | kind | program | N | M | rows | nnz before | nnz after | epsilon | "
        "discrepancy | iters | converged | refit CG | s |",
        "|" + "---|" * 14,
    ]
    for layer in report.layers:
        lines.append(
            f"| {layer.name} | {layer.kind} | {_program(layer)} | {layer.N} | {layer.M} | "
            f"{layer.rows}{'*' if layer.subsampled else ''} | {layer.nnz_before} | {layer.nnz_after} | "
            f"{layer.epsilon:.4g} | {layer.discrepancy:.4f} | {layer.iterations} | "
            f"{'yes' if layer.converged else 'NO'} | {layer.refit_iterations} | {layer.seconds:.2f} |"
        )
    keep = report.nnz_after / max(1, report.nnz_before)
    # the bound assumes every program was met; an unconverged solve may exceed it
    held = "<=" if report.output_error <= report.bound else "> (some layer missed its program)"
    bound = (
        f"{held} bound {report.bound:.4g}"
        if report.bound != float("inf")
        else "(no a priori bound through affine epilogues)"
    )
    scheme = f"{report.scheme} Net-Trim" + (f" (gamma={report.gamma:g})" if report.scheme == "cascade" else "")
    lines += [
        "",
        f"{scheme}: nonzeros {report.nnz_before} -> {report.nnz_after} ({100 * keep:.1f}% kept); "
        f"{converged_summary(report)}; output discrepancy {report.output_discrepancy:.4f}; output error "
        f"{report.output_error:.4g} {bound}; {report.seconds:.1f} s",
    ]
    if any(layer.subsampled for layer in report.layers):
        lines.append("* conv rows sampled (max_patches): the epsilon guarantee holds on the sampled rows.")
    lines += [f"Left dense: {name} ({why})." for name, why in report.left_dense.items()]
    if report.joint:
        j = report.joint
        lines.append(
            f"Joint refit: relative squared output error {j['loss_before']:.4g} -> {j['loss_after']:.4g} "
            f"in {j['iterations']} L-BFGS iterations, {j.get('evaluations', 0)} model passes "
            f"({j['seconds']:.1f} s; stopped: {j.get('stopped') or 'iterations'}); the layers' certificates are "
            "those of their solves before it."
        )
    lines += list(notes)
    bad = [layer.name for layer in report.layers if not layer.converged]
    if bad:
        lines.append(
            f"Warning: the solve did not converge for layer(s) {bad}; the kernels are usable but not certified optimal."
        )
    return "\n".join(lines) + "\n"


# The pruned outputs' variation over the calibration samples, relative to the original's,
# below which the model counts as collapsed (constant outputs measured 5e-6 of it).
COLLAPSE_SPREAD = 1e-3


class CollapsedModelError(RuntimeError):
    """``prune`` produced a model whose outputs no longer depend on its input.  The
    message names the emptiest layers; ``result`` holds the ``PruneResult`` for inspection."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result


def refuse_collapsed(result) -> None:
    """Raise ``CollapsedModelError`` when ``result.report``'s output spread is below
    ``COLLAPSE_SPREAD``."""
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
