"""Scale benchmark (issue 14): seconds, iterations and peak memory of one layer solve against
P (rows), N and M, Gram-space vs direct linear programs, ReLU programs, 1 vs 8 devices, and
the per-iteration time against the GEMM floor measured in the same run.

Each case runs in its own subprocess (so peak RSS, ``ru_maxrss``, is that case's, and the
device count can differ).  Problems are synthetic with the shapes of a trained layer: X =
[Gaussian features, 1], a kernel with 40% nonzeros, Y = X W + noise (linear, noise 2% of the
signal; epsilon = 0.05 ||Y||) or Y = relu(X W) (epsilon = 0.05 ||Y||).  Linear Gram-space
cases stream X, Y in chunks of 10,000 rows generated on the fly, so the rows never exist
together in memory (the point of the Gram path); direct cases hold X and Y.

Columns: setup_s (Gram path: accumulate X^T X, X^T Y, ||Y||^2 over the chunks plus the
Cholesky; data generation excluded), solve_s (compiled, steady state: the second of two
identical calls), total_s = setup_s + solve_s, iterations, per_iter_ms = solve_s /
iterations (so it includes per-solve setup such as the direct path's factorization),
floor_ms = the products an ADMM iteration cannot avoid (direct: X^T B, X U, (X^T X + I)^-1 C;
Gram: the same with R (N, N) in place of X), jitted and timed in a loop, and peak_MB (host
peak RSS on CPU; on GPU/TPU the device's peak_bytes_in_use).

Usage: python experiments/bench_scale.py [--quick] [--big] [--out DIR]
  --quick  CI size (about 2 minutes on 2 CPU cores).
  (full)   linear P = 10^3..10^6 (Gram) and to 10^5 (direct), ReLU to 10^5, N = M to 1024,
           1 vs 8 host devices.  N = M = 4096 is skipped on CPU: one Gram-space iteration
           there is three 4096^3 GEMMs (about 0.4 TFLOP), minutes per solve on 2 cores.
  --big    add N = M = 4096 and drop the forced-host-device cases; meant for a GPU
           (experiments/gpu_check.sh).  ReLU stays at P <= 10^5.
Writes bench_scale.md, bench_scale.json and bench_scale.png into the results folder.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CHUNK = 10_000

DOCS = """
## Reading the table

- Gram-space solve time is nearly flat in P (the iterations run on N rows); what grows with P
  is the one pass over the rows that accumulates X^T X, X^T Y, ||Y||^2 (2 P N (N + M) flops,
  7.7 s for 10^6 x 256 rows on this CPU).  Its per-iteration time is 4-6x the floor of three
  N x N x M products because the solve is only 50-80 iterations long and each solve also
  scales, factors (N^3) and certifies once.
- The direct and ReLU solves run at 1.3-1.6x the floor of their three products (X^T B, X U,
  (X^T X + I)^-1 C) once P >= 10^4; at P = 10^3 fixed costs dominate.
- 8 forced host devices share the same 2 cores: that row pair measures partitioning overhead
  (none measurable), not a speed-up.  Timings were taken while three other sessions used the
  same two cores; expect +-30% between runs.

## Large layers: Gram space, meshes, several processes

**Linear layers in Gram space.** For `activation="linear"` the program on P rows equals one on
N rows: with X^T X = R^T R (Cholesky), Q = R^-T X^T Y and c = ||Y||^2 - ||Q||^2,
||XU - Y||^2 = ||RU - Q||^2 + c, so the budget becomes sqrt(eps^2 - c) (eps^2 < c: no kernel
fits, `ValueError`).  `solve_layer` does this by itself when P > 2N (`gram_space="auto"`;
`True` / `False` force it).  Calibration can be streamed, in O(N^2 + NM) memory and one pass:

```python
from nettrim_jax.solver import gram_space as gs
stats = gs.init(N, M)                      # float32; dtype=jnp.float64 under jax_enable_x64
for x_chunk, y_chunk in batches:           # (p, N), (p, M), any p
    stats = gs.accumulate(stats, x_chunk, y_chunk)
sol = gs.solve_layer_gram(stats, epsilon=0.05 * float(jnp.sqrt(stats.yty.sum())))
```

