"""``nettrim``: the command line.

    nettrim demo [--dataset digits|spirals] [--out DIR]
    nettrim prune CHECKPOINT --data DATA --scheme cascade|parallel --epsilon E --out OUT [--resume]
    nettrim prune --model pkg.module:factory --params ORBAX_DIR --data DATA --epsilon E --out OUT
    nettrim sweep CHECKPOINT --data DATA --epsilon 0.02,0.05,0.1 | --sparsity 0.5,0.9 [--seeds 0,1,2] --out OUT
    nettrim report OUT [--plot [PNG]] [--json]

Exit codes (stable; scripts may rely on them):

    0  success
    1  internal error: an unexpected error inside nettrim or a library (a bug; please report)
    2  usage or input error: bad arguments, unreadable/corrupt/mismatched checkpoint or data,
       NaN/Inf, an empty calibration set, epsilon < 0, gamma < 1, unsupported layers, an OUT
       folder that already holds a result (pass --force) or an unfinished one (--resume),
       an OUT that cannot be written (checked before any work), permission denied
    3  finished, results written, but with --strict some layer's solve did not converge
    4  the pruned model collapsed (its outputs no longer depend on the input); nothing written
       (sweep: every point collapsed; a sweep records a collapsed point and goes on)
    130 interrupted (Ctrl-C); finished layers of a cascade run are kept for --resume

Errors print one line, ``nettrim: error: <message>``, on stderr; set ``NETTRIM_DEBUG=1`` for
a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import NoReturn

from nettrim_jax.cli.calibration import UsageError, load_calibration, one_line
from nettrim_jax.cli.commands import cmd_prune, cmd_report
from nettrim_jax.cli.compile_cache import cache_dir, enable
from nettrim_jax.cli.demo import cmd_demo
from nettrim_jax.cli.outputs import (  # noqa: F401  (the exit codes are app's public names)
    EXIT_COLLAPSED,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    EXIT_USAGE,
    REPORT_PNG,
)
from nettrim_jax.cli.sweep import add_parser as add_sweep_parser
from nettrim_jax.cli.sweep import cmd_sweep
from nettrim_jax.network.options import JOINT_AUTO_ITERS, JOINT_AUTO_MIN_LOSS

__all__ = ["main", "build_parser", "load_calibration", "UsageError"]


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

        return tqdm(iterable, disable=True if self.quiet else None, file=sys.stderr, dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------- main


def _joint_iterations(text: str) -> int | str:
    """``--joint-refit``'s value: "auto" or a count of iterations >= 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an iteration count >= 0, got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, suppressed: bool) -> None:
    """The options every command takes, on the top-level parser (with their defaults) and on
    each command's (``suppressed``: no defaults, so a command's parser does not overwrite
    what was given before its name; the same action objects must not be shared, as
    argparse's ``parents`` would)."""
    flag: object = argparse.SUPPRESS if suppressed else False
    parser.add_argument("-q", "--quiet", action="store_true", default=flag, help="no progress bars or tables")
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=argparse.SUPPRESS if suppressed else None,
        help="keep compiled programs in DIR between runs (default $NETTRIM_COMPILE_CACHE, else "
        "~/.cache/nettrim-jax/xla): a later run of the same shapes skips their compilation",
    )
    parser.add_argument("--no-compile-cache", action="store_true", default=flag, help="compile every program afresh")


