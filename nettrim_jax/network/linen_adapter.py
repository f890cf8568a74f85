"""``prune``'s view of a Linen ``(module, variables)`` pair.

``flax.linen.intercept_methods`` intercepts ``nn.Dense`` / ``nn.Conv`` ``__call__``; new
weights go in through a modified copy of ``variables``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nettrim_jax.network import tracing
from nettrim_jax.network.specs import Dense

__all__ = ["LinenAdapter"]


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
                out = tracing.first_forward(lambda: module.apply(variables, x), x)
        finally:
            tracing.ACTIVE.pop()
        self._paths = list(rec.keys)
        self.names = [tracing.path_name(p) for p in self._paths]
        self.first = tracing.Captured(out, rec.inputs, rec.preacts)
        self.specs = []
        for path in self._paths:
            mod = found[path]
            p = self._get(variables["params"], path)
            bias = p.get("bias") if getattr(mod, "use_bias", True) else None
            if isinstance(mod, nn.Conv):
                self.specs.append(tracing.conv_spec(p["kernel"], bias, mod.strides, mod.padding,
                                             mod.kernel_dilation, mod.input_dilation,
                                             mod.feature_group_count, tracing.path_name(path)))
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

    def run(self, specs, x, override=None) -> tracing.Captured:
        v = self._variables(specs)
        rec = tracing.Recorder(override, tracing.path_name)
        tracing.ACTIVE.append(rec)
        try:
            with nn.intercept_methods(self._icpt):
                out = self.module.apply(v, x)
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
