"""``nettrim sweep``: the frontier's table, JSON and plot from one command; a bad point list
or an OUT that already holds a sweep gets one line and exit 2."""

import json

import numpy as np
from cli_setup import FAST, run, write_setup

import nettrim_jax as nt
from nettrim_jax.io import convert


def test_sweep_writes_table_json_plot_equal_to_prunes(tmp_path, capsys):
    layers, x, y = write_setup(tmp_path)
    out = tmp_path / "sw"
    rc, stdout, err = run(
        [
            "sweep",
            tmp_path / "ckpt",
            "--data",
            tmp_path / "calib.npz",
            "--epsilon",
            "0.05,0.3",
            "--seeds",
            "0,1",
            "--draw",
            "120",
            "--out",
            out,
            *FAST,
        ],
        capsys,
    )
    assert rc == 0, err
    doc = json.loads((out / "sweep.json").read_text())
    assert [(r["epsilon"], r["seed"]) for r in doc["points"]] == [(0.05, 0), (0.05, 1), (0.3, 0), (0.3, 1)]
    assert (out / "sweep.png").stat().st_size > 1000 and "| epsilon | seed |" in (out / "sweep.md").read_text()
    assert doc["run"]["value"] == "accuracy" and doc["run"]["accuracy_dense"] == 1.0  # labels are its own
    assert "done: 4 point(s), 0 collapsed" in stdout
    # each row is the prune of that seed's draw, its accuracy measured on the calibration set
    for r in doc["points"]:
        rows = np.sort(np.random.default_rng(r["seed"]).choice(150, 120, replace=False))
        res = nt.prune(
            convert.to_network(layers), x[rows], epsilon=r["epsilon"], seed=r["seed"], progress=False, max_iters=400
        )
        acc = float(np.mean(np.argmax(convert.apply(convert.from_network(res.model), x), -1) == y))
        assert r["nnz_after"] == res.report.nnz_after and abs(r["value"] - acc) < 1e-9
    assert doc["points"][2]["sparsity"] > doc["points"][0]["sparsity"]  # a larger epsilon prunes more


def test_sweep_refuses_bad_lists_and_a_finished_out(tmp_path, capsys):
    write_setup(tmp_path)
    base = ["sweep", tmp_path / "ckpt", "--data", tmp_path / "calib.npz", "--out", tmp_path / "sw", *FAST]
    for extra, match in [
        (["--epsilon", "0.1,-1"], "negative"),
        (["--sparsity", "0.5,1.5"], "outside [0, 1)"),
        (["--epsilon", "0.1", "--sparsity", "0.5"], "not both"),
        ([], "give --epsilon or --sparsity"),
    ]:
        rc, _, err = run(base + extra, capsys)
        assert rc == 2 and match in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "sw").exists()
    assert run(base + ["--epsilon", "0.1", "--no-plot"], capsys)[0] == 0
    rc, _, err = run(base + ["--epsilon", "0.2"], capsys)
    assert rc == 2 and "already holds a sweep" in err
