"""Affine epilogues: a layer whose pre-activation z reaches a ReLU through a per-channel
affine map and/or an added tensor that does not depend on z (BatchNorm in inference mode,
a scale and shift, a residual branch): the ReLU's input is u = a * z + c, with a (M,) per
output channel and c per entry, and what the rest of the model sees is relu(u).

The ReLU program applies exactly, on the folded kernel U_a = U * a (column m scaled by
a_m; a negative a_m flips the column): a * z + c = X U_a + c, so with Y = relu(u_0) the
original ReLU output and Omega = {Y > 0}:

    on Omega:   X U_a + c = Y       <=>  X U_a = Y - c                (target T)
    off Omega:  X U_a + c <= 0      <=>  X U_a <= -c                  (threshold V)

The program is solved for U_a (``LayerProblem.scale``: a laid out as the kernel matrix;
the layer's kernel is U_a / a,
same zeros) with an explicit Omega (T may be negative on it) and the per-entry V; the
original kernel W * a meets it with zero misfit.  Misfits and epsilons are in the units of
the ReLU's input, i.e. of what the next layer sees (relative epsilons: relative to
||(Y - c)_Omega||_F, the layer's own contribution); the l1 objective is that of the folded
kernel (as if the BatchNorm were folded in).  Measured: in z units instead (kernel U, only
the sign flipped), BatchNorm scales up to 5.8 put the z-budget into the high-gain channels
and the ReLU output error on Fashion-MNIST's ResNet stem was 0.24 relative at epsilon 0.1,
worse than the linear program's 0.19.  In the cascade, c is re-measured on the pruned prefix
(a residual branch changes when upstream layers are pruned), Y stays the original's.

How a, c are found, from the model's own forward pass (no module names): every
``jax.nn.relu`` / ``nnx.relu`` / ``linen.relu`` call is tapped (``relu_taps``, by swapping
those module attributes while a probe runs); the layer's z is overridden by two random
probes w1, w2 and a ReLU whose input u moves with z is one with u = a w + c when
(u1 - u2) / (w1 - w2) is one constant a_m per channel and u - a w agrees across the probes
and the unmodified run; finally, pushing w further down where u1 < 0 must leave everything
after the layer unchanged (only relu(u) is used).  A model that calls ReLU by another name
(``from jax.nn import relu`` before the taps, ``jnp.maximum``) or an epilogue that is not of
this form gets no epilogue (the linear program, said in the report).  Not thread-safe: the
taps swap module attributes while a probe runs.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nettrim_jax.network.adapters import Adapter, Captured
from nettrim_jax.network.problems import LayerProblem, build_problem
from nettrim_jax.network.specs import kernel_matrix, program_targets

__all__ = ["Epilogue", "relu_taps", "detect_epilogue", "epilogue_problem", "offsets"]

_RELU = jax.nn.relu
_TAPPED: list = []  # stacks of recorded relu inputs (innermost last)


class Epilogue(NamedTuple):
    """scale: (M,) a, no zeros; relu_call: index (call order) of the ReLU whose input is
    a * z + c; flipped: number of channels with a < 0."""

    scale: Any
    relu_call: int
    flipped: int

    def describe(self) -> str:
        plain = bool(jnp.all(self.scale == 1))
        what = "relu(z + c)" if plain else "relu(a*z + c)"
        return f"relu via affine epilogue {what}" + (f", {self.flipped} columns flipped" if self.flipped else "")


def _tapped_relu(x):
    if _TAPPED:
        _TAPPED[-1].append(x)
    return _RELU(x)


@contextlib.contextmanager
def relu_taps():
    """Record every ReLU input (call order) while the block runs; yields the list."""
    seen: list = []
    homes = [m for m in (jax.nn, nnx, nn) if getattr(m, "relu", None) is _RELU]
    _TAPPED.append(seen)
    for m in homes:
        m.relu = _tapped_relu
    try:
        yield seen
    finally:
        for m in homes:
            m.relu = _RELU
        _TAPPED.pop()


def run_tapped(adapter: Adapter, specs, x, override=None) -> tuple[Captured, list]:
    """``adapter.run`` with the ReLU inputs recorded."""
    with relu_taps() as seen:
        cap = adapter.run(specs, x, override)
    return cap, list(seen)


def _after(cap: Captured, i: int):
    """Everything after layer i: later layers' inputs and the model output, flattened (numpy:
    the tests compare on the host, so a first prune compiles no program per eager op)."""
    parts = [np.ravel(np.asarray(a)) for a in cap.inputs[i + 1 :]]
    parts += [np.ravel(np.asarray(o)) for o in jax.tree.leaves(cap.output)]
    return np.concatenate(parts)


def _close(a, b, scale):
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))


def detect_epilogue(adapter: Adapter, specs, x, i: int) -> tuple[Epilogue | None, str]:
    """(the affine epilogue of layer ``i`` (module doc), "") or (None, why not: which test
    the ReLUs after the layer failed, for the report)."""
    base, r0 = run_tapped(adapter, specs, x)
    z0 = np.asarray(base.preacts[i])
    m = int(z0.shape[-1])
    cands = [k for k, u in enumerate(r0) if np.size(u) == z0.size]
    if not cands:
        return None, "no ReLU follows it"
    std = float(np.std(z0)) or 1.0
    rng = np.random.default_rng(4321)
    w1 = (z0 + std * rng.standard_normal(z0.shape)).astype(z0.dtype)
    w2 = (z0 + std * rng.standard_normal(z0.shape)).astype(z0.dtype)
    cap1, r1 = run_tapped(adapter, specs, x, (i, lambda t: jnp.asarray(w1)))
    _, r2 = run_tapped(adapter, specs, x, (i, lambda t: jnp.asarray(w2)))
    if not (len(r0) == len(r1) == len(r2)):
        return None, "the number of ReLU calls changes with the layer's output"
    dw = (w1 - w2).reshape(-1, m)
    why = "no ReLU of the layer's output shape moves with the layer's output"
    for k in cands:
        u0, u1, u2 = (np.reshape(np.asarray(r[k]), (-1, m)) for r in (r0, r1, r2))
        scale = max(float(np.max(np.abs(u1))), 1.0)
        du = u1 - u2
        if _close(du, 0 * du, scale):
            continue  # this ReLU does not see the layer
        a = np.median(du / dw, axis=0).astype(np.result_type(du.dtype, dw.dtype))
        vanishing = np.abs(a) <= 1e-6 * scale / std
        if bool(np.any(vanishing)):
            why = f"ReLU call {k}: {int(np.sum(vanishing))} channels scale the layer's output by about 0"
            continue
        if not _close(du, a * dw, scale):
            why = f"ReLU call {k}: its input is not a per-channel affine map of the layer's output"
            continue
        c1 = u1 - a * w1.reshape(-1, m)
        if not _close(c1, u0 - a * z0.reshape(-1, m), scale):
            why = f"ReLU call {k}: its input's offset changes with the layer's output"
            continue
        s = np.sign(a)
        push = np.where(u1 < 0, np.abs(rng.standard_normal(u1.shape)) * std + std, 0).astype(z0.dtype)
        w3 = (w1.reshape(-1, m) - s * push).reshape(z0.shape)
        ref = _after(cap1, i)
        cap3, _ = run_tapped(adapter, specs, x, (i, lambda t, w3=w3: jnp.asarray(w3)))
        if not _close(_after(cap3, i), ref, max(float(np.max(np.abs(ref))), 1.0)):
            why = f"ReLU call {k}: the layer's output also reaches the model by another path than this ReLU"
            continue
        return Epilogue(scale=jnp.asarray(a), relu_call=k, flipped=int(np.sum(a < 0))), ""
    return None, why


def offsets(adapter: Adapter, specs, x, i: int, ep: Epilogue):
    """(c (P, M), u (P, M)) of layer ``i`` in the model with ``specs``: c = u - a * z."""
    cap, relus = run_tapped(adapter, specs, x)
    z = cap.preacts[i]
    m = int(z.shape[-1])
    u = jnp.reshape(relus[ep.relu_call], (-1, m))
    return u - ep.scale * z.reshape(-1, m), u


def epilogue_problem(spec, X, Y, c, ep: Epilogue, max_patches: int | None, seed: int) -> LayerProblem:
    """The layer's exact ReLU program (module doc): X its input (model layout), Y (P, M) the
    original ReLU output relu(u_0), c (P, M) the offsets in the run that produced X.  The
    rows (and a conv's patch subset) are ``build_problem``'s."""
    m = int(Y.shape[-1])
    base = build_problem(spec, X, jnp.zeros_like(Y).reshape(-1, m), "linear", max_patches, seed)
    Y, c = program_targets(spec, Y.reshape(-1, m)), program_targets(spec, c.reshape(-1, m))
    if base.subset is not None:
        Y, c = Y[base.subset], c[base.subset]
    omega = Y > 0
    target = jnp.where(omega, Y - c, 0)
    a = jnp.asarray(ep.scale, target.dtype)
    # a laid out like the kernel matrix (a grouped conv's blocks each get their channels' a)
    scale = kernel_matrix(
        spec._replace(kernel=jnp.broadcast_to(a, jnp.shape(spec.kernel)), bias=None if spec.bias is None else a)
    )
    return base._replace(target=target, omega=omega, threshold=-c, scale=scale)


def to_program(kernel_mat, pr: LayerProblem):
    """A layer kernel (N[+1], M) in the program's (folded) columns: kernel * a."""
    return kernel_mat if pr.scale is None else kernel_mat * pr.scale


def from_program(kernel_mat, pr: LayerProblem):
    """Inverse of ``to_program``: the solved (folded) kernel back in the layer's columns."""
    return kernel_mat if pr.scale is None else kernel_mat / pr.scale
