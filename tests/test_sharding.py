"""solve_layer(mesh=) on 8 forced host devices and under jax.distributed with 2 processes.

Both run in subprocesses (XLA_FLAGS must be set before jax starts): experiments/sharded_check.py
(meshes 8x1, 1x8, 4x2; ReLU and linear, direct and Gram-space, coupled and per-neuron) and
experiments/multiprocess_check.py --quick (2 processes x 2 CPU devices, gloo collectives; jax
0.10's CPU collectives run here, so there is no skip: a failure to start them fails the test).
"""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_json_on_8_devices(script: str):
    """The JSON on the last stdout line of ``python -c script`` run on 8 forced host CPU
    devices (the run must succeed)."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_sharded_solves_equal_the_unsharded_solve():
    res = _run("sharded_check.py")
    rows = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert {tuple(r["mesh"]) for r in rows} == {(8, 1), (1, 8), (4, 2)}
    assert {(r["activation"], r["per_neuron"]) for r in rows} == {
        ("relu", False),
        ("relu", True),
        ("linear", False),
        ("linear", True),
    }
    for r in rows:
        assert r["rel"] <= 1e-3 and r["residual"] <= 1 + 1e-3, r
    # "units" really splits the kernel (GSPMD did not gather it onto one device).
    assert any("units" in r["kernel_sharding"] for r in rows if r["mesh"][1] > 1)


def test_two_processes_equal_one_process():
    res = _run("multiprocess_check.py", "--quick")
    rows = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert {r["case"] for r in rows} == {"relu-coupled-same", "relu-coupled-own", "linear-pn-same", "linear-pn-own"}
    assert all(r["ok"] for r in rows) and np.all([r["residual"] <= 1 + 1e-3 for r in rows])


def test_mesh_argument_is_checked_and_a_1x1_mesh_changes_nothing():
    import jax
    import pytest
    from jax.sharding import Mesh

    import nettrim_jax as nt

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    y = np.maximum(x @ rng.standard_normal((8, 3)).astype(np.float32), 0)
    dev = np.array(jax.devices()[:1])
    with pytest.raises(ValueError, match="axes must be named"):
        nt.solve_layer(x, y, epsilon=1.0, mesh=Mesh(dev.reshape(1, 1), ("rows", "units")))
    with pytest.raises(ValueError, match="must be a jax.sharding.Mesh"):
        nt.solve_layer(x, y, epsilon=1.0, mesh="samples")
    eps = 0.1 * float(np.linalg.norm(y))
    a = nt.solve_layer(x, y, epsilon=eps)
    b = nt.solve_layer(x, y, epsilon=eps, mesh=Mesh(dev.reshape(1, 1), ("samples", "units")))
    np.testing.assert_allclose(np.asarray(a.kernel), np.asarray(b.kernel), rtol=1e-5, atol=1e-6)


PRUNE_ON_MESH = r"""
import json, warnings
import jax, numpy as np
import nettrim_jax as nt
warnings.simplefilter("ignore", RuntimeWarning)
rng = np.random.default_rng(0)
net = [nt.Dense((rng.standard_normal((12, 16)) / 3).astype(np.float32), np.zeros(16, np.float32), "relu"),
       nt.Dense((rng.standard_normal((16, 4)) / 4).astype(np.float32), np.zeros(4, np.float32), "linear")]
x = rng.standard_normal((256, 12)).astype(np.float32)
mesh = jax.make_mesh((4, 2), ("samples", "units"))
out = {}
for scheme in ("cascade", "parallel"):
    a = nt.prune(net, x, scheme=scheme, epsilon=0.1, progress=False, gap_tol=1e-4, max_iters=20000)
    b = nt.prune(net, x, scheme=scheme, epsilon=0.1, progress=False, gap_tol=1e-4, max_iters=20000, mesh=mesh)
    out[scheme] = [[float(np.abs(np.asarray(s.kernel)).sum()), float(np.abs(np.asarray(t.kernel)).sum()),
                    float(l.misfit / l.epsilon)] for s, t, l in zip(a.model, b.model, b.report.layers)]
print(json.dumps(out))
"""


def test_prune_on_a_mesh_equals_prune_without():
    """prune(mesh=) on 8 forced host devices (4 x 2): every layer's l1 norm within 1e-3 of
    the unsharded run's, and every layer within its budget, both schemes."""
    out = _last_json_on_8_devices(PRUNE_ON_MESH)
    for scheme, layers in out.items():
        for plain, sharded, residual in layers:
            assert abs(plain - sharded) <= 1e-3 * plain, (scheme, plain, sharded)
            assert residual <= 1 + 1e-3, (scheme, residual)


PADDED = r"""
import json, warnings
import jax, numpy as np
import nettrim_jax as nt
warnings.simplefilter("ignore", RuntimeWarning)
rng = np.random.default_rng(1)
x = np.concatenate([rng.standard_normal((250, 20)), np.ones((250, 1))], 1).astype(np.float32)
w = (rng.standard_normal((21, 10)) * (rng.random((21, 10)) < 0.4)).astype(np.float32)
y = np.maximum(x @ w, 0)
out = []
for shape in ((4, 2), (1, 8), (8, 1)):
    mesh = jax.make_mesh(shape, ("samples", "units"))
    for per_neuron in (False, True):
        a = nt.solve_layer(x, y, epsilon=0.1 * np.linalg.norm(y), per_neuron=per_neuron, gap_tol=1e-4, max_iters=20000)
        b = nt.solve_layer(x, y, epsilon=0.1 * np.linalg.norm(y), per_neuron=per_neuron, gap_tol=1e-4, max_iters=20000,
                           mesh=mesh)
        out.append(dict(mesh=shape, per_neuron=per_neuron, shape=list(np.shape(b.kernel)),
                        a=float(a.info.objective), b=float(b.info.objective), residual=float(b.info.residual),
                        converged=bool(b.info.converged)))
net = [nt.Dense(w[:-1], w[-1], "relu"), nt.Dense((rng.standard_normal((10, 10)) / 3).astype(np.float32),
                                                 np.zeros(10, np.float32), "linear")]
res = nt.prune(net, x[:, :-1], epsilon=0.1, progress=False, mesh=jax.make_mesh((4, 2), ("samples", "units")))
out.append(dict(prune=[bool(l.converged) for l in res.report.layers]))
print(json.dumps(out))
"""


def test_a_mesh_that_does_not_divide_the_layer_is_padded():
    """P = 250 rows and M = 10 units on 4 x 2, 1 x 8 and 8 x 1 meshes: solved (zero rows and
    units appended, then dropped), equal to the unsharded solve; a 10-unit head prunes on a
    4 x 2 mesh (it used to be refused: "M = 10 units over 2 'units' shards")."""
    rows = _last_json_on_8_devices(PADDED)
    for r in rows[:-1]:
        assert r["shape"] == [21, 10] and r["converged"], r
        assert abs(r["a"] - r["b"]) <= 1e-3 * r["a"] and r["residual"] <= 1 + 1e-3, r
    assert rows[-1]["prune"] == [True, True]
