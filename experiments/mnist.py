"""MNIST / Fashion-MNIST: Net-Trim against the usual baselines at equal per-layer sparsity.

Networks: a fully connected 784-300-100-10 ReLU network (LeNet-300-100) and a LeNet-style
conv network (5x5 conv 6 -> 2x2 max-pool -> 5x5 conv 16 -> pool -> 120 -> 10; --quick uses
smaller ones), trained with
Adam on the training split.  Net-Trim (``nettrim_jax.prune``, cascade with gamma = 1 and one
relative epsilon e for all layers as epsilon_1 and floors, and parallel with the same e) is
run on P calibration images from the training split over a sweep of e, plain and with
``refit=True`` ("+refit": each layer's kept weights refit to its response on the same
rows, ``nettrim_jax.refit_layer``; the support is Net-Trim's).  At every Net-Trim
point the baselines get exactly the same number of nonzero weights in every layer and the
same calibration images: magnitude pruning (Han et al. 2015), Wanda (Sun et al. 2023) and
SparseGPT-style OBS reconstruction (Frantar & Alistarh 2023), all in
``nettrim_jax.baselines``.  Accuracy is on the 10 000 test images, without fine-tuning and
after masked fine-tuning (Adam, pruned weights held at zero with ``nettrim_jax.masked``).

Data: IDX files from ``--data`` or ``$NETTRIM_DATA`` (a folder holding ``mnist/`` and
``fashion-mnist/``).

    python experiments/mnist.py [--quick] [--data DIR] [--datasets mnist fashion-mnist]
                                [--nets fc lenet] [--n-cal P] [--schemes ...]
"""

from __future__ import annotations

import json
import time
import warnings

import common
import jax.numpy as jnp
import nets
import numpy as np

import nettrim_jax
from nettrim_jax import training
from nettrim_jax.io.data import data_dir, load_idx_folder, load_mnist

BASELINES = ("magnitude", "wanda", "sparsegpt", "alps")


def load(name, root, n_train=None, n_test=None):
    """Train and test splits of ``name``; ``root`` (or ``$NETTRIM_DATA``) holds ``name/``, or is
    itself the folder of IDX files (e.g. ``../shared/data/mnist``)."""
    base = data_dir(root)
    if base is not None and not (base / name).is_dir() and any(base.glob("train-images-idx3-ubyte*")):
        xtr, ytr = load_idx_folder(base, "train")
        xte, yte = load_idx_folder(base, "test")
    else:
        xtr, ytr = load_mnist(name, "train", root=root)
        xte, yte = load_mnist(name, "test", root=root)
    if n_train:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    if n_test:
        xte, yte = xte[:n_test], yte[:n_test]
    return xtr, ytr, xte, yte


def fetch(datasets, root):
    """``nettrim_jax.io.data.download`` each dataset into ``root`` (or ``$NETTRIM_DATA``)."""
    from nettrim_jax.io.data import download

    base = data_dir(root)
    if base is None:
        raise SystemExit("--download needs --data DIR or $NETTRIM_DATA")
    for name in datasets:
        download(base, name)


def as_input(kind, x):
    """FC nets take (B, 784); LeNet takes NHWC (B, 28, 28, 1)."""
    return x.reshape(len(x), -1) if kind == "fc" else x.reshape(len(x), 28, 28, 1)


def build(kind, cfg, seed):
    if kind == "fc":
        return training.make_mlp(cfg["fc_sizes"], seed=seed)
    return training.make_cnn(1, cfg["lenet_channels"], cfg["lenet_hidden"], 10, image_size=28,
                             seed=seed, kernel_size=5)


def train_network(kind, cfg, xtr, ytr, seed):
    model = build(kind, cfg, seed)
    nets.train_nnx(model, as_input(kind, xtr), ytr, steps=cfg["train_steps"], seed=seed)
    return nets.spec_network(model, as_input(kind, xtr))


def evaluate_point(net, pruned, xcal, xft, yft, xte, yte, cfg, seed):
    """Accuracies of Net-Trim's ``pruned`` and of the baselines at its per-layer counts."""
    keeps = nets.nnz(pruned)
    acc = {"nettrim": nets.accuracy(pruned, xte, yte)}
    ft = dict(steps=cfg["ft_steps"], learning_rate=cfg["ft_lr"], seed=seed)
    if cfg["ft_steps"]:
        acc["nettrim+ft"] = nets.accuracy(nets.finetune(pruned, xft, yft, **ft), xte, yte)
    for method in cfg.get("baselines", BASELINES):
        b = nets.prune_baseline(net, xcal, keeps, method, seed=seed)
        assert nets.nnz(b) == keeps or method == "sparsegpt", (method, nets.nnz(b), keeps)
        acc[method] = nets.accuracy(b, xte, yte)
        if method == "magnitude" and cfg["ft_steps"]:
            acc["magnitude+ft"] = nets.accuracy(nets.finetune(b, xft, yft, **ft), xte, yte)
    return keeps, acc


