"""Structured Net-Trim on whole networks: units and channels removed, against structured
baselines at equal parameter counts, and the measured speed of the compacted models.

Networks (as in ``mnist.py``): LeNet-300-100 (784-300-100-10 FC) and the LeNet-5-style CNN
(5x5 conv 6 -> pool -> 5x5 conv 16 -> pool -> 120 -> 10) trained on MNIST.  Net-Trim:
``prune(structure="units", scheme="cascade", gamma=1, refit=True)`` with one epsilon e for
all layers, and the same with ``finish="l0"`` (group hard-thresholding steps at each layer's
unit count on the refit objective, ``solver.l0``), then ``result.compact()``: every hidden
unit / channel that the next layer no longer reads is removed.  The first layer is left
dense (``activations={first: "skip"}``): its groups are input pixels, which none of the
compared models removes.  At each point the baselines keep exactly as many units in every
hidden layer (so the compacted models have the same parameter count; where the l0 finish's
model kept other widths, act-norm + refit is run again at those for its comparison):

* L1-filter: the units whose incoming filter (kernel column) has the largest L1 norm (Li
  et al. 2017, "Pruning Filters for Efficient ConvNets"), no data;
* act-norm + refit: the units with the largest ||a_j||_2 ||W_out[j]||_2 (activation norm on
  the calibration images times the outgoing weights' norm), then every layer refit by least
  squares on the kept units (``nettrim_jax.refit_layer``, on the pruned prefix's inputs),
  the data-aware structured baseline closest to Net-Trim + refit.

Accuracy on the 10 000 test images, no fine-tuning.  Speed: the original and the compacted
Net-Trim model, jit-compiled, median of repeated calls, batch 1 (latency) and 1024
(throughput), side by side in one run on this machine's CPU.

    python experiments/structured.py [--quick] [--data DIR] [--seeds 0 1 2] [--nets fc lenet]
"""

from __future__ import annotations

import json
import time

import common
import jax
import jax.numpy as jnp
import mnist
import nets
import numpy as np
from bench_inference import timeit

import nettrim_jax as nt
from nettrim_jax.io.atomic import atomic_write_text
from nettrim_jax.network.adapters import adapt
from nettrim_jax.network.compact import remove_units
from nettrim_jax.network.specs import Conv, Dense, apply_specs, kernel_matrix, program_rows, with_matrix


def widths(net) -> list[int]:
    """Output units / channels of every layer but the last."""
    return [int(np.shape(net[i].kernel)[-1]) for i in nets.layers_of(net)[:-1]]


def params(net) -> int:
    return sum(int(np.size(net[i].kernel)) + (0 if net[i].bias is None else int(np.size(net[i].bias)))
               for i in nets.layers_of(net))


def top(scores, count) -> np.ndarray:
    keep = np.zeros(scores.shape[0], bool)
    keep[np.argsort(-scores, kind="stable")[:count]] = True
    return keep


def l1_filter(net, counts, x):
    idx = nets.layers_of(net)
    return remove_units(net, [top(np.abs(np.asarray(net[i].kernel)).reshape(-1, np.shape(net[i].kernel)[-1]).sum(0), c)
                            for i, c in zip(idx[:-1], counts)])


def act_norm_refit(net, counts, x):
    idx = nets.layers_of(net)
    acts, h = [], jnp.asarray(x)
    for j, item in enumerate(net):
        h = apply_specs([item], h)
        if j in idx[:-1]:
            acts.append(np.asarray(jnp.sqrt(jnp.sum(h.reshape(-1, h.shape[-1]) ** 2, axis=0))))
    keeps = []
    for n, b in enumerate(idx[1:]):
        k = np.asarray(net[b].kernel)
        m = acts[n].shape[0]
        out = (np.sqrt((k ** 2).sum(axis=(0, 1, 3))) if isinstance(net[b], Conv)
               else np.sqrt((k.reshape(-1, m, k.shape[-1]) ** 2).sum(axis=(0, 2))))
        keeps.append(top(acts[n] * out, counts[n]))
    small = remove_units(net, keeps)
    return refit_chain(net, small, keeps, x)


