"""Sharded layer solves against the unsharded one, on 8 forced host devices.

Run as a script (it sets XLA_FLAGS before jax starts): for meshes 8x1, 1x8 and 4x2
("samples" x "units"), ReLU and linear (direct and Gram-space), coupled and per-neuron (``QUICK``
by default, the full grid with --all), it solves one small layer with ``solve_layer(..., mesh=)`` and compares with the solve without a
mesh.  Prints one JSON line per case and exits 1 if any case misses: objective within 1e-3
relative, residual <= 1 + 1e-3, converged.  Used by tests/test_sharding.py.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import nettrim_jax as nt  # noqa: E402

MESHES = ((8, 1), (1, 8), (4, 2))
# The default (the pytest, about half the grid's compilations): every mesh with a ReLU and a
# linear case, coupled and per-neuron, the direct and the Gram-space linear path.  --all: the
# full grid, 3 meshes x (relu, linear direct, linear Gram) x (coupled, per-neuron).
QUICK = {("relu", "auto", False): ((8, 1), (4, 2)), ("relu", "auto", True): ((1, 8), (4, 2)),
         ("linear", False, True): ((8, 1), (4, 2)), ("linear", True, False): ((1, 8), (4, 2))}


def problem(p=256, n=40, m=16, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal((p, n - 1)), np.ones((p, 1))], 1).astype(np.float32)
    w = (rng.standard_normal((n, m)) * (rng.random((n, m)) < 0.4)).astype(np.float32)
    z = x @ w
    return x, np.maximum(z, 0), z + 0.05 * rng.standard_normal(z.shape).astype(np.float32)


def main(argv):
    x, y_relu, y_lin = problem()
    assert len(jax.devices()) == 8, jax.devices()
    ys = {"relu": y_relu, "linear": y_lin}
    grid = {(a, g, pn): MESHES for a, g in (("relu", "auto"), ("linear", False), ("linear", True))
            for pn in (False, True)}
    cases = grid if "--all" in argv else QUICK
    failed = 0
    for (activation, gram, per_neuron), meshes in cases.items():
        y = ys[activation]
        eps = 0.1 * float(np.linalg.norm(y))
        kw = dict(epsilon=eps, activation=activation, per_neuron=per_neuron, gram_space=gram)
        base = nt.solve_layer(x, y, **kw)
        for shape in meshes:
            mesh = Mesh(np.array(jax.devices()).reshape(shape), ("samples", "units"))
            t = time.perf_counter()
            sol = nt.solve_layer(x, y, mesh=mesh, **kw)
            obj, ref = float(sol.info.objective), float(base.info.objective)
            ok = (abs(obj - ref) <= 1e-3 * ref and float(sol.info.residual) <= 1 + 1e-3
                  and bool(sol.info.converged))
            k = np.asarray(sol.kernel)
            row = dict(mesh=shape, activation=activation, gram_space=gram, per_neuron=per_neuron,
                       objective=obj, unsharded=ref, rel=abs(obj - ref) / ref,
                       residual=float(sol.info.residual), iterations=int(sol.info.iterations),
                       unsharded_iterations=int(base.info.iterations),
                       kernel_sharding=str(sol.kernel.sharding.spec) if hasattr(sol.kernel.sharding, "spec") else "",
                       max_kernel_diff=float(np.max(np.abs(k - np.asarray(base.kernel)))),
                       seconds=round(time.perf_counter() - t, 2), ok=ok)
            print(json.dumps(row), flush=True)
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
