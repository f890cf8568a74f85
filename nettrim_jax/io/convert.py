"""Between models and the checkpoint's layer dicts: one converter, one forward interpreter.

* ``from_model(model, x)``: any supported model (an NNX module, a Linen ``(module,
  variables)`` pair, or a spec network) whose forward pass is a chain of Dense / Conv layers,
  ReLUs, max/average pooling and flattening -> ``(layer dicts, input_shape)``, read from the
  model's forward pass on ``x`` (``network.chain.read_chain``).  Anything else (a residual,
  a norm, attention) is refused with a one-line ``CheckpointError``: a sequential
  ``model.json`` cannot describe it.
* ``to_network(layers)`` / ``from_network(network)``: layer dicts <-> a spec network
  (``Dense`` / ``Conv`` specs, ``Pool`` / ``Flatten`` ops), the form ``prune`` takes.
* ``apply(layers, x)``: the layer dicts' forward pass (``specs.apply_specs``, in batches).
* ``load_into(model, layers, x)``: a pruned checkpoint's weights written into one's own model
  (a new NNX module or new Linen variables; the input is not mutated).
* ``to_nnx(network)``: a spec network as an ``nnx.Sequential`` (``network.chain.to_nnx``,
  re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from nettrim_jax.io.checkpoint import ACTIVATIONS, OP_TYPES, PARAM_TYPES, CheckpointError
from nettrim_jax.network.chain import ChainError, read_chain, to_nnx
from nettrim_jax.network.specs import Conv, Dense, Flatten, Pool, apply_specs, pair

__all__ = ["from_model", "to_network", "from_network", "apply", "load_into", "to_nnx"]


def _arr(a):
    return None if a is None else np.asarray(a)


def to_network(layers: Sequence[dict]) -> list:
    """Layer dicts -> a spec network for ``nettrim_jax.prune``."""
    net: list = []
    for layer in layers:
        t = layer["type"]
        if t == "dense":
            net.append(Dense(np.asarray(layer["kernel"]), _arr(layer["bias"]), layer["activation"]))
        elif t == "conv":
            pad = layer["padding"]
            net.append(
                Conv(
                    np.asarray(layer["kernel"]),
                    _arr(layer["bias"]),
                    layer["activation"],
                    tuple(layer["strides"]),
                    pad if isinstance(pad, str) else tuple(map(tuple, pad)),
                    tuple(layer["dilation"]),
                )
            )
        elif t == "flatten":
            net.append(Flatten())
        else:
            pad = layer["padding"]
            net.append(
                Pool(
                    t[:3],
                    tuple(layer["window"]),
                    tuple(layer["strides"]),
                    pad if isinstance(pad, str) else tuple(map(tuple, pad)),
                )
            )
    return net


def _activation(a, i) -> str:
    if a in ACTIVATIONS:
        return a
    if a is None:
        return "linear"
    name = getattr(a, "__name__", repr(a))
    raise CheckpointError(
        f"model: layer {i} has activation {name!r}; a checkpoint stores only {', '.join(ACTIVATIONS)}"
    )


def _padding(pad):
    return pad.upper() if isinstance(pad, str) else [list(p) for p in pad]


def from_network(network: Sequence) -> list:
    """A spec network (specs, ``Pool``, ``Flatten``) -> layer dicts; a callable it cannot
    describe is a ``CheckpointError``."""
    out = []
    for i, item in enumerate(network):
        if isinstance(item, Dense):
            out.append(
                {
                    "type": "dense",
                    "activation": _activation(item.activation, i),
                    "kernel": np.asarray(item.kernel),
                    "bias": _arr(item.bias),
                }
            )
        elif isinstance(item, Conv):
            out.append(
                {
                    "type": "conv",
                    "activation": _activation(item.activation, i),
                    "kernel": np.asarray(item.kernel),
                    "bias": _arr(item.bias),
                    "strides": list(pair(item.strides)),
                    "dilation": list(pair(item.dilation)),
                    "padding": _padding(item.padding),
                }
            )
        elif isinstance(item, Flatten):
            out.append({"type": "flatten"})
        elif isinstance(item, Pool):
            out.append(
                {
                    "type": f"{item.kind}pool",
                    "window": list(pair(item.window)),
                    "strides": list(pair(item.strides)),
                    "padding": _padding(item.padding),
                }
            )
        else:
            raise CheckpointError(
                f"model: item {i} ({type(item).__name__}) cannot be stored; "
                f"supported: {', '.join(PARAM_TYPES + OP_TYPES)}"
            )
    return out


def apply(layers: Sequence[dict], x, batch_size: int = 4096) -> np.ndarray:
    """The layer dicts' outputs on ``x`` (P, *input_shape), as numpy, in batches."""
    net = to_network(layers)
    outs = [
        np.asarray(apply_specs(net, jnp.asarray(x[s : s + batch_size], jnp.float32)))
        for s in range(0, max(len(x), 1), batch_size)
    ]
    return np.concatenate(outs, 0)


def from_model(model, x) -> tuple[list, tuple]:
    """``(layer dicts, input_shape)`` of a chain model, read from its forward pass on ``x``
    (a few calibration samples, batch first; ``network.chain.read_chain``).  A model that is
    not a chain is a one-line ``CheckpointError``: a sequential ``model.json`` cannot
    describe it (save a residual or attention model with the orbax route instead)."""
    try:
        network, input_shape = read_chain(model, x)
    except ChainError as e:
        raise CheckpointError(f"{e}; save it with the orbax route instead") from None
    return from_network(network), input_shape


def load_into(model, layers: Sequence[dict], x):
    """``model`` with the prunable weights of ``layers`` (a checkpoint's layer dicts, e.g.
    ``checkpoint.load(path).layers``) written in, in call order: a new NNX module or new Linen
    variables.  ``x``: a few inputs to trace the model with.  Shapes must match."""
    from nettrim_jax.network.adapters import adapt

    net = adapt(model, jnp.asarray(x))
    specs = [s for s in to_network(layers) if isinstance(s, (Dense, Conv))]
    if len(specs) != len(net.specs):
        raise CheckpointError(f"model has {len(net.specs)} prunable layers, the checkpoint {len(specs)}")
    new = []
    for name, mine, theirs in zip(net.names, net.specs, specs):
        if (
            type(mine) is not type(theirs)
            or np.shape(mine.kernel) != np.shape(theirs.kernel)
            or (mine.bias is None) != (theirs.bias is None)
        ):
            raise CheckpointError(
                f"layer {name!r}: the checkpoint's {type(theirs).__name__} "
                f"{np.shape(theirs.kernel)} does not fit the model's "
                f"{type(mine).__name__} {np.shape(mine.kernel)}"
            )
        new.append(mine._replace(kernel=theirs.kernel, bias=theirs.bias))
    return net.rebuild(new)
