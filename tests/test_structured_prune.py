"""``prune(structure="units")``, ``pattern="N:M"`` and ``PruneResult.compact()`` on networks."""

import json

import numpy as np
import pytest
from reference import random_mlp

import nettrim_jax as nt
from nettrim_jax.io import convert
from nettrim_jax.network.specs import Flatten, Pool, apply_specs

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
OPTS = {"max_iters": 3000, "progress": False}


def _mlp(seed=0):
    return random_mlp((12, 24, 16, 4), seed)


def _cnn(seed=0):
    rng = np.random.default_rng(seed)
    return [
        nt.Conv((0.4 * rng.standard_normal((3, 3, 1, 4))).astype(np.float32), np.zeros(4, np.float32)),
        Pool("max", (2, 2), (2, 2)),
        nt.Conv((0.3 * rng.standard_normal((3, 3, 4, 6))).astype(np.float32), np.zeros(6, np.float32)),
        Flatten(),
        nt.Dense((0.1 * rng.standard_normal((4 * 4 * 6, 5))).astype(np.float32), None, "linear"),
    ]


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal((200, 12)).astype(np.float32)


@pytest.mark.parametrize("scheme", ["cascade", "parallel"])
def test_units_remove_whole_rows_and_compact_keeps_outputs(scheme):
    res = nt.prune(_mlp(), _x(), scheme=scheme, structure="units", epsilon=0.3, **OPTS)
    assert res.report.options["structure"] == "units"
    rows_zero = [int(np.sum(~np.any(np.asarray(s.kernel) != 0, axis=1))) for s in res.model]
    assert sum(rows_zero[1:]) > 0  # whole input units of later layers removed
    small = res.compact()
    widths = [np.shape(s.kernel) for s in small]
    assert widths[0][1] < 24 or widths[1][1] < 16
    for a, b in zip(widths[:-1], widths[1:]):
        assert a[1] == b[0]  # still a chain
    x = _x(seed=5)
    np.testing.assert_allclose(apply_specs(small, x), apply_specs(res.model, x), rtol=1e-5, atol=1e-5)


