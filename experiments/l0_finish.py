"""The l0 finish and the joint refit against the refit and ALPS, over seeds.

For each seed (training and calibration sampling both follow it): LeNet-300-100 (``--net fc``,
4000 calibration rows) or LeNet-5 (``--net lenet``, 1000 rows) trained on MNIST or
Fashion-MNIST (``--dataset``; ``--quick``: the small nets of ``mnist.py --quick``), or the
BatchNorm ResNet of ``resnet.py`` (``--net resnet``: Fashion-MNIST, 16 channels, 4000
training steps, the last 512 training images as calibration data; its training follows the
seed, its calibration set does not), or the 2-block TinyLM of ``bench_prune.py`` (``--net lm``:
d=128, 4 heads, ReLU MLP, 64 x 128 calibration tokens; held-out bits/char, lower is better;
training and calibration windows follow the seed), pruned with what a
user types, ``prune(model, x, sparsity=S, refit=True)``, and the same with
``finish="l0"`` (``nettrim_jax.solver.l0``: hard-thresholding steps at each layer's count on
the refit objective), and with ``joint_refit=300`` (``network.joint``: every layer's kept
weights re-fit together to the dense model's output) when ``--variants`` names them
(``default``: ``refit=True`` with nothing else, the finish then ``joint_refit="auto"``;
the other variants set ``finish`` and ``joint_refit`` explicitly); ALPS (``baselines.prune_model``) at each Net-Trim run's own per-layer
counts.  Test accuracy without fine-tuning; mean and spread (min-max) over seeds; wall
seconds of each prune (compiles included for the first one of a process).

    python experiments/l0_finish.py [--quick] [--data DIR]
        [--net fc|lenet|resnet|lm] [--dataset mnist|fashion-mnist] [--seeds 0 1 2] [--targets 0.9 0.95]
        [--variants refit refit+l0 refit+joint refit+l0+joint default]

Writes l0_finish_NET_DATASET.md / .json (l0_finish_lm for the TinyLM) into the results folder;
``--merge`` keeps that file's rows of (target, variant) pairs the run does not run.
"""

from __future__ import annotations

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

VARIANTS = {
    "refit": {"finish": None, "joint_refit": 0},
    "refit+l0": {"finish": "l0", "joint_refit": 0},
    "refit+joint": {"finish": None, "joint_refit": 300},
    "refit+l0+joint": {"finish": "l0", "joint_refit": 300},
    "default": {},  # what refit=True does: the l0 finish, then joint_refit="auto"
}


def setup(net: str, seed: int, *, quick: bool = False, data=None, dataset: str = "mnist"):
    """(model, calibration x, evaluate(model) -> float) of ``net`` ("fc" | "lenet" | "resnet" |
    "lm") as the module doc describes, trained and sampled with ``seed``."""
    if net == "resnet":
        model, xcal, evaluate, _ = bench_prune.setup_resnet(quick, data, seed)
    elif net == "lm":
        c = bench_prune.configs(quick, False)["lm2"]
        model, xcal, evaluate, _ = bench_prune.setup_lm(quick, seed, d=c["d"], heads=c["heads"],
                                                       layers=c["layers"], n_cal=c["n_cal"], steps=c["steps"])
    else:
        n_cal = (100 if net == "fc" else 50) if quick else (4000 if net == "fc" else 1000)
        model, xcal, evaluate, _ = bench_prune.setup_lenet(net, quick, data, seed, n_cal, dataset)
    return model, xcal, evaluate


def run_seed(seed, targets, args):
    model, xcal, evaluate = setup(args.net, seed, quick=args.quick, data=args.data, dataset=args.dataset)
    dense = evaluate(model)
    sizes = nets.kernel_sizes(model, xcal)
    rows = []
    for s in targets:
        for variant in args.variants:
            extra = VARIANTS[variant]
            t0 = time.perf_counter()
            res = nt.prune(model, xcal, sparsity=s, refit=True, progress=False, **extra)
            sec = time.perf_counter() - t0
            keeps = nets.kernel_counts(res.model, xcal)
            alps, _ = baselines.prune_model(model, xcal, keeps, "alps")
            layers = res.report.layers
            rows.append(dict(seed=seed, target=s, variant=variant, seconds=sec, dense=dense,
                             sparsity=1 - sum(keeps) / sum(sizes), keeps=keeps,
                             converged=sum(bool(l.converged) for l in layers), layers=len(layers),
                             nettrim=evaluate(res.model), alps=evaluate(alps), joint=res.report.joint or None))
            print(f"seed {seed} S={s} {variant}: {sec:.1f} s, sparsity {100 * rows[-1]['sparsity']:.2f}%, "
                  f"Net-Trim {rows[-1]['nettrim']:.4f}, ALPS {rows[-1]['alps']:.4f}", flush=True)
    return rows


