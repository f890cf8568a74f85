"""Joint refit: the pruned layers' kept weights re-fit together, on fixed masks, so that the
pruned model's output matches the original model's on the calibration data.

Each layer's program fits that layer alone (its own response; in cascade, the original
response from the pruned inputs).  The joint refit then minimises

    L(W) = ||f(x; W * M) - f(x; W_0)||_F^2 / ||f(x; W_0)||_F^2

over every pruned layer's kernel and bias at once, the masks M (the supports the layers'
programs chose) fixed, by L-BFGS from the layer-wise result: the reconstruction beyond one
layer of SNOWS (Lucas & Mazumder, arXiv 2411.18376), here over the whole network and without
labels.  Supports, hence every count, are unchanged.  The layers' certificates are those of
their solves before it: the joint refit trades each layer's own fit for the model output's.

The iteration runs on the host around one compiled ``value_and_grad`` of L (no loop inside
a compiled program): XLA's CPU backend runs a convolution's gradient several times slower
inside a while loop than at the top level (measured 3-9x), and a line search is such a loop.
The line search is a backtracking one on the sufficient-decrease (Armijo) condition, so L
never rises, and it usually takes the first step: one model pass forward and back per
iteration.  A curvature pair enters the L-BFGS memory only when it is positive.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from nettrim_jax.network.activations import model_output
from nettrim_jax.network.compiled import cpu_compile_options
from nettrim_jax.network.tracing import Captured

__all__ = ["JointRefit", "joint_refit"]

MEMORY = 10  # L-BFGS curvature pairs kept
SLOPE_RTOL = 1e-4  # Armijo: L(w + t d) <= L(w) + SLOPE_RTOL * t * <g, d>
MAX_BACKTRACKS = 20
STALL_WINDOW, STALL_RTOL = 10, 1e-4  # stop when L fell by less than STALL_RTOL of itself in the window


class JointRefit(NamedTuple):
    """How the joint refit ended: ``loss_before`` / ``loss_after`` (L above, relative
    squared output error on the calibration data), L-BFGS ``iterations`` run, ``seconds``,
    ``evaluations`` (model passes forward and back, the line search's included) and why it
    stopped (``stopped``: "iterations", "stalled", "no decrease", "exact", "small error" for a
    start whose L, measured by one forward pass, is below the ``min_loss`` asked (no
    iteration and no backward pass run), or "not finite" for a
    start whose L is not finite)."""

    loss_before: float
    loss_after: float
    iterations: int
    seconds: float
    evaluations: int = 0
    stopped: str = ""


def _flat_output(out):
    return model_output(Captured(out, [], []))


@jax.jit
def _direction(g, s_mem, y_mem, rho, gamma):
    """-H g by the L-BFGS two-loop recursion.  ``s_mem`` / ``y_mem``: (MEMORY, n) curvature
    pairs, oldest first, unused rows zero with ``rho`` 0 (so they drop out); ``gamma``: the
    initial inverse-Hessian scale."""

    def back(q, i):
        a = rho[i] * jnp.vdot(s_mem[i], q)
        return q - a * y_mem[i], a

    q, alpha = jax.lax.scan(back, g, jnp.arange(MEMORY - 1, -1, -1))
    r = gamma * q

    def fwd(r, ia):
        i, a = ia
        b = rho[i] * jnp.vdot(y_mem[i], r)
        return r + (a - b) * s_mem[i], None

    r, _ = jax.lax.scan(fwd, r, (jnp.arange(MEMORY), alpha[::-1]))
    return -r


def _lbfgs(value_and_grad, w, iters: int):
    """Minimise by L-BFGS from the flat vector ``w``: ``value_and_grad(w) -> (L, dL/dw)``.
    Returns (w, L(w), L at the start, iterations, evaluations, why it stopped)."""
    f, g = value_and_grad(w)
    f = float(f)
    start, evals, history = f, 1, [f]
    n = w.shape[0]
    s_mem = jnp.zeros((MEMORY, n), w.dtype)
    y_mem = jnp.zeros((MEMORY, n), w.dtype)
    rho = jnp.zeros((MEMORY,), w.dtype)
    gamma = 1.0 / max(float(jnp.linalg.norm(g)), 1.0)  # first step: a capped normalised gradient
    it, stopped = 0, "iterations"
    while it < iters:
        if not np.isfinite(f):  # only the start can be: an accepted step's value is finite
            stopped = "not finite"
            break
        if f <= 1e-12:
            stopped = "exact"
            break
        d = _direction(g, s_mem, y_mem, rho, jnp.asarray(gamma, w.dtype))
        slope = float(jnp.vdot(g, d))
        if not slope < 0:  # not a descent direction: restart from the gradient
            d, slope = -g * gamma, -gamma * float(jnp.vdot(g, g))
            rho = jnp.zeros_like(rho)
        t, found = 1.0, False
        for _ in range(MAX_BACKTRACKS):
            f1, g1 = value_and_grad(w + t * d)
            f1 = float(f1)
            evals += 1
            if np.isfinite(f1) and f1 <= f + SLOPE_RTOL * t * slope:
                found = True
                break
            # the minimiser of the quadratic through f, slope and f1, kept in [0.1 t, 0.5 t]
            denom = 2.0 * (f1 - f - slope * t) if np.isfinite(f1) else np.inf
            t = float(np.clip(-slope * t * t / denom if denom > 0 else 0.5 * t, 0.1 * t, 0.5 * t))
        if not found:
            stopped = "no decrease"
            break
        s, y = t * d, g1 - g
        sy, yy = float(jnp.vdot(s, y)), float(jnp.vdot(y, y))
        if sy > 1e-10 * yy and yy > 0:
            s_mem = jnp.concatenate([s_mem[1:], s[None]])
            y_mem = jnp.concatenate([y_mem[1:], y[None]])
            rho = jnp.concatenate([rho[1:], jnp.asarray([1.0 / sy], w.dtype)])
            gamma = sy / yy
        w, f, g = w + s, f1, g1
        it += 1
        history.append(f)
        if len(history) > STALL_WINDOW and history[-1 - STALL_WINDOW] - f < STALL_RTOL * f:
            stopped = "stalled"
            break
    return w, f, start, it, evals, stopped


def joint_refit(
    net, x, specs: Sequence, pruned: Sequence[bool], iters: int, min_loss: float = 0.0
) -> tuple[list, JointRefit]:
    """``specs`` (one per prunable layer of the adapter ``net``) with the kept weights of
    the layers flagged in ``pruned`` re-fit jointly (module doc), and how it ended.

    A layer's zero kernel and bias entries stay zero.  ``iters`` L-BFGS iterations at most
    (each usually one forward and backward pass over ``x``); fewer when L stops falling (by
    less than 1e-4 of itself over 10 iterations), and none when L at the start is below
    ``min_loss`` (``prune``'s ``joint_refit="auto"``: a layer-wise result already that close
    to the model's output).  The layer-wise ``specs`` come back unchanged when no iteration
    lowered L."""
    t0 = time.perf_counter()
    specs = list(specs)
    idx = [i for i, p in enumerate(pruned) if p]
    if not idx or iters <= 0:
        return specs, JointRefit(float("nan"), float("nan"), 0, 0.0)
    fn, consts = net.pure()
    target = _flat_output(net.first.output)
    norm = jnp.maximum(jnp.sum(target * target), 1e-30)
    params = [
        (jnp.asarray(specs[i].kernel), None if specs[i].bias is None else jnp.asarray(specs[i].bias)) for i in idx
    ]
    masks = [(k != 0, None if b is None else b != 0) for k, b in params]
    dtype = jnp.result_type(*[k for k, _ in params])
    w0, unravel = ravel_pytree(params)

    def weights(params):
        full = list(specs)
        for i, (k, b), (mk, mb) in zip(idx, params, masks):
            full[i] = full[i]._replace(kernel=k * mk, bias=None if b is None else b * mb)
        return full

    def loss(w, consts, x):
        err = _flat_output(fn(consts, weights(unravel(w)), x)) - target
        # in the weights' dtype (float64 inputs under jax_enable_x64 would make a float32
        # model's loss float64)
        return (jnp.sum(err * err) / norm).astype(dtype)

    w0 = w0.astype(dtype)
    if min_loss > 0:  # one forward pass decides (a backward pass through a CNN costs ~4x more)
        start = float(jax.jit(loss, compiler_options=cpu_compile_options())(w0, consts, x))
        if start < min_loss:
            return [jax.device_get(s) for s in specs], JointRefit(
                start, start, 0, time.perf_counter() - t0, 0, "small error"
            )
    # XLA CPU's older emitters: LeNet-5's pass 0.22 s against 0.245 s, compiled in half the time
    value_and_grad = jax.jit(jax.value_and_grad(loss), compiler_options=cpu_compile_options())
    w, after, before, done, evals, stopped = _lbfgs(lambda w: value_and_grad(w, consts, x), w0, iters)
    out = weights(unravel(w)) if after < before else specs
    seconds = time.perf_counter() - t0
    return [jax.device_get(s) for s in out], JointRefit(before, min(after, before), done, seconds, evals, stopped)
