"""Net-Trim on a trained MLP (scikit-learn 8x8 digits): the paper's consistency claims,
scan vs loop, and NNX / Linen / plain-spec equivalence."""

from __future__ import annotations

import importlib
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import random_mlp

import nettrim_jax as nt
from nettrim_jax.training import LinenMLP, accuracy, make_mlp, train_classifier

cascade_mod = importlib.import_module("nettrim_jax.network.cascade")

SIZES = (64, 32, 32, 32, 10)  # layers 1 and 2 are square: a scan run in cascade mode
EPS = 0.1
GAMMA = 1.1
OPTS = dict(max_iters=1500, progress=False)
SLACK = 1e-3


def _prune(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ADMM max_iters reached (see report)
        return nt.prune(model, x, **{**OPTS, **kw})


@pytest.fixture(scope="module")
def trained(digits):
    xtr, ytr, xte, yte = digits
    model = make_mlp(SIZES, seed=0)
    train_classifier(model, xtr, ytr, steps=300)
    return model


@pytest.fixture(scope="module")
def calib(digits):
    return jnp.asarray(digits[0][:400])


@pytest.fixture(scope="module")
def parallel(trained, calib):
    return _prune(trained, calib, scheme="parallel", epsilon=EPS)


@pytest.fixture(scope="module")
def cascade(trained, calib):
    return _prune(trained, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA)


def _weights(model):
    return [
        (np.asarray(l.kernel.get_value(), np.float64), np.asarray(l.bias.get_value(), np.float64)) for l in model.layers
    ]


def _forward(weights, x):
    """Per-layer (input, output) of the MLP; output post-ReLU except the last (logits)."""
    xs, ys = [], []
    h = np.asarray(x, np.float64)
    for i, (k, b) in enumerate(weights):
        xs.append(h)
        z = h @ k + b
        h = np.maximum(z, 0) if i < len(weights) - 1 else z
        ys.append(h)
    return xs, ys


def _fro(a):
    return float(np.linalg.norm(a))


def test_parallel_each_layer_within_its_epsilon_and_network_within_bound(trained, parallel, calib):
    W = _weights(trained)
    U = _weights(parallel.model)
    xs, ys = _forward(W, calib)
    L = len(W)
    eps = [EPS * _fro(y) for y in ys]
    for l in range(L):
        out = xs[l] @ U[l][0] + U[l][1]
        out = np.maximum(out, 0) if l < L - 1 else out
        # layer l solved from the original network's own input: misfit <= epsilon_l
        assert _fro(out - ys[l]) <= eps[l] * (1 + SLACK), l
        np.testing.assert_allclose(parallel.report.layers[l].epsilon, eps[l], rtol=1e-4)
    # the network: Delta_L <= sum_l eps_l prod_{j>l} ||U_j||_2 (ReLU and in-between 1-Lipschitz)
    _, yh = _forward(U, calib)
    err = _fro(yh[-1] - ys[-1])
    bound = sum(eps[l] * np.prod([np.linalg.norm(U[j][0], 2) for j in range(l + 1, L)]) for l in range(L))
    assert err <= bound * (1 + SLACK)
    assert parallel.report.output_error == pytest.approx(err, rel=1e-3)
    assert parallel.report.bound == pytest.approx(bound, rel=1e-3)
    assert parallel.report.output_error <= parallel.report.bound


def test_cascade_output_within_the_derived_bound(trained, cascade, calib):
    W = _weights(trained)
    U = _weights(cascade.model)
    xs, ys = _forward(W, calib)
    xh, yh = _forward(U, calib)
    L = len(W)
    rep = cascade.report.layers
    eps1 = EPS * _fro(ys[0])
    np.testing.assert_allclose(rep[0].epsilon, eps1, rtol=1e-4)
    delta = [_fro(yh[l] - ys[l]) for l in range(L)]
    assert delta[0] <= eps1 * (1 + SLACK)
    for l in range(1, L):
        # epsilon_l = gamma x W_l's output-budget misfit on the pruned network's input:
        # ||(X_hat_l W_l - Y_l)_Omega||^2 + ||(X_hat_l W_l)_+ off Omega||^2, under sqrt
        z = xh[l] @ W[l][0] + W[l][1]
        r = np.where(ys[l] > 0, z - ys[l], np.maximum(z, 0)) if l < L - 1 else z - ys[l]
        np.testing.assert_allclose(rep[l].epsilon, GAMMA * _fro(r), rtol=1e-3)
        # one step of the recursion: Delta_l <= gamma ||W_l||_2 Delta_{l-1}
        assert delta[l] <= GAMMA * np.linalg.norm(W[l][0], 2) * delta[l - 1] * (1 + SLACK)
    # a posteriori: the final (linear) layer is within its own epsilon_L
    assert delta[-1] <= rep[-1].epsilon * (1 + SLACK)
    # a priori: ||Y_L - Y_hat_L||_F <= epsilon_1 prod_{l >= 2} gamma ||W_l||_2
    bound = eps1 * np.prod([GAMMA * np.linalg.norm(W[l][0], 2) for l in range(1, L)])
    assert delta[-1] <= bound
    assert cascade.report.bound == pytest.approx(bound, rel=1e-3)
    assert cascade.report.output_error == pytest.approx(delta[-1], rel=1e-3)


def test_cascade_paper_budget_keeps_the_paper_rule(trained, calib):
    """relu_budget="omega" (the paper's program): epsilon_l = gamma ||(X_hat W - Y)_Omega||
    and the pruned ReLU layer's misfit over Omega within it; the output budget's epsilon
    of the same layer is never smaller (it adds W's excess off Omega)."""
    paper = _prune(trained, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA, relu_budget="omega", scan=False)
    assert paper.report.options["relu_budget"] == "omega"
    W, U = _weights(trained), _weights(paper.model)
    xs, ys = _forward(W, calib)
    xh, _ = _forward(U, calib)
    z = xh[1] @ W[1][0] + W[1][1]
    np.testing.assert_allclose(
        paper.report.layers[1].epsilon, GAMMA * _fro(np.where(ys[1] > 0, z - ys[1], 0)), rtol=1e-3
    )
    out = xh[1] @ U[1][0] + U[1][1]
    assert _fro(np.where(ys[1] > 0, out - ys[1], 0)) <= paper.report.layers[1].epsilon * (1 + SLACK)
    soft = np.where(ys[1] > 0, z - ys[1], np.maximum(z, 0))
    assert GAMMA * _fro(soft) >= paper.report.layers[1].epsilon


def test_relu_budget_refused_when_unknown(trained, calib):
    with pytest.raises(ValueError, match="relu_budget must be 'output' or 'omega'"):
        nt.prune(trained, calib, relu_budget="exact", progress=False)


def _ls_residual(A, Y):
    coef = np.linalg.lstsq(A, Y, rcond=None)[0]
    return _fro(A @ coef - Y)


@pytest.mark.filterwarnings("ignore:Net-Trim solve did not converge:RuntimeWarning")  # max_iters=100
def test_cascade_output_epsilon_refits_the_output_layer(trained, cascade, calib):
    """output_epsilon: the hidden layers are the plain cascade's, the output layer gets the
    budget itself (not gamma x the propagated error), so the output error falls below the
    plain cascade's and within the budget, which is also the report's bound."""
    W = _weights(trained)
    _, ys = _forward(W, calib)
    xh, yh = _forward(_weights(cascade.model), calib)
    L = len(W)
    A = np.concatenate([xh[-1], np.ones((len(xh[-1]), 1))], 1)
    z = ys[-1]
    floor = 1.01 * _ls_residual(A, z) / _fro(z)
    plain = _fro(yh[-1] - z) / _fro(z)
    assert floor < 0.9 * plain  # the budget below is between the two: the test can fail
    budget = 0.5 * (floor + plain)
    res = _prune(trained, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA, output_epsilon=budget)
    U = _weights(res.model)
    for l in range(L - 1):  # the same programs upstream
        np.testing.assert_array_equal(U[l][0], _weights(cascade.model)[l][0])
    _, yo = _forward(U, calib)
    err = _fro(yo[-1] - z)
    rep = res.report
    assert rep.layers[-1].epsilon == pytest.approx(budget * _fro(z), rel=1e-4)
    assert err <= budget * _fro(z) * (1 + SLACK)
    assert err < 0.95 * plain * _fro(z)
    assert rep.bound == pytest.approx(budget * _fro(z), rel=1e-4)
    assert rep.output_error == pytest.approx(err, rel=1e-3)

    # a budget no kernel can meet is raised to 1.01 x the least-squares residual, with a warning
    with pytest.warns(RuntimeWarning, match="below what any kernel can reach"):
        low = nt.prune(
            trained,
            calib,
            scheme="cascade",
            epsilon=EPS,
            gamma=GAMMA,
            output_epsilon=0.5 * floor,
            progress=False,
            max_iters=100,
        )
    assert low.report.layers[-1].epsilon == pytest.approx(floor * _fro(z), rel=1e-3)


def test_pruned_model_is_sparse_accurate_and_input_untouched(trained, cascade, parallel, digits, calib):
    _, _, xte, yte = digits
    before = [np.array(a) for a in jax.tree.leaves(nnx.state(trained, nnx.Param))]
    acc0 = accuracy(trained, xte, yte)
    for res in (cascade, parallel):
        assert res.model is not trained
        rep = res.report
        assert rep.nnz_before == sum(int(np.count_nonzero(a)) for a in before)
        assert rep.nnz_after < 0.6 * rep.nnz_before
        for layer in rep.layers:
            assert layer.nnz_after < layer.nnz_before
        # masks: True exactly where the pruned weight is nonzero
        for m, p in zip(jax.tree.leaves(res.masks), jax.tree.leaves(nnx.state(res.model, nnx.Param))):
            np.testing.assert_array_equal(np.asarray(m), np.asarray(p) != 0)
        assert accuracy(res.model, xte, yte) >= acc0 - 0.08
        d = rep.to_dict()
        json.dumps(d)
        assert len(d["layers"]) == 4 and d["scheme"] in ("cascade", "parallel")
        md = rep.to_markdown()
        assert md.count("\n| layers/") == 4
        assert 0 < rep.output_discrepancy < 0.5
    # the cascade keeps the network output closer than the parallel scheme at equal epsilon_1
    assert cascade.report.output_discrepancy < parallel.report.output_discrepancy
    # the input model was not mutated
    after = [np.array(a) for a in jax.tree.leaves(nnx.state(trained, nnx.Param))]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_scan_and_loop_cascade_agree(trained, cascade, calib, monkeypatch):
    calls = []
    real = cascade_mod._scan_solver

    def spy(*a):
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(cascade_mod, "_scan_solver", spy)
    scanned = _prune(trained, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA, scan=True)
    assert len(calls) == 1  # layers 1-2 went through lax.scan
    calls.clear()
    looped = _prune(trained, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA, scan=False)
    assert not calls
    for a, b in zip(_weights(scanned.model), _weights(looped.model)):
        scale = np.abs(b[0]).max()
        np.testing.assert_allclose(a[0], b[0], atol=1e-4 * scale)
        np.testing.assert_allclose(a[1], b[1], atol=1e-4 * scale)
    for a, b in zip(scanned.report.layers, looped.report.layers):
        assert a.epsilon == pytest.approx(b.epsilon, rel=1e-4)
        assert abs(a.nnz_after - b.nnz_after) <= max(2, 0.01 * b.nnz_after)


def test_nnx_linen_and_specs_give_the_same_pruned_weights(trained, cascade, calib):
    W = _weights(trained)
    module = LinenMLP(SIZES[1:])
    variables = {
        "params": {
            f"Dense_{i}": {"kernel": jnp.asarray(k, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}
            for i, (k, b) in enumerate(W)
        }
    }
    np.testing.assert_allclose(module.apply(variables, calib), trained(calib), rtol=1e-5, atol=1e-5)
    specs = [
        nt.Dense(jnp.asarray(k, jnp.float32), jnp.asarray(b, jnp.float32), "relu" if i < len(W) - 1 else "linear")
        for i, (k, b) in enumerate(W)
    ]
    lin = _prune((module, variables), calib, scheme="cascade", epsilon=EPS, gamma=GAMMA)
    spc = _prune(specs, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA)
    ref = _weights(cascade.model)
    for i, (k, b) in enumerate(ref):
        lp = lin.model["params"][f"Dense_{i}"]
        for got in ((lp["kernel"], lp["bias"]), (spc.model[i].kernel, spc.model[i].bias)):
            np.testing.assert_allclose(np.asarray(got[0]), k, atol=1e-5)
            np.testing.assert_allclose(np.asarray(got[1]), b, atol=1e-5)
    # masks follow each model's own params structure
    assert set(lin.masks) == {f"Dense_{i}" for i in range(4)}
    np.testing.assert_array_equal(
        lin.masks["Dense_0"]["kernel"], np.asarray(lin.model["params"]["Dense_0"]["kernel"]) != 0
    )
    assert [l.name for l in lin.report.layers] == [f"Dense_{i}" for i in range(4)]
    # the input variables were not modified
    np.testing.assert_array_equal(variables["params"]["Dense_0"]["kernel"], W[0][0].astype(np.float32))


def _random_specs(seed=3, sizes=(20, 16, 12, 5)):
    """The network (its float64 weights, its specs) and 200 inputs drawn after it."""
    rng = np.random.default_rng(seed)
    specs = random_mlp(sizes, rng=rng)
    W = [(np.asarray(s.kernel, np.float64), np.asarray(s.bias, np.float64)) for s in specs]
    x = jnp.asarray(rng.normal(size=(200, sizes[0])), jnp.float32)
    return W, specs, x


# Layer 1, unit 8 of _random_specs() is active on a single sample (P = 200, N = 17): ADMM's
# per-neuron program for it does not converge (its misfit cycles around the budget: 1.0019 of
# it after 5000 iterations; solver='pdhg' certifies the layer).  Every other unit is checked.
DEGENERATE = (1, 8)


@pytest.fixture(scope="module")
def per_neuron():
    W, specs, x = _random_specs()
    # small units converge slowly in per-neuron mode: give the solver more iterations
    # the paper's program (misfit on Omega, z <= 0 off it), which the checks below spell out
    res = _prune(specs, x, scheme="parallel", epsilon=EPS, per_neuron=True, max_iters=5000, relu_budget="omega")
    U = [(np.asarray(l.kernel, np.float64), np.asarray(l.bias, np.float64)) for l in res.model]
    xs, ys = _forward(W, x)
    units = []  # per layer: (active samples, misfit, budget, largest z off Omega) per unit
    for l in range(len(W)):
        z = xs[l] @ U[l][0] + U[l][1]
        relu = l < len(W) - 1
        omega = ys[l] > 0 if relu else np.ones(ys[l].shape, bool)
        # per-unit budgets eps_m = eps_l ||y_m|| / ||Y_l||_F: each unit's program (misfit on
        # Omega, and z <= 0 off Omega) within its own
        share = EPS * np.linalg.norm(ys[l], axis=0)
        err = np.linalg.norm(np.where(omega, z - ys[l], 0), axis=0)
        off = np.max(np.where(omega, -np.inf, z), axis=0) if relu else np.full(z.shape[1], -np.inf)
        units.append((omega.sum(0), err, share, off, np.abs(ys[l]).max()))
    return res, units


def _unit_ok(units, l, m):
    active, err, share, off, scale = units[l]
    return err[m] <= share[m] * (1 + SLACK) + 1e-6 and off[m] <= 1e-3 * scale


def test_per_neuron_programs(per_neuron):
    res, units = per_neuron
    assert units[DEGENERATE[0]][0][DEGENERATE[1]] == 1  # the known unit is still the degenerate one
    failed = [
        (l, m, float(units[l][1][m] / units[l][2][m]))
        for l in range(len(units))
        for m in range(len(units[l][1]))
        if (l, m) != DEGENERATE and not _unit_ok(units, l, m)
    ]
    assert failed == []
    assert sum(len(u[1]) for u in units) == 16 + 12 + 5  # all units but DEGENERATE were checked
    assert res.report.nnz_after < 0.9 * res.report.nnz_before


@pytest.mark.xfail(
    strict=True,
    reason=(
        "solve_layer(per_neuron=True): a unit with a single active sample (P = 200, N = 17) is not "
        "converged by ADMM: its misfit cycles around the budget (1.0019 after 5000 iterations) and "
        "its gap between 5e-4 and 1e-2 whatever rho does; solver='pdhg' certifies the layer.  Known "
        "limitation on degenerate per-neuron programs; strict, so a fix is noticed"
    ),
)
def test_per_neuron_degenerate_unit(per_neuron):
    res, units = per_neuron
    assert _unit_ok(units, *DEGENERATE), units[DEGENERATE[0]][1][DEGENERATE[1]] / units[DEGENERATE[0]][2][DEGENERATE[1]]
    assert res.report.layers[DEGENERATE[0]].converged
