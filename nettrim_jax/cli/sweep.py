"""``nettrim sweep``: a checkpoint's (or, with ``--model/--params``, a Flax model's) frontier (accuracy, or the calibration misfit, against
sparsity) over an epsilon or sparsity list and seeds, through ``nettrim_jax.sweep``.

Writes OUT/sweep.md (the table), OUT/sweep.json (one row per point, the options and the run)
and OUT/sweep.png (the frontier), each atomically; no pruned model is stored (prune the point
you pick with ``nettrim prune``)."""

from __future__ import annotations

import time
from pathlib import Path

from nettrim_jax.cli.calibration import UsageError, load_calibration
from nettrim_jax.cli.outputs import EXIT_COLLAPSED, EXIT_OK, check_writable

SWEEP_JSON, SWEEP_MD, SWEEP_PNG = "sweep.json", "sweep.md", "sweep.png"
SWEEP_FORMAT, SWEEP_VERSION = "nettrim-sweep", 1


def add_parser(sub, common) -> None:
    s = sub.add_parser(
        "sweep",
        parents=[common],
        help="prune a saved model at several epsilons or sparsities (a frontier)",
        description="Prune a nettrim checkpoint at every point of an epsilon or sparsity list "
        "(and every seed); writes OUT/sweep.md, OUT/sweep.json and OUT/sweep.png "
        "(accuracy, or the output discrepancy without labels, against sparsity).",
    )
    s.add_argument(
        "checkpoint", metavar="CHECKPOINT", nargs="?", default=None, help="checkpoint folder (model.json + weights)"
    )
    s.add_argument(
        "--model",
        metavar="PKG.MODULE:FACTORY",
        default=None,
        help="your own Flax model instead of CHECKPOINT (as `nettrim prune --model`), its state from --params",
    )
    s.add_argument("--params", metavar="DIR", default=None, help="with --model: an Orbax checkpoint of its state")
    s.add_argument("--data", required=True, help=".npy / .npz file or a folder of MNIST IDX files")
    s.add_argument("--key", help="array name in a .npz file holding the inputs")
    s.add_argument("--labels", help=".npy file of integer labels (for the accuracy column)")
    s.add_argument("--split", choices=("train", "test"), default="train", help="IDX split (default train)")
    s.add_argument("--samples", type=int, help="use the first N samples only")
    s.add_argument("--epsilon", type=_floats, help="comma-separated relative epsilons, e.g. 0.02,0.05,0.1")
    s.add_argument("--sparsity", type=_floats, help="comma-separated sparsity targets in [0, 1), e.g. 0.5,0.8,0.9")
    s.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    s.add_argument(
        "--draw",
        type=int,
        default=None,
        metavar="N",
        help="each seed prunes on N calibration samples drawn at random (default: all, the same for every seed)",
    )
    s.add_argument("--scheme", choices=("cascade", "parallel"), default="cascade")
    s.add_argument("--gamma", type=float, default=1.1, help="cascade inflation (>= 1; default 1.1)")
    s.add_argument("--refit", action="store_true", help="refit each layer's kept weights on its support")
    s.add_argument("--max-iters", type=int, default=None, help="solver iteration cap per layer")
    s.add_argument(
        "--mode",
        choices=("auto", "batched", "sequential"),
        default="auto",
        help="batched: a chunk of points solved together (vmapped layer solves); "
        "auto (default): batched on an accelerator, sequential on a CPU",
    )
    s.add_argument("--batch", type=int, default=None, help="points per batched chunk (default: what fits in memory)")
    s.add_argument("--eval-data", help="labelled .npz / IDX folder for the accuracy column (test split)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--force", action="store_true", help="overwrite a sweep already in OUT")
    s.add_argument("--no-plot", action="store_true", help="skip the figure")


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"not a comma-separated list of numbers: {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"not a comma-separated list of integers: {text!r}") from None


