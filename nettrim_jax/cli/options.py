"""``nettrim prune``'s flags, checked once and turned into ``nettrim_jax.prune`` keywords.

``RUN_FLAGS`` names the flags that decide a run's result: the keywords are built from them
(``prune_options``) and so is the fingerprint a resumed run must share with the interrupted
one (``fingerprint``), from one list.
"""

from __future__ import annotations

import hashlib

import numpy as np

from nettrim_jax.cli.calibration import UsageError

# The flags (argparse dest names) that decide what a prune computes.
RUN_FLAGS = (
    "scheme",
    "epsilon",
    "gamma",
    "solver",
    "max_iters",
    "max_patches",
    "refit",
    "output_epsilon",
    "sparsity",
    "allocation",
    "structure",
    "pattern",
    "relu_budget",
    "reweight",
    "finish",
    "joint_refit",
)


def solver_options(args) -> dict:
    return {} if getattr(args, "max_iters", None) is None else {"max_iters": args.max_iters}


def prune_options(args) -> dict:
    """``nettrim prune``'s options as ``nettrim_jax.prune`` keywords (with ``--sparsity`` and
    no ``--epsilon``, epsilon 0.05 only seeds the search)."""
    run = {flag: getattr(args, flag) for flag in RUN_FLAGS if flag not in ("max_iters", "refit", "solver")}
    return {
        **run,
        "epsilon": 0.05 if args.epsilon is None else args.epsilon,
        "solver": args.solver or "admm",
        "refit": args.refit,
        "finish": None if args.finish == "none" else args.finish,
        "progress": not args.quiet,
        **solver_options(args),
    }


def fingerprint(args, ckpt_sha: str, x) -> dict:
    """What a resumed run must share with the interrupted one: the checkpoint's and the
    data's SHA-256 and every flag of ``RUN_FLAGS`` as given."""
    return {
        "checkpoint_sha256": ckpt_sha,
        "data_sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
        **{flag: bool(args.refit) if flag == "refit" else getattr(args, flag) for flag in RUN_FLAGS},
    }


def check_args(args) -> None:
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
