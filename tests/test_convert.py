"""Saving one's own Flax model as a checkpoint and loading a pruned one back
(``io.convert``), and overrides that contradict the forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nettrim_jax as nt
from nettrim_jax.io import checkpoint, convert
from nettrim_jax.io.checkpoint import CheckpointError


class MyMLP(nnx.Module):
    """A user's own module (not one of the package's): Linear -> relu -> Linear -> relu -> Linear."""

    def __init__(self, rngs):
        self.a = nnx.Linear(10, 16, rngs=rngs)
        self.b = nnx.Linear(16, 8, rngs=rngs)
        self.c = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.c(jax.nn.relu(self.b(jax.nn.relu(self.a(x)))))


class MyCNN(nn.Module):
    """Linen: conv -> relu -> avg pool -> conv -> relu -> max pool -> flatten -> dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(6, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


class BNNet(nnx.Module):
    """conv -> BatchNorm -> relu -> linear head: no ReLU directly after the conv."""

    def __init__(self, rngs):
        self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4 * 6 * 6, 3, rngs=rngs)
        self.bn.bias.value = jnp.linspace(-0.5, 0.5, 4)  # a trained BatchNorm: not the identity
        self.bn.mean.value = jnp.full(4, 0.2)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.c1(x)))
        return self.head(h.reshape(h.shape[0], -1))


def test_own_nnx_model_round_trip(tmp_path):
    model = MyMLP(nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((50, 10)).astype(np.float32)
    layers, shape = convert.from_model(model, x[:8])
    assert [(l["type"], l["activation"]) for l in layers] == [("dense", "relu")] * 2 + [("dense", "linear")]
    path = checkpoint.save(tmp_path / "mine", layers, shape)
    np.testing.assert_allclose(convert.apply(checkpoint.load(path).layers, x), model(x), rtol=1e-5, atol=1e-5)
    res = nt.prune(model, x, epsilon=0.1, progress=False, max_iters=500)
    pruned, _ = convert.from_model(res.model, x[:8])
    back = convert.load_into(model, pruned, x[:8])
    np.testing.assert_allclose(back(x), res.model(x), rtol=1e-5, atol=1e-5)
    assert np.array_equal(np.asarray(back.a.kernel[...]) == 0, np.asarray(res.model.a.kernel[...]) == 0)


def test_own_linen_chain_with_pooling():
    module = MyCNN()
    x = np.random.default_rng(1).standard_normal((6, 12, 12, 1)).astype(np.float32)
    variables = module.init(jax.random.key(0), x)
    layers, shape = convert.from_model((module, variables), x)
    assert [l["type"] for l in layers] == ["conv", "avgpool", "conv", "maxpool", "flatten", "dense"]
    assert shape == (12, 12, 1)
    np.testing.assert_allclose(convert.apply(layers, x), module.apply(variables, x), rtol=1e-4, atol=1e-5)
    new = convert.load_into((module, variables), layers, x)
    assert jax.tree.structure(new) == jax.tree.structure(variables)


def test_not_a_chain_is_refused_in_one_line():
    model = BNNet(nnx.Rngs(0))
    x = np.random.default_rng(2).standard_normal((5, 6, 6, 1)).astype(np.float32)
    with pytest.raises(CheckpointError, match="cannot store|cannot describe|cannot be described") as e:
        convert.from_model(model, x)
    assert "\n" not in str(e.value)


def test_override_contradicting_the_forward_pass_is_refused():
    """conv -> BatchNorm -> ReLU: forcing the ReLU program on the conv would prune against
    relu(z) while the model feeds relu(bn(z)) on; refused, not accepted silently."""
    model = BNNet(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((20, 6, 6, 1)), jnp.float32)
    with pytest.raises(ValueError, match="contradicts the model") as e:
        nt.prune(model, x, activations={"c1": "relu"}, progress=False, max_iters=100)
    assert "\n" not in str(e.value)


def test_load_into_shape_mismatch():
    model = MyMLP(nnx.Rngs(0))
    x = np.ones((4, 10), np.float32)
    layers, _ = convert.from_model(model, x)
    layers[1] = dict(layers[1], kernel=np.zeros((16, 9), np.float32), bias=np.zeros(9, np.float32))
    with pytest.raises(CheckpointError, match="layer 'b'"):
        convert.load_into(model, layers, x)