def _check(args, out: Path) -> None:
    if (args.epsilon is None) == (args.sparsity is None):
        raise UsageError("give --epsilon or --sparsity (a comma-separated list), not both")
    for flag, value, low in (
        ("--max-iters", args.max_iters, 1),
        ("--samples", args.samples, 1),
        ("--batch", args.batch, 1),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not args.gamma >= 1:
        raise UsageError(f"--gamma must be >= 1 (the original weights must stay feasible), got {args.gamma}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if (out / SWEEP_JSON).exists() and not args.force:
        raise UsageError(f"{out}: already holds a sweep; pass --force to overwrite or pick another --out")


def cmd_sweep(args, console) -> int:
    from nettrim_jax.cli.commands import accuracy
    from nettrim_jax.io.atomic import atomic_write_json, atomic_write_text
    from nettrim_jax.io.convert import from_network, to_network
    from nettrim_jax.network.sweep import sweep

    out = Path(args.out)
    _check(args, out)
    check_writable(out)
    model, x, y, xe, ye = _load(args)
    if args.model:
        from nettrim_jax.cli.usermodel import accuracy_of

        target, source = model, args.model
        evaluate = None if ye is None else (lambda m: _user_accuracy(accuracy_of, m, model, xe, ye))
        dense_acc = accuracy_of(model, xe, ye)
    else:
        target, source = to_network(model.layers), str(args.checkpoint)
        evaluate = None if ye is None else (lambda net: accuracy(from_network(net), xe, ye))
        dense_acc = accuracy(model.layers, xe, ye)
    kind = "epsilon" if args.epsilon is not None else "sparsity"
    values = args.epsilon if args.epsilon is not None else args.sparsity
    console.note(
        f"sweeping {len(values)} {kind} point(s) x {len(args.seeds)} seed(s) of {source} "
        f"on {x.shape[0] if args.draw is None else args.draw} samples ({args.scheme})"
    )
    options = {"scheme": args.scheme, "gamma": args.gamma, "refit": args.refit}
    if args.max_iters is not None:
        options["max_iters"] = args.max_iters
    t0 = time.perf_counter()
    points = sweep(
        target,
        x,
        seeds=args.seeds,
        samples=args.draw,
        evaluate=evaluate,
        batch=args.batch,
        mode=args.mode,
        progress=not args.quiet,
        **{kind: values},
        **options,
    )
    rows = [p.row() for p in points]
    doc = {
        "format": SWEEP_FORMAT,
        "version": SWEEP_VERSION,
        "points": rows,
        "options": {**options, kind: values, "seeds": args.seeds, "draw": args.draw, "mode": args.mode},
        "run": {
            "command": "sweep",
            "checkpoint": source,
            "data": str(args.data),
            "samples": int(x.shape[0]),
            "value": None if ye is None else "accuracy",
            "accuracy_on": None if ye is None else (args.eval_data or "calibration data"),
            "accuracy_dense": dense_acc,
            "seconds": time.perf_counter() - t0,
        },
    }
    md = render_sweep(doc)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_MD, md)
    if not args.no_plot:
        plot_sweep(doc, out / SWEEP_PNG)
    atomic_write_json(out / SWEEP_JSON, doc)  # last: it marks the sweep finished
    console.say(md)
    print(f"sweep: {out / SWEEP_MD}, {out / SWEEP_JSON}" + ("" if args.no_plot else f", {out / SWEEP_PNG}"))
    failed = sum(r["error"] is not None for r in rows)
    unconverged = sum(r["error"] is None and r["converged"] < r["solves"] for r in rows)
    print(f"done: {len(rows)} point(s), {failed} collapsed, {unconverged} with an uncertified solve")
    return EXIT_COLLAPSED if failed == len(rows) else EXIT_OK


def _load(args):
    """(model, x, y, eval x, eval y): a model.json checkpoint, or --model/--params."""
    from nettrim_jax.io import checkpoint as ck

    if args.model:
        from nettrim_jax.cli.usermodel import load_factory, restore

        if not args.params:
            raise UsageError("--model needs --params DIR (an Orbax checkpoint of the model's state)")
        if args.checkpoint:
            raise UsageError("pass either CHECKPOINT (model.json) or --model/--params, not both")
        model, shape = restore(load_factory(args.model), args.params), None
    elif not args.checkpoint:
        raise UsageError("pass a CHECKPOINT folder (model.json) or --model pkg.module:factory --params DIR")
    else:
        model = ck.load(args.checkpoint)
        shape = model.input_shape
    x, y = load_calibration(args.data, shape, key=args.key, labels=args.labels, split=args.split, samples=args.samples)
    if not args.eval_data:
        return model, x, y, x, y
    xe, ye = load_calibration(args.eval_data, shape, key=args.key, split="test")
    if ye is None:
        raise UsageError(f"{args.eval_data}: no labels to measure accuracy with")
    return model, x, y, xe, ye


def _user_accuracy(accuracy, pruned, model, x, y):
    """A --model point's accuracy (a Linen point holds only its variables)."""
    from flax import nnx

    return accuracy(pruned if isinstance(pruned, nnx.Module) else (model[0], pruned), x, y)


def render_sweep(doc: dict) -> str:
    """The sweep's markdown table: one row per point."""
    run = doc["run"]
    value = run.get("value")
    asked = "epsilon" if doc["points"] and doc["points"][0]["epsilon"] is not None else "sparsity_asked"
    head = f"| {asked.replace('_', ' ')} | seed | sparsity | nonzeros | output discrepancy | certified | "
    head += f"{value} | mode | s |" if value else "mode | s |"
    lines = [f"# Net-Trim sweep of {run['checkpoint']}", ""]
    if run.get("accuracy_dense") is not None:
        lines += [f"Dense accuracy ({run['accuracy_on']}): {run['accuracy_dense']:.4f}.", ""]
    lines += [head, "|" + "---|" * head.count(" |")]

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in doc["points"]:
        if r["error"] is not None:
            cells = [fmt(r[asked], "g"), str(r["seed"]), "collapsed", "", "", ""]
            cells += [""] if value else []
            cells += [r["mode"], fmt(r["seconds"], ".1f")]
        else:
            cells = [
                fmt(r[asked], "g"),
                str(r["seed"]),
                fmt(r["sparsity"], ".4f"),
                f"{r['nnz_after']} / {r['nnz_before']}",
                fmt(r["output_discrepancy"], ".4f"),
                f"{r['converged']}/{r['solves']}",
            ]
            cells += [fmt(r["value"], ".4f")] if value else []
            cells += [r["mode"], fmt(r["seconds"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(doc: dict, png: Path) -> Path:
    """Accuracy (or the output discrepancy) against the sparsity reached, one marker per
    point; atomic write."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install matplotlib (or pass --no-plot)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from nettrim_jax.io.atomic import atomic_open

    ok = [r for r in doc["points"] if r["error"] is None]
    value = doc["run"].get("value")
    key = "value" if value else "output_discrepancy"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for seed in sorted({r["seed"] for r in ok}):
        pts = sorted((r["sparsity"], r[key]) for r in ok if r["seed"] == seed)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"seed {seed}")
    if value and doc["run"].get("accuracy_dense") is not None:
        ax.axhline(doc["run"]["accuracy_dense"], color="gray", ls=":", label="dense")
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel(value or "output discrepancy ||y_pruned - y|| / ||y||")
    ax.set_title(f"Net-Trim ({doc['options']['scheme']}) frontier")
    ax.legend()
    fig.tight_layout()
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return png
