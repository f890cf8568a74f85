"""The command line's persistent compilation cache (``cli.compile_cache``): where it goes,
that a second process reuses what the first compiled, and that a folder it cannot use
leaves the run uncached rather than failed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_setup import prune_args, write_setup

from nettrim_jax.cli import compile_cache


def _nettrim(args, env_cache=None, **extra_env):
    env = {**os.environ, **extra_env}
    if env_cache is None:
        env.pop(compile_cache.ENV, None)
    else:
        env[compile_cache.ENV] = env_cache
    return subprocess.run(
        [sys.executable, "-m", "nettrim_jax.cli", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_folder_comes_from_the_option_the_variable_or_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.cache_dir(str(tmp_path / "opt")) == tmp_path / "opt"
    assert compile_cache.cache_dir() == tmp_path / "env"
    assert compile_cache.cache_dir(str(tmp_path / "opt"), disabled=True) is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_dir() is None
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "nettrim-jax" / "xla"


def test_a_second_run_loads_the_programs_the_first_compiled(tmp_path):
    """Two processes prune the same checkpoint with one cache folder: the first writes its
    programs, the second loads every one of them
    (JAX logs each hit with its key under JAX_LOG_COMPILES) and writes the same result;
    ``--no-compile-cache`` writes none."""
    root = tmp_path / "setup"
    root.mkdir()
    write_setup(root)
    cache = tmp_path / "cache"
    # every program cached, however fast it compiled here (JAX's variable overrides the floor)
    first = _nettrim(
        prune_args(root, tmp_path / "a", "--compile-cache", cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )
    assert first.returncode == 0, first.stderr
    written = [p.name.removesuffix("-cache") for p in cache.iterdir() if p.name.endswith("-cache")]
    assert written, "nothing was cached"
    second = _nettrim(prune_args(root, tmp_path / "b"), env_cache=str(cache), JAX_LOG_COMPILES="1")
    assert second.returncode == 0, second.stderr
    hits = [line for line in second.stderr.splitlines() if "Persistent compilation cache hit" in line]
    assert all(any(key in line for line in hits) for key in written), (written, hits)
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert [r["nnz_after"] for r in a["layers"]] == [r["nnz_after"] for r in b["layers"]]
    off = tmp_path / "off"
    third = _nettrim(prune_args(root, tmp_path / "c", "--no-compile-cache"), env_cache=str(off))
    assert third.returncode == 0, third.stderr
    assert not off.exists()


def test_a_cache_folder_that_cannot_be_made_leaves_the_run_uncached(tmp_path):
    root = tmp_path / "setup"
    root.mkdir()
    write_setup(root)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = ["prune", root / "ckpt", "--data", root / "calib.npz", "--epsilon", "0.05", "--out", tmp_path / "o"]
    p = _nettrim([*args, "--max-iters", "400", "--compile-cache", blocker / "xla"])  # not quiet: the warning shows
    assert p.returncode == 0, p.stderr
    assert "nettrim: warning: compile cache off: cannot use" in p.stderr
    assert (tmp_path / "o" / "report.json").exists()


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch, tmp_path):
    """No test here writes to the user's cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(Path(tmp_path) / "home"))


@pytest.mark.parametrize(
    "argv, quiet, folder, off",
    [
        (["--no-compile-cache", "report", "o"], False, None, True),
        (["report", "o", "--no-compile-cache"], False, None, True),
        (["--compile-cache", "/tmp/x", "report", "o"], False, "/tmp/x", False),
        (["demo", "--compile-cache", "/tmp/y"], False, "/tmp/y", False),
        (["-q", "demo"], True, None, False),
        (["demo"], False, None, False),
    ],
)
def test_the_common_options_hold_before_or_after_the_command(argv, quiet, folder, off):
    """A command's parser does not overwrite what was given before its name."""
    from nettrim_jax.cli.app import build_parser

    args = build_parser().parse_args(argv)
    assert (args.quiet, args.compile_cache, args.no_compile_cache) == (quiet, folder, off)
