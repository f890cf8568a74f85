"""The l0 finish (``solver.l0``): the count kept, the objective never raised, the budget kept,
and a planted support found that the l1 solution's refit misses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import random_mlp, relu_problem

import nettrim_jax as nt
from nettrim_jax.solver.l0 import l0_finish
from nettrim_jax.solver.structure import row_groups


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


def test_a_linear_layers_finish_on_its_gram_matrix_equals_the_finish_on_its_rows(monkeypatch):
    """With P >= N a linear layer's refits run their CG on X^T X; forced onto the rows, the
    same steps give the same kernel and objective."""
    from nettrim_jax.solver import refit

    x, _, w = relu_problem(300, 40, 12, seed=5, density=0.4)
    y = x @ w + 0.05 * np.random.default_rng(0).standard_normal((300, 12))
    sol = nt.solve_layer(x, y, epsilon=0.3 * np.linalg.norm(y), activation="linear")
    assert refit.uses_gram(x, relu=False)
    on_gram, gram_info = l0_finish(x, y, sol.kernel, activation="linear", steps=8, cg_tol=0.0)
    monkeypatch.setattr(refit, "uses_gram", lambda X, relu: False)
    jax.clear_caches()  # the finish's compiled programs are traced again, on the rows
    on_rows, rows_info = l0_finish(x, y, sol.kernel, activation="linear", steps=8, cg_tol=0.0)
    assert int(gram_info.steps) == int(rows_info.steps) >= 1
    np.testing.assert_array_equal(np.asarray(on_gram) != 0, np.asarray(on_rows) != 0)
    np.testing.assert_allclose(np.asarray(on_gram), np.asarray(on_rows), rtol=1e-3, atol=1e-4)
    assert float(gram_info.objective_after) == pytest.approx(float(rows_info.objective_after), rel=1e-5)


def test_a_planted_relu_layer_is_recovered_at_the_count_the_l1_solution_kept():
    """At epsilon 0.3 ||Y|| the l1 solution keeps more weights than the planted layer has
    but not its support: the refit leaves error 9.85, the finish finds the layer (< 1e-3)."""
    x, y, w = relu_problem(400, 60, 20, seed=0, density=0.3)
    sol = nt.solve_layer(x, y, epsilon=0.3 * np.linalg.norm(y))
    _, rinfo = nt.refit_layer(x, y, sol.kernel)
    assert float(rinfo.error_after) > 1.0
    # CG to its full count finds the layer to the last digits; a CG stop (1e-4, or the
    # default 1e-3, of each system's right-hand side) finds the same support, less precisely
    for cg_tol, precision in ((0.0, 1e-3), (1e-4, 1e-2), (1e-3, 1e-2)):
        u, info = l0_finish(x, y, sol.kernel, steps=30, cg_tol=cg_tol)
        assert float(info.error_after) < precision * float(rinfo.error_after)
        assert int(info.swapped) > 0 and int(info.steps) > 0
        u = np.asarray(u)  # its spare count (more than the planted nonzeros) stays near 0
        assert np.max(np.abs(u[np.asarray(w) == 0])) < precision / 10 * np.max(np.abs(u))


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_one_for_one_swaps_mend_a_support_one_entry_off_in_every_unit(activation):
    """Each unit's start support is the planted one with its largest entry exchanged for a
    wrong input: one swap per unit (remove the wrong, add the right) fits the layer exactly,
    which the swaps find while keeping every unit's count; without them the error stays.
    Without the short refit after each round the stale weights make later swaps undo right
    ones (3.0 of 102 left on this layer)."""
    x, y, w = relu_problem(400, 40, 10, seed=2, density=0.25)
    w = np.asarray(w)
    if activation == "linear":
        y = x @ w
    rng = np.random.default_rng(0)
    start = w.copy()
    for m in range(w.shape[1]):
        on, off = np.flatnonzero(w[:, m]), np.flatnonzero(w[:, m] == 0)
        start[np.argmax(np.abs(w[:, m])), m] = 0
        start[rng.choice(off), m] = 1.0
        assert len(on) >= 2
    _, plain = l0_finish(x, y, start, activation=activation, steps=0, swaps=0)
    u, info = l0_finish(x, y, start, activation=activation, steps=0, swaps=6, cg_tol=0.0)
    u = np.asarray(u)
    assert float(plain.error_after) > 1.0
    assert float(info.error_after) < 1e-3 * float(plain.error_after)
    np.testing.assert_array_equal(u != 0, w != 0)  # the planted support, unit by unit
    assert int(info.swapped) == w.shape[1]


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


def test_the_finish_reports_every_cg_iteration_its_refits_ran():
    """With cg_tol 0 every refit runs rounds x cg_iters CG iterations: the start's refit, the
    reference's, and per step the union's (union_rounds) and the kept support's."""
    x, y, w = relu_problem(200, 30, 6, seed=5, density=0.4)
    sol = nt.solve_layer(x, y, epsilon=0.3 * np.linalg.norm(y))
    kw = dict(rounds=2, cg_iters=5, cg_tol=0.0, swaps=0, min_gain=0.0)
    assert int(l0_finish(x, y, sol.kernel, steps=0, **kw)[1].cg_iterations) == 10
    assert int(l0_finish(x, y, sol.kernel, steps=0, reference=w, **kw)[1].cg_iterations) == 20
    # one step (taken or not, its two refits ran): 10 + 5 + 10
    assert int(l0_finish(x, y, sol.kernel, steps=1, **kw)[1].cg_iterations) == 25
    # swaps: `inner` per round, then the last refit
    swapped = l0_finish(x, y, sol.kernel, steps=0, **{**kw, "swaps": 3}, inner=2)[1]
    assert int(swapped.cg_iterations) == 10 + 3 * 2 + 10
    # the group step's two refits too
    grouped = l0_finish(x, y, sol.kernel, steps=1, groups=row_groups(30, True), **kw)[1]
    assert int(grouped.cg_iterations) == 25