def build_parser() -> argparse.ArgumentParser:
    from nettrim_jax import __version__

    # the options every command takes, before or after its name (``_add_common``)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppressed=True)

    p = argparse.ArgumentParser(
        prog="nettrim",
        description="Net-Trim convex pruning of trained ReLU networks.",
        epilog="exit codes: 0 ok, 1 internal error (a bug), 2 bad usage or input, "
        "3 not converged (--strict), 4 the pruned model collapsed (nothing written), 130 interrupted",
    )
    _add_common(p, suppressed=False)
    p.add_argument("--version", action="version", version=f"nettrim-jax {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser(
        "demo",
        parents=[common],
        help="train, prune and plot a small network (no download)",
        description="Train a small ReLU network on embedded data, prune it with cascade "
        "Net-Trim, print the per-layer table and write a plot.",
    )
    d.add_argument(
        "--dataset",
        choices=("digits", "spirals"),
        default="digits",
        help="scikit-learn's 8x8 digits (64-64-32-10 MLP) or the nested spirals (2-64-64-2)",
    )
    d.add_argument("--out", default="nettrim-demo", help="output folder (default ./nettrim-demo)")
    d.add_argument(
        "--epsilon",
        type=float,
        default=0.05,
        help="relative misfit of the first layer, ||XU - Y||_F <= epsilon ||Y||_F; later "
        "layers get gamma = 1.1 times the original weights' misfit (default 0.05)",
    )
    d.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--calibration", type=int, default=None, help="prune on the first N training samples (default: all)")
    d.add_argument("--max-iters", type=int, default=None, help="solver iteration cap per layer")
    d.add_argument("--no-plot", action="store_true", help="skip the figure")
    d.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty --out folder that is not an earlier demo output (its contents are deleted)",
    )

    q = sub.add_parser(
        "prune",
        parents=[common],
        help="prune a saved model on calibration data",
        description="Prune a nettrim checkpoint on calibration data; writes OUT/model "
        "(pruned checkpoint), OUT/report.md and OUT/report.json.",
    )
    q.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        nargs="?",
        default=None,
        help="checkpoint folder (model.json + weights); or use --model/--params",
    )
    q.add_argument(
        "--model",
        metavar="PKG.MODULE:FACTORY",
        default=None,
        help="your own Flax model: a function returning an nnx.Module (or a Linen "
        "(module, variables) pair); its state is read from --params",
    )
    q.add_argument(
        "--params",
        metavar="DIR",
        default=None,
        help="with --model: an Orbax checkpoint of nnx.state(model) (StandardCheckpointer); "
        "the pruned state is written the same way to OUT/model",
    )
    q.add_argument(
        "--data", required=True, help=".npy / .npz file or a folder of MNIST IDX files with calibration inputs"
    )
    q.add_argument("--key", help="array name in a .npz file holding the inputs")
    q.add_argument("--labels", help=".npy file of integer labels (for the accuracy columns)")
    q.add_argument("--split", choices=("train", "test"), default="train", help="IDX split (default train)")
    q.add_argument("--samples", type=int, help="use the first N samples only")
    q.add_argument("--scheme", choices=("cascade", "parallel"), default="cascade")
    q.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="relative misfit ||XU - Y||_F <= epsilon ||Y||_F: of every layer (parallel) "
        "or of the first layer (cascade; later layers follow --gamma); "
        "give this or --sparsity",
    )
    q.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="target fraction of weights removed (0 <= S < 1); each layer's epsilon is "
        "searched to hit it (prune's sparsity=)",
    )
    q.add_argument(
        "--structure",
        choices=("unstructured", "units", "neurons", "channels"),
        default="unstructured",
        help="units/neurons/channels: structured Net-Trim, whole input units and channels removed",
    )
    q.add_argument("--pattern", default=None, metavar="N:M", help="N:M sparsity (e.g. 2:4), refit on the pattern")
    q.add_argument(
        "--compact", action="store_true", help="save the pruned model with dead units and channels physically removed"
    )
    q.add_argument(
        "--relu-budget",
        choices=("output", "omega"),
        default="output",
        help="what a ReLU layer's epsilon bounds: output (default) the ReLU output's error, "
        "omega the paper's program (misfit on Y > 0, XU <= 0 exactly elsewhere)",
    )
    q.add_argument(
        "--reweight",
        type=int,
        default=0,
        metavar="R",
        help="rounds of reweighted l1 per layer (default 0): sparser at one epsilon, closer at one --sparsity",
    )
    q.add_argument(
        "--finish",
        choices=("auto", "l0", "none"),
        default="auto",
        help="l0: after the refit, hard-thresholding steps at each layer's count that move its "
        "support while they lower the refit objective; none: the refit alone; auto (default): "
        "l0 with --refit and no --pattern",
    )
    q.add_argument(
        "--joint-refit",
        type=_joint_iterations,
        default="auto",
        metavar="N|auto",
        help="at most N L-BFGS iterations re-fitting every pruned layer's kept weights together to the "
        "original model's output on the calibration data (counts unchanged); 0: off; auto (default): "
        f"with --refit, {JOINT_AUTO_ITERS} iterations (on a model with a convolution only when the layer-wise "
        f"relative squared output error is >= {JOINT_AUTO_MIN_LOSS:g})",
    )
    q.add_argument(
        "--allocation",
        choices=("scores", "uniform", "epsilon"),
        default="scores",
        help="how --sparsity is split over layers: scores (default), uniform, or epsilon (one epsilon for all layers)",
    )
    q.add_argument(
        "--gamma",
        type=float,
        default=1.1,
        help="cascade: epsilon_l = gamma x the original weights' misfit on the pruned inputs (>= 1; default 1.1)",
    )
    q.add_argument("--solver", choices=("admm", "pdhg"), default=None)
    q.add_argument("--max-iters", type=int, default=None, help="solver iteration cap per layer")
    q.add_argument(
        "--max-patches",
        type=int,
        default=4096,
        help="conv layers: at most this many random patch rows per program (default 4096)",
    )
    q.add_argument(
        "--eval-data",
        help="labelled .npz / IDX folder for the accuracy columns (default: the calibration data, if it has labels)",
    )
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--resume", action="store_true", help="continue an interrupted cascade run in OUT")
    q.add_argument("--force", action="store_true", help="overwrite a result already in OUT")
    q.add_argument("--strict", action="store_true", help="exit 3 if some layer did not converge")
    q.add_argument(
        "--refit",
        action="store_true",
        help="refit each layer's kept weights on Net-Trim's support (nettrim_jax.refit_layer)",
    )
    q.add_argument(
        "--output-epsilon",
        type=float,
        default=None,
        help="cascade: relative misfit budget of the (linear) output layer, which is then refit "
        "toward the original outputs from the pruned features instead of following "
        "--gamma; bounds the output error (prune's output_epsilon)",
    )

    add_sweep_parser(sub, common)

    r = sub.add_parser(
        "report",
        parents=[common],
        help="print a stored report",
        description="Print OUT/report.md (or the JSON); --plot writes the per-layer sparsity and discrepancy figure.",
    )
    r.add_argument("out", metavar="OUT", help="a folder written by `nettrim prune` or `nettrim demo`")
    r.add_argument("--json", action="store_true", help="print the JSON report instead")
    r.add_argument(
        "--plot", nargs="?", const="", default=None, metavar="PNG", help=f"write the figure (default OUT/{REPORT_PNG})"
    )
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
    from nettrim_jax.network.report import CollapsedModelError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # restored on exit by catch_warnings
            # the per-layer table reports convergence; the solver's warning would repeat it
            warnings.filterwarnings("ignore", message="Net-Trim solve did not converge")
            if args.quiet:
                warnings.simplefilter("ignore")
            enable(cache_dir(args.compile_cache, args.no_compile_cache))  # before anything compiles
            return {"demo": cmd_demo, "prune": cmd_prune, "sweep": cmd_sweep, "report": cmd_report}[args.command](
                args, console
            )
    except KeyboardInterrupt:
        print("nettrim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CollapsedModelError as e:  # nothing written: a constant model is no result
        print(f"nettrim: error: {one_line(e)}", file=sys.stderr)
        return EXIT_COLLAPSED
    except (UsageError, CheckpointError, ValueError, FileNotFoundError, PermissionError) as e:
        _debug_traceback()
        print(f"nettrim: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        _debug_traceback()
        print(
            f"nettrim: error: unexpected {type(e).__name__}: {one_line(e)} (set NETTRIM_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """Process entry point (the ``nettrim`` script, ``python -m nettrim_jax.cli``): exit with
    ``main``'s code.

    After Ctrl-C the process ends with ``os._exit(130)`` once stdout/stderr are flushed,
    skipping the interpreter's teardown: a SIGINT can interrupt the main thread while XLA
    still compiles or runs a program on its own threads, and tearing down jax's client
    under that work crashed the process (SIGSEGV) in most tries.  Everything worth keeping
    (OUT/partial.state) is written atomically and fsynced before that point.
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
    print(f"nettrim: warning: {one_line(message)}", file=sys.stderr, flush=True)


def _debug_traceback():
    if os.environ.get("NETTRIM_DEBUG"):
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
