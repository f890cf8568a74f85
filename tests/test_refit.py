"""``refit_layer`` and ``prune(refit=True)``: the refit kernel keeps Net-Trim's support,
solves the support-restricted fit to the reference's accuracy, never worsens a unit, and
keeps the whole-network guarantees."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import relu_problem

import nettrim_jax as nt
from nettrim_jax.training import make_mlp, train_classifier


def _support_fit_reference(x, y, kernel, relu, threshold=0.0):
    """The refit program on kernel's support, solved by Clarabel."""
    import cvxpy as cp

    n, m = kernel.shape
    mask = (kernel != 0).astype(float)
    u = cp.Variable((n, m))
    z = x @ cp.multiply(mask, u)
    if relu:
        om = (y > 0).astype(float)
        obj = 0.5 * cp.sum_squares(cp.multiply(om, z - y)) + 0.5 * cp.sum_squares(
            cp.multiply(1 - om, cp.pos(z - threshold))
        )
    else:
        obj = 0.5 * cp.sum_squares(z - y)
    prob = cp.Problem(cp.Minimize(obj))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Solution may be inaccurate", UserWarning)
        prob.solve(solver=cp.CLARABEL)
    # Clarabel ends this program (the cp.pos term) OPTIMAL_INACCURATE at any tolerance tried
    # (default, 1e-8, 1e-9); the caller checks its value against refit_layer to 1e-6.
    assert prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), prob.status
    return prob.value, mask * u.value


def _solve(x, y, rel, activation="relu"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return nt.solve_layer(x, y, epsilon=rel * np.linalg.norm(y), activation=activation)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_refit_matches_reference_on_support(activation):
    x, y, _ = relu_problem(120, 30, 6, seed=3)
    if activation == "linear":
        rng = np.random.default_rng(4)
        y = x @ (rng.standard_normal((31, 6)) * (rng.random((31, 6)) < 0.3))
    sol = _solve(x, y, 0.1, activation)
    k0 = np.asarray(sol.kernel, np.float64)
    with jax.enable_x64(True):
        k1, info = nt.refit_layer(
            jnp.asarray(x), jnp.asarray(y), jnp.asarray(k0), activation=activation, rounds=6, cg_iters=100
        )
        k1 = np.asarray(k1)
    ref_value, _ = _support_fit_reference(x, y, k0, activation == "relu")
    assert np.all(k1[k0 == 0] == 0), "refit must keep Net-Trim's zeros"
    after = float(np.sum(info.objective_after))
    assert after <= float(np.sum(info.objective_before))
    assert after == pytest.approx(ref_value, rel=1e-6, abs=1e-9)
    assert bool(np.all(np.asarray(info.objective_after) <= np.asarray(info.objective_before)))


def test_refit_lowers_the_error_and_keeps_the_bound():
    x, y, _ = relu_problem(300, 60, 20, seed=1)
    sol = _solve(x, y, 0.2)
    k0 = np.asarray(sol.kernel)
    k1, info = nt.refit_layer(x.astype(np.float32), y.astype(np.float32), k0)
    k1 = np.asarray(k1)
    err = lambda k: np.linalg.norm(np.maximum(x @ k, 0) - y)
    eps = 0.2 * np.linalg.norm(y)
    assert err(k0) <= eps * (1 + 1e-3)
    # the post-ReLU error is bounded by the refit objective, and it fell well below epsilon
    assert err(k1) <= float(info.error_after) * (1 + 1e-4)
    assert float(info.error_after) < 0.7 * float(info.error_before)
    assert np.count_nonzero(k1) <= np.count_nonzero(k0)


def test_refit_never_worsens_a_unit_and_is_jittable():
    x, y, _ = relu_problem(80, 20, 5, seed=2)
    k0 = np.asarray(_solve(x, y, 0.3).kernel)
    # one cg iteration of one round: a poor refit; units that got worse must keep k0
    k1, info = jax.jit(lambda a, b, c: nt.refit_layer(a, b, c, rounds=1, cg_iters=1))(x, y, k0)
    k1 = np.asarray(k1)
    kept = ~np.asarray(info.improved)
    assert np.array_equal(k1[:, kept], k0[:, kept].astype(k1.dtype))
    assert np.all(np.asarray(info.objective_after) <= np.asarray(info.objective_before))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda k: k[:-1], "warm_start kernel has shape"),
        (lambda k: np.where(k != 0, np.nan, 0), "kernel contains NaN"),
    ],
)
def test_refit_bad_input(bad, match):
    x, y, _ = relu_problem(40, 10, 3, seed=0)
    k = np.ones((11, 3))
    with pytest.raises(ValueError, match=match):
        nt.refit_layer(x, y, bad(k))