What is reported stays in the original program's terms: the residual is
sqrt(c + ||RU - Q||^2) / eps (with rows at hand, `solve_layer` measures ||XU - Y|| itself), and
the lower bound comes from a dual point of the P-row program rebuilt from the N-row one
(`gram_space.certificate`), so it is certified whatever ridge the factorization needed.  A
ridge is added only when X^T X is numerically singular (a dead input, a duplicated feature);
it makes the N-row constraint stricter, never looser.  In float32, c from streamed statistics
carries an error of a few ulps of ||Y||^2 (tests: below 2e-6 ||y_m||^2 at P = 20,000), which
matters only for budgets eps below about 1e-3 ||Y||; `solve_layer` with the rows computes c
from the least-squares residual instead.

**One layer over a device mesh.** `solve_layer(X, Y, ..., mesh=mesh)` with
`mesh = jax.make_mesh((S, U), ("samples", "units"))` splits the rows of X and Y over
"samples" and the output units over "units" (S must divide P, U must divide M); either may be
1.  It is the same jitted solve with `NamedSharding` inputs: XLA's partitioner splits the
products with X by rows and inserts the all-reduces.  Results equal the unsharded solve to
the solver's tolerance (tests/test_sharding.py: meshes 8x1, 1x8, 4x2, ReLU and linear,
coupled and per-neuron, same iteration counts, objective within 3e-7 relative).  The Gram
path accepts a mesh too (statistics summed over "samples", the N-row solve split over
"units").

**Several processes (multi-GPU hosts, TPU pod slices).**  Call `jax.distributed.initialize()`
in every process (on TPU pods and SLURM it finds its peers itself; elsewhere pass
`coordinator_address`, `num_processes`, `process_id`; on CPUs also
`jax.config.update("jax_cpu_collectives_implementation", "gloo")`), build the mesh over
`jax.devices()` (all processes' devices) and call `solve_layer` in every process with the same
arguments.  Each process passes either the same full host arrays (each keeps only its
shards) or a global array of its own rows:

```python
rows = NamedSharding(mesh, PartitionSpec("samples", None))
outs = NamedSharding(mesh, PartitionSpec("samples", "units"))
X = jax.make_array_from_process_local_data(rows, x_local, (P, N))
Y = jax.make_array_from_process_local_data(outs, y_local, (P, M))
sol = nt.solve_layer(X, Y, epsilon=eps, mesh=mesh)     # eps: the same number in every process
kernel = jax.experimental.multihost_utils.process_allgather(sol.kernel, tiled=True)
```

`make multiprocess-check` runs 2 local CPU processes this way and compares with 1 process.

**Memory per layer.**  Besides the caller's X (P, N) and Y (P, M), the compiled solve holds
the arrays in the table below (XLA's own buffer assignment; the O(N^2 + NM) terms are
negligible for P >> N).  The ReLU ADMM solve thus needs about 6.5 + 3 P x M arrays plus 2 P x N
(the scaled X and, on CPUs, a contiguous X^T) on top of its inputs; sharding over "samples"
divides all of it by the axis size.  The 3 P x M `state` arrays are the warm-start state
returned in `LayerSolution.state`: drop it (`sol._replace(state=None)`) when no warm start
follows.  The table is for the P-row solve; the Gram path (linear layers with P > 2N) keeps
no P-sized array once the statistics are accumulated (peak RSS above: 586 MB at P = 10^3,
624 MB at P = 10^6).  Per-neuron mode adds about 3 P x M (column-major copies for `vmap`); PDHG keeps
running averages and needs more, so ADMM is the memory choice.  The only avoidable P x M array
found was a scalar threshold broadcast to (P, M) inside the loop; it is now kept as a (1, M) row.

**Matmul precision.**  The solve runs its float32 products at `precision="highest"`
(`engine.MATMUL_PRECISION`).  On GPUs the default is TF32 (10-bit mantissa), on TPUs bf16
passes: a relative error near 1e-3 per product, larger than the stopping test's margin
(1e-3 eps with eps a few percent of ||Y||), so a kernel could be certified feasible that is
not.  On CPUs the setting changes nothing.
"""


def _rows(rng, p, n, w, activation, noise):
    x = np.concatenate([rng.standard_normal((p, n - 1), np.float32), np.ones((p, 1), np.float32)], 1)
    z = x @ w
    if activation == "relu":
        return x, np.maximum(z, 0)
    return x, z + noise * rng.standard_normal(z.shape, np.float32)


def _kernel(n, m, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, m), np.float32) * (rng.random((n, m)) < 0.4)
    noise = 0.02 * float(np.sqrt(np.mean(np.sum(w * w, 0))))  # 2% of the signal's rms
    return w.astype(np.float32), noise


def _timed(f, *a, **k):
    import jax
    t = time.perf_counter()
    out = f(*a, **k)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def _floor_ms(rows, n, m, reps=10):
    """ms per iteration of the three products an ADMM iteration needs (rows = P, or N)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (rows, n), jnp.float32) / np.sqrt(n)
    xt = jax.lax.optimization_barrier(x.T) if jax.default_backend() == "cpu" else x.T
    inv = jnp.eye(n, dtype=jnp.float32) * 0.5
    b = jax.random.normal(key, (rows, m), jnp.float32)
    u = jnp.zeros((n, m), jnp.float32)

    @jax.jit
    def loop(x, xt, inv, b, u):
        def body(_, c):
            b, u = c
            u = inv @ (xt @ b + u)
            return 0.5 * (x @ u) + 0.5 * b, u
        return jax.lax.fori_loop(0, reps, body, (b, u))

    with jax.default_matmul_precision("highest"):
        jax.block_until_ready(loop(x, xt, inv, b, u))
        _, t = _timed(loop, x, xt, inv, b, u)
    return 1e3 * t / reps


