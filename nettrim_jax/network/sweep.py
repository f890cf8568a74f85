"""``sweep``: a model's frontier in one call, the points' prunes solved together.

    sweep(model, x, epsilon=[...] | sparsity=[...], seeds=0, samples=None,
          evaluate=None, batch=None, mode="auto", **prune options) -> list[SweepPoint]

One point per (value, seed): the ``prune`` of ``model`` at that epsilon or sparsity target,
with ``seed`` as its conv patch-sampling seed and, when ``samples`` is given, a calibration
subset of that many rows of ``x`` drawn with the seed.  ``mode="batched"`` runs a chunk of
``batch`` points at once (``network.batching``): their prunes advance together and every
layer solve they share a program for is one vmapped, jit-compiled call (parallel scheme:
the K programs of a layer; cascade: the K cascades' programs of a layer, each on its own
pruned inputs).  ``mode="sequential"`` runs the points one after another.  ``"auto"`` picks
batched on an accelerator and sequential on a CPU, where a vmapped solve costs about the
sum of its points.  Each point goes through ``prune`` itself, so it is the result that call
gives (in batched mode up to the batched solve's rounding: tested).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from nettrim_jax.network.batching import PoolStats, SolvePool
from nettrim_jax.network.prune import PruneResult, prune
from nettrim_jax.network.report import CollapsedModelError

__all__ = ["sweep", "SweepPoint", "sweep_batch"]

MODES = ("auto", "batched", "sequential")


class SweepPoint(NamedTuple):
    """One point of a sweep.

    epsilon / sparsity: the value asked (the other None); seed: its seed; result: the
    ``PruneResult`` (model, masks, report), None when the prune refused a collapsed model
    (``error`` then says why); value: ``evaluate(result.model)`` or None; mode: "batched" or
    "sequential", how it was solved; seconds: wall time of its chunk (batched: shared by the
    chunk's points), or of its prune; pool: in batched mode, what its chunk's pool did
    (``batching.PoolStats``: solves asked, compiled calls, how many batched, the largest)."""

    epsilon: float | list[float] | None
    sparsity: float | None
    seed: int
    result: PruneResult | None
    value: float | None
    mode: str
    seconds: float
    error: str | None = None
    pool: PoolStats | None = None

    @property
    def reached(self) -> float | None:
        """The fraction of kernel and bias weights removed (None for a failed point)."""
        if self.result is None:
            return None
        r = self.result.report
        return 1.0 - r.nnz_after / max(r.nnz_before, 1)

    @property
    def converged(self) -> tuple[int, int]:
        """(solves converged, solves) over the point's solved layers."""
        if self.result is None:
            return (0, 0)
        rows = [layer for layer in self.result.report.layers if layer.activation != "skipped"]
        return (sum(bool(layer.converged) for layer in rows), len(rows))

    def row(self) -> dict:
        """The point as a JSON-able dict (no model): what ``nettrim sweep`` writes."""
        rep = None if self.result is None else self.result.report
        done, total = self.converged
        return {
            "epsilon": self.epsilon,
            "sparsity_asked": self.sparsity,
            "seed": self.seed,
            "sparsity": self.reached,
            "nnz_after": None if rep is None else rep.nnz_after,
            "nnz_before": None if rep is None else rep.nnz_before,
            "output_discrepancy": None if rep is None else rep.output_discrepancy,
            "converged": done,
            "solves": total,
            "value": self.value,
            "mode": self.mode,
            "seconds": self.seconds,
            "error": self.error,
            "batched_calls": None if self.pool is None else self.pool.batched,
            "solver_calls": None if self.pool is None else self.pool.calls,
            "layer_solves": None if self.pool is None else self.pool.requests,
        }


def _values(name: str, values) -> list:
    """The point list, checked: non-empty, finite, epsilon >= 0, 0 <= sparsity < 1.  An
    epsilon point may itself be a list, one entry per prunable layer (``prune(epsilon=)``)."""
    listed = [values] if np.ndim(values) == 0 else list(values)
    if not listed:
        raise ValueError(f"sweep: {name} is an empty list; give at least one point")
    out: list = []
    for point in listed:
        if name == "epsilon" and np.ndim(point) == 1:
            out.append([_value(name, v) for v in point])
        elif np.ndim(point) == 0:
            out.append(_value(name, point))
        else:
            raise ValueError(
                f"sweep: a {name} point must be a number" + (" or one per layer" if name == "epsilon" else "")
            )
    return out


def _value(name: str, v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"sweep: {name} point {v} is not finite")
    if name == "epsilon" and v < 0:
        raise ValueError(f"sweep: epsilon point {v} is negative (epsilon >= 0)")
    if name == "sparsity" and not 0 <= v < 1:
        raise ValueError(f"sweep: sparsity point {v} is outside [0, 1) (the fraction of weights removed)")
    return v


def _seeds(seeds) -> list[int]:
    listed = [seeds] if np.ndim(seeds) == 0 else list(seeds)
    if not listed:
        raise ValueError("sweep: seeds is empty; give at least one seed")
    if any(int(s) != s or s < 0 for s in listed):
        raise ValueError(f"sweep: seeds must be non-negative integers, got {listed}")
    return [int(s) for s in listed]


def sweep_batch(model, x, keywords: dict, points: int) -> int:
    """How many points to solve at once (``batch=None``): as many as fit half of the
    accelerator's free memory (a quarter of the host's on CPU), each point holding its
    layers' captured inputs and outputs (sum over layers of P (N + M)) and one layer's solver
    state (at most 10 P x max(N, M) floats); at least 1, at most ``points``."""
    from nettrim_jax.network.adapters import adapt
    from nettrim_jax.network.checks import check_calibration

    net = adapt(model, check_calibration(x), keywords.get("model_kwargs"))
    base = net.first
    itemsize = 4 if not jax.config.read("jax_enable_x64") else 8
    held = sum(int(np.size(a)) + int(np.size(z)) for a, z in zip(base.inputs, base.preacts))
    state = max(10 * int(np.size(z)) for z in base.preacts)
    per_point = max(1, (held + state) * itemsize)
    return max(1, min(points, _free_bytes() // per_point))


def _free_bytes() -> int:
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        return int(0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def sweep(
    model,
    x,
    *records,
    epsilon=None,
    sparsity=None,
    seeds: int | Sequence[int] = 0,
    samples: int | None = None,
    evaluate: Callable[[Any], float] | None = None,
    batch: int | None = None,
    mode: str = "auto",
    progress: bool = True,
    on_point: Callable[[SweepPoint], None] | None = None,
    **keywords: Any,
) -> list[SweepPoint]:
    """Prune ``model`` at every point of an epsilon or sparsity list and every seed (see the
    module doc); one ``SweepPoint`` per (value, seed), values outer, seeds inner.

    Args:
      model, x, records, keywords: as ``prune`` (every option but ``epsilon`` / ``sparsity``
        / ``seed``, which the points set; ``epsilon`` with ``sparsity=`` points still seeds
        each layer's search when given in a record).
      epsilon: a list of epsilons (relative unless ``relative=False``; a point may be a
        list, one epsilon per prunable layer, as ``prune`` takes), or
      sparsity: a list of targets, fractions of weights removed in [0, 1).
      seeds: one or several seeds (each point's ``prune(seed=)``, and its calibration draw).
      samples: each seed's calibration set: that many rows of ``x`` drawn without
        replacement (None: all of ``x``, the same for every seed).
      evaluate: ``evaluate(pruned model) -> float`` recorded as ``value`` (e.g. accuracy).
      batch: points solved at once in batched mode (None: ``sweep_batch``, from the
        layer sizes and the device's free memory).
      mode: "auto" | "batched" | "sequential" (module doc).
      progress: a progress bar over points.
      on_point: called with each point as it is finished (chunk by chunk in batched mode).

    A point whose pruned model collapsed (``CollapsedModelError``) is recorded with
    ``result=None`` and its ``error``; any other error is raised.  Raises ``ValueError``
    (one line) for a bad point list (empty, non-finite, negative epsilon, sparsity outside
    [0, 1)), both or neither of ``epsilon`` and ``sparsity``, bad seeds, ``samples`` larger
    than ``x``, ``batch < 1`` or an unknown ``mode``.
    """
    if (epsilon is None) == (sparsity is None):
        raise ValueError("sweep: give epsilon=[...] or sparsity=[...] (one of them)")
    for key in ("seed", "resume", "on_layer"):
        if key in keywords:
            raise ValueError(f"sweep: {key}= is set per point by the sweep; leave it out")
    name = "epsilon" if epsilon is not None else "sparsity"
    values = _values(name, epsilon if epsilon is not None else sparsity)
    seed_list = _seeds(seeds)
    if mode not in MODES:
        raise ValueError(f"sweep: mode must be one of {MODES}, got {mode!r}")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"sweep: batch must be >= 1, got {batch}")
    n = int(np.shape(x)[0]) if np.ndim(x) else 0
    if samples is not None and not 1 <= int(samples) <= n:
        raise ValueError(f"sweep: samples={samples} must be between 1 and the {n} rows of x")
    if mode == "auto":
        mode = "sequential" if jax.default_backend() == "cpu" else "batched"
    grid = [(v, s) for v in values for s in seed_list]

    def point_x(seed: int):
        if samples is None:
            return x
        rows = np.sort(np.random.default_rng(seed).choice(n, int(samples), replace=False))
        return np.asarray(x)[rows]

    def task(v, s: int):
        return lambda: prune(model, point_x(s), *records, **{**keywords, name: v, "seed": s, "progress": False})

    if mode == "batched" and batch is None:
        batch = sweep_batch(model, point_x(seed_list[0]), keywords, len(grid))
    size = 1 if mode == "sequential" or batch is None else int(batch)
    bar = _bar(len(grid), progress)
    points: list[SweepPoint] = []
    try:
        for start in range(0, len(grid), size):
            chunk = grid[start : start + size]
            t0 = time.perf_counter()
            stats = None
            outcomes: list[tuple[Any, BaseException | None]] = []
            if mode == "sequential":
                for v, s in chunk:
                    try:
                        outcomes.append((task(v, s)(), None))
                    except CollapsedModelError as e:
                        outcomes.append((None, e))
            else:
                pool = SolvePool()
                # warnings.catch_warnings in the threads' prunes saves and restores the global
                # filters; interleaved, they could leave a thread's filter behind: restored here
                with warnings.catch_warnings():
                    outcomes = pool.run([task(v, s) for v, s in chunk])
                stats = pool.stats
            seconds = time.perf_counter() - t0
            for (v, s), (res, err) in zip(chunk, outcomes):
                if err is not None and not isinstance(err, CollapsedModelError):
                    raise err
                value = None if res is None or evaluate is None else float(evaluate(res.model))
                point = SweepPoint(
                    epsilon=v if name == "epsilon" else None,
                    sparsity=v if name == "sparsity" else None,
                    seed=s,
                    result=res,
                    value=value,
                    mode=mode,
                    seconds=seconds,
                    error=None if err is None else str(err),
                    pool=stats,
                )
                points.append(point)
                if on_point is not None:
                    on_point(point)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return points


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Net-Trim sweep", unit="point", leave=False)
