"""Where Net-Trim's accuracy comes from: {pre-activation vs ReLU-aware objective} x
{l1 (+ refit) vs l1 + l0 finish} x {parallel vs cascade}, over seeds.

For each seed (training and calibration sampling both follow it): LeNet-300-100 on MNIST
(4000 calibration rows; ``--quick``: the small net of ``mnist.py --quick``), pruned with
``prune(model, x, sparsity=S, refit=True, scheme=..., finish=...)``:

* objective "relu": the ReLU-aware program Net-Trim chooses (misfit of the ReLU output, with
  the inequalities off Omega); "pre-activation": every layer forced to the linear program on
  its pre-activation z = XW + b (``activations={name: "linear"}``), which is what Wanda,
  SparseGPT and ALPS reconstruct;
* finish: "l1" (the convex solution refit on its support) or "l1+l0" (``finish="l0"``);
* scheme: "parallel" (every layer from the dense network's inputs) or "cascade" (from the
  pruned layers' outputs).

ALPS (``baselines.prune_model``) at the per-layer counts of the default run (relu, l1,
cascade) of each seed is the reference.  Test accuracy without fine-tuning, mean and spread
(min-max) over seeds.

    python experiments/ablation.py [--quick] [--data DIR] [--seeds 0 1 2] [--target 0.9]

Writes ablation.md / ablation.json into the results folder.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings

import bench_prune
import common
import nets
import numpy as np

import nettrim_jax as nt
from nettrim_jax import baselines
from nettrim_jax.network.adapters import adapt

OBJECTIVES = ("relu", "pre-activation")
FINISHES = {"l1": None, "l1+l0": "l0"}
SCHEMES = ("parallel", "cascade")


def run_seed(seed, args):
    n_cal = 100 if args.quick else 4000
    model, xcal, evaluate, _ = bench_prune.setup_lenet("fc", args.quick, args.data, seed, n_cal)
    names = adapt(model, xcal).names
    sizes = nets.kernel_sizes(model, xcal)
    rows = []
    for objective, finish, scheme in itertools.product(OBJECTIVES, FINISHES, SCHEMES):
        extra = {"activations": {n: "linear" for n in names}} if objective == "pre-activation" else {}
        t0 = time.perf_counter()
        res = nt.prune(model, xcal, sparsity=args.target, refit=True, scheme=scheme, finish=FINISHES[finish], joint_refit=0,
                       progress=False, **extra)
        sec = time.perf_counter() - t0
        keeps = nets.kernel_counts(res.model, xcal)
        layers = res.report.layers
        rows.append(dict(seed=seed, objective=objective, finish=finish, scheme=scheme, seconds=sec,
                         sparsity=1 - sum(keeps) / sum(sizes), keeps=keeps, accuracy=evaluate(res.model),
                         converged=sum(bool(l.converged) for l in layers), layers=len(layers)))
        print(f"seed {seed} {objective} {finish} {scheme}: {sec:.1f} s, sparsity "
              f"{100 * rows[-1]['sparsity']:.2f}%, accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    reference = next(r for r in rows if (r["objective"], r["finish"], r["scheme"]) == ("relu", "l1", "cascade"))
    alps, _ = baselines.prune_model(model, xcal, reference["keeps"], "alps")
    rows.append(dict(seed=seed, objective="ALPS", finish="l0", scheme="sequential", seconds=None,
                     sparsity=reference["sparsity"], keeps=reference["keeps"], accuracy=evaluate(alps),
                     converged=None, layers=None))
    return rows


def summary(records):
    out = []
    alps = {r["seed"]: 100 * r["accuracy"] for r in records if r["objective"] == "ALPS"}
    configs = list(itertools.product(OBJECTIVES, FINISHES, SCHEMES)) + [("ALPS", "l0", "sequential")]
    for config in configs:
        rs = [r for r in records if (r["objective"], r["finish"], r["scheme"]) == config]
        acc = np.array([100 * r["accuracy"] for r in rs])
        diff = np.array([100 * r["accuracy"] - alps[r["seed"]] for r in rs])
        row = [*config, len(rs), f"{100 * np.mean([r['sparsity'] for r in rs]):.2f}",
               f"{acc.mean():.2f} ({acc.min():.2f}-{acc.max():.2f})"]
        if config[0] == "ALPS":
            out.append(row + ["", "", ""])
            continue
        out.append(row + [f"{diff.mean():+.2f} ({diff.min():+.2f} to {diff.max():+.2f})",
                          f"{np.mean([r['seconds'] for r in rs]):.1f}",
                          f"{sum(r['converged'] for r in rs)}/{sum(r['layers'] for r in rs)}"])
    return out


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--target", type=float, default=0.9, help="the sparsity every run asks for")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    started = time.time()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    records = [r for seed in seeds for r in run_seed(seed, args)]
    out = common.out_dir(args)
    text = [f"# Ablation: objective x finish x scheme (LeNet-300-100, MNIST, sparsity={args.target:g})", "",
            "Test accuracy % without fine-tuning, mean (min-max) over seeds; every run with "
            "`refit=True`.  ALPS at the per-layer counts of the (relu, l1, cascade) run of the same "
            f"seed; the difference to it is per seed.  Seeds: {seeds}.", "",
            common.table(["objective", "finish", "scheme", "seeds", "sparsity %", "accuracy",
                          "minus ALPS", "prune s", "certified"], summary(records)), "",
            common.provenance(args, started)]
    (out / "ablation.md").write_text("\n".join(text) + "\n")
    (out / "ablation.json").write_text(json.dumps(records, indent=1))
    print("\n".join(text))
    return records


if __name__ == "__main__":
    main()
