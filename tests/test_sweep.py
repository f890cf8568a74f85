"""``sweep``: a frontier in one call.  Batched points equal their own ``prune`` (both schemes,
epsilon and sparsity lists) and really share batched solves; sequential points are exactly
``prune``; seeds draw their calibration sets; bad point lists get one line."""

import numpy as np
import pytest
from reference import random_mlp

import nettrim_jax as nt
from nettrim_jax.network.batching import SolvePool


def _net():
    return random_mlp((12, 20, 12, 3), seed=3)


def _x(p=200):
    return np.random.default_rng(4).standard_normal((p, 12)).astype(np.float32)


def _max_kernel_gap(a, b) -> float:
    """Largest |difference| of two spec networks' kernels, relative to the kernel's scale."""
    return max(
        float(
            np.max(np.abs(np.asarray(u.kernel) - np.asarray(v.kernel))) / (np.max(np.abs(np.asarray(v.kernel))) + 1e-12)
        )
        for u, v in zip(a, b)
    )


@pytest.mark.parametrize("scheme", ["parallel", "cascade"])
@pytest.mark.parametrize("kind,values", [("epsilon", [0.05, 0.2, 0.4]), ("sparsity", [0.5, 0.8])])
def test_batched_points_equal_their_own_prunes(scheme, kind, values):
    net, x = _net(), _x()
    points = nt.sweep(net, x, scheme=scheme, mode="batched", progress=False, max_iters=1500, **{kind: values})
    assert [getattr(p, kind) for p in points] == values
    for p, v in zip(points, values):
        ref = nt.prune(net, x, scheme=scheme, progress=False, max_iters=1500, **{kind: v})
        assert p.mode == "batched" and p.error is None
        # the same program solved in a batch: the same support up to a rounding-borne flip or two
        nnz, want = p.result.report.nnz_after, ref.report.nnz_after
        assert abs(nnz - want) <= max(2, 0.01 * want), (v, nnz, want)
        assert _max_kernel_gap(p.result.model, ref.model) < 2e-2, v
        assert p.converged == tuple((sum(l.converged for l in ref.report.layers), len(ref.report.layers)))
        if kind == "sparsity":
            assert abs(p.reached - v) < 0.01
    stats = points[0].pool
    # every layer solve went to the pool; the points' first solves of each layer shared a call
    assert stats.requests >= 3 * len(values) and stats.batched >= 1 and stats.largest == len(values)
    assert stats.calls < stats.requests


def test_sequential_points_are_exactly_prune_and_seeds_draw_their_samples():
    net, x = _net(), _x(300)
    seen = []

    def evaluate(model):
        seen.append(model)
        return float(len(seen))

    points = nt.sweep(
        net, x, epsilon=[0.1, 0.3], seeds=[0, 1], samples=150, evaluate=evaluate, mode="sequential", progress=False
    )
    assert [(p.epsilon, p.seed) for p in points] == [(0.1, 0), (0.1, 1), (0.3, 0), (0.3, 1)]
    assert [p.value for p in points] == [1.0, 2.0, 3.0, 4.0] and all(p.pool is None for p in points)
    for p in points:
        rows = np.sort(np.random.default_rng(p.seed).choice(300, 150, replace=False))
        ref = nt.prune(net, x[rows], epsilon=p.epsilon, seed=p.seed, progress=False)
        assert _max_kernel_gap(p.result.model, ref.model) == 0.0
    # two seeds, two calibration draws: different prunes at one epsilon
    assert _max_kernel_gap(points[0].result.model, points[1].result.model) > 0
    row = points[0].row()
    assert row["epsilon"] == 0.1 and row["solves"] == 3 and row["mode"] == "sequential" and "sparsity" in row


def test_a_collapsed_point_is_recorded_with_its_error_not_returned_as_a_model():
    points = nt.sweep(_net(), _x(), epsilon=[0.05, 1e9], mode="sequential", progress=False, max_iters=400)
    assert points[0].error is None and points[0].result is not None
    assert points[1].result is None and "collapsed" in points[1].error and points[1].reached is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epsilon": []}, "empty"),
        ({"epsilon": [0.1, -0.2]}, "negative"),
        ({"epsilon": [0.1, float("nan")]}, "not finite"),
        ({"sparsity": [0.5, 1.0]}, r"outside \[0, 1\)"),
        ({}, "one of them"),
        ({"epsilon": [0.1], "sparsity": [0.5]}, "one of them"),
        ({"epsilon": [0.1], "seeds": []}, "seeds is empty"),
        ({"epsilon": [0.1], "mode": "fast"}, "mode must be"),
        ({"epsilon": [0.1], "batch": 0}, "batch must be"),
        ({"epsilon": [0.1], "samples": 10_000}, "samples=10000"),
        ({"epsilon": [0.1], "seed": 3}, "set per point"),
    ],
)
def test_bad_point_lists_get_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        nt.sweep(_net(), _x(), progress=False, **kwargs)
    assert "\n" not in str(err.value)


def test_pool_hands_each_task_its_own_error():
    pool = SolvePool()

    def fails():
        raise RuntimeError("point 1 failed")

    out = pool.run([lambda: 7, fails])
    assert out[0] == (7, None) and isinstance(out[1][1], RuntimeError)


def test_batch_size_from_memory_fits_every_point_of_a_small_model():
    from nettrim_jax.network.sweep import sweep_batch

    assert sweep_batch(_net(), _x(), {}, 5) == 5  # a few KiB per point
    points = nt.sweep(_net(), _x(), epsilon=[0.1, 0.3], mode="batched", progress=False, max_iters=400)
    assert points[0].pool.largest == 2 and points[0].pool is points[1].pool
