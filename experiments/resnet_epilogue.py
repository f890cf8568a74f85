"""ResNet (BatchNorm + residual) on Fashion-MNIST: Net-Trim through the affine epilogues
(exact ReLU program, the default) against the linear program forced on every conv
(``activations={conv: "linear"}``), ``--scheme`` parallel (default) or cascade, no fine-tuning, over an epsilon grid;
accuracy compared at matched sparsity (the linear-forced curve interpolated at each
epilogue point's kept fraction)."""

from __future__ import annotations

import json
import time
import warnings

import jax.numpy as jnp
import numpy as np
from common import out_dir, parser, provenance, quiet_solver_warnings, table
from flax import nnx

import nettrim_jax as nt
from nettrim_jax.io.data import load_mnist
from nettrim_jax.models import ResNet
from nettrim_jax.training import train_classifier


def accuracy(model, x, y, batch=1000):
    hits = 0
    for i in range(0, x.shape[0], batch):
        hits += int(jnp.sum(jnp.argmax(model(x[i:i + batch]), -1) == y[i:i + batch]))
    return hits / x.shape[0]


def main():
    p = parser(__doc__)
    p.add_argument("--scheme", choices=("parallel", "cascade"), default="parallel")
    args = p.parse_args()
    started = time.time()
    quiet_solver_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    steps, ncal, ntest = (60, 64, 500) if args.quick else (400, 256, 10000)
    eps_grid = (0.05, 0.2) if args.quick else (0.02, 0.05, 0.1, 0.2, 0.3)
    xtr, ytr = load_mnist("fashion-mnist", "train")
    xte, yte = load_mnist("fashion-mnist", "test")
    xtr, xte = xtr[..., None], xte[..., None][:ntest]
    yte = yte[:ntest]
    model = ResNet(8, 10, rngs=nnx.Rngs(args.seed))
    train_classifier(model, xtr, ytr, steps=steps, batch_size=128, seed=args.seed)
    base = accuracy(model, xte, yte)
    xcal = jnp.asarray(xtr[:ncal])
    convs = ["stem", "block1/conv1", "block1/conv2", "block2/conv1", "block2/conv2"]
    rows, recs = [], []
    for mode in ("epilogue", "linear-forced"):
        over = None if mode == "epilogue" else {c: "linear" for c in convs}
        for eps in eps_grid:
            res = nt.prune(model, xcal, epsilon=eps, scheme=args.scheme, activations=over,
                           progress=False, max_iters=1500 if args.quick else 3000)
            rep = res.report
            acc = accuracy(res.model, xte, yte)
            kept = rep.nnz_after / rep.nnz_before
            progs = [l.activation for l in rep.layers[:5]]
            recs.append({"mode": mode, "epsilon": eps, "kept": kept, "accuracy": acc, "programs": progs})
            rows.append([mode, eps, f"{100 * kept:.1f}%", f"{100 * acc:.2f}%", ",".join(progs)])
    lin = sorted((r["kept"], r["accuracy"]) for r in recs if r["mode"] == "linear-forced")
    match = []
    for r in recs:
        if r["mode"] == "epilogue" and lin[0][0] <= r["kept"] <= lin[-1][0]:
            a_lin = float(np.interp(r["kept"], [k for k, _ in lin], [a for _, a in lin]))
            match.append([f"{100 * r['kept']:.1f}%", f"{100 * r['accuracy']:.2f}%", f"{100 * a_lin:.2f}%"])
    out = out_dir(args)
    text = ["# ResNet (BatchNorm + residual) on Fashion-MNIST: affine epilogues vs linear forced", "",
            f"Unpruned test accuracy {100 * base:.2f}% ({steps} Adam steps, {ntest} test images; "
            f"calibration {ncal} training images; {args.scheme} Net-Trim, no fine-tuning).", "",
            table(["mode", "epsilon", "weights kept", "test acc", "conv programs"], rows), "",
            "Matched sparsity (linear-forced accuracy interpolated at the epilogue run's kept fraction):", "",
            table(["kept", "epilogue (ReLU program)", "linear forced"], match), "",
            provenance(args, started)]
    stem = "resnet_epilogue" + ("" if args.scheme == "parallel" else f"_{args.scheme}")
    (out / f"{stem}.md").write_text("\n".join(text) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"base": base, "runs": recs}, indent=1))
    print("\n".join(text))


if __name__ == "__main__":
    main()
