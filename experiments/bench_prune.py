"""Whole prunes, timed against the package's own baselines in one run on one machine.

What a user types, ``nettrim_jax.prune(model, x, sparsity=S, refit=True)`` (sparsity target,
epsilons searched per layer, cascade, defaults otherwise), against Wanda, SparseGPT and ALPS
(``nettrim_jax.baselines.prune_model``) given exactly Net-Trim's per-layer kernel counts and
the same calibration inputs.  For each: wall time (compiles included: the first prune of a
process pays them; ``--repeat`` times a second identical prune too, the steady state), and
the quality reached without fine-tuning (test accuracy, or held-out bits per character for
the language models).  Net-Trim's row also says how many layer solves ended certified, and
how many distinct solver programs were compiled (``solver.engine.solve``'s jit cache: a
12-block model should compile no more than a 2-block one of the same shapes).
A second table says where the time goes in each ReLU layer: the refit and l0 finish's
conjugate-gradient iterations (``LayerReport.refit_iterations``) against one iteration's
floor, a product with the layer's P x N rows and one with their transpose, timed alone.

Models (``--models``):

* ``lenet300``: LeNet-300-100 on MNIST, 4000 calibration rows, S = 0.9;
* ``lenet5``: LeNet-5 (6-16 conv, 120 hidden) on MNIST, 1000 calibration images, S = 0.9;
* ``resnet``: the BatchNorm ResNet of ``nettrim_jax.models`` (16 channels) on Fashion-MNIST,
  512 calibration images, S = 0.5;
* ``lm2``: TinyLM d=128, 4 heads, 2 blocks, ReLU MLP, on ``pydoc_data.topics`` (as
  ``experiments/lm.py``), 64 windows of 128 tokens (8192 rows), S = 0.5 and 0.9;
* ``lm12``: the same with 12 blocks (compile reuse), S = 0.5;
* ``--big`` (an accelerator): ``lenet300`` on all 55,000 training images, and a
  GPT-2-small-shaped TinyLM (d=768, 12 heads, 12 blocks, 128 windows of 128 tokens = 16k
  rows), S = 0.5.

    python experiments/bench_prune.py [--quick] [--data DIR] [--models ...] [--repeat] [--big]

Writes bench_prune.md / bench_prune.json into the results folder (rewritten after every
model, so a run stopped early keeps what it finished).
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
import warnings

import common
import jax
import jax.numpy as jnp
import numpy as np

BASELINES = ("wanda", "sparsegpt", "alps")
MODELS = ("lenet300", "lenet5", "resnet", "lm2", "lm12")


def _classifier_eval(model_or_net, x, y):
    import nets

    from nettrim_jax import training

    if isinstance(model_or_net, list):
        return nets.accuracy(model_or_net, x, y)
    return training.accuracy(model_or_net, x, y, batch_size=1000)


def setup_lenet(kind, quick, data, seed, n_cal, dataset="mnist"):
    """(model, calibration x, evaluate(model) -> float, metric name); ``kind`` "fc"
    (LeNet-300-100) or "lenet" (LeNet-5), trained on ``dataset`` ("mnist" | "fashion-mnist")."""
    import mnist

    cfg = mnist.config(quick)
    xtr, ytr, xte, yte = mnist.load(dataset, data, cfg["n_train"], cfg["n_test"])
    net = mnist.train_network(kind, cfg, xtr, ytr, seed)
    rng = np.random.default_rng(seed)
    cal = rng.choice(len(xtr), min(n_cal, len(xtr)), replace=False) if n_cal < len(xtr) else np.arange(len(xtr))
    xcal = jnp.asarray(mnist.as_input(kind, xtr[cal]))
    xte_in = mnist.as_input(kind, xte)
    return net, xcal, (lambda m: _classifier_eval(list(m), xte_in, yte)), "test accuracy"


def setup_resnet(quick, data, seed):
    import optax
    from flax import nnx

    from nettrim_jax.io.data import load_mnist
    from nettrim_jax.models import ResNet
    from nettrim_jax.training import train_classifier

    steps, channels, ncal, ntest = (60, 4, 48, 300) if quick else (4000, 16, 512, 10000)
    xtr, ytr = load_mnist("fashion-mnist", "train", root=data)
    xte, yte = load_mnist("fashion-mnist", "test", root=data)
    xtr, xte, yte = xtr[..., None], jnp.asarray(xte[..., None][:ntest]), jnp.asarray(yte[:ntest])
    model = ResNet(channels, 10, rngs=nnx.Rngs(seed))
    sched = optax.cosine_decay_schedule(3e-3, steps)
    train_classifier(model, xtr, ytr, steps=steps, batch_size=128, optimizer=optax.adam(sched), seed=seed)
    xcal = jnp.asarray(xtr[-ncal:])
    return model, xcal, (lambda m: _classifier_eval(m, xte, yte)), "test accuracy"


def setup_lm(quick, seed, *, d, heads, layers, n_cal, steps):
    import lm
    from flax import nnx

    from nettrim_jax.models import TinyLM

    seq = 32 if quick else 128
    text, vocab = lm.corpus()
    ids = np.asarray([vocab.index(c) for c in text], np.int32)
    cut = int(0.9 * len(ids))
    model = TinyLM(len(vocab), d, heads, seq, mlp="relu", layers=layers, rngs=nnx.Rngs(seed))
    lm.train(model, ids[:cut], seq, steps, 32, seed)
    rng = np.random.default_rng(seed + 1)
    held = [lm.windows(ids[cut:], seq, 32, rng) for _ in range(2 if quick else 8)]
    cal = jnp.asarray(lm.windows(ids[:cut], seq, n_cal, rng)[:, :-1])
    return model, cal, (lambda m: lm.bits_per_char(m, held)), "held-out bits/char"


def configs(quick: bool, big: bool) -> dict:
    """name -> (setup thunk args, sparsity targets)."""
    if quick:
        cfg = {
            "lenet300": dict(kind="fc", n_cal=100, targets=(0.9,)),
            "lenet5": dict(kind="lenet", n_cal=50, targets=(0.9,)),
            "resnet": dict(targets=(0.5,)),
            "lm2": dict(d=16, heads=2, layers=2, n_cal=8, steps=30, targets=(0.5,)),
            "lm12": dict(d=16, heads=2, layers=4, n_cal=8, steps=30, targets=(0.5,)),
        }
        if big:  # the same code paths, tiny
            cfg["lenet300_55k"] = dict(kind="fc", n_cal=500, targets=(0.9,))
            cfg["gpt2_small"] = dict(d=24, heads=2, layers=2, n_cal=8, steps=10, targets=(0.5,))
        return cfg
    cfg = {
        "lenet300": dict(kind="fc", n_cal=4000, targets=(0.9,)),
        "lenet5": dict(kind="lenet", n_cal=1000, targets=(0.9,)),
        "resnet": dict(targets=(0.5,)),
        "lm2": dict(d=128, heads=4, layers=2, n_cal=64, steps=1500, targets=(0.5, 0.9)),
        "lm12": dict(d=128, heads=4, layers=12, n_cal=64, steps=600, targets=(0.5,)),
    }
    if big:
        cfg["lenet300_55k"] = dict(kind="fc", n_cal=55_000, targets=(0.9,))
        cfg["gpt2_small"] = dict(d=768, heads=12, layers=12, n_cal=128, steps=200, targets=(0.5,))
    return cfg


def setup(name, c, args):
    if name.startswith("lenet"):
        return setup_lenet(c["kind"], args.quick, args.data, args.seed, c["n_cal"])
    if name == "resnet":
        return setup_resnet(args.quick, args.data, args.seed)
    return setup_lm(args.quick, args.seed, d=c["d"], heads=c["heads"], layers=c["layers"], n_cal=c["n_cal"],
                    steps=c["steps"])


class CompileLog(logging.Handler):
    """Counts the XLA compilations of Net-Trim's layer solver (``jax_log_compiles``: the
    programs named ``nettrim_layer_solve*`` in ``network.problems`` / ``network.targets``) and
    their seconds."""

    PATTERN = re.compile(r"Finished XLA compilation of jit\(nettrim_layer_solve\w*\) in ([0-9.]+) sec")

    def __init__(self):
        super().__init__()
        self.count, self.seconds = 0, 0.0

    def emit(self, record):
        m = self.PATTERN.search(record.getMessage())
        if m:
            self.count += 1
            self.seconds += float(m.group(1))


COMPILES = CompileLog()


def watch_compiles():
    jax.config.update("jax_log_compiles", True)
    for name in ("jax._src.dispatch", "jax._src.interpreters.pxla"):
        logger = logging.getLogger(name)
        logger.addHandler(COMPILES)
        logger.propagate = False  # the counting handler only; no log lines on the console


def solver_programs() -> int:
    """Net-Trim layer-solver programs compiled so far in this process."""
    return COMPILES.count


def timed(f):
    t = time.perf_counter()
    out = f()
    jax.block_until_ready(jax.tree.leaves(out))
    return out, time.perf_counter() - t


_PRODUCTS: dict = {}


def two_products_seconds(P: int, N: int, M: int) -> float:
    """Median wall seconds of X^T (X U) for X (P, N), U (N, M) in float32, compiled: one
    iteration's floor for a ReLU program's solver or refit CG (one product with the layer's
    rows X and one with X^T, for every unit at once)."""
    key = (P, N, M)
    if key not in _PRODUCTS:
        X, U = jnp.ones((P, N), jnp.float32), jnp.ones((N, M), jnp.float32)
        f = jax.jit(lambda X, U: X.T @ (X @ U))
        f(X, U).block_until_ready()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            f(X, U).block_until_ready()
            times.append(time.perf_counter() - t)
        _PRODUCTS[key] = float(np.median(times))
    return _PRODUCTS[key]


def where_time_goes(layers) -> list[dict]:
    """Per solved layer: its program's size, the l1 solve's iterations (the search's last
    solve), the refit / l0 finish's CG iterations, the two-product floor of one iteration
    (``two_products_seconds``; measured for ReLU layers only: a linear layer's refit with P >= N
    runs on X^T X instead) and the layer's wall seconds (search, finish and measurements)."""
    out = []
    for l in layers:
        two = two_products_seconds(int(l.rows), int(l.N), int(l.M)) if l.activation == "relu" else 0.0
        out.append(dict(name=l.name, program=l.activation, rows=int(l.rows), N=int(l.N), M=int(l.M),
                        iterations=int(l.iterations), refit_iterations=int(l.refit_iterations),
                        two_products_seconds=two, seconds=float(l.seconds)))
    return out


