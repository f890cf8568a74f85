"""How well the count search's starting epsilon predicts the one it finds, across models.

``prune(model, x, sparsity=S, refit=True)`` searches each layer's epsilon for its keep count
(``network.targets.solve_to_count``), starting from ``problems.seed_epsilon``: the misfit of
the layer's original kernel cut to the count by Wanda's score, divided by a fixed ratio
(``problems._SEED_RATIO``, measured on LeNet-300-100).  This script records, for every layer
of the benchmark models (``bench_prune``'s set-ups: LeNet-300-100, LeNet-5, the BatchNorm
ResNet, the 2-block TinyLM), the start, the epsilon found, their ratio and the number of
solves the search made, so the ratio's generality is measured rather than assumed.  Solve
counts do not depend on the machine's load (times are not reported).

    python experiments/count_search.py [--quick] [--data DIR] [--models lenet300 lenet5 resnet lm2]

Writes count_search.md / count_search.json into the results folder.
"""

from __future__ import annotations

import json
import time
import warnings

import bench_prune
import common
import numpy as np

import nettrim_jax as nt
from nettrim_jax.network import problems


def record_searches(model, x, target):
    """Prune ``model`` at ``target`` and return one dict per counted layer solve."""
    calls = []
    search = problems.solve_to_count

    def spy(A, Y, V, program, keep, eps0, **kw):
        found = search(A, Y, V, program, keep, eps0, **kw)
        calls.append(dict(program=program, rows=int(A.shape[0]), N=int(A.shape[1]), M=int(Y.shape[1]),
                          keep=int(keep), start=float(eps0), found=float(found.epsilon), nnz=int(found.nnz),
                          solves=int(found.solves), converged=bool(found.info.converged)))
        return found

    problems.solve_to_count = spy
    try:
        res = nt.prune(model, x, sparsity=target, refit=True, progress=False)
    finally:
        problems.solve_to_count = search
    named = len(calls) == len(res.report.layers)  # every layer searched: the calls are in layer order
    for n, call in enumerate(calls):
        call["layer"] = res.report.layers[n].name if named else "?"
        call["ratio"] = call["found"] / call["start"] if call["start"] > 0 else None
    return calls


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--models", nargs="+", default=["lenet300", "lenet5", "resnet", "lm2"],
                   choices=["lenet300", "lenet5", "resnet", "lm2"])
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    started = time.time()
    cfgs = bench_prune.configs(args.quick, big=False)
    records = []
    for name in args.models:
        c = cfgs[name]
        model, x, _, _ = bench_prune.setup(name, c, args)
        for target in c["targets"]:
            for call in record_searches(model, x, target):
                records.append(dict(model=name, target=target, **call))
                print(name, target, records[-1], flush=True)
    rows = [[r["model"], f"{r['target']:g}", r["layer"], r["program"], f"{r['N']}x{r['M']}", r["keep"],
             f"{r['start']:.4g}", f"{r['found']:.4g}", "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}", r["solves"],
             "yes" if r["converged"] else "no"] for r in records]
    ratios = np.array([r["ratio"] for r in records if r["ratio"] is not None])
    solves = np.array([r["solves"] for r in records])
    per_model = []
    for name in dict.fromkeys(r["model"] for r in records):
        rs = [r for r in records if r["model"] == name]
        rr = np.array([r["ratio"] for r in rs if r["ratio"] is not None])
        per_model.append([name, len(rs), f"{np.mean([r['solves'] for r in rs]):.2f}",
                          f"{np.exp(np.mean(np.log(rr))):.2f} ({rr.min():.2f}-{rr.max():.2f})"])
    text = ["# The count search's start against the epsilon it finds", "",
            __doc__.split("\n\n")[1].replace("\n", " "), "",
            common.table(["model", "layers searched", "solves per layer (mean)",
                          "found / start: geometric mean (min-max)"], per_model), "",
            "A start of 0 (no seed: the layer keeps everything, or its program is not its kernel's) "
            "is left out of the ratios.", "",
            f"All layers: {len(records)}, solves per layer {solves.mean():.2f} (max {solves.max()}); found / start "
            f"{np.exp(np.mean(np.log(ratios))):.2f} (min {ratios.min():.2f}, max {ratios.max():.2f}); start ratio "
            f"{problems._SEED_RATIO}.", "",
            common.table(["model", "S", "layer", "program", "N x M", "keep", "start eps", "found eps",
                          "found / start", "solves", "converged"], rows), "",
            common.provenance(args, started)]
    out = common.out_dir(args)
    (out / "count_search.md").write_text("\n".join(text) + "\n")
    (out / "count_search.json").write_text(json.dumps(records, indent=1))
    print("\n".join(text))
    return records


if __name__ == "__main__":
    main()
