"""Adapters between models (NNX modules, Linen ``(module, variables)`` pairs, plain spec
sequences) and the layer-by-layer view that ``prune`` works on.

How the structure is found, without re-implementing the model: the model's own forward pass
is run once on the calibration batch while the prunable layers are intercepted, recording
each one's input and pre-activation output, in call order.

* NNX: the model is cloned (``nnx.clone``; the input is never touched) and every
  ``nnx.Linear`` / ``nnx.Conv`` in the clone is given a tapping subclass (``__class__`` swap)
  whose ``__call__`` records and can replace the output.  New weights are written into the
  clone's ``Param``s before each run.
* Linen: ``flax.linen.intercept_methods`` intercepts ``nn.Dense`` / ``nn.Conv`` ``__call__``;
  new weights go in through a modified copy of ``variables``.
* Plain specs: the sequence is run directly (``specs.apply_specs`` semantics).

Every adapter exposes::

    names: list[str]            # one per prunable layer, call order ("layers/0", "Dense_1", "2")
    specs: list[Dense | Conv]   # original weights and geometry (activation: declared or None)
    run(specs, x, override=None) -> Captured(output, inputs, preacts)
    rebuild(specs) -> model in the input's form (new object)
    masks(specs) -> pytree of bools matching the model's params

``override = (i, fn)`` makes layer ``i`` return ``fn(z)`` instead of ``z`` (used to detect the
activation that follows a layer; see ``prune.detect_activation``).

Input shape checks: every prunable layer's input is checked against its kernel when the layer
is called (Dense: last axis = input features, after the specs' flatten rule; Conv: 4-D NHWC
with the kernel's input channels), and the first forward pass (the adapter's constructor)
turns a mismatch, or a shape error raised elsewhere in the model's forward, into an
``InputShapeError`` (a ``ValueError``) naming the calibration data's shape and the layer.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from nettrim_jax.network.specs import Conv, Dense, apply_activation, apply_layer, is_spec

__all__ = ["Captured", "NNXAdapter", "LinenAdapter", "SpecsAdapter", "adapt", "InputShapeError"]


class InputShapeError(ValueError):
    """The calibration data does not fit the model's input (found on the first forward pass)."""


# jax's own messages for shape mismatches (dot_general, reshape, broadcasting, convolution)
_SHAPE_ERROR = re.compile(r"shape|dimension size|ndim")


def _dense_mismatch(x, n_in, flatten=False):
    """None if ``x`` fits a dense layer with ``n_in`` inputs, else what is wrong."""
    shape = tuple(jnp.shape(x))
    if flatten and len(shape) > 2 and shape[-1] != n_in:
        size = 1
        for d in shape[1:]:
            size *= int(d)
        if size == n_in:
            return None
        return f"expects {n_in} input features (per sample, flattened), got input of shape {shape}"
    if len(shape) >= 1 and shape[-1] == n_in:
        return None
    return f"expects {n_in} input features on the last axis, got input of shape {shape}"


def _conv_mismatch(x, kernel, groups=1):
    """None if ``x`` fits a channels-last convolution with kernel (spatial..., I, O) (batched:
    as many axes as the kernel), else what is wrong."""
    shape = tuple(jnp.shape(x))
    nd = len(jnp.shape(kernel))
    c = int(jnp.shape(kernel)[-2]) * int(groups or 1)
    if len(shape) == nd and shape[-1] == c:
        return None
    want = f"NHWC inputs (batch, H, W, {c})" if nd == 4 else f"{nd}-D inputs (batch, ..., {c})"
    return f"expects {want}, got input of shape {shape}"


def _first_forward(fn, x):
    """Run the adapter's first forward pass; shape errors become one-line ``InputShapeError``
    naming the calibration data's shape (the original error is chained)."""
    where = f"calibration data x of shape {tuple(jnp.shape(x))} does not fit the model"
    try:
        return fn()
    except InputShapeError as e:
        raise InputShapeError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if not _SHAPE_ERROR.search(first):
            raise
        raise InputShapeError(f"{where} (the forward pass failed: {first})") from e


