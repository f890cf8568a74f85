"""Two local processes under ``jax.distributed`` solve one layer over a global mesh; the result
must equal the one-process solve.

    PYTHONPATH=. python experiments/multiprocess_check.py [--quick]    # (make multiprocess-check)

The launcher starts 2 workers (coordinator 127.0.0.1:<free port>, CPU devices, gloo
collectives, 2 host devices each, so the global mesh is 2 "samples" x 2 "units" and spans both
processes).  Each worker solves the same ReLU layer and linear layer twice: once passing the
same full host arrays, once passing only its own rows (assembled with
``jax.make_array_from_process_local_data``).  Worker 0 writes the kernels; the launcher
solves the same problems in one plain process and compares (objective within 1e-3 relative,
residual <= 1 + 1e-3, kernels within 1e-3 of max |kernel|).  Exit status 0 when all agree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ALL_CASES = (("relu", False), ("relu", True), ("linear", False), ("linear", True))
QUICK_CASES = (("relu", False), ("linear", True))  # --quick (the pytest): one coupled, one per-neuron
CASES = QUICK_CASES if "--quick" in sys.argv else ALL_CASES


def problem(p=256, n=24, m=8, seed=1):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal((p, n - 1)), np.ones((p, 1))], 1).astype(np.float32)
    w = (rng.standard_normal((n, m)) * (rng.random((n, m)) < 0.4)).astype(np.float32)
    z = x @ w
    return x, {"relu": np.maximum(z, 0), "linear": z + 0.05 * rng.standard_normal(z.shape).astype(np.float32)}


def _epsilon(y):
    return 0.1 * float(np.linalg.norm(y))


def worker(rank: int, port: int, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank,
                               initialization_timeout=120)
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as PS

    import nettrim_jax as nt

    assert jax.process_count() == 2 and len(jax.devices()) == 4, (jax.process_count(), jax.devices())
    # Devices ordered so that each process holds one "samples" row of the mesh.
    devs = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devs).reshape(2, 2), ("samples", "units"))
    x, ys = problem()
    half = x.shape[0] // 2
    rows = slice(rank * half, (rank + 1) * half)
    results = {}
    for activation, per_neuron in CASES:
        y = ys[activation]
        kw = dict(epsilon=_epsilon(y), activation=activation, per_neuron=per_neuron, mesh=mesh)
        same = nt.solve_layer(x, y, **kw)
        gx = jax.make_array_from_process_local_data(NamedSharding(mesh, PS("samples", None)), x[rows], x.shape)
        gy = jax.make_array_from_process_local_data(NamedSharding(mesh, PS("samples", "units")), y[rows], y.shape)
        own = nt.solve_layer(gx, gy, **kw)
        for mode, sol in (("same", same), ("own", own)):
            key = f"{activation}-{'pn' if per_neuron else 'coupled'}-{mode}"
            results[key] = dict(kernel=np.asarray(multihost_utils.process_allgather(sol.kernel, tiled=True)),
                                objective=float(sol.info.objective), residual=float(sol.info.residual),
                                converged=bool(sol.info.converged))
    if rank == 0:
        np.savez(out, **{f"{k}/kernel": v["kernel"] for k, v in results.items()})
        with open(out + ".json", "w") as f:
            json.dump({k: {f: v[f] for f in ("objective", "residual", "converged")} for k, v in results.items()}, f)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(timeout: float = 600) -> int:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "kernels.npz")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        quick = ["--quick"] if CASES is QUICK_CASES else []
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(r), str(port), out] + quick, env=env)
                 for r in range(2)]
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append("timeout")
        if codes != [0, 0]:
            print(f"workers failed: exit codes {codes}")
            return 2
        kernels = dict(np.load(out))
        with open(out + ".json") as f:
            infos = json.load(f)

    import nettrim_jax as nt

    x, ys = problem()
    failed = 0
    for activation, per_neuron in CASES:
        y = ys[activation]
        base = nt.solve_layer(x, y, epsilon=_epsilon(y), activation=activation, per_neuron=per_neuron)
        ref, k_ref = float(base.info.objective), np.asarray(base.kernel)
        for mode in ("same", "own"):
            key = f"{activation}-{'pn' if per_neuron else 'coupled'}-{mode}"
            info, k = infos[key], kernels[f"{key}/kernel"]
            diff = float(np.max(np.abs(k - k_ref)))
            ok = (abs(info["objective"] - ref) <= 1e-3 * ref and info["residual"] <= 1 + 1e-3
                  and info["converged"] and diff <= 1e-3 * float(np.max(np.abs(k_ref))))
            print(json.dumps(dict(case=key, objective=info["objective"], one_process=ref,
                                  residual=info["residual"], max_kernel_diff=diff, ok=ok)))
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(launch())
