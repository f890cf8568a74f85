"""ResNet (BatchNorm + residual skips) on Fashion-MNIST, no fine-tuning.

Part 1, the ReLU programs behind affine epilogues: every conv of the model reaches its ReLU
through an inference BatchNorm and (second conv of a block) a residual add.  Net-Trim
(``nettrim_jax.prune``, defaults: no overrides) gives each such conv the exact ReLU program
on its folded kernel; three variants over an epsilon grid, in ``--scheme`` cascade and
parallel: the output budget (``relu_budget="output"``, the default), the paper's program
(``relu_budget="omega"``) and the linear program forced on every conv
(``activations={conv: "linear"}``); accuracy compared at matched sparsity (the linear curve
interpolated at each ReLU point's kept fraction).

Part 2, against the baselines: Net-Trim at sparsity targets 50-95% (``sparsity=S``,
cascade, plain and +refit), and magnitude, Wanda, SparseGPT and ALPS given exactly Net-Trim's
per-layer counts (``nettrim_jax.baselines.prune_model``, sequential on the pruned prefix).

    python experiments/resnet.py [--quick] [--data DIR] [--channels C] [--steps N]
"""

from __future__ import annotations

import json
import time
import warnings

import jax.numpy as jnp
import nets
import numpy as np
import optax
from common import out_dir, parser, provenance, quiet_solver_warnings, table
from flax import nnx

import nettrim_jax as nt
from nettrim_jax import baselines, training
from nettrim_jax.io.data import load_mnist
from nettrim_jax.models import ResNet
from nettrim_jax.training import train_classifier

BASELINES = ("magnitude", "wanda", "sparsegpt", "alps")
CONVS = ["stem", "block1/conv1", "block1/conv2", "block2/conv1", "block2/conv2"]


def accuracy(model, x, y) -> float:
    return training.accuracy(model, x, y, batch_size=1000)


def programs_part(model, xcal, xte, yte, scheme, eps_grid, iters):
    recs = []
    variants = {"ReLU, output budget": ("output", None), "ReLU, paper's program": ("omega", None),
                "linear forced": ("output", {c: "linear" for c in CONVS})}
    for label, (budget, over) in variants.items():
        for eps in eps_grid:
            res = nt.prune(model, xcal, epsilon=eps, scheme=scheme, activations=over, relu_budget=budget,
                           progress=False, max_iters=iters)
            rep = res.report
            recs.append({"scheme": scheme, "variant": label, "epsilon": eps, "kept": rep.nnz_after / rep.nnz_before,
                         "accuracy": accuracy(res.model, xte, yte),
                         "programs": [l.activation for l in rep.layers[:len(CONVS)]]})
    return recs


def matched(recs, scheme):
    lin = sorted((r["kept"], r["accuracy"]) for r in recs if r["scheme"] == scheme and r["variant"] == "linear forced")
    rows = []
    for r in recs:
        if r["scheme"] == scheme and r["variant"] != "linear forced" and lin[0][0] <= r["kept"] <= lin[-1][0]:
            a = float(np.interp(r["kept"], [k for k, _ in lin], [a for _, a in lin]))
            rows.append({"variant": r["variant"], "epsilon": r["epsilon"], "kept": r["kept"], "relu": r["accuracy"],
                         "linear": a})
    return rows


