"""``prune`` report details a newcomer hit (issue 16): per-layer seconds of parallel runs,
the summary line, a warning for layers pruned to all zeros."""

import numpy as np
import pytest
from reference import random_mlp

from nettrim_jax import prune


def _net(seed=0, sizes=(8, 24, 16, 3)):
    return random_mlp(sizes, seed)


def _x(p=120, seed=1):
    return np.random.default_rng(seed).standard_normal((p, 8)).astype(np.float32)


def test_parallel_layer_seconds_add_up_to_at_most_the_run():
    """Each second is charged to one layer (not cumulative from the dispatch start), so the
    per-layer figures cannot add up to more than the whole run; no gamma in the summary."""
    rep = prune(_net(), _x(), scheme="parallel", epsilon=0.05, progress=False, max_iters=400).report
    seconds = [l.seconds for l in rep.layers]
    assert all(s >= 0 for s in seconds)
    assert sum(seconds) <= rep.seconds, (seconds, rep.seconds)
    summary = next(l for l in rep.to_markdown().splitlines() if "Net-Trim" in l and "nonzeros" in l)
    assert summary.startswith("parallel Net-Trim: nonzeros") and "gamma" not in summary


@pytest.mark.parametrize("scheme", ["cascade", "parallel"])
def test_layer_pruned_to_all_zeros_warns(scheme):
    """Every layer pruned to zeros: one warning per layer, then a CollapsedModelError (a
    constant model is no result; the result rides on the error)."""
    import nettrim_jax as nt

    with pytest.warns(RuntimeWarning) as rec, pytest.raises(nt.CollapsedModelError) as err:
        prune(_net(), _x(), scheme=scheme, epsilon=1e9, progress=False, max_iters=400)
    res = err.value.result
    assert res.report.nnz_after == 0 and res.report.output_spread == 0
    assert [str(w.message).split(" was")[0] for w in rec] == ["layer 0", "layer 1", "layer 2"]
    if scheme == "cascade":  # gamma shapes a cascade run: the summary keeps it
        assert next(l for l in res.report.to_markdown().splitlines() if "nonzeros" in l).startswith(
            "cascade Net-Trim (gamma=1.1): nonzeros"
        )


