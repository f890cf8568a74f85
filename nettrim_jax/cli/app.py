"""``nettrim``: the command line.

    nettrim demo [--dataset digits|spirals] [--out DIR]
    nettrim prune CHECKPOINT --data DATA --scheme cascade|parallel --epsilon E --out OUT [--resume]
    nettrim report OUT [--plot [PNG]] [--json]

Exit codes (stable; scripts may rely on them):

    0  success
    1  runtime failure: an unexpected error inside nettrim or a library (a bug; please report)
    2  usage or input error: bad arguments, unreadable/corrupt/mismatched checkpoint or data,
       NaN/Inf, an empty calibration set, epsilon < 0, gamma < 1, unsupported layers, an OUT
       folder that already holds a result (pass --force) or an unfinished one (--resume),
       an OUT that cannot be written (checked before any work), permission denied
    3  finished, results written, but with --strict some layer's solve did not converge
    130 interrupted (Ctrl-C); finished layers of a cascade run are kept for --resume

Errors print one line, ``nettrim: error: <message>``, on stderr; set ``NETTRIM_DEBUG=1`` for
a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3
EXIT_INTERRUPTED = 130

MODEL_DIR = "model"  # OUT/model: the pruned checkpoint
PARTIAL_DIR = "partial"  # OUT/partial: finished cascade layers, for --resume
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


class UsageError(ValueError):
    """Bad arguments or input data; exit code 2."""


# ----------------------------------------------------------------------------- output


class _Console:
    """stdout for results, stderr for progress and notes; ``quiet`` silences both except
    errors and the final result paths."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def say(self, *parts):
        if not self.quiet:
            print(*parts, flush=True)

    def note(self, msg):
        if not self.quiet:
            print(f"nettrim: {msg}", file=sys.stderr, flush=True)

    def progress(self, iterable=None, **kw):
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=True if self.quiet else None, file=sys.stderr,
                    dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------- data


def _pick(arrays: dict, names: Sequence[str], path, what, key=None):
    if key is not None:
        if key not in arrays:
            raise UsageError(f"{path}: no array named {key!r} (has {sorted(arrays)})")
        return arrays[key]
    for n in names:
        if n in arrays:
            return arrays[n]
    return None


def load_calibration(path: str | os.PathLike, input_shape: Sequence[int], *, key: str | None = None,
                     labels: str | None = None, split: str = "train", samples: int | None = None):
    """Calibration inputs (and labels if any) for a model with per-sample ``input_shape``.

    ``path`` is a ``.npy`` file (inputs), a ``.npz`` file (inputs under ``key`` or one of
    x/X/inputs/images/data, or its only array; labels under y/labels/targets if present), or
    a folder of MNIST-format IDX files (images scaled to [0, 1]).  Arrays are used as they
    are (cast to float32): preprocess them as for training.  Samples are reshaped to
    ``input_shape`` when the sizes agree ((P, 28, 28) -> (P, 784) or (P, 28, 28, 1)).

    Returns ``(x (P, *input_shape) float32, y (P,) int or None)``; raises UsageError.
    """
    from nettrim_jax.io import data as nt_data

    path = Path(path)
    y = None
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_dir():
        try:
            x, y = nt_data.load_idx_folder(path, split)
        except FileNotFoundError as e:
            raise UsageError(f"{e}; expected MNIST-format IDX files (or pass a .npy/.npz file)") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
    elif path.suffix in (".npy", ".npz"):
        _check_container(path)
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise UsageError(f"{path}: cannot read ({str(e).splitlines()[0]}); object/pickled arrays "
                             "are refused") from None
        except Exception as e:  # noqa: BLE001 - OSError, EOFError, zipfile.BadZipFile, ...
            raise UsageError(f"{path}: cannot read ({_one_line(e)}); the file is corrupt or truncated") from None
        if path.suffix == ".npy":
            x = loaded
        else:
            try:
                arrays = {k: loaded[k] for k in loaded.files}
            except Exception as e:  # zipfile / format errors on a damaged archive
                raise UsageError(f"{path}: cannot read ({e}); the file is corrupt or truncated") from None
            if not arrays:
                raise UsageError(f"{path}: holds no arrays (empty calibration set)")
            x = _pick(arrays, ("x", "X", "inputs", "images", "data"), path, "inputs", key)
            if x is None:
                if len(arrays) != 1:
                    raise UsageError(f"{path}: cannot tell which array holds the inputs among "
                                     f"{sorted(arrays)}; pass --key")
                x = next(iter(arrays.values()))
            y = _pick(arrays, ("y", "labels", "targets"), path, "labels")
    else:
        raise UsageError(f"{path}: unsupported data file; pass a .npy or .npz file or a folder of IDX files")
    if labels is not None:
        try:
            y = np.load(labels, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"{labels}: cannot read labels ({str(e).splitlines()[0]})") from None

    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise UsageError(f"{path}: inputs have dtype {x.dtype}; expected numbers")
    if x.ndim == 0 or x.shape[0] == 0:
        raise UsageError(f"{path}: empty calibration set (inputs of shape {x.shape})")
    if samples is not None:
        if samples < 1:
            raise UsageError(f"--samples must be >= 1, got {samples}")
        x = x[:samples]
        y = None if y is None else np.asarray(y)[:samples]
    x = x.astype(np.float32)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise UsageError(f"{path}: inputs contain {bad} NaN or Inf values")
    want = tuple(int(a) for a in input_shape)
    if x.shape[1:] != want:
        if math.prod(x.shape[1:]) != math.prod(want):
            raise UsageError(f"{path}: samples have shape {x.shape[1:]} ({math.prod(x.shape[1:])} values) "
                             f"but the model expects input shape {want} ({math.prod(want)} values)")
        x = x.reshape((x.shape[0],) + want)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
            raise UsageError(f"labels of shape {y.shape} and dtype {y.dtype} do not match "
                             f"{x.shape[0]} samples (need integer class labels)")
    return x, y