def test_the_finish_inside_another_program_equals_the_finish_called_alone():
    """At the top level the finish is compiled with the CPU backend's options, which JAX
    refuses on a nested jit; inside a user's jit (reference and swaps on) it is compiled as
    part of that program, to the same kernel."""
    x, y, w = relu_problem(200, 30, 6, seed=5, density=0.4)
    sol = nt.solve_layer(x, y, epsilon=0.3 * np.linalg.norm(y))
    kw = dict(steps=4, swaps=3, inner=2, reference=w)
    alone, info = l0_finish(x, y, sol.kernel, **kw)
    nested, nested_info = jax.jit(lambda x, y, k: l0_finish(x, y, k, **kw))(x, y, sol.kernel)
    np.testing.assert_array_equal(np.asarray(alone) != 0, np.asarray(nested) != 0)
    np.testing.assert_allclose(np.asarray(alone), np.asarray(nested), rtol=1e-4, atol=1e-5)
    assert int(info.cg_iterations) == int(nested_info.cg_iterations) > 0
    # concrete arrays closed over inside a jit: no tracer among the arguments, still nested
    closed, _ = jax.jit(lambda: l0_finish(jnp.asarray(x), jnp.asarray(y), sol.kernel, **kw))()
    np.testing.assert_allclose(np.asarray(alone), np.asarray(closed), rtol=1e-4, atol=1e-5)


def test_bad_steps_are_refused():
    x, y, _ = relu_problem(50, 5, 2)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        l0_finish(x, y, np.zeros((6, 2)), steps=-1)
    for bad in (dict(min_gain=1.0), dict(min_gain=-0.1), dict(union_rounds=0), dict(cg_tol=-1e-4)):
        with pytest.raises(ValueError, match="min_gain must be in"):
            l0_finish(x, y, np.zeros((6, 2)), **bad)
    for bad in (dict(swaps=-1), dict(candidates=0), dict(inner=-2)):
        with pytest.raises(ValueError, match="swaps and inner must be >= 0 and candidates >= 1"):
            l0_finish(x, y, np.zeros((6, 2)), **bad)


def test_prune_with_the_l0_finish_keeps_each_layers_count_and_never_fits_worse():
    net = random_mlp((12, 24, 16, 4), 0)
    x = np.random.default_rng(1).standard_normal((400, 12)).astype(np.float32)
    # parallel: each layer's convex solve is the same in both runs (in a cascade, a finished
    # layer changes the next one's inputs and so its searched count)
    kw = dict(sparsity=0.7, refit=True, progress=False, max_iters=3000, scheme="parallel", joint_refit=0)
    base = nt.prune(net, x, finish=None, **kw)
    l0 = nt.prune(net, x, **kw)  # refit=True ends with the l0 finish unless told otherwise
    assert l0.report.options["finish"] == "l0" and base.report.options["finish"] is None
    plain = nt.prune(net, x, sparsity=0.7, progress=False, max_iters=3000)
    assert plain.report.options["finish"] is None
    # the report counts the refit's and the finish's CG iterations; none without a refit
    assert all(layer.refit_iterations == 0 for layer in plain.report.layers)
    assert all(layer.refit_iterations > 0 for layer in base.report.layers + l0.report.layers)
    table = l0.report.to_markdown()
    assert "| refit CG |" in table
    assert all(f"| {layer.refit_iterations} | " in table for layer in l0.report.layers)
    for a, b in zip(base.report.layers, l0.report.layers):
        assert b.nnz_after <= a.nnz_after and b.nnz_after >= a.nnz_after - 2
        assert b.misfit <= a.misfit * (1 + 1e-4)
    with pytest.raises(ValueError, match="finish must be 'auto', 'l0' or None"):
        nt.prune(net, x, finish="l2", progress=False)