def refit_chain(orig, small, keeps, x):
    """Each layer of ``small`` refit on its support to the original layer's response (its
    kept units' columns), on the inputs the refit prefix produces (ReLU program for ReLU
    layers)."""
    small = list(small)
    h_orig, h_new = jnp.asarray(x), jnp.asarray(x)
    n = 0
    for j, (o, s) in enumerate(zip(orig, small)):
        if isinstance(s, (Dense, Conv)):
            y = apply_specs([o._replace(activation="linear")], h_orig)
            act = "relu" if o.activation == "relu" else "linear"
            target = jax.nn.relu(y) if act == "relu" else y
            if n < len(keeps):
                target = target[..., keeps[n]]
            n += 1
            rows = program_rows(s, h_new)
            k2, _ = nt.refit_layer(rows, target.reshape(-1, target.shape[-1]), kernel_matrix(s), activation=act)
            small[j] = with_matrix(s, k2)
        h_orig, h_new = apply_specs([o], h_orig), apply_specs([small[j]], h_new)
    return small


def speed(net, x):
    f = jax.jit(lambda v: apply_specs(net, v))  # median of 30 calls after 2 warm-ups (no time cap)
    return timeit(f, (x[:1],), 30, budget=1e9), timeit(f, (x[:1024],), 30, budget=1e9)


def run(kind, cfg, args, eps_grid, seed, log):
    xtr, ytr, xte, yte = mnist.load("mnist", args.data, cfg["n_train"], cfg["n_test"])
    xtr_in, xte_in = mnist.as_input(kind, xtr), mnist.as_input(kind, xte)
    net = mnist.train_network(kind, cfg, xtr, ytr, seed)
    base = nets.accuracy(net, xte_in, yte)
    xcal = xtr_in[np.random.default_rng(seed).choice(len(xtr), cfg["n_cal"], replace=False)]
    t_dense = speed(net, jnp.asarray(xte_in))
    L = len(nets.layers_of(net))
    # the first layer stays dense: its groups are the input pixels, which no model here removes
    first_dense = {adapt(net, jnp.asarray(xcal[:8])).names[0]: "skip"}
    recs = []
    for e in eps_grid:
        kw = dict(structure="units", scheme="cascade", epsilon=[e] * L, gamma=1.0, refit=True, finish=None, joint_refit=0, progress=False,
                  max_iters=cfg["solver"]["max_iters"], activations=first_dense)
        t0 = time.time()
        res = nt.prune(net, jnp.asarray(xcal), **kw)
        small = res.compact()
        seconds = time.time() - t0
        t0 = time.time()
        small_l0 = nt.prune(net, jnp.asarray(xcal), **{**kw, "finish": "l0"}).compact()
        seconds_l0 = time.time() - t0
        counts = widths(small)
        rec = {"net": kind, "seed": seed, "epsilon": e, "widths": counts, "widths_l0": widths(small_l0),
               "widths_before": widths(net), "params": params(small), "params_before": params(net),
               "seconds": seconds, "seconds_l0": seconds_l0,
               "acc": {"nettrim": nets.accuracy(small, xte_in, yte),
                       "nettrim+l0": nets.accuracy(small_l0, xte_in, yte),
                       "l1-filter": nets.accuracy(l1_filter(net, counts, xcal), xte_in, yte),
                       "act-norm+refit": nets.accuracy(act_norm_refit(net, counts, xcal), xte_in, yte)}}
        # the l0 finish is compared with act-norm + refit at its own widths (equal widths)
        rec["acc"]["act-norm+refit@l0"] = (
            rec["acc"]["act-norm+refit"]
            if rec["widths_l0"] == counts
            else nets.accuracy(act_norm_refit(net, rec["widths_l0"], xcal), xte_in, yte)
        )
        t_small = speed(small, jnp.asarray(xte_in))
        rec["latency_speedup"] = t_dense[0] / t_small[0]
        rec["throughput_speedup"] = t_dense[1] / t_small[1]
        log(f"{kind} seed {seed} e={e}: widths {counts} (l0 {rec['widths_l0']}) params "
            f"{rec['params']}/{rec['params_before']} {rec['acc']} speedup "
            f"{rec['latency_speedup']:.2f}/{rec['throughput_speedup']:.2f}")
        recs.append(rec)
    return {"net": kind, "seed": seed, "base": base, "records": recs}


METHODS = ("nettrim", "nettrim+l0", "l1-filter", "act-norm+refit")


