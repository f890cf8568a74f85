"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

``atomic_open(path)`` writes a temporary sibling and renames it onto ``path`` (``os.replace``,
atomic on POSIX and Windows) after an fsync; on any exception, KeyboardInterrupt included, the
temporary file is removed and ``path`` is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nettrim_jax.io.data import creation_mode

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_json", "atomic_write_bytes"]


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``path``; on a clean exit it is fsynced and renamed onto
    ``path``.  The file gets the permissions ``open(path, mode)`` would give (``path``'s own
    if it exists, else 0o666 minus the umask), not mkstemp's 0o600.  On any exception (or
    KeyboardInterrupt) the temporary file is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), creation_mode(path))  # mkstemp makes 0o600
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN/Inf are refused)."""
    text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default)
    atomic_write_text(path, _NUMBER_LIST.sub(_inline, text) + "\n")


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:\s*,\s*-?[\d.eE+-]+)*)\s*\]")


def _inline(m):
    """Put a list of numbers on one line: shapes read as [28, 28, 1], not one per line."""
    return "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