class Captured(NamedTuple):
    """One forward pass: ``output`` of the model, and per prunable layer (call order) its
    ``inputs`` (as the layer received them) and ``preacts`` (its output before any
    activation)."""

    output: Any
    inputs: list
    preacts: list


class _Recorder:
    def __init__(self, override=None, namer=str):
        self.inputs: list = []
        self.preacts: list = []
        self.keys: list = []
        self.override = override
        self.namer = namer

    def check(self, key, problem):
        """Raise ``InputShapeError`` if the layer's input does not fit (``problem`` not None)."""
        if problem is not None:
            raise InputShapeError(f"layer {self.namer(key)!r} {problem}")

    def record(self, key, x, z):
        if key in self.keys:
            raise ValueError(f"layer {key!r} is called more than once in one forward pass; "
                             "shared (re-used) layers are not supported")
        i = len(self.keys)
        self.keys.append(key)
        self.inputs.append(x)
        self.preacts.append(z)
        if self.override is not None and self.override[0] == i:
            return self.override[1](z)
        return z


def _pair(v):
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    return tuple(int(a) for a in v)


def _conv_spec(kernel, bias, strides, padding, kernel_dilation, input_dilation, groups, where):
    if _pair(input_dilation) != (1, 1):
        raise NotImplementedError(f"{where}: input (lhs) dilation is not supported")
    if groups not in (None, 1):
        raise NotImplementedError(f"{where}: grouped convolutions are not supported")
    if jnp.ndim(kernel) != 4:
        raise NotImplementedError(f"{where}: only 2-D convolutions are supported")
    if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID"):
        raise NotImplementedError(f"{where}: padding {padding!r} is not supported")
    return Conv(kernel=kernel, bias=bias, activation=None, strides=_pair(strides),
                padding=padding, dilation=_pair(kernel_dilation))


# ----------------------------------------------------------------------------- NNX


_TAPS: dict = {}
_ACTIVE: list = []


def _tap_class(cls):
    if cls not in _TAPS:
        def __call__(self, x, *args, **kwargs):
            if _ACTIVE:
                if isinstance(self, nnx.Conv):
                    problem = _conv_mismatch(x, self.kernel.get_value(), self.feature_group_count)
                else:
                    problem = _dense_mismatch(x, self.in_features)
                _ACTIVE[-1].check(id(self), problem)
            z = cls.__call__(self, x, *args, **kwargs)
            if _ACTIVE:
                return _ACTIVE[-1].record(id(self), x, z)
            return z

        _TAPS[cls] = type(f"Tapped{cls.__name__}", (cls,), {"__call__": __call__})
    return _TAPS[cls]


def _path_name(path) -> str:
    return "/".join(str(p) for p in path)


