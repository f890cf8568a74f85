"""``prune(sparsity=)`` / ``nettrim prune --sparsity``: the epsilons are searched so that the
network loses the asked fraction of its weights."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from reference import random_mlp

import nettrim_jax as nt
from nettrim_jax.network.targets import keep_counts

FAST = {"max_iters": 5000, "gap_tol": 1e-2, "progress": False}


def _net(seed=0):
    return random_mlp((12, 24, 16, 4), seed)


def _x(n=400, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 12)).astype(np.float32)


def _first_layer_program():
    """(X with its ones column (400, 13), Y = relu(X [W; b]) (400, 24)) of ``_net``'s first
    layer on ``_x``."""
    spec = _net()[0]
    x = np.concatenate([_x(), np.ones((400, 1), np.float32)], axis=1)
    return x, np.maximum(x @ np.concatenate([spec.kernel, spec.bias[None]]), 0)


def _sparsity(rep):
    return 1 - rep.nnz_after / rep.nnz_before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("scheme, allocation", [("cascade", "scores"), ("parallel", "uniform")])
def test_global_target_is_hit_within_half_a_point(scheme, allocation):
    res = nt.prune(_net(), _x(), scheme=scheme, sparsity=0.7, allocation=allocation, **FAST)
    assert abs(_sparsity(res.report) - 0.7) <= 0.005
    assert res.report.options["sparsity"] == 0.7 and res.report.options["allocation"] == allocation
    for layer in res.report.layers:  # the epsilon found is reported, per layer
        assert layer.epsilon > 0
    if allocation == "uniform":  # the last layer absorbs the others' misses (carry)
        for layer in res.report.layers[:-1]:
            assert abs(1 - layer.nnz_after / layer.nnz_before - 0.7) <= 0.02


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_one_epsilon_allocation_hits_the_target():
    """allocation="epsilon": every layer at one relative epsilon, searched over whole prunes
    (the first ones coarse) until the network's sparsity is within half a point."""
    res = nt.prune(_net(), _x(), sparsity=0.7, allocation="epsilon", **FAST)
    assert abs(_sparsity(res.report) - 0.7) <= 0.005
    opts = res.report.options
    assert opts["allocation"] == "epsilon" and opts["sparsity"] == 0.7 and opts["epsilon_search_prunes"] >= 2
    assert np.ndim(opts["epsilon"]) == 0 and opts["epsilon"] > 0  # one scalar: epsilon_1, gamma rule after
    with pytest.raises(ValueError, match="one global sparsity"):
        nt.prune(_net(), _x(), sparsity={"0": 0.5}, allocation="epsilon", **FAST)
    with pytest.raises(ValueError, match="on_layer= and resume= do not apply"):
        nt.prune(_net(), _x(), sparsity=0.5, allocation="epsilon", on_layer=print, **FAST)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_one_epsilon_allocation_with_reweighting():
    """allocation="epsilon" with reweight=1: the search's counts, then a reweighted prune at
    them: the same per-layer counts (within the count tolerance) and a smaller misfit in the
    first layer (the only one whose inputs both runs share)."""
    plain = nt.prune(_net(), _x(), sparsity=0.7, allocation="epsilon", **FAST)
    rew = nt.prune(_net(), _x(), sparsity=0.7, allocation="epsilon", reweight=1, **FAST)
    assert abs(_sparsity(rew.report) - 0.7) <= 0.005
    assert rew.report.options["reweight"] == 1
    assert rew.report.options["epsilon_search_prunes"] == plain.report.options["epsilon_search_prunes"] + 1
    for a, b in zip(rew.report.layers, plain.report.layers):
        assert abs(a.nnz_after - b.nnz_after) <= max(1, int(0.0025 * a.N * a.M))
    assert rew.report.layers[0].misfit < plain.report.layers[0].misfit


