"""Parallel Net-Trim: every layer solved from the original network's own X_l and Y_l.

The problems are independent and are spread over ``devices`` (default ``jax.devices()``):
each whole layer problem is placed on one device (``jax.device_put``), largest first onto the
least loaded device, dispatched asynchronously through one jitted solver, then gathered in
layer order.  Why not ``shard_map`` over a stacked axis: layer problems have different shapes
(N, M, P), so stacking needs padding that changes each problem's scaling and cost, and the
batch each device sees would then depend on the device count; placing whole problems runs
the very same XLA program per layer whatever the number of devices, so results are bitwise
independent of it (tested with 1 vs 4 forced host devices).  Its bound is in
``network.bounds``.  The solves overlap, so a layer's reported seconds are its own dispatch
(compile, enqueue) plus its wait and refit when gathered: they add up to the wall time, and
a layer that finished during an earlier layer's wait shows little.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.adapters import Captured
from nettrim_jax.network.problems import (
    LayerOutcome,
    SolveConfig,
    absolute_epsilon,
    build_problem,
    carry_miss,
    dispatch,
    finish_kernel,
    skipped_outcome,
    solve_program,
    solved_outcome,
    solver_for,
)
from nettrim_jax.network.specs import kernel_matrix

__all__ = ["solve_parallel"]


def solve_parallel(
    orig: Sequence,
    base: Captured,
    programs: Sequence[str],
    eps_list: Sequence,
    cfg: SolveConfig,
    devices=None,
    done: Sequence[LayerOutcome | None] = (),
    on_layer: Callable[[int, LayerOutcome], None] | None = None,
    prebuilt: dict | None = None,
) -> list[LayerOutcome]:
    """One ``LayerOutcome`` per layer.  ``done[i]`` (if given and not None) is a finished
    layer taken as it is; ``on_layer(i, outcome)`` is called as each layer is gathered;
    ``prebuilt[i]``: layer i's ``LayerProblem`` built by the caller (an affine epilogue's)."""
    prebuilt = prebuilt or {}
    devices = list(devices) if devices is not None else jax.devices()
    L = len(orig)
    done = list(done) + [None] * (L - len(done))
    probs, eps, jobs = {}, {}, []
    for i in range(L):
        if programs[i] == "skipped" or done[i] is not None:
            continue
        probs[i] = (
            prebuilt[i]
            if i in prebuilt
            else build_problem(orig[i], base.inputs[i], base.preacts[i], programs[i], cfg.max_patches, cfg.seed + i)
        )
        eps[i] = absolute_epsilon(eps_list[i], probs[i].target, cfg.relative)
        p, n = probs[i].inputs.shape
        jobs.append((p * n * probs[i].target.shape[1], i))
    load = [0.0] * len(devices)
    placed, spent = {}, {}  # spent[i]: seconds charged to layer i so far (its dispatch)
    for cost, i in sorted(jobs, key=lambda t: (-t[0], t[1])):  # largest first, least loaded
        t0 = time.perf_counter()
        d = int(np.argmin(load))
        load[d] += cost
        pr = probs[i]
        zero = jnp.zeros((), pr.inputs.dtype)
        V = zero if pr.threshold is None else pr.threshold
        if cfg.mesh is not None or cfg.reweight or (cfg.keep and cfg.keep[i] is not None):
            # a mesh shards each layer in turn; a sparsity target is searched; reweighting
            # re-solves: all when gathered
            placed[i] = lambda i=i, pr=pr, V=V: solve_program(
                cfg, i, orig[i], pr.inputs, pr.target, eps[i], V, programs[i], omega=pr.omega, scale=pr.scale
            )
            continue
        f = solver_for(cfg, i, orig[i], programs[i], pr.threshold is not None, pr.omega is not None)
        placed[i] = dispatch(f, pr.inputs, pr.target, eps[i], V, devices[d], cfg.per_neuron, pr.omega)
        spent[i] = time.perf_counter() - t0
    outcomes: list[LayerOutcome] = []
    for i in range(L):
        prior = done[i]
        out: LayerOutcome
        if prior is not None:
            out = prior
            if prior.kernel is not None:
                carry_miss(cfg, i, prior.kernel)
        elif i not in placed:
            K = kernel_matrix(orig[i])
            out = skipped_outcome(int(K.shape[0]), int(K.shape[1]))
        else:
            t0 = time.perf_counter()
            got = placed[i]()
            K, info, e = got if len(got) == 3 else (*got, eps[i])
            pr = probs[i]
            K, fit, cg = finish_kernel(
                cfg, i, orig[i], pr.inputs, pr.target, K, programs[i], pr.threshold, pr.omega, pr.scale
            )
            carry_miss(cfg, i, K)
            K = K if pr.scale is None else K / pr.scale
            out = solved_outcome(pr, K, e, fit, info, spent.get(i, 0.0) + time.perf_counter() - t0, refit_iterations=cg)
        outcomes.append(out)
        if on_layer is not None and prior is None:
            on_layer(i, out)
    return outcomes
