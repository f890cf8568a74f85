"""The pruned network evaluated on the calibration data, and its ``PruneReport``."""

from __future__ import annotations

import time
import warnings

import jax
import numpy as np

from nettrim_jax.network import epilogues as epi
from nettrim_jax.network.activations import model_output
from nettrim_jax.network.bounds import output_bound
from nettrim_jax.network.compiled import fro
from nettrim_jax.network.report import LayerReport, PruneReport
from nettrim_jax.network.specs import Conv
from nettrim_jax.network.tracing import left_dense

__all__ = ["build_report", "warn_if_pruned_to_zero"]


def nnz(spec) -> int:
    n = int(np.count_nonzero(np.asarray(spec.kernel)))
    return n + (0 if spec.bias is None else int(np.count_nonzero(np.asarray(spec.bias))))


def warn_if_pruned_to_zero(name, nnz_before: int, nnz_after: int) -> None:
    """One-line RuntimeWarning when a layer that had weights kept none (kernel and bias all
    zero): its output no longer depends on the input, which a too-large epsilon (or a
    layer dead on the calibration data) does silently."""
    if nnz_before > 0 and nnz_after == 0:
        warnings.warn(
            f"layer {name} was pruned to all zeros (kernel and bias): its output no longer "
            "depends on the input; epsilon too large, or the layer is dead on this data?",
            RuntimeWarning,
            stacklevel=4,
        )


def build_report(net, x, scheme, orig, new, choices, outcomes, gamma, options, t_start) -> PruneReport:
    """Evaluate the pruned network on the calibration data and assemble the report.  Layers
    behind an affine epilogue report their discrepancy on relu(a z + c), and the a priori
    bound is not derived for them (inf)."""
    base = net.first
    final = net.run(new, x)
    layers = []
    programs = [c.program for c in choices]
    tapped = any(c.epilogue is not None for c in choices)
    relus0 = epi.run_tapped(net, orig, x)[1] if tapped else []
    relus1 = epi.run_tapped(net, new, x)[1] if tapped else []
    for i, (spec, prog, out) in enumerate(zip(orig, programs, outcomes)):
        z0, z1 = base.preacts[i], final.preacts[i]
        if choices[i].epilogue is not None:
            k = choices[i].epilogue.relu_call
            z0, z1 = jax.nn.relu(relus0[k]), jax.nn.relu(relus1[k])
        elif prog == "relu":
            z0, z1 = jax.nn.relu(z0), jax.nn.relu(z1)
        layers.append(
            LayerReport(
                name=net.names[i],
                kind="conv" if isinstance(spec, Conv) else "dense",
                activation=prog,
                N=out.N,
                M=out.M,
                rows=out.rows,
                subsampled=out.subsampled,
                nnz_before=nnz(spec),
                nnz_after=nnz(new[i]),
                epsilon=out.epsilon,
                misfit=out.misfit,
                discrepancy=fro(z0, z1) / max(fro(z0), 1e-30),
                iterations=out.iterations,
                converged=out.converged,
                seconds=out.seconds,
                reason=choices[i].reason,
                refit_iterations=out.refit_iterations,
            )
        )
        warn_if_pruned_to_zero(net.names[i], layers[-1].nnz_before, layers[-1].nnz_after)
    out0, out1 = model_output(base), model_output(final)
    last0, last1 = base.preacts[-1], final.preacts[-1]
    if programs[-1] == "relu":
        last0, last1 = jax.nn.relu(last0), jax.nn.relu(last1)
    return PruneReport(
        scheme=scheme,
        gamma=gamma,
        layers=tuple(layers),
        nnz_before=sum(layer.nnz_before for layer in layers),
        nnz_after=sum(layer.nnz_after for layer in layers),
        output_discrepancy=fro(out0, out1) / max(fro(out0), 1e-30),
        output_error=fro(last0, last1),
        bound=(
            float("inf")
            if any(c.epilogue is not None for c in choices)
            else output_bound(scheme, orig, programs, outcomes, gamma)
        ),
        seconds=time.perf_counter() - t_start,
        options=options,
        output_spread=_spread_kept(out0, out1),
        left_dense=left_dense(net),
    )


def _spread_kept(out0, out1) -> float:
    """spread(out1) / spread(out0); 1 when the original outputs are already constant on the
    calibration data (nothing to lose: a network dead there)."""
    s0 = spread(out0)
    return spread(out1) / s0 if s0 > 1e-12 * max(1.0, float(np.max(np.abs(np.asarray(out0))))) else 1.0


def spread(out) -> float:
    """||out - its mean over samples (axis 0)||_F: how much the outputs vary with the input."""
    out = np.asarray(out, np.float64)
    return float(np.linalg.norm(out - out.mean(axis=0, keepdims=True)))