def run_case(case: dict) -> dict:
    """One measurement (in this process); see the module doc for the columns."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import nettrim_jax as nt
    from nettrim_jax.solver import gram_space as gs

    warnings.filterwarnings("ignore", message="Net-Trim solve did not converge")
    kind, p, n, m = case["kind"], case["p"], case["n"], case["m"]
    w, noise = _kernel(n, m, seed=0)
    rng = np.random.default_rng(1)
    opts = dict(max_iters=case.get("max_iters", 5000))
    row = dict(case)
    row["devices"] = len(jax.devices())
    row["device"] = jax.devices()[0].device_kind
    if kind == "linear-gram":
        stats = gs.init(n, m)
        setup = 0.0
        first = _rows(np.random.default_rng(2), min(CHUNK, p), n, w, "linear", noise)
        jax.block_until_ready(gs.reduce(gs.accumulate(stats, *first)))  # compile outside the timing
        for i in range(0, p, CHUNK):
            xc, yc = _rows(rng, min(CHUNK, p - i), n, w, "linear", noise)
            stats, t = _timed(gs.accumulate, stats, xc, yc)
            setup += t
        red, t = _timed(gs.reduce, stats)
        setup += t
        eps = 0.05 * float(np.sqrt(np.sum(np.asarray(stats.yty))))
        sol = gs.solve_layer_gram(red, eps, **opts)  # compile
        sol, solve = _timed(gs.solve_layer_gram, red, eps, **opts)
        floor = _floor_ms(n, n, m)
        row["ridge"] = float(red.ridge)
    else:
        activation = "relu" if kind == "relu" else "linear"
        x, y = _rows(rng, p, n, w, activation, noise)
        eps = 0.05 * float(np.linalg.norm(y))
        mesh = None
        if case.get("mesh"):
            mesh = Mesh(np.array(jax.devices()).reshape(case["mesh"]), ("samples", "units"))
        x, y = jnp.asarray(x), jnp.asarray(y)
        kw = dict(epsilon=eps, activation=activation, gram_space=False, mesh=mesh, **opts)
        sol = nt.solve_layer(x, y, **kw)
        sol, solve = _timed(nt.solve_layer, x, y, **kw)
        setup = 0.0
        floor = _floor_ms(p, n, m)
    it = int(sol.info.iterations)
    row.update(setup_s=setup, solve_s=solve, total_s=setup + solve, iterations=it,
               converged=bool(sol.info.converged), objective=float(sol.info.objective),
               residual=float(sol.info.residual), gap=float(sol.info.gap),
               per_iter_ms=1e3 * solve / max(it, 1), floor_ms=floor,
               peak_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:  # accelerators: the device's own peak, not host RSS
        row["peak_MB"] = stats["peak_bytes_in_use"] / 2 ** 20
        row["peak_kind"] = "device"
    return row


def memory_model(p: int = 8192) -> list[dict]:
    """Arrays the compiled solve keeps, from XLA's own buffer assignment (``memory_analysis``
    of ``engine.solve``), in units of P x M and P x N float32 arrays.  Two shapes, (N, M) =
    (32, 128) and (128, 32), separate the two units; O(N M) and O(N^2) terms are below
    0.01 units at this P."""
    import jax.numpy as jnp

    from nettrim_jax.solver import engine, options

    out = []
    for activation in ("relu", "linear"):
        for per_neuron in (False, True):
            for solver in ("admm", "pdhg"):
                eq = []
                for n, m in ((32, 128), (128, 32)):
                    opts = options.make_options(solver, jnp.float32, {})
                    c = engine.solve.lower(jnp.ones((p, n)), jnp.ones((p, m)), jnp.float32(1), jnp.zeros(()),
                                           jnp.zeros((n, m)), None, None, activation=activation,
                                           per_neuron=per_neuron, solver=solver, opts=opts).compile()
                    ma = c.memory_analysis()
                    eq.append(([p * m * 4, p * n * 4], [ma.temp_size_in_bytes, ma.output_size_in_bytes]))
                a = np.array([e[0] for e in eq], float)
                temp = np.linalg.solve(a, [e[1][0] for e in eq])
                outs = np.linalg.solve(a, [e[1][1] for e in eq])
                out.append(dict(activation=activation, per_neuron=per_neuron, solver=solver,
                                temp_pm=temp[0], temp_pn=temp[1], state_pm=outs[0], state_pn=outs[1]))
    return out


def cases(quick: bool, big: bool):
    out = []
    nm = 256
    gram_p = [1_000, 10_000, 100_000] if quick else [1_000, 10_000, 100_000, 1_000_000]
    direct_p = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    relu_p = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    out += [dict(kind="linear-gram", p=p, n=nm, m=nm) for p in gram_p]
    out += [dict(kind="linear-direct", p=p, n=nm, m=nm) for p in direct_p]
    # ReLU iterations at P = 10^5 take ~0.7 s each on 2 cores: capped at 100 (not converged;
    # the per-iteration time is what that row is for).
    out += [dict(kind="relu", p=p, n=nm, m=nm, max_iters=100 if p >= 100_000 else 5000) for p in relu_p]
    sizes = [64, 1024] if quick else [64, 1024] + ([4096] if big else [])
    out += [dict(kind="linear-gram", p=20_000 if quick else 100_000, n=s, m=s) for s in sizes]
    # 1 vs 8 forced host devices (one "samples" mesh axis), same problem; CPU only (--big is
    # for accelerators, where forced host devices say nothing).
    p8 = 8_000 if quick else 20_000
    for kind in (() if big else ("relu", "linear-direct")):
        out.append(dict(kind=kind, p=p8, n=nm, m=nm, max_iters=200, devices_wanted=1))
        out.append(dict(kind=kind, p=p8, n=nm, m=nm, max_iters=200, devices_wanted=8, mesh=[8, 1]))
    return out


def _subprocess(case: dict, timeout: float) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if case.get("devices_wanted", 1) > 1 and env.get("JAX_PLATFORMS", "cpu") == "cpu":
        env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={case['devices_wanted']}").strip()
    try:
        res = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timeout after {timeout:.0f} s")
    lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
    if res.returncode or not lines:
        return dict(case, error=(res.stderr.strip().splitlines() or ["?"])[-1][:200])
    return json.loads(lines[-1])


def report(rows, args, started, seconds=None) -> str:
    ok = [r for r in rows if "error" not in r and r["kind"] != "memory"]
    device = ok[0]["device"] if ok else "?"
    head = ["kind", "P", "N", "M", "devices", "setup s", "solve s", "total s", "iters", "conv",
            "ms/iter", "floor ms", "iter/floor", "residual", "peak MB"]
    body = [[r["kind"], r["p"], r["n"], r["m"], r.get("devices", "-"),
             r.get("setup_s", float("nan")), r.get("solve_s", float("nan")), r.get("total_s", float("nan")),
             r.get("iterations", "-"), r.get("converged", r.get("error", "-")),
             r.get("per_iter_ms", float("nan")), r.get("floor_ms", float("nan")),
             r.get("per_iter_ms", float("nan")) / r.get("floor_ms", float("nan")) if "floor_ms" in r else float("nan"),
             r.get("residual", float("nan")), r.get("peak_MB", float("nan"))] for r in rows if r["kind"] != "memory"]
    lines = [f"# Scale benchmark ({device})", "", common.provenance(args, started, seconds), "",
             common.table(head, body, "{:.3g}"), ""]
    g = {r["p"]: r for r in ok if r["kind"] == "linear-gram" and r["n"] == 256}
    d = {r["p"]: r for r in ok if r["kind"] == "linear-direct" and r.get("devices_wanted", 1) == 1}
    for name, series in (("Gram-space", g), ("direct", d)):
        ps = sorted(series)
        for a, b in zip(ps, ps[1:]):
            if b == 10 * a:
                lines.append(f"- linear {name}, N = M = 256: P {a:,} -> {b:,} rows costs "
                             f"{series[b]['total_s'] / series[a]['total_s']:.2f}x the total time "
                             f"({series[b]['solve_s'] / series[a]['solve_s']:.2f}x the solve).")
    lines.append("")
    mem = [r for r in rows if r.get("kind") == "memory"]
    if mem:
        lines += ["## Memory per layer (XLA buffer assignment of the compiled solve)", "",
                  "Inputs X (P, N) and Y (P, M) are the caller's; besides them the solve holds "
                  "`temp` arrays while it runs and returns `state` arrays (the warm-start state, "
                  "freed when the LayerSolution is dropped), in units of one P x M / P x N float32 array:", "",
                  common.table(["program", "per-neuron", "solver", "temp P x M", "temp P x N",
                                "state P x M"],
                               [[m["activation"], m["per_neuron"], m["solver"], m["temp_pm"], m["temp_pn"],
                                 m["state_pm"]] for m in mem[0]["table"]], "{:.2f}"), ""]
    lines.append(DOCS)
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and r["kind"] != "memory" and r.get("devices_wanted", 1) == 1]
    device = ok[0]["device"] if ok else "?"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, style in (("linear-gram", "o-"), ("linear-direct", "s-"), ("relu", "^-")):
        rs = sorted((r for r in ok if r["kind"] == kind and r["n"] == 256 and "mesh" not in r), key=lambda r: r["p"])
        if rs:
            a1.loglog([r["p"] for r in rs], [r["total_s"] for r in rs], style, label=kind)
            a2.loglog([r["p"] for r in rs], [r["per_iter_ms"] for r in rs], style, label=f"{kind} per iteration")
            a2.loglog([r["p"] for r in rs], [r["floor_ms"] for r in rs], style, alpha=0.4, label=f"{kind} GEMM floor")
    a1.set(xlabel="rows P", ylabel="seconds (setup + steady solve)", title=f"N = M = 256, {device}")
    a2.set(xlabel="rows P", ylabel="ms per iteration", title="per iteration vs GEMM floor")
    a1.legend(fontsize=8)
    a2.legend(fontsize=7)
    common.savefig(fig, path)


def main():
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="add N = M = 4096 (GPU)")
    ap.add_argument("--case", default=None, help=argparse_hidden())
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    ap.add_argument("--report-only", type=float, default=None, metavar="SECONDS",
                    help="rewrite the report from bench_scale.json (SECONDS: the run's duration, for the provenance line)")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    started = time.time()
    rows = []
    out = common.out_dir(args)
    if args.report_only:  # rebuild the report and plot from bench_scale.json
        rows = json.loads((out / "bench_scale.json").read_text())
        (out / "bench_scale.md").write_text(report(rows, args, started, seconds=args.report_only))
        plot(rows, out / "bench_scale.png")
        return
    rows.append(dict(kind="memory", p=8192, n="32/128", m="128/32", table=memory_model()))
    for case in cases(args.quick, args.big):
        row = _subprocess(case, args.timeout)
        print(json.dumps(row), flush=True)
        rows.append(row)
        # Rewritten after every case, so a run cut short (gpu_check.sh's time limit) keeps its rows.
        (out / "bench_scale.json").write_text(json.dumps(rows, indent=1))
        text = report(rows, args, started)
        (out / "bench_scale.md").write_text(text)
        plot(rows, out / "bench_scale.png")
    print(text)


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
