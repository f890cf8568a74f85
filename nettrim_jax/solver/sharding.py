"""One layer problem laid out over a device mesh with axes "samples" and "units".

``solve_layer(..., mesh=)`` places X (P, N) as rows over "samples", Y (P, M) as rows over
"samples" and columns over "units", the kernel (N, M) as columns over "units", and calls the
same jitted solve as without a mesh: XLA's SPMD partitioner (GSPMD) then splits every
product with X over the row shards and inserts the all-reduces (X^T Z, the ball's norm, the
certificate's sums), with no solver code written per layout.  Either axis may have size 1.

Why jit + NamedSharding and not ``shard_map``: the solver is a ``lax.while_loop`` over
pytrees whose arrays are (P, M), (N, M) and scalars; with inputs sharded, GSPMD keeps
the (P, M) iterates sharded like Y and the (N, N) factor replicated, which is the layout a
hand-written ``shard_map`` would choose, and it leaves admm.py / pdhg.py untouched (they are
shared with other solver work).  A ``shard_map`` version was not written, so the two were not
measured against each other.  What was measured: results equal the unsharded solve (meshes 8x1,
1x8, 4x2; same iteration counts, objective within 3e-7 relative; tests/test_sharding.py), and
on 8 forced host devices of a 2-core CPU, P = 20,000, N = M = 256, 200 iterations
(``experiments/bench_scale.py``, results/bench_scale.md): ReLU 183 ms per iteration on an 8x1
mesh against 205 ms on one device, linear 179 against 180 ms.  Host devices share the two
cores, so that is the partitioning overhead (none measurable), not a speed-up.

Multi-process (``jax.distributed.initialize``): the mesh spans every process's devices.  Each
process may pass the same full host arrays (numpy or fully addressable jax arrays; each
keeps only its shards), or a global ``jax.Array`` already laid out over the mesh (for
example from ``jax.make_array_from_process_local_data`` with each process's own rows),
which is used as is.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

SAMPLES = "samples"
UNITS = "units"


def padding(mesh, p: int, m: int) -> tuple[int, int]:
    """(rows, units) to append so that ``mesh``'s "samples" size divides P and its "units"
    size divides M; a one-line ValueError unless ``mesh`` is a Mesh with axes exactly
    ("samples", "units") (in either order)."""
    check_axes(mesh)
    return (-p) % mesh.shape[SAMPLES], (-m) % mesh.shape[UNITS]


def check_axes(mesh) -> None:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if set(mesh.axis_names) != {SAMPLES, UNITS} or len(mesh.axis_names) != 2:
        raise ValueError(f"mesh axes must be named ('samples', 'units'), got {tuple(mesh.axis_names)}")


def check_mesh(mesh, p: int, m: int) -> None:
    """One-line ValueError unless ``mesh`` is a Mesh with axes exactly ("samples", "units")
    (in either order) whose sizes divide P and M (``solve_layer`` pads a problem held on this
    host instead; arrays already spread over processes must fit)."""
    check_axes(mesh)
    ns, nu = mesh.shape[SAMPLES], mesh.shape[UNITS]
    if p % ns or m % nu:
        raise ValueError(
            f"mesh {dict(mesh.shape)} does not divide the problem: P = {p} rows over "
            f"{ns} 'samples' shards, M = {m} units over {nu} 'units' shards (arrays spread over "
            "processes are not padded: pad them or pick a mesh whose sizes divide P and M)"
        )


def auto_axes(mesh: Mesh) -> Mesh:
    """The same devices and axis names with every axis of type Auto: the solver lets XLA
    (GSPMD) place the reductions, which a mesh with Explicit axes (``jax.make_mesh``'s
    default in recent jax) refuses for a product contracting a sharded axis."""
    from jax.sharding import AxisType

    types = getattr(mesh, "axis_types", None)
    if types is None or all(t == AxisType.Auto for t in types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def spec(mesh: Mesh, kind: str) -> NamedSharding:
    """The layout of one operand: "rows" (P, N), "outputs" (P, M), "kernel" (N, M),
    "replicated"."""
    return NamedSharding(
        mesh,
        {"rows": PS(SAMPLES, None), "outputs": PS(SAMPLES, UNITS), "kernel": PS(None, UNITS), "replicated": PS()}[kind],
    )


def place(mesh: Mesh, a, kind: str, dtype):
    """``a`` as a global array laid out as ``kind`` over ``mesh`` (see the module doc)."""
    sharding = spec(mesh, kind)
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        if a.dtype != dtype:
            raise ValueError(f"a global array spanning processes must already be {np.dtype(dtype).name}, got {a.dtype}")
        return a
    if isinstance(a, jax.Array) and a.is_fully_addressable and jax.process_count() == 1:
        return jax.device_put(a.astype(dtype), sharding)
    host = np.asarray(a, dtype)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def host_value(a):
    """``a`` as a numpy array on this host, or None when it is traced or only partly here.
    A fully replicated global array (a scalar result under ``jax.distributed``) is read from
    this process's own copy."""
    if isinstance(a, jax.core.Tracer):
        return None
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
        return np.asarray(a)
    if a.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
    return None