def bench_model(name, c, args, log=print):
    import nets

    import nettrim_jax as nt
    from nettrim_jax import baselines

    t0 = time.time()
    model, xcal, evaluate, metric = setup(name, c, args)
    train_s = time.time() - t0
    dense = evaluate(model)
    sizes = nets.kernel_sizes(model, xcal)
    log(f"{name}: set up in {train_s:.0f} s; dense {metric} {dense:.4f}; {sum(sizes)} kernel weights, "
        f"{xcal.shape[0]} calibration inputs")
    rows = []
    for s in c["targets"]:
        before, before_s = solver_programs(), COMPILES.seconds
        res, sec = timed(lambda s=s: nt.prune(model, xcal, sparsity=s, refit=True, progress=False))
        compiled, compile_s = solver_programs() - before, COMPILES.seconds - before_s
        again = None
        if args.repeat and sec < args.repeat_under:
            _, again = timed(lambda s=s: nt.prune(model, xcal, sparsity=s, refit=True, progress=False))
        keeps = nets.kernel_counts(res.model, xcal)
        layers = [l for l in res.report.layers if l.activation != "skipped"]
        row = dict(model=name, target=s, sparsity=1 - sum(keeps) / sum(sizes), keeps=keeps,
                   rows=int(max((l.rows for l in layers), default=0)),
                   nettrim=dict(seconds=sec, steady_seconds=again, quality=evaluate(res.model),
                                converged=sum(bool(l.converged) for l in layers), layers=len(layers),
                                iterations=[int(l.iterations) for l in layers], solver_programs=compiled,
                                solver_compile_seconds=compile_s, joint=res.report.joint or None,
                                where=where_time_goes(layers)))
        log(f"  S={s}: nettrim {sec:.1f} s" + (f" (again {again:.1f} s)" if again is not None else "")
            + f", {row['nettrim']['converged']}/{len(layers)} converged, {compiled} solver programs compiled "
            f"({compile_s:.1f} s), "
            f"{metric} {row['nettrim']['quality']:.4f}, sparsity {100 * row['sparsity']:.2f}%")
        for m in args.baselines:
            (pruned, _), bsec = timed(lambda m=m, k=keeps: baselines.prune_model(model, xcal, k, m))
            again = None
            if args.repeat and bsec < args.repeat_under:
                _, again = timed(lambda m=m, k=keeps: baselines.prune_model(model, xcal, k, m))
            row[m] = dict(seconds=bsec, steady_seconds=again, quality=evaluate(pruned))
            log(f"    {m}: {bsec:.1f} s" + (f" (again {again:.1f} s)" if again is not None else "")
                + f", {metric} {row[m]['quality']:.4f}")
        rows.append(row)
    return dict(model=name, metric=metric, dense=dense, setup_seconds=train_s, kernel_weights=sum(sizes),
                calibration=int(xcal.shape[0]), runs=rows)


