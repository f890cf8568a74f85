"""An OPT-style character language model, every projection pruned, no fine-tuning.

Corpus: the Python Language Reference's topic texts that CPython ships in
``pydoc_data.topics`` (English prose with code examples, about 0.46 M characters; the exact
text is the running interpreter's, its version is recorded): the first 90% of the characters
for training, the last 10% held out.  Model: ``nettrim_jax.models.TinyLM``
(token + position embeddings, pre-LayerNorm blocks with causal ``nnx.MultiHeadAttention``
and a 4d MLP, final LayerNorm, Linear head) with a ReLU MLP, and the same with a GELU MLP.

Net-Trim (``nettrim_jax.prune``, cascade, ``sparsity=S``, plain and +refit) prunes every
projection: q/k/v/out of attention (``LinearGeneral``), fc1, fc2 and the head.  In the ReLU
model fc1 gets the ReLU program (a ReLU follows it); every other projection, and fc1 of the
GELU model, gets the linear program (the report says why).  Magnitude, Wanda, SparseGPT
and ALPS get exactly Net-Trim's per-layer counts (``baselines.prune_model``).  Metric:
held-out bits per character (lower is better).

    python experiments/lm.py [--quick] [--steps N]
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import jax.numpy as jnp
import nets
import numpy as np
import optax
from common import out_dir, parser, provenance, quiet_solver_warnings, table
from flax import nnx

import nettrim_jax as nt
from nettrim_jax import baselines
from nettrim_jax.models import TinyLM
from nettrim_jax.network.adapters import adapt

BASELINES = ("magnitude", "wanda", "sparsegpt", "alps")


def corpus():
    """(text, vocabulary): the topics in key order, joined."""
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return text, sorted(set(text))


def windows(ids, seq, count, rng):
    """``count`` random windows of ``seq + 1`` tokens."""
    start = rng.integers(0, len(ids) - seq - 1, count)
    return np.stack([ids[s:s + seq + 1] for s in start])


def bits_per_char(model, batches) -> float:
    total, n = 0.0, 0
    for b in batches:
        logits = model(jnp.asarray(b[:, :-1]))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(b[:, 1:]))
        total, n = total + float(jnp.sum(ce)), n + ce.size
    return total / n / np.log(2)


def train(model, ids, seq, steps, batch, seed):
    rng = np.random.default_rng(seed)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.cosine_decay_schedule(3e-3, steps), 0.01))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, b):
        def loss(m):
            logits = m(b[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    for _ in range(steps):
        step(model, opt, jnp.asarray(windows(ids, seq, batch, rng)))


def run_model(mlp, cfg, ids_tr, ids_te, vocab, args, done=lambda partial: None):
    model = TinyLM(len(vocab), cfg["d"], cfg["heads"], cfg["seq"], mlp=mlp, layers=cfg["layers"],
                   rngs=nnx.Rngs(args.seed))
    t0 = time.time()
    train(model, ids_tr, cfg["seq"], cfg["steps"], 64, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    held = [windows(ids_te, cfg["seq"], 64, rng) for _ in range(cfg["eval_batches"])]
    cal = jnp.asarray(windows(ids_tr, cfg["seq"], cfg["n_cal"], rng)[:, :-1])
    dense = bits_per_char(model, held)
    print(f"{mlp}: trained in {time.time() - t0:.0f} s, {dense:.3f} bits/char", flush=True)
    sizes = nets.kernel_sizes(model, cal)
    names = list(adapt(model, cal).names)
    recs = []
    for refit in cfg["refits"]:
        for s in cfg["targets"]:
            t1 = time.time()
            res = nt.prune(model, cal, sparsity=s, refit=refit, finish=None, joint_refit=0, progress=False, max_iters=cfg["iters"])
            keeps = nets.kernel_counts(res.model, cal)
            rec = {"mlp": mlp, "target": s, "refit": refit, "sparsity": 1 - sum(keeps) / sum(sizes),
                   "seconds": time.time() - t1, "nettrim": bits_per_char(res.model, held),
                   "programs": {l.name: l.activation for l in res.report.layers}}
            for m in cfg["methods"]:
                pruned, _ = baselines.prune_model(model, cal, keeps, m)
                rec[m] = bits_per_char(pruned, held)
            recs.append(rec)
            print(f"{mlp} S={s} refit={refit}: {rec['sparsity']:.3f} nettrim {rec['nettrim']:.3f} "
                  + " ".join(f"{m} {rec[m]:.3f}" for m in cfg["methods"]), flush=True)
            done({"mlp": mlp, "dense": dense, "runs": recs, "layers": names})
    return {"mlp": mlp, "dense": dense, "train_seconds": time.time() - t0, "runs": recs,
            "layers": names}


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--targets", nargs="+", type=float, default=None, help="sparsity targets (default 0.5 0.7 0.9)")
    p.add_argument("--refit-only", action="store_true", help="Net-Trim + refit only (no plain runs)")
    p.add_argument("--mlps", nargs="+", choices=["relu", "gelu"], default=None)
    args = p.parse_args(argv)
    started = time.time()
    quiet_solver_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    q = args.quick
    cfg = dict(d=16, heads=2, seq=32, layers=1, steps=40, n_cal=8, eval_batches=2, targets=(0.5,), refits=(False,),
               methods=("magnitude", "wanda"), iters=300) if q else \
        dict(d=64, heads=4, seq=64, layers=2, steps=3000, n_cal=64, eval_batches=16, targets=(0.5, 0.7, 0.9),
             refits=(False, True), methods=BASELINES, iters=3000)
    if args.steps:
        cfg["steps"] = args.steps
    if args.targets:
        cfg["targets"] = tuple(args.targets)
    if args.refit_only:
        cfg["refits"] = (True,)
    text, vocab = corpus()
    ids = np.asarray([vocab.index(c) for c in text], np.int32)
    cut = int(0.9 * len(ids))
    ids_tr, ids_te = ids[:cut], ids[cut:]
    mlps = tuple(args.mlps) if args.mlps else (("relu",) if q else ("relu", "gelu"))
    # (--quick leaves the GELU model out: its linear-program path is tested in tests/test_prune_models.py)
    models: list = []

    def write(partial=None):
        """The results so far (rewritten after every run, so a long sweep can be stopped)."""
        shown = models + ([partial] if partial is not None else [])
        report(shown, cfg, text, vocab, args, started, out_dir(args))

    for mlp in mlps:
        models.append(run_model(mlp, cfg, ids_tr, ids_te, vocab, args, done=write))
    write()
    return models


def report(models, cfg, text, vocab, args, started, out):
    text_out = ["# OPT-style character LM: every projection pruned, held-out bits per character", "",
                f"Corpus: CPython {sys.version.split()[0]}'s `pydoc_data.topics` (the Language Reference topics), "
                f"{len(text)} characters, vocabulary {len(vocab)}; first 90% training, last 10% held out.  "
                f"TinyLM d={cfg['d']}, {cfg['heads']} heads, {cfg['layers']} blocks, context {cfg['seq']}, "
                f"{cfg['steps']} AdamW steps of 64 windows.  Calibration: {cfg['n_cal']} training windows "
                f"({cfg['n_cal'] * cfg['seq']} token rows).  Held out: {cfg['eval_batches'] * 64} windows.  "
                "No fine-tuning.  Bits per character, lower is better; bold: best of the row.", ""]
    for m in models:
        progs = m["runs"][0]["programs"]
        relu = [n for n, a in progs.items() if a == "relu"]
        text_out += [f"## {m['mlp'].upper()} MLP (dense: {m['dense']:.3f} bits/char)", "",
                     f"Pruned: {len(progs)} projections ({', '.join(m['layers'])}); ReLU program on "
                     f"{', '.join(relu) if relu else 'none'}, linear program on the rest.", ""]
        rows = []
        for r in m["runs"]:
            vals = {k: r[k] for k in ("nettrim", *cfg["methods"])}
            best = min(vals.values())
            rows.append(["+refit" if r["refit"] else "plain", r["target"], f"{100 * r['sparsity']:.1f}",
                         f"{r['seconds']:.0f}",
                         *((f"**{v:.3f}**" if v == best else f"{v:.3f}") for v in vals.values())])
        text_out += [table(["Net-Trim", "target", "sparsity %", "seconds", "nettrim", *cfg["methods"]], rows), ""]
    text_out.append(provenance(args, started))
    (out / "lm.md").write_text("\n".join(text_out) + "\n")
    (out / "lm.json").write_text(json.dumps({"config": {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in cfg.items()}, "models": models}, indent=1))


if __name__ == "__main__":
    main()