def test_cascade_gives_a_layer_the_pruned_prefix_does_not_reach_its_own_epsilon():
    """A branch reading the model's input beside the first pruned layer (as K and V beside Q)
    sees X_hat = X, where the gamma rule's budget is 0: it gets epsilon as the first layer
    does, and is pruned (it kept 240 of 264 weights at epsilon 4.7e-6 before)."""
    import jax.numpy as jnp
    from flax import nnx

    class TwoBranch(nnx.Module):
        def __init__(self, rngs):
            self.left = nnx.Linear(10, 24, rngs=rngs)
            self.right = nnx.Linear(10, 24, rngs=rngs)
            self.head = nnx.Linear(48, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(jnp.concatenate([nnx.relu(self.left(x)), nnx.relu(self.right(x))], -1))

    x = jnp.asarray(np.random.default_rng(0).standard_normal((300, 10)), jnp.float32)
    model = TwoBranch(nnx.Rngs(0))
    rep = prune(model, x, epsilon=0.5, progress=False).report
    left, right, head = rep.layers
    y_right = np.maximum(np.asarray(x @ model.right.kernel[...] + model.right.bias[...]), 0)
    assert right.epsilon == pytest.approx(0.5 * np.linalg.norm(y_right), rel=1e-3)
    assert right.nnz_after < 0.8 * right.N * right.M and right.converged
    assert head.epsilon > 0 and left.epsilon > 0


@pytest.mark.parametrize("kw", [dict(epsilon=0.1), dict(sparsity=0.6, refit=True), dict(epsilon=0.2, reweight=1)])
def test_a_linear_layer_with_many_rows_is_solved_on_its_gram_rows(monkeypatch, kw):
    """The linear output layer (600 rows, N = 17) is solved as its 17-row Gram problem
    (||XU - Y||^2 = ||RU - Q||^2 + c, epsilons mapped): the same program, so the same
    kernel within the solver's tolerance as on all 600 rows, the misfit measured on the
    rows within the budget, and the epsilon reported in the rows' units."""
    from nettrim_jax.network import problems

    net, x = random_mlp((8, 16, 3), 0), _x(600)
    reduced = []
    real = problems.gram_reduction
    monkeypatch.setattr(problems, "gram_reduction", lambda *a, **k: reduced.append(real(*a, **k)) or reduced[-1])
    gram = prune(net, x, progress=False, **kw)
    assert [r is not None for r in reduced] == [False, True]  # ReLU layer: P rows; linear: Gram
    monkeypatch.setattr(problems, "GRAM_ROWS", 10**9)
    rows = prune(net, x, progress=False, **kw)
    g, r = gram.report.layers[1], rows.report.layers[1]
    assert g.converged and r.converged
    assert g.misfit <= g.epsilon * (1 + 1e-5)
    assert abs(g.nnz_after - r.nnz_after) <= 2
    if "sparsity" not in kw:  # a count search may land one weight apart, at another epsilon of
        # the same count (11.1 and 12.0 here): epsilons and kernels are compared at fixed epsilon
        assert g.epsilon == pytest.approx(r.epsilon, rel=2e-2)
        k_g, k_r = np.asarray(gram.model[1].kernel), np.asarray(rows.model[1].kernel)
        assert np.linalg.norm(k_g - k_r) <= 2e-2 * np.linalg.norm(k_r)


def test_prune_with_the_pdhg_solver_certifies_the_same_program():
    """``prune(solver="pdhg")``: every layer certified and feasible, the same kept count as
    ADMM's (both solve the program to a 1e-3 gap)."""
    net, x = _net(), _x()
    admm = prune(net, x, scheme="parallel", epsilon=0.1, progress=False).report
    pdhg = prune(net, x, scheme="parallel", epsilon=0.1, solver="pdhg", progress=False, max_iters=20000).report
    assert all(l.converged and l.misfit <= l.epsilon * (1 + 1e-4) for l in pdhg.layers)
    assert abs(pdhg.nnz_after - admm.nnz_after) <= 0.02 * admm.nnz_after, (pdhg.nnz_after, admm.nnz_after)
    assert pdhg.options["solver"] == "pdhg"


def test_cascade_per_neuron_keeps_every_layer_within_its_budget():
    """Cascade with ``per_neuron=True``: each layer certified, its misfit within its epsilon,
    and each unit's own share within its own (the per-neuron program's constraint)."""

    net, x = _net(), _x()
    res = prune(net, x, scheme="cascade", epsilon=0.1, per_neuron=True, progress=False)
    assert all(l.converged and l.misfit <= l.epsilon * (1 + 1e-4) for l in res.report.layers)
    pruned = res.model
    # the first layer's per-unit budgets: 0.1 x each unit's own ||Y_m|| on its ReLU output
    A = np.concatenate([x, np.ones((len(x), 1), np.float32)], 1)
    W = np.concatenate([np.asarray(net[0].kernel), np.asarray(net[0].bias)[None]], 0)
    U = np.concatenate([np.asarray(pruned[0].kernel), np.asarray(pruned[0].bias)[None]], 0)
    Y = np.maximum(A @ W, 0)
    err = np.linalg.norm(np.maximum(A @ U, 0) - Y, axis=0)
    assert np.all(err <= 0.1 * np.linalg.norm(Y, axis=0) * (1 + 1e-3) + 1e-6), err / np.linalg.norm(Y, axis=0)
    assert res.report.nnz_after < res.report.nnz_before


def test_compact_refuses_a_residual_batchnorm_model_in_one_line():
    from flax import nnx

    import nettrim_jax as nt
    from nettrim_jax.models import ResNet

    m = ResNet(4, 10, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).random((8, 12, 12, 1)).astype(np.float32)
    res = nt.prune(m, x, epsilon=0.2, progress=False, max_iters=300)
    with pytest.raises(ValueError, match="cannot be described as a chain") as err:
        res.compact(x)
    assert "\n" not in str(err.value) and "residual" in str(err.value)


def test_compiled_programs_are_dropped_only_near_the_mapping_limit():
    """A process near the kernel's limit on memory mappings crashes in XLA at its next
    compile; ``release_if_crowded`` (called by every ``prune``) drops JAX's compiled
    programs there, and only there."""
    import jax

    from nettrim_jax.network.compiled import mapping_count, release_if_crowded

    count = mapping_count()
    if count is None:
        pytest.skip("no /proc/self/maps on this system")
    f = jax.jit(lambda v: v + 1)
    f(1.0)
    assert not release_if_crowded(limit=10 * count)
    assert f._cache_size() == 1, "far from the limit, the compiled program is kept"
    assert release_if_crowded(limit=count)
    assert f._cache_size() == 0, "past half the limit, it is dropped"