def _rows_kept(k):
    return set(np.flatnonzero(np.any(np.asarray(k)[:-1] != 0, axis=1)).tolist())


def test_the_group_finish_keeps_the_group_count_and_finds_planted_rows_from_a_bad_start():
    """A layer reading 14 of 40 inputs; started from 12 wrong-ish random rows, whole rows
    are swapped: 12 rows kept, the bias row's support as it was, the objective down
    (12073 -> 2200 measured, 12 of the 14 planted rows found)."""
    rng = np.random.default_rng(0)
    P, N, M = 400, 40, 20
    x = np.c_[rng.normal(size=(P, N)), np.ones(P)].astype(np.float32)
    w = (rng.normal(size=(N + 1, M)) * (rng.random((N + 1, 1)) < 0.3)).astype(np.float32)
    y = np.maximum(x @ w + 0.1 * rng.normal(size=(P, M)), 0).astype(np.float32)
    start = np.zeros_like(w)
    start[rng.choice(N, 12, replace=False)] = rng.normal(size=(12, M))
    start[-1] = 0.1
    u, info = l0_finish(x, y, start, groups=row_groups(N, True), steps=8)
    planted = _rows_kept(w)
    assert len(_rows_kept(u)) == 12
    assert len(_rows_kept(u) & planted) >= 11 > len(_rows_kept(start) & planted)
    assert np.all(np.asarray(u)[-1] != 0)
    assert float(info.objective_after) < 0.3 * float(info.objective_before)


def test_the_group_finish_from_a_group_l1_solution_never_fits_worse():
    x, y, _ = relu_problem(300, 30, 10, seed=2, density=0.3)
    sol = nt.solve_layer(x, y, epsilon=0.4 * np.linalg.norm(y), structure="rows")
    groups = np.arange(x.shape[1], dtype=np.int32)
    u, info = l0_finish(x, y, sol.kernel, groups=groups, steps=6)
    rows = lambda k: set(np.flatnonzero(np.any(np.asarray(k) != 0, axis=1)).tolist())  # noqa: E731
    assert 0 < len(rows(u)) <= len(rows(sol.kernel))
    assert float(info.objective_after) <= float(info.objective_before)
    with pytest.raises(ValueError, match="one id per kernel row"):
        l0_finish(x, y, sol.kernel, groups=groups[:-1])


def test_prune_units_with_the_l0_finish_keeps_each_layers_units_and_never_fits_worse():
    net = random_mlp((12, 24, 16, 4), 0)
    x = np.random.default_rng(1).standard_normal((400, 12)).astype(np.float32)
    kw = dict(epsilon=0.3, structure="units", refit=True, progress=False, max_iters=3000, joint_refit=0)
    base = nt.prune(net, x, finish=None, **kw)
    l0 = nt.prune(net, x, **kw)  # the default finish under a structure: whole units
    kernels = lambda r: [np.asarray(i.kernel) for i in r.model if hasattr(i, "kernel")]  # noqa: E731
    for a, b, ka, kb in zip(base.report.layers, l0.report.layers, kernels(base), kernels(l0)):
        assert np.any(kb != 0, axis=1).sum() <= np.any(ka != 0, axis=1).sum()
        assert b.misfit <= a.misfit * (1 + 1e-4)
    assert any(a.misfit > b.misfit * 1.01 for a, b in zip(base.report.layers, l0.report.layers))


def test_the_reference_start_is_taken_only_when_it_fits_better():
    """The planted kernel as reference: its support refit fits exactly, so the steps start
    from it; the support of a random reference fits worse, so the l1 start is kept."""
    x, y, w = relu_problem(400, 60, 20, seed=0, density=0.3)
    sol = nt.solve_layer(x, y, epsilon=0.3 * np.linalg.norm(y))
    _, plain = l0_finish(x, y, sol.kernel, steps=0)
    u, info = l0_finish(x, y, sol.kernel, steps=0, reference=w)
    assert bool(info.from_reference) and not bool(plain.from_reference)
    assert float(info.error_after) < 1e-3 * float(plain.error_after)
    assert np.count_nonzero(np.asarray(u)) <= np.count_nonzero(np.asarray(sol.kernel))
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    _, info = l0_finish(x, y, sol.kernel, steps=0, reference=noise)
    assert not bool(info.from_reference) and float(info.error_after) == float(plain.error_after)
    with pytest.raises(ValueError, match="reference must have the kernel's shape"):
        l0_finish(x, y, sol.kernel, reference=noise[:-1])
