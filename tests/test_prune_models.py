"""Real Flax models (issue 12): nnx.MultiHeadAttention's LinearGeneral projections and
Einsum projections are pruned (exact at epsilon 0); a BatchNorm + residual ResNet gets the
exact ReLU program through its affine epilogues, every conv; layers with no program get the
linear program by default, with the reason in the report."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nettrim_jax as nt
from nettrim_jax.models import ResNet, TinyLM
from nettrim_jax.network.projections import NotAProjection, einsum_plan


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn()


def test_einsum_plans():
    p = einsum_plan("...d,dhk->...hk", (6, 2, 3))
    x = jax.random.normal(jax.random.key(0), (4, 5, 6))
    k = jax.random.normal(jax.random.key(1), (6, 2, 3))
    z = jnp.einsum("...d,dhk->...hk", x, k)
    np.testing.assert_allclose(p.rows(x) @ p.matrix(k), p.cols(z), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(p.unmatrix(p.matrix(k), k.shape), k)
    np.testing.assert_array_equal(p.uncols(p.cols(z), z.shape), z)
    q = einsum_plan("bhk,khd->bd", (3, 2, 5))  # contracts two axes, kernel axes reordered
    x2 = jax.random.normal(jax.random.key(2), (4, 2, 3))
    k2 = jax.random.normal(jax.random.key(3), (3, 2, 5))
    np.testing.assert_allclose(q.rows(x2) @ q.matrix(k2), jnp.einsum("bhk,khd->bd", x2, k2), rtol=1e-5, atol=1e-5)
    for bad in ("bd,bdk->bk", "bcd,dk->cbk", "bd,de->b", "bd,dd->bd"):
        with pytest.raises(NotAProjection):
            einsum_plan(bad, (3, 3, 3) if ",bdk" in bad else (3, 3))


def test_attention_projections_pruned_and_exact_at_epsilon_zero():
    """Every projection of nnx.MultiHeadAttention (q, k, v, out: LinearGeneral) and the MLP
    is pruned (linear program where GELU/softmax/LayerNorm follow, reason stated); at
    epsilon 0 the pruned LM's logits equal the original's."""
    m = TinyLM(20, 8, 2, 8, mlp="gelu", rngs=nnx.Rngs(0))
    t = jax.random.randint(jax.random.key(1), (4, 8), 0, 20)
    res = _quiet(lambda: nt.prune(m, t, epsilon=0.0, scheme="parallel", progress=False, max_iters=2000))
    rows = {l.name: l for l in res.report.layers}
    b = "blocks/0/"
    assert list(rows) == [b + n for n in ("attn/query", "attn/key", "attn/value", "attn/out", "fc1", "fc2")] + ["head"]
    assert all(l.activation == "linear" for l in rows.values())
    assert rows[b + "fc1"].reason == "linear (followed by an op with no Net-Trim program: no ReLU follows it)"
    assert rows[b + "attn/query"].N == 9 and rows[b + "attn/query"].M == 8 and rows[b + "attn/query"].rows == 32
    assert rows[b + "attn/out"].N == 9  # (heads, head_dim) contracted: 8 inputs + bias
    np.testing.assert_allclose(res.model(t), m(t), rtol=0, atol=2e-3 * float(jnp.max(jnp.abs(m(t)))))
    assert res.model.blocks[0].attn.query.kernel.get_value().shape == (8, 2, 4)


def _resnet():
    m = ResNet(4, 10, rngs=nnx.Rngs(0))
    bns = (m.bn, m.block1.bn1, m.block1.bn2, m.block2.bn1, m.block2.bn2)
    for j, bn in enumerate(bns):  # trained-looking statistics; some negative BN scales
        k = jax.random.key(10 + j)
        bn.scale.set_value(jax.random.normal(k, bn.scale.get_value().shape))
        bn.bias.set_value(0.3 * jax.random.normal(jax.random.fold_in(k, 1), (4,)))
        bn.mean.set_value(0.1 * jax.random.normal(jax.random.fold_in(k, 2), (4,)))
        bn.var.set_value(0.5 + jax.random.uniform(jax.random.fold_in(k, 3), (4,)))
    m.eval()
    return m


def test_resnet_every_conv_gets_the_relu_program_exact_at_epsilon_zero(scheme="cascade"):
    """Cascade (offsets c re-measured on the pruned prefix); the parallel scheme's programs
    are checked at epsilon 0.05 below."""
    m = _resnet()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    res = _quiet(lambda: nt.prune(m, x, epsilon=0.0, scheme=scheme, progress=False, max_iters=2000))
    layers = res.report.layers
    assert [l.activation for l in layers] == ["relu"] * 5 + ["linear"]
    assert all(l.reason.startswith("relu via affine epilogue relu(a*z + c)") for l in layers[:5])
    assert any("flipped" in l.reason for l in layers[:5])  # negative BN scales were handled
    out0 = m(x)
    np.testing.assert_allclose(res.model(x), out0, rtol=0, atol=2e-3 * float(jnp.max(jnp.abs(out0))))
    assert res.report.nnz_after < res.report.nnz_before
    assert np.isinf(res.report.bound)
    d = res.report.to_dict()
    assert nt.network.report.PruneReport.from_dict(d).layers == layers
    assert "relu via affine epilogue" in res.report.to_markdown()


def test_resnet_epilogue_programs_hold_at_positive_epsilon():
    """epsilon 0.05: each conv's achieved misfit is within its epsilon, and the model output
    moves by a few percent, not more."""
    m = _resnet()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    res = _quiet(lambda: nt.prune(m, x, epsilon=0.05, scheme="parallel", progress=False, max_iters=2000))
    for l in res.report.layers:
        assert l.misfit <= 1.01 * l.epsilon + 1e-6
    assert res.report.output_discrepancy < 0.2
    _check_folding(res, x)


def test_linen_dense_general_and_einsum_projections():
    """Linen: DenseGeneral (two output axes, then contracting two axes) and a projection
    Einsum are pruned as dense programs; a batched einsum is left unpruned with its reason;
    epsilon 0 keeps the outputs."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.DenseGeneral((2, 3), name="split")(x))
            h = nn.DenseGeneral(4, axis=(-2, -1), name="merge")(h)
            h = nn.Einsum((4, 5), "...d,de->...e", name="proj")(nn.relu(h))
            w = nn.Einsum((6, 5, 5), "bte,bef->btf", use_bias=False, name="batched")
            return w(h)

    x = jax.random.normal(jax.random.key(0), (6, 7, 3))
    module = Net()
    variables = module.init(jax.random.key(1), x)
    with pytest.warns(UserWarning, match="'batched' left unpruned: einsum 'bte,bef->btf' shares"):
        res = _quiet(
            lambda: nt.prune((module, variables), x, epsilon=0.0, scheme="parallel", progress=False, max_iters=1500)
        )
    assert [(l.name, l.activation, l.N, l.M) for l in res.report.layers] == [
        ("split", "relu", 4, 6),
        ("merge", "relu", 7, 4),
        ("proj", "linear", 5, 5),
    ]
    out0 = module.apply(variables, x)
    np.testing.assert_allclose(module.apply(res.model, x), out0, rtol=0, atol=5e-3 * float(jnp.max(jnp.abs(out0))))


