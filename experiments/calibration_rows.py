"""Net-Trim against ALPS as the calibration set grows, on one trained network per seed.

For each seed a LeNet-5 (``--net lenet``) or LeNet-300-100 (``--net fc``) is trained on MNIST or
Fashion-MNIST (``--dataset``) as in ``l0_finish.py``; calibration sets of ``--rows`` training
images are nested (the first n of one permutation of the training set, which follows the
seed).  At each size, what a user types, ``prune(model, x, sparsity=S, refit=True)``, and ALPS
(``baselines.prune_model``) at that run's per-layer counts; test accuracy without fine-tuning.
The question it answers: is a gap to ALPS at a small calibration set a gap of the method or of
fitting the calibration rows (LeNet-5's first fully connected layer has 784 inputs and a bias,
so 1000 images give it 1.3 rows per input)?

    python experiments/calibration_rows.py [--quick] [--data DIR] [--net lenet|fc]
        [--dataset mnist|fashion-mnist] [--rows 1000 4000] [--seeds 0 1 2] [--target 0.9]

Writes calibration_rows_NET_DATASET.md / .json into the results folder (after every seed).
"""

from __future__ import annotations

import json
import time
import warnings

import common
import jax.numpy as jnp
import l0_finish
import mnist
import nets
import numpy as np

import nettrim_jax as nt
from nettrim_jax import baselines
from nettrim_jax.io.atomic import atomic_write_text


def run_seed(seed, args):
    cfg = mnist.config(args.quick)
    xtr, ytr, xte, yte = mnist.load(args.dataset, args.data, cfg["n_train"], cfg["n_test"])
    model = mnist.train_network(args.net, cfg, xtr, ytr, seed)
    order = np.random.default_rng(seed).permutation(len(xtr))
    xte_in = mnist.as_input(args.net, xte)
    dense = nets.accuracy(model, xte_in, yte)
    sizes = nets.kernel_sizes(model, jnp.asarray(mnist.as_input(args.net, xtr[:2])))
    rows = []
    for n in args.rows:
        xcal = jnp.asarray(mnist.as_input(args.net, xtr[order[: min(n, len(xtr))]]))
        t0 = time.perf_counter()
        res = nt.prune(model, xcal, sparsity=args.target, refit=True, progress=False)
        sec = time.perf_counter() - t0
        keeps = nets.kernel_counts(res.model, xcal)
        alps, _ = baselines.prune_model(model, xcal, keeps, "alps")
        layers = res.report.layers
        rows.append(dict(seed=seed, target=args.target, variant=f"{int(xcal.shape[0])} rows", seconds=sec,
                         dense=dense, sparsity=1 - sum(keeps) / sum(sizes), keeps=keeps,
                         converged=sum(bool(l.converged) for l in layers), layers=len(layers),
                         nettrim=nets.accuracy(list(res.model), xte_in, yte),
                         alps=nets.accuracy(list(alps), xte_in, yte), joint=res.report.joint or None))
        r = rows[-1]
        print(f"seed {seed}, {n} rows: {sec:.1f} s, sparsity {100 * r['sparsity']:.2f}%, "
              f"Net-Trim {r['nettrim']:.4f}, ALPS {r['alps']:.4f}", flush=True)
    return rows


def write(records, args, started, out) -> list[str]:
    net = {"fc": "LeNet-300-100", "lenet": "LeNet-5"}[args.net]
    name = f"calibration_rows_{args.net}_{args.dataset}"
    seeds = sorted({r["seed"] for r in records})
    text = [f"# Net-Trim against ALPS as the calibration set grows ({net}, {args.dataset})", "",
            "Test accuracy % without fine-tuning, mean (min-max) over seeds; `prune(model, x, "
            f"sparsity={args.target:g}, refit=True)` and ALPS at each run's own per-layer counts, on nested "
            "calibration sets of one trained network per seed; the difference is per seed.  'ahead' / "
            f"'behind' only when every seed agrees.  Seeds: {seeds}.", "",
            common.table(["S", "calibration", "seeds", "sparsity %", "Net-Trim", "ALPS", "Net-Trim - ALPS",
                          "verdict", "prune s", "certified"],
                         sorted(l0_finish.summary(records), key=lambda r: (r[0], int(r[1].split()[0])))), "",
            common.provenance(args, started)]
    atomic_write_text(out / f"{name}.md", "\n".join(text) + "\n")
    atomic_write_text(out / f"{name}.json", json.dumps(records, indent=1))
    return text


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--net", choices=["fc", "lenet"], default="lenet")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--rows", type=int, nargs="+", default=None, help="calibration set sizes (nested)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--target", type=float, default=0.9)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    common.quiet_solver_warnings()
    started = time.time()
    args.rows = args.rows or ([50, 100] if args.quick else [1000, 4000])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = common.out_dir(args)
    records, text = [], []
    for seed in seeds:
        records += run_seed(seed, args)
        text = write(records, args, started, out)
    print("\n".join(text))
    return records


if __name__ == "__main__":
    main()
