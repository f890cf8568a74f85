"""Few calibration samples: accuracy after pruning against the number of calibration images.

One MNIST network (the 784-300-100-10 FC network of ``mnist.py``) is pruned with cascade
Net-Trim (gamma = 1, one relative epsilon e for all layers) from P calibration images drawn
from the training split, for several P.  At each P the baselines (magnitude, Wanda,
SparseGPT-style OBS) get the same P images and exactly Net-Trim's per-layer nonzero counts.
No fine-tuning: this measures what each method does with the calibration data alone.
Net-Trim is run plain and with ``refit=True`` (kept weights refit on the same images,
``nettrim_jax.refit_layer``); each variant's baselines get that variant's counts.

    python experiments/few_samples.py [--quick] [--data DIR]
"""

from __future__ import annotations

import json
import time

import common
import mnist
import nets
import numpy as np

VARIANTS = ("plain", "refit")


def config(quick: bool) -> dict:
    if quick:
        cfg = mnist.config(True)
        cfg.update(samples=(20, 100), epsilon=0.3, ft_steps=0)
    else:
        cfg = mnist.config(False)
        cfg.update(samples=(25, 50, 100, 200, 500, 1000), epsilon=0.2, ft_steps=0)
    return cfg


def report(records, base, cfg, args, started, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ["nettrim", *mnist.BASELINES]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for variant in VARIANTS:
        recs = [r for r in records if r["variant"] == variant]
        for m, st in zip(methods, ["-o", "-s", "-^", "-v"]):
            if m != "nettrim" and variant != VARIANTS[0]:
                continue  # baselines drawn once, at the plain variant's counts
            lab = f"{m} ({variant})" if m == "nettrim" else m
            ax.plot([r["samples"] for r in recs], [100 * r["acc"][m] for r in recs],
                    st if variant == "plain" else "--D", ms=4, label=lab)
    ax.axhline(100 * base, color="gray", ls=":", lw=0.8, label="unpruned")
    ax.set_xscale("log")
    ax.set_xlabel("calibration images P")
    ax.set_ylabel("test accuracy without fine-tuning (%)")
    ax.set_title(f"{args.dataset} FC, equal per-layer sparsity at each P")
    ax.legend(fontsize=7)
    common.savefig(fig, out / "few_samples.png")

    body = []
    for r in records:
        top = max(r["acc"][m] for m in methods)
        body.append([r["samples"], r["variant"], f"{100 * r['sparsity']:.1f}", " / ".join(map(str, r["keeps"])),
                     r["converged"]] + [f"**{100 * r['acc'][m]:.2f}**" if r["acc"][m] == top
                                        else f"{100 * r['acc'][m]:.2f}" for m in methods])
    losses = [r for r in records if r["acc"]["nettrim"] < max(r["acc"][m] for m in mnist.BASELINES)]
    lines = ["# Few calibration samples", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             common.provenance(args, started), "",
             f"Network {cfg['fc_sizes']}, unpruned test accuracy {100 * base:.2f}% "
             f"({cfg['n_test'] or 10000} test images); e = {cfg['epsilon']}; accuracies in %.", "",
             common.table(["P", "Net-Trim", "sparsity %", "per-layer nnz", "layers conv."] + methods,
                          body), ""]
    if losses:
        lines += ["**Net-Trim is below a baseline at P = "
                  + ", ".join(f"{r['samples']}, {r['variant']} ({100 * r['acc']['nettrim']:.2f}% vs best baseline "
                              f"{100 * max(r['acc'][m] for m in mnist.BASELINES):.2f}%)" for r in losses)
                  + ".**", ""]
    else:
        lines += ["Net-Trim is at or above every baseline at every P.", ""]
    lines += ["![few samples](few_samples.png)", ""]
    (out / "few_samples.md").write_text("\n".join(lines))
    (out / "few_samples.json").write_text(json.dumps(records, indent=1, default=float))


def main(argv=None):
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder with mnist/ (default $NETTRIM_DATA)")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--download", action="store_true",
                    help="fetch the dataset into --data / $NETTRIM_DATA first (checksums verified)")
    args = ap.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    out = common.out_dir(args)
    cfg = config(args.quick)
    if args.download:
        mnist.fetch([args.dataset], args.data)
    xtr, ytr, xte, yte = mnist.load(args.dataset, args.data, cfg["n_train"], cfg["n_test"])
    net = mnist.train_network("fc", cfg, xtr, ytr, args.seed)
    xtr_in, xte_in = mnist.as_input("fc", xtr), mnist.as_input("fc", xte)
    base = nets.accuracy(net, xte_in, yte)
    print(f"trained: test acc {base:.4f}", flush=True)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(xtr))
    records = []
    for p in cfg["samples"]:
        xcal = xtr_in[order[:p]]  # nested calibration sets
        for variant in VARIANTS:
            t0 = time.time()
            pruned, rep = nets.prune_nettrim(net, xcal, scheme="cascade",
                                             epsilon=[cfg["epsilon"]] * len(nets.layers_of(net)),
                                             gamma=1.0, refit=variant == "refit", finish=None, joint_refit=0, **cfg["solver"])
            keeps, acc = mnist.evaluate_point(net, pruned, xcal, None, None, xte_in, yte, cfg,
                                              args.seed)
            rec = dict(samples=p, variant=variant, keeps=keeps,
                       sparsity=1 - sum(keeps) / sum(nets.sizes(net)), acc=acc,
                       converged=f"{sum(l.converged for l in rep.layers)}/{len(rep.layers)}",
                       seconds=time.time() - t0)
            records.append(rec)
            print(f"P={p:5d} {variant:5s} sparsity {100 * rec['sparsity']:.1f}% keeps {keeps} "
                  + " ".join(f"{k}={100 * v:.2f}" for k, v in acc.items()), flush=True)

        report(records, base, cfg, args, started, out)
    print(f"wrote {out / 'few_samples.md'}")
    return records


if __name__ == "__main__":
    main()