def test_prune_refit_keeps_supports_and_lowers_discrepancy(digits):
    xtr, ytr, _, _ = digits
    model = make_mlp((64, 32, 32, 32, 10), seed=0)
    train_classifier(model, xtr, ytr, steps=200)
    x = jnp.asarray(xtr[:300])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = nt.prune(model, x, scheme="parallel", epsilon=0.2, progress=False, max_iters=1500)
        refit_alone = dict(refit=True, progress=False, max_iters=1500, finish=None, joint_refit=0)
        refit = nt.prune(model, x, scheme="parallel", epsilon=0.2, **refit_alone)
        casc = nt.prune(model, x, scheme="cascade", epsilon=0.2, gamma=1.0, **refit_alone)
        casc_loop = nt.prune(model, x, scheme="cascade", epsilon=0.2, gamma=1.0, scan=False, **refit_alone)
    # parallel: the same programs, so the same supports; the refit only moves kept weights
    for a, b in zip(jax.tree.leaves(plain.masks), jax.tree.leaves(refit.masks)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for lp, lr in zip(plain.report.layers, refit.report.layers):
        assert lr.discrepancy <= lp.discrepancy * (1 + 1e-4) + 1e-6
        assert lr.misfit <= lp.epsilon * (1 + 2e-3)
    assert refit.report.output_discrepancy < plain.report.output_discrepancy
    # cascade with refit: the scan path (layers 1-2 are square) equals the loop
    for a, b in zip(casc.report.layers, casc_loop.report.layers):
        assert a.nnz_after == b.nnz_after
        assert a.discrepancy == pytest.approx(b.discrepancy, rel=1e-3, abs=1e-5)
        # refit_layer's 4 rounds x 60 CG iterations (no tolerance), counted on both paths
        assert a.refit_iterations == b.refit_iterations == 240
    assert casc.report.output_error <= casc.report.bound * (1 + 1e-3)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_the_refit_reports_the_cg_iterations_it_ran(activation):
    """Without a tolerance every round runs cg_iters iterations (a linear layer's on X^T X)."""
    x, y, w = relu_problem(120, 20, 5, seed=2, density=0.5)
    if activation == "linear":
        y = x @ w
    _, info = nt.refit_layer(x, y, 0.5 * w, activation=activation, rounds=3, cg_iters=7)  # far from its fit
    assert int(info.cg_iterations) == 21


def test_cg_stops_at_its_tolerance_and_not_before():
    """The batched CG ends once every column's residual is within tol of its ||b||: with a
    loose tol it stops early (a larger residual than the full count leaves, but within tol),
    with tol 0 it runs every iteration, and a tight tol reaches the exact solution; the
    iterations it reports are the ones it ran."""
    from nettrim_jax.solver.refit import _cg

    rng = np.random.default_rng(0)
    A = rng.normal(size=(60, 40))
    H = jnp.asarray(A.T @ A / 60 + 0.05 * np.eye(40))
    b = jnp.asarray(rng.normal(size=(40, 3)))

    def residual(u):
        return np.linalg.norm(np.asarray(b - H @ u), axis=0) / np.linalg.norm(np.asarray(b), axis=0)

    u0 = jnp.zeros_like(b)
    (loose, n_loose), (full, n_full) = _cg(lambda p: H @ p, b, u0, 30, 0.3), _cg(lambda p: H @ p, b, u0, 30, 0.0)
    assert residual(loose).max() <= 0.3
    assert residual(loose).max() > 10 * residual(full).max()
    assert int(n_full) == 30 and 0 < int(n_loose) < 30
    # one iteration fewer than it reported leaves some column outside the tolerance
    assert residual(_cg(lambda p: H @ p, b, u0, int(n_loose) - 1, 0.0)[0]).max() > 0.3
    assert residual(_cg(lambda p: H @ p, b, u0, int(n_loose), 0.0)[0]).max() <= 0.3
    exact, _ = _cg(lambda p: H @ p, b, u0, 200, 1e-6)
    np.testing.assert_allclose(np.asarray(exact), np.linalg.solve(np.asarray(H), np.asarray(b)), rtol=1e-4, atol=1e-5)
