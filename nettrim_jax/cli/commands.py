"""The ``nettrim prune`` and ``nettrim report`` subcommands: load, call
``nettrim_jax.prune``, write (``outputs``: the OUT folder's layout), print."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from nettrim_jax.cli.calibration import UsageError, load_calibration
from nettrim_jax.cli.options import check_args, fingerprint, prune_options
from nettrim_jax.cli.outputs import (
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    MODEL_DIR,
    PARTIAL,
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    check_out,
    check_writable,
    read_report,
    render,
    report_dict,
    write_checkpoint_run,
)
from nettrim_jax.cli.usermodel import cmd_prune_model


def accuracy(layers, x, y) -> float | None:
    """Top-1 accuracy of checkpoint layers on (x, y); None without labels."""
    if y is None:
        return None
    from nettrim_jax.io.convert import apply

    return float(np.mean(np.argmax(apply(layers, x), -1) == y))


# ----------------------------------------------------------------------------- report


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


# ----------------------------------------------------------------------------- prune


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


def _save_partial(out: Path, state, fp: dict) -> None:
    """OUT/partial.state after a finished layer; OUT is created here, so a run interrupted
    before its first layer leaves no folder behind (nor an empty one --resume would refuse)."""
    from nettrim_jax.io.state import save_state

    out.mkdir(parents=True, exist_ok=True)
    save_state(out / PARTIAL, state, fp)


def cmd_prune(args, console) -> int:
    if getattr(args, "model", None):
        return cmd_prune_model(args, console)
    if not args.checkpoint:
        raise UsageError("pass a CHECKPOINT folder (model.json) or --model pkg.module:factory --params DIR")
    from nettrim_jax import prune
    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.io.convert import from_network, to_network

    check_args(args)  # every check happens before anything is written
    out = Path(args.out)
    check_out(out, args)
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
    fp = fingerprint(args, ck_sha, x)
    total = sum(layer["type"] in ck.PARAM_TYPES for layer in model.layers)
    resume = _resume_state(out, fp, console, total) if args.resume else None
    if args.force and out.exists():
        shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
        for name in (PARTIAL, REPORT_JSON, REPORT_MD, REPORT_PNG):
            (out / name).unlink(missing_ok=True)
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
        on_layer=lambda state: _save_partial(out, state, fp),
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
    write_checkpoint_run(out, pruned, model.input_shape, meta, report_dict(res, run), console)
    if args.strict and not all(layer.converged for layer in res.report.layers):
        console.note("some layer did not converge (--strict): exit 3")
        return EXIT_NOT_CONVERGED
    return EXIT_OK
