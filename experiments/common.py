"""Helpers shared by the experiment scripts: arguments, result files, markdown tables."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every experiment takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny size for CI (seconds to a minute)")
    p.add_argument("--out", default=None,
                   help="results folder (default experiments/results, or experiments/results/quick "
                        "with --quick)")
    p.add_argument("--seed", type=int, default=0)
    return p


def out_dir(args) -> Path:
    """Where results go: --out, else results/ (full) or results/quick/ (--quick)."""
    path = Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


def table(headers, rows, floatfmt: str = "{:.4g}") -> str:
    """A GitHub markdown table; floats formatted with ``floatfmt``."""
    def cell(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def provenance(args, started: float, seconds: float | None = None) -> str:
    """One line saying how and where the results were produced (``seconds`` overrides the
    time since ``started``, e.g. for a report rebuilt from saved records)."""
    mode = "quick (CI size)" if args.quick else "full"
    seconds = time.time() - started if seconds is None else seconds
    return (f"_Mode: {mode}; seed {args.seed}; {seconds:.0f} s on "
            f"{platform.machine()} ({os.cpu_count()} CPU cores), "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._")


def quiet_solver_warnings():
    """Silence ``solve_layer``'s non-convergence warning (sweeps count it themselves)."""
    import warnings
    warnings.filterwarnings("ignore", message="Net-Trim solve did not converge")


def savefig(fig, path: Path):
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