def test_grouped_and_depthwise_conv_block_programs(groups=4):
    """feature_group_count 4 (depthwise: 4 in-channels, 4 groups, 2 outputs each) with stride 2 and
    dilation 2: the block-diagonal program keeps every weight inside its group (the layer
    still runs as a grouped conv), behind a BatchNorm epilogue, exact at epsilon 0."""
    from nettrim_jax.network.specs import Conv, apply_layer, kernel_matrix, program_rows, with_matrix

    class G(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.g = nnx.Conv(4, 8, (3, 3), strides=2, kernel_dilation=2, feature_group_count=groups, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.head = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.g(nnx.relu(self.a(x)))))
            return self.head(h.mean(axis=(1, 2)))

    m = G(nnx.Rngs(0))
    m.bn.scale.set_value(jnp.linspace(-1.4, 2.1, 8))  # no zero scale
    m.bn.bias.set_value(jnp.linspace(-0.3, 0.3, 8))
    m.eval()
    x = jax.random.normal(jax.random.key(0), (3, 9, 9, 1))
    spec = Conv(
        kernel=m.g.kernel.get_value(), bias=m.g.bias.get_value(), strides=(2, 2), dilation=(2, 2), groups=groups
    )
    h = jax.random.normal(jax.random.key(1), (3, 9, 9, 4))
    z = apply_layer(spec, h)
    k = kernel_matrix(spec)
    assert k.shape == (4 // groups * 9 * groups + groups, 8 // groups)
    from nettrim_jax.network.specs import from_targets

    np.testing.assert_allclose(from_targets(spec, program_rows(spec, h) @ k, 8), z.reshape(-1, 8), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(with_matrix(spec, k).kernel, spec.kernel)
    res = _quiet(lambda: nt.prune(m, x, epsilon=0.0, scheme="parallel", progress=False, max_iters=1500))
    g = {l.name: l for l in res.report.layers}["g"]
    assert g.activation == "relu" and g.reason.startswith("relu via affine epilogue")
    assert res.model.g.kernel.get_value().shape == m.g.kernel.get_value().shape
    out0 = m(x)
    np.testing.assert_allclose(res.model(x), out0, rtol=0, atol=5e-3 * float(jnp.max(jnp.abs(out0))))


def _check_folding(plain, x):
    """Folding every conv's BatchNorm (BN becomes the identity) keeps the kernels' zeros and
    the pruned model's outputs."""
    from nettrim_jax.network.folding import fold_batchnorm

    names = [l.name for l in plain.report.layers]
    model, folded = fold_batchnorm(plain.model, x, names)
    assert folded == names[:5]
    for a, b in ((plain.model.stem, model.stem), (plain.model.block2.conv2, model.block2.conv2)):
        np.testing.assert_array_equal(a.kernel.get_value() != 0, b.kernel.get_value() != 0)
    np.testing.assert_allclose(model.bn.scale.get_value(), 1.0)
    out = plain.model(x)
    np.testing.assert_allclose(model(x), out, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(out))))


