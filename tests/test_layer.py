"""solve_layer against an interior-point reference, exact recovery, batching, precision."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import planted_sparse, reference, relu_problem

import nettrim_jax as nt

CASES = [(act, pn, solver) for act in ("relu", "linear") for pn in (False, True) for solver in ("admm", "pdhg")]


def _problem(kind, activation, seed):
    if kind == "random":
        x, y, w = relu_problem(160, 30, 5, seed=seed, density=0.5)
    else:  # planted sparse kernel
        x, y, w = planted_sparse(160, 30, 5, s=4, seed=seed)
    if activation == "linear":
        y = x @ w
    return x, y


def _omega_norm(y, activation):
    return np.linalg.norm(np.where(y > 0, y, 0) if activation == "relu" else y)


def _check_against_reference(sol, ref_value, x, y, eps, activation, per_neuron, rel=1e-3):
    info = sol.info
    k = np.asarray(sol.kernel, np.float64)
    assert bool(info.converged)
    # Objective: within rel of the interior-point optimum.
    assert abs(float(info.objective) - ref_value) <= rel * ref_value
    assert np.isclose(float(info.objective), np.abs(k).sum(), rtol=1e-5)
    # Feasibility of the returned kernel, recomputed here in float64.
    z = x @ k
    if activation == "relu":
        om = y > 0
        d = np.where(om, z - y, 0)
        _check_threshold_guarantee(sol, x, y, eps, per_neuron, FEAS_TOL)
    else:
        d = z - y
    if per_neuron:
        y_om = np.where(y > 0, y, 0) if activation == "relu" else y
        e = eps * np.linalg.norm(y_om, axis=0) / np.linalg.norm(y_om)
        assert np.all(np.linalg.norm(d, axis=0) <= e * (1 + 1e-3))
    assert np.linalg.norm(d) <= eps * (1 + 1e-3)
    assert float(info.residual) <= 1 + 1e-3
    # The certificate is a true lower bound, and the gap it certifies is small.
    assert float(info.lower_bound) <= ref_value * (1 + 1e-6)
    assert float(info.lower_bound) > 0
    assert float(info.gap) <= 2e-3
    # Exact zeros: a sparse kernel.
    assert np.mean(k == 0) > 0.2


FEAS_TOL = 1e-6  # asked of the threshold excess in the reference comparisons


def _check_threshold_guarantee(sol, x, y, eps, per_neuron, feas_tol):
    """What a converged solve guarantees for the ReLU program's off-support excess
    E = (XU - V)_+ over Omega^c (V = 0 here), from the stopping test (admm._check,
    pdhg._check): ||E||_F <= feas_tol eps + 16 eps_mach ||Y||_F, per unit (eps_m, y_m) in
    per-neuron mode.  The 16 eps_mach ||Y||_F slack absorbs the rounding of the solver's
    float32 product and can exceed feas_tol eps, so no bound on max E relative to max |Y|
    alone holds.  The check here recomputes XU in float64: allow the float32 rounding of
    that product, eps_mach || |X| |U| ||, on top."""
    k = np.asarray(sol.kernel, np.float64)
    unit = np.finfo(np.asarray(sol.kernel).dtype).eps
    om = y > 0
    excess = np.where(om, 0, np.maximum(x @ k, 0))
    rounding = unit * np.abs(x) @ np.abs(k)
    if per_neuron:
        y_om = np.where(om, y, 0)
        budget = eps * np.linalg.norm(y_om, axis=0) / np.linalg.norm(y_om)
        bound = feas_tol * budget + 16 * unit * np.linalg.norm(y, axis=0)
        got, allow = np.linalg.norm(excess, axis=0), np.linalg.norm(rounding, axis=0)
    else:
        bound = feas_tol * eps + 16 * unit * np.linalg.norm(y)
        got, allow = np.linalg.norm(excess), np.linalg.norm(rounding)
    assert np.all(got <= bound + allow), (got, bound, allow)
    assert float(sol.info.violation) <= np.max(bound + allow)  # max entry <= Frobenius norm


@pytest.mark.parametrize("activation,per_neuron,solver", CASES)
@pytest.mark.parametrize("kind", ["random", "planted"])
def test_matches_interior_point_reference(kind, activation, per_neuron, solver):
    x, y = _problem(kind, activation, seed=3)
    eps = 0.05 * _omega_norm(y, activation)
    ref_value, _ = reference(x, y, eps, activation, per_neuron=per_neuron)
    sol = nt.solve_layer(
        x, y, epsilon=eps, activation=activation, per_neuron=per_neuron, solver=solver, feas_tol=FEAS_TOL
    )
    _check_against_reference(sol, ref_value, x, y, eps, activation, per_neuron)


@pytest.mark.parametrize("per_neuron, solver", [(False, "admm"), (False, "pdhg"), (True, "admm")])
@pytest.mark.parametrize("kind, seed", [("random", 5), ("planted", 7)])
def test_float32_threshold_excess_within_the_stopping_guarantee(kind, seed, per_neuron, solver):
    """Seeds where the excess exceeds 1e-5 max |Y| (the bound asserted before, which the
    solver never promised; 4 of 64 ReLU cases over seeds 0-7 broke it) but stays within
    what the stopping test guarantees (all 64, at most 0.985 of the bound)."""
    x, y = _problem(kind, "relu", seed=seed)
    eps = 0.05 * _omega_norm(y, "relu")
    sol = nt.solve_layer(x, y, epsilon=eps, per_neuron=per_neuron, solver=solver, feas_tol=FEAS_TOL)
    assert bool(sol.info.converged)
    _check_threshold_guarantee(sol, x, y, eps, per_neuron, FEAS_TOL)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_float64_matches_reference_tightly(activation):
    x, y = _problem("random", activation, seed=5)
    eps = 0.03 * _omega_norm(y, activation)
    ref_value, _ = reference(x, y, eps, activation)
    with jax.enable_x64(True):
        sol = nt.solve_layer(x, y, epsilon=eps, activation=activation, gap_tol=1e-5, eps_rel=1e-6, max_iters=20000)
        assert sol.kernel.dtype == jnp.float64
    _check_against_reference(sol, ref_value, x, y, eps, activation, False, rel=5e-5)


def test_nonzero_threshold_and_wide_layer():
    # N > P exercises the push-through (I + X X^T) path; V = -0.1 a strict margin.
    x, y, _ = relu_problem(40, 70, 3, seed=7, density=0.2)
    eps = 0.05 * _omega_norm(y, "relu")
    ref_value, _ = reference(x, y, eps, "relu", threshold=-0.1)
    sol = nt.solve_layer(x, y, epsilon=eps, threshold=-0.1, feas_tol=1e-5)
    assert bool(sol.info.converged)
    assert abs(float(sol.info.objective) - ref_value) <= 1e-3 * ref_value
    z = x @ np.asarray(sol.kernel, np.float64)
    assert np.max(np.where(y > 0, -np.inf, z)) <= -0.1 + 1e-5 * np.abs(y).max()
    assert float(sol.info.lower_bound) <= ref_value * (1 + 1e-6)


def test_default_tolerance_bounds_the_post_relu_error():
    # Converged with defaults: ||relu(XU) - Y||_F <= eps sqrt(1 + feas_tol^2).
    x, y, _ = relu_problem(160, 30, 5, seed=8, density=0.5)
    eps = 0.05 * np.linalg.norm(y)
    sol = nt.solve_layer(x, y, epsilon=eps)
    assert bool(sol.info.converged)
    out = np.maximum(x @ np.asarray(sol.kernel, np.float64), 0)
    assert np.linalg.norm(out - y) <= eps * (1 + 1e-6)


def test_per_neuron_vector_epsilon_and_layer_bound():
    x, y, _ = relu_problem(150, 25, 4, seed=11)
    eps_vec = 0.04 * np.linalg.norm(y, axis=0)
    sol = nt.solve_layer(x, y, epsilon=eps_vec, per_neuron=True)
    d = np.where(y > 0, x @ np.asarray(sol.kernel, np.float64) - y, 0)
    assert np.all(np.linalg.norm(d, axis=0) <= eps_vec * (1 + 1e-3))
    # A scalar epsilon is split so that the whole-layer bound still holds.
    eps = 0.04 * np.linalg.norm(y)
    sol = nt.solve_layer(x, y, epsilon=eps, per_neuron=True)
    d = np.where(y > 0, x @ np.asarray(sol.kernel, np.float64) - y, 0)
    assert np.linalg.norm(d) <= eps * (1 + 1e-3)
    assert float(sol.info.residual) <= 1 + 1e-3


def test_exact_support_recovery_from_gaussian_samples():
    # s-sparse columns, N = 120, P about 4 s log N: l1 recovers the support exactly.
    n, s, m = 120, 5, 3
    p = int(4 * s * np.log(n))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((p, n))
    w = np.zeros((n, m))
    for j in range(m):
        idx = rng.choice(n, s, replace=False)
        w[idx, j] = rng.choice([-1, 1], s) * rng.uniform(0.5, 1.5, s)
    y = x @ w
    with jax.enable_x64(True):
        sol = nt.solve_layer(
            x, y, epsilon=1e-4 * np.linalg.norm(y), activation="linear", gap_tol=1e-6, eps_rel=1e-7, max_iters=20000
        )
    k = np.asarray(sol.kernel)
    assert bool(sol.info.converged)
    found = np.abs(k) > 1e-3 * np.abs(k).max()
    np.testing.assert_array_equal(found, w != 0)
    np.testing.assert_allclose(k, w, atol=1e-2)


def test_relu_recovery_of_planted_layer():
    x, y, w = planted_sparse(300, 60, 3, s=4, seed=2)
    with jax.enable_x64(True):
        sol = nt.solve_layer(x, y, epsilon=1e-5 * np.linalg.norm(y), gap_tol=1e-6, eps_rel=1e-7, max_iters=20000)
    k = np.asarray(sol.kernel)
    np.testing.assert_array_equal(np.abs(k) > 1e-3 * np.abs(k).max(), w != 0)


def test_vmap_over_epsilons_equals_loop():
    x, y, _ = relu_problem(120, 20, 4, seed=4)
    scale = np.linalg.norm(y)
    epsilons = jnp.asarray([0.02, 0.05, 0.1]) * scale
    batched = jax.jit(jax.vmap(lambda e: nt.solve_layer(x, y, epsilon=e)))(epsilons)
    for i, e in enumerate(epsilons):
        one = nt.solve_layer(x, y, epsilon=e)
        # The batched loop runs every member to the last member's iteration count, so
        # members may take a few extra steps: compare to solver accuracy.
        np.testing.assert_allclose(batched.info.objective[i], one.info.objective, rtol=2e-3)
        np.testing.assert_allclose(batched.kernel[i], one.kernel, atol=2e-3 * np.abs(one.kernel).max())
        assert bool(batched.info.converged[i]) and bool(one.info.converged)
    assert np.all(np.diff(np.asarray(batched.info.objective)) < 0)  # looser budget, sparser


def test_vmap_over_a_batch_of_problems():
    probs = [relu_problem(100, 15, 3, seed=s) for s in range(3)]
    xs = jnp.stack([p[0] for p in probs])
    ys = jnp.stack([p[1] for p in probs])
    eps = 0.05 * jnp.sqrt(jnp.sum(ys**2, axis=(1, 2)))
    batched = jax.vmap(lambda a, b, e: nt.solve_layer(a, b, epsilon=e))(xs, ys, eps)
    for i in range(3):
        one = nt.solve_layer(xs[i], ys[i], epsilon=eps[i])
        np.testing.assert_allclose(batched.info.objective[i], one.info.objective, rtol=2e-3)


def test_float32_and_float64_agree():
    x, y, _ = relu_problem(150, 25, 4, seed=9)
    eps = 0.05 * np.linalg.norm(y)
    s32 = nt.solve_layer(x.astype(np.float32), y.astype(np.float32), epsilon=eps)
    assert s32.kernel.dtype == jnp.float32
    with jax.enable_x64(True):
        s64 = nt.solve_layer(x, y, epsilon=eps)
        assert s64.kernel.dtype == jnp.float64
    np.testing.assert_allclose(float(s32.info.objective), float(s64.info.objective), rtol=2e-3)
    k32, k64 = np.asarray(s32.kernel), np.asarray(s64.kernel)
    np.testing.assert_allclose(k32, k64, atol=2e-2 * np.abs(k64).max())


def test_jit_and_warm_start():
    x, y, _ = relu_problem(150, 25, 4, seed=1)
    eps = 0.05 * np.linalg.norm(y)
    jitted = jax.jit(lambda a, b: nt.solve_layer(a, b, epsilon=eps))
    cold = jitted(x, y)
    assert bool(cold.info.converged)
    # The full solver state is reused: the same problem is done at the first check ...
    again = nt.solve_layer(x, y, epsilon=eps, warm_start=cold)
    assert bool(again.info.converged) and int(again.info.iterations) <= 20
    # ... and a tighter solve continues from where the looser one stopped.
    warm = nt.solve_layer(x, y, epsilon=eps, warm_start=cold, gap_tol=2e-4, eps_rel=1e-5)
    fresh = nt.solve_layer(x, y, epsilon=eps, gap_tol=2e-4, eps_rel=1e-5)
    assert bool(warm.info.converged) and bool(fresh.info.converged)
    assert int(warm.info.iterations) < int(fresh.info.iterations)
    np.testing.assert_allclose(float(warm.info.objective), float(fresh.info.objective), rtol=1e-4)
    # A plain kernel is accepted as a warm start too.
    from_kernel = nt.solve_layer(x, y, epsilon=eps, warm_start=cold.kernel)
    assert bool(from_kernel.info.converged)


def test_not_converged_is_reported_and_warned():
    x, y, _ = relu_problem(150, 25, 4, seed=1)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sol = nt.solve_layer(x, y, epsilon=0.05 * np.linalg.norm(y), max_iters=20)
    assert not bool(sol.info.converged)
    assert int(sol.info.iterations) == 20
    assert float(sol.info.gap) > 1e-3 or float(sol.info.residual) > 1


def test_dead_layer_gives_zero_kernel():
    x, _, _ = relu_problem(50, 10, 3, seed=0)
    y = np.zeros((50, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = nt.solve_layer(x, y, epsilon=0.0)
    assert bool(sol.info.converged)
    assert np.all(np.asarray(sol.kernel) == 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(X=np.ones((5, 3)), Y=np.ones((4, 2)), epsilon=1.0), "samples"),
        (dict(X=np.ones((5,)), Y=np.ones((5, 2)), epsilon=1.0), "2-D"),
        (dict(X=np.full((5, 3), np.nan), Y=np.ones((5, 2)), epsilon=1.0), "NaN"),
        (dict(X=np.ones((5, 3)), Y=np.full((5, 2), np.inf), epsilon=1.0), "Y contains NaN or Inf"),
        (dict(X=np.ones((5, 3)), Y=np.ones((5, 2)), epsilon=-1.0), "epsilon must be >= 0"),
        (dict(X=np.ones((5, 3)), Y=np.ones((5, 2)), epsilon=1.0, activation="tanh"), "activation"),
        (dict(X=np.ones((5, 3)), Y=np.ones((5, 2)), epsilon=1.0, solver="sgd"), "solver"),
        (dict(X=np.ones((5, 3)), Y=-np.ones((5, 2)), epsilon=1.0), "negative"),
        (dict(X=np.ones((5, 3)), Y=np.ones((5, 2)), epsilon=np.ones(2)), "per_neuron"),
        (dict(X=np.ones((5, 3)), Y=np.ones((5, 2)), epsilon=1.0, activation="linear", threshold=0.1), "threshold"),
        (dict(X=np.ones((5, 3)), Y=np.ones((5, 2)), epsilon=1.0, threshold=np.ones((4, 2))), "broadcast"),
        (dict(X=np.ones((0, 3)), Y=np.ones((0, 2)), epsilon=1.0), "empty"),
    ],
)
def test_bad_input_raises_before_compiling(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nt.solve_layer(kwargs.pop("X"), kwargs.pop("Y"), **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="max_iter"):
        nt.solve_layer(np.ones((5, 3)), np.ones((5, 2)), epsilon=1.0, max_iter=3)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    rel=st.floats(0.01, 0.6),
    activation=st.sampled_from(["relu", "linear"]),
    density=st.floats(0.1, 1.0),
)
def test_property_certificate_brackets_the_optimum(seed, rel, activation, density):
    # Any problem: the lower bound never exceeds the interior-point optimum, and the
    # converged kernel is feasible and within the certified gap of it.
    x, y, w = relu_problem(40, 8, 3, seed=seed, density=density)
    if activation == "linear":
        y = x @ w
    eps = rel * _omega_norm(y, activation)
    ref_value, _ = reference(x, y, eps, activation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = nt.solve_layer(x, y, epsilon=eps, activation=activation, max_iters=3000)
    info = sol.info
    assert float(info.lower_bound) <= ref_value * (1 + 1e-5) + 1e-6
    assert np.all(np.isfinite(np.asarray(sol.kernel)))
    # every draw converges (in 20-190 iterations when this was written): a test that passed
    # with no converged draw would check nothing below
    assert bool(info.converged), (int(info.iterations), float(info.gap), float(info.residual))
    assert float(info.residual) <= 1 + 1e-5
    assert float(info.objective) <= ref_value * (1 + 2e-3) + 1e-6
    assert float(info.objective) >= float(info.lower_bound) * (1 - 1e-5)


def test_certificate_stop_and_residual_stop_agree():
    """The default stop (feasible kernel + certified gap) returns what the stricter
    residual_stop=True returns, to the certified tolerance, in fewer iterations (here the
    residuals are what binds: 100 vs 140 when this test was written)."""
    x, y, _ = relu_problem(200, 40, 6, seed=7)
    eps = 0.1 * np.linalg.norm(y)
    cert = nt.solve_layer(x, y, epsilon=eps)
    strict = nt.solve_layer(x, y, epsilon=eps, residual_stop=True, max_iters=20000)
    for sol in (cert, strict):
        assert bool(sol.info.converged)
        assert float(sol.info.gap) <= 1e-3 and float(sol.info.residual) <= 1.0
    assert int(cert.info.iterations) < int(strict.info.iterations)
    # Both are certified 1e-3-optimal, so their objectives agree to that tolerance.
    assert abs(float(cert.info.objective) - float(strict.info.objective)) <= 2e-3 * float(strict.info.objective)


def test_reference_fails_unless_optimal():
    """The cvxpy reference is only a reference when Clarabel solved it: an infeasible
    program (one input column, targets 1 and 0 on identical rows, epsilon 0) must fail the
    test, not return (inf, None)."""
    x = np.ones((4, 1))
    y = np.array([[1.0], [0.0], [1.0], [0.0]])
    with pytest.raises(AssertionError, match="reference solve ended 'infeasible', not optimal"):
        reference(x, y, 0.0, "relu")


@pytest.mark.parametrize(
    "per_neuron, solver, threshold",
    [(False, "admm", 0.0), (False, "pdhg", 0.0), (True, "admm", 0.0), (False, "admm", -0.1)],
)
def test_output_budget_matches_reference(per_neuron, solver, threshold):
    """relu_budget="output": the misfit on Omega and the excess over V off it share one
    ball; objective within 1e-3 of Clarabel's on that program, the returned kernel inside
    it (recomputed in float64), the certificate below the optimum, and never denser than
    the paper's program at the same epsilon (its feasible set is larger)."""
    x, y = _problem("random", "relu", seed=11)
    eps = 0.1 * _omega_norm(y, "relu")
    ref_value, _ = reference(x, y, eps, "relu", threshold=threshold, per_neuron=per_neuron, relu_budget="output")
    paper, _ = reference(x, y, eps, "relu", threshold=threshold, per_neuron=per_neuron)
    assert ref_value <= paper * (1 + 1e-6)
    sol = nt.solve_layer(
        x, y, epsilon=eps, threshold=threshold, per_neuron=per_neuron, solver=solver, relu_budget="output"
    )
    info = sol.info
    assert bool(info.converged)
    assert abs(float(info.objective) - ref_value) <= 1e-3 * ref_value
    assert float(info.lower_bound) <= ref_value * (1 + 1e-6)
    assert float(info.violation) == 0.0
    z = x @ np.asarray(sol.kernel, np.float64)
    om = y > 0
    d = np.where(om, z - y, np.maximum(z - threshold, 0))
    if per_neuron:
        e = eps * np.linalg.norm(np.where(om, y, 0), axis=0) / np.linalg.norm(np.where(om, y, 0))
        assert np.all(np.linalg.norm(d, axis=0) <= e * (1 + 2e-3))
    assert np.linalg.norm(d) <= eps * (1 + 2e-3)
    assert float(info.residual) <= 1 + 1e-3
    if threshold == 0.0:  # the ReLU output's own error is within the budget
        assert np.linalg.norm(np.maximum(z, 0) - y) <= eps * (1 + 2e-3)


