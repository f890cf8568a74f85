"""Bad input everywhere a user can reach: one test per case of issue #5.

Layer level (``solve_layer``) here; the whole-network (``prune``) and command-line levels are
below.  Each case either raises a clear ValueError or has a documented, tested behaviour:

* P < N (fewer samples than inputs) and a rank-deficient X are legal programs: they solve,
  converge and satisfy the misfit constraint.
* a dead layer (all outputs zero on the calibration set) gives an all-zero kernel: zero is
  feasible (X 0 = 0 <= threshold) and optimal (||0||_1 = 0).
"""

import warnings

import numpy as np
import pytest

from nettrim_jax import solve_layer

RNG = np.random.default_rng(0)


def _problem(p=40, n=12, m=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n)).astype(np.float32)
    w = rng.standard_normal((n, m)) * (rng.random((n, m)) < 0.5)
    return x, np.maximum(x @ w, 0).astype(np.float32)


# ----------------------------------------------------------------------------- layer level


@pytest.mark.parametrize("xs, ys, match", [
    ((40, 12), (39, 4), "40 samples but Y has 39"),
    ((40,), (40, 4), "X must be 2-D"),
    ((40, 12), (40, 4, 1), "Y must be 2-D"),
    ((40, 12, 1), (40, 4), "X must be 2-D"),
])
def test_layer_wrong_shapes(xs, ys, match):
    with pytest.raises(ValueError, match=match):
        solve_layer(np.ones(xs, np.float32), np.ones(ys, np.float32), epsilon=0.1)


@pytest.mark.parametrize("where", ["X", "Y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_layer_nan_inf(where, bad):
    x, y = _problem()
    (x if where == "X" else y)[3, 1] = bad
    if where == "Y" and bad == -np.inf:
        y[3, 1] = np.nan  # -inf would first trip the ReLU sign check
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf"):
        solve_layer(x, y, epsilon=0.1)


@pytest.mark.parametrize("xs, ys", [((0, 12), (0, 4)), ((40, 0), (40, 4)), ((40, 12), (40, 0))])
def test_layer_empty(xs, ys):
    with pytest.raises(ValueError, match="empty problem"):
        solve_layer(np.ones(xs, np.float32), np.ones(ys, np.float32), epsilon=0.1)


@pytest.mark.parametrize("eps", [-1e-6, -1.0, np.nan])
def test_layer_bad_epsilon(eps):
    x, y = _problem()
    with pytest.raises(ValueError, match="epsilon"):
        solve_layer(x, y, epsilon=eps)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "gelu", "", None])
def test_layer_unsupported_activation(act):
    x, y = _problem()
    with pytest.raises(ValueError, match="unknown activation"):
        solve_layer(x, y, epsilon=0.1, activation=act)


def test_layer_non_relu_outputs_with_relu_activation():
    """Outputs of a tanh/linear unit (negative entries) are not a ReLU layer's outputs."""
    x, _ = _problem()
    y = np.tanh(x[:, :4])
    with pytest.raises(ValueError, match="not a ReLU output"):
        solve_layer(x, y, epsilon=0.1)


def _check_feasible(sol, x, y, eps, tol=1e-2):
    k = np.asarray(sol.kernel, np.float64)
    z = x.astype(np.float64) @ k
    om = y > 0
    misfit = np.linalg.norm(np.where(om, z - y, 0))
    assert bool(sol.info.converged)
    assert misfit <= eps * (1 + tol) + 1e-6
    assert np.max(np.where(om, -np.inf, z)) <= 1e-3 * np.abs(y).max()


def test_layer_fewer_samples_than_inputs_solves():
    """P < N: the program is underdetermined but legal; it solves and is feasible."""
    x, y = _problem(p=10, n=40, m=3, seed=1)
    eps = 0.05 * np.linalg.norm(y)
    sol = solve_layer(x, y, epsilon=eps)
    _check_feasible(sol, x, y, eps)
    assert np.count_nonzero(np.asarray(sol.kernel)) < x.shape[1] * y.shape[1]


def test_layer_rank_deficient_solves():
    """Duplicated / dependent input columns: still a legal program; solves and is feasible."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((60, 5))
    x = np.concatenate([base, base[:, :2] + base[:, 2:4], base[:, :1]], 1).astype(np.float32)
    assert np.linalg.matrix_rank(x) == 5 < x.shape[1]
    y = np.maximum(x @ rng.standard_normal((8, 3)), 0).astype(np.float32)
    eps = 0.05 * np.linalg.norm(y)
    _check_feasible(solve_layer(x, y, epsilon=eps), x, y, eps)


def test_layer_dead_outputs_give_zero_kernel():
    """A dead layer (Y == 0): the zero kernel is feasible and optimal; returned exactly."""
    x, _ = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no non-convergence warning either
        sol = solve_layer(x, np.zeros((x.shape[0], 4), np.float32), epsilon=0.1)
    assert np.all(np.asarray(sol.kernel) == 0)
    assert bool(sol.info.converged)
