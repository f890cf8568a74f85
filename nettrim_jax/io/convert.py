"""Between models and the checkpoint's layer dicts: one converter, one forward interpreter.

* ``from_model(model, x)``: any supported model (an NNX module, a Linen ``(module,
  variables)`` pair, or a spec network) whose forward pass is a chain of Dense / Conv layers,
  ReLUs, max/average pooling and flattening -> ``(layer dicts, input_shape)``.  The chain is
  read from the model's own forward pass on ``x`` (``network.adapters``): the prunable layers
  are intercepted, each one's activation is detected (``network.activations``), and the op
  between a layer's activation and the next layer's input is identified by trying flatten,
  2x2..4x4 max/average pooling (and pooling then flatten) and keeping the one that reproduces
  the recorded input exactly.  Anything else (a residual, a norm, attention) is refused with
  a one-line ``CheckpointError``: a sequential ``model.json`` cannot describe it.
* ``to_network(layers)`` / ``from_network(network)``: layer dicts <-> a spec network
  (``Dense`` / ``Conv`` specs, ``Pool`` / ``Flatten`` ops), the form ``prune`` takes.
* ``apply(layers, x)``: the layer dicts' forward pass (``specs.apply_specs``, in batches).
* ``load_into(model, layers, x)``: a pruned checkpoint's weights written into one's own model
  (a new NNX module or new Linen variables; the input is not mutated).
* ``to_nnx(network)``: a spec network as an ``nnx.Sequential`` of ``nnx.Linear`` /
  ``nnx.Conv`` (these weights) and the ReLU, pooling and flatten ops between them (what
  ``PruneResult.compact`` returns for an NNX chain: its widths are the compacted ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from nettrim_jax.io.checkpoint import ACTIVATIONS, OP_TYPES, PARAM_TYPES, CheckpointError
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


_CANDIDATES: list = (
    [[]]
    + [[Flatten()]]
    + [[Pool(kind, (k, k), (k, k))] + tail for k in (2, 3, 4) for kind in ("max", "avg") for tail in ([], [Flatten()])]
)


def _between(h, target, i):
    """The ops (a candidate list) that turn ``h`` into ``target`` exactly."""
    for ops in _CANDIDATES:
        out = h
        try:
            for op in ops:
                out = op(out)
        except (TypeError, ValueError):
            continue
        if out.shape == target.shape and bool(jnp.allclose(out, target, rtol=1e-5, atol=1e-6)):
            return ops
    raise CheckpointError(
        f"model: what follows prunable layer {i} is not a chain step a checkpoint "
        "can describe (ReLU, flatten, max/avg pooling); save a residual or "
        "attention model with the orbax route instead"
    )


def from_model(model, x) -> tuple[list, tuple]:
    """``(layer dicts, input_shape)`` of a chain model, read from its forward pass on ``x``
    (a few calibration samples, batch first).  See the module doc."""
    from nettrim_jax.network.activations import detect_activation
    from nettrim_jax.network.adapters import adapt

    x = jnp.asarray(x)
    net = adapt(model, x)
    base = net.first
    L = len(net.specs)
    layers: list = [{"type": "flatten"}] if base.inputs[0].ndim == 2 and x.ndim > 2 else []
    if layers and not bool(jnp.array_equal(base.inputs[0], x.reshape(x.shape[0], -1))):
        raise CheckpointError("model: its input reaches the first layer through ops other than flatten")
    if not layers and not bool(jnp.array_equal(base.inputs[0], x)):
        raise CheckpointError("model: its input reaches the first layer through ops a checkpoint cannot describe")
    for i, spec in enumerate(net.specs):
        act = spec.activation
        if act is None:
            act = detect_activation(net, net.specs, x, i, base) if i < L - 1 else "linear"
        if act not in ACTIVATIONS:
            raise CheckpointError(
                f"model: layer {net.names[i]!r} is followed by an activation a "
                "checkpoint cannot store (only relu, linear)"
            )
        layers += from_network([spec._replace(activation=act)])
        z = base.preacts[i]
        h = jnp.maximum(z, 0) if act == "relu" else z
        target = base.inputs[i + 1] if i + 1 < L else base.output
        if not isinstance(target, jnp.ndarray):
            raise CheckpointError("model: its output is not a single array")
        layers += from_network(_between(h, target, i))
    return layers, tuple(int(a) for a in x.shape[1:])


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