def _check_container(path: Path) -> None:
    """A .npz must be a zip archive and a .npy must start with numpy's magic; otherwise
    np.load falls back to unpickling and its error speaks of pickled data."""
    import zipfile

    if path.suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise UsageError(f"{path}: not a valid .npz (zip) file; corrupt or truncated, or not "
                             "written by np.savez")
        return
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise UsageError(f"{path}: not a valid .npy file (no NumPy header); corrupt or truncated, "
                             "or not written by np.save")


def accuracy(layers, x, y) -> float | None:
    """Top-1 accuracy of the layer stack on (x, y); None without labels."""
    if y is None:
        return None
    from nettrim_jax.io import checkpoint as ck

    return float(np.mean(np.argmax(ck.apply(layers, x), -1) == y))


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from nettrim_jax import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")

    p = argparse.ArgumentParser(
        prog="nettrim", description="Net-Trim convex pruning of trained ReLU networks.",
        epilog="exit codes: 0 ok, 1 runtime failure, 2 usage/input error, "
               "3 not converged (--strict), 130 interrupted", parents=[common])
    p.add_argument("--version", action="version", version=f"nettrim-jax {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", parents=[common], help="train, prune and plot a small network (no download)",
                       description="Train a small ReLU network on embedded data, prune it with cascade "
                                   "Net-Trim, print the per-layer table and write a plot.")
    d.add_argument("--dataset", choices=("digits", "spirals"), default="digits",
                   help="scikit-learn's 8x8 digits (64-64-32-10 MLP) or the nested spirals (2-64-64-2)")
    d.add_argument("--out", default="nettrim-demo", help="output folder (default ./nettrim-demo)")
    d.add_argument("--epsilon", type=float, default=0.05,
                   help="relative misfit of the first layer, ||XU - Y||_F <= epsilon ||Y||_F; later "
                        "layers get gamma = 1.1 times the original weights' misfit (default 0.05)")
    d.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--calibration", type=int, default=None,
                   help="prune on the first N training samples (default: all)")
    d.add_argument("--max-iters", type=int, default=None, help="solver iteration cap per layer")
    d.add_argument("--no-plot", action="store_true", help="skip the figure")
    d.add_argument("--force", action="store_true",
                   help="replace a non-empty --out folder that is not an earlier demo output "
                        "(its contents are deleted)")

    q = sub.add_parser("prune", parents=[common], help="prune a saved model on calibration data",
                       description="Prune a nettrim checkpoint on calibration data; writes OUT/model "
                                   "(pruned checkpoint), OUT/report.md and OUT/report.json.")
    q.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder (model.json + weights)")
    q.add_argument("--data", required=True,
                   help=".npy / .npz file or a folder of MNIST IDX files with calibration inputs")
    q.add_argument("--key", help="array name in a .npz file holding the inputs")
    q.add_argument("--labels", help=".npy file of integer labels (for the accuracy columns)")
    q.add_argument("--split", choices=("train", "test"), default="train", help="IDX split (default train)")
    q.add_argument("--samples", type=int, help="use the first N samples only")
    q.add_argument("--scheme", choices=("cascade", "parallel"), default="cascade")
    q.add_argument("--epsilon", type=float, required=True,
                   help="relative misfit ||XU - Y||_F <= epsilon ||Y||_F: of every layer (parallel) "
                        "or of the first layer (cascade; later layers follow --gamma)")
    q.add_argument("--gamma", type=float, default=1.1,
                   help="cascade: epsilon_l = gamma x the original weights' misfit on the pruned inputs (>= 1; default 1.1)")
    q.add_argument("--solver", choices=("admm", "pdhg"), default=None)
    q.add_argument("--max-iters", type=int, default=None, help="solver iteration cap per layer")
    q.add_argument("--max-patches", type=int, default=4096,
                   help="conv layers: at most this many random patch rows per program (default 4096)")
    q.add_argument("--eval-data", help="labelled .npz / IDX folder for the accuracy columns "
                                       "(default: the calibration data, if it has labels)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--resume", action="store_true", help="continue an interrupted cascade run in OUT")
    q.add_argument("--force", action="store_true", help="overwrite a result already in OUT")
    q.add_argument("--strict", action="store_true", help="exit 3 if some layer did not converge")
    q.add_argument("--refit", action="store_true",
                   help="refit each layer's kept weights on Net-Trim's support (nettrim_jax.refit_layer)")
    q.add_argument("--output-epsilon", type=float, default=None,
                   help="cascade: relative misfit budget of the (linear) output layer, which is then refit "
                        "toward the original outputs from the pruned features instead of following "
                        "--gamma; bounds the output error (prune's output_epsilon)")

    r = sub.add_parser("report", parents=[common], help="print a stored report",
                       description="Print OUT/report.md (or the JSON); --plot writes the per-layer "
                                   "sparsity and discrepancy figure.")
    r.add_argument("out", metavar="OUT", help="a folder written by `nettrim prune` or `nettrim demo`")
    r.add_argument("--json", action="store_true", help="print the JSON report instead")
    r.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help=f"write the figure (default OUT/{REPORT_PNG})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nettrim`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, bad usage exits 2
        return int(e.code or 0)
    console = _Console(args.quiet)
    from nettrim_jax.io.checkpoint import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # restored on exit by catch_warnings
            # the per-layer table reports convergence; the solver's warning would repeat it
            warnings.filterwarnings("ignore", message="Net-Trim solve did not converge")
            if args.quiet:
                warnings.simplefilter("ignore")
            return {"demo": cmd_demo, "prune": cmd_prune, "report": cmd_report}[args.command](args, console)
    except KeyboardInterrupt:
        print("nettrim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, CheckpointError, ValueError, FileNotFoundError, PermissionError) as e:
        _debug_traceback()
        print(f"nettrim: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        _debug_traceback()
        print(f"nettrim: error: unexpected {type(e).__name__}: {_one_line(e)} "
              "(set NETTRIM_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILURE


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """Process entry point (the ``nettrim`` script, ``python -m nettrim_jax.cli``): exit with
    ``main``'s code.

    After Ctrl-C the process ends with ``os._exit(130)`` once stdout/stderr are flushed,
    skipping the interpreter's teardown: a SIGINT can interrupt the main thread while XLA
    still compiles or runs a program on its own threads, and tearing down jax's client
    under that work crashed the process (SIGSEGV) in most tries.  Everything worth keeping
    (OUT/partial) is written atomically and fsynced before that point.
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while main was handling the first
        print("nettrim: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> NoReturn:
    """Flush stdout/stderr and end the process at once (no atexit, no teardown)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C cannot interrupt the flush
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say
            pass
    os._exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: ``nettrim: warning: <one line>`` on
    stderr, without the file, line number and source line Python prints."""
    print(f"nettrim: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n")[0].split()) if "\n" in text else text


def _debug_traceback():
    if os.environ.get("NETTRIM_DEBUG"):
        traceback.print_exc()


# ----------------------------------------------------------------------------- commands


def cmd_report(args, console: _Console) -> int:
    out = Path(args.out)
    rj = out / REPORT_JSON
    if not out.is_dir():
        raise UsageError(f"{out}: no such folder" if not out.exists() else f"{out}: not a folder")
    if not rj.is_file():
        hint = " (an unfinished run: resume it with `nettrim prune ... --resume`)" \
            if (out / PARTIAL_DIR).is_dir() else ""
        raise UsageError(f"{out}: no {REPORT_JSON}{hint}")
    report = _read_report(rj)
    if args.json:
        print(json.dumps(report, indent=2))
    elif (out / REPORT_MD).is_file():
        print((out / REPORT_MD).read_text("utf-8"), end="")
    else:
        print(report_markdown(report), end="")
    if args.plot is not None:
        png = Path(args.plot) if args.plot else out / REPORT_PNG
        plot_report(report, png)
        print(f"plot: {png}")
    return EXIT_OK


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: corrupt report ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("layers"), list):
        raise UsageError(f"{path}: not a nettrim report (no 'layers' list)")
    return report


# ----------------------------------------------------------------------------- prune


def _fingerprint(args, ckpt_sha: str, x) -> dict:
    """What a resumed run must share with the interrupted one."""
    import hashlib

    return {"checkpoint_sha256": ckpt_sha, "data_sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
            "scheme": args.scheme, "epsilon": args.epsilon, "gamma": args.gamma, "solver": args.solver,
            "max_iters": args.max_iters, "max_patches": args.max_patches,
            "refit": bool(getattr(args, "refit", False)), "output_epsilon": args.output_epsilon}


def _check_out(out: Path, args) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if args.force or not out.exists():
        return
    if (out / REPORT_JSON).exists():
        raise UsageError(f"{out}: already holds a finished result; pass --force to overwrite or pick another --out")
    if (out / PARTIAL_DIR).exists() and not args.resume:
        raise UsageError(f"{out}: holds an unfinished run; pass --resume to continue it or --force to start over")


def _check_writable(out: Path) -> None:
    """Refuse an OUT that cannot be written, before any work: create and remove a probe file
    in OUT, or in its nearest existing ancestor when OUT does not exist yet (nothing is left
    behind either way)."""
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
        raise UsageError(f"{out}: cannot write there ({e.strerror or type(e).__name__}"
                         f"{'' if base == out else f' in {base}'})") from None


def cmd_prune(args, console: _Console) -> int:
    import shutil

    from nettrim_jax.io import checkpoint as ck

    # every check happens before anything is written
    if not args.epsilon >= 0:
        raise UsageError(f"--epsilon must be >= 0, got {args.epsilon}")
    if not args.gamma >= 1:
        raise UsageError(f"--gamma must be >= 1 (the original weights must stay feasible), got {args.gamma}")
    if args.max_iters is not None and args.max_iters < 1:
        raise UsageError(f"--max-iters must be >= 1, got {args.max_iters}")
    if args.max_patches is not None and args.max_patches < 1:
        raise UsageError(f"--max-patches must be >= 1, got {args.max_patches}")
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    if args.resume and args.force:
        raise UsageError("--resume and --force exclude each other")
    if args.output_epsilon is not None and not args.output_epsilon >= 0:
        raise UsageError(f"--output-epsilon must be >= 0, got {args.output_epsilon}")
    if args.output_epsilon is not None and args.scheme != "cascade":
        raise UsageError("--output-epsilon applies to --scheme cascade only")
    if args.resume and args.scheme != "cascade":
        raise UsageError("--resume applies to --scheme cascade only (parallel layers are independent; rerun)")
    out = Path(args.out)
    _check_out(out, args)
    _check_writable(out)
    model = ck.load(args.checkpoint)
    x, y = load_calibration(args.data, model.input_shape, key=args.key, labels=args.labels,
                            split=args.split, samples=args.samples)
    if args.eval_data:
        xe, ye = load_calibration(args.eval_data, model.input_shape, key=args.key, split="test")
        if ye is None:
            raise UsageError(f"{args.eval_data}: no labels to measure accuracy with")
        acc_on = f"{args.eval_data}" + (" (test split)" if Path(args.eval_data).is_dir() else "")
    else:
        xe, ye, acc_on = x, y, "calibration data"
    ck_sha = ck.describe(args.checkpoint)["weights"]["sha256"]
    fp = _fingerprint(args, ck_sha, x)
    n_weighted = sum(l["type"] in ("dense", "conv") for l in model.layers)
    opts = _solve_options(args)

    resume_from = None
    if args.resume:
        if not (out / PARTIAL_DIR).exists():
            raise UsageError(f"{out}: nothing to resume (no {PARTIAL_DIR}/); run without --resume")
        part = ck.load(out / PARTIAL_DIR)
        run = part.metadata.get("run")
        if run != fp:
            diff = sorted(k for k in fp if not isinstance(run, dict) or run.get(k) != fp[k])
            raise UsageError(f"{out / PARTIAL_DIR}: made with different inputs or settings ({', '.join(diff)}); "
                             "rerun with --force to start over")
        resume_from = (part.layers, part.metadata.get("rows", []))
        console.note(f"resuming after {len(resume_from[1])} of {n_weighted} finished layer(s)")
    elif args.force and out.exists():
        for name in (PARTIAL_DIR, MODEL_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (REPORT_JSON, REPORT_MD, REPORT_PNG):
            (out / name).unlink(missing_ok=True)

    console.note(f"pruning {n_weighted} layer(s) of {args.checkpoint} on {x.shape[0]} samples "
                 f"({args.scheme}, epsilon {args.epsilon}, gamma {args.gamma})")
    t0 = time.perf_counter()
    prune_report = None
    if args.scheme == "cascade":
        def save_partial(layers, rows):
            ck.save(out / PARTIAL_DIR, layers, model.input_shape, {"run": fp, "rows": rows})

        bar = console.progress(total=n_weighted, desc="Net-Trim (cascade)", unit="layer")
        try:
            pruned, rows = cascade(model.layers, x, epsilon=args.epsilon, gamma=args.gamma,
                                   solver=args.solver or "admm", max_patches=args.max_patches,
                                   resume_from=resume_from, on_layer=save_partial, progress=bar,
                                   refit=args.refit, output_epsilon=args.output_epsilon, **opts)
        finally:
            bar.close()
    else:
        from nettrim_jax.network.prune import prune

        res = prune(ck.to_network(model.layers), x, scheme="parallel", epsilon=args.epsilon,
                    gamma=args.gamma, solver=args.solver or "admm", max_patches=args.max_patches,
                    refit=args.refit, progress=not args.quiet, **opts)
        pruned = ck.from_network(res.model, model.layers)
        prune_report = res.report.to_dict()
        rows = [{k: l[k] for k in ("epsilon", "misfit", "rows", "subsampled", "iterations", "converged", "seconds")}
                for l in prune_report["layers"]]
    seconds = time.perf_counter() - t0

    table = layer_rows(model.layers, pruned, x, xe, ye,
                       seconds=[r["seconds"] for r in rows], converged=[r["converged"] for r in rows])
    for row, solve in zip(table, rows):
        row.update(epsilon=solve["epsilon"], misfit=solve["misfit"], iterations=solve["iterations"],
                   program_rows=solve["rows"], subsampled=solve["subsampled"])
    report = {
        "format": "nettrim-report", "version": 1, "title": f"Net-Trim ({args.scheme}) of {args.checkpoint}",
        "command": "prune", "checkpoint": str(args.checkpoint), "data": str(args.data),
        "samples": int(x.shape[0]), "scheme": args.scheme, "epsilon": args.epsilon, "gamma": args.gamma,
        "output_epsilon": args.output_epsilon, "relative": True, "accuracy_on": acc_on,
        "accuracy_before": accuracy(model.layers, xe, ye), "accuracy_after": accuracy(pruned, xe, ye),
        "seconds": seconds, "layers": table, "prune_report": prune_report,
        **_shaping_options(args.solver, args.max_iters, max_patches=args.max_patches, refit=args.refit,
                           output_epsilon=args.output_epsilon, seed=0),
    }
    meta = {"pruned_from": str(args.checkpoint), "source_sha256": ck_sha, "scheme": args.scheme,
            "epsilon": args.epsilon, "gamma": args.gamma, "nnz_before": sum(r["nnz_before"] for r in table),
            "nnz_after": sum(r["nnz_after"] for r in table)}
    _finish(out, pruned, model.input_shape, meta, report, console)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    if args.strict and not all(r["converged"] for r in rows):
        console.note("some layer did not converge (--strict): exit 3")
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def _finish(out: Path, layers, input_shape, meta, report, console, plot=False, shown=None) -> None:
    """Write OUT/model, OUT/report.md, OUT/report.json (last: it marks the run finished);
    the printed paths name ``shown`` instead of ``out`` when given (a staged folder)."""
    from nettrim_jax.io import checkpoint as ck

    ck.save(out / MODEL_DIR, layers, input_shape, meta)
    md = report_markdown(report)
    ck.atomic_write_text(out / REPORT_MD, md)
    if plot:
        plot_report(report, out / REPORT_PNG)
    ck.atomic_write_json(out / REPORT_JSON, report)
    console.say(md)
    out = out if shown is None else Path(shown)
    print(f"pruned checkpoint: {out / MODEL_DIR}")
    print(f"report: {out / REPORT_MD}, {out / REPORT_JSON}" + (f", {out / REPORT_PNG}" if plot else ""))


# ----------------------------------------------------------------------------- demo


def cmd_demo(args, console: _Console) -> int:
    if not args.epsilon >= 0:
        raise UsageError(f"--epsilon must be >= 0, got {args.epsilon}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.calibration is not None and args.calibration < 1:
        raise UsageError(f"--calibration must be >= 1, got {args.calibration}")
    out = Path(args.out)
    _check_demo_out(out, args.force)
    _check_writable(out)
    with _staged_folder(out) as work:
        return _demo(args, console, out, work)


def _check_demo_out(out: Path, force: bool) -> None:
    """Refuse an --out that is a file, or a non-empty folder that is not an earlier demo
    output (unless --force): the demo replaces the whole folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if force or not out.is_dir() or not any(out.iterdir()) or _is_demo_output(out):
        return
    raise UsageError(f"{out}: not empty and not an earlier demo output; pass --force to replace "
                     "it or pick another --out")


def _is_demo_output(out: Path) -> bool:
    try:
        return json.loads((out / REPORT_JSON).read_text("utf-8")).get("command") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _staged_folder(out: Path):
    """Yield a new hidden sibling folder of ``out`` to fill; on a clean exit it replaces
    ``out`` (the old folder is moved aside, then deleted), on any exception (Ctrl-C
    included) it is deleted and ``out`` is left as it was: no half-filled folder."""
    import shutil
    import tempfile

    out = out.resolve()  # "." or "a/.." have no name to make siblings from
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield work
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(work, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _demo(args, console: _Console, out: Path, work: Path) -> int:
    """The demo proper: writes into ``work``, which becomes ``out`` once it returns."""
    import jax

    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax import training
    from nettrim_jax.network.prune import prune

    t_all = time.perf_counter()
    if args.dataset == "digits":
        try:
            xtr, ytr, xte, yte = training.load_digits_split(seed=args.seed)
        except ImportError:
            raise UsageError("the digits demo needs scikit-learn (pip install scikit-learn); "
                             "or run `nettrim demo --dataset spirals`") from None
        sizes, what = (64, 64, 32, 10), "scikit-learn digits 8x8"
    else:
        from nettrim_jax.io.data import nested_spirals

        x, y = nested_spirals(2000, turns=1.5, noise=0.02, seed=args.seed)
        xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
        sizes, what = (2, 64, 64, 2), "nested spirals"
    console.note(f"training a {'-'.join(map(str, sizes))} ReLU MLP on {what} "
                 f"({len(ytr)} train / {len(yte)} test, {args.steps} steps, {jax.default_backend()})")
    model = training.make_mlp(sizes, seed=args.seed)
    training.train_classifier(model, xtr, ytr, steps=args.steps, learning_rate=1e-2 if args.dataset == "spirals" else 3e-3,
                              seed=args.seed)
    layers, input_shape = ck.from_flax(model)
    xtr, ytr = xtr[:args.calibration], ytr[:args.calibration]
    ck.save(work / "original", layers, input_shape, {"dataset": args.dataset, "sizes": list(sizes)})
    np.savez(work / "calibration.npz", x=xtr, y=ytr)
    np.savez(work / "test.npz", x=xte, y=yte)

    console.note(f"pruning with cascade Net-Trim (epsilon {args.epsilon}, gamma 1.1) on the {len(ytr)} training samples")
    t0 = time.perf_counter()
    res = prune(model, xtr, scheme="cascade", epsilon=args.epsilon, gamma=1.1, progress=not args.quiet,
                **_solve_options(args))
    seconds = time.perf_counter() - t0
    pruned, _ = ck.from_flax(res.model)
    rep = res.report.to_dict()
    table = layer_rows(layers, pruned, xtr, xte, yte, seconds=[l["seconds"] for l in rep["layers"]],
                       converged=[l["converged"] for l in rep["layers"]])
    for row, l in zip(table, rep["layers"]):
        row.update(epsilon=l["epsilon"], misfit=l["misfit"], iterations=l["iterations"],
                   program_rows=l["rows"], subsampled=l["subsampled"])
    report = {
        "format": "nettrim-report", "version": 1,
        "title": f"nettrim demo: {'-'.join(map(str, sizes))} MLP on {what}, cascade Net-Trim",
        "command": "demo", "data": what, "samples": len(ytr), "scheme": "cascade",
        "epsilon": args.epsilon, "gamma": 1.1, "relative": True, "accuracy_on": f"{len(yte)} held-out samples",
        "accuracy_before": training.accuracy(model, xte, yte), "accuracy_after": training.accuracy(res.model, xte, yte),
        "seconds": seconds, "layers": table, "prune_report": rep,
        **_shaping_options("admm", args.max_iters, max_patches=4096, refit=False, output_epsilon=None,
                           seed=args.seed),
        "training_steps": args.steps,
    }
    _finish(work, pruned, input_shape, {"pruned_from": str(out / "original"), "scheme": "cascade",
                                        "epsilon": args.epsilon, "gamma": 1.1},
            report, console, plot=not args.no_plot and _has_matplotlib(console), shown=out)
    console.note(f"done in {time.perf_counter() - t_all:.1f} s; next: nettrim report {out} --plot, or "
                 f"nettrim prune {out / 'original'} --data {out / 'calibration.npz'} --epsilon 0.05 --out pruned")
    return EXIT_OK


def _has_matplotlib(console) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.note("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return False
    return True


# ----------------------------------------------------------------------------- cascade driver


def _programs(layers) -> list:
    """Program per weighted layer, as ``prune`` picks them for declared activations: the
    last weighted layer is linear, others follow their activation."""
    idx = [i for i, l in enumerate(layers) if l["type"] in ("dense", "conv")]
    return ["linear" if k == len(idx) - 1 else layers[i]["activation"] for k, i in enumerate(idx)]


def _shaping_options(solver, max_iters, *, max_patches, refit, output_epsilon, seed) -> dict:
    """Report fields for every option that shaped the result besides epsilon/gamma/samples:
    the solver and its effective iteration cap (its default when not given), the conv patch
    cap, refit, output_epsilon and the seed (conv patch subsampling; demo: also training)."""
    from nettrim_jax.solver import admm, pdhg

    solver = solver or "admm"
    default = (admm.Options if solver == "admm" else pdhg.Options)().max_iters
    return {"solver": solver, "max_iters": default if max_iters is None else int(max_iters),
            "max_patches": max_patches, "refit": bool(refit), "output_epsilon": output_epsilon,
            "seed": seed}


def _solve_options(args) -> dict:
    opts = {}
    if getattr(args, "max_iters", None) is not None:
        opts["max_iters"] = args.max_iters
    return opts


def cascade(original: Sequence[dict], x, *, epsilon: float, gamma: float = 1.1,
            solver: str = "admm", max_patches: int | None = 4096, seed: int = 0,
            resume_from: tuple | None = None, on_layer=None, progress=None, refit: bool = False,
            output_epsilon: float | None = None, **solver_options):
    """Cascade Net-Trim, one weighted layer at a time, resumable.

    The programs are ``prune(..., scheme="cascade", scan=False)``'s (see ``nettrim_jax.prune``):
    layer l is solved from the pruned network's input X_hat_l against the original target
    Y_l; epsilon_1 = epsilon ||Y_1||_F, then epsilon_l = gamma ||(X_hat_l W_l - Y_l)_Omega||_F
    with the off-support bound max(X_hat_l W_l, 0) for ReLU layers, except that with
    ``output_epsilon`` the output layer gets that budget times ||Y_L||_F
    (``prune.output_layer_epsilon``); conv layers use at most
    ``max_patches`` random patch rows (``seed`` + layer).  ``prune`` has no per-layer hook,
    so the command line drives the layers itself to write a resumable state after each.

    Args:
      original: layer dicts (``nettrim_jax.checkpoint``) of the trained network.
      x: (P, *input_shape) calibration inputs.
      epsilon: relative misfit of the first weighted layer; gamma: inflation (>= 1).
      resume_from: ``(layers, rows)`` of an interrupted run: its first ``len(rows)``
        weighted layers are taken as finished.
      on_layer: called as ``on_layer(layers_so_far, rows_so_far)`` after each finished layer.
      progress: a tqdm-like bar (``update(1)``) or None.
      refit: refit each solved layer on its support (``refit_layer``), as ``prune(refit=True)``.
      output_epsilon: relative budget of the (linear) output layer, as ``prune(output_epsilon=)``.
      **solver_options: passed to ``solve_layer``.

    Returns ``(pruned layer dicts, rows)``, a row per weighted layer: epsilon (absolute),
    misfit, rows, subsampled, iterations, converged, seconds.
    """
    import jax
    import jax.numpy as jnp

    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.solver.layer import solve_layer
    from nettrim_jax.network.prune import output_layer_epsilon, refit_or_measure, warn_if_pruned_to_zero
    from nettrim_jax.network.specs import kernel_matrix, layer_rows, with_matrix

    if gamma < 1:
        raise UsageError(f"gamma must be >= 1 (the original weights must stay feasible), got {gamma}")
    if not epsilon >= 0:
        raise UsageError(f"epsilon must be >= 0, got {epsilon}")
    if output_epsilon is not None and not output_epsilon >= 0:
        raise UsageError(f"output_epsilon must be >= 0, got {output_epsilon}")
    orig_net = ck.to_network(original)
    current = [dict(l) for l in (resume_from[0] if resume_from else original)]
    rows = [dict(r) for r in (resume_from[1] if resume_from else [])]
    programs = _programs(original)
    h_orig = jnp.asarray(x, jnp.float32)
    h_new = h_orig
    k = 0
    for i, item in enumerate(orig_net):
        if original[i]["type"] not in ("dense", "conv"):
            h_orig, h_new = item(h_orig), item(h_new)
            continue
        z = ck.apply_layer(dict(original[i], activation="linear"), h_orig)
        if k < len(rows):  # finished before the interruption
            h_new = ck.apply_layer(current[i], h_new)
            h_orig = ck.apply_layer(original[i], h_orig)
            k += 1
            if progress is not None:
                progress.update(1)
            continue
        t0 = time.perf_counter()
        prog = programs[k]
        spec = item
        A = layer_rows(spec, h_new)
        Zr = z.reshape(-1, z.shape[-1])
        full = int(A.shape[0])
        if original[i]["type"] == "conv" and max_patches is not None and full > max_patches:
            idx = np.sort(np.random.default_rng(seed + k).choice(full, size=int(max_patches), replace=False))
            A, Zr = A[idx], Zr[idx]
        if spec.bias is not None:
            A = jnp.concatenate([A, jnp.ones((A.shape[0], 1), A.dtype)], axis=1)
        Y = jax.nn.relu(Zr) if prog == "relu" else Zr
        threshold = None
        if output_epsilon is not None and k == len(programs) - 1:  # linear (_programs)
            eps = output_layer_epsilon(A, Y, float(output_epsilon) * float(jnp.linalg.norm(Y)))
        elif k == 0:
            eps = float(epsilon) * float(jnp.linalg.norm(Y))
        else:
            out = A @ kernel_matrix(spec)
            r = jnp.where(Y > 0, out - Y, 0) if prog == "relu" else out - Y
            eps = float(gamma) * float(jnp.linalg.norm(r))
            if prog == "relu":
                threshold = jnp.maximum(out, 0)
        sol = solve_layer(A, Y, epsilon=eps, activation=prog, threshold=threshold, solver=solver,
                          **solver_options)
        K, misfit = refit_or_measure(refit, A, Y, sol.kernel, prog, threshold)
        misfit = float(misfit)
        new_spec = with_matrix(spec, K)
        current[i] = ck.from_network([new_spec])[0]
        warn_if_pruned_to_zero(i, _nnz(original[i]), _nnz(current[i]))
        rows.append({"epsilon": eps, "misfit": misfit, "rows": int(A.shape[0]),
                     "subsampled": bool(A.shape[0] < full), "iterations": int(sol.info.iterations),
                     "converged": bool(sol.info.converged), "seconds": time.perf_counter() - t0})
        h_new = ck.apply_layer(current[i], h_new)
        h_orig = ck.apply_layer(original[i], h_orig)
        k += 1
        if on_layer is not None:
            on_layer(current, rows)
        if progress is not None:
            progress.update(1)
    return current, rows


# ----------------------------------------------------------------------------- report


def layer_rows(original: Sequence[dict], pruned: Sequence[dict], x, x_eval=None, y_eval=None, *,
               seconds: Sequence[float] | None = None, converged: Sequence[Any] | None = None) -> list:
    """Per-layer rows for the weighted layers (dense/conv) of a pruned network.

    Args:
      original, pruned: layer dicts (same architecture).
      x: (P, *input_shape) calibration inputs (for the discrepancies).
      x_eval, y_eval: inputs and labels for the accuracy column (None: no accuracy).
      seconds, converged: per weighted layer, from the solver (optional).

    Each row: ``layer`` (index in the stack), ``type``, ``shape`` (kernel), ``nnz_before``,
    ``nnz_after`` (kernel + bias), ``kept`` (fraction of the nonzeros before), ``discrepancy`` = ||h_pruned - h_orig||_F / ||h_orig||_F
    of the layer's outputs when every layer up to it is pruned (cumulative), ``accuracy``
    of the network with the layers up to this one pruned (None without labels),
    ``converged``, ``seconds``.
    """
    import jax.numpy as jnp

    from nettrim_jax.io import checkpoint as ck

    rows, k = [], 0
    h_orig = jnp.asarray(x, jnp.float32)
    h_new = h_orig
    for i, (lo, lp) in enumerate(zip(original, pruned)):
        h_orig = ck.apply_layer(lo, h_orig)
        h_new = ck.apply_layer(lp, h_new)
        if lo["type"] not in ("dense", "conv"):
            continue
        ref = float(jnp.linalg.norm(h_orig))
        diff = float(jnp.linalg.norm(h_new - h_orig))
        acc = accuracy(list(pruned[:i + 1]) + list(original[i + 1:]), x_eval, y_eval)
        rows.append({
            "layer": i, "type": lo["type"], "activation": lo["activation"],
            "shape": list(np.shape(lo["kernel"])),
            "nnz_before": _nnz(lo), "nnz_after": _nnz(lp),
            "kept": _nnz(lp) / max(1, _nnz(lo)),
            "discrepancy": diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf),
            "accuracy": acc,
            "converged": None if converged is None else bool(converged[k]),
            "seconds": None if seconds is None else float(seconds[k]),
        })
        k += 1
    return rows


def _nnz(layer) -> int:
    """Nonzero weights of a layer dict, kernel + bias (Net-Trim prunes the bias too)."""
    b = layer.get("bias")
    return int(np.count_nonzero(layer["kernel"])) + (0 if b is None else int(np.count_nonzero(b)))


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def report_markdown(report: dict) -> str:
    """The per-layer table and a summary line, as GitHub markdown."""
    lines = []
    title = report.get("title") or "Net-Trim report"
    lines += [f"# {title}", ""]
    keys = [("scheme", "scheme"), ("epsilon", "epsilon"), ("gamma", "gamma"),
            ("output_epsilon", "output epsilon"), ("refit", "refit"), ("solver", "solver"),
            ("max_iters", "max iterations"), ("samples", "samples"), ("checkpoint", "checkpoint"),
            ("data", "data")]
    meta = [f"{label} `{report[k]}`" for k, label in keys if report.get(k) not in (None, False)]
    if meta:
        lines += [", ".join(meta), ""]
    lines += ["| layer | type | kernel | nonzeros before | nonzeros after | kept | discrepancy "
              "| accuracy | converged | seconds |",
              "|---:|:---|:---|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in report["layers"]:
        conv = "-" if r.get("converged") is None else ("yes" if r["converged"] else "**no**")
        lines.append(
            f"| {r['layer']} | {r['type']} | {'x'.join(map(str, r['shape']))} | {r['nnz_before']} "
            f"| {r['nnz_after']} | {100 * r['kept']:.1f}% | {_fmt(r['discrepancy'], '.4f')} "
            f"| {_fmt(r.get('accuracy'), '.4f')} | {conv} | {_fmt(r.get('seconds'), '.2f')} |")
    tb = sum(r["nnz_before"] for r in report["layers"])
    ta = sum(r["nnz_after"] for r in report["layers"])
    lines += ["", f"Total nonzeros: {tb} -> {ta} ({100 * ta / max(tb, 1):.1f}% kept)."]
    if report.get("accuracy_before") is not None:
        lines.append(f"Accuracy ({report.get('accuracy_on', 'evaluation set')}): "
                     f"{report['accuracy_before']:.4f} before, {report['accuracy_after']:.4f} after.")
    if report.get("seconds") is not None:
        lines.append(f"Pruning time: {report['seconds']:.1f} s.")
    bad = [r["layer"] for r in report["layers"] if r.get("converged") is False]
    if bad:
        lines.append(f"Warning: the solve did not converge for layer(s) {bad}; "
                     "the kernels are usable but not certified optimal.")
    return "\n".join(lines) + "\n"


def plot_report(report: dict, png: str | os.PathLike) -> Path:
    """Per-layer sparsity (nonzeros before/after) and discrepancy, as a PNG (atomic write)."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from nettrim_jax.io.checkpoint import atomic_open

    rows = report["layers"]
    names = [f"{r['layer']}:{r['type']}" for r in rows]
    pos = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.bar(pos - 0.2, [r["nnz_before"] for r in rows], 0.4, label="before")
    a.bar(pos + 0.2, [r["nnz_after"] for r in rows], 0.4, label="after Net-Trim")
    for p_, r in zip(pos, rows):
        a.annotate(f"{100 * r['kept']:.0f}%", (p_ + 0.2, r["nnz_after"]), ha="center", va="bottom", fontsize=8)
    a.set_xticks(pos, names)
    a.set_ylabel("nonzero weights (kernel + bias)")
    a.set_title("Sparsity per layer")
    a.legend()
    disc = [r["discrepancy"] if r["discrepancy"] is not None else np.nan for r in rows]
    b.plot(pos, disc, "o-", label="discrepancy")
    if report.get("epsilon") is not None:
        b.axhline(report["epsilon"], color="gray", ls=":", label="epsilon")
    b.set_ylim(bottom=0)
    b.set_xticks(pos, names)
    b.set_ylabel("||h_pruned - h|| / ||h||")
    b.set_title("Cumulative discrepancy per layer")
    b.legend()
    fig.suptitle(report.get("title") or "Net-Trim")
    fig.tight_layout()
    png = Path(png)
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    sys.exit(main())
