"""The ``nettrim`` subcommands: load, call ``nettrim_jax.prune``, write, print.

An OUT folder holds ``model/`` (the pruned checkpoint), ``report.md`` and ``report.json``
(written last: it marks the run finished) and, while a run is unfinished, ``partial.state``
(``io.state``: the finished layers, for ``--resume``).  ``report.json`` is
``PruneReport.to_dict()`` plus ``format``, ``version`` and a ``run`` block (command, model,
data, samples, accuracy before and after).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from nettrim_jax.cli.calibration import UsageError, load_calibration

MODEL_DIR = "model"  # OUT/model: the pruned checkpoint
PARTIAL = "partial.state"  # OUT/partial.state: finished layers, for --resume
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
REPORT_FORMAT, REPORT_VERSION = "nettrim-report", 2
EXIT_OK, EXIT_NOT_CONVERGED = 0, 3


def accuracy(layers, x, y) -> float | None:
    """Top-1 accuracy of checkpoint layers on (x, y); None without labels."""
    if y is None:
        return None
    from nettrim_jax.io.convert import apply

    return float(np.mean(np.argmax(apply(layers, x), -1) == y))


def solver_options(args) -> dict:
    return {} if getattr(args, "max_iters", None) is None else {"max_iters": args.max_iters}


def prune_options(args) -> dict:
    """``nettrim prune``'s options as ``nettrim_jax.prune`` keywords (with ``--sparsity`` and
    no ``--epsilon``, epsilon 0.05 only seeds the search)."""
    return {
        "scheme": args.scheme,
        "epsilon": 0.05 if args.epsilon is None else args.epsilon,
        "gamma": args.gamma,
        "sparsity": args.sparsity,
        "allocation": args.allocation,
        "structure": args.structure,
        "pattern": args.pattern,
        "relu_budget": args.relu_budget,
        "reweight": args.reweight,
        "solver": args.solver or "admm",
        "max_patches": args.max_patches,
        "refit": args.refit,
        "output_epsilon": args.output_epsilon,
        "progress": not args.quiet,
        **solver_options(args),
    }


# ----------------------------------------------------------------------------- report


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: corrupt report ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("layers"), list):
        raise UsageError(f"{path}: not a nettrim report (no 'layers' list)")
    return report


def render(report: dict) -> str:
    """Markdown of a stored report (the library's renderer, with the run's accuracy)."""
    from nettrim_jax.network.report import PruneReport

    run = report.get("run") or {}
    notes = []
    if run.get("accuracy_before") is not None:
        notes.append(
            f"Accuracy ({run.get('accuracy_on', 'evaluation set')}): "
            f"{run['accuracy_before']:.4f} before, {run['accuracy_after']:.4f} after."
        )
    return PruneReport.from_dict(report).to_markdown(run.get("title"), notes)


def cmd_report(args, console) -> int:
    out = Path(args.out)
    rj = out / REPORT_JSON
    if not out.is_dir():
        raise UsageError(f"{out}: no such folder" if not out.exists() else f"{out}: not a folder")
    if not rj.is_file():
        hint = " (an unfinished run: resume it with `nettrim prune ... --resume`)" if (out / PARTIAL).is_file() else ""
        raise UsageError(f"{out}: no {REPORT_JSON}{hint}")
    report = read_report(rj)
    if args.json:
        print(json.dumps(report, indent=2))
    elif (out / REPORT_MD).is_file():
        print((out / REPORT_MD).read_text("utf-8"), end="")
    else:
        print(render(report), end="")
    if args.plot is not None:
        from nettrim_jax.cli.plot import plot_report

        png = Path(args.plot) if args.plot else out / REPORT_PNG
        plot_report(report, png)
        print(f"plot: {png}")
    return EXIT_OK


def _finish(out: Path, layers, input_shape, meta, report: dict, console, plot=False, shown=None) -> None:
    """Write OUT/model, OUT/report.md, OUT/report.json (last: it marks the run finished);
    the printed paths name ``shown`` instead of ``out`` when given (a staged folder)."""
    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.io.atomic import atomic_write_json, atomic_write_text

    ck.save(out / MODEL_DIR, layers, input_shape, meta, compress=True)
    stored = sum(p.stat().st_size for p in (out / MODEL_DIR).glob("weights-*.safetensors"))
    dense = sum(
        int(np.asarray(layer[k]).nbytes) for layer in layers for k in ("kernel", "bias") if layer.get(k) is not None
    )
    report.setdefault("run", {}).update(weights_bytes=stored, dense_bytes=dense)
    md = render(report) + f"Pruned weights file: {stored} bytes ({dense} bytes dense).\n"
    atomic_write_text(out / REPORT_MD, md)
    if plot:
        from nettrim_jax.cli.plot import plot_report

        plot_report(report, out / REPORT_PNG)
    atomic_write_json(out / REPORT_JSON, report)
    (out / PARTIAL).unlink(missing_ok=True)
    console.say(md)
    out = out if shown is None else Path(shown)
    print(f"pruned checkpoint: {out / MODEL_DIR} ({stored / 1024:.1f} KiB; {dense / 1024:.1f} KiB dense)")
    print(f"report: {out / REPORT_MD}, {out / REPORT_JSON}" + (f", {out / REPORT_PNG}" if plot else ""))
    print(_final_line(report))


def _final_line(report: dict) -> str:
    """The last line printed: the sparsity reached and how many solves were certified."""
    from nettrim_jax.network.report import PruneReport, converged_summary

    rep = PruneReport.from_dict(report)
    kept = rep.nnz_after / max(1, rep.nnz_before)
    return f"done: {100 * (1 - kept):.2f}% of the pruned layers' weights removed; {converged_summary(rep)}"


def _report_dict(result, run: dict) -> dict:
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, **result.report.to_dict(), "run": run}


# ----------------------------------------------------------------------------- prune


def _fingerprint(args, ckpt_sha: str, x) -> dict:
    """What a resumed run must share with the interrupted one."""
    return {
        "checkpoint_sha256": ckpt_sha,
        "data_sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
        "scheme": args.scheme,
        "epsilon": args.epsilon,
        "gamma": args.gamma,
        "solver": args.solver,
        "max_iters": args.max_iters,
        "max_patches": args.max_patches,
        "refit": bool(args.refit),
        "output_epsilon": args.output_epsilon,
        "sparsity": args.sparsity,
        "allocation": args.allocation,
        "structure": args.structure,
        "pattern": args.pattern,
        "relu_budget": args.relu_budget,
        "reweight": args.reweight,
    }


def _check_args(args) -> None:
    for flag, value, low in (
        ("--max-iters", args.max_iters, 1),
        ("--max-patches", args.max_patches, 1),
        ("--samples", args.samples, 1),
        ("--reweight", args.reweight, 0),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if args.epsilon is None and args.sparsity is None:
        raise UsageError("give --epsilon or --sparsity")
    if args.epsilon is not None and args.sparsity is not None:
        raise UsageError("give --epsilon or --sparsity, not both (with --sparsity each layer's epsilon is searched)")
    if args.epsilon is not None and not args.epsilon >= 0:
        raise UsageError(f"--epsilon must be >= 0, got {args.epsilon}")
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1) (the fraction of weights removed), got {args.sparsity}")
    if not args.gamma >= 1:
        raise UsageError(f"--gamma must be >= 1 (the original weights must stay feasible), got {args.gamma}")
    if args.resume and args.force:
        raise UsageError("--resume and --force exclude each other")
    if args.output_epsilon is not None and not args.output_epsilon >= 0:
        raise UsageError(f"--output-epsilon must be >= 0, got {args.output_epsilon}")
    if args.output_epsilon is not None and args.scheme != "cascade":
        raise UsageError("--output-epsilon applies to --scheme cascade only")
    if args.resume and args.scheme != "cascade":
        raise UsageError("--resume applies to --scheme cascade only (parallel layers are independent; rerun)")


def _check_out(out: Path, args) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if args.force or not out.exists():
        return
    if (out / REPORT_JSON).exists():
        raise UsageError(f"{out}: already holds a finished result; pass --force to overwrite or pick another --out")
    if (out / PARTIAL).exists() and not args.resume:
        raise UsageError(f"{out}: holds an unfinished run; pass --resume to continue it or --force to start over")


def check_writable(out: Path) -> None:
    """Refuse an OUT that cannot be written, before any work: create and remove a probe file
    in OUT, or in its nearest existing ancestor when OUT does not exist yet (nothing is left
    behind either way)."""
    import os
    import tempfile

    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"{out}: cannot create it: {base} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nettrim-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(
            f"{out}: cannot write there ({e.strerror or type(e).__name__}{'' if base == out else f' in {base}'})"
        ) from None


def _resume_state(out: Path, fp: dict, console, total: int):
    from nettrim_jax.io.state import load_state

    if not (out / PARTIAL).is_file():
        raise UsageError(f"{out}: nothing to resume (no {PARTIAL}); run without --resume")
    state, saved = load_state(out / PARTIAL)
    if saved != fp:
        diff = sorted(k for k in fp if not isinstance(saved, dict) or saved.get(k) != fp[k])
        raise UsageError(
            f"{out / PARTIAL}: made with different inputs or settings ({', '.join(diff)}); "
            "rerun with --force to start over"
        )
    console.note(f"resuming after {state.finished} of {total} finished layer(s)")
    return state


def _finish_user_model(out: Path, report: dict, dest: Path, console) -> None:
    """``--model`` runs: OUT/report.md, OUT/report.json (the state is already in ``dest``)."""
    from nettrim_jax.io.atomic import atomic_write_json, atomic_write_text

    md = render(report)
    atomic_write_text(out / REPORT_MD, md)
    atomic_write_json(out / REPORT_JSON, report)
    console.say(md)
    print(f"pruned state (Orbax): {dest}")
    print(f"report: {out / REPORT_MD}, {out / REPORT_JSON}")
    print(_final_line(report))


def cmd_prune(args, console) -> int:
    if getattr(args, "model", None):
        from nettrim_jax.cli.usermodel import cmd_prune_model

        return cmd_prune_model(args, console, lambda out, rep, dest: _finish_user_model(out, rep, dest, console))
    if not args.checkpoint:
        raise UsageError("pass a CHECKPOINT folder (model.json) or --model pkg.module:factory --params DIR")
    from nettrim_jax import prune
    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.io.convert import from_network, to_network
    from nettrim_jax.io.state import save_state

    _check_args(args)  # every check happens before anything is written
    out = Path(args.out)
    _check_out(out, args)
    check_writable(out)
    model = ck.load(args.checkpoint)
    x, y = load_calibration(
        args.data, model.input_shape, key=args.key, labels=args.labels, split=args.split, samples=args.samples
    )
    if args.eval_data:
        xe, ye = load_calibration(args.eval_data, model.input_shape, key=args.key, split="test")
        if ye is None:
            raise UsageError(f"{args.eval_data}: no labels to measure accuracy with")
        acc_on = f"{args.eval_data}" + (" (test split)" if Path(args.eval_data).is_dir() else "")
    else:
        xe, ye, acc_on = x, y, "calibration data"
    ck_sha = ck.describe(args.checkpoint)["weights"]["sha256"]
    fp = _fingerprint(args, ck_sha, x)
    total = sum(layer["type"] in ck.PARAM_TYPES for layer in model.layers)
    resume = _resume_state(out, fp, console, total) if args.resume else None
    if args.force and out.exists():
        shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
        for name in (PARTIAL, REPORT_JSON, REPORT_MD, REPORT_PNG):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    target = f"sparsity {args.sparsity}" if args.sparsity is not None else f"epsilon {args.epsilon}"
    gamma = f", gamma {args.gamma}" if args.scheme == "cascade" else ""
    console.note(
        f"pruning {total} layer(s) of {args.checkpoint} on {x.shape[0]} samples ({args.scheme}, {target}{gamma})"
    )
    t0 = time.perf_counter()
    res = prune(
        to_network(model.layers),
        x,
        resume=resume,
        on_layer=lambda state: save_state(out / PARTIAL, state, fp),
        **prune_options(args),
    )
    seconds = time.perf_counter() - t0
    pruned = from_network(res.compact() if args.compact else res.model)
    run = {
        "command": "prune",
        "title": f"Net-Trim ({args.scheme}) of {args.checkpoint}",
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "samples": int(x.shape[0]),
        "accuracy_on": acc_on,
        "accuracy_before": accuracy(model.layers, xe, ye),
        "accuracy_after": accuracy(pruned, xe, ye),
        "seconds": seconds,
    }
    meta = {
        "pruned_from": str(args.checkpoint),
        "source_sha256": ck_sha,
        "scheme": args.scheme,
        "epsilon": args.epsilon,
        "gamma": args.gamma,
        "nnz_before": res.report.nnz_before,
        "nnz_after": res.report.nnz_after,
    }
    _finish(out, pruned, model.input_shape, meta, _report_dict(res, run), console)
    if args.strict and not all(layer.converged for layer in res.report.layers):
        console.note("some layer did not converge (--strict): exit 3")
        return EXIT_NOT_CONVERGED
    return EXIT_OK
