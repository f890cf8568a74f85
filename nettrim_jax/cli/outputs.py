"""What a ``nettrim`` run leaves behind, and how it ends.

An OUT folder holds ``model/`` (the pruned checkpoint, or the pruned Orbax state of a
``--model`` run), ``report.md`` and ``report.json`` (written last: it marks the run finished)
and, while a run is unfinished, ``partial.state`` (``io.state``: the finished layers, for
``--resume``).  ``report.json`` is ``PruneReport.to_dict()`` plus ``format``, ``version`` and a
``run`` block (command, model, data, samples, accuracy before and after).  The process's
exit codes are here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nettrim_jax.cli.calibration import UsageError

MODEL_DIR = "model"  # OUT/model: the pruned checkpoint
PARTIAL = "partial.state"  # OUT/partial.state: finished layers, for --resume
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
REPORT_FORMAT, REPORT_VERSION = "nettrim-report", 2

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3  # --strict and some solve not certified
EXIT_COLLAPSED = 4  # the pruned model's outputs collapsed (CollapsedModelError): nothing written
EXIT_INTERRUPTED = 130


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


def report_dict(result, run: dict) -> dict:
    return {"format": REPORT_FORMAT, "version": REPORT_VERSION, **result.report.to_dict(), "run": run}


def final_line(report: dict) -> str:
    """The last line printed: the sparsity reached and how many solves were certified."""
    from nettrim_jax.network.report import PruneReport, converged_summary

    rep = PruneReport.from_dict(report)
    kept = rep.nnz_after / max(1, rep.nnz_before)
    return f"done: {100 * (1 - kept):.2f}% of the pruned layers' weights removed; {converged_summary(rep)}"


def check_out(out: Path, args) -> None:
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


def write_checkpoint_run(out: Path, layers, input_shape, meta, report: dict, console, plot=False, shown=None) -> None:
    """Write OUT/model, OUT/report.md, OUT/report.json (last: it marks the run finished);
    the printed paths name ``shown`` instead of ``out`` when given (a staged folder)."""
    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.io.atomic import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
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
    print(final_line(report))


def write_state_run(out: Path, report: dict, dest: Path, console) -> None:
    """``--model`` runs: OUT/report.md, OUT/report.json (the state is already in ``dest``)."""
    from nettrim_jax.io.atomic import atomic_write_json, atomic_write_text

    md = render(report)
    atomic_write_text(out / REPORT_MD, md)
    atomic_write_json(out / REPORT_JSON, report)
    console.say(md)
    print(f"pruned state (Orbax): {dest}")
    print(f"report: {out / REPORT_MD}, {out / REPORT_JSON}")
    print(final_line(report))
