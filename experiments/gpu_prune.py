"""LeNet-300-100 parallel prune on all 55,000 MNIST training images, timed after compilation.

Trains the 784-300-100-10 MLP briefly (Adam), then runs ``nettrim_jax.prune(scheme="parallel")``
twice on the first 55,000 training images: the first call compiles, the second is timed.
Writes gpu_prune.md / .json (device named) into the results folder.

    PYTHONPATH=. python experiments/gpu_prune.py --data DIR [--n-cal 55000] [--epsilon 0.05]
"""

from __future__ import annotations

import json
import time

import common
import jax
import mnist
import nets
import numpy as np


def main(argv=None):
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder with mnist/ (or the IDX files themselves)")
    ap.add_argument("--n-cal", type=int, default=55_000)
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--train-steps", type=int, default=1500)
    args = ap.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    n_cal = 2_000 if args.quick else args.n_cal
    xtr, ytr, xte, yte = mnist.load("mnist", args.data)
    cfg = dict(fc_sizes=(784, 300, 100, 10), train_steps=200 if args.quick else args.train_steps)
    t = time.time()
    net = mnist.train_network("fc", cfg, xtr, ytr, args.seed)
    train_s = time.time() - t
    xcal = mnist.as_input("fc", xtr[:n_cal])
    base = nets.accuracy(net, mnist.as_input("fc", xte), yte)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        pruned, rep = nets.prune_nettrim(net, xcal, scheme="parallel", epsilon=args.epsilon)
        times.append(time.perf_counter() - t)
    device = jax.devices()[0].device_kind
    rec = dict(device=device, devices=len(jax.devices()), n_cal=n_cal, epsilon=args.epsilon,
               first_call_s=times[0], steady_s=times[1], train_s=train_s,
               accuracy_before=base, accuracy_after=nets.accuracy(pruned, mnist.as_input("fc", xte), yte),
               sparsity=nets.sparsity(pruned), nnz=nets.nnz(pruned), nnz_before=nets.nnz(net),
               report=rep.to_markdown())
    out = common.out_dir(args)
    (out / "gpu_prune.json").write_text(json.dumps(rec, indent=1))
    text = "\n".join([
        f"# LeNet-300-100 parallel prune on {n_cal:,} MNIST images ({device})", "",
        common.provenance(args, started), "",
        f"- prune (parallel, epsilon {args.epsilon:g}): first call {times[0]:.2f} s (with compilation), "
        f"second call {times[1]:.2f} s",
        f"- test accuracy {100 * base:.2f}% -> {100 * rec['accuracy_after']:.2f}% at "
        f"{100 * rec['sparsity']:.1f}% sparsity (nnz {rec['nnz']} of {rec['nnz_before']})", "",
        rep.to_markdown(), ""])
    (out / "gpu_prune.md").write_text(text)
    print(text)
    return rec


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
