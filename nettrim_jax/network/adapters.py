"""Adapters between models (NNX modules, Linen ``(module, variables)`` pairs, plain spec
sequences) and the layer-by-layer view that ``prune`` works on (the ``Adapter`` protocol of
``network.tracing``).

How the structure is found, without re-implementing the model: the model's own forward pass
is run once on the calibration batch while the prunable layers are intercepted, recording
each one's input and pre-activation output, in call order (``nnx_adapter``,
``linen_adapter``); plain spec sequences are run directly (``specs.apply_specs`` semantics).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

from nettrim_jax.network.linen_adapter import LinenAdapter
from nettrim_jax.network.nnx_adapter import NNXAdapter
from nettrim_jax.network.specs import Conv, apply_activation, apply_layer, is_spec
from nettrim_jax.network.tracing import (
    Adapter,
    Captured,
    InputShapeError,
    Recorder,
    conv_mismatch,
    dense_mismatch,
    first_forward,
)

__all__ = ["Adapter", "Captured", "NNXAdapter", "LinenAdapter", "SpecsAdapter", "adapt", "InputShapeError"]


class SpecsAdapter:
    """``prune`` view of a plain sequence of ``Dense`` / ``Conv`` specs and callables."""

    def __init__(self, network: Sequence, x):
        self.network = list(network)
        self._index = [i for i, item in enumerate(self.network) if is_spec(item)]
        if not self._index:
            raise ValueError("the network has no Dense or Conv layer")
        for item in self.network:
            if not is_spec(item) and not callable(item):
                raise TypeError(f"network items must be Dense/Conv specs or callables, got {type(item).__name__}")
        self.names = [str(i) for i in self._index]
        self.specs = [self.network[i] for i in self._index]
        self.first = first_forward(lambda: self.run(self.specs, x), x)
        self.unused: list[str] = []
        self.refused: dict = {}

    def run(self, specs, x, override=None) -> Captured:
        rec = Recorder(override, lambda k: self.names[k])
        layer = 0
        for item in self.network:
            if is_spec(item):
                spec = specs[layer]._replace(activation=item.activation)
                k = spec.kernel
                rec.check(
                    layer,
                    conv_mismatch(x, k)
                    if isinstance(spec, Conv)
                    else dense_mismatch(x, int(jnp.shape(k)[0]), flatten=True),
                )
                z = rec.record(layer, x, apply_layer(spec, x))
                x = apply_activation(item.activation, z)
                layer += 1
            else:
                x = item(x)
        return Captured(x, rec.inputs, rec.preacts)

    def pure(self):
        """``(fn, consts)``: ``fn(consts, specs, x)`` is the model's output, a pure function
        of the weights (jit- and grad-able)."""
        return (lambda _, specs, x: self.run(specs, x).output), None

    def rebuild(self, specs) -> list:
        out = list(self.network)
        for i, spec in zip(self._index, specs):
            out[i] = spec._replace(activation=self.network[i].activation)
        return out

    def masks(self, specs) -> list:
        """A list like the network: specs whose kernel/bias are bool arrays, None for
        callables."""
        out: list = [None] * len(self.network)
        for i, spec in zip(self._index, specs):
            out[i] = spec._replace(
                kernel=jnp.asarray(spec.kernel) != 0,
                bias=None if spec.bias is None else jnp.asarray(spec.bias) != 0,
                activation=self.network[i].activation,
            )
        return out


def adapt(model, x, model_kwargs: dict | None = None):
    """Pick the adapter for ``model`` (NNX module, Linen ``(module, variables)``, or specs).
    ``model_kwargs``: keyword arguments of every call of the model, ``model(x, **kw)`` /
    ``module.apply(variables, x, **kw)`` (e.g. ``{"train": False}``)."""
    kw = dict(model_kwargs or {})
    if isinstance(model, nnx.Module):
        return NNXAdapter(model, x, kw)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        return LinenAdapter(model[0], model[1], x, kw)
    if isinstance(model, (list, tuple)):
        if kw:
            raise ValueError("model_kwargs apply to NNX and Linen models; a spec network takes no call arguments")
        return SpecsAdapter(model, x)
    raise TypeError(
        "model must be an nnx.Module, a Linen (module, variables) pair, or a "
        f"sequence of Dense/Conv specs; got {type(model).__name__}"
    )
