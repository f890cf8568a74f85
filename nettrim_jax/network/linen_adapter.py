"""``prune``'s view of a Linen ``(module, variables)`` pair.

``flax.linen.intercept_methods`` intercepts ``nn.Dense`` / ``nn.Conv`` / ``nn.DenseGeneral``
/ ``nn.Einsum`` ``__call__``; the last two are recorded as dense programs through a
``projections.Plan`` (an Einsum that is not a plain projection is left unpruned, with its
reason in ``refused``).  New weights go in through a modified copy of ``variables``.

Stacked layers (``nn.scan`` over blocks with ``variable_axes={"params": 0}``: parameters with
a leading layer axis) are pruned one slice per scan step, as in ``nnx_adapter``: the forward
passes run under ``jax.disable_jit`` so that the scan steps in Python, a layer whose kernel
in ``variables`` has one more axis than the kernel it is called with is stacked, each slice
is its own layer ("blocks/lin1[2]"), and the pruned slices are written back stacked.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from nettrim_jax.network import tracing
from nettrim_jax.network.projections import NotAProjection, einsum_plan, linear_general_plan
from nettrim_jax.network.specs import Dense

__all__ = ["LinenAdapter"]

PROJECTIONS = (nn.DenseGeneral, nn.Einsum)
_KNOWN = "nn.Dense / nn.Conv / nn.DenseGeneral / nn.Einsum"
_FOREIGN = (
    "applied with a kernel that is not the model's parameter at its path (a tied embedding, or "
    "weights passed to .apply)"
)


def _kernel_paths(params, prefix=()):
    """Paths of the parameter dicts that hold a "kernel" (every layer with weights)."""
    if not hasattr(params, "items"):
        return []
    if "kernel" in params and not hasattr(params["kernel"], "items"):
        return [prefix]
    return [p for k, v in params.items() for p in _kernel_paths(v, (*prefix, k))]


def _plan(mod, kernel, args, kwargs):
    """The ``projections.Plan`` of a DenseGeneral / Einsum call (raises NotAProjection)."""
    shape = tuple(jnp.shape(kernel))
    if isinstance(mod, nn.DenseGeneral):
        feats = (mod.features,) if isinstance(mod.features, int) else tuple(mod.features)
        return linear_general_plan(shape, mod.axis, len(feats), tuple(mod.batch_dims))
    s = args[1] if len(args) > 1 else kwargs.get("einsum_str")
    return einsum_plan(s if s is not None else mod.einsum_str, shape)


def _apply(module, variables, x, kw):
    """``module.apply(variables, x, **kw)``; a model that writes a collection (BatchNorm's
    batch_stats in training mode) gets one line saying how to call it for inference."""
    from flax.errors import ModifyScopeVariableError

    try:
        return module.apply(variables, x, **kw)
    except ModifyScopeVariableError as e:
        raise ValueError(
            f"the Linen model writes a variable when called as module.apply(variables, x"
            f"{', **' + repr(kw) if kw else ''}) ({str(e).splitlines()[0].split(' (https')[0]}): call it in inference "
            "mode, "
            "e.g. prune(..., model_kwargs={'train': False}) for a model taking train="
        ) from None


class LinenAdapter:
    """``prune`` view of a Linen ``(module, variables)`` pair; the model is run with
    ``module.apply(variables, x)``."""

    def __init__(self, module: nn.Module, variables, x, model_kwargs: dict | None = None):
        if "params" not in variables:
            raise ValueError("Linen variables must contain a 'params' collection")
        self.module = module
        self._kw = dict(model_kwargs or {})
        self.variables = variables
        found: dict = {}
        classes: dict = {}  # path -> class name of every module called (for the report)

        def icpt(next_fun, args, kwargs, context):
            mod = context.module
            if mod.scope is not None:
                classes.setdefault(tuple(mod.scope.path), type(mod).__name__)
            if context.method_name != "__call__" or not isinstance(mod, (nn.Dense, nn.Conv, *PROJECTIONS)):
                return next_fun(*args, **kwargs)
            if not (tracing.ACTIVE and args and mod.has_variable("params", "kernel")):
                return next_fun(*args, **kwargs)
            if isinstance(args[0], jax.core.Tracer):  # nn.scan's trial trace of its body
                return next_fun(*args, **kwargs)
            rec = tracing.ACTIVE[-1]
            path = tuple(mod.scope.path)
            kernel = mod.get_variable("params", "kernel")
            own = self._find(path)
            if own is None or jnp.shape(own)[-jnp.ndim(kernel) :] != jnp.shape(kernel):
                where = tracing.path_name(path) or f"{type(mod).__name__} (applied on its own)"
                rec.refuse(((where,), None), _FOREIGN)
                return next_fun(*args, **kwargs)
            if jnp.ndim(own) > jnp.ndim(kernel):
                rec.stacked.add(path)  # called with a slice of its stacked kernel: nn.scan
            key = rec.key(path)
            if isinstance(mod, PROJECTIONS):
                try:
                    plan = _plan(mod, kernel, args, kwargs)
                except NotAProjection as e:
                    rec.refuse(key, str(e))
                    return next_fun(*args, **kwargs)
                rec.plans[key] = plan
                z = next_fun(*args, **kwargs)
                found.setdefault(path, mod)
                return plan.uncols(rec.record(key, plan.rows(args[0]), plan.cols(z)), z.shape)
            if isinstance(mod, nn.Conv):
                problem = tracing.conv_mismatch(args[0], kernel, mod.feature_group_count)
            else:
                problem = tracing.dense_mismatch(args[0], int(jnp.shape(kernel)[0]))
            rec.check(key, problem)
            z = next_fun(*args, **kwargs)
            found.setdefault(path, mod)
            return rec.record(key, args[0], z)

        self._icpt = icpt
        # the first pass runs with jit off: a model that scans over stacked blocks shows each
        # step's call there (and tells the recorder which layers are stacked)
        rec = tracing.Recorder(namer=tracing.key_name)
        tracing.ACTIVE.append(rec)
        try:
            with nn.intercept_methods(icpt), jax.disable_jit():
                out = tracing.first_forward(lambda: _apply(module, variables, x, self._kw), x)
        finally:
            tracing.ACTIVE.pop()
        self._stacked = frozenset(rec.stacked)
        self._keys = list(rec.keys)
        self._plans = {k: rec.plans[k] for k in rec.keys if k in rec.plans}
        self.names = [tracing.key_name(k) for k in self._keys]
        self.first = tracing.Captured(out, rec.inputs, rec.preacts)
        self.refused = {tracing.key_name(k): why for k, why in rec.refused.items() if k not in rec.keys}
        seen = {path for path, _ in rec.keys} | {path for path, _ in rec.refused}
        for path in _kernel_paths(variables["params"]):
            if path not in seen:
                cls = classes.get(path)
                self.refused[tracing.path_name(path)] = (
                    f"holds a kernel but is a {cls}, not {_KNOWN}"
                    if cls
                    else f"holds a kernel that no {_KNOWN} call used"
                )
        self.specs = []
        for key in self._keys:
            path, index = key
            mod = found[path]
            p = self._get(variables["params"], path)
            if index is not None:
                p = {k: v[index] for k, v in p.items()}
            bias = p.get("bias") if getattr(mod, "use_bias", True) else None
            plan = self._plans.get(key)
            if plan is not None:
                self.specs.append(
                    Dense(
                        kernel=plan.matrix(p["kernel"]),
                        activation=None,
                        bias=None if bias is None else jnp.reshape(bias, (plan.M,)),
                    )
                )
            elif isinstance(mod, nn.Conv):
                self.specs.append(
                    tracing.conv_spec(
                        p["kernel"],
                        bias,
                        mod.strides,
                        mod.padding,
                        mod.kernel_dilation,
                        mod.input_dilation,
                        mod.feature_group_count,
                        tracing.key_name(key),
                    )
                )
            else:
                self.specs.append(Dense(kernel=p["kernel"], bias=bias, activation=None))
        self.unused: list[str] = []

    def _find(self, path):
        """The kernel at ``path`` in the model's params, None when there is none."""
        try:
            return self._get(self.variables["params"], path)["kernel"]
        except (KeyError, TypeError, IndexError):
            return None

    @staticmethod
    def _get(tree, path):
        for p in path:
            tree = tree[p]
        return tree

    def _variables(self, specs, variables=None):
        variables = self.variables if variables is None else variables
        params = dict(variables["params"])  # copied path by path below; input untouched
        leaves: dict = {}  # path -> new {"kernel": ..., "bias": ...}; stacked slices stacked
        for key, spec in zip(self._keys, specs):
            path, index = key
            old = self._get(variables["params"], path)
            if index is None:
                leaves[path] = self._leaf(old, spec, self._plans.get(key))
            else:
                slices = leaves.setdefault(path, {k: list(v) for k, v in old.items()})
                new = self._leaf({k: v[index] for k, v in old.items()}, spec, self._plans.get(key))
                for k, v in new.items():
                    slices[k][index] = v
        for path, leaf in leaves.items():
            if path in self._stacked:
                leaf = {k: jnp.stack(v) for k, v in leaf.items()}
            params = self._put(params, path, leaf)
        return {**variables, "params": params}

    def pure(self):
        """``(fn, variables)``: ``fn(variables, specs, x)`` applies the module."""
        return (lambda v, specs, x: self.module.apply(self._variables(specs, v), x, **self._kw)), self.variables

    @staticmethod
    def _leaf(old: dict, spec, plan=None) -> dict:
        """A layer's parameter dict ``old`` with the kernel and bias of ``spec``."""
        leaf = dict(old)
        kernel = jnp.asarray(old["kernel"])
        new = spec.kernel if plan is None else plan.unmatrix(spec.kernel, kernel.shape)
        leaf["kernel"] = jnp.asarray(new, kernel.dtype)
        if "bias" in leaf and spec.bias is not None:
            b = jnp.asarray(leaf["bias"])
            leaf["bias"] = jnp.reshape(jnp.asarray(spec.bias, b.dtype), b.shape)
        return leaf

    def _put(self, tree, path, leaf):
        tree = dict(tree)
        tree[path[0]] = leaf if len(path) == 1 else self._put(tree[path[0]], path[1:], leaf)
        return tree

    def run(self, specs, x, override=None) -> tracing.Captured:
        v = self._variables(specs)
        rec = tracing.Recorder(override, tracing.key_name, self._stacked)
        tracing.ACTIVE.append(rec)
        stepping = jax.disable_jit() if self._stacked else contextlib.nullcontext()
        try:
            with nn.intercept_methods(self._icpt), stepping:
                out = _apply(self.module, v, x, self._kw)
        finally:
            tracing.ACTIVE.pop()
        return tracing.Captured(out, rec.inputs, rec.preacts)

    def rebuild(self, specs):
        """New Linen variables (a dict; other collections are passed through)."""
        return self._variables(specs)

    def masks(self, specs):
        """Bool pytree matching ``variables["params"]``."""
        params = self._variables(specs)["params"]
        pruned = {path for path, _ in self._keys}

        def f(kp, leaf):
            keys = tuple(k.key for k in kp if isinstance(k, jax.tree_util.DictKey))
            if keys[:-1] in pruned and keys[-1] in ("kernel", "bias"):
                return jnp.asarray(leaf) != 0
            return jnp.ones(jnp.shape(leaf), bool)

        return jax.tree_util.tree_map_with_path(f, params)