def test_relu_budget_refuses_unknown_value():
    x, y = _problem("random", "relu", seed=1)
    with pytest.raises(ValueError, match="relu_budget must be 'omega' or 'output'"):
        nt.solve_layer(x, y, epsilon=0.1, relu_budget="outputs")


@pytest.mark.parametrize(
    "activation, per_neuron, solver",
    [("relu", False, "admm"), ("relu", False, "pdhg"), ("relu", True, "admm"), ("linear", False, "admm")],
)
def test_weighted_l1_matches_reference(activation, per_neuron, solver):
    """l1_weights=: the weighted program's optimum (Clarabel) within 1e-3, the certificate
    below it, and one reweighting step (weights from the l1 solution) at the same epsilon
    no denser than the l1 solution and inside the same ball."""
    x, y = _problem("random", activation, seed=5)
    eps = 0.1 * _omega_norm(y, activation)
    plain = nt.solve_layer(x, y, epsilon=eps, activation=activation, per_neuron=per_neuron, solver=solver)
    weights = np.asarray(nt.reweighting_weights(plain.kernel), np.float64)
    assert weights.min() > 0 and weights.max() == 1.0
    ref_value, _ = reference(x, y, eps, activation, per_neuron=per_neuron, weights=weights)
    sol = nt.solve_layer(
        x,
        y,
        epsilon=eps,
        activation=activation,
        per_neuron=per_neuron,
        solver=solver,
        l1_weights=weights,
        warm_start=plain.kernel,
    )
    info = sol.info
    assert bool(info.converged)
    assert abs(float(info.objective) - ref_value) <= 1e-3 * ref_value
    assert float(info.lower_bound) <= ref_value * (1 + 1e-6)
    assert float(info.residual) <= 1 + 1e-3
    assert np.count_nonzero(sol.kernel) <= np.count_nonzero(plain.kernel)


