"""The l0 finish's one-for-one swaps, side by side: whole prunes with and without them.

For each seed (training and calibration sampling follow it, as ``l0_finish.py``):
LeNet-300-100 (``--net fc``, 4000 calibration rows) or LeNet-5 (``--net lenet``, 1000 images)
on MNIST, or the 2-block TinyLM of ``bench_prune.py`` (``--net lm``: held-out bits/char, lower
is better), pruned with what a user types, ``prune(model, x, sparsity=S, refit=True)``, once
with the finish's swaps at ``--swaps`` rounds each (``solver.l0.l0_finish(swaps=)``; 0 turns
them off, 16 is the default).  ALPS (``baselines.prune_model``) at each run's own per-layer
counts.  Records test accuracy (no fine-tuning), every layer's misfit, how the joint refit
ended and wall seconds (timings of a shared machine: compare them only side by side).

    python experiments/l0_swaps.py [--net fc|lenet|lm] [--seeds 0 1 2] [--targets 0.9 0.95 0.98]
        [--swaps 0 16] [--data DIR] [--render]

Appends to l0_swaps.jsonl (one record per prune, so a stopped run keeps what it finished)
and rewrites l0_swaps.md from every record there; ``--render`` only rewrites the table.
"""

from __future__ import annotations

import collections
import functools
import json
import time

import common
import l0_finish
import nets
import numpy as np

import nettrim_jax as nt
from nettrim_jax import baselines
from nettrim_jax.io.atomic import atomic_write_text
from nettrim_jax.network import problems
from nettrim_jax.solver import l0


def run(args, out):
    finish = l0.l0_finish
    try:
        for seed in args.seeds:
            model, xcal, evaluate = l0_finish.setup(args.net, seed, data=args.data)
            sizes = nets.kernel_sizes(model, xcal)
            for s in args.targets:
                for swaps in args.swaps:
                    problems.l0_finish = functools.partial(finish, swaps=swaps)
                    t0 = time.perf_counter()
                    res = nt.prune(model, xcal, sparsity=s, refit=True, progress=False)
                    sec = time.perf_counter() - t0
                    keeps = nets.kernel_counts(res.model, xcal)
                    alps, _ = baselines.prune_model(model, xcal, keeps, "alps")
                    rec = dict(net=args.net, seed=seed, target=s, swaps=swaps, seconds=sec,
                               sparsity=1 - sum(keeps) / sum(sizes), nettrim=evaluate(res.model),
                               alps=evaluate(alps), misfits=[float(x.misfit) for x in res.report.layers],
                               joint=(res.report.joint or {}).get("stopped"),
                               converged=sum(bool(x.converged) for x in res.report.layers))
                    print(json.dumps(rec), flush=True)
                    with open(out / "l0_swaps.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
    finally:
        problems.l0_finish = finish


def render(out, started, args):
    recs = [json.loads(line) for line in (out / "l0_swaps.jsonl").read_text().splitlines() if line.strip()]
    pairs = collections.defaultdict(dict)
    for r in recs:
        pairs[(r["net"], r["target"], r["seed"])][r["swaps"]] = r
    rows = []
    for net, target in sorted({(k[0], k[1]) for k in pairs}):
        both = [p for k, p in sorted(pairs.items()) if k[:2] == (net, target) and 0 in p and 16 in p]
        if not both:
            continue
        scale, d = (1, 3) if net == "lm" else (100, 2)  # bits/char as they are, accuracy in %
        a = np.array([scale * p[0]["nettrim"] for p in both])
        b = np.array([scale * p[16]["nettrim"] for p in both])
        alps = np.array([scale * p[16]["alps"] for p in both])
        ratio = np.array([np.array(p[16]["misfits"]) / np.array(p[0]["misfits"]) for p in both])
        rows.append([net, f"{100 * target:.0f}%", len(both), f"{a.mean():.{d}f} ({a.min():.{d}f}-{a.max():.{d}f})",
                     f"{b.mean():.{d}f} ({b.min():.{d}f}-{b.max():.{d}f})",
                     f"{(b - a).min():+.{d}f} to {(b - a).max():+.{d}f}", f"{alps.mean():.{d}f}",
                     f"{(b - alps).min():+.{d}f} to {(b - alps).max():+.{d}f}",
                     f"{ratio.min():.3f}-{ratio.max():.3f}",
                     " / ".join(f"{p[0]['seconds']:.1f}->{p[16]['seconds']:.1f}" for p in both)])
    text = ["# The l0 finish's swaps, side by side", "",
            "`prune(model, x, sparsity=S, refit=True)` on MNIST (net lm: the 2-block TinyLM) with the finish's "
            "swaps off (`swaps=0`) and at 16 rounds (the default); ALPS at the counts of the run with swaps.  Test "
            "accuracy % (lm: held-out bits/char, lower is better), mean (min-max) over seeds; misfit ratio: every layer's misfit with swaps over without.  "
            "Seconds: wall time per seed (first prune of a process includes compiles; a shared machine).", "",
            common.table(["net", "sparsity", "seeds", "swaps 0", "swaps 16", "16 - 0 per seed", "ALPS",
                          "16 - ALPS per seed", "misfit ratio", "seconds 0 -> 16 per seed"], rows),
            "", "_Rendered from l0_swaps.jsonl by `--render`; each record's run is not kept._" if args.render
            else common.provenance(args, started)]
    atomic_write_text(out / "l0_swaps.md", "\n".join(text) + "\n")


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--net", choices=["fc", "lenet", "lm"], default="fc")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    p.add_argument("--swaps", type=int, nargs="+", default=[0, 16])
    p.add_argument("--render", action="store_true", help="rewrite l0_swaps.md from l0_swaps.jsonl (no run)")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    out = common.out_dir(args)
    if not args.render:
        run(args, out)
    render(out, started, args)


if __name__ == "__main__":
    main()