def test_scores_counts_respect_what_each_program_can_keep():
    """With 10 calibration rows a layer keeps at most min(N, 10) * M nonzeros: "scores" caps
    each layer there and gives what it cannot take to the others, total unchanged."""
    from nettrim_jax.network.adapters import adapt

    a = adapt(_net(), _x(n=10))
    args = (a.names, a.specs, a.first.inputs, ["relu", "relu", "linear"])
    caps = [10 * 24, 10 * 16, 10 * 4]  # N = 13, 25, 17 (bias row included), all above 10 rows
    assert keep_counts(*args, 0.1, "scores") == caps  # 702 wanted, 440 reachable
    keep = keep_counts(*args, 0.5, "scores")
    assert all(k <= c for k, c in zip(keep, caps)) and abs(sum(keep) - 390) <= 3, keep


def test_an_unreachable_target_is_reported():
    """With fewer program rows than inputs an l1 solution keeps at most about one nonzero per
    row in each unit: 10 samples cannot keep 90% of a 13-input layer, and prune says so,
    naming the layer furthest from its count."""
    with pytest.warns(
        RuntimeWarning, match=r"sparsity target 0.1 reached .*layer '\d' kept \d+ of the \d+ asked, 10 program rows"
    ):
        nt.prune(_net(), _x(n=10), scheme="parallel", sparsity=0.1, **FAST)


def test_per_layer_targets_and_untargeted_layers():
    res = nt.prune(_net(), _x(), sparsity={"0": 0.5, "1": 0.8}, **FAST)
    l0, l1, l2 = res.report.layers
    # a per-layer target has no later layer to carry its miss: within 1% of these small layers
    assert abs(l0.nnz_after - round(0.5 * l0.nnz_before)) <= 0.01 * l0.nnz_before
    assert abs(l1.nnz_after - round(0.2 * l1.nnz_before)) <= 0.01 * l1.nnz_before
    assert l2.nnz_after > 0  # the output layer follows its epsilon rule


def test_scores_allocation_matches_the_global_count():
    net, x = _net(), _x()
    from nettrim_jax.network.adapters import adapt

    a = adapt(net, x)
    keep = keep_counts(a.names, a.specs, a.first.inputs, ["relu", "relu", "linear"], 0.8, "scores")
    total = sum(int(np.prod(np.shape(s.kernel))) + s.kernel.shape[1] for s in a.specs)
    assert abs(sum(keep) - round(0.2 * total)) <= 3  # ties at the threshold only


