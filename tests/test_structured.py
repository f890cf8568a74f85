"""Structured Net-Trim (group-l1 over input rows) against a cvxpy + Clarabel reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference

import nettrim_jax as nt
from nettrim_jax.solver import prox, structure


def _row_sparse_problem(activation, seed=0, p=160, n=30, m=5, rows=0.3):
    """Gaussian X (+ ones column) and a kernel with about ``rows`` of its input rows nonzero."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal((p, n)), np.ones((p, 1))], axis=1)
    w = rng.standard_normal((n + 1, m)) * (rng.random((n + 1, 1)) < rows)
    y = np.maximum(x @ w, 0) if activation == "relu" else x @ w
    eps = 0.05 * np.linalg.norm(np.where(y > 0, y, 0) if activation == "relu" else y)
    return x, y, eps


def _group_reference(x, y, eps, groups, activation):
    """Optimal value and kernel of the group-l1 program (``reference`` with ``groups``)."""
    return reference(x, y, eps, activation=activation, groups=groups)


def _check(sol, ref_value, ref_kernel, x, y, eps, groups, activation, rel=1e-3):
    info = sol.info
    k = np.asarray(sol.kernel, np.float64)
    assert bool(info.converged)
    assert abs(float(info.objective) - ref_value) <= rel * ref_value
    assert np.isclose(float(info.objective), float(structure.norm(k, groups)), rtol=1e-5)
    # Certificate: a true lower bound on the optimum, and a small certified gap.
    assert 0 < float(info.lower_bound) <= ref_value * (1 + 1e-6)
    assert float(info.gap) <= 2e-3
    # Feasible, recomputed in float64.
    z = x @ k
    if activation == "relu":
        d = np.where(y > 0, z - y, 0)
        assert max(0.0, np.max(np.where(y > 0, -np.inf, z))) <= 1e-5 * np.abs(y).max()
    else:
        d = z - y
    assert np.linalg.norm(d) <= eps * (1 + 1e-3)
    # Whole groups exactly zero, the same groups the interior-point solution (nearly) zeroes.
    g = np.asarray(groups)
    ids = np.unique(g[g >= 0])
    ref_norms = np.array([np.linalg.norm(ref_kernel[g == i]) for i in ids])
    dead = structure.zero_groups(k, groups)
    dead_ids = np.array([bool(np.all(dead[g == i])) for i in ids])
    assert dead_ids.sum() > 0
    np.testing.assert_array_equal(dead_ids, ref_norms < 1e-5 * ref_norms.max())


@pytest.mark.parametrize("solver", ["admm", "pdhg"])
@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_rows_match_group_reference(activation, solver):
    x, y, eps = _row_sparse_problem(activation)
    groups = structure.row_groups(x.shape[1] - 1, bias=True)
    ref_value, ref_kernel = _group_reference(x, y, eps, groups, activation)
    sol = nt.solve_layer(
        x, y, epsilon=eps, activation=activation, solver=solver, structure="rows", groups=groups, feas_tol=1e-6
    )
    _check(sol, ref_value, ref_kernel, x, y, eps, groups, activation)


def test_channel_groups_and_default_rows():
    # Conv-like rows: 10 channels of a 1x3 patch, channel-major, plus a bias row.
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal((150, 30)), np.ones((150, 1))], axis=1)
    w = rng.standard_normal((31, 4)) * np.append(np.repeat(rng.random(10) < 0.4, 3), True)[:, None]
    y = np.maximum(x @ w, 0)
    eps = 0.05 * np.linalg.norm(y)
    groups = structure.channel_groups(10, 1, 3, bias=True)
    ref_value, ref_kernel = _group_reference(x, y, eps, groups, "relu")
    sol = nt.solve_layer(x, y, epsilon=eps, structure="rows", groups=groups, feas_tol=1e-6)
    _check(sol, ref_value, ref_kernel, x, y, eps, groups, "relu")
    # structure="rows" without groups: every row (the bias row too) its own group.
    every = np.arange(31)
    ref_value, ref_kernel = _group_reference(x, y, eps, every, "relu")
    sol = nt.solve_layer(x, y, epsilon=eps, structure="rows", feas_tol=1e-6)
    _check(sol, ref_value, ref_kernel, x, y, eps, every, "relu")


