"""A frontier in one call against the same points pruned one after another.

``nettrim_jax.sweep(model, x, epsilon=[K values], mode="batched", batch=K)`` (the K prunes
advance together, each layer's K programs one vmapped solve) against ``mode="sequential"``
(K ``prune`` calls), for K = 1, 4, 8, 16 epsilons spread over [0.02, 0.4] (relative, cascade,
defaults otherwise), on LeNet-300-100 (MNIST, 2000 calibration rows; ``--quick``: a
784-32-10 MLP on 300 rows, K = 1, 2, 4).  Each configuration runs in a fresh process, twice in a
row: the first call pays the compiles, the second is the steady state; peak memory is the
process's (resident set on a CPU, the device's peak bytes in use on an accelerator).  The
points of the two modes are checked against each other (nonzeros per point).

    python experiments/bench_sweep.py [--quick] [--data DIR] [--ks 1 4 8 16]

Writes bench_sweep.md / bench_sweep.json into the results folder.  On a CPU a vmapped solve
costs about the sum of its points, so batched is expected no faster there; the target (K = 8
points in at most 2x one prune's time) is an accelerator's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
import numpy as np

HERE = Path(__file__).resolve().parent


def child(args) -> dict:
    """One configuration in this process: (mode, K) -> wall times of two calls, peak memory,
    nonzeros per point."""
    import jax

    import nettrim_jax as nt

    common.quiet_solver_warnings()
    net, x = _model(args)
    eps = list(np.geomspace(0.02, 0.4, args.k)) if args.k > 1 else [0.1]
    times, points = [], None
    for _ in range(2):
        t0 = time.perf_counter()
        points = nt.sweep(net, x, epsilon=eps, mode=args.mode, batch=args.k, progress=False)
        jax.block_until_ready([p.result.model[0].kernel for p in points if p.result is not None])
        times.append(time.perf_counter() - t0)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        peak, where = int(stats["peak_bytes_in_use"]), "device"
    else:
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"
    return {
        "mode": args.mode,
        "K": args.k,
        "first_s": times[0],
        "second_s": times[1],
        "peak_bytes": peak,
        "memory": where,
        "nnz": [None if p.result is None else p.result.report.nnz_after for p in points],
        "certified": [list(p.converged) for p in points],
        "batched_calls": None if points[0].pool is None else points[0].pool.batched,
        "device": f"{dev.platform} {getattr(dev, 'device_kind', '')}".strip(),
    }


def _model(args):
    import mnist

    from nettrim_jax import Dense

    if args.quick:
        rng = np.random.default_rng(args.seed)
        sizes = (784, 32, 10)
        net = [
            Dense((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32),
                  "relu" if j == 0 else "linear")
            for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        ]
        x = rng.random((300, 784)).astype(np.float32)
        return net, x
    cfg = mnist.config(False)
    xtr, ytr, _, _ = mnist.load("mnist", args.data, cfg["n_train"], cfg["n_test"])
    net = mnist.train_network("fc", cfg, xtr, ytr, args.seed)
    rows = np.random.default_rng(args.seed).choice(len(xtr), 2000, replace=False)
    return net, np.asarray(mnist.as_input("fc", xtr[rows]))


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("NETTRIM_DATA"))
    p.add_argument("--ks", type=int, nargs="+", default=None)
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    p.add_argument("--mode", default="batched")
    p.add_argument("--k", type=int, default=1)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    started = time.time()
    out = common.out_dir(args)
    ks = args.ks or ([1, 2, 4] if args.quick else [1, 4, 8, 16])
    rows = []
    for k in ks:
        for mode in ("sequential", "batched"):
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--k", str(k), "--seed", str(args.seed)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--data", args.data] if args.data else []
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
            line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{mode} K={k} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(line[7:]))
            print(f"K={k} {mode}: {rows[-1]['first_s']:.1f} s, then {rows[-1]['second_s']:.1f} s", flush=True)
    table = []
    for k in ks:
        seq = next(r for r in rows if r["K"] == k and r["mode"] == "sequential")
        bat = next(r for r in rows if r["K"] == k and r["mode"] == "batched")
        gap = max((abs(a - b) / max(b, 1) for a, b in zip(bat["nnz"], seq["nnz"])), default=0.0)
        table.append([
            k,
            seq["second_s"], bat["second_s"], seq["second_s"] / bat["second_s"],
            bat["second_s"] / (seq["second_s"] / k),
            seq["first_s"], bat["first_s"],
            seq["peak_bytes"] / 2**20, bat["peak_bytes"] / 2**20,
            f"{100 * gap:.2f}%",
        ])
    md = [
        "# A sweep in one call: batched against sequential", "",
        f"Device: {rows[0]['device']}; model: {'784-32-10 random MLP, 300 rows' if args.quick else 'LeNet-300-100, MNIST, 2000 rows'}; "
        "K epsilons in [0.02, 0.4] (geometric), cascade.  Seconds of the second call in each fresh process "
        "(steady state), then of the first (compiles included); peak memory "
        f"({rows[0]['memory']}) of the process in MiB; nonzero gap: the largest relative difference "
        "in a point's kept weights between the two modes; batched / one prune: the batched call's time over "
        "the mean time of one of the K sequential prunes (the accelerator target: at most 2 at K = 8).", "",
        common.table(
            ["K", "sequential s", "batched s", "speed-up", "batched / one prune", "seq. 1st s", "batched 1st s",
             "seq. MiB", "batched MiB", "nonzero gap"],
            table, floatfmt="{:.2f}",
        ), "",
        common.provenance(args, started),
    ]
    (out / "bench_sweep.md").write_text("\n".join(md) + "\n")
    (out / "bench_sweep.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(md))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