def test_scores_compare_conv_and_dense_weights_per_row():
    """A 1x1 conv on images whose every pixel is the vector v applies its kernel to v once
    per pixel; a Dense layer with the same kernel applied to v once per sample does the same
    work per row, and the "scores" allocation keeps the same share of each (a sum over rows
    instead ranked the conv's weights 8x higher here, 64 pixels per image)."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((6, 6)).astype(np.float32)
    v = rng.standard_normal((20, 6)).astype(np.float32)
    images = np.broadcast_to(v[:, None, None, :], (20, 8, 8, 6)).copy()
    conv = nt.Conv(k[None, None], None, "relu", padding="VALID")
    dense = nt.Dense(1.01 * k, None, "linear")  # a hair larger: one ranking, interleaved
    keep = keep_counts(["conv", "dense"], [conv, dense], [images, v], ["relu", "linear"], 0.5, "scores")
    assert abs(keep[0] - keep[1]) <= 2, keep


@pytest.mark.parametrize(
    "bad, match",
    [
        (1.2, "in \\[0, 1\\)"),
        (-0.1, "in \\[0, 1\\)"),
        (float("nan"), "in \\[0, 1\\)"),
        ("a lot", "must be a number"),
        ({"nope": 0.5}, "not layers"),
    ],
)
def test_bad_sparsity_is_a_one_line_value_error(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        nt.prune(_net(), _x(), sparsity=bad, **FAST)
    assert "\n" not in str(e.value)


def test_bad_allocation():
    with pytest.raises(ValueError, match="allocation"):
        nt.prune(_net(), _x(), sparsity=0.5, allocation="magic", **FAST)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_sparsity(tmp_path, capsys):
    from nettrim_jax.cli import app
    from nettrim_jax.io import checkpoint as ck
    from nettrim_jax.io.convert import from_network

    ck.save(tmp_path / "ck", from_network(_net()), (12,))
    np.save(tmp_path / "x.npy", _x())
    args = [
        "prune",
        str(tmp_path / "ck"),
        "--data",
        str(tmp_path / "x.npy"),
        "--sparsity",
        "0.6",
        "--out",
        str(tmp_path / "o"),
        "--max-iters",
        "5000",
        "-q",
    ]
    assert app.main(args) == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert abs(1 - rep["nnz_after"] / rep["nnz_before"] - 0.6) <= 0.005
    assert rep["options"]["sparsity"] == 0.6
    assert app.main(args[:4] + ["--sparsity", "1.5", "--out", str(tmp_path / "p")]) == 2
    assert "--sparsity must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_reweighted_l1_is_sparser_at_one_epsilon_and_closer_at_one_count():
    """reweight=1 (parallel: every layer sees the same inputs either way): at one epsilon
    fewer nonzeros within the same budgets; at one sparsity per layer the same count within
    tolerance and a smaller misfit in every layer (measured 25-28% smaller)."""
    base = nt.prune(_net(), _x(), scheme="parallel", epsilon=0.1, **FAST)
    rew = nt.prune(_net(), _x(), scheme="parallel", epsilon=0.1, reweight=1, **FAST)
    assert rew.report.nnz_after < 0.95 * base.report.nnz_after
    for a, b in zip(rew.report.layers, base.report.layers):
        assert a.misfit <= a.epsilon * (1 + 1e-3) and a.epsilon == pytest.approx(b.epsilon)
    assert rew.report.options["reweight"] == 1
    # per-layer targets: a global one carries each layer's miss to the next, so counts differ
    per_layer = {"0": 0.7, "1": 0.7, "2": 0.7}
    base = nt.prune(_net(), _x(), scheme="parallel", sparsity=per_layer, **FAST)
    rew = nt.prune(_net(), _x(), scheme="parallel", sparsity=per_layer, reweight=1, **FAST)
    assert abs(_sparsity(rew.report) - 0.7) <= 0.005
    for a, b in zip(rew.report.layers, base.report.layers):
        assert abs(a.nnz_after - b.nnz_after) <= 2 and a.misfit < b.misfit, (a.name, a.nnz_after, b.nnz_after)


@pytest.mark.parametrize(
    "bad, match",
    [
        (-1, "reweight must be an integer >= 0"),
        (1.5, "reweight must be an integer >= 0"),
        (True, "reweight must be an integer >= 0"),
    ],
)
def test_bad_reweight_is_a_one_line_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        nt.prune(_net(), _x(), reweight=bad, **FAST)


def test_reweight_refuses_structured_programs():
    with pytest.raises(ValueError, match="does not combine with structure='units'"):
        nt.prune(_net(), _x(), reweight=1, structure="units", **FAST)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("grid", [1, 4])
def test_solve_to_count_with_an_epsilon_batch(grid):
    """The search opened by a vmapped batch of epsilons (grid=4, an accelerator's default)
    lands on the count like the sequential one; the solves it made include the batch."""
    from nettrim_jax.network.targets import solve_to_count

    x, y = _first_layer_program()
    keep = 200  # of 312 (the trained kernel is dense: the count falls steeply below ~150)
    found = solve_to_count(
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.zeros(()),
        "relu",
        keep,
        7.0,
        per_neuron=False,
        solver="admm",
        opts=(("gap_tol", 1e-2),),
        tol=10,
        grid=grid,
    )
    assert abs(found.nnz - keep) <= 10 and found.nnz == np.count_nonzero(found.kernel)
    assert found.solves >= grid and bool(found.info.converged)


@pytest.fixture(scope="module")
def digits_mlp():
    """The README's example: a 64-64-32-10 MLP trained on scikit-learn's digits."""
    from nettrim_jax import training

    x_train, y_train, x_test, y_test = training.load_digits_split()
    model = training.make_mlp((64, 64, 32, 10))
    training.train_classifier(model, x_train, y_train, steps=400)
    return model, x_train, x_test, y_test


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_default_allocation_beats_uniform_on_the_readme_mlp(digits_mlp):
    """The default ("scores") at least as accurate as "uniform" at 50-95%, and no layer left
    without weights.  Raw (unnormalised) scores gave the first layer 34 of 4160 weights at
    90% and a constant model (11.6%; uniform 69%)."""
    from nettrim_jax import training

    model, x_train, x_test, y_test = digits_mlp
    for s in (0.5, 0.8, 0.9, 0.95):
        acc = {}
        for allocation in ("scores", "uniform"):
            res = nt.prune(model, x_train, sparsity=s, allocation=allocation, progress=False)
            acc[allocation] = training.accuracy(res.model, x_test, y_test)
            assert min(layer.nnz_after for layer in res.report.layers) >= 10, (s, allocation)
        assert acc["scores"] >= acc["uniform"] - 0.005, (s, acc)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_collapsed_model_is_an_error(digits_mlp):
    """A prune whose outputs no longer depend on the input raises CollapsedModelError (the
    result rides on it) instead of returning a constant model; the command line exits 4."""
    model, x_train, _, _ = digits_mlp
    with pytest.raises(nt.CollapsedModelError, match="collapsed") as err:
        nt.prune(model, x_train, epsilon=[0.99, 0.99, 0.99], gamma=1.0, progress=False)
    rep = err.value.result.report
    assert rep.output_spread < 1e-3
    assert "keeps 0 of" in str(err.value)
    fine = nt.prune(model, x_train, epsilon=0.05, progress=False)
    assert fine.report.output_spread > 0.5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("scheme", ["cascade", "parallel"])
def test_resume_with_a_target_is_exact(scheme):
    """A run resumed from any finished layer ends with the uninterrupted run's kernels: the
    finished layers' misses are carried into the later counts as they were (they were not,
    so a resumed run kept 985 weights where the whole run kept 979)."""
    states = []
    kw = dict(scheme=scheme, sparsity=0.7, **FAST)
    full = nt.prune(_net(), _x(), on_layer=states.append, **kw)
    assert len(states) == 3
    for state in states[:2]:
        resumed = nt.prune(_net(), _x(), resume=state, **kw)
        assert resumed.report.nnz_after == full.report.nnz_after
        for a, b in zip(full.model, resumed.model):
            np.testing.assert_array_equal(np.asarray(a.kernel), np.asarray(b.kernel))


def test_search_started_above_the_zero_kernels_misfit_lands_on_the_count(monkeypatch):
    """A cascade's gamma rule can seed the search far above ||Y|| (the zero kernel's misfit,
    where the optimum is 0 weights); the search never solves up there and lands on the count
    (a TinyLM fc1 at 90% seeded at 2x ||Y|| spent its solves there, miscounted unconverged
    ones, and ended at 0 of 9332 weights)."""
    from nettrim_jax.network import targets
    from nettrim_jax.network.targets import solve_to_count

    seen = []
    real = targets.jitted_solver

    def spy(*a, **k):
        f = real(*a, **k)

        def g(A, Y, e, *rest):
            seen.append(e)
            return f(A, Y, e, *rest)

        return g

    monkeypatch.setattr(targets, "jitted_solver", spy)

    x, y = _first_layer_program()
    keep = 150
    found = solve_to_count(
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.zeros(()),
        "relu",
        keep,
        10 * float(np.linalg.norm(y)),
        per_neuron=False,
        solver="admm",
        opts=(("relu_budget", "output"),),
        tol=10,
    )
    assert abs(found.nnz - keep) <= 10 and bool(found.info.converged)
    assert found.epsilon < float(np.linalg.norm(y))
    assert seen and max(float(e) for e in seen) < float(np.linalg.norm(y))


def test_a_step_rounded_onto_the_ceiling_is_not_solved():
    """From half the zero kernel's misfit, a x2 step lands on the misfit up to rounding (it
    ran at 35.66565 x 2 = 71.3313, the misfit in float32, on one machine): the search goes
    halfway instead."""
    from nettrim_jax.network.targets import _below

    ceiling = 71.3314  # exp(log(c / 2) + log 2) is 1 ulp under c in float64
    step = math.exp(math.log(ceiling / 2) + math.log(2.0))
    assert step < ceiling and np.float32(step) == np.float32(ceiling)
    nxt = _below(step, ceiling / 2, ceiling)
    assert nxt == pytest.approx(ceiling / math.sqrt(2)) and nxt < ceiling
    assert _below(0.9 * ceiling, ceiling / 2, ceiling) == 0.9 * ceiling


@pytest.mark.parametrize("rechecks", [0, 2])
def test_a_capped_solves_spurious_count_is_solved_again(monkeypatch, rechecks):
    """A capped (coarse) solve's count is its unconverged iterate's: one that came back dense
    just above the count's epsilon (a ResNet conv under float64 gave 144 of 148 at 1% below
    converged 36s) became the bracket's dense end, and the search bisected onto it and ended
    at half its count.  After three solves on one side the search solves that end again with
    the full cap and lands on the count; without the recheck it does not.  The solver is a
    stand-in with a known count curve, n(eps) = 312 (1 - eps / 71.33), capped at 300
    iterations (so full and coarse solves are one, as in a quick run), whose solves come back
    dense and unconverged for eps in [1.01, 1.1] x eps* (n < keep there) unless continued
    from such an iterate."""
    from typing import NamedTuple

    from nettrim_jax.network import targets
    from nettrim_jax.network.targets import solve_to_count

    class Info(NamedTuple):
        converged: np.ndarray
        residual: np.ndarray
        iterations: np.ndarray

    size, ceiling, keep = 312, 71.33, 100
    star = ceiling * (1 - keep / size)
    calls = []

    def fake_solver(program, per_neuron, solver, relu, opts, *rest):
        def solve(A, Y, e, V, omega, w0, weights):
            e, resumed = float(e), bool(np.all(np.asarray(w0) != 0))
            stuck = 1.01 * star <= e <= 1.1 * star and not resumed
            n = size if stuck else int(np.clip(size * (1 - e / ceiling), 0, size))
            calls.append((e, n, resumed))
            K = (np.arange(size) < n).astype(np.float32).reshape(13, 24)
            return K, Info(np.asarray(not stuck), np.asarray(1.0), np.asarray(300))

        return solve

    monkeypatch.setattr(targets, "jitted_solver", fake_solver)
    monkeypatch.setattr(targets, "_RECHECKS", rechecks)
    Y = jnp.full((400, 24), ceiling / math.sqrt(400 * 24))  # ||Y|| = the zero kernel's misfit
    found = solve_to_count(
        jnp.ones((400, 13)),
        Y,
        jnp.zeros(()),
        "relu",
        keep,
        1.12 * star,
        per_neuron=False,
        solver="admm",
        opts=(("max_iters", 300),),
        tol=1,
    )
    assert found.nnz == np.count_nonzero(found.kernel) and bool(found.info.converged)
    if rechecks:
        assert abs(found.nnz - keep) <= 1, calls
    else:
        assert abs(found.nnz - keep) > 1, calls


def test_a_carried_miss_never_asks_a_layer_for_more_than_its_kernel():
    """A layer's shortfall goes to the next targeted layer up to that kernel's entries, the
    rest to the one after (a quick ResNet's head, 50 entries, was asked for 75 and its search
    spent its solves at epsilons down to 1e-11); a surplus is taken down to 0 the same way."""
    from nettrim_jax.network.problems import SolveConfig, carry_miss

    base = dict(
        per_neuron=False,
        solver="admm",
        opts=(),
        relative=True,
        max_patches=None,
        seed=0,
        gamma=1.0,
        per_layer=False,
        refit=False,
        output_epsilon=None,
        carry=True,
    )
    cfg = SolveConfig(keep=[10, 5, None, 8], sizes=(20, 6, 30, 50), **base)
    carry_miss(cfg, 0, np.ones(2))  # kept 2 of 10: 8 short, 1 fits layer 1, 7 go to layer 3
    assert cfg.keep == [10, 6, None, 15]
    cfg = SolveConfig(keep=[10, 5, None, 8], sizes=(20, 6, 30, 50), **base)
    carry_miss(cfg, 0, np.ones(18))  # kept 18: 8 over, layer 1 gives its 5, layer 3 its 3
    assert cfg.keep == [10, 0, None, 5]
    cfg = SolveConfig(keep=[10, 5, None, 8], **base)  # no sizes: all to the next, as before
    carry_miss(cfg, 0, np.ones(2))
    assert cfg.keep == [10, 13, None, 8]