def test_float64_rows_tight():
    x, y, eps = _row_sparse_problem("relu", seed=2)
    groups = structure.row_groups(x.shape[1] - 1)
    ref_value, ref_kernel = _group_reference(x, y, eps, groups, "relu")
    with jax.enable_x64(True):
        sol = nt.solve_layer(x, y, epsilon=eps, structure="rows", groups=groups, gap_tol=1e-5, max_iters=20000)
        assert sol.kernel.dtype == jnp.float64
    _check(sol, ref_value, ref_kernel, x, y, eps, groups, "relu", rel=5e-5)


def test_group_soft_threshold_is_the_prox():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((7, 3)).astype(np.float32)
    v[2] *= 0.1  # a small row: its group is zeroed
    groups = np.array([0, 0, 1, 2, 2, -1, -1], np.int32)
    t = 0.8
    out = np.asarray(prox.group_soft_threshold(jnp.asarray(v), t, jnp.asarray(groups)))
    for gid in range(3):
        rows = groups == gid
        nrm = np.linalg.norm(v[rows])
        np.testing.assert_allclose(out[rows], v[rows] * max(0.0, 1 - t / nrm), rtol=1e-5, atol=1e-7)
    assert np.all(out[2] == 0)
    np.testing.assert_array_equal(out[5:], np.asarray(prox.soft_threshold(v[5:], t)))
    # Optimality of the prox: out minimises t ||u||_G + 1/2 ||u - v||^2 against perturbations.
    f = lambda u: t * float(structure.norm(jnp.asarray(u), jnp.asarray(groups))) + 0.5 * np.sum((u - v) ** 2)
    for _ in range(20):
        assert f(out) <= f(out + 1e-2 * rng.standard_normal(v.shape).astype(np.float32)) + 1e-6
    # Dual norm: the largest group l2 norm (|v_ij| on ungrouped rows).
    want = max([np.linalg.norm(v[groups == i]) for i in range(3)] + list(np.abs(v[5:]).ravel()))
    assert np.isclose(float(structure.dual_norm(jnp.asarray(v), jnp.asarray(groups))), want, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(structure="channels"), "unknown structure"),
        (dict(structure="rows", groups=np.zeros(5, int)), r"groups must have shape \(N,\) = \(11,\)"),
        (dict(structure="rows", groups=np.zeros((11, 1), int)), "groups must have shape"),
        (dict(structure="rows", groups=np.linspace(0, 1, 11)), "integer ids"),
        (dict(structure="rows", per_neuron=True), "per_neuron"),
        (dict(groups=np.arange(11)), "groups= needs structure='rows'"),
    ],
)
def test_bad_structure_values(kwargs, match):
    x = np.random.default_rng(0).standard_normal((20, 11))
    y = np.maximum(x[:, :3], 0)
    with pytest.raises(ValueError, match=match) as err:
        nt.solve_layer(x, y, epsilon=0.1, **kwargs)
    assert "\n" not in str(err.value)


def test_channel_groups_follow_kernel_matrix_order():
    # A 3x3 conv with 4 input channels, channels 1 and 3 unused by the original kernel.
    from nettrim_jax.network import specs

    rng = np.random.default_rng(6)
    kernel = rng.standard_normal((3, 3, 4, 3)).astype(np.float32)
    kernel[:, :, [1, 3], :] = 0
    spec = nt.Conv(kernel=jnp.asarray(kernel), bias=jnp.asarray([0.1, -0.1, 0.2], jnp.float32), padding="VALID")
    x_img = jnp.asarray(rng.standard_normal((4, 8, 8, 4)), jnp.float32)
    rows = np.asarray(specs.layer_rows(spec, x_img))
    x = np.concatenate([rows, np.ones((rows.shape[0], 1), np.float32)], axis=1)
    y = np.asarray(jax.nn.relu(specs.apply_layer(spec, x_img))).reshape(-1, 3)
    np.testing.assert_allclose(np.maximum(x @ np.asarray(specs.kernel_matrix(spec)), 0), y, atol=1e-4)
    groups = structure.channel_groups(4, 3, 3, bias=True)
    sol = nt.solve_layer(x, y, epsilon=0.05 * np.linalg.norm(y), structure="rows", groups=groups)
    assert bool(sol.info.converged)
    dead_rows = structure.zero_groups(sol.kernel, groups)
    pruned = specs.with_matrix(spec, sol.kernel)
    dead_channels = np.all(np.asarray(pruned.kernel) == 0, axis=(0, 1, 3))
    assert dead_channels[1] and dead_channels[3]
    np.testing.assert_array_equal(dead_rows[:-1], np.repeat(dead_channels, 9))