def test_prune_fold_batchnorm_option():
    """prune(fold_batchnorm=True) folds the BatchNorm after layer 'a' into it."""

    class Small(nnx.Module):
        def __init__(self, rngs):
            self.a, self.bn, self.b = (
                nnx.Linear(5, 6, rngs=rngs),
                nnx.BatchNorm(6, rngs=rngs),
                nnx.Linear(6, 2, rngs=rngs),
            )

        def __call__(self, t):
            return self.b(nnx.relu(self.bn(self.a(t))))

    s = Small(nnx.Rngs(0))
    s.bn.mean.set_value(jnp.full((6,), 0.2))
    s.bn.eval()
    t = jax.random.normal(jax.random.key(3), (40, 5))
    r = _quiet(lambda: nt.prune(s, t, epsilon=0.05, progress=False, max_iters=500, fold_batchnorm=True))
    assert r.report.options["fold_batchnorm"] == ["a"]
    np.testing.assert_allclose(r.model.bn.mean.get_value(), 0.0)
    assert bool(jnp.all(r.masks["a"]["kernel"].get_value() == (r.model.a.kernel.get_value() != 0)))
    # the folded model computes what it computed before the fold: its output is the dense
    # one's within the prune's misfit (0.074 relative when written) and equals the output of
    # the same prune without the fold (the epilogue program sees the same ReLU outputs)
    dense, folded = s(t), r.model(t)
    assert float(jnp.linalg.norm(folded - dense) / jnp.linalg.norm(dense)) < 0.15
    unfolded = _quiet(lambda: nt.prune(s, t, epsilon=0.05, progress=False, max_iters=500)).model(t)
    np.testing.assert_allclose(folded, unfolded, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(dense))))


def test_linen_model_with_a_train_argument():
    """A Flax-example-style Linen CNN whose __call__(x, train=True) switches BatchNorm and
    Dropout: called as module.apply(variables, x) it would write batch_stats, so prune says in
    one line how to call it; with model_kwargs={"train": False} it prunes, and the baselines
    take the same argument."""
    import flax.linen as linen

    from nettrim_jax import baselines

    class CNN(linen.Module):
        @linen.compact
        def __call__(self, x, train: bool = True):
            x = linen.Conv(8, (3, 3))(x)
            x = linen.BatchNorm(use_running_average=not train)(x)
            x = linen.Dropout(0.2, deterministic=not train)(linen.relu(x))
            return linen.Dense(10)(x.reshape((x.shape[0], -1)))

    m = CNN()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32))
    v = m.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
    with pytest.raises(ValueError, match=r"model_kwargs=\{'train': False\}") as err:
        nt.prune((m, v), x, epsilon=0.1, progress=False)
    assert len(str(err.value).splitlines()) == 1
    res = nt.prune((m, v), x, epsilon=0.1, progress=False, model_kwargs={"train": False}, max_iters=2000)
    assert [l.name for l in res.report.layers] == ["Conv_0", "Dense_0"]
    assert all(l.converged for l in res.report.layers) and res.report.nnz_after < res.report.nnz_before
    ref = m.apply(v, x, train=False)
    out = m.apply(res.model, x, train=False)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 0.2
    pruned, _ = baselines.prune_model((m, v), x, 0.5, "wanda", model_kwargs={"train": False})
    assert np.count_nonzero(np.asarray(pruned["params"]["Dense_0"]["kernel"])) == 2560