def run(dataset, kind, cfg, root, seed, log=print):
    """Train one network and sweep Net-Trim; returns a list of result dicts."""
    xtr, ytr, xte, yte = load(dataset, root, cfg["n_train"], cfg["n_test"])
    xtr_in, xte_in = as_input(kind, xtr), as_input(kind, xte)
    t0 = time.time()
    net = train_network(kind, cfg, xtr, ytr, seed)
    base_acc = nets.accuracy(net, xte_in, yte)
    log(f"{dataset} {kind}: trained in {time.time() - t0:.0f}s, test acc {base_acc:.4f}, "
        f"weights {nets.nnz(net)}")
    rng = np.random.default_rng(seed)
    cal = rng.choice(len(xtr), cfg["n_cal"], replace=False)
    xcal = xtr_in[cal]
    out = []
    schemes = cfg["schemes"] if kind == "fc" else cfg.get("lenet_schemes", cfg["schemes"])
    for scheme in schemes:
        base_scheme, _, variant = scheme.partition("+")
        targets = cfg["sparsities"] if cfg.get("sparsities") else cfg["epsilons"]
        by_target = bool(cfg.get("sparsities"))
        if by_target:  # a sparsity target: prune finds the epsilons
            points = {"sparsity": list(targets), "allocation": cfg.get("allocation", "scores")}
        else:  # cascade: one epsilon per layer (floors); parallel: the same epsilon everywhere
            points = {"epsilon": [[e] * len(nets.layers_of(net)) if base_scheme == "cascade" else e for e in targets]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            frontier = nettrim_jax.sweep(net, jnp.asarray(xcal), scheme=base_scheme, gamma=1.0,
                                         refit=variant == "refit", finish=None, joint_refit=0, progress=False, **points, **cfg["solver"])
        for e, point in zip(targets, frontier):
            if point.result is None:
                raise RuntimeError(f"{dataset} {kind} {scheme} at {e}: {point.error}")
            pruned, rep, t_prune = list(point.result.model), point.result.report, point.seconds
            keeps, acc = evaluate_point(net, pruned, xcal, xtr_in, ytr, xte_in, yte, cfg, seed)
            rec = dict(dataset=dataset, net=kind, scheme=scheme, epsilon=None if by_target else e,
                       target=e if by_target else None, layer_epsilons=[l.epsilon for l in rep.layers],
                       sparsity=1 - sum(keeps) / sum(nets.sizes(net)), keeps=keeps,
                       sizes=nets.sizes(net), acc_original=base_acc, acc=acc,
                       rd=nets.relative_discrepancy(net, pruned, xcal),
                       converged=f"{sum(l.converged for l in rep.layers)}/{len(rep.layers)}",
                       iterations=[int(l.iterations) for l in rep.layers],
                       prune_seconds=t_prune)
            out.append(rec)
            log(f"  {scheme:8s} {'S' if by_target else 'e'}={e:<6g} sparsity {100 * rec['sparsity']:.1f}% keeps {keeps} "
                f"conv {rec['converged']} {t_prune:.0f}s  "
                + " ".join(f"{k}={100 * v:.2f}" for k, v in acc.items()))
    return out


def verdict(records, lo=0.80, hi=0.98):
    """Points in [lo, hi] sparsity where Net-Trim (no fine-tuning) is below a baseline."""
    losses, checked = [], 0
    for r in records:
        if not lo <= r["sparsity"] <= hi:
            continue
        checked += 1
        best = max((m for m in BASELINES if m in r["acc"]), key=lambda m: r["acc"][m])
        if r["acc"]["nettrim"] < r["acc"][best]:
            losses.append((r, best))
    return checked, losses


def report(records, args, started, out, cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["nettrim", "nettrim+ft", "magnitude", "magnitude+ft", "wanda", "sparsegpt", "alps"]
    lines = ["# MNIST and Fashion-MNIST: Net-Trim vs baselines at equal per-layer sparsity", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             common.provenance(args, started, seconds=(
                 sum(r["prune_seconds"] for r in records) if getattr(args, "report_only", False)
                 else None))
             + (" (report rebuilt from saved records; the time is the sum of the Net-Trim solves)"
                if getattr(args, "report_only", False) else ""), "",
             f"Sizes: {cfg['n_cal']} calibration images, {cfg['n_test'] or 10000} test images, "
             f"training {cfg['train_steps']} Adam steps on {cfg['n_train'] or 60000} images, "
             f"fine-tuning {cfg['ft_steps']} steps (lr {cfg['ft_lr']}); solver options "
             f"{cfg['solver'] or 'defaults'}"
             + (f"; sparsity targets split by allocation={cfg.get('allocation', 'scores')!r}"
                if cfg.get("sparsities") else "")
             + ".  Sparsity is the fraction of zero weights over all "
             "layers (biases excluded); 'per-layer nnz' is what Net-Trim chose and every baseline "
             "was given.  Accuracies in %; the best no-fine-tuning accuracy of each row is bold.", ""]
    groups = {}
    for r in records:
        groups.setdefault((r["dataset"], r["net"]), []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, ((dataset, kind), recs) in zip(axes[0], groups.items()):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 12 lines: keep them distinct
        recs = sorted(recs, key=lambda r: (r["scheme"], r["sparsity"]))
        arch = ("FC " + "-".join(map(str, cfg["fc_sizes"])) if kind == "fc" else
                f"LeNet-style conv, channels {cfg['lenet_channels']}, hidden {cfg['lenet_hidden']}")
        lines += [f"## {dataset}, {arch}"
                  f" (original test accuracy {100 * recs[0]['acc_original']:.2f}%)", ""]
        body = []
        for r in recs:
            nf = {c: r["acc"][c] for c in ("nettrim", *BASELINES) if c in r["acc"]}
            top = max(nf.values())
            cells = []
            for c in cols:
                if c not in r["acc"]:
                    cells.append("-")
                    continue
                s = f"{100 * r['acc'][c]:.2f}"
                cells.append(f"**{s}**" if c in nf and r["acc"][c] == top else s)
            body.append([r["scheme"], f"{r['epsilon']:g}" if r.get("target") is None else f"S={r['target']:g}",
                         f"{100 * r['sparsity']:.1f}",
                         " / ".join(map(str, r["keeps"])), f"{r['rd']:.3f}", r["converged"]]
                        + cells)
        lines += [common.table(["scheme", "e", "sparsity %", "per-layer nnz", "rd (calib.)",
                                "layers conv.", *cols], body), ""]
        for scheme in dict.fromkeys(r["scheme"] for r in recs):
            checked, losses = verdict([r for r in recs if r["scheme"] == scheme])
            who = f"Net-Trim ({scheme}) without fine-tuning"
            if not checked:
                lines += [f"No {scheme} point of this sweep fell in the 80-98% sparsity range.", ""]
            elif not losses:
                lines += [f"{who} is at or above every baseline at all {checked} points between "
                          "80% and 98% sparsity.", ""]
            else:
                lines += [f"**{who} is below a baseline at {len(losses)} of {checked} points "
                          "between 80% and 98% sparsity:**", ""]
                for r, best in losses:
                    lines.append(f"- {r['scheme']}, sparsity {100 * r['sparsity']:.1f}%: "
                                 f"Net-Trim {100 * r['acc']['nettrim']:.2f}% "
                                 f"< {best} {100 * r['acc'][best]:.2f}%")
                lines.append("")
        ft = [r for r in recs if "nettrim+ft" in r["acc"] and "magnitude+ft" in r["acc"]]
        if ft:
            worse = [r for r in ft if r["acc"]["nettrim+ft"] < r["acc"]["magnitude+ft"]]
            gap = max((r["acc"]["magnitude+ft"] - r["acc"]["nettrim+ft"] for r in worse), default=0)
            lines += [f"With masked fine-tuning, magnitude pruning at Net-Trim's per-layer counts "
                      f"ends above Net-Trim + fine-tuning at {len(worse)} of {len(ft)} points "
                      f"(by up to {100 * gap:.2f} points).", ""]
        schemes_here = list(dict.fromkeys(r["scheme"] for r in recs))
        for c, style in zip(cols, ["-o", "--o", "-s", "--s", "-^", "-v", "-x"]):
            for scheme in schemes_here:
                if not c.startswith("nettrim") and scheme != schemes_here[0]:
                    continue  # baselines plotted once (at the first scheme's points) to keep it legible
                pts = sorted((r["sparsity"], r["acc"][c]) for r in recs
                             if r["scheme"] == scheme and c in r["acc"])
                if not pts:
                    continue
                lab = f"{c} ({scheme})" if c.startswith("nettrim") else c
                st = style if "refit" not in scheme else style.replace("o", "D")
                ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], st, ms=3,
                        label=lab, alpha=0.9 if c.startswith("nettrim") else 0.7)
        ax.axhline(100 * recs[0]["acc_original"], color="gray", lw=0.8, ls=":")
        ax.set_xlabel("sparsity (% zero weights)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}, {kind}")
        lo = min(100 * min(r["acc"].values()) for r in recs)
        ax.set_ylim(max(lo - 2, 0), 100)
        ax.legend(fontsize=6)
    fig.tight_layout()
    common.savefig(fig, out / "mnist_accuracy_vs_sparsity.png")
    lines += ["![accuracy vs sparsity](mnist_accuracy_vs_sparsity.png)", ""]
    (out / "mnist.md").write_text("\n".join(lines))
    (out / "mnist.json").write_text(json.dumps(records, indent=1, default=float))


def config(quick: bool) -> dict:
    if quick:
        return dict(n_train=2000, n_test=500, n_cal=100, train_steps=100, ft_steps=20,
                    ft_lr=1e-3, fc_sizes=(784, 32, 10), lenet_channels=(2, 4),
                    lenet_hidden=16, epsilons=(0.3,), schemes=("cascade+refit", "parallel"),
                    lenet_schemes=("cascade",), solver=dict(max_iters=200))
    return dict(n_train=None, n_test=None, n_cal=2000, train_steps=3000, ft_steps=500,
                ft_lr=5e-4, fc_sizes=(784, 300, 100, 10), lenet_channels=(6, 16),
                lenet_hidden=120, epsilons=(0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.75),
                schemes=("cascade", "cascade+refit", "parallel", "parallel+refit"),
                solver=dict(max_iters=2000))


def main(argv=None):
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder with mnist/ and fashion-mnist/ "
                    "(default $NETTRIM_DATA)")
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--nets", nargs="+", default=None, choices=["fc", "lenet"])
    ap.add_argument("--epsilons", nargs="+", type=float, default=None)
    ap.add_argument("--sparsities", nargs="+", type=float, default=None,
                    help="sweep sparsity targets (prune(sparsity=S)) instead of epsilons")
    ap.add_argument("--baselines", nargs="+", default=None, choices=list(BASELINES))
    ap.add_argument("--relu-budget", default=None, choices=["output", "omega"],
                    help="prune(relu_budget=): the ReLU output's error (default) or the paper's program")
    ap.add_argument("--reweight", type=int, default=None,
                    help="prune(reweight=): rounds of reweighted l1 per layer")
    ap.add_argument("--allocation", default=None, choices=["scores", "uniform", "epsilon"],
                    help="prune(allocation=) with --sparsities")
    ap.add_argument("--ft-steps", type=int, default=None, help="masked fine-tuning steps (0: none)")
    ap.add_argument("--schemes", nargs="+", default=None,
                    choices=["cascade", "parallel", "cascade+refit", "parallel+refit"])
    ap.add_argument("--n-cal", type=int, default=None, help="calibration images")
    ap.add_argument("--download", action="store_true",
                    help="fetch missing datasets into --data / $NETTRIM_DATA first (checksums verified)")
    ap.add_argument("--append", action="store_true",
                    help="add to the records already in OUT/mnist.json (e.g. more epsilons); "
                         "networks are retrained identically from the seed")
    ap.add_argument("--include", nargs="+", default=(),
                    help="also report the records of these mnist.json files (other sweeps)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rewrite the report from OUT/mnist.json (with --append) "
                         "and --include files")
    args = ap.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    out = common.out_dir(args)
    cfg = config(args.quick)
    if args.epsilons:
        cfg["epsilons"] = tuple(args.epsilons)
    if args.sparsities:
        cfg["sparsities"] = tuple(args.sparsities)
    if args.baselines:
        cfg["baselines"] = tuple(args.baselines)
    if args.ft_steps is not None:
        cfg["ft_steps"] = args.ft_steps
    if args.schemes:
        cfg["schemes"] = tuple(args.schemes)
    if args.n_cal:
        cfg["n_cal"] = args.n_cal
    if args.relu_budget:
        cfg["solver"] = {**cfg["solver"], "relu_budget": args.relu_budget}
    if args.allocation:
        cfg["allocation"] = args.allocation
    if args.reweight:
        cfg["solver"] = {**cfg["solver"], "reweight": args.reweight}
    datasets = args.datasets or (["mnist"] if args.quick else ["mnist", "fashion-mnist"])
    if args.download:
        fetch(datasets, args.data)
    kinds = args.nets or ["fc", "lenet"]
    records = []
    if args.append and (out / "mnist.json").exists():
        records = json.loads((out / "mnist.json").read_text())
    for extra in args.include:
        records += json.loads(open(extra).read())
    if args.report_only:
        report(records, args, started, out, cfg)
        return records
    for dataset in datasets:
        for kind in kinds:
            records += run(dataset, kind, cfg, args.data, args.seed)
            report(records, args, started, out, cfg)  # rewrite as results come in
    print(f"wrote {out / 'mnist.md'}")
    return records


if __name__ == "__main__":
    main()