def report(records, args, started, out):
    device = jax.devices()[0]
    lines = ["# Whole prunes against the baselines, timed in one run", "",
             f"Device: {device.platform} ({device.device_kind}), jax {jax.__version__}.  "
             "Net-Trim: `prune(model, x, sparsity=S, refit=True)`, defaults otherwise (the refit ends with "
             "the l0 finish, then `joint_refit=\"auto\"`: the joint refit where the output error is >= 0.005; "
             "its seconds are inside Net-Trim's).  Baselines: "
             "`baselines.prune_model` at Net-Trim's per-layer counts.  Seconds include compilation "
             "(first call in the process)" + ("; 'again' is a second identical call." if args.repeat else ".")
             + "  Quality without fine-tuning: accuracy (higher is better) or bits/char (lower is better).", ""]
    head = ["model", "S", "sparsity %", "Net-Trim s", "joint refit s (iterations)", "certified", "solver compiles", "Net-Trim",
            *(f"{m} s" for m in args.baselines), *args.baselines, "Net-Trim s / ALPS s"]
    body = []
    for rec in records:
        if "error" in rec:
            body.append([rec["model"], "-", "-", "failed", "-", "-", "-", rec["error"][:60]] + ["-"] * (2 * len(args.baselines) + 1))
            continue
        for r in rec["runs"]:
            nt_ = r["nettrim"]
            sec = lambda d: (f"{d['seconds']:.1f}" + (f" ({d['steady_seconds']:.1f})" if d.get("steady_seconds") else ""))  # noqa: E731
            ratio = f"{nt_['seconds'] / r['alps']['seconds']:.1f}" if "alps" in r else "-"
            if "alps" in r and nt_.get("steady_seconds") and r["alps"].get("steady_seconds"):
                ratio += f" ({nt_['steady_seconds'] / r['alps']['steady_seconds']:.1f})"
            j = nt_.get("joint")
            joint = "-" if not j else f"{j['seconds']:.1f} ({j['iterations']}" + (", small error)" if j["stopped"] == "small error" else ")")
            body.append([rec["model"], r["target"], f"{100 * r['sparsity']:.2f}", sec(nt_), joint,
                         f"{nt_['converged']}/{nt_['layers']}",
                         f"{nt_['solver_programs']} ({nt_['solver_compile_seconds']:.0f} s)", f"{nt_['quality']:.4f}",
                         *(sec(r[m]) for m in args.baselines), *(f"{r[m]['quality']:.4f}" for m in args.baselines),
                         ratio])
    lines += [common.table(head, body), ""]
    lines += _where_table(records)
    for rec in records:
        if "error" not in rec:
            lines.append(f"- {rec['model']}: dense {rec['metric']} {rec['dense']:.4f}; {rec['kernel_weights']} kernel "
                         f"weights; {rec['calibration']} calibration inputs; set-up (training) {rec['setup_seconds']:.0f} s.")
    kept = sorted({(r["model"], r["kept_from"]) for r in records if "kept_from" in r})
    if kept:
        lines += ["", "Kept from an earlier run of this script (not rerun here, so not timed beside the rows above): "
                  + "; ".join(f"{m} ({when})" for m, when in kept) + "."]
    lines += ["", common.provenance(args, started)]
    (out / "bench_prune.md").write_text("\n".join(lines) + "\n")
    written = time.strftime("%Y-%m-%d", time.gmtime())
    (out / "bench_prune.json").write_text(json.dumps(dict(device=f"{device.platform} {device.device_kind}",
                                                          written=written, records=records), indent=1, default=float))


