"""Unit checks for the pruning building blocks: conv patches, specs, masks, activation
detection, error paths, and device-count independence of the parallel scheme."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from reference import random_mlp

import nettrim_jax as nt
from nettrim_jax.network import specs as S

FAST = dict(max_iters=800, progress=False)


@pytest.mark.parametrize(
    "strides,padding,dilation,bias",
    [
        ((1, 1), "SAME", (1, 1), True),
        ((2, 1), "VALID", (1, 1), False),
        ((1, 2), ((1, 2), (0, 1)), (2, 1), True),
        ((2, 2), "SAME", (1, 2), True),
    ],
)
def test_patch_rows_times_kernel_matrix_is_the_convolution(strides, padding, dilation, bias):
    kx, kk, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, 3))
    spec = S.Conv(
        jax.random.normal(kk, (3, 2, 3, 5)),
        jax.random.normal(kb, (5,)) if bias else None,
        "relu",
        strides,
        padding,
        dilation,
    )
    z = S.apply_layer(spec, x)
    ref = lax.conv_general_dilated(
        x,
        spec.kernel,
        strides,
        S.normalize_padding(padding),
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if bias:
        ref = ref + spec.bias
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)
    A = S.layer_rows(spec, x)
    if bias:
        A = jnp.concatenate([A, jnp.ones((A.shape[0], 1))], 1)
    np.testing.assert_allclose(A @ S.kernel_matrix(spec), ref.reshape(-1, 5), rtol=1e-5, atol=1e-4)
    back = S.with_matrix(spec, S.kernel_matrix(spec))
    np.testing.assert_array_equal(back.kernel, spec.kernel)
    if bias:
        np.testing.assert_array_equal(back.bias, spec.bias)


def _random_mlp(sizes, seed=0, act="relu"):
    return random_mlp(sizes, seed, act)


def test_masked_optimizer_keeps_pruned_weights_exactly_zero():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32), "b": jnp.ones(4)}
    masks = {"w": jnp.asarray(rng.random((6, 4)) > 0.5), "b": jnp.ones(4, bool)}
    params = {"w": jnp.where(masks["w"], params["w"], 0.0), "b": params["b"]}
    tx = nt.masked(optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.1)), masks)
    state = tx.init(params)
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    loss = lambda p: jnp.sum((x @ p["w"] + p["b"] - 1.0) ** 2)
    p = params
    for _ in range(20):
        g = jax.grad(loss)(p)
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
    assert bool(jnp.all(p["w"][~masks["w"]] == 0))
    assert bool(jnp.all(p["w"][masks["w"]] != params["w"][masks["w"]]))
    assert loss(p) < loss(params)


def test_masked_fine_tuning_of_a_pruned_nnx_model(digits):
    from nettrim_jax.training import accuracy, make_mlp, train_classifier

    xtr, ytr, xte, yte = digits
    model = make_mlp((64, 16, 10), seed=1)
    train_classifier(model, xtr, ytr, steps=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = nt.prune(model, xtr[:300], scheme="parallel", epsilon=0.15, **FAST)
    pruned = res.model
    before = [np.asarray(a) for a in jax.tree.leaves(nnx.state(pruned, nnx.Param))]
    zeros = [a == 0 for a in before]
    train_classifier(pruned, xtr, ytr, steps=60, optimizer=nt.masked(optax.adamw(1e-3, weight_decay=1e-2), res.masks))
    after = [np.asarray(a) for a in jax.tree.leaves(nnx.state(pruned, nnx.Param))]
    masks = [np.asarray(m) for m in jax.tree.leaves(res.masks)]
    assert sum(int(z.sum()) for z in zeros) > 0
    for b, a, m, z in zip(before, after, masks, zeros):
        np.testing.assert_array_equal(m, b != 0)  # masks match the exact zeros
        assert np.all(a[z] == 0)  # zeros stay exactly zero
    assert any(np.any(a[~z] != b[~z]) for a, b, z in zip(after, before, zeros))
    assert accuracy(pruned, xte, yte) > 0.8


class _TanhNet(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(5, 6, rngs=rngs)
        self.b = nnx.Linear(6, 7, rngs=rngs)
        self.c = nnx.Linear(7, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.a(x))
        h = jnp.tanh(self.b(h))
        return self.c(h)


class _LinearMiddle(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(5, 6, rngs=rngs)
        self.b = nnx.Linear(6, 7, rngs=rngs)
        self.c = nnx.Linear(7, 3, rngs=rngs)

    def __call__(self, x):
        h = self.a(x)  # no activation: linear program
        h = nnx.relu(self.b(h) * 1.0)  # relu (through a scaling): relu program
        return self.c(h)


def test_activation_detection_and_unsupported_error_path():
    x = jax.random.normal(jax.random.key(0), (200, 5))
    net = _TanhNet(nnx.Rngs(0))
    with pytest.raises(ValueError, match="no program"):
        nt.prune(net, x, on_unsupported="error", **FAST)
    with pytest.warns(UserWarning, match="skipping"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = nt.prune(net, x, on_unsupported="skip", epsilon=0.1, scheme="parallel", **FAST)
    progs = {l.name: l.activation for l in res.report.layers}
    assert progs == {"a": "relu", "b": "skipped", "c": "linear"}
    np.testing.assert_array_equal(res.model.b.kernel.get_value(), net.b.kernel.get_value())
    assert bool(jnp.all(res.masks["b"]["kernel"].get_value()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = nt.prune(_LinearMiddle(nnx.Rngs(1)), x, epsilon=0.1, scheme="parallel", **FAST)
    assert [l.activation for l in res.report.layers] == ["linear", "relu", "linear"]
    with pytest.raises(ValueError, match="not layers"):
        nt.prune(net, x, activations={"nope": "relu"}, **FAST)


def test_progress_bar_and_quiet(capsys):
    net = _random_mlp((6, 8, 4))
    x = jax.random.normal(jax.random.key(2), (100, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nt.prune(net, x, scheme="parallel", epsilon=0.1, max_iters=800, progress=True)
        assert "Net-Trim (parallel)" in capsys.readouterr().err
        nt.prune(net, x, scheme="parallel", epsilon=0.1, max_iters=800, progress=False)
        captured = capsys.readouterr()
        assert captured.err == "" and captured.out == ""


def test_plain_specs_with_callables_and_declared_activations():
    layers = _random_mlp((6, 8, 4))
    layers[0] = layers[0]._replace(activation=jax.nn.gelu)
    x = jax.random.normal(jax.random.key(2), (100, 6))
    with pytest.raises(ValueError, match="no program"):
        nt.prune(layers, x, on_unsupported="error", **FAST)
    net = [lambda t: t * 2.0, *_random_mlp((6, 8, 4))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = nt.prune(net, x, scheme="parallel", epsilon=0.1, **FAST)
    assert res.masks[0] is None and res.model[0] is net[0]
    assert [l.name for l in res.report.layers] == ["1", "2"]
    assert [l.activation for l in res.report.layers] == ["relu", "linear"]
    np.testing.assert_array_equal(res.masks[1].kernel, np.asarray(res.model[1].kernel) != 0)
    json.dumps(res.report.to_dict())
    with pytest.raises(ValueError, match="scheme"):
        nt.prune(net, x, scheme="nope")
    with pytest.raises(ValueError, match="gamma"):
        nt.prune(net, x, gamma=0.5)
    with pytest.raises(ValueError, match="entries"):
        nt.prune(net, x, epsilon=[0.1, 0.1, 0.1])


_DEVICE_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import jax, jax.numpy as jnp, numpy as np
    import nettrim_jax as nt
    warnings.simplefilter("ignore", RuntimeWarning)
    rng = np.random.default_rng(0)
    sizes = (12, 16, 16, 10, 5)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nt.Dense(jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32),
                               jnp.asarray(0.1 * rng.normal(size=b), jnp.float32),
                               "linear" if i == len(sizes) - 2 else "relu"))
    x = jnp.asarray(rng.normal(size=(150, 12)), jnp.float32)
    res = nt.prune(layers, x, scheme="parallel", epsilon=0.1, max_iters=600, progress=False)
    np.savez(sys.argv[1], ndev=len(jax.devices()),
             **{f"k{i}": np.asarray(l.kernel) for i, l in enumerate(res.model)},
             **{f"b{i}": np.asarray(l.bias) for i, l in enumerate(res.model)})
""")


