"""Several prunes advancing together, their layer solves batched: the engine of ``sweep``.

``SolvePool.run(tasks)`` runs each task (a whole ``prune`` at one point of a sweep) in its
own thread.  Every compiled layer solve those prunes start (``compiled.jitted_solver``) is
handed to the pool instead of run at once; when every live task is waiting on one, the pool
solves the waiting requests that share a compiled program and argument shapes in one
``jax.vmap`` of that program (arguments equal across the group, such as the parallel
scheme's shared inputs X, are passed once, not stacked), and hands each task its slice.  So
K cascades advance together, layer by layer, with one batched solve per layer where their
programs agree (a sparsity search's steps included), and each point's result is the one its
own ``prune`` would give, up to the batched solve's rounding.  Requests that agree in every
argument (points whose prunes still coincide, as a sparsity search's first steps do) are
solved once.

A group is padded to the next power of two (its first request repeated) so that a run of
K points compiles at most log2(K) + 1 batched programs per layer shape.  A request alone in
its group runs unbatched, exactly as outside a pool.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SolvePool", "PoolStats", "current_pool"]

_local = threading.local()


def current_pool() -> SolvePool | None:
    """The pool the calling thread's solves go to (None outside ``SolvePool.run``)."""
    return getattr(_local, "pool", None)


class PoolStats(NamedTuple):
    """What a pool did: ``requests`` layer solves asked for, ``calls`` compiled calls made
    for them, ``batched`` how many of those calls were vmapped over several requests, and
    ``largest`` the most requests one call served."""

    requests: int
    calls: int
    batched: int
    largest: int


class _Request:
    __slots__ = ("core", "args", "result", "error", "done")

    def __init__(self, core, args):
        self.core, self.args = core, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class SolvePool:
    """Threads running prunes whose layer solves are batched across them (module doc)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._pending: list[_Request] = []
        self._requests = self._calls = self._batched = self._largest = 0

    @property
    def stats(self) -> PoolStats:
        return PoolStats(self._requests, self._calls, self._batched, self._largest)

    def run(self, tasks: Sequence[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run every task in its own thread, their solves batched; returns (value, error)
        per task, in order (an exception a task raised is returned, not raised)."""
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(tasks)

        def body(k: int, task: Callable[[], Any]) -> None:
            _local.pool = self
            try:
                outcomes[k] = (task(), None)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                outcomes[k] = (None, e)
            finally:
                _local.pool = None
                with self._cond:
                    self._active -= 1
                    self._flush_if_all_waiting()

        with self._cond:
            self._active += len(tasks)
        threads = [threading.Thread(target=body, args=(k, t), daemon=True) for k, t in enumerate(tasks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcomes

    def submit(self, core: Callable, args: tuple):
        """``core(*args)``, run when every live task waits on a solve, batched with the
        requests that share ``core`` and argument shapes."""
        req = _Request(core, args)
        with self._cond:
            self._pending.append(req)
            self._requests += 1
            self._flush_if_all_waiting()
            while not req.done:
                self._cond.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _flush_if_all_waiting(self) -> None:
        """(Lock held.)  Solve the pending requests once no live task can add another."""
        if not self._pending or len(self._pending) < self._active:
            return
        pending, self._pending = self._pending, []
        groups: dict[Any, list[_Request]] = {}
        for req in pending:
            groups.setdefault((id(req.core), _signature(req.args)), []).append(req)
        for group in groups.values():
            try:
                results = _solve_group(group)
                for req, res in zip(group, results):
                    req.result = res
            except BaseException as e:  # noqa: BLE001 - raised in each requesting task
                for req in group:
                    req.error = e
            for req in group:
                req.done = True
            self._calls += 1
            self._batched += len(group) > 1
            self._largest = max(self._largest, len(group))
        self._cond.notify_all()


def _signature(args: tuple) -> tuple:
    """Shapes and dtypes of the arguments (None kept: it selects a different program)."""
    return tuple(None if a is None else (tuple(np.shape(a)), str(jnp.result_type(a))) for a in args)


def _shared(values: list) -> bool:
    """The same argument for every request: passed once, not stacked."""
    first = values[0]
    if all(v is first for v in values):
        return True
    return all(bool(jnp.array_equal(first, v)) for v in values[1:])


def _solve_group(group: list[_Request]) -> list:
    if len(group) == 1:
        return [group[0].core(*group[0].args)]
    width = len(group[0].args)
    columns = [[req.args[j] for req in group] for j in range(width)]
    axes = tuple(None if col[0] is None or _shared(col) else 0 for col in columns)
    if all(ax is None for ax in axes):  # the same solve asked by every point: solved once
        return [group[0].core(*group[0].args)] * len(group)
    size = 1 << (len(group) - 1).bit_length()  # padded to a power of two
    args = []
    for col, ax in zip(columns, axes):
        if ax is None:
            args.append(col[0])
        else:
            rows = [jnp.asarray(v) for v in col] + [jnp.asarray(col[0])] * (size - len(col))
            args.append(jnp.stack(rows))
    out = _vmapped(group[0].core, axes)(*args)
    return [jax.tree.map(lambda a, k=k: a[k], out) for k in range(len(group))]


@functools.lru_cache(maxsize=64)
def _vmapped(core: Callable, axes: tuple):
    batch = jax.vmap(core, in_axes=axes)

    def nettrim_layer_solve_batch(*args):
        return batch(*args)

    return jax.jit(nettrim_layer_solve_batch)
