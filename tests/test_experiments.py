"""Every experiment's --quick mode runs end to end and writes sensible results."""

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def _data_root():
    env = os.environ.get("NETTRIM_DATA")
    if env:
        return env
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if (shared / "mnist").is_dir() else None


def test_sample_complexity_quick(tmp_path):
    import sample_complexity

    res = sample_complexity.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "sample_complexity.md").read_text().count("| 32 |") == 2
    assert (tmp_path / "sample_complexity_relu.png").stat().st_size > 1000
    prob = np.stack([r["prob"] for r in res["relu"]])
    # far below the transition nothing is recovered, far above nearly everything is
    assert prob[:, 0].max() == 0.0
    assert prob[:, -1].mean() >= 0.75


@pytest.mark.parametrize("refit", [False, True], ids=["plain", "refit"])
def test_spirals_quick(tmp_path, refit):
    import spirals

    sfx = "_refit" if refit else ""
    records, curve = spirals.main(["--quick", "--out", str(tmp_path)] + (["--refit"] if refit else []))
    assert {r["variant"] for r in records} == {"dropout", "dropout+L1"}
    for r in records:
        assert r["rd"] < spirals.RD_TARGET
        assert all(a <= b for a, b in zip(r["after"], r["before"]))
        assert sum(r["after"]) < 0.6 * sum(r["before"])
    for pts in curve.values():
        kept = [k for _, _, k in sorted(pts)]
        assert kept[-1] <= kept[0]  # larger epsilon, fewer weights
    text = (tmp_path / f"spirals{sfx}.md").read_text()
    assert "2-50-50-2" in text and (tmp_path / f"spirals{sfx}_classifier.png").exists()
    assert ("+ refit" in text) == refit


needs_data = pytest.mark.skipif(_data_root() is None, reason="no MNIST folder ($NETTRIM_DATA)")


@needs_data
def test_mnist_quick(tmp_path):
    import mnist

    records = mnist.main(["--quick", "--out", str(tmp_path), "--data", _data_root()])
    assert {(r["net"], r["scheme"]) for r in records} == {
        ("fc", "cascade+refit"),
        ("fc", "parallel"),
        ("lenet", "cascade"),
    }
    for r in records:
        assert 0.5 < r["sparsity"] < 1.0
        assert set(r["acc"]) == {"nettrim", "nettrim+ft", "magnitude", "magnitude+ft", "wanda", "sparsegpt", "alps"}
        assert all(0.0 <= v <= 1.0 for v in r["acc"].values())
        # at ~97% sparsity on 500 images the quick runs keep 36-67% (chance is 10%): a
        # collapsed or constant model (<= 12%) fails here
        assert r["acc"]["nettrim"] > 0.25, (r["net"], r["scheme"], r["acc"])
    saved = json.loads((tmp_path / "mnist.json").read_text())
    assert len(saved) == len(records)
    assert "per-layer nnz" in (tmp_path / "mnist.md").read_text()


def test_lm_quick(tmp_path):
    """The LM experiment end to end on its offline corpus (the ReLU model; --quick leaves the
    GELU one out): every projection pruned (fc1 with the ReLU program, the rest linear),
    baselines at Net-Trim's counts."""
    import lm

    models = lm.main(["--quick", "--out", str(tmp_path)])
    assert [m["mlp"] for m in models] == ["relu"]
    for m in models:
        (r,) = m["runs"]
        assert len(r["programs"]) == 7 and 0.4 < r["sparsity"] < 0.55
        relu = [n for n, a in r["programs"].items() if a == "relu"]
        assert relu == (["blocks/0/fc1"] if m["mlp"] == "relu" else [])
        assert all(np.isfinite(r[k]) and r[k] > 0 for k in ("nettrim", "magnitude", "wanda"))
    assert "bits per character" in (tmp_path / "lm.md").read_text()


@needs_data
def test_resnet_quick(tmp_path):
    """Both parts end to end: every conv of the BatchNorm ResNet gets the ReLU program by
    default, the three variants are compared at matched sparsity, and the baselines get
    exactly Net-Trim's per-layer counts."""
    import resnet

    rec = resnet.main(["--quick", "--out", str(tmp_path), "--data", _data_root()])
    variants = {r["variant"]: r["programs"] for r in rec["programs"]}
    assert variants["ReLU, output budget"] == ["relu"] * 5
    assert variants["linear forced"] == ["linear"] * 5
    assert {r["scheme"] for r in rec["programs"]} == {"cascade"}
    (b,) = rec["baselines"]
    # the target counts kernels and biases, the table kernels only: biases are 30 of the
    # quick model's 682 weights, so the kernels' sparsity may sit up to 2.3 points off
    assert abs(b["sparsity"] - 0.5) <= 0.025, f"kernel counts per layer: {b['keeps']}"
    assert all(0.0 <= b[m] <= 1.0 for m in ("nettrim", "magnitude", "wanda"))
    text = (tmp_path / "resnet.md").read_text()
    assert "Matched sparsity, cascade" in text and "equal per-layer counts" in text


@needs_data
def test_mnist_accepts_the_dataset_folder_itself():
    import mnist

    root = Path(_data_root())
    xtr, ytr, xte, yte = mnist.load("mnist", str(root / "mnist"), n_train=10, n_test=10)
    assert xtr.shape == (10, 28, 28) and yte.shape == (10,)


@needs_data
def test_few_samples_quick(tmp_path):
    import few_samples

    records = few_samples.main(["--quick", "--out", str(tmp_path), "--data", _data_root()])
    assert [(r["samples"], r["variant"]) for r in records] == [
        (20, "plain"),
        (20, "refit"),
        (100, "plain"),
        (100, "refit"),
    ]
    assert all(set(r["acc"]) == {"nettrim", "magnitude", "wanda", "sparsegpt", "alps"} for r in records)
    assert (tmp_path / "few_samples.png").exists()


