"""The command line's persistent compilation cache: XLA programs kept on disk between runs.

Every ``nettrim`` command runs in a fresh process, and a first prune of a small model spends
most of its time compiling (the layer solver and the l0 finish once per layer shape, the
joint refit's pass once per model, and a small program per eager op and shape).  With JAX's
persistent cache (``jax_compilation_cache_dir``), a later run of the same shapes loads those
programs instead of compiling them.  Every program is written (``MIN_COMPILE_SECONDS`` 0;
JAX's ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``, when set, rules instead): on a 2-core
CPU ``nettrim demo`` took 16.6-16.7 s uncached and 8.3-9.0 s with a warm cache of 124 entries
(0.7 MB), 13.6-14.4 s when only programs that compiled in >= 0.2 s were kept; a BatchNorm
ResNet's prune in a fresh process 18.7 s, 12.0 s warm (144 entries, 1.1 MB).  The folder
grows by its entries for each new layer shape and may be deleted at any time (JAX's size cap
needs the ``filelock`` package, which this one does not install).

Where: ``--compile-cache DIR``, else ``$NETTRIM_COMPILE_CACHE``, else
JAX's ``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/nettrim-jax/xla``
(``~/.cache/nettrim-jax/xla``; none without a home folder); ``--no-compile-cache``, or the
variable set to ``off``, turns it off.  JAX writes an entry in place: one left truncated by a
killed run makes JAX warn and compile that program again (delete the folder to clear it).  A folder that cannot be made is skipped with
a warning: the run goes on uncached.  The library's ``prune`` leaves JAX's configuration to
its caller (``jax.config.update("jax_compilation_cache_dir", ...)``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

__all__ = ["ENV", "MIN_COMPILE_SECONDS", "cache_dir", "enable"]

ENV = "NETTRIM_COMPILE_CACHE"
MIN_COMPILE_SECONDS = 0.0
_OFF = ("", "0", "off", "none", "false", "no")
_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def cache_dir(option: str | None = None, disabled: bool = False) -> Path | None:
    """The cache folder the command line uses: ``option`` (``--compile-cache``), else
    ``$NETTRIM_COMPILE_CACHE``, else ``$JAX_COMPILATION_CACHE_DIR``, else the user's cache
    folder; None when ``disabled``, the variable says off, or there is no home folder."""
    if disabled:
        return None
    if option:
        return Path(option).expanduser()
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # JAX's own, already set by the user
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except (RuntimeError, KeyError):  # no home folder (an anonymous user in a container)
        return None
    return Path(base) / "nettrim-jax" / "xla"


def enable(path: Path | None) -> Path | None:
    """Point JAX's persistent compilation cache at ``path`` (made if missing); returns the
    folder in use, or None (``path`` None, or a folder that cannot be made: warned)."""
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        warnings.warn(f"compile cache off: cannot use {path} ({e})", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if _MIN_TIME_ENV not in os.environ:  # JAX's own variable, when set, is left to rule
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
