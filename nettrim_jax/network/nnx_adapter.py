"""``prune``'s view of an ``nnx.Module``.

The model is cloned (``nnx.clone``; the input is never touched) and every ``nnx.Linear`` /
``nnx.Conv`` / ``nnx.LinearGeneral`` / ``nnx.Einsum`` in the clone is given a tapping subclass
(``__class__`` swap) whose ``__call__`` records and can replace the output.  LinearGeneral
and Einsum layers (the projections of ``nnx.MultiHeadAttention``, say) are recorded as dense
programs through a ``projections.Plan`` (inputs (..., N), outputs (..., M)); an Einsum that
is not a plain projection is left unpruned, with its reason in ``refused``.  New weights are
written into the clone's ``Param``s before each run.  Embeddings and norms are not prunable
layers: they stay as they are.

Stacked layers (parameters with a leading layer axis, built under ``nnx.vmap`` and applied
by ``nnx.scan``, as large models repeat their blocks) are pruned one slice per scan step:
the forward passes of such a model run under ``jax.disable_jit`` (``lax.scan`` then steps in
Python, so each step's call is seen with concrete values), every slice is its own layer
("blocks/lin1[2]"), and the pruned slices are written back stacked.
"""

from __future__ import annotations

import contextlib

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
    key_name,
    path_name,
)

__all__ = ["NNXAdapter"]


_TAPS: dict = {}
PRUNABLE = (nnx.Linear, nnx.Conv, nnx.LinearGeneral, nnx.Einsum)
PROJECTIONS = (nnx.LinearGeneral, nnx.Einsum)
_PATH = "_nettrim_path"  # static attribute naming a layer's path; it survives nnx.scan's split/merge


def _stacked(node) -> bool:
    """True when ``node``'s kernel has a leading layer axis beyond its layer's own
    (``nnx.vmap``-built blocks applied by ``nnx.scan``)."""
    if isinstance(node, nnx.Conv):
        ks = node.kernel_size
        own = (1 if isinstance(ks, int) else len(ks)) + 2
    elif isinstance(node, nnx.LinearGeneral):
        own = len(node.batch_axis) + len(node.in_features) + len(node.out_features)
    elif isinstance(node, nnx.Einsum):
        own = len(node.kernel_shape)
    else:
        own = 2
    return jnp.ndim(node.kernel.get_value()) > own


def _unknown_kernels(model) -> dict:
    """name -> why for modules of ``model`` that hold a ``kernel`` variable but are not a
    layer Net-Trim prunes (a user's own projection, say): they are left dense."""
    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and not isinstance(node, PRUNABLE):
            if isinstance(getattr(node, "kernel", None), nnx.Variable):
                out[path_name(tuple(path))] = (
                    f"holds a kernel but is a {type(node).__name__}, not nnx.Linear / nnx.Conv / "
                    "nnx.LinearGeneral / nnx.Einsum"
                )
    return out


def _plan(node, args, kwargs):
    """The ``projections.Plan`` of a LinearGeneral / Einsum call (raises NotAProjection)."""
    shape = tuple(node.kernel.get_value().shape)
    if isinstance(node, nnx.LinearGeneral):
        return linear_general_plan(shape, node.axis, len(node.out_features), tuple(node.batch_axis))
    s = args[0] if args else kwargs.get("einsum_str")
    return einsum_plan(s if s is not None else node.einsum_str, shape)


def _tap_projection(cls, self, key, x, args, kwargs):
    rec = ACTIVE[-1]
    try:
        plan = _plan(self, args, kwargs)
    except NotAProjection as e:
        rec.refuse(key, str(e))
        return cls.__call__(self, x, *args, **kwargs)
    rec.plans[key] = plan
    rec.seen[key] = self
    z = cls.__call__(self, x, *args, **kwargs)
    return plan.uncols(rec.record(key, plan.rows(x), plan.cols(z)), z.shape)


def _tap_class(cls):
    if cls not in _TAPS:

        def __call__(self, x, *args, **kwargs):
            if not ACTIVE:
                return cls.__call__(self, x, *args, **kwargs)
            rec = ACTIVE[-1]
            key = rec.key(getattr(self, _PATH))
            if isinstance(self, PROJECTIONS):
                return _tap_projection(cls, self, key, x, args, kwargs)
            if isinstance(self, nnx.Conv):
                problem = conv_mismatch(x, self.kernel.get_value(), self.feature_group_count)
            else:
                problem = dense_mismatch(x, self.in_features)
            rec.check(key, problem)
            rec.seen[key] = self
            return rec.record(key, x, cls.__call__(self, x, *args, **kwargs))

        _TAPS[cls] = type(f"Tapped{cls.__name__}", (cls,), {"__call__": __call__})
    return _TAPS[cls]