def _where_table(records) -> list[str]:
    """Where Net-Trim's time goes, per ReLU layer (the layers whose P x M state sets the cost)."""
    body = []
    for rec in records:
        for r in rec.get("runs", []):
            for w in r["nettrim"].get("where", []):
                if w["program"] != "relu":
                    continue
                floor = w["refit_iterations"] * w["two_products_seconds"]
                body.append([rec["model"], r["target"], w["name"], f"{w['rows']} x {w['N']} x {w['M']}", w["iterations"],
                             w["refit_iterations"], f"{1e3 * w['two_products_seconds']:.1f}", f"{floor:.1f}",
                             f"{w['seconds']:.1f}"])
    if not body:
        return []
    return ["Where the time goes in the ReLU layers (first call): the refit and l0 finish run conjugate-gradient "
            "iterations, each one product with the layer's P x N rows and one with their transpose for all M units "
            "(`LayerReport.refit_iterations`); 'two products' is that pair's time measured alone on this machine "
            "(float32, compiled, median of 5), so CG x two products is the finish's floor.  The layer's seconds "
            "also hold the epsilon search's l1 solves (its last solve's iterations shown).  ALPS's iterations run on "
            "the N x N Gram matrix instead, a factor of about P / N less work each.", "",
            common.table(["model", "S", "layer", "P x N x M", "l1 iterations", "refit CG", "two products ms",
                          "CG floor s", "layer s"], body), ""]