def test_weighted_l1_refuses_bad_weights():
    x, y = _problem("random", "relu", seed=1)
    n, m = x.shape[1], y.shape[1]
    with pytest.raises(ValueError, match="l1_weights must have the kernel's shape"):
        nt.solve_layer(x, y, epsilon=0.1, l1_weights=np.ones((n, m + 1)))
    for bad in (0.0, -1.0, np.nan):
        w = np.ones((n, m))
        w[0, 0] = bad
        with pytest.raises(ValueError, match="l1_weights must be finite and > 0"):
            nt.solve_layer(x, y, epsilon=0.1, l1_weights=w)
    with pytest.raises(ValueError, match="does not combine with structure='rows'"):
        nt.solve_layer(x, y, epsilon=0.1, l1_weights=np.ones((n, m)), structure="rows")


@pytest.mark.parametrize("solver", ["admm", "pdhg"])
@pytest.mark.parametrize("relu_budget", ["omega", "output"])
def test_high_epsilon_is_certified(solver, relu_budget):
    """At relative epsilon 0.5-0.7 (high sparsity) the solve ends certified, at Clarabel's
    optimum.  With a fixed radius shrink of 1e-3 the iterates converged to the shrunken
    program, whose optimum lies more than gap_tol above the true one: 5000 ADMM / 20000 PDHG
    iterations ended uncertified at a gap of 1.5-2.5e-3 on these problems."""
    x, y, _ = relu_problem(160, 30, 5, seed=0, density=0.5)
    eps = (0.7 if relu_budget == "omega" else 0.5) * _omega_norm(y, "relu")
    sol = nt.solve_layer(x, y, epsilon=eps, relu_budget=relu_budget, solver=solver, max_iters=2000)
    ref_value, _ = reference(x, y, eps, "relu", relu_budget=relu_budget)
    assert bool(sol.info.converged), sol.info
    assert float(sol.info.gap) <= 1e-3
    assert float(sol.info.lower_bound) <= ref_value * (1 + 1e-6)
    assert abs(float(sol.info.objective) - ref_value) <= 1e-3 * ref_value
    assert float(sol.info.residual) <= 1.0


