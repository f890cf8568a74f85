"""N:M patterns: the mask, the parse, and the pattern-constrained solve with its refit."""

import jax
import numpy as np
import pytest
from reference import relu_problem

import nettrim_jax as nt
from nettrim_jax.solver import patterns


@pytest.mark.parametrize("n,m,bias", [(2, 4, True), (2, 4, False), (1, 3, True), (3, 8, False)])
def test_mask_keeps_the_n_largest_per_group(n, m, bias):
    k = np.random.default_rng(n * m).standard_normal((23, 5)).astype(np.float32)  # 23: partial last group
    mask = np.asarray(patterns.nm_mask(k, n, m, bias=bias))
    length = 22 if bias else 23
    if bias:
        assert np.all(mask[-1])
    for start in range(0, length, m):
        block_k, block_m = np.abs(k[start : min(start + m, length)]), mask[start : min(start + m, length)]
        keep = min(n, block_k.shape[0])
        assert np.all(block_m.sum(axis=0) == keep)
        for j in range(k.shape[1]):  # the kept entries are the largest of their group
            assert block_k[block_m[:, j], j].min() >= block_k[~block_m[:, j], j].max(initial=-1)
    counts = np.asarray(patterns.group_counts(k * mask, m, bias=bias))
    assert counts.shape == (-(-length // m), 5) and counts.max() <= n


def test_mask_along_another_axis_and_under_jit():
    k = np.random.default_rng(1).standard_normal((3, 3, 8, 4)).astype(np.float32)  # (kh, kw, I, O)
    mask = jax.jit(lambda a: patterns.nm_mask(a, 2, 4, axis=2))(k)
    assert mask.shape == k.shape
    assert np.asarray(patterns.group_counts(k * mask, 4, axis=2)).max() == 2
    moved = np.moveaxis(k, 2, 0).reshape(8, -1)
    np.testing.assert_array_equal(
        np.moveaxis(np.asarray(mask), 2, 0).reshape(8, -1), np.asarray(patterns.nm_mask(moved, 2, 4))
    )


def test_parse_pattern():
    assert patterns.parse_pattern("2:4") == (2, 4)
    assert patterns.parse_pattern(" 1 : 8 ") == (1, 8)
    assert patterns.parse_pattern((np.int64(3), 4)) == (3, 4)
    assert str(patterns.parse_pattern("2:4")) == "2:4"


@pytest.mark.parametrize("bad", ["4:2", "2:2", "0:4", "a:b", "2-4", "2:4:8", 2.5, (2, 4.0), (True, 4)])
def test_parse_pattern_rejects(bad):
    with pytest.raises(ValueError) as err:
        patterns.parse_pattern(bad)
    assert "\n" not in str(err.value)


def test_nm_mask_rejects_bad_axis_and_pattern():
    with pytest.raises(ValueError, match="axis 2 out of range"):
        patterns.nm_mask(np.ones((4, 3)), 2, 4, axis=2)
    with pytest.raises(ValueError, match="0 < N < M"):
        patterns.nm_mask(np.ones((4, 3)), 4, 4)


def test_solve_layer_nm_obeys_the_pattern_and_refit_beats_masking():
    x, y, _ = relu_problem(300, 30, 8, seed=1, density=0.5)  # bias last
    eps = 0.1 * np.linalg.norm(y)  # Net-Trim keeps 48% of the weights, up to 3 of 4 in a group
    sol = patterns.solve_layer_nm(x, y, epsilon=eps, pattern="2:4", bias=True)
    k = np.asarray(sol.kernel, np.float64)
    mask = np.asarray(sol.mask)
    assert np.asarray(patterns.group_counts(k, 4, bias=True)).max() <= 2
    assert np.all((k != 0) <= mask)
    # The Net-Trim kernel alone breaks the pattern here, so the mask does work.
    nt_kernel = np.asarray(nt.solve_layer(x, y, epsilon=eps).kernel, np.float64)
    assert np.asarray(patterns.group_counts(nt_kernel, 4, bias=True)).max() > 2
    np.testing.assert_array_equal(mask, np.asarray(patterns.nm_mask(nt_kernel, 2, 4, bias=True)))
    # The refit objective per unit never rises, and in total falls.
    before, after = np.asarray(sol.refit.objective_before), np.asarray(sol.refit.objective_after)
    assert np.all(after <= before) and after.sum() < 0.95 * before.sum()
    # Recomputed in float64: the post-ReLU error of the refit kernel is below plain masking's.
    err = lambda u: np.linalg.norm(np.maximum(x @ u, 0) - y)
    assert err(k) < 0.9 * err(np.where(mask, nt_kernel, 0))