class NNXAdapter:
    """``prune`` view of an ``nnx.Module`` (the model is cloned, never mutated)."""

    def __init__(self, model: nnx.Module, x):
        self.model = model
        work = nnx.clone(model)
        work.eval()
        found = {}
        for path, node in nnx.iter_graph(work):
            if isinstance(node, (nnx.Linear, nnx.Conv)):
                found[id(node)] = (tuple(path), node)
        for _, node in found.values():
            node.__class__ = _tap_class(type(node))
        self._work = work
        self._namer = lambda k: _path_name(found[k][0]) if k in found else str(k)
        rec = _Recorder(namer=self._namer)
        _ACTIVE.append(rec)
        try:
            self._output = _first_forward(lambda: work(x), x)
        finally:
            _ACTIVE.pop()
        self._paths = [found[k][0] for k in rec.keys]
        self._nodes = [found[k][1] for k in rec.keys]
        self.names = [_path_name(p) for p in self._paths]
        self.first = Captured(self._output, rec.inputs, rec.preacts)
        self.specs = [self._spec(n, name) for n, name in zip(self._nodes, self.names)]
        unused = [_path_name(p) for k, (p, _) in found.items() if k not in rec.keys]
        self.unused = unused

    @staticmethod
    def _spec(node, name):
        bias = None if node.bias is None else node.bias.get_value()
        kernel = node.kernel.get_value()
        if isinstance(node, nnx.Conv):
            return _conv_spec(kernel, bias, node.strides, node.padding, node.kernel_dilation,
                              node.input_dilation, node.feature_group_count, name)
        return Dense(kernel=kernel, bias=bias, activation=None)

    @staticmethod
    def _write(node, spec):
        node.kernel.set_value(jnp.asarray(spec.kernel, node.kernel.get_value().dtype))
        if node.bias is not None:
            node.bias.set_value(jnp.asarray(spec.bias, node.bias.get_value().dtype))

    def run(self, specs, x, override=None) -> Captured:
        for node, spec in zip(self._nodes, specs):
            self._write(node, spec)
        rec = _Recorder(override, self._namer)
        _ACTIVE.append(rec)
        try:
            out = self._work(x)
        finally:
            _ACTIVE.pop()
        return Captured(out, rec.inputs, rec.preacts)

    def _locate(self, model, path):
        node = model
        for p in path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        return node

    def rebuild(self, specs) -> nnx.Module:
        new = nnx.clone(self.model)
        for path, spec in zip(self._paths, specs):
            self._write(self._locate(new, path), spec)
        return new

    def masks(self, specs):
        """``nnx.State`` of bools over ``nnx.Param`` (the structure ``nnx.Optimizer(...,
        wrt=nnx.Param)`` updates): kernel/bias of pruned layers True where nonzero, every
        other parameter all True."""
        model = self.rebuild(specs)
        pruned = {p for p in self._paths}
        state = nnx.state(model, nnx.Param)

        def f(kp, leaf):
            keys = []
            for k in kp:
                if isinstance(k, jax.tree_util.DictKey):
                    keys.append(k.key)
                elif isinstance(k, jax.tree_util.SequenceKey):
                    keys.append(k.idx)
            if len(keys) >= 2 and tuple(keys[:-1]) in pruned and keys[-1] in ("kernel", "bias"):
                return jnp.asarray(leaf) != 0
            return jnp.ones(jnp.shape(leaf), bool)

        return jax.tree_util.tree_map_with_path(f, state)


# ----------------------------------------------------------------------------- Linen


