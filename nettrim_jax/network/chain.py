"""Chain models as spec networks, and back as NNX.

* ``read_chain(model, x)``: a model (NNX module, Linen ``(module, variables)`` pair or spec
  network) whose forward pass is a chain of Dense / Conv layers, ReLUs, max/average pooling
  and flattening -> ``(spec network, input_shape)``.  The chain is read from the model's own
  forward pass on ``x`` (``adapters``): each prunable layer's activation is detected
  (``activations``), and the op between a layer's activation and the next layer's input is
  found by trying flatten, 2x2..4x4 max/average pooling (and pooling then flatten) and
  keeping the one that reproduces the recorded input exactly.  Anything else (a residual, a
  norm, attention) is a one-line ``ChainError``.
* ``to_nnx(network)``: a spec network as an ``nnx.Sequential`` of ``nnx.Linear`` /
  ``nnx.Conv`` (these weights) and the ReLU, pooling and flatten ops between them (what
  ``PruneResult.compact`` returns for an NNX chain: its widths are the compacted ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.activations import detect_activation
from nettrim_jax.network.adapters import adapt
from nettrim_jax.network.specs import Conv, Dense, Flatten, Pool, pair

__all__ = ["ChainError", "CHAIN_ACTIVATIONS", "read_chain", "to_nnx"]

# The activations a chain step may carry (the ones a sequential checkpoint stores).
CHAIN_ACTIVATIONS = ("relu", "linear")


class ChainError(ValueError):
    """The model is not a chain of Dense / Conv layers, ReLUs, pooling and flattening; the
    message is one line naming the step that is not."""


_CANDIDATES: list = (
    [[]]
    + [[Flatten()]]
    + [[Pool(kind, (k, k), (k, k))] + tail for k in (2, 3, 4) for kind in ("max", "avg") for tail in ([], [Flatten()])]
)


def _between(h, target, i) -> list:
    """The ops (a candidate list) that turn ``h`` into ``target`` exactly."""
    for ops in _CANDIDATES:
        out = h
        try:
            for op in ops:
                out = op(out)
        except (TypeError, ValueError):
            continue
        if out.shape == target.shape and bool(jnp.allclose(out, target, rtol=1e-5, atol=1e-6)):
            return list(ops)
    raise ChainError(
        f"model: what follows prunable layer {i} is not a chain step (ReLU, flatten, max/avg pooling); "
        "a residual, norm or attention model cannot be described as a chain"
    )


def read_chain(model, x) -> tuple[list, tuple]:
    """``(spec network, input_shape)`` of a chain model, read from its forward pass on ``x``
    (a few calibration samples, batch first): Dense / Conv specs with their activation
    ("relu" or "linear") and the ``Pool`` / ``Flatten`` ops between them.  See the module doc."""
    x = jnp.asarray(x)
    net = adapt(model, x)
    base = net.first
    L = len(net.specs)
    items: list = [Flatten()] if base.inputs[0].ndim == 2 and x.ndim > 2 else []
    if items and not bool(jnp.array_equal(base.inputs[0], x.reshape(x.shape[0], -1))):
        raise ChainError("model: its input reaches the first layer through ops other than flatten")
    if not items and not bool(jnp.array_equal(base.inputs[0], x)):
        raise ChainError("model: its input reaches the first layer through ops a chain cannot describe")
    for i, spec in enumerate(net.specs):
        act = spec.activation
        if act is None:
            act = detect_activation(net, net.specs, x, i, base) if i < L - 1 else "linear"
        if act not in CHAIN_ACTIVATIONS:
            raise ChainError(
                f"model: layer {net.names[i]!r} is followed by neither a ReLU nor nothing (a norm, a residual add "
                "or another activation); a residual, norm or attention model cannot be described as a chain"
            )
        items.append(spec._replace(activation=act))
        z = base.preacts[i]
        h = jnp.maximum(z, 0) if act == "relu" else z
        target = base.inputs[i + 1] if i + 1 < L else base.output
        if not isinstance(target, jnp.ndarray):
            raise ChainError("model: its output is not a single array")
        items += _between(h, target, i)
    return items, tuple(int(a) for a in x.shape[1:])


def _nnx_layer(spec):
    from flax import nnx

    k = np.asarray(spec.kernel)
    rngs = nnx.Rngs(0)  # the initial values are replaced at once
    if isinstance(spec, Dense):
        mod = nnx.Linear(k.shape[0], k.shape[1], use_bias=spec.bias is not None, rngs=rngs)
    else:
        kh, kw, i, o = k.shape
        mod = nnx.Conv(
            i * spec.groups,
            o,
            (kh, kw),
            strides=pair(spec.strides, "strides"),
            padding=spec.padding,
            kernel_dilation=pair(spec.dilation, "dilation"),
            feature_group_count=spec.groups,
            use_bias=spec.bias is not None,
            rngs=rngs,
        )
    mod.kernel.set_value(jnp.asarray(k))
    if spec.bias is not None:
        mod.bias.set_value(jnp.asarray(spec.bias))
    return mod


def to_nnx(network: Sequence):
    """An ``nnx.Sequential`` computing the spec network ``network`` (Dense / Conv specs with
    "relu" or "linear" activations, ``Pool`` and ``Flatten`` ops): same outputs."""
    from flax import nnx

    items: list = []
    for item in network:
        if isinstance(item, (Dense, Conv)):
            if item.activation not in ("relu", "linear", None):
                raise ValueError(f"to_nnx: activation {item.activation!r} is not relu or linear")
            items.append(_nnx_layer(item))
            if item.activation == "relu":
                items.append(nnx.relu)
        elif isinstance(item, (Pool, Flatten)):
            items.append(item)
        else:
            raise ValueError(f"to_nnx: {type(item).__name__} is not a Dense/Conv spec, Pool or Flatten")
    return nnx.Sequential(*items)
