"""The compiled layer solver a network prune calls: one jit-compiled program per layer
setting (``jitted_solver``; the iteration cap is an argument, not part of the program), its
asynchronous start on a device (``dispatch``), the program's misfit of a kernel
(``misfit``, ``output_misfit``) and Frobenius norms (``fro``) as one compiled program each
(eager jnp ops compile one program apiece per shape, ~30 ms each on XLA's CPU backend), and
the release of every compiled program when the process
nears the kernel's limit on memory mappings (``release_if_crowded``)."""

from __future__ import annotations

import functools
import gc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.batching import current_pool
from nettrim_jax.solver import admm, pdhg
from nettrim_jax.solver.layer import solve_layer
from nettrim_jax.solver.xla_options import cpu_compile_options, top_or_nested

__all__ = ["jitted_solver", "dispatch", "fro", "misfit", "output_misfit", "release_if_crowded"]

_MAPS = Path("/proc/self/maps")
_MAP_LIMIT = Path("/proc/sys/vm/max_map_count")


def mapping_count() -> int | None:
    """This process's memory mappings (Linux), else None."""
    try:
        with _MAPS.open() as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def release_if_crowded(fraction: float = 0.5, limit: int | None = None) -> bool:
    """Drop JAX's compiled programs (``jax.clear_caches``, and this module's solvers) when
    the process holds more than ``fraction`` of ``limit`` memory mappings (default: the
    kernel's ``vm.max_map_count``, 65530 on most Linux systems); True when it did.

    Every program XLA's CPU backend compiles keeps a few mappings of its own (code,
    constants, data) for as long as JAX's caches hold it: a prune of a small transformer or
    CNN adds 1000-4000, the same prune again none.  A process that prunes many different
    models (a notebook, a benchmark, a test worker) passes the limit, and XLA's next mapping
    then ends it with a segmentation fault (seen after ~250 tests in one process).  The cost
    of dropping them is recompilation.  Off Linux (no ``/proc``) nothing is done."""
    count = mapping_count()
    if count is None:
        return False
    if limit is None:
        try:
            limit = int(_MAP_LIMIT.read_text())
        except (OSError, ValueError):
            limit = 65530
    if count <= fraction * limit:
        return False
    jitted_solver.cache_clear()
    jax.clear_caches()
    gc.collect()
    return True


@functools.lru_cache(maxsize=64)
def jitted_solver(
    activation: str,
    per_neuron: bool,
    solver: str,
    with_threshold: bool,
    opts: tuple,
    with_omega: bool = False,
    groups: tuple | None = None,
):
    """``(X, Y, eps, V[, omega, w0, weights]) -> (kernel, info)``, compiled once per setting
    (``groups``: the group-l1 row ids, ``solver.structure``; None for plain l1; ``w0``: a
    warm-start kernel; ``weights``: a weighted l1's, ``solve_layer(l1_weights=)``).

    ``max_iters`` in ``opts`` is not part of the compiled program: settings that differ only
    in it (a target search's capped steering solves and its full ones) share one compile, on
    an H200 about 6 s each.  Inside a ``batching.SolvePool`` (a ``sweep``) the call is
    handed to the pool, which batches it with the other points' solves."""
    options = dict(opts)
    cap = int(options.pop("max_iters", (admm.Options if solver == "admm" else pdhg.Options)().max_iters))
    core, top = _compiled_solver(
        activation, per_neuron, solver, with_threshold, tuple(sorted(options.items())), with_omega, groups
    )
    iters = np.int32(cap)

    def solve(X, Y, eps, thr, omega=None, w0=None, weights=None):
        args = (X, Y, eps, thr, omega, w0, weights, iters)
        if any(isinstance(a, jax.core.Tracer) for a in args):
            return core(*args)  # inside another program (a vmap, a scan): compiled as part of it
        pool = current_pool()  # a sweep's points: batched with the other points' solves
        if pool is not None:
            return pool.submit(core, args)
        return top_or_nested(top, core, *args)

    return solve


