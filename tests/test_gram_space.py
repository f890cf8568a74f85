"""Linear programs in Gram space against the direct (P-row) solve and the interior-point reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import reference

import nettrim_jax as nt
from nettrim_jax.solver import gram_space as gs


def _linear(p, n, m, noise=0.3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal((p, n - 1)), np.ones((p, 1))], 1)
    w = rng.standard_normal((n, m)) * (rng.random((n, m)) < 0.5)
    y = x @ w + noise * rng.standard_normal((p, m))
    return x.astype(dtype), y.astype(dtype)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_gram_space_equals_direct_solve_and_reference(per_neuron):
    x, y = _linear(1200, 31, 6)
    eps = 0.2 * float(np.linalg.norm(y))
    ref, _ = reference(x.astype(float), y.astype(float), eps, "linear", per_neuron=per_neuron)
    direct = nt.solve_layer(x, y, epsilon=eps, activation="linear", per_neuron=per_neuron, gram_space=False)
    auto = nt.solve_layer(x, y, epsilon=eps, activation="linear", per_neuron=per_neuron)
    streamed = gs.solve_layer_gram(gs.from_data(x, y, chunk_rows=256), eps, per_neuron=per_neuron)
    assert isinstance(auto.state, gs.ReducedState) and not isinstance(direct.state, gs.ReducedState)
    for sol in (direct, auto, streamed):
        assert bool(sol.info.converged)
        assert abs(float(sol.info.objective) - ref) <= 1e-3 * ref
        assert float(sol.info.lower_bound) <= ref * (1 + 1e-5)
        assert float(sol.info.gap) <= 2e-3 and float(sol.info.residual) <= 1 + 1e-3
        k = np.asarray(sol.kernel, np.float64)
        d = x.astype(float) @ k - y
        e = (eps * np.linalg.norm(y, axis=0) / np.linalg.norm(y)) if per_neuron else eps
        misfit = np.linalg.norm(d, axis=0) if per_neuron else np.linalg.norm(d)
        assert np.all(misfit <= e * (1 + 1e-3))
        # The reported residual is the true misfit over the budget (float64 recomputation).
        assert abs(float(sol.info.residual) - np.max(misfit / e)) <= 1e-4
        assert np.mean(k == 0) > 0.2


def test_streamed_statistics_and_misfit_match_direct_computation():
    """float32, 20,000 rows in chunks: X^T X, X^T Y, c and the misfit identity agree with float64."""
    x, y = _linear(20000, 41, 5, noise=0.05, seed=1)
    stats = gs.from_data(x, y, chunk_rows=3000)  # a ragged last chunk
    x64, y64 = x.astype(float), y.astype(float)
    assert float(stats.rows) == 20000
    np.testing.assert_allclose(stats.xtx, x64.T @ x64, rtol=1e-5, atol=1e-5 * np.abs(x64.T @ x64).max())
    np.testing.assert_allclose(stats.xty, x64.T @ y64, rtol=1e-5, atol=1e-5 * np.abs(x64.T @ y64).max())
    red = gs.reduce(stats)
    b = np.linalg.lstsq(x64, y64, rcond=None)[0]
    c_true = np.sum((x64 @ b - y64) ** 2, axis=0)
    ynorm = np.sum(y64**2, axis=0)
    # c from the statistics: within a few ulps of ||y_m||^2 (a difference of two large sums) ...
    assert np.all(np.abs(np.asarray(red.c) - c_true) <= 2e-6 * ynorm)
    # ... and from the residual itself: relative to c.
    exact = gs.exact_constant(red, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(exact.c, c_true, rtol=1e-3)
    rng = np.random.default_rng(2)
    for scale in (0.0, 0.01, 0.3):  # at, near and far from the least-squares kernel
        u = b + scale * rng.standard_normal(b.shape)
        true = np.linalg.norm(x64 @ u - y64, axis=0)
        for r in (red, exact):
            got = np.asarray(gs.column_misfit(r, jnp.asarray(u, jnp.float32)), float)
            assert np.all(np.abs(got - true) <= 1e-3 * true + 2e-3 * np.sqrt(ynorm)), (scale, got, true)


def test_rank_deficient_inputs_are_handled_and_certified():
    """A dead input (zero column) and a duplicated one: X^T X is singular; the ridge keeps the
    Cholesky finite, the kernel meets the original bound and the bound stays below the optimum."""
    x, y = _linear(800, 20, 4, seed=3)
    x = np.concatenate([x, np.zeros((800, 1), np.float32), x[:, :1]], 1)
    eps = 0.2 * float(np.linalg.norm(y))
    ref, _ = reference(x.astype(float), y.astype(float), eps, "linear")
    sol = gs.solve_layer_gram(gs.from_data(x, y), eps)
    assert bool(sol.info.converged) and abs(float(sol.info.objective) - ref) <= 1e-3 * ref
    assert float(sol.info.lower_bound) <= ref * (1 + 1e-5)
    assert np.linalg.norm(x.astype(float) @ np.asarray(sol.kernel, float) - y) <= eps * (1 + 1e-3)


def test_float64_agrees_tightly():
    with jax.enable_x64(True):
        x, y = _linear(900, 25, 3, seed=4, dtype=np.float64)
        eps = 0.15 * float(np.linalg.norm(y))
        ref, _ = reference(x, y, eps, "linear")
        sol = nt.solve_layer(x, y, epsilon=eps, activation="linear", gram_space=True, gap_tol=1e-5, max_iters=20000)
        assert sol.kernel.dtype == jnp.float64 and bool(sol.info.converged)
        assert abs(float(sol.info.objective) - ref) <= 2e-5 * ref
        assert ref * (1 - 2e-5) <= float(sol.info.lower_bound) <= ref * (1 + 1e-8)
        assert float(sol.info.residual) <= 1 + 1e-6


def test_warm_start_from_a_gram_solution_and_auto_switch():
    x, y = _linear(400, 10, 3, seed=5)
    eps = 0.2 * float(np.linalg.norm(y))
    first = nt.solve_layer(x, y, epsilon=eps, activation="linear")
    again = nt.solve_layer(x, y, epsilon=eps, activation="linear", warm_start=first)
    assert int(again.info.iterations) <= int(first.info.iterations)
    # A Gram-space state handed to the direct path is ignored (its kernel is used).
    direct = nt.solve_layer(x, y, epsilon=eps, activation="linear", warm_start=first, gram_space=False)
    assert abs(float(direct.info.objective) - float(first.info.objective)) <= 1e-3 * float(first.info.objective)
    # P <= 2N stays direct under "auto".
    wide = nt.solve_layer(x[:20], y[:20], epsilon=0.2 * float(np.linalg.norm(y[:20])), activation="linear")
    assert not isinstance(wide.state, gs.ReducedState)


def test_bad_input():
    x, y = _linear(300, 10, 3, noise=1.0, seed=6)
    with pytest.raises(ValueError, match="infeasible linear program"):
        nt.solve_layer(x, y, epsilon=0.01 * float(np.linalg.norm(y)), activation="linear", gram_space=True)
    with pytest.raises(ValueError, match="gram_space=True applies only"):
        nt.solve_layer(x, np.maximum(y, 0), epsilon=1.0, gram_space=True)
    with pytest.raises(ValueError, match="gram_space must be"):
        nt.solve_layer(x, y, epsilon=1.0, activation="linear", gram_space="yes")
    with pytest.raises(ValueError, match="do not fit"):
        gs.accumulate(gs.init(10, 3), x[:, :9], y)
    with pytest.raises(ValueError, match="X_chunk contains NaN"):
        gs.accumulate(gs.init(10, 3), np.full((2, 10), np.nan), y[:2])