def test_bench_prune_quick(tmp_path):
    """bench_prune: every solve certified, the target met, the baselines at Net-Trim's counts,
    and a deeper model of the same shapes compiles no new solver program (one per shape)."""
    import bench_prune

    from nettrim_jax.network import compiled, targets

    # Programs an earlier test in this process compiled would not be counted again.
    jax.clear_caches()
    for cached in (compiled.jitted_solver, compiled._compiled_solver, targets._batched):
        cached.cache_clear()
    records = bench_prune.main(["--quick", "--out", str(tmp_path), "--models", "lm2", "lm12", "--baselines", "alps"])
    assert [r["model"] for r in records] == ["lm2", "lm12"] and all("error" not in r for r in records)
    for rec in records:
        run = rec["runs"][0]
        assert run["nettrim"]["converged"] == run["nettrim"]["layers"] > 0
        assert abs(run["sparsity"] - run["target"]) < 0.05
        assert np.isfinite(run["nettrim"]["quality"]) and np.isfinite(run["alps"]["quality"])
    assert records[0]["runs"][0]["nettrim"]["solver_programs"] >= 1
    assert records[1]["runs"][0]["nettrim"]["solver_programs"] == 0  # 4 blocks reuse the 2 blocks' programs
    text = (tmp_path / "bench_prune.md").read_text()
    assert "| lm12 |" in text
    # the ReLU layers' time against the two-product floor, with the finish's CG iterations
    where = [w for r in records[0]["runs"] for w in r["nettrim"]["where"] if w["program"] == "relu"]
    assert where and all(w["refit_iterations"] > 0 and w["two_products_seconds"] > 0 for w in where)
    assert "| two products ms |" in text


@needs_data
def test_l0_finish_quick(tmp_path):
    """Both Net-Trim variants at the target with every layer certified, ALPS at each one's
    counts, and a verdict per row."""
    import l0_finish

    records = l0_finish.main(["--quick", "--out", str(tmp_path), "--data", _data_root()])
    assert [r["variant"] for r in records] == ["refit", "refit+l0"]
    for r in records:
        assert abs(r["sparsity"] - 0.9) < 0.01 and r["converged"] == r["layers"] == 2
        assert 0.5 < r["nettrim"] <= 1 and 0.5 < r["alps"] <= 1
    text = (tmp_path / "l0_finish_fc_mnist.md").read_text()
    assert (
        "| 0.9 | refit+l0 | 1 |" in text
        and "one seed: " in text
        and ("behind" in text or "ahead" in text or "tie" in text)
    )


@needs_data
def test_calibration_rows_quick(tmp_path):
    """Net-Trim and ALPS at two nested calibration sizes of one trained network, a verdict each."""
    import calibration_rows

    records = calibration_rows.main(["--quick", "--out", str(tmp_path), "--data", _data_root()])
    assert [r["variant"] for r in records] == ["50 rows", "100 rows"]
    for r in records:
        assert abs(r["sparsity"] - 0.9) < 0.02 and r["converged"] == r["layers"]
        assert 0.3 < r["nettrim"] <= 1 and 0.3 < r["alps"] <= 1
    text = (tmp_path / "calibration_rows_lenet_mnist.md").read_text()
    assert "| 0.9 | 100 rows | 1 |" in text and "one seed: " in text


def test_ablation_quick(tmp_path):
    """All 8 configurations of the ablation at the target, every layer certified, the
    pre-activation runs on the linear program only, and ALPS as the reference row."""
    import ablation

    records = ablation.main(["--quick", "--out", str(tmp_path), "--data", _data_root()])
    runs = [r for r in records if r["objective"] != "ALPS"]
    assert len(runs) == 8 and len({(r["objective"], r["finish"], r["scheme"]) for r in runs}) == 8
    for r in runs:
        assert abs(r["sparsity"] - 0.9) < 0.01 and r["converged"] == r["layers"] == 2
        assert 0.5 < r["accuracy"] <= 1
    text = (tmp_path / "ablation.md").read_text()
    assert "| pre-activation | l1+l0 | cascade | 1 |" in text and "| ALPS |" in text


def test_count_search_quick(tmp_path):
    """Every searched layer of the quick LeNet-300-100 recorded, at its count, with a
    positive start and the solves it made."""
    import count_search

    records = count_search.main(["--quick", "--out", str(tmp_path), "--data", _data_root(), "--models", "lenet300"])
    assert [r["layer"] for r in records] == ["0", "1"]
    for r in records:
        assert r["start"] > 0 and r["found"] > 0 and 1 <= r["solves"] <= 12
        # the search stops within its own tolerance: 0.25% of the kernel's entries
        assert abs(r["nnz"] - r["keep"]) <= max(1, int(0.0025 * r["N"] * r["M"]))
    assert "| lenet300 | 2 |" in (tmp_path / "count_search.md").read_text()


def test_bench_sweep_quick(tmp_path):
    """Both modes of a 2-point sweep in fresh processes: the same nonzeros per point, the
    batched one served by batched solver calls, and the table written."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench_sweep.py"), "--quick", "--ks", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT / "experiments",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "bench_sweep.json").read_text())
    seq, bat = (next(r for r in rows if r["mode"] == m) for m in ("sequential", "batched"))
    assert seq["K"] == bat["K"] == 2 and bat["nnz"] == seq["nnz"] and bat["batched_calls"] >= 1
    assert all(c == [2, 2] for c in bat["certified"] + seq["certified"])
    assert "| 2 |" in (tmp_path / "bench_sweep.md").read_text()