class NNXAdapter:
    """``prune`` view of an ``nnx.Module`` (the model is cloned, never mutated)."""

    def __init__(self, model: nnx.Module, x, model_kwargs: dict | None = None):
        self.model = model
        self._kw = dict(model_kwargs or {})
        work = nnx.clone(model)
        work.eval()
        found = {}  # path -> node of the clone
        for path, node in nnx.iter_graph(work):
            if isinstance(node, PRUNABLE):
                found[tuple(path)] = node
        for path, node in found.items():
            setattr(node, _PATH, path)
            node.__class__ = _tap_class(type(node))
        self._work = work
        self._stacked = frozenset(p for p, node in found.items() if _stacked(node))
        rec = self._recorder()
        ACTIVE.append(rec)
        try:
            with self._stepping():
                self._output = first_forward(lambda: work(x, **self._kw), x)
        finally:
            ACTIVE.pop()
        self._keys = list(rec.keys)
        self._plans = [rec.plans.get(k) for k in rec.keys]
        self.names = [key_name(k) for k in rec.keys]
        self.first = Captured(self._output, rec.inputs, rec.preacts)
        self.specs = [self._spec(rec.seen[k], name, plan) for k, name, plan in zip(rec.keys, self.names, self._plans)]
        self.refused = {key_name(k): why for k, why in rec.refused.items() if k not in rec.keys}
        self.refused.update(_unknown_kernels(work))
        called = {p for p, _ in rec.keys} | {p for p, _ in rec.refused}
        self.unused: list[str] = [path_name(p) for p in found if p not in called]

    def _recorder(self, override=None) -> Recorder:
        return Recorder(override, key_name, self._stacked)

    def _stepping(self):
        """A stacked model's forward passes run with jit off: ``lax.scan`` (under
        ``nnx.scan``) then runs its steps in Python and each step's layer call is seen."""
        return jax.disable_jit() if self._stacked else contextlib.nullcontext()

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
    def _values(spec, plan, kernel_shape, bias_shape):
        """The kernel and bias arrays ``spec`` gives a layer of these shapes."""
        kernel = spec.kernel if plan is None else plan.unmatrix(spec.kernel, kernel_shape)
        bias = None if bias_shape is None else jnp.reshape(spec.bias, bias_shape)
        return kernel, bias

    def _assign(self, root, specs) -> None:
        """Write ``specs`` into the model ``root`` (the working clone or a fresh one): a plain
        layer's kernel and bias, or a stacked layer's slices stacked again (a step the forward
        pass never reached keeps its old slice)."""
        steps: dict = {}  # path -> {step index (None: a plain layer): (spec, plan)}
        for (path, index), spec, plan in zip(self._keys, specs, self._plans):
            steps.setdefault(path, {})[index] = (spec, plan)
        for path, by_step in steps.items():
            node = self._locate(root, path)
            kernel = node.kernel.get_value()
            bias = None if node.bias is None else node.bias.get_value()

            def values(i, kernel_shape, bias_shape, by_step=by_step):
                spec, plan = by_step[i]
                return self._values(spec, plan, kernel_shape, bias_shape)

            if None in by_step:
                k, b = values(None, kernel.shape, None if bias is None else bias.shape)
            else:
                one = (kernel.shape[1:], None if bias is None else bias.shape[1:])
                pairs = [
                    values(i, *one) if i in by_step else (kernel[i], None if bias is None else bias[i])
                    for i in range(kernel.shape[0])
                ]
                k = jnp.stack([jnp.asarray(kp, kernel.dtype) for kp, _ in pairs])
                b = None if bias is None else jnp.stack([jnp.asarray(bp, bias.dtype) for _, bp in pairs])
            node.kernel.set_value(jnp.asarray(k, kernel.dtype))
            if bias is not None:
                node.bias.set_value(jnp.asarray(b, bias.dtype))

    def run(self, specs, x, override=None) -> Captured:
        self._assign(self._work, specs)
        rec = self._recorder(override)
        ACTIVE.append(rec)
        try:
            with self._stepping():
                out = self._work(x, **self._kw)
        finally:
            ACTIVE.pop()
        return Captured(out, rec.inputs, rec.preacts)

    def pure(self):
        """``(fn, state)``: ``fn(state, specs, x)`` merges the working clone from ``state``
        (``nnx.split``) and writes ``specs`` into it, so nothing outside is mutated."""
        graphdef, state = nnx.split(self._work)

        def fn(state, specs, x):
            model = nnx.merge(graphdef, state, copy=True)  # fresh Variables in this trace
            self._assign(model, specs)
            return model(x, **self._kw)

        return fn, state

    def _locate(self, model, path):
        node = model
        for p in path:
            node = node[p] if isinstance(p, int) else getattr(node, p)
        return node

    def rebuild(self, specs) -> nnx.Module:
        new = nnx.clone(self.model)
        self._assign(new, specs)
        return new

    def masks(self, specs):
        """``nnx.State`` of bools over ``nnx.Param`` (the structure ``nnx.Optimizer(...,
        wrt=nnx.Param)`` updates): kernel/bias of pruned layers True where nonzero, every
        other parameter all True."""
        model = self.rebuild(specs)
        pruned = {p for p, _ in self._keys}
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
