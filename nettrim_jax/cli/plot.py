"""The per-layer figure of a stored report: nonzeros before/after and the discrepancy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nettrim_jax.cli.calibration import UsageError


def plot_report(report: dict, png: str | os.PathLike) -> Path:
    """Per-layer sparsity (nonzeros before/after) and discrepancy of a ``report.json`` dict,
    as a PNG (atomic write)."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from nettrim_jax.io.atomic import atomic_open

    rows = report["layers"]
    names = [f"{r['name']}\n{r['kind']}" for r in rows]
    pos = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.bar(pos - 0.2, [r["nnz_before"] for r in rows], 0.4, label="before")
    a.bar(pos + 0.2, [r["nnz_after"] for r in rows], 0.4, label="after Net-Trim")
    for p_, r in zip(pos, rows):
        kept = r["nnz_after"] / max(1, r["nnz_before"])
        a.annotate(f"{100 * kept:.0f}%", (p_ + 0.2, r["nnz_after"]), ha="center", va="bottom", fontsize=8)
    a.set_xticks(pos, names)
    a.set_ylabel("nonzero weights (kernel + bias)")
    a.set_title("Sparsity per layer")
    a.legend()
    b.plot(pos, [r["discrepancy"] for r in rows], "o-", label="discrepancy")
    eps = (report.get("options") or {}).get("epsilon")
    if isinstance(eps, (int, float)):
        b.axhline(eps, color="gray", ls=":", label="epsilon")
    b.set_ylim(bottom=0)
    b.set_xticks(pos, names)
    b.set_ylabel("||z_pruned - z|| / ||z||")
    b.set_title("Discrepancy per layer (along the pruned network)")
    b.legend()
    fig.suptitle((report.get("run") or {}).get("title") or "Net-Trim")
    fig.tight_layout()
    png = Path(png)
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return png