def test_compact_conv_channels_through_pool_and_flatten():
    net = _cnn()
    k = np.asarray(net[2].kernel).copy()
    k[:, :, 1, :] = 0  # nothing reads channel 1 of conv 0
    net[2] = net[2]._replace(kernel=k)
    d = np.asarray(net[4].kernel).copy()
    d[np.arange(d.shape[0]) % 6 == 3] = 0  # nothing reads channel 3 of conv 1 after the flatten
    net[4] = net[4]._replace(kernel=d)
    res = nt.PruneResult(model=net, masks=None, report=None)
    small = res.compact()
    assert np.shape(small[0].kernel)[-1] == 3 and np.shape(small[2].kernel)[2] == 3
    assert np.shape(small[2].kernel)[-1] == 5 and np.shape(small[4].kernel)[0] == 4 * 4 * 5
    x = np.random.default_rng(0).standard_normal((7, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(apply_specs(small, x), apply_specs(net, x), rtol=1e-5, atol=1e-5)


def test_units_on_conv_layers_prunes_channels():
    """Channel 1 of conv 0 barely reaches conv 1: the group program drops that input channel
    of conv 1 whole, and compact() then removes channel 1 from both convolutions."""
    x = np.random.default_rng(2).standard_normal((40, 8, 8, 1)).astype(np.float32)
    net = _cnn()
    k = np.asarray(net[2].kernel).copy()
    k[:, :, 1, :] *= 0.01
    net[2] = net[2]._replace(kernel=k)
    res = nt.prune(net, x, structure="channels", scheme="parallel", epsilon=0.2, **OPTS)
    pruned = np.asarray(res.model[2].kernel)
    assert not np.any(pruned[:, :, 1, :])  # the whole input channel is zero
    small = res.compact()
    assert np.shape(small[0].kernel)[-1] <= 3 and np.shape(small[2].kernel)[2] <= 3
    np.testing.assert_allclose(apply_specs(small, x), apply_specs(res.model, x), rtol=1e-4, atol=1e-5)


def test_units_after_a_flatten_remove_whole_channels_and_keep_kept_ones_whole():
    """The Dense layer reading conv 1's map flattened is grouped by that map's channels
    (feature f is channel f % 6): its zero rows are whole channels (with one group per
    feature, as before, 0.3 left single features of kept channels), so compact() removes
    every channel the group program dropped, and the refit fits every entry of the kept
    ones (a kept channel is kept whole)."""
    x = np.random.default_rng(2).standard_normal((60, 8, 8, 1)).astype(np.float32)
    net = _cnn()
    res = nt.prune(net, x, structure="units", scheme="cascade", epsilon=0.3, refit=True, joint_refit=0, **OPTS)
    rows = np.any(np.asarray(res.model[4].kernel) != 0, axis=1).reshape(16, 6)
    kept = rows.all(axis=0)
    assert np.array_equal(rows, np.broadcast_to(kept, rows.shape))  # whole channels only
    assert 1 <= kept.sum() < 6
    assert np.all(np.asarray(res.model[4].kernel).reshape(16, 6, 5)[:, kept, :] != 0)
    small = res.compact()
    assert np.shape(small[2].kernel)[-1] == kept.sum() and np.shape(small[4].kernel)[0] == 16 * kept.sum()
    np.testing.assert_allclose(apply_specs(small, x), apply_specs(res.model, x), rtol=1e-4, atol=1e-5)
    # the refit alone (no l0 finish, whose group steps fill groups anyway): here the
    # group-l1 solution has zeros inside kept channels (20-30 on this data), refit whole
    res = nt.prune(
        net, x, structure="units", scheme="cascade", epsilon=0.5, refit=True, finish=None, joint_refit=0, **OPTS
    )
    k = np.asarray(res.model[4].kernel).reshape(16, 6, 5)
    kept = np.any(k != 0, axis=(0, 2))
    assert 1 <= kept.sum() < 6 and np.all(k[:, kept, :] != 0)


def test_group_ids_of_a_flattened_map_and_the_filled_kernel():
    from nettrim_jax.solver import structure

    np.testing.assert_array_equal(structure.flat_channel_groups(6, 3), [0, 1, 2, 0, 1, 2, -1])
    with pytest.raises(ValueError, match="7 flattened features do not split into 3 channels"):
        structure.flat_channel_groups(7, 3)
    groups = np.array([0, 1, 0, 1, -1], np.int32)
    K = np.array([[2.0, 0], [0, 0], [0, 0], [0, 0], [0, 3]], np.float32)
    F = np.asarray(structure.filled(K, groups))
    assert np.all(F[[0, 2]] != 0) and not np.any(F[[1, 3]])  # group 0 kept whole, group 1 stays out
    np.testing.assert_array_equal(F[4], K[4])  # the ungrouped (bias) row keeps its support
    assert F[0, 0] == 2 and np.all(np.abs(F[[0, 2]][K[[0, 2]] == 0]) <= 1e-5)


def test_compact_nnx_and_linen_chains():
    """An NNX CNN chain (conv -> relu -> pool -> conv -> relu -> flatten -> linear) with a
    channel nothing reads comes back from compact(x) as an nnx.Sequential without it, same
    outputs; a Linen MLP with two unread units as the compacted spec network; without x or the
    Linen module, one line."""
    import flax.linen as nn
    import jax
    from flax import nnx

    from nettrim_jax.training import make_cnn

    x = np.random.default_rng(2).standard_normal((20, 8, 8, 1)).astype(np.float32)
    model = make_cnn(1, (4, 6), 16, 5, image_size=8, seed=0)
    k = model.convs[1].kernel.get_value()
    model.convs[1].kernel.set_value(k.at[:, :, 1, :].set(0))  # nothing reads channel 1 of conv 0
    res = nt.PruneResult(model=model, masks=None, report=None)
    small = res.compact(x)
    assert isinstance(small, nnx.Sequential)
    before = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    after = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(small, nnx.Param)))
    assert before - after == 9 * 1 + 1 + 9 * 6  # conv 0's channel (kernel, bias), conv 1's input slice
    xt = np.random.default_rng(3).standard_normal((9, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(small(xt), model(xt), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs x"):
        res.compact()

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, h):
            h = nn.relu(nn.Dense(24)(h))
            h = nn.relu(nn.Dense(16)(h))
            return nn.Dense(4)(h)

    xs = _x()
    variables = MLP().init(jax.random.key(0), xs[:1])
    params = jax.tree.map(np.array, variables["params"])
    params["Dense_1"]["kernel"][[3, 7]] = 0  # nothing reads units 3 and 7 of Dense_0
    lres = nt.PruneResult(model={"params": params}, masks=None, report=None)
    with pytest.raises(ValueError, match="needs module="):
        lres.compact(xs)
    specs = lres.compact(xs, module=MLP())
    assert isinstance(specs, list) and np.shape(specs[1].kernel)[0] == 22
    np.testing.assert_allclose(apply_specs(specs, xs), MLP().apply(lres.model, xs), rtol=1e-4, atol=1e-5)


def test_nm_pattern_holds_in_every_group():
    res = nt.prune(_mlp(), _x(), pattern="2:4", epsilon=0.05, **OPTS)
    for spec in res.model:
        k = np.asarray(spec.kernel)
        for i in range(0, k.shape[0], 4):
            assert int((k[i : i + 4] != 0).sum(axis=0).max()) <= 2
        assert int((k != 0).sum()) >= k.size // 4  # 2:4 keeps up to half; an all-zero kernel fails here
    assert res.report.options["pattern"] == "2:4"
    assert all(layer.converged for layer in res.report.layers)
    dense, pruned = apply_specs(_mlp(), _x()), apply_specs(res.model, _x())
    # 0.30 when written (an all-zero network gives 1.0)
    assert np.linalg.norm(pruned - dense) / np.linalg.norm(dense) < 0.45


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"structure": "rows?"}, "structure must be"),
        ({"structure": "units", "per_neuron": True}, "per_neuron"),
        ({"pattern": "4:2"}, "pattern 4:2 needs 0 < N < M"),
        ({"pattern": "2:4", "structure": "units"}, "unstructured"),
    ],
)
def test_bad_structure_values(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        nt.prune(_mlp(), _x(), **kw, **OPTS)
    assert "\n" not in str(e.value)


def test_cli_structure_compact(tmp_path, capsys):
    from nettrim_jax.cli import app
    from nettrim_jax.io import checkpoint as ck

    ck.save(tmp_path / "ck", convert.from_network(_mlp()), (12,))
    np.save(tmp_path / "x.npy", _x())
    rc = app.main(
        [
            "prune",
            str(tmp_path / "ck"),
            "--data",
            str(tmp_path / "x.npy"),
            "--epsilon",
            "0.3",
            "--structure",
            "units",
            "--compact",
            "--out",
            str(tmp_path / "o"),
            "--max-iters",
            "3000",
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    small = ck.load(tmp_path / "o" / "model").layers
    assert sum(np.shape(l["kernel"])[1] for l in small[:2]) < 40
    x = _x(seed=9)
    np.testing.assert_allclose(
        convert.apply(small, x), apply_specs(_prune_cli_reference(tmp_path), x), rtol=1e-4, atol=1e-4
    )
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["options"]["structure"] == "units"


def _prune_cli_reference(tmp_path):
    return nt.prune(_mlp(), _x(), structure="units", epsilon=0.3, **OPTS).model