def summary(records, higher_is_better=True):
    """Per (target, variant): mean (min-max) of Net-Trim's and ALPS's metric and of their
    per-seed difference, and the verdict ('ahead' / 'behind' only when every seed agrees)."""
    out = []
    keys = sorted({(r["target"], r["variant"]) for r in records})
    d, scale = (2, 100) if higher_is_better else (3, 1)  # accuracy in %, bits/char as they are
    for target, variant in keys:
        rs = [r for r in records if (r["target"], r["variant"]) == (target, variant)]
        nt_acc = np.array([scale * r["nettrim"] for r in rs])
        alps = np.array([scale * r["alps"] for r in rs])
        diff = nt_acc - alps
        better = diff if higher_is_better else -diff
        verdict = "ahead" if better.min() > 0 else "behind" if better.max() < 0 else "tie (sign varies)"
        if len(rs) < 2:  # one seed has no spread to compare the difference with
            verdict = f"one seed: {verdict}"
        out.append([f"{target:g}", variant, len(rs), f"{100 * np.mean([r['sparsity'] for r in rs]):.2f}",
                    f"{nt_acc.mean():.{d}f} ({nt_acc.min():.{d}f}-{nt_acc.max():.{d}f})",
                    f"{alps.mean():.{d}f} ({alps.min():.{d}f}-{alps.max():.{d}f})",
                    f"{diff.mean():+.{d}f} ({diff.min():+.{d}f} to {diff.max():+.{d}f})", verdict,
                    f"{np.mean([r['seconds'] for r in rs]):.1f}",
                    f"{sum(r['converged'] for r in rs)}/{sum(r['layers'] for r in rs)}"])
    return out


def result_name(args) -> str:
    """The results file's name (no suffix) for ``args``' net and dataset."""
    if args.net == "lm":
        return "l0_finish_lm"
    return f"l0_finish_{args.net}_{args.dataset}"


def write(records, args, seeds, started, out, kept=()) -> list[str]:
    """The results table (markdown lines) of ``records``, written with them as JSON."""
    net = {"fc": "LeNet-300-100", "lenet": "LeNet-5", "resnet": "BatchNorm ResNet", "lm": "TinyLM, 2 blocks"}[args.net]
    metric = "held-out bits/char (lower is better)" if args.net == "lm" else "Test accuracy %"
    name = result_name(args)
    where = "pydoc topics text" if args.net == "lm" else args.dataset
    text = [f"# The l0 finish against the refit and ALPS ({net}, {where})", "",
            f"{metric} without fine-tuning, mean (min-max) over seeds; ALPS at each Net-Trim "
            "run's own per-layer counts; the difference is per seed.  'ahead' / 'behind' only when "
            f"every seed agrees.  Seeds: {seeds}.", "",
            common.table(["S", "Net-Trim", "seeds", "sparsity %", "Net-Trim", "ALPS",
                          "Net-Trim - ALPS", "verdict", "prune s", "certified"],
                         summary(records, higher_is_better=args.net != "lm")), "",
            common.provenance(args, started)]
    if kept:
        pairs = sorted({(r["target"], r["variant"]) for r in kept})
        text[-1:-1] = ["Kept from the file's previous run (not rerun here): "
                       + ", ".join(f"{v} at {t:g}" for t, v in pairs) + ".", ""]
    atomic_write_text(out / f"{name}.md", "\n".join(text) + "\n")
    atomic_write_text(out / f"{name}.json", json.dumps(records, indent=1))
    return text


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--net", choices=["fc", "lenet", "resnet", "lm"], default="fc",
                   help="LeNet-300-100, LeNet-5, the BatchNorm ResNet (Fashion-MNIST only) or the 2-block TinyLM")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--targets", type=float, nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=["refit", "refit+l0"], choices=list(VARIANTS),
                   help="Net-Trim variants (refit: the refit alone; l0: the l0 finish; joint: joint_refit=300, the "
                        "layers' kept weights re-fit together; default: refit=True as it is, the finish then "
                        "joint_refit='auto')")
    p.add_argument("--merge", action="store_true",
                   help="keep the results file's rows of (target, variant) pairs this run does not run")
    args = p.parse_args(argv)
    if args.net == "resnet" and args.dataset != "fashion-mnist":
        p.error("--net resnet is trained on Fashion-MNIST only: add --dataset fashion-mnist")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    started = time.time()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    targets = args.targets or ([0.9] if args.quick else [0.9, 0.95])
    out = common.out_dir(args)
    kept = []
    if args.merge and (out / f"{result_name(args)}.json").exists():
        ran = {(t, v) for t in targets for v in args.variants}
        kept = [r for r in json.loads((out / f"{result_name(args)}.json").read_text())
                if (r["target"], r["variant"]) not in ran]
    records = []
    for seed in seeds:  # rewritten after every seed: a run stopped early keeps them
        records += run_seed(seed, targets, args)
        text = write(kept + records, args, sorted({r['seed'] for r in kept + records}), started, out, kept)
    print("\n".join(text))
    return records


if __name__ == "__main__":
    main()
