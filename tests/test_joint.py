"""``prune(..., joint_refit=N)``: every pruned layer's kept weights re-fit together against
the original model's output (``network.joint``).  The supports (every count) are unchanged,
the output error falls from the layer-wise result's, the report says how it ended; the same
on a spec chain, an NNX model and a Linen model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import random_mlp

import nettrim_jax as nt


def _kernels(model):
    if isinstance(model, list):
        return [np.asarray(layer.kernel) for layer in model]
    if isinstance(model, nnx.Module):
        return [np.asarray(model.fc1.kernel.get_value()), np.asarray(model.fc2.kernel.get_value())]
    return [np.asarray(model["params"][k]["kernel"]) for k in ("fc1", "fc2")]


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2 = nnx.Linear(10, 40, rngs=rngs), nnx.Linear(40, 4, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="fc2")(nn.relu(nn.Dense(40, name="fc1")(x)))


def _models(x):
    linen = LinenNet()
    return {
        "specs": random_mlp((10, 40, 4), seed=3),
        "nnx": NNXNet(nnx.Rngs(0)),
        "linen": (linen, linen.init(jax.random.key(0), x)),
    }


def _output(model, x):
    if isinstance(model, list):
        for layer in model:
            x = x @ layer.kernel + layer.bias
            x = jax.nn.relu(x) if layer.activation == "relu" else x
        return np.asarray(x)
    if isinstance(model, nnx.Module):
        return np.asarray(model(x))
    return np.asarray(LinenNet().apply(model, x))


@pytest.mark.parametrize("kind", ["specs", "nnx", "linen"])
def test_joint_refit_keeps_every_support_and_lowers_the_output_error(kind):
    x = jax.random.normal(jax.random.key(1), (300, 10))
    model = _models(x)[kind]
    dense = _output(model if kind != "linen" else model[1], x)
    layerwise = nt.prune(model, x, sparsity=0.6, refit=True, joint_refit=0, progress=False)
    joint = nt.prune(model, x, sparsity=0.6, refit=True, joint_refit=50, progress=False)
    for a, b in zip(_kernels(layerwise.model), _kernels(joint.model)):
        np.testing.assert_array_equal(a != 0, b != 0)  # the masks are the layer-wise ones
        assert not np.allclose(a, b)  # and the kept weights moved
    j = joint.report.joint
    assert j["iterations"] >= 1 and j["loss_after"] < j["loss_before"]
    # one model pass to start, then at least one per iteration (more when a step backtracks)
    assert j["evaluations"] >= j["iterations"] + 1 and j["stopped"] in ("iterations", "stalled", "no decrease")
    assert j["stopped"] != "iterations" or j["iterations"] == 50

    def err(m):
        out = _output(m, x)
        return np.sum((out - dense) ** 2) / np.sum(dense**2)

    assert err(joint.model) == pytest.approx(j["loss_after"], rel=1e-3, abs=1e-7)
    assert err(layerwise.model) == pytest.approx(j["loss_before"], rel=1e-3, abs=1e-7)
    assert j["loss_after"] < 0.75 * j["loss_before"]  # 50 iterations: 0.36-0.58 of it measured
    assert joint.report.options["joint_refit"] == 50
    assert "Joint refit: relative squared output error" in joint.report.to_markdown()
    assert [layer.nnz_after for layer in joint.report.layers] == [layer.nnz_after for layer in layerwise.report.layers]


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_joint_refit_must_be_a_count_of_iterations(bad):
    x = jnp.ones((20, 10))
    with pytest.raises(ValueError, match="joint_refit must be 'auto' or a number of iterations"):
        nt.prune(random_mlp((10, 8, 3)), x, epsilon=0.1, joint_refit=bad, progress=False)


def test_refit_runs_the_joint_refit_on_dense_models_whatever_their_error():
    """The default ``joint_refit="auto"`` on a model without a convolution: with ``refit``, at
    most 100 iterations, at every output error (the floor is 0: its iterations are cheap);
    without ``refit``, no joint refit at all."""
    from nettrim_jax.network.options import JOINT_AUTO_ITERS

    x = jax.random.normal(jax.random.key(1), (300, 10))
    model = random_mlp((10, 40, 4), seed=3)
    layerwise = nt.prune(model, x, sparsity=0.6, refit=True, joint_refit=0, progress=False)
    assert not layerwise.report.joint
    for res in (
        nt.prune(model, x, sparsity=0.6, refit=True, progress=False),
        nt.prune(model, x, epsilon=0.01, refit=True, progress=False),  # error below 0.005
    ):
        j = res.report.joint
        assert res.report.options["joint_refit"] == "auto"
        assert (res.report.options["joint_iters"], res.report.options["joint_min_loss"]) == (100, 0.0)
        assert JOINT_AUTO_ITERS == 100 and 1 <= j["iterations"] <= 100 and j["loss_after"] < j["loss_before"]
    assert res.report.joint["loss_before"] < 0.005
    far = nt.prune(model, x, sparsity=0.6, refit=True, progress=False)
    assert not np.allclose(_kernels(far.model)[0], _kernels(layerwise.model)[0])
    plain = nt.prune(model, x, sparsity=0.6, progress=False)
    assert plain.report.options["joint_iters"] == 0 and not plain.report.joint


class SmallCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 6, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(6 * 8 * 8, 4, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x))
        return self.fc(h.reshape(h.shape[0], -1))


def test_refit_runs_the_joint_refit_on_a_convolutional_model_only_above_its_error_floor():
    """On a model with a convolution ``joint_refit="auto"`` runs only where the layer-wise
    relative squared output error is >= 0.005 (``options.joint_floor``): below it no
    iteration and no backward pass runs ("small error") and the model is the layer-wise one;
    above it the iterations run."""
    from nettrim_jax.network.options import JOINT_AUTO_MIN_LOSS

    x = jax.random.normal(jax.random.key(2), (60, 8, 8, 1))
    model = SmallCNN(nnx.Rngs(0))
    near = nt.prune(model, x, epsilon=0.01, refit=True, progress=False)
    j = near.report.joint
    assert near.report.options["joint_min_loss"] == JOINT_AUTO_MIN_LOSS == 0.005
    assert j["loss_before"] < 0.005 and (j["iterations"], j["evaluations"], j["stopped"]) == (0, 0, "small error")
    assert j["loss_after"] == j["loss_before"]
    exact = nt.prune(model, x, epsilon=0.01, refit=True, joint_refit=0, progress=False)
    for a, b in zip(jax.tree.leaves(nnx.state(near.model)), jax.tree.leaves(nnx.state(exact.model))):
        np.testing.assert_array_equal(a, b)
    far = nt.prune(model, x, sparsity=0.9, refit=True, progress=False).report.joint
    assert far["loss_before"] >= 0.005 and far["iterations"] >= 1 and far["loss_after"] < far["loss_before"]


def test_joint_refit_with_float64_inputs_on_a_float32_model():
    """Under jax_enable_x64 float64 calibration data made a float32 model's loss float64,
    which optax's line search (its state in the weights' dtype) refused."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (300, 10), dtype=jnp.float64)
        res = nt.prune(random_mlp((10, 40, 4), seed=3), x, sparsity=0.6, refit=True, joint_refit=10, progress=False)
    j = res.report.joint
    assert j["iterations"] >= 1 and j["loss_after"] < j["loss_before"]


