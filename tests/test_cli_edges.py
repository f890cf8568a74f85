"""Command-line edges a newcomer hit (issue 16): unwritable --out, clean warnings, complete
reports, demo --out safety, small messages.  In-process ``cli.main`` runs, tiny models."""

import json
import os
import warnings

import pytest
from cli_setup import prune_args, run, write_setup

from nettrim_jax.cli import app as cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    write_setup(root)
    return root


@pytest.fixture
def solves(monkeypatch):
    """Counts layer solves (every route of prune reaches solver.layer.solve_layer)."""
    import nettrim_jax.solver.layer as layer_mod

    calls = []
    real = layer_mod.solve_layer

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(layer_mod, "solve_layer", counted)
    for mod in ("problems", "cascade"):  # targets solves through problems.jitted_solver
        monkeypatch.setattr(f"nettrim_jax.network.{mod}.solve_layer", counted)
    return calls


# ----------------------------------------------------------------------------- item 4


def test_out_beneath_a_file_is_refused_before_any_solve(setup, tmp_path, capsys, solves):
    """Fails even as root: a regular file cannot be a parent folder."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = run(prune_args(setup, blocker / "out"), capsys)
    assert rc == cli.EXIT_USAGE
    assert err == f"nettrim: error: {blocker / 'out'}: cannot create it: {blocker} is not a folder\n"
    assert solves == []


def test_out_without_write_permission_is_refused_before_any_solve(setup, capsys, solves):
    """/sys refuses new files even to root (a read-only sysfs); skipped where it does not."""
    import tempfile

    try:
        os.unlink(tempfile.mkstemp(dir="/sys")[1])
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    rc, _, err = run(prune_args(setup, "/sys/nettrim-out"), capsys)
    assert rc == cli.EXIT_USAGE
    assert err.startswith("nettrim: error: /sys/nettrim-out: cannot write there (") and err.count("\n") == 1
    assert solves == []
    assert not os.path.exists("/sys/nettrim-out")


# ----------------------------------------------------------------------------- item 7


def test_warnings_print_as_one_clean_line(setup, capsys, monkeypatch):
    def warn(args, console):
        warnings.warn("first line\nsecond line", UserWarning, stacklevel=2)
        return cli.EXIT_OK

    monkeypatch.setattr(cli, "cmd_report", warn)
    rc, _, err = run(["report", setup], capsys)
    assert rc == cli.EXIT_OK
    assert err == "nettrim: warning: first line\n"


def test_all_zero_result_is_refused_in_one_line(setup, tmp_path, capsys):
    """--epsilon 1e9 prunes every weight: one warning line per layer, then one error line
    and exit 4 (a collapsed model), no file path or source line, and no result written."""
    out = tmp_path / "o"
    rc, _, err = run(
        [
            "prune",
            setup / "ckpt",
            "--data",
            setup / "calib.npz",
            "--epsilon",
            "1e9",
            "--max-iters",
            "400",
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == cli.EXIT_COLLAPSED, err
    lines = [l for l in err.splitlines() if "warning" in l.lower()]
    assert lines and all(l.startswith("nettrim: warning: layer ") and "pruned to all zeros" in l for l in lines)
    errors = [l for l in err.splitlines() if l.startswith("nettrim: error:")]
    assert len(errors) == 1 and "collapsed" in errors[0]
    assert ".py:" not in err and "warnings.warn" not in err
    assert not (out / "report.json").exists() and not (out / "model").exists()


def test_report_records_every_shaping_option(setup, tmp_path, capsys):
    """One cascade run (the report dict is built the same way for both schemes)."""
    scheme = "cascade"
    extra = [
        "--refit",
        "--max-patches",
        "100",
        "--solver",
        "admm",
        "--samples",
        "120",
        "--output-epsilon",
        "0.03",
        "--relu-budget",
        "omega",
    ]
    rc, _, err = run(prune_args(setup, tmp_path / "o", "--scheme", scheme, *extra), capsys)
    assert rc == cli.EXIT_OK, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    want = {
        "epsilon": 0.05,
        "gamma": 1.1,
        "refit": True,
        "solver": "admm",
        "max_iters": 400,
        "max_patches": 100,
        "seed": 0,
        "output_epsilon": 0.03,
        "relu_budget": "omega",
    }
    assert {k: rep["options"].get(k, "missing") for k in want} == want
    assert rep["scheme"] == scheme and rep["run"]["samples"] == 120
    md = (tmp_path / "o" / "report.md").read_text()
    assert "refit `True`" in md and "max_iters `400`" in md


# ----------------------------------------------------------------------------- item 10


def test_report_on_a_missing_folder_says_so(tmp_path, capsys):
    rc, _, err = run(["report", tmp_path / "nope"], capsys)
    assert rc == cli.EXIT_USAGE and err == f"nettrim: error: {tmp_path / 'nope'}: no such folder\n"


@pytest.mark.parametrize("suffix, what", [(".npz", "not a valid .npz (zip) file"), (".npy", "not a valid .npy file")])
def test_data_file_of_the_wrong_format(setup, tmp_path, capsys, suffix, what):
    bad = tmp_path / f"text{suffix}"
    bad.write_text("0.1,0.2,0.3\n")
    rc, _, err = run(prune_args(setup, tmp_path / "o", "--data", bad), capsys)
    assert rc == cli.EXIT_USAGE and what in err and "pickle" not in err
    assert not (tmp_path / "o").exists()


def test_pruned_folder_is_ignored_by_git():
    from pathlib import Path

    lines = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().split()
    assert "pruned/" in lines or "/pruned/" in lines


def test_pyproject_license_is_an_spdx_string():
    """The table form warns on every build with setuptools >= 77 (deprecated)."""
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in meta["build-system"]["requires"]


# ----------------------------------------------------------------------------- item 8

DEMO = ["demo", "--steps", "20", "--calibration", "100", "--max-iters", "100", "--no-plot", "-q"]


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_demo_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    rc, _, err = run([*DEMO, "--out", out], capsys)
    assert rc == cli.EXIT_USAGE and err.count("\n") == 1
    assert "not empty and not an earlier demo output; pass --force" in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"] and _siblings(out) == []


def test_demo_reruns_over_its_own_output_and_force_replaces(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, stdout, err = run([*DEMO, "--out", out], capsys)
    assert rc == cli.EXIT_OK, err
    assert f"report: {out / 'report.md'}" in stdout  # the final paths, not the staging folder
    assert json.loads((out / "report.json").read_text())["run"]["command"] == "demo"
    rc, _, err = run([*DEMO, "--out", out, "--seed", "1"], capsys)  # its own output: replaced
    assert rc == cli.EXIT_OK, err
    assert json.loads((out / "report.json").read_text())["run"]["seed"] == 1
    (out / "report.json").write_text("{}")  # no longer recognisable as a demo output
    rc, _, err = run([*DEMO, "--out", out], capsys)
    assert rc == cli.EXIT_USAGE
    rc, _, err = run([*DEMO, "--out", out, "--force"], capsys)
    assert rc == cli.EXIT_OK, err
    assert json.loads((out / "report.json").read_text())["run"]["command"] == "demo" and _siblings(out) == []


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_demo_leaves_no_half_filled_folder(tmp_path, capsys, monkeypatch, existing):
    import nettrim_jax

    out = tmp_path / "demo"
    if existing:
        out.mkdir()
        (out / "report.json").write_text(json.dumps({"command": "demo", "layers": []}))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(nettrim_jax, "prune", interrupted)  # after training and the first files
    rc, _, err = run([*DEMO, "--out", out], capsys)
    assert rc == cli.EXIT_INTERRUPTED
    assert _siblings(out) == []
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    else:
        assert not out.exists()
