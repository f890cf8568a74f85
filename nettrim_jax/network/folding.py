"""``prune(..., fold_batchnorm=True)``: fold each inference-mode ``nnx.BatchNorm`` that
directly follows a pruned ``nnx.Linear`` / ``nnx.Conv`` into that layer.

The pairs are found on the model's own forward pass (a BatchNorm whose input is the very
array a layer returned), not from names.  With a = scale / sqrt(var + eps) and
shift = bias - mean * a (per channel), the layer's kernel columns are multiplied by a (same
zeros), its bias becomes bias * a + shift, and the BatchNorm becomes the identity
(scale 1, var 1 - eps, mean 0, bias 0); a layer without a bias keeps the shift in the
BatchNorm (mean = -shift).  The folded model computes the same function (float rounding
aside).  Other BatchNorms, and every other model kind, are left as they are.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from nettrim_jax.network.tracing import path_name

__all__ = ["fold_batchnorm"]


def _pairs(model: nnx.Module, x) -> list[tuple]:
    """(layer path, BatchNorm path) for each BatchNorm fed directly by a Linear / Conv."""
    work = nnx.clone(model)
    work.eval()
    nodes = {id(n): tuple(p) for p, n in nnx.iter_graph(work) if isinstance(n, (nnx.Linear, nnx.Conv, nnx.BatchNorm))}
    outputs: dict = {}
    pairs: list = []
    keep: list = []  # keeps the recorded arrays alive, so their ids stay unique

    def layer_call(cls):
        def call(self, inp, *a, **k):
            z = cls.__call__(self, inp, *a, **k)
            keep.append(z)
            outputs[id(z)] = nodes[id(self)]
            return z

        return type(f"Fold{cls.__name__}", (cls,), {"__call__": call})

    def bn_call(cls):
        def call(self, inp, *a, **k):
            if id(inp) in outputs:
                pairs.append((outputs[id(inp)], nodes[id(self)]))
            return cls.__call__(self, inp, *a, **k)

        return type(f"Fold{cls.__name__}", (cls,), {"__call__": call})

    for _, n in nnx.iter_graph(work):
        if isinstance(n, nnx.BatchNorm):
            n.__class__ = bn_call(type(n))
        elif isinstance(n, (nnx.Linear, nnx.Conv)):
            n.__class__ = layer_call(type(n))
    work(x)
    return pairs


def _locate(model, path):
    node = model
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def fold_batchnorm(model: nnx.Module, x, layers: list[str]) -> tuple[nnx.Module, list[str]]:
    """A copy of ``model`` with the BatchNorms after the named layers folded in (module
    doc); returns (model, names of the folded layers)."""
    new = nnx.clone(model)
    folded = []
    for lpath, bpath in _pairs(model, x):
        if path_name(lpath) not in layers:
            continue
        layer, bn = _locate(new, lpath), _locate(new, bpath)
        var, mean = bn.var.get_value(), bn.mean.get_value()
        scale = bn.scale.get_value() if bn.scale is not None else jnp.ones_like(var)
        beta = bn.bias.get_value() if bn.bias is not None else jnp.zeros_like(var)
        a = scale / jnp.sqrt(var + bn.epsilon)
        shift = beta - mean * a
        layer.kernel.set_value(layer.kernel.get_value() * a)
        if bn.scale is not None:
            bn.scale.set_value(jnp.ones_like(scale))
        bn.var.set_value(jnp.full_like(var, 1.0 - bn.epsilon))
        if bn.bias is not None:
            bn.bias.set_value(jnp.zeros_like(beta))
        if layer.bias is not None:
            layer.bias.set_value(layer.bias.get_value() * a + shift)
            bn.mean.set_value(jnp.zeros_like(mean))
        else:
            bn.mean.set_value(-shift)
        folded.append(path_name(lpath))
    return new, folded
