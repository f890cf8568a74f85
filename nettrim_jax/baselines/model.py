"""The layer-wise baselines applied to a whole model of any kind
``prune`` accepts, at given per-layer counts: what Net-Trim is compared against.

Wanda, SparseGPT and ALPS run sequentially, as in their papers: layer l's calibration rows
are its inputs in the model whose layers before l are already pruned (the forward pass of
the model itself, so residual branches and BatchNorms are followed); magnitude needs no
data.  Conv layers are their patch matrix (at most ``max_rows`` random rows).  Biases are
kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from nettrim_jax.baselines.alps import alps
from nettrim_jax.baselines.common import keep_count
from nettrim_jax.baselines.magnitude import magnitude
from nettrim_jax.baselines.sparsegpt import sparsegpt
from nettrim_jax.baselines.wanda import wanda
from nettrim_jax.network.adapters import adapt
from nettrim_jax.network.specs import conv_groups, kernel_matrix, layer_rows, with_matrix

__all__ = ["METHODS", "prune_model"]

METHODS = ("magnitude", "wanda", "sparsegpt", "alps")


def _counts(names, specs, keeps) -> list[int]:
    sizes = [int(np.size(s.kernel)) for s in specs]
    if isinstance(keeps, dict):
        unknown = set(keeps) - set(names)
        if unknown:
            raise ValueError(f"keeps names unknown layer(s) {sorted(unknown)}; the model's are {names}")
        return [int(keeps.get(n, size)) for n, size in zip(names, sizes)]
    if np.ndim(keeps) == 0:  # a sparsity fraction, the same in every layer
        return [keep_count(size, float(keeps)) for size in sizes]
    if len(keeps) != len(specs):
        raise ValueError(f"keeps has {len(keeps)} entries, the model has {len(specs)} prunable layers")
    return [int(k) for k in keeps]


def prune_model(
    model, x, keeps, method: str, *, max_rows: int | None = 50_000, seed: int = 0, model_kwargs: dict | None = None
):
    """Prune every Dense / Conv / projection kernel of ``model`` with a baseline.

    Args:
      model: as ``prune`` (NNX module, Linen ``(module, variables)``, or specs).
      x: calibration inputs in the model's input layout.
      keeps: nonzero kernel weights per prunable layer: a list in call order, a dict
        {layer name: count} (layers not named stay dense), or one sparsity fraction for
        every layer.  ``PruneReport.layers[i].nnz_after`` minus the bias gives Net-Trim's.
      method: "magnitude" | "wanda" | "sparsegpt" | "alps".
      max_rows: cap on a layer's calibration rows (random subset, ``seed``); None = all.
      model_kwargs: keyword arguments of every call of the model, as ``prune``'s.

    Returns ``(model, masks)`` in the input's form (``prune``'s ``model`` and ``masks``).
    Grouped / depthwise convs are refused for the data-aware methods (their kernel matrix
    is block-diagonal; the baselines assume a dense one).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = jnp.asarray(x)
    net = adapt(model, x, model_kwargs)
    specs = list(net.specs)
    counts = _counts(list(net.names), specs, keeps)
    fns: dict[str, Callable[..., Any]] = {
        "wanda": wanda,
        "sparsegpt": sparsegpt,
        "alps": alps,
    }
    rng = np.random.default_rng(seed)
    for i, spec in enumerate(specs):
        bare = spec._replace(bias=None)
        if method == "magnitude":
            new = magnitude(kernel_matrix(bare), counts[i])
        else:
            if conv_groups(spec) > 1:
                raise ValueError(f"layer {net.names[i]!r}: {method} does not handle grouped convolutions")
            rows = layer_rows(spec, net.run(specs, x).inputs[i])
            if max_rows is not None and rows.shape[0] > max_rows:
                rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
            new = fns[method](kernel_matrix(bare), rows, counts[i])
        specs[i] = with_matrix(bare, new)._replace(bias=spec.bias)
    return net.rebuild(specs), net.masks(specs)
