"""The l0 finish (``solver.l0``): the count kept, the objective never raised, the budget kept,
and a planted support found that the l1 solution's refit misses."""

import jax.numpy as jnp
import numpy as np
import pytest
from reference import random_mlp, relu_problem

import nettrim_jax as nt
from nettrim_jax.solver.l0 import l0_finish


def _output_error(x, y, k, v=0.0):
    xu = x @ k
    return float(np.sqrt(np.sum(np.where(y > 0, xu - y, np.maximum(xu - v, 0)) ** 2)))


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_the_count_is_kept_and_the_objective_never_rises(activation):
    x, y, w = relu_problem(300, 40, 12, seed=3, density=0.4)
    if activation == "linear":
        y = x @ w
    eps = 0.3 * np.linalg.norm(y)
    sol = nt.solve_layer(x, y, epsilon=eps, activation=activation)
    k = int(np.count_nonzero(np.asarray(sol.kernel)))
    refit, rinfo = nt.refit_layer(x, y, sol.kernel, activation=activation)
    u, info = l0_finish(x, y, sol.kernel, activation=activation, steps=15)
    u = np.asarray(u)
    assert 0 < np.count_nonzero(u) <= k and np.count_nonzero(u) >= k - 2
    assert float(info.objective_after) <= float(info.objective_before)
    assert float(info.error_before) == pytest.approx(float(rinfo.error_after), rel=1e-4)
    if activation == "relu":  # within the program's budget (the output error), as its start
        assert _output_error(x, y, u) <= eps * (1 + 1e-3)
    else:
        assert float(np.linalg.norm(x @ u - y)) <= eps * (1 + 1e-3)


def test_a_planted_relu_layer_is_recovered_at_the_count_the_l1_solution_kept():
    """At epsilon 0.3 ||Y|| the l1 solution keeps more weights than the planted layer has
    but not its support: the refit leaves error 9.85, the finish finds the layer (< 1e-3)."""
    x, y, w = relu_problem(400, 60, 20, seed=0, density=0.3)
    sol = nt.solve_layer(x, y, epsilon=0.3 * np.linalg.norm(y))
    _, rinfo = nt.refit_layer(x, y, sol.kernel)
    u, info = l0_finish(x, y, sol.kernel, steps=30)
    assert float(rinfo.error_after) > 1.0
    assert float(info.error_after) < 1e-3 * float(rinfo.error_after)
    assert int(info.swapped) > 0 and int(info.steps) > 0
    u = np.asarray(u)  # its spare count (more than the planted nonzeros) stays near 0
    assert np.max(np.abs(u[np.asarray(w) == 0])) < 1e-4 * np.max(np.abs(u))


def test_a_threshold_and_an_explicit_omega_are_honoured():
    """Off Omega the objective counts the excess over V: with V < 0 entries, the finish's
    excess-plus-misfit is never above the refit's."""
    x, y, _ = relu_problem(200, 30, 8, seed=5)
    rng = np.random.default_rng(0)
    v = -0.1 * np.abs(rng.standard_normal(y.shape))
    omega = y > 0
    sol = nt.solve_layer(x, y, epsilon=0.4 * np.linalg.norm(y), threshold=jnp.asarray(v), relu_budget="output")
    _, rinfo = nt.refit_layer(x, y, sol.kernel, threshold=v, omega=omega)
    u, info = l0_finish(x, y, sol.kernel, threshold=v, omega=omega, steps=10)
    assert float(info.error_after) <= float(rinfo.error_after) * (1 + 1e-6)
    assert _output_error(x, y, np.asarray(u), v) == pytest.approx(float(info.error_after), rel=1e-3)


def test_bad_steps_are_refused():
    x, y, _ = relu_problem(50, 5, 2)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        l0_finish(x, y, np.zeros((6, 2)), steps=-1)


def test_prune_with_the_l0_finish_keeps_each_layers_count_and_never_fits_worse():
    net = random_mlp((12, 24, 16, 4), 0)
    x = np.random.default_rng(1).standard_normal((400, 12)).astype(np.float32)
    kw = dict(sparsity=0.7, refit=True, progress=False, max_iters=3000)
    base = nt.prune(net, x, **kw)
    l0 = nt.prune(net, x, finish="l0", **kw)
    assert l0.report.options["finish"] == "l0" and base.report.options["finish"] is None
    for a, b in zip(base.report.layers, l0.report.layers):
        assert b.nnz_after <= a.nnz_after and b.nnz_after >= a.nnz_after - 2
        assert b.misfit <= a.misfit * (1 + 1e-4)
    with pytest.raises(ValueError, match="finish must be None or 'l0'"):
        nt.prune(net, x, finish="l2", progress=False)
