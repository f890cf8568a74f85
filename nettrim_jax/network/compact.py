"""Physically remove dead units and channels from a pruned chain (``PruneResult.compact``).

In a chain ``layer l -> [ReLU | identity] -> [Pool] -> [Flatten] -> layer l+1``, output unit
(Dense) or channel (Conv) j of layer l is dead when nothing of it reaches the output:

* every weight layer l+1 reads from it is zero (its row of a Dense kernel; its input-channel
  slice of a Conv kernel; after a Flatten, every row of the next Dense kernel fed by that
  channel), or
* it is constantly zero: its kernel column and bias are zero, and the activation maps 0 to 0.

Removing it (layer l's kernel column and bias entry, layer l+1's rows or input channel)
leaves the network's outputs unchanged.  Structured Net-Trim (``structure="units"``) zeroes
whole input rows of layer l+1, so its removed units go here.  Works on spec networks (the
form the command line and checkpoints use); a model with residuals, norms or attention is
not a chain and is refused with one line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nettrim_jax.network.specs import Conv, Dense, Flatten, Pool

__all__ = ["compact_network", "remove_units"]


def _is_layer(item) -> bool:
    return isinstance(item, (Dense, Conv))


def _dead_outputs(spec) -> np.ndarray:
    """(out,) bool: kernel column and bias both zero (the output is constantly 0)."""
    k = np.asarray(spec.kernel)
    dead = ~np.any(k.reshape(-1, k.shape[-1]) != 0, axis=0)
    if spec.bias is not None:
        dead &= np.asarray(spec.bias) == 0
    return dead


def _unread(nxt, channels: int, flattened: bool, spatial: int) -> np.ndarray:
    """(channels,) bool: the next layer reads nothing from this unit / channel."""
    k = np.asarray(nxt.kernel)
    if isinstance(nxt, Conv):
        return ~np.any(k != 0, axis=(0, 1, 3))
    rows = np.any(k != 0, axis=1)
    if flattened:  # NHWC flatten: feature f is channel f % channels
        return ~np.any(rows.reshape(spatial, channels), axis=0)
    return ~rows


def _shrink(spec, keep: np.ndarray):
    bias = None if spec.bias is None else np.asarray(spec.bias)[keep]
    return spec._replace(kernel=np.asarray(spec.kernel)[..., keep], bias=bias)


def _shrink_input(nxt, keep: np.ndarray, flattened: bool, spatial: int):
    k = np.asarray(nxt.kernel)
    if isinstance(nxt, Conv):
        return nxt._replace(kernel=k[:, :, keep, :])
    if flattened:
        rows = np.tile(keep, spatial)
        return nxt._replace(kernel=k[rows])
    return nxt._replace(kernel=k[keep])


def _chain(network: Sequence) -> list:
    """``network`` as a list, refused in one line unless it is a chain compaction handles."""
    net = list(network)
    for item in net:
        if not (_is_layer(item) or isinstance(item, (Pool, Flatten))):
            raise ValueError(f"compact() needs a chain of Dense/Conv/Pool/Flatten; found {type(item).__name__}")
        if _is_layer(item) and item.activation not in ("relu", "linear", None):
            raise ValueError(f"compact() needs ReLU or linear activations; found {item.activation!r}")
    return net


def _geometry(net: list, a: int, b: int) -> tuple[bool, int]:
    """(flattened, spatial): whether layer b reads layer a's output flattened (NHWC: the next
    Dense kernel has spatial * channels rows, feature f is channel f % channels), and the
    positions per channel."""
    spec, nxt = net[a], net[b]
    flattened = any(isinstance(t, Flatten) for t in net[a + 1 : b]) or (
        isinstance(spec, Conv) and isinstance(nxt, Dense)
    )
    channels = int(np.shape(spec.kernel)[-1])
    return flattened, int(np.shape(nxt.kernel)[0]) // channels if flattened else 1


def _layer_pairs(net: list) -> list[tuple[int, int]]:
    idx = [i for i, item in enumerate(net) if _is_layer(item)]
    return list(zip(idx[:-1], idx[1:]))


def remove_units(network: Sequence, keeps: Sequence) -> list:
    """``network`` (a spec chain) with only the units ``keeps[l]`` ((out,) bool) of every
    layer but the last: layer l's other columns and layer l+1's reads of them removed.  The
    outputs change unless the removed units were dead (``compact_network`` removes exactly
    those); structured baselines use it to keep chosen units."""
    net = _chain(network)
    pairs = _layer_pairs(net)
    if len(keeps) != len(pairs):
        raise ValueError(f"keeps has {len(keeps)} entries; the chain has {len(pairs)} hidden layers")
    for (a, b), keep in zip(pairs, keeps):
        flattened, spatial = _geometry(net, a, b)
        keep = np.asarray(keep, bool)
        net[a] = _shrink(net[a], keep)
        net[b] = _shrink_input(net[b], keep, flattened, spatial)
    return net


def compact_network(network: Sequence) -> list:
    """``network`` (a spec chain: Dense/Conv specs, ``Pool``, ``Flatten``) with its dead units
    and channels removed.  Same outputs on every input."""
    net = _chain(network)
    for a, b in _layer_pairs(net):
        spec, nxt = net[a], net[b]
        flattened, spatial = _geometry(net, a, b)
        dead = _dead_outputs(spec) | _unread(nxt, int(np.shape(spec.kernel)[-1]), flattened, spatial)
        if not dead.any():
            continue
        keep = ~dead
        if not keep.any():
            keep[0] = True  # keep one (all-zero) unit so shapes stay valid
        net[a] = _shrink(spec, keep)
        net[b] = _shrink_input(nxt, keep, flattened, spatial)
    return net