@functools.lru_cache(maxsize=64)
def _compiled_solver(activation, per_neuron, solver, with_threshold, opts: tuple, with_omega, groups):
    options = dict(opts)
    if groups is not None:
        options.update(structure="rows", groups=np.asarray(groups, np.int32))

    def f(X, Y, eps, thr, omega, w0, weights, iters):
        sol = solve_layer(
            X,
            Y,
            epsilon=eps,
            activation=activation,
            threshold=thr if with_threshold else None,
            per_neuron=per_neuron,
            solver=solver,
            omega=omega if with_omega else None,
            warm_start=w0,
            l1_weights=weights,
            max_iters=iters,
            **options,
        )
        return sol.kernel, sol.info

    f.__name__ = "nettrim_layer_solve"  # names the compiled program (jax_log_compiles, profiles)
    # (nested in another jit, vmap or scan; called at the top level, with the CPU options:
    # JAX takes compiler options on a top-level jit only)
    return jax.jit(f), jax.jit(f, compiler_options=cpu_compile_options())


def dispatch(f, A, Y, eps, V, device=None, per_neuron: bool = False, omega=None, w0=None, weights=None):
    """Start ``f(A, Y, eps, V[, omega, w0, weights])`` (asynchronously, on ``device`` if
    given; ``w0``: a warm-start kernel, ``weights``: a weighted l1's); returns a thunk giving
    numpy ``(kernel, info)``.

    In per-neuron mode, all-zero target columns are left out (and the same columns of
    ``w0`` and ``weights``).  A unit whose target column is identically zero (a dead ReLU
    unit, Omega empty) has the optimal kernel column 0; its own program needs no solve, and
    a per-neuron vmap would otherwise wait on it.  (In coupled mode the columns share one
    ball, so they stay in: the solver's scaling uses all columns, and the scan path must see
    the same problem.)  With an explicit ``omega`` (an affine epilogue) every column is
    solved: 0 need not be feasible off Omega."""

    def start(Ys, Vs, cols=slice(None)):
        extra = (omega, *(None if a is None else jnp.asarray(a)[:, cols] for a in (w0, weights)))
        args = (A, Ys, jnp.asarray(eps, A.dtype), Vs, *(extra if any(a is not None for a in extra) else ()))
        return f(*(jax.device_put(args, device) if device is not None else args))

    live = np.ones(Y.shape[1], bool)
    if omega is None and per_neuron:
        live = np.asarray(jnp.any(Y != 0, axis=0))
    n_live = int(live.sum())
    m = Y.shape[1]
    if n_live == m or n_live == 0:
        out = start(Y, V)
        return lambda: jax.device_get(out)
    cols = np.flatnonzero(live)
    out = start(Y[:, cols], V[:, cols] if jnp.ndim(V) == 2 else V, cols)

    def finish():
        K, info = jax.device_get(out)
        full = np.zeros((A.shape[1], m), K.dtype)
        full[:, cols] = K
        return full, info

    return finish


def fro(a, b=None) -> float:
    """||a||_F, or ||a - b||_F, as a Python float (one compiled program per shape)."""
    return float(_fro(a, b))


@jax.jit
def _fro(a, b):
    return jnp.sqrt(jnp.sum(jnp.square(a if b is None else a - b)))


# One compiled program per shape (the eager ops would compile one each, ~30 ms apiece on XLA's CPU)
@functools.partial(jax.jit, static_argnames=("program", "soft"))
def misfit(A, Y, K, program: str, omega=None, V=None, soft: bool = False):
    """The program's misfit of kernel K (``output_misfit`` of A K)."""
    return output_misfit(A @ K, Y, program, omega, V, soft)


@functools.partial(jax.jit, static_argnames=("program", "soft"))
def output_misfit(out, Y, program: str, omega=None, V=None, soft: bool = False):
    """The program's misfit of pre-activations ``out``: ||(out - Y)_Omega||_F (relu; Omega =
    ``omega`` or Y > 0) or ||out - Y||_F; with ``soft`` (the output budget) the relu misfit
    also counts the excess (out - V)_+ off Omega (V default 0)."""
    mask = (Y > 0) if omega is None else omega
    if program != "relu":
        r = out - Y
    elif soft:
        r = jnp.where(mask, out - Y, jnp.maximum(out - (0 if V is None else V), 0))
    else:
        r = jnp.where(mask, out - Y, 0)
    return jnp.sqrt(jnp.sum(r * r))
