"""``prune``'s view of an ``nnx.Module``.

The model is cloned (``nnx.clone``; the input is never touched) and every ``nnx.Linear`` /
``nnx.Conv`` / ``nnx.LinearGeneral`` / ``nnx.Einsum`` in the clone is given a tapping subclass
(``__class__`` swap) whose ``__call__`` records and can replace the output.  LinearGeneral
and Einsum layers (the projections of ``nnx.MultiHeadAttention``, say) are recorded as dense
programs through a ``projections.Plan`` (inputs (..., N), outputs (..., M)); an Einsum that
is not a plain projection is left unpruned, with its reason in ``refused``.  New weights are
written into the clone's ``Param``s before each run.  Embeddings and norms are not prunable
layers: they stay as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nettrim_jax.network.projections import NotAProjection, einsum_plan, linear_general_plan
from nettrim_jax.network.specs import Dense
from nettrim_jax.network.tracing import (
    ACTIVE,
    Captured,
    Recorder,
    conv_mismatch,
    conv_spec,
    dense_mismatch,
    first_forward,
    path_name,
)

__all__ = ["NNXAdapter"]


_TAPS: dict = {}
PRUNABLE = (nnx.Linear, nnx.Conv, nnx.LinearGeneral, nnx.Einsum)
PROJECTIONS = (nnx.LinearGeneral, nnx.Einsum)


def _plan(node, args, kwargs):
    """The ``projections.Plan`` of a LinearGeneral / Einsum call (raises NotAProjection)."""
    shape = tuple(node.kernel.get_value().shape)
    if isinstance(node, nnx.LinearGeneral):
        return linear_general_plan(shape, node.axis, len(node.out_features), tuple(node.batch_axis))
    s = args[0] if args else kwargs.get("einsum_str")
    return einsum_plan(s if s is not None else node.einsum_str, shape)


def _tap_projection(cls, self, x, args, kwargs):
    rec = ACTIVE[-1]
    try:
        plan = _plan(self, args, kwargs)
    except NotAProjection as e:
        rec.refuse(id(self), str(e))
        return cls.__call__(self, x, *args, **kwargs)
    rec.plans[id(self)] = plan
    z = cls.__call__(self, x, *args, **kwargs)
    return plan.uncols(rec.record(id(self), plan.rows(x), plan.cols(z)), z.shape)


def _tap_class(cls):
    if cls not in _TAPS:

        def __call__(self, x, *args, **kwargs):
            if ACTIVE and isinstance(self, PROJECTIONS):
                return _tap_projection(cls, self, x, args, kwargs)
            if ACTIVE:
                if isinstance(self, nnx.Conv):
                    problem = conv_mismatch(x, self.kernel.get_value(), self.feature_group_count)
                else:
                    problem = dense_mismatch(x, self.in_features)
                ACTIVE[-1].check(id(self), problem)
            z = cls.__call__(self, x, *args, **kwargs)
            if ACTIVE:
                return ACTIVE[-1].record(id(self), x, z)
            return z

        _TAPS[cls] = type(f"Tapped{cls.__name__}", (cls,), {"__call__": __call__})
    return _TAPS[cls]


class NNXAdapter:
    """``prune`` view of an ``nnx.Module`` (the model is cloned, never mutated)."""

    def __init__(self, model: nnx.Module, x, model_kwargs: dict | None = None):
        self.model = model
        self._kw = dict(model_kwargs or {})
        work = nnx.clone(model)
        work.eval()
        found = {}
        for path, node in nnx.iter_graph(work):
            if isinstance(node, PRUNABLE):
                found[id(node)] = (tuple(path), node)
        for _, node in found.values():
            node.__class__ = _tap_class(type(node))
        self._work = work
        self._namer = lambda k: path_name(found[k][0]) if k in found else str(k)
        rec = Recorder(namer=self._namer)
        ACTIVE.append(rec)
        try:
            self._output = first_forward(lambda: work(x, **self._kw), x)
        finally:
            ACTIVE.pop()
        self._paths = [found[k][0] for k in rec.keys]
        self._nodes = [found[k][1] for k in rec.keys]
        self._plans = [rec.plans.get(k) for k in rec.keys]
        self.names = [path_name(p) for p in self._paths]
        self.first = Captured(self._output, rec.inputs, rec.preacts)
        self.specs = [self._spec(n, name, plan) for n, name, plan in zip(self._nodes, self.names, self._plans)]
        self.refused = {path_name(found[k][0]): why for k, why in rec.refused.items() if k not in rec.keys}
        self.unused: list[str] = [
            path_name(p) for k, (p, _) in found.items() if k not in rec.keys and k not in rec.refused
        ]

    @staticmethod
    def _spec(node, name, plan=None):
        bias = None if node.bias is None else node.bias.get_value()
        kernel = node.kernel.get_value()
        if plan is not None:
            return Dense(
                kernel=plan.matrix(kernel), activation=None, bias=None if bias is None else jnp.reshape(bias, (plan.M,))
            )
        if isinstance(node, nnx.Conv):
            return conv_spec(
                kernel,
                bias,
                node.strides,
                node.padding,
                node.kernel_dilation,
                node.input_dilation,
                node.feature_group_count,
                name,
            )
        return Dense(kernel=kernel, bias=bias, activation=None)

    @staticmethod
    def _write(node, spec, plan=None):
        old = node.kernel.get_value()
        kernel = spec.kernel if plan is None else plan.unmatrix(spec.kernel, old.shape)
        node.kernel.set_value(jnp.asarray(kernel, old.dtype))
        if node.bias is not None:
            b = node.bias.get_value()
            node.bias.set_value(jnp.reshape(jnp.asarray(spec.bias, b.dtype), b.shape))

    def run(self, specs, x, override=None) -> Captured:
        for node, spec, plan in zip(self._nodes, specs, self._plans):
            self._write(node, spec, plan)
        rec = Recorder(override, self._namer)
        ACTIVE.append(rec)
        try:
            out = self._work(x, **self._kw)
        finally:
            ACTIVE.pop()
        return Captured(out, rec.inputs, rec.preacts)

    def _locate(self, model, path):
        node = model
        for p in path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        return node

    def rebuild(self, specs) -> nnx.Module:
        new = nnx.clone(self.model)
        for path, spec, plan in zip(self._paths, specs, self._plans):
            self._write(self._locate(new, path), spec, plan)
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