def _rosenbrock(w):
    return jnp.sum(100.0 * (w[1:] - w[:-1] ** 2) ** 2 + (1.0 - w[:-1]) ** 2)


def test_the_lbfgs_reaches_a_known_minimum_and_never_rises():
    """The host-driven L-BFGS of the joint refit on the 6-d Rosenbrock function (minimum 0
    at all ones): every accepted iterate lowers the value, and it gets there."""
    from nettrim_jax.network import joint

    seen = []
    vg = jax.jit(jax.value_and_grad(_rosenbrock))

    def value_and_grad(w):
        v, g = vg(w)
        seen.append(float(v))
        return v, g

    w0 = jnp.asarray([-1.2, 1.0, -1.2, 1.0, -1.2, 1.0])
    w, f, start, iters, evals, stopped = joint._lbfgs(value_and_grad, w0, 500)
    assert start == pytest.approx(float(_rosenbrock(w0)))
    assert f < 1e-8 and np.allclose(np.asarray(w), 1.0, atol=1e-3)
    assert stopped in ("exact", "stalled") and iters < 500
    assert evals == len(seen) and evals < 3 * iters  # a backtracking step is the exception
    assert f == pytest.approx(float(_rosenbrock(w)), rel=1e-5, abs=1e-12)


def test_the_lbfgs_stops_when_the_loss_stalls_and_on_its_cap():
    from nettrim_jax.network import joint

    vg = jax.jit(jax.value_and_grad(_rosenbrock))
    w0 = jnp.asarray([-1.2, 1.0, -1.2, 1.0, -1.2, 1.0])
    *_, iters, _, stopped = joint._lbfgs(vg, w0, 5)
    assert (iters, stopped) == (5, "iterations")

    def flat(w):  # a constant plus a vanishing slope: no relative progress at all
        return 1.0 + 1e-9 * jnp.sum(w)

    *_, iters, _, stopped = joint._lbfgs(jax.jit(jax.value_and_grad(flat)), jnp.zeros(3), 100)
    assert stopped in ("stalled", "no decrease") and iters <= joint.STALL_WINDOW


def test_the_lbfgs_names_a_start_that_is_not_finite():
    from nettrim_jax.network import joint

    w, f, start, iters, evals, stopped = joint._lbfgs(lambda w: (jnp.nan, jnp.zeros_like(w)), jnp.zeros(3), 10)
    assert (iters, evals, stopped) == (0, 1, "not finite") and np.isnan(f)