def main(argv=None):
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder with mnist/ and fashion-mnist/ (default $NETTRIM_DATA)")
    ap.add_argument("--models", nargs="+", default=None, help=f"any of {MODELS} (and lenet300_55k gpt2_small with --big)")
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    ap.add_argument("--repeat", action="store_true", help="time a second identical call (after compilation)")
    ap.add_argument("--repeat-under", type=float, default=60.0,
                    help="with --repeat: only for calls whose first run took less than this (seconds)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the results file's records of models this run does not run (the table says which)")
    ap.add_argument("--big", action="store_true", help="add the accelerator sizes (55k-row LeNet, GPT-2-small shape)")
    args = ap.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    out = common.out_dir(args)
    watch_compiles()
    cfg = configs(args.quick, args.big)
    names = args.models or list(cfg)
    kept = []
    if args.merge and (out / "bench_prune.json").exists():
        old = json.loads((out / "bench_prune.json").read_text())
        kept = [dict(r, kept_from=r.get("kept_from", old.get("written", "an earlier run")))
                for r in old["records"] if r["model"] not in names]
    records = []
    for name in names:
        try:
            records.append(bench_model(name, cfg[name], args))
        except Exception as e:  # keep the other models' figures; the table says which failed
            traceback.print_exc()
            records.append(dict(model=name, error=f"{type(e).__name__}: {e}"))
        report(kept + records, args, started, out)
    print((out / "bench_prune.md").read_text())
    return records


if __name__ == "__main__":
    main()