def summary(results):
    """One row per (net, epsilon): widths and params of the first seed, accuracy mean
    (min-max) over seeds, the best mean in bold, and the l0 finish against act-norm+refit
    per seed ('ahead' / 'behind' only when every seed agrees)."""
    rows = []
    for kind in dict.fromkeys(r["net"] for r in results):
        runs = [r for r in results if r["net"] == kind]
        for n, rec in enumerate(runs[0]["records"]):
            recs = [r["records"][n] for r in runs]
            acc = {m: 100 * np.array([x["acc"][m] for x in recs]) for m in METHODS}
            best = max(v.mean() for v in acc.values())
            at_l0 = 100 * np.array([x["acc"]["act-norm+refit@l0"] for x in recs])  # at the l0 model's widths
            diff = acc["nettrim+l0"] - at_l0
            verdict = "ahead" if diff.min() > 0 else "behind" if diff.max() < 0 else "tie (sign varies)"
            narrower = all(a <= b for x in recs for a, b in zip(x["widths_l0"], x["widths"]))
            wider = all(a >= b for x in recs for a, b in zip(x["widths_l0"], x["widths"]))
            widths_tag = "" if narrower and wider else " (l0 narrower)" if narrower else " (l0 wider)" if wider else " (l0 widths differ)"
            rows.append([kind, f"{100 * np.mean([r['base'] for r in runs]):.2f}", rec["epsilon"], len(recs),
                         " / ".join(f"{a}->{b}" for a, b in zip(rec["widths_before"], rec["widths"])),
                         f"{100 * rec['params'] / rec['params_before']:.1f}",
                         *((f"**{v.mean():.2f}**" if v.mean() == best else f"{v.mean():.2f}") +
                           f" ({v.min():.2f}-{v.max():.2f})" for v in acc.values()),
                         f"{diff.mean():+.2f} ({diff.min():+.2f} to {diff.max():+.2f}) {verdict}"
                         + widths_tag,
                         f"{np.mean([x['seconds'] for x in recs]):.1f} / {np.mean([x['seconds_l0'] for x in recs]):.1f}",
                         f"{rec['latency_speedup']:.2f}", f"{rec['throughput_speedup']:.2f}"])
    return rows


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of training and calibration")
    p.add_argument("--nets", nargs="+", choices=["fc", "lenet"], default=["fc", "lenet"])
    p.add_argument("--render", action="store_true",
                   help="rewrite structured.md from the results folder's structured.json (no run)")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    cfg = mnist.config(args.quick)
    if args.quick:
        cfg["n_cal"] = 200
    grid = {"fc": (0.3,) if args.quick else (0.1, 0.2, 0.3, 0.5),
            "lenet": (0.3,) if args.quick else (0.1, 0.2, 0.3, 0.5)}
    out = common.out_dir(args)
    if args.render:
        results = json.loads((out / "structured.json").read_text())
        seeds = list(dict.fromkeys(r["seed"] for r in results))
        stamp = "_Rendered from structured.json by `--render`; the run's own provenance line is not kept._"
    else:
        seeds = args.seeds or [args.seed]
        results = [run(kind, cfg, args, grid[kind], seed, print) for kind in args.nets for seed in seeds]
        stamp = common.provenance(args, started)
    text = ["# Structured Net-Trim on networks: units and channels removed", "",
            __doc__.split("\n\n")[1].replace("\n", " "), "",
            common.table(["net", "dense acc %", "e", "seeds", "hidden widths (seed 1st)", "params kept %",
                          "Net-Trim units+refit", "Net-Trim units+refit+l0", "L1-filter", "act-norm+refit",
                          "l0 - act-norm (per seed)", "prune s (l1 / +l0)", "latency speedup (batch 1)",
                          "throughput speedup (batch 1024)"], summary(results)), "",
            f"Sizes: {cfg['n_cal']} calibration images, training {cfg['train_steps']} Adam steps; solver "
            f"{cfg['solver']}.  Accuracy %: mean (min-max) over seeds {seeds}.  Params kept: the compacted "
            "model's weights and biases over the original's (the first layer keeps all its inputs: only hidden "
            "units are removed).  Speedups (first seed): original / compacted median time, CPU, jit.  "
            "'l0 narrower' / 'l0 wider': the l0 finish's model kept fewer / more units than the widths the "
            "baselines get, in some layer of some seed ('l0 widths differ': fewer in one, more in another); the "
            "l0 - act-norm column then compares with act-norm + refit run again at the l0 model's own widths.", "",
            stamp]
    atomic_write_text(out / "structured.md", "\n".join(text) + "\n")
    if not args.render:
        atomic_write_text(out / "structured.json", json.dumps(results, indent=1))
    print("\n".join(text))
    return results


if __name__ == "__main__":
    main()
