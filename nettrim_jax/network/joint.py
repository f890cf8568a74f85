"""Joint refit: the pruned layers' kept weights re-fit together, on fixed masks, so that the
pruned model's output matches the original model's on the calibration data.

Each layer's program fits that layer alone (its own response; in cascade, the original
response from the pruned inputs).  The joint refit then minimises

    L(W) = ||f(x; W * M) - f(x; W_0)||_F^2 / ||f(x; W_0)||_F^2

over every pruned layer's kernel and bias at once, the masks M (the supports the layers'
programs chose) fixed, by L-BFGS (``optax.lbfgs``: zoom line search, so L never rises) from
the layer-wise result: the reconstruction beyond one layer of SNOWS (Lucas & Mazumder,
arXiv 2411.18376), here over the whole network and without labels.  Supports, hence every
count, are unchanged.  The layers' certificates are those of their solves before it: the
joint refit trades each layer's own fit for the model output's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nettrim_jax.network.activations import model_output
from nettrim_jax.network.tracing import Captured

__all__ = ["JointRefit", "joint_refit"]


class JointRefit(NamedTuple):
    """How the joint refit ended: ``loss_before`` / ``loss_after`` (L above, relative
    squared output error on the calibration data), L-BFGS ``iterations`` run, ``seconds``."""

    loss_before: float
    loss_after: float
    iterations: int
    seconds: float


def _flat_output(out):
    return model_output(Captured(out, [], []))


def joint_refit(net, x, specs: Sequence, pruned: Sequence[bool], iters: int) -> tuple[list, JointRefit]:
    """``specs`` (one per prunable layer of the adapter ``net``) with the kept weights of
    the layers flagged in ``pruned`` re-fit jointly (module doc), and how it ended.

    A layer's zero kernel and bias entries stay zero.  ``iters`` L-BFGS iterations at most
    (each a forward and backward pass over ``x``, plus line-search evaluations); the
    layer-wise ``specs`` come back unchanged when no iteration lowered L."""
    t0 = time.perf_counter()
    specs = list(specs)
    idx = [i for i, p in enumerate(pruned) if p]
    if not idx or iters <= 0:
        return specs, JointRefit(float("nan"), float("nan"), 0, 0.0)
    fn, consts = net.pure()
    target = _flat_output(net.first.output)
    norm = jnp.maximum(jnp.sum(target * target), 1e-30)
    masks = [
        (jnp.asarray(specs[i].kernel) != 0, None if specs[i].bias is None else jnp.asarray(specs[i].bias) != 0)
        for i in idx
    ]

    def weights(params):
        full = list(specs)
        for i, (k, b), (mk, mb) in zip(idx, params, masks):
            full[i] = full[i]._replace(kernel=k * mk, bias=None if b is None else b * mb)
        return full

    def loss(params, consts, x):
        err = _flat_output(fn(consts, weights(params), x)) - target
        # in the weights' dtype, as optax's line-search state holds it (float64 inputs under
        # jax_enable_x64 would make a float32 model's loss float64)
        return (jnp.sum(err * err) / norm).astype(dtype)

    params = [
        (jnp.asarray(specs[i].kernel), None if specs[i].bias is None else jnp.asarray(specs[i].bias)) for i in idx
    ]
    dtype = jnp.result_type(*[k for k, _ in params])
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(params, state, consts, x):
        value, grad = value_and_grad(params, consts, x, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss, consts=consts, x=x)
        return optax.apply_updates(params, updates), state, value

    start = params
    params, state, value = step(start, opt.init(start), consts, x)  # value: L at the layer-wise weights
    before = float(value)
    best, best_loss, done = start, before, 1
    while True:
        value = float(optax.tree_utils.tree_get(state, "value"))  # L at params
        if not np.isfinite(value):
            break
        if value < best_loss:
            best, best_loss = params, value
        if best_loss <= 1e-12 or done >= iters:
            break
        params, state, _ = step(params, state, consts, x)
        done += 1
    out = weights(best) if best_loss < before else specs
    return [jax.device_get(s) for s in out], JointRefit(before, min(best_loss, before), done, time.perf_counter() - t0)
