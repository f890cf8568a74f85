"""Stacked (scanned) models: blocks built with ``nnx.vmap`` and applied with ``nnx.scan``, or
Linen's ``nn.scan`` with ``variable_axes={"params": 0}``, hold their layers' parameters with a
leading layer axis.  ``prune`` treats each slice as its own layer ("blocks/lin1[2]"), gets
the same weights as for the same blocks written out one by one, and writes them back stacked;
the pruned NNX model round-trips through Orbax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import nettrim_jax as nt

BLOCKS, D = 3, 16


class Block(nnx.Module):
    def __init__(self, d, rngs):
        self.lin1 = nnx.Linear(d, 2 * d, rngs=rngs)
        self.lin2 = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x):
        return x + self.lin2(nnx.relu(self.lin1(x)))


class Stacked(nnx.Module):
    """inp -> relu -> nnx.scan over BLOCKS residual blocks (stacked parameters) -> head."""

    def __init__(self, rngs, n=BLOCKS, d=D):
        self.inp = nnx.Linear(8, d, rngs=rngs)

        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return Block(d, rngs)

        self.blocks = create(rngs)
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(h, block):
            return block(h)

        return self.head(step(nnx.relu(self.inp(x)), self.blocks))


class Unrolled(nnx.Module):
    """The same network with its blocks in a list, weights copied from a ``Stacked``."""

    def __init__(self, stacked: Stacked):
        rngs = nnx.Rngs(0)
        self.inp = nnx.clone(stacked.inp)
        self.blocks = nnx.List([Block(D, rngs) for _ in range(BLOCKS)])
        for i, b in enumerate(self.blocks):
            for name in ("lin1", "lin2"):
                src, dst = getattr(stacked.blocks, name), getattr(b, name)
                dst.kernel.set_value(src.kernel.get_value()[i])
                dst.bias.set_value(src.bias.get_value()[i])
        self.head = nnx.clone(stacked.head)

    def __call__(self, x):
        h = nnx.relu(self.inp(x))
        for b in self.blocks:
            h = b(h)
        return self.head(h)


@pytest.fixture(scope="module")
def data():
    return jax.random.normal(jax.random.key(1), (300, 8))


def _stacked_kernels(model):
    return [np.asarray(getattr(model.blocks, n).kernel.get_value()) for n in ("lin1", "lin2")]


@pytest.mark.parametrize("kw", [dict(epsilon=0.1), dict(sparsity=0.5, scheme="parallel", refit=True)])
def test_nnx_scan_model_prunes_slice_by_slice_as_its_unrolled_twin(data, kw):
    model = Stacked(nnx.Rngs(0))
    twin = Unrolled(model)
    np.testing.assert_allclose(model(data), twin(data), rtol=1e-5, atol=1e-5)
    r = nt.prune(model, data, progress=False, **kw)
    u = nt.prune(twin, data, progress=False, **kw)
    names = [layer.name for layer in r.report.layers]
    assert names == ["inp"] + [f"blocks/lin{j}[{i}]" for i in range(BLOCKS) for j in (1, 2)] + ["head"]
    assert all(layer.converged for layer in r.report.layers)
    lin1, lin2 = _stacked_kernels(r.model)
    assert lin1.shape == (BLOCKS, D, 2 * D) and lin2.shape == (BLOCKS, 2 * D, D)  # written back stacked
    for i, b in enumerate(u.model.blocks):
        for name, stack in (("lin1", lin1), ("lin2", lin2)):
            want = np.asarray(getattr(b, name).kernel.get_value())
            assert np.count_nonzero(stack[i]) < stack[i].size  # every slice pruned
            np.testing.assert_allclose(stack[i], want, atol=2e-5, err_msg=f"{name}[{i}]")
    assert [layer.nnz_after for layer in r.report.layers] == pytest.approx(
        [layer.nnz_after for layer in u.report.layers], abs=2
    )
    np.testing.assert_allclose(r.model(data), u.model(data), rtol=1e-4, atol=1e-4)
    masks = r.masks
    assert masks["blocks"]["lin1"]["kernel"].shape == (BLOCKS, D, 2 * D)
    np.testing.assert_array_equal(np.asarray(masks["blocks"]["lin1"]["kernel"]), lin1 != 0)


def test_pruned_stacked_model_round_trips_through_orbax(data, tmp_path):
    model = Stacked(nnx.Rngs(0))
    pruned = nt.prune(model, data, epsilon=0.1, progress=False).model
    c = ocp.StandardCheckpointer()
    c.save((tmp_path / "ckpt").absolute(), nnx.state(pruned))
    c.wait_until_finished()
    fresh = Stacked(nnx.Rngs(7))
    nnx.update(fresh, c.restore((tmp_path / "ckpt").absolute(), nnx.state(fresh)))
    for a, b in zip(_stacked_kernels(fresh), _stacked_kernels(pruned)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh(data), pruned(data))
    rel = float(jnp.linalg.norm(pruned(data) - model(data)) / jnp.linalg.norm(model(data)))
    assert rel < 0.3, rel  # cascade at epsilon 0.1: 0.18 measured; all zeros would give 1.0


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.relu(nn.Dense(2 * D, name="lin1")(x))
        return x + nn.Dense(D, name="lin2")(h), None


class LinenModel(nn.Module):
    scanned: bool = True

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(D, name="inp")(x))
        if self.scanned:
            scan = nn.scan(LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=BLOCKS)
            h, _ = scan(name="blocks")(h, None)
        else:
            for i in range(BLOCKS):
                h, _ = LinenBlock(name=f"block{i}")(h, None)
        return nn.Dense(3, name="head")(h)


def test_linen_scan_model_prunes_as_its_unrolled_twin(data):
    model = LinenModel()
    v = model.init(jax.random.key(0), data)
    p = v["params"]
    unrolled = {"inp": p["inp"], "head": p["head"]}
    for i in range(BLOCKS):
        unrolled[f"block{i}"] = jax.tree.map(lambda a, i=i: a[i], p["blocks"])
    twin = LinenModel(scanned=False)
    np.testing.assert_allclose(model.apply(v, data), twin.apply({"params": unrolled}, data), rtol=1e-5, atol=1e-5)
    r = nt.prune((model, v), data, epsilon=0.1, progress=False)
    u = nt.prune((twin, {"params": unrolled}), data, epsilon=0.1, progress=False)
    assert [layer.name for layer in r.report.layers][1:3] == ["blocks/lin1[0]", "blocks/lin2[0]"]
    stacked = r.model["params"]["blocks"]
    assert stacked["lin1"]["kernel"].shape == (BLOCKS, D, 2 * D)
    for i in range(BLOCKS):
        for name in ("lin1", "lin2"):
            got, want = stacked[name]["kernel"][i], u.model["params"][f"block{i}"][name]["kernel"]
            assert np.count_nonzero(got) < got.size
            np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"{name}[{i}]")
    np.testing.assert_allclose(model.apply(r.model, data), twin.apply(u.model, data), rtol=1e-4, atol=1e-4)


def test_joint_refit_of_a_stacked_model_keeps_its_slices_supports(data):
    model = Stacked(nnx.Rngs(0))
    layerwise = nt.prune(model, data, epsilon=0.1, progress=False)
    joint = nt.prune(model, data, epsilon=0.1, joint_refit=20, progress=False)
    for a, b in zip(_stacked_kernels(layerwise.model), _stacked_kernels(joint.model)):
        assert b.shape == a.shape
        np.testing.assert_array_equal(a != 0, b != 0)
    j = joint.report.joint
    assert j["loss_after"] < 0.9 * j["loss_before"], j
