"""An interrupted run's ``PruneState`` on disk, for ``nettrim prune --resume``.

One safetensors file, written atomically: the finished layers' dense-program kernels as
tensors ``"<layer index>"`` (stored exactly, so a resumed run continues from bit-identical
weights), and in the file's metadata the JSON of the scheme, every layer's outcome without
its kernel, and a ``fingerprint`` of what the run must share with its continuation (model,
data, settings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nettrim_jax.io.atomic import atomic_write_bytes
from nettrim_jax.io.checkpoint import CheckpointError
from nettrim_jax.network.problems import LayerOutcome
from nettrim_jax.network.prune import PruneState

__all__ = ["save_state", "load_state"]

FORMAT = "nettrim-jax-state"


def save_state(path: str | os.PathLike, state: PruneState, fingerprint: dict) -> None:
    """Write ``state`` and ``fingerprint`` (JSON-able) to ``path`` atomically."""
    from safetensors.numpy import save as st_save

    tensors: dict = {}
    rows: list[dict | None] = []
    for i, out in enumerate(state.outcomes):
        if out is None:
            rows.append(None)
            continue
        if out.kernel is not None:
            tensors[str(i)] = np.ascontiguousarray(out.kernel)
        rows.append({k: v for k, v in out._asdict().items() if k != "kernel"})
    meta = {"format": FORMAT, "scheme": state.scheme, "outcomes": rows, "fingerprint": fingerprint}
    atomic_write_bytes(path, st_save(tensors, metadata={"state": json.dumps(meta)}))


def load_state(path: str | os.PathLike) -> tuple[PruneState, dict]:
    """``(PruneState, fingerprint)`` from ``path``; a damaged file is a ``CheckpointError``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "numpy") as f:
            meta = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        outcomes = tuple(
            None if row is None else LayerOutcome(kernel=tensors.get(str(i)), **row)
            for i, row in enumerate(meta["outcomes"])
        )
        return PruneState(meta["scheme"], outcomes), meta["fingerprint"]
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable nettrim run state ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); start over with --force"
        ) from None