def test_parallel_results_do_not_depend_on_the_device_count(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_DEVICE_SCRIPT)
    out = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        path = tmp_path / f"r{n}.npz"
        subprocess.run([sys.executable, str(script), str(path)], env=env, check=True, timeout=300)
        out[n] = dict(np.load(path))
    assert int(out[1]["ndev"]) == 1 and int(out[4]["ndev"]) == 4
    for key in [k for k in out[1] if k != "ndev"]:
        np.testing.assert_array_equal(out[1][key], out[4][key], err_msg=key)
    assert sum(int(np.sum(out[4][k] == 0)) for k in out[4] if k.startswith("k")) > 0


def test_report_does_not_claim_a_bound_that_failed():
    """The bound assumes every program was met: the summary line says so when it is broken."""
    from nettrim_jax.network.prune import PruneReport

    rep = PruneReport(
        scheme="cascade",
        gamma=1.0,
        layers=(),
        nnz_before=10,
        nnz_after=5,
        output_discrepancy=0.02,
        output_error=1.0,
        bound=2.0,
        seconds=0.1,
    )
    assert "output error 1 <= bound 2" in rep.to_markdown()
    broken = rep._replace(output_error=3.0).to_markdown()
    assert "<= bound" not in broken and "output error 3 > (some layer missed its program) bound 2" in broken
