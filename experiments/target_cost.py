"""What a sparsity target costs: ``prune(sparsity=S)`` against one prune at the epsilons it found.

LeNet-300-100 on MNIST (the network and calibration images of ``mnist.py``; ``--quick``: its
784-32-10 MLP), parallel scheme
(every layer's program is fixed by its own epsilon, so the epsilons the search reports
reproduce its programs exactly), ``allocation="scores"``, with and without reweighted l1.
For each setting: the wall time of the targeted prune, then of ``prune(epsilon=found,
relative=False)`` with the same options, then their ratio; both include their compiles, and
the two are run back to back on the same machine, every compile cache cleared before each
(``fresh``), so neither reuses the other's compiled solvers.  With reweighting the fixed
prune is not the same program (its rounds run at fixed epsilons, so it ends sparser than the
target; its sparsity is shown).  Also: how far the fixed-epsilon prune's
sparsity is from the target (the search's epsilons are the ones it kept).

    python experiments/target_cost.py [--quick] [--sparsities 0.9] [--reweights 0 2]
"""

from __future__ import annotations

import json
import time

import common
import mnist
import nets
import numpy as np


def fresh():
    """Clear every compile cache a prune fills (jax's and the package's solver caches)."""
    import jax

    from nettrim_jax.network import problems, targets

    jax.clear_caches()
    problems.jitted_solver.cache_clear()
    targets._batched.cache_clear()


def run(cfg, root, sparsities, reweights, seed=0, log=print):
    xtr, ytr, _, _ = mnist.load("mnist", root, cfg["n_train"], 10)
    net = mnist.train_network("fc", cfg, xtr, ytr, seed)
    xcal = xtr[np.random.default_rng(seed).choice(len(xtr), cfg["n_cal"], replace=False)].reshape(cfg["n_cal"], -1)
    rows = []
    for s in sparsities:
        for r in reweights:
            opts = dict(scheme="parallel", refit=True, reweight=r, **cfg["solver"])
            fresh()
            t0 = time.perf_counter()
            _, rep = nets.prune_nettrim(net, xcal, sparsity=s, **opts)
            t_target = time.perf_counter() - t0
            eps = [layer.epsilon for layer in rep.layers]
            fresh()
            t0 = time.perf_counter()
            _, fixed = nets.prune_nettrim(net, xcal, epsilon=eps, relative=False, **opts)
            t_fixed = time.perf_counter() - t0
            row = dict(sparsity=s, reweight=r, target_seconds=t_target, fixed_seconds=t_fixed,
                       ratio=t_target / t_fixed, reached=1 - rep.nnz_after / rep.nnz_before,
                       fixed_reached=1 - fixed.nnz_after / fixed.nnz_before, epsilons=eps)
            rows.append(row)
            log(f"S={s} reweight={r}: target {t_target:.0f}s, one prune at its epsilons {t_fixed:.0f}s, "
                f"ratio {row['ratio']:.2f}; sparsity {100 * row['reached']:.2f}% / {100 * row['fixed_reached']:.2f}%")
    return rows


def main(argv=None):
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder with mnist/ (default $NETTRIM_DATA)")
    ap.add_argument("--sparsities", nargs="+", type=float, default=None)
    ap.add_argument("--reweights", nargs="+", type=int, default=None)
    args = ap.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    out = common.out_dir(args)
    cfg = mnist.config(args.quick)
    sparsities = args.sparsities or ((0.95,) if args.quick else (0.9,))
    reweights = args.reweights or ((0, 1) if args.quick else (0, 2))
    rows = run(cfg, args.data, sparsities, reweights, args.seed)
    (out / "target_cost.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Cost of a sparsity target", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             common.provenance(args, started), "",
             f"Network {'-'.join(map(str, cfg['fc_sizes']))}"
             + (" (LeNet-300-100)" if tuple(cfg["fc_sizes"]) == (784, 300, 100, 10) else " (the quick mode's small MLP)")
             + f"; {cfg['n_cal']} calibration images, solver options {cfg['solver']}, refit on.", "",
             "| target | reweight | targeted prune (s) | one prune at its epsilons (s) | ratio | sparsity reached | "
             "at the fixed epsilons |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {100 * r['sparsity']:.0f}% | {r['reweight']} | {r['target_seconds']:.0f} | {r['fixed_seconds']:.0f} | "
              f"{r['ratio']:.2f} | {100 * r['reached']:.2f}% | {100 * r['fixed_reached']:.2f}% |" for r in rows]
    (out / "target_cost.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'target_cost.md'}")
    return rows


if __name__ == "__main__":
    main()