def test_programs_are_chosen_on_the_first_samples_whatever_the_calibration_size():
    """Detection runs on the first PROBE_SAMPLES samples only: 600 images and their first 256
    give every layer the same program and epilogue scale, and no probe runs more rows."""
    from nettrim_jax.network import activations
    from nettrim_jax.network.adapters import adapt

    m = _resnet()
    x = jax.random.normal(jax.random.key(3), (600, 12, 12, 1))
    chosen = []
    for data in (x, x[: activations.PROBE_SAMPLES]):
        net = adapt(m, data, None)
        seen = []
        run = net.run
        net.run = lambda specs, xs, *a, run=run, seen=seen: seen.append(xs.shape[0]) or run(specs, xs, *a)
        chosen.append(activations.choose_layers(net, data, net.first, None))
        assert seen and max(seen) == activations.PROBE_SAMPLES
    big, small = chosen
    assert [c.reason for c in big] == [c.reason for c in small]
    assert all(c.epilogue is not None for c in big[:-1])
    for a, b in zip(big[:-1], small[:-1]):
        np.testing.assert_array_equal(np.asarray(a.epilogue.scale), np.asarray(b.epilogue.scale))


def test_a_layer_whose_output_bypasses_its_relu_says_so():
    """relu(bn(z)) + z: the ReLU input is affine in z, but z also reaches the output another
    way, so the exact ReLU program does not apply; the report's reason names that test."""

    class Leaky(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(6, 8, rngs=rngs)
            self.b = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            z = self.a(x)
            return self.b(nnx.relu(2.0 * z + 0.1) + 0.5 * z)

    x = jax.random.normal(jax.random.key(0), (64, 6))
    res = _quiet(lambda: nt.prune(Leaky(nnx.Rngs(0)), x, epsilon=0.1, progress=False, max_iters=500))
    assert res.report.layers[0].reason == (
        "linear (followed by an op with no Net-Trim program: ReLU call 0: the layer's output also "
        "reaches the model by another path than this ReLU)"
    )


def test_layers_holding_a_kernel_that_are_not_pruned_are_named_in_the_report():
    """GPT-2's FlaxConv1D projections (a module of its own holding kernel (out, in)) and its
    tied head (nn.Dense applied with the embedding's transpose) are left dense by name, with
    the reason, in the report; before, the tied head raised a bare KeyError: 'kernel' and a
    custom projection vanished from the report."""
    import flax.linen as nn

    class Conv1D(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            k = self.param("kernel", nn.initializers.normal(0.3), (self.features, x.shape[-1]))
            return x @ k.T

    class Tied(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(16, name="fc")(x))
            h = nn.relu(Conv1D(16, name="c_attn")(h))
            emb = self.param("wte", nn.initializers.normal(0.3), (5, 16))
            return nn.Dense(5, use_bias=False).apply({"params": {"kernel": emb.T}}, h)

    x = jax.random.normal(jax.random.key(0), (200, 8))
    m = Tied()
    v = m.init(jax.random.key(1), x)
    with pytest.warns(UserWarning, match="'c_attn' left unpruned: holds a kernel but is a Conv1D"):
        r = nt.prune((m, v), x, epsilon=0.1, progress=False)
    assert [layer.name for layer in r.report.layers] == ["fc"]
    assert set(r.report.left_dense) == {"c_attn", "Dense (applied on its own)"}
    assert "tied embedding" in r.report.left_dense["Dense (applied on its own)"]
    np.testing.assert_array_equal(r.model["params"]["c_attn"]["kernel"], v["params"]["c_attn"]["kernel"])
    md = r.report.to_markdown()
    assert "Left dense: c_attn (holds a kernel but is a Conv1D" in md
    assert nt.PruneReport.from_dict(r.report.to_dict()).left_dense == r.report.left_dense

    class Proj(nnx.Module):
        def __init__(self, rngs):
            self.kernel = nnx.Param(0.3 * jax.random.normal(rngs.params(), (16, 16)))

        def __call__(self, x):
            return x @ self.kernel.T

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc, self.proj, self.head = nnx.Linear(8, 16, rngs=rngs), Proj(rngs), nnx.Linear(16, 5, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.proj(nnx.relu(self.fc(x)))))

    with pytest.warns(UserWarning, match="'proj' left unpruned: holds a kernel but is a Proj"):
        r = nt.prune(Net(nnx.Rngs(0)), x, epsilon=0.1, progress=False)
    assert [layer.name for layer in r.report.layers] == ["fc", "head"]
    assert list(r.report.left_dense) == ["proj"]
