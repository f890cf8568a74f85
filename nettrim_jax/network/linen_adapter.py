"""``prune``'s view of a Linen ``(module, variables)`` pair.

``flax.linen.intercept_methods`` intercepts ``nn.Dense`` / ``nn.Conv`` / ``nn.DenseGeneral``
/ ``nn.Einsum`` ``__call__``; the last two are recorded as dense programs through a
``projections.Plan`` (an Einsum that is not a plain projection is left unpruned, with its
reason in ``refused``).  New weights go in through a modified copy of ``variables``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nettrim_jax.network import tracing
from nettrim_jax.network.projections import NotAProjection, einsum_plan, linear_general_plan
from nettrim_jax.network.specs import Dense

__all__ = ["LinenAdapter"]

PROJECTIONS = (nn.DenseGeneral, nn.Einsum)


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

        def icpt(next_fun, args, kwargs, context):
            mod = context.module
            if context.method_name != "__call__" or not isinstance(mod, (nn.Dense, nn.Conv, *PROJECTIONS)):
                return next_fun(*args, **kwargs)
            path = tuple(mod.scope.path)
            if isinstance(mod, PROJECTIONS):
                if not (tracing.ACTIVE and args and mod.has_variable("params", "kernel")):
                    return next_fun(*args, **kwargs)
                try:
                    plan = _plan(mod, mod.get_variable("params", "kernel"), args, kwargs)
                except NotAProjection as e:
                    tracing.ACTIVE[-1].refuse(path, str(e))
                    return next_fun(*args, **kwargs)
                tracing.ACTIVE[-1].plans[path] = plan
                z = next_fun(*args, **kwargs)
                found.setdefault(path, mod)
                return plan.uncols(tracing.ACTIVE[-1].record(path, plan.rows(args[0]), plan.cols(z)), z.shape)
            if tracing.ACTIVE and args and mod.has_variable("params", "kernel"):
                kernel = mod.get_variable("params", "kernel")
                if isinstance(mod, nn.Conv):
                    problem = tracing.conv_mismatch(args[0], kernel, mod.feature_group_count)
                else:
                    problem = tracing.dense_mismatch(args[0], int(jnp.shape(kernel)[0]))
                tracing.ACTIVE[-1].check(path, problem)
            z = next_fun(*args, **kwargs)
            found.setdefault(path, mod)
            return tracing.ACTIVE[-1].record(path, args[0], z) if tracing.ACTIVE else z

        self._icpt = icpt
        rec = tracing.Recorder(namer=tracing.path_name)
        tracing.ACTIVE.append(rec)
        try:
            with nn.intercept_methods(icpt):
                out = tracing.first_forward(lambda: _apply(module, variables, x, self._kw), x)
        finally:
            tracing.ACTIVE.pop()
        self._paths = list(rec.keys)
        self._plans = {k: rec.plans[k] for k in rec.keys if k in rec.plans}
        self.names = [tracing.path_name(p) for p in self._paths]
        self.first = tracing.Captured(out, rec.inputs, rec.preacts)
        self.refused = {tracing.path_name(k): why for k, why in rec.refused.items() if k not in rec.keys}
        self.specs = []
        for path in self._paths:
            mod = found[path]
            p = self._get(variables["params"], path)
            bias = p.get("bias") if getattr(mod, "use_bias", True) else None
            plan = self._plans.get(path)
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
                        tracing.path_name(path),
                    )
                )
            else:
                self.specs.append(Dense(kernel=p["kernel"], bias=bias, activation=None))
        self.unused: list[str] = []

    @staticmethod
    def _get(tree, path):
        for p in path:
            tree = tree[p]
        return tree

    def _variables(self, specs):
        params = dict(self.variables["params"])  # copied path by path below; input untouched

        def put(tree, path, spec, plan=None):
            tree = dict(tree)
            if len(path) == 1:
                leaf = dict(tree[path[0]])
                old = jnp.asarray(leaf["kernel"])
                kernel = spec.kernel if plan is None else plan.unmatrix(spec.kernel, old.shape)
                leaf["kernel"] = jnp.asarray(kernel, old.dtype)
                if "bias" in leaf and spec.bias is not None:
                    b = jnp.asarray(leaf["bias"])
                    leaf["bias"] = jnp.reshape(jnp.asarray(spec.bias, b.dtype), b.shape)
                tree[path[0]] = leaf
            else:
                tree[path[0]] = put(tree[path[0]], path[1:], spec, plan)
            return tree

        for path, spec in zip(self._paths, specs):
            params = put(params, path, spec, self._plans.get(path))
        return {**self.variables, "params": params}

    def run(self, specs, x, override=None) -> tracing.Captured:
        v = self._variables(specs)
        rec = tracing.Recorder(override, tracing.path_name)
        tracing.ACTIVE.append(rec)
        try:
            with nn.intercept_methods(self._icpt):
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
        pruned = set(self._paths)

        def f(kp, leaf):
            keys = tuple(k.key for k in kp if isinstance(k, jax.tree_util.DictKey))
            if keys[:-1] in pruned and keys[-1] in ("kernel", "bias"):
                return jnp.asarray(leaf) != 0
            return jnp.ones(jnp.shape(leaf), bool)

        return jax.tree_util.tree_map_with_path(f, params)