class LinenAdapter:
    """``prune`` view of a Linen ``(module, variables)`` pair; the model is run with
    ``module.apply(variables, x)``."""

    def __init__(self, module: nn.Module, variables, x):
        if "params" not in variables:
            raise ValueError("Linen variables must contain a 'params' collection")
        self.module = module
        self.variables = variables
        found: dict = {}

        def icpt(next_fun, args, kwargs, context):
            mod = context.module
            if context.method_name != "__call__" or not isinstance(mod, (nn.Dense, nn.Conv)):
                return next_fun(*args, **kwargs)
            path = tuple(mod.scope.path)
            if _ACTIVE and args and mod.has_variable("params", "kernel"):
                kernel = mod.get_variable("params", "kernel")
                if isinstance(mod, nn.Conv):
                    problem = _conv_mismatch(args[0], kernel, mod.feature_group_count)
                else:
                    problem = _dense_mismatch(args[0], int(jnp.shape(kernel)[0]))
                _ACTIVE[-1].check(path, problem)
            z = next_fun(*args, **kwargs)
            found.setdefault(path, mod)
            return _ACTIVE[-1].record(path, args[0], z) if _ACTIVE else z

        self._icpt = icpt
        rec = _Recorder(namer=_path_name)
        _ACTIVE.append(rec)
        try:
            with nn.intercept_methods(icpt):
                out = _first_forward(lambda: module.apply(variables, x), x)
        finally:
            _ACTIVE.pop()
        self._paths = list(rec.keys)
        self.names = [_path_name(p) for p in self._paths]
        self.first = Captured(out, rec.inputs, rec.preacts)
        self.specs = []
        for path in self._paths:
            mod = found[path]
            p = self._get(variables["params"], path)
            bias = p.get("bias") if getattr(mod, "use_bias", True) else None
            if isinstance(mod, nn.Conv):
                self.specs.append(_conv_spec(p["kernel"], bias, mod.strides, mod.padding,
                                             mod.kernel_dilation, mod.input_dilation,
                                             mod.feature_group_count, _path_name(path)))
            else:
                self.specs.append(Dense(kernel=p["kernel"], bias=bias, activation=None))
        self.unused = []

    @staticmethod
    def _get(tree, path):
        for p in path:
            tree = tree[p]
        return tree

    def _variables(self, specs):
        params = dict(self.variables["params"])  # copied path by path below; input untouched

        def put(tree, path, spec):
            tree = dict(tree)
            if len(path) == 1:
                leaf = dict(tree[path[0]])
                leaf["kernel"] = jnp.asarray(spec.kernel, jnp.asarray(leaf["kernel"]).dtype)
                if "bias" in leaf and spec.bias is not None:
                    leaf["bias"] = jnp.asarray(spec.bias, jnp.asarray(leaf["bias"]).dtype)
                tree[path[0]] = leaf
            else:
                tree[path[0]] = put(tree[path[0]], path[1:], spec)
            return tree

        for path, spec in zip(self._paths, specs):
            params = put(params, path, spec)
        return {**self.variables, "params": params}

    def run(self, specs, x, override=None) -> Captured:
        v = self._variables(specs)
        rec = _Recorder(override, _path_name)
        _ACTIVE.append(rec)
        try:
            with nn.intercept_methods(self._icpt):
                out = self.module.apply(v, x)
        finally:
            _ACTIVE.pop()
        return Captured(out, rec.inputs, rec.preacts)

    def rebuild(self, specs):
        """New Linen variables (a dict; other collections are passed through)."""
        return self._variables(specs)

    def masks(self, specs):
        """Bool pytree matching ``variables["params"]``."""
        params = self._variables(specs)["params"]
        pruned = set(self._paths)

        def f(kp, leaf):
            keys = tuple(k.key for k in kp if isinstance(k, jax.tree_util.DictKey))
            if keys[:-1] in pruned and keys[-1] in ("kernel", "bias"):
                return jnp.asarray(leaf) != 0
            return jnp.ones(jnp.shape(leaf), bool)

        return jax.tree_util.tree_map_with_path(f, params)


# ----------------------------------------------------------------------------- plain specs


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
        self.first = _first_forward(lambda: self.run(self.specs, x), x)
        self.unused = []

    def run(self, specs, x, override=None) -> Captured:
        rec = _Recorder(override, lambda k: self.names[k])
        layer = 0
        for item in self.network:
            if is_spec(item):
                spec = specs[layer]._replace(activation=item.activation)
                k = spec.kernel
                rec.check(layer, _conv_mismatch(x, k) if isinstance(spec, Conv)
                          else _dense_mismatch(x, int(jnp.shape(k)[0]), flatten=True))
                z = rec.record(layer, x, apply_layer(spec, x))
                x = apply_activation(item.activation, z)
                layer += 1
            else:
                x = item(x)
        return Captured(x, rec.inputs, rec.preacts)

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
            out[i] = spec._replace(kernel=jnp.asarray(spec.kernel) != 0,
                                   bias=None if spec.bias is None else jnp.asarray(spec.bias) != 0,
                                   activation=self.network[i].activation)
        return out


def adapt(model, x):
    """Pick the adapter for ``model`` (NNX module, Linen ``(module, variables)``, or specs)."""
    if isinstance(model, nnx.Module):
        return NNXAdapter(model, x)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
        return LinenAdapter(model[0], model[1], x)
    if isinstance(model, (list, tuple)):
        return SpecsAdapter(model, x)
    raise TypeError("model must be an nnx.Module, a Linen (module, variables) pair, or a "
                    f"sequence of Dense/Conv specs; got {type(model).__name__}")