def baselines_part(model, xcal, xte, yte, targets, iters, methods, max_rows, refits):
    recs = []
    total = sum(nets.kernel_sizes(model, xcal))
    for refit in refits:
        for s in targets:
            t0 = time.time()
            res = nt.prune(model, xcal, sparsity=s, scheme="cascade", refit=refit, finish=None, joint_refit=0, progress=False, max_iters=iters)
            keeps = nets.kernel_counts(res.model, xcal)
            rec = {"target": s, "refit": refit, "sparsity": 1 - sum(keeps) / total, "keeps": keeps,
                   "seconds": time.time() - t0, "nettrim": accuracy(res.model, xte, yte)}
            for m in methods:
                pruned, _ = baselines.prune_model(model, xcal, keeps, m, max_rows=max_rows)
                rec[m] = accuracy(pruned, xte, yte)
            recs.append(rec)
    return recs


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--data", default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    started = time.time()
    quiet_solver_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    q = args.quick
    steps = args.steps or (60 if q else 4000)
    channels = args.channels or (4 if q else 16)
    ncal, ntest = (48, 300) if q else (512, 10000)
    eps_grid = (0.1,) if q else (0.02, 0.05, 0.1, 0.2, 0.3)
    targets = (0.5,) if q else (0.5, 0.7, 0.9, 0.95)
    methods = ("magnitude", "wanda") if q else BASELINES
    iters = 300 if q else 3000
    xtr, ytr = load_mnist("fashion-mnist", "train", root=args.data)
    xte, yte = load_mnist("fashion-mnist", "test", root=args.data)
    xtr, xte, yte = xtr[..., None], jnp.asarray(xte[..., None][:ntest]), jnp.asarray(yte[:ntest])
    model = ResNet(channels, 10, rngs=nnx.Rngs(args.seed))
    sched = optax.cosine_decay_schedule(3e-3, steps)
    train_classifier(model, xtr, ytr, steps=steps, batch_size=128, optimizer=optax.adam(sched), seed=args.seed)
    base = accuracy(model, xte, yte)
    xcal = jnp.asarray(xtr[-ncal:])  # calibration images: the end of the training split
    schemes = ("cascade",) if q else ("cascade", "parallel")
    progs = [r for scheme in schemes for r in programs_part(model, xcal, xte, yte, scheme, eps_grid, iters)]
    match = {scheme: matched(progs, scheme) for scheme in schemes}
    base_recs = baselines_part(model, xcal, xte, yte, targets, iters, methods, None if q else 50_000,
                               (False,) if q else (False, True))

    out = out_dir(args)
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    text = ["# ResNet (BatchNorm + residual) on Fashion-MNIST", "",
            f"A ResNet ({channels} channels: stem conv -> BatchNorm -> ReLU, two residual blocks "
            f"relu(x + bn(conv(relu(bn(conv(x)))))), average pool, Linear head), {steps} Adam steps "
            f"(cosine from 3e-3), unpruned test accuracy **{pct(base)}%** on {ntest} test images.  "
            f"Calibration: {ncal} training images.  No fine-tuning anywhere.", "",
            "## The ReLU programs behind BatchNorm and residual epilogues", "",
            table(["scheme", "variant", "epsilon", "weights kept %", "test acc %"],
                  [[r["scheme"], r["variant"], r["epsilon"], f"{100 * r['kept']:.1f}", pct(r["accuracy"])]
                   for r in progs]), ""]
    for scheme, rows in match.items():
        text += [f"Matched sparsity, {scheme} (linear-forced accuracy interpolated at the ReLU point's kept fraction):",
                 "", table(["variant", "epsilon", "kept %", "ReLU program acc %", "linear forced acc %", "difference"],
                           [[r["variant"], r["epsilon"], f"{100 * r['kept']:.1f}", pct(r["relu"]), pct(r["linear"]),
                             f"{100 * (r['relu'] - r['linear']):+.2f}"] for r in rows]), ""]
    text += ["## Net-Trim against the baselines at equal per-layer counts", "",
             "Net-Trim: cascade, `sparsity=S` (the epsilons searched per layer), defaults otherwise; the "
             "baselines get exactly the per-layer kernel counts Net-Trim reached.", "",
             table(["Net-Trim", "target", "sparsity %", "seconds", "nettrim", *methods],
                   [["+refit" if r["refit"] else "plain", r["target"], f"{100 * r['sparsity']:.1f}",
                     f"{r['seconds']:.0f}", pct(r["nettrim"]), *(pct(r[m]) for m in methods)] for r in base_recs]),
             "", provenance(args, started)]
    (out / "resnet.md").write_text("\n".join(text) + "\n")
    record = {"base": base, "channels": channels, "steps": steps, "programs": progs, "matched": match,
              "baselines": base_recs}
    (out / "resnet.json").write_text(json.dumps(record, indent=1))
    print("\n".join(text))
    return record


if __name__ == "__main__":
    main()
