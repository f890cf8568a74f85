"""Compile reuse: a 12-block model compiles no more layer-solver programs than a 2-block one.

For each model, in a fresh process (so that no compiled program is shared between rows):
``prune(model, tokens, sparsity=S, refit=True)`` and ``prune(model, tokens, epsilon=0.05)``,
counting the XLA compilations of Net-Trim's layer solver (``bench_prune.CompileLog``) and the
wall time.  Models: ``TinyLM`` (blocks in a list; d=64, 4 heads, ReLU MLP) with 2 and 12
blocks, and the same blocks stacked with a leading layer axis (``nnx.vmap`` + ``nnx.scan``,
as large models are built) with 2 and 12 blocks.  Untrained weights: the count does not
depend on them.

    python experiments/compile_reuse.py [--quick]

Writes compile_reuse.md / compile_reuse.json into the results folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import common

D, HEADS, VOCAB, SEQ = 64, 4, 40, 32


def _stacked_lm(layers, rngs):
    from flax import nnx

    from nettrim_jax.models import DecoderBlock

    class StackedLM(nnx.Module):
        def __init__(self):
            self.embed = nnx.Embed(VOCAB, D, rngs=rngs)

            @nnx.split_rngs(splits=layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return DecoderBlock(D, HEADS, "relu", rngs)

            self.blocks = create(rngs)
            self.head = nnx.Linear(D, VOCAB, rngs=rngs)

        def __call__(self, ids):
            mask = nnx.make_causal_mask(ids)

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def step(h, block):
                return block(h, mask)

            return self.head(step(self.embed(ids), self.blocks))

    return StackedLM()


def one(kind: str, layers: int, windows: int, sparsity: float) -> dict:
    """Prune one model in this process; the solver compilations counted."""
    import bench_prune
    import jax
    from flax import nnx

    import nettrim_jax as nt
    from nettrim_jax.models import TinyLM

    common.quiet_solver_warnings()
    warnings.filterwarnings("ignore")
    bench_prune.watch_compiles()
    rngs = nnx.Rngs(0)
    model = TinyLM(VOCAB, D, HEADS, SEQ, mlp="relu", layers=layers, rngs=rngs) if kind == "list" else _stacked_lm(layers, rngs)
    ids = jax.random.randint(jax.random.key(1), (windows, SEQ), 0, VOCAB)
    out = dict(kind=kind, blocks=layers, tokens=windows * SEQ)
    for name, kw in (("sparsity", dict(sparsity=sparsity, refit=True)), ("epsilon", dict(epsilon=0.05))):
        before = bench_prune.solver_programs()
        t = time.perf_counter()
        res = nt.prune(model, ids, progress=False, **kw)
        out[name] = dict(seconds=time.perf_counter() - t, programs=bench_prune.solver_programs() - before,
                         layers=len(res.report.layers),
                         converged=sum(bool(layer.converged) for layer in res.report.layers))
    return out


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--one", nargs=2, default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    windows, sparsity = (4, 0.5) if args.quick else (16, 0.5)
    if args.one:  # a child process: one model, its record on stdout
        print(json.dumps(one(args.one[0], int(args.one[1]), windows, sparsity)))
        return None
    started = time.time()
    records = []
    for kind in ("list", "stacked"):
        for layers in (2, 12):
            cmd = [sys.executable, __file__, "--one", kind, str(layers)] + (["--quick"] if args.quick else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            records.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(records[-1], flush=True)
    rows = [[r["kind"], r["blocks"], r["tokens"], r[m]["layers"], m, r[m]["programs"], f"{r[m]['seconds']:.1f}",
             f"{r[m]['converged']}/{r[m]['layers']}"] for r in records for m in ("sparsity", "epsilon")]
    text = ["# Compile reuse: solver programs compiled by one prune, by number of blocks", "",
            f"Untrained decoder LMs, d={D}, {HEADS} heads, ReLU MLP, {SEQ}-token windows; each model in a fresh "
            f"process.  'sparsity': `prune(model, tokens, sparsity={sparsity}, refit=True)`; 'epsilon': "
            "`prune(model, tokens, epsilon=0.05)` after it in the same process (so its count is what the first "
            "did not already compile).  'list': `TinyLM` (blocks in a list); 'stacked': the same blocks built "
            "with `nnx.vmap` and applied with `nnx.scan` (parameters with a leading layer axis).", "",
            common.table(["model", "blocks", "tokens", "layers", "prune", "solver programs compiled", "s", "certified"],
                         rows), "",
            common.provenance(args, started)]
    out = common.out_dir(args)
    (out / "compile_reuse.md").write_text("\n".join(text) + "\n")
    (out / "compile_reuse.json").write_text(json.dumps(records, indent=1))
    print("\n".join(text))
    return records


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
