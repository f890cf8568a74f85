"""``nettrim demo``: train a small ReLU network on embedded data, prune it through
``nettrim_jax.prune``, and write a demo folder (staged: an interrupted demo leaves nothing
half-filled)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from nettrim_jax.cli.calibration import UsageError
from nettrim_jax.cli.options import solver_options
from nettrim_jax.cli.outputs import EXIT_OK, REPORT_JSON, check_writable, report_dict, write_checkpoint_run

# ----------------------------------------------------------------------------- demo


def _demo_data(args):
    from nettrim_jax import training

    if args.dataset == "digits":
        try:
            xtr, ytr, xte, yte = training.load_digits_split(seed=args.seed)
        except ImportError:
            raise UsageError(
                "the digits demo needs scikit-learn (pip install scikit-learn); or run `nettrim demo --dataset spirals`"
            ) from None
        return xtr, ytr, xte, yte, (64, 64, 32, 10), "scikit-learn digits 8x8"
    from nettrim_jax.io.data import nested_spirals

    x, y = nested_spirals(2000, turns=1.5, noise=0.02, seed=args.seed)
    return x[:1500], y[:1500], x[1500:], y[1500:], (2, 64, 64, 2), "nested spirals"


def cmd_demo(args, console) -> int:
    if not args.epsilon >= 0:
        raise UsageError(f"--epsilon must be >= 0, got {args.epsilon}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.calibration is not None and args.calibration < 1:
        raise UsageError(f"--calibration must be >= 1, got {args.calibration}")
    out = Path(args.out)
    _check_demo_out(out, args.force)
    check_writable(out)
    with _staged_folder(out) as work:
        return _demo(args, console, out, work)


def _check_demo_out(out: Path, force: bool) -> None:
    """Refuse an --out that is a file, or a non-empty folder that is not an earlier demo
    output (unless --force): the demo replaces the whole folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if force or not out.is_dir() or not any(out.iterdir()) or _is_demo_output(out):
        return
    raise UsageError(
        f"{out}: not empty and not an earlier demo output; pass --force to replace it or pick another --out"
    )


def _is_demo_output(out: Path) -> bool:
    try:
        stored = json.loads((out / REPORT_JSON).read_text("utf-8"))
        return (stored.get("run") or stored).get("command") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _staged_folder(out: Path):
    """Yield a new hidden sibling folder of ``out`` to fill; on a clean exit it replaces
    ``out`` (the old folder is moved aside, then deleted), on any exception (Ctrl-C
    included) it is deleted and ``out`` is left as it was: no half-filled folder."""
    import os
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


def _demo(args, console, out: Path, work: Path) -> int:
    """The demo proper: writes into ``work``, which becomes ``out`` once it returns."""
    import jax

    from nettrim_jax import prune, training
    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.io.convert import from_model

    t_all = time.perf_counter()
    xtr, ytr, xte, yte, sizes, what = _demo_data(args)
    console.note(
        f"training a {'-'.join(map(str, sizes))} ReLU MLP on {what} "
        f"({len(ytr)} train / {len(yte)} test, {args.steps} steps, {jax.default_backend()})"
    )
    model = training.make_mlp(sizes, seed=args.seed)
    training.train_classifier(
        model, xtr, ytr, steps=args.steps, learning_rate=1e-2 if args.dataset == "spirals" else 3e-3, seed=args.seed
    )
    layers, input_shape = from_model(model, xtr[:8])
    xtr, ytr = xtr[: args.calibration], ytr[: args.calibration]
    ck.save(work / "original", layers, input_shape, {"dataset": args.dataset, "sizes": list(sizes)})
    np.savez(work / "calibration.npz", x=xtr, y=ytr)
    np.savez(work / "test.npz", x=xte, y=yte)

    console.note(
        f"pruning with cascade Net-Trim (epsilon {args.epsilon}, gamma 1.1) on the {len(ytr)} training samples"
    )
    t0 = time.perf_counter()
    res = prune(
        model, xtr, scheme="cascade", epsilon=args.epsilon, gamma=1.1, progress=not args.quiet, **solver_options(args)
    )
    pruned, _ = from_model(res.model, xtr[:8])
    run = {
        "command": "demo",
        "title": f"nettrim demo: {'-'.join(map(str, sizes))} MLP on {what}, cascade Net-Trim",
        "data": what,
        "samples": len(ytr),
        "accuracy_on": f"{len(yte)} held-out samples",
        "accuracy_before": training.accuracy(model, xte, yte),
        "accuracy_after": training.accuracy(res.model, xte, yte),
        "seconds": time.perf_counter() - t0,
        "training_steps": args.steps,
        "seed": args.seed,
    }
    write_checkpoint_run(
        work,
        pruned,
        input_shape,
        {"pruned_from": str(out / "original"), "scheme": "cascade", "epsilon": args.epsilon, "gamma": 1.1},
        report_dict(res, run),
        console,
        plot=not args.no_plot and _has_matplotlib(console),
        shown=out,
    )
    console.note(
        f"done in {time.perf_counter() - t_all:.1f} s; next: nettrim report {out} --plot, or "
        f"nettrim prune {out / 'original'} --data {out / 'calibration.npz'} --epsilon 0.05 --out pruned"
    )
    return EXIT_OK


def _has_matplotlib(console) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.note("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return False
    return True