@pytest.mark.parametrize("soft", [False, True])
def test_certificate_scales_columns_optimally(soft):
    """constraints.certificate: from any dual point (nonnegative off Omega), a bound no lower
    than the two closed-form rescalings (one factor per column, one for the block) and, where
    the optimum is known, never above it."""
    from nettrim_jax.solver import constraints

    x, y, _ = relu_problem(120, 20, 6, seed=3, density=0.5)
    eps = 0.4 * _omega_norm(y, "relu")
    ref_value, _ = reference(x, y, eps, "relu", relu_budget="output" if soft else "omega")
    omega = y > 0
    c = constraints.ConstraintSet(
        target=jnp.asarray(y, jnp.float32),
        omega=jnp.asarray(omega),
        radius=jnp.asarray(eps, jnp.float32),
        threshold=jnp.zeros((1, y.shape[1]), jnp.float32),
        soft=soft,
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        # A dual point near the misfit direction, with a column scale spread of 100x.
        lam = np.where(omega, rng.normal(size=y.shape) - 0.3 * y, np.abs(rng.normal(size=y.shape)))
        lam = (lam * np.exp(rng.uniform(-2.3, 2.3, size=(1, y.shape[1])))).astype(np.float32)
        xt_lam = x.T.astype(np.float32) @ lam
        cert = constraints.certificate(jnp.asarray(lam), jnp.asarray(xt_lam), c)
        col = np.abs(xt_lam).max(axis=0)
        old_cols = -float(constraints.support(jnp.asarray(lam / col), c))
        old_block = -float(constraints.support(jnp.asarray(lam / col.max()), c))
        lower = float(cert.lower)
        assert lower >= max(old_cols, old_block, 0.0) - 1e-5 * abs(ref_value)
        assert lower <= ref_value * (1 + 1e-5)
        assert float(cert.price) >= 0
