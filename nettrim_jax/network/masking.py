"""``masked(optimizer, masks)``: fine-tune a pruned model with its pruned weights kept at zero.

API::

    masked(optimizer: optax.GradientTransformation, masks) -> optax.GradientTransformation

``masks`` is a pytree of bools with the structure of the parameters the optimizer sees
(``PruneResult.masks``: an ``nnx.State`` over ``nnx.Param`` for NNX models, used with
``nnx.Optimizer(model, masked(tx, masks), wrt=nnx.Param)``; the ``params`` dict for Linen;
a list of specs for plain specs).  Gradients are zeroed where the mask is False before the
inner optimizer sees them (so its statistics ignore pruned weights), and its updates are
zeroed there again afterwards, so ``params + updates`` leaves a pruned (zero) weight exactly
zero whatever the inner transformation does (momentum, weight decay, ...).  Weights with a
True mask are updated exactly as by ``optimizer``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["masked", "MaskedState"]


class MaskedState(NamedTuple):
    """State of ``masked``: the inner optimizer's state."""

    inner_state: Any


def _apply_mask(tree, masks):
    return jax.tree.map(
        lambda u, m: None if u is None else jnp.where(m, u, jnp.zeros_like(u)), tree, masks, is_leaf=lambda v: v is None
    )


def masked(optimizer: optax.GradientTransformation, masks) -> optax.GradientTransformation:
    """Wrap ``optimizer`` so that updates are exactly zero where ``masks`` is False."""

    def init_fn(params):
        return MaskedState(optimizer.init(params))

    def update_fn(updates, state, params=None, **extra):
        updates = _apply_mask(updates, masks)
        if extra:
            new, inner = optimizer.update(updates, state.inner_state, params, **extra)
        else:
            new, inner = optimizer.update(updates, state.inner_state, params)
        return _apply_mask(new, masks), MaskedState(inner)

    return optax.GradientTransformation(init_fn, update_fn)
