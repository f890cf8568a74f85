"""``nettrim prune --model pkg.module:factory --params DIR``: the user's own Flax model.

The factory (called with no arguments) builds the model: an ``nnx.Module``, or a Linen
``(module, variables)`` pair whose variables are a template of the saved ones.  DIR is an
Orbax checkpoint of ``nnx.state(model)`` (or of the Linen variables) written with
``orbax.checkpoint.StandardCheckpointer().save(DIR, state)``.  The pruned state is written
the same way to OUT/model, atomically (a temporary folder in OUT, then a rename), with
OUT/report.md and OUT/report.json.  Every failure before the report (a bad factory path, a
checkpoint that does not match the model, a layer that cannot be pruned) is a one-line
``UsageError`` and leaves nothing in OUT.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from nettrim_jax.cli.calibration import UsageError, load_calibration, one_line
from nettrim_jax.cli.options import prune_options
from nettrim_jax.cli.outputs import EXIT_NOT_CONVERGED, MODEL_DIR, check_out, report_dict, write_state_run

__all__ = ["load_factory", "restore", "save_state", "cmd_prune_model"]


def load_factory(spec: str):
    """``pkg.module:factory`` -> what the factory returns (an nnx.Module or a Linen pair)."""
    import flax.linen as nn
    from flax import nnx

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"--model {spec!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise UsageError(f"--model {spec!r}: cannot import {mod_name!r} ({one_line(e)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--model {spec!r}: {mod_name!r} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's code: one line
        raise UsageError(f"--model {spec!r}: the factory failed ({type(e).__name__}: {one_line(e)})") from None
    linen = isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module)
    if not (isinstance(model, nnx.Module) or linen):
        raise UsageError(
            f"--model {spec!r}: the factory returned {type(model).__name__}, not an "
            "nnx.Module or a Linen (module, variables) pair"
        )
    return model


def _template(model):
    from flax import nnx

    return nnx.state(model) if isinstance(model, nnx.Module) else model[1]


def restore(model, params: str | os.PathLike):
    """The model with its state read from the Orbax checkpoint ``params`` (shapes and
    structure checked against the factory's model)."""
    import orbax.checkpoint as ocp
    from flax import nnx

    path = Path(params).absolute()
    if not path.is_dir():
        raise UsageError(f"--params {params}: no such checkpoint folder")
    template = _template(model)
    try:
        state = ocp.StandardCheckpointer().restore(path, template)
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a mismatch
        raise UsageError(
            f"--params {params}: does not match the model built by --model ({type(e).__name__}: {one_line(e)})"
        ) from None
    want = jax.tree.map(_signature, template)
    got = jax.tree.map(_signature, state)
    same = str(jax.tree.structure(want)) == str(jax.tree.structure(got))
    if not same or jax.tree.leaves(want) != jax.tree.leaves(got):
        raise UsageError(
            f"--params {params}: its arrays do not match the model built by --model (different shapes or structure)"
        )
    if isinstance(model, nnx.Module):
        nnx.update(model, state)
        return model
    return (model[0], state)


def _signature(a) -> tuple:
    """(shape, dtype name) of a leaf; PRNG key arrays (an ``nnx.Dropout``'s or an
    ``nnx.Rngs``' state) have a dtype but no NumPy form."""
    dtype = getattr(a, "dtype", None)
    return tuple(np.shape(a)), str(dtype if dtype is not None else np.asarray(a).dtype)


def save_state(out: Path, state) -> Path:
    """Write ``state`` as an Orbax checkpoint to OUT/model atomically; returns the path."""
    import orbax.checkpoint as ocp

    out = out.absolute()
    tmp = out / f".{MODEL_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp, state)
    ckptr.wait_until_finished()
    dest = out / MODEL_DIR
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def accuracy_of(model, x, y) -> float | None:
    """Top-1 accuracy of the model in inference mode (an NNX copy after ``.eval()``:
    BatchNorm on its running statistics, Dropout off), or None without labels."""
    from flax import nnx

    if y is None:
        return None
    if isinstance(model, nnx.Module):
        work = nnx.clone(model)
        work.eval()
        out = work(x)
    else:
        out = model[0].apply(model[1], x)
    out = np.asarray(out)
    if out.ndim != 2 or out.shape[0] != len(y):
        return None
    return float(np.mean(np.argmax(out, -1) == y))


def cmd_prune_model(args, console) -> int:
    """``nettrim prune --model ... --params ...`` (module doc)."""
    from flax import nnx

    from nettrim_jax import prune

    if not args.params:
        raise UsageError("--model needs --params DIR (an Orbax checkpoint of the model's state)")
    if args.checkpoint:
        raise UsageError("pass either CHECKPOINT (model.json) or --model/--params, not both")
    if args.resume:
        raise UsageError("--resume applies to model.json checkpoints only")
    if args.compact:
        raise UsageError("--compact applies to model.json checkpoints only (a --model state keeps its shapes)")
    out = Path(args.out)
    check_out(out, args)
    model = restore(load_factory(args.model), args.params)
    x, y = load_calibration(args.data, None, key=args.key, labels=args.labels, split=args.split, samples=args.samples)
    xe, ye, acc_on = x, y, "calibration data"
    if args.eval_data:
        xe, ye = load_calibration(args.eval_data, None, key=args.key, split="test")
        if ye is None:
            raise UsageError(f"{args.eval_data}: no labels to measure accuracy with")
        acc_on = str(args.eval_data)
    t0 = time.perf_counter()
    try:
        res = prune(model, x, **prune_options(args))
    except NotImplementedError as e:
        raise UsageError(f"--model {args.model}: {one_line(e)}") from None
    seconds = time.perf_counter() - t0
    pruned = res.model if isinstance(res.model, nnx.Module) else (model[0], res.model)
    run = {
        "command": "prune",
        "title": f"Net-Trim ({args.scheme}) of {args.model}",
        "model": args.model,
        "params": str(args.params),
        "data": str(args.data),
        "samples": int(x.shape[0]),
        "accuracy_on": acc_on,
        "accuracy_before": accuracy_of(model, xe, ye),
        "accuracy_after": accuracy_of(pruned, xe, ye),
        "seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    state = nnx.state(pruned) if isinstance(pruned, nnx.Module) else pruned[1]
    dest = save_state(out, state)
    write_state_run(out, report_dict(res, run), dest, console)
    if args.strict and not all(layer.converged for layer in res.report.layers):
        console.note("some layer did not converge (--strict): exit 3")
        return EXIT_NOT_CONVERGED
    return 0
