"""Where Net-Trim's accuracy comes from: {pre-activation vs ReLU-aware objective} x
{l1 (+ refit) vs l1 + l0 finish} x {parallel vs cascade}, over seeds.

For each seed (training and calibration sampling both follow it): LeNet-300-100 on MNIST
(``--net fc``, 4000 calibration rows; ``--quick``: the small net of ``mnist.py --quick``) or
the 2-block TinyLM of ``bench_prune.py`` (``--net lm``: d=128, ReLU MLP, 64 x 128
calibration tokens; held-out bits/char, lower is better; its only ReLU layers are the two
fc1, so the objectives differ there), pruned at each ``--targets`` sparsity with
``prune(model, x, sparsity=S, refit=True, scheme=..., finish=..., joint_refit=0)``:

* objective "relu": the ReLU-aware program Net-Trim chooses (misfit of the ReLU output, with
  the inequalities off Omega); "pre-activation": every layer forced to the linear program on
  its pre-activation z = XW + b (``activations={name: "linear"}``), which is what Wanda,
  SparseGPT and ALPS reconstruct;
* finish: "l1" (the convex solution refit on its support) or "l1+l0" (``finish="l0"``);
* scheme: "parallel" (every layer from the dense network's inputs) or "cascade" (from the
  pruned layers' outputs).

ALPS (``baselines.prune_model``) at the per-layer counts of the default run (relu, l1,
cascade) of each seed is the reference.  Test accuracy (bits/char) without fine-tuning,
mean and spread (min-max) over seeds.  The joint refit is off in every run (``joint_refit=0``):
the table isolates the layer-wise choices.

    python experiments/ablation.py [--quick] [--data DIR] [--net fc|lm] [--seeds 0 1 2] [--targets 0.9]

Writes ablation.md / ablation.json (``--net lm``: ablation_lm.md / .json) into the results
folder.
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
from nettrim_jax.io.atomic import atomic_write_text
from nettrim_jax.network.adapters import adapt

OBJECTIVES = ("relu", "pre-activation")
FINISHES = {"l1": None, "l1+l0": "l0"}
SCHEMES = ("parallel", "cascade")


def setup(seed, args):
    """(model, calibration x, evaluate(model) -> float) of ``args.net``."""
    if args.net == "lm":
        c = bench_prune.configs(args.quick, False)["lm2"]
        model, xcal, evaluate, _ = bench_prune.setup_lm(args.quick, seed, d=c["d"], heads=c["heads"],
                                                       layers=c["layers"], n_cal=c["n_cal"], steps=c["steps"])
        return model, xcal, evaluate
    n_cal = 100 if args.quick else 4000
    model, xcal, evaluate, _ = bench_prune.setup_lenet("fc", args.quick, args.data, seed, n_cal)
    return model, xcal, evaluate


def run_seed(seed, args):
    model, xcal, evaluate = setup(seed, args)
    names = adapt(model, xcal).names
    sizes = nets.kernel_sizes(model, xcal)
    rows = []
    for target in args.targets:
        start = len(rows)
        for objective, finish, scheme in itertools.product(OBJECTIVES, FINISHES, SCHEMES):
            extra = {"activations": {n: "linear" for n in names}} if objective == "pre-activation" else {}
            t0 = time.perf_counter()
            res = nt.prune(model, xcal, sparsity=target, refit=True, scheme=scheme, finish=FINISHES[finish],
                           joint_refit=0, progress=False, **extra)
            sec = time.perf_counter() - t0
            keeps = nets.kernel_counts(res.model, xcal)
            layers = res.report.layers
            rows.append(dict(seed=seed, target=target, objective=objective, finish=finish, scheme=scheme,
                             seconds=sec, sparsity=1 - sum(keeps) / sum(sizes), keeps=keeps,
                             accuracy=evaluate(res.model), converged=sum(bool(l.converged) for l in layers),
                             layers=len(layers)))
            print(f"seed {seed} S={target:g} {objective} {finish} {scheme}: {sec:.1f} s, sparsity "
                  f"{100 * rows[-1]['sparsity']:.2f}%, metric {rows[-1]['accuracy']:.4f}", flush=True)
        reference = next(r for r in rows[start:] if (r["objective"], r["finish"], r["scheme"]) == ("relu", "l1", "cascade"))
        alps, _ = baselines.prune_model(model, xcal, reference["keeps"], "alps")
        rows.append(dict(seed=seed, target=target, objective="ALPS", finish="l0", scheme="sequential", seconds=None,
                         sparsity=reference["sparsity"], keeps=reference["keeps"], accuracy=evaluate(alps),
                         converged=None, layers=None))
    return rows


def summary(records, percent=True):
    """Rows per (target, configuration); ``percent``: the metric is an accuracy shown in %,
    else bits/char as they are."""
    out = []
    scale, d = (100, 2) if percent else (1, 3)
    configs = list(itertools.product(OBJECTIVES, FINISHES, SCHEMES)) + [("ALPS", "l0", "sequential")]
    for target in sorted({r["target"] for r in records}):
        at = [r for r in records if r["target"] == target]
        alps = {r["seed"]: scale * r["accuracy"] for r in at if r["objective"] == "ALPS"}
        for config in configs:
            rs = [r for r in at if (r["objective"], r["finish"], r["scheme"]) == config]
            acc = np.array([scale * r["accuracy"] for r in rs])
            diff = np.array([scale * r["accuracy"] - alps[r["seed"]] for r in rs])
            row = [f"{target:g}", *config, len(rs), f"{100 * np.mean([r['sparsity'] for r in rs]):.2f}",
                   f"{acc.mean():.{d}f} ({acc.min():.{d}f}-{acc.max():.{d}f})"]
            if config[0] == "ALPS":
                out.append(row + ["", "", ""])
                continue
            out.append(row + [f"{diff.mean():+.{d}f} ({diff.min():+.{d}f} to {diff.max():+.{d}f})",
                              f"{np.mean([r['seconds'] for r in rs]):.1f}",
                              f"{sum(r['converged'] for r in rs)}/{sum(r['layers'] for r in rs)}"])
    return out


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--net", choices=["fc", "lm"], default="fc")
    p.add_argument("--targets", type=float, nargs="+", default=[0.9], help="the sparsities the runs ask for")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    started = time.time()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    records = [r for seed in seeds for r in run_seed(seed, args)]
    out = common.out_dir(args)
    lm = args.net == "lm"
    what = "TinyLM, 2 blocks, pydoc topics text" if lm else "LeNet-300-100, MNIST"
    metric = "Held-out bits/char (lower is better)" if lm else "Test accuracy %"
    text = [f"# Ablation: objective x finish x scheme ({what})", "",
            f"{metric} without fine-tuning, mean (min-max) over seeds; every run with "
            "`refit=True, joint_refit=0`.  ALPS at the per-layer counts of the (relu, l1, cascade) run of "
            f"the same seed and target; the difference to it is per seed.  Seeds: {seeds}.", "",
            common.table(["S", "objective", "finish", "scheme", "seeds", "sparsity %", "bits/char" if lm else "accuracy",
                          "minus ALPS", "prune s", "certified"], summary(records, percent=not lm)), "",
            common.provenance(args, started)]
    name = "ablation_lm" if lm else "ablation"
    atomic_write_text(out / f"{name}.md", "\n".join(text) + "\n")
    atomic_write_text(out / f"{name}.json", json.dumps(records, indent=1))
    print("\n".join(text))
    return records


if __name__ == "__main__":
    main()
