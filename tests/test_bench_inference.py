"""experiments/bench_inference.py --quick runs end to end; its forms compute the same model."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def test_bench_inference_quick(tmp_path):
    import bench_inference

    records = bench_inference.main(["--quick", "--repeats", "2", "--out", str(tmp_path)])
    forms = [(r["form"], r["sparsity"]) for r in records]
    assert forms == [("dense", 0.0), ("compact", 0.9), ("bcoo", 0.9)]
    dense, compact, bcoo = records
    # About 10% of the weights survive in both pruned forms; compressed storage is smaller.
    assert 0.08 < compact["params"] / dense["params"] < 0.12
    assert 0.08 < bcoo["params"] / dense["params"] < 0.12
    assert bcoo["bytes"] < 0.2 * dense["bytes"]
    assert all(r["latency_us"] > 0 and r["throughput"] > 0 for r in records)
    md = (tmp_path / "bench_inference.md").read_text()
    assert md.count("| 0.90 |") == 2
    assert json.loads((tmp_path / "bench_inference.json").read_text()) == records
