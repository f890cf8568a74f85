"""Net-Trim on a trained LeNet-style CNN (scikit-learn 8x8 digits, NHWC): conv layers as
patch programs, pooling/flatten taken from the model, NNX vs Linen, patch sub-sampling."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nettrim_jax as nt
from nettrim_jax.network import specs as S
from nettrim_jax.training import LinenCNN, accuracy, make_cnn, train_classifier

EPS = 0.05
GAMMA = 1.1
SLACK = 1e-3
OPTS = dict(max_iters=1000, progress=False)


def _prune(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return nt.prune(model, x, **{**OPTS, **kw})


@pytest.fixture(scope="module")
def cnn(digits_images):
    xtr, ytr, _, _ = digits_images
    model = make_cnn(channels=(4, 8), hidden=32, seed=0)
    train_classifier(model, xtr, ytr, steps=300)
    return model


@pytest.fixture(scope="module")
def calib(digits_images):
    return jnp.asarray(digits_images[0][:150])  # conv rows: 150 * 64 = 9600 and 150 * 16 = 2400


@pytest.fixture(scope="module")
def cascade(cnn, calib):
    return _prune(cnn, calib, scheme="cascade", epsilon=EPS, gamma=GAMMA, max_patches=None)


@pytest.fixture(scope="module")
def parallel(cnn, calib):
    # conv1's 9600 patch rows are sub-sampled to 9000, conv2's 2400 are all used
    return _prune(cnn, calib, scheme="parallel", epsilon=EPS, max_patches=9000, seed=7)


def _layers(model):
    return [model.convs[0], model.convs[1], model.fc1, model.fc2]


def test_cnn_structure_programs_and_cascade_bound(cnn, cascade, calib, digits_images):
    rep = cascade.report
    assert [l.name for l in rep.layers] == ["convs/0", "convs/1", "fc1", "fc2"]
    assert [l.kind for l in rep.layers] == ["conv", "conv", "dense", "dense"]
    assert [l.activation for l in rep.layers] == ["relu", "relu", "relu", "linear"]
    assert [l.rows for l in rep.layers] == [9600, 2400, 150, 150]
    assert [l.N for l in rep.layers] == [3 * 3 * 1 + 1, 3 * 3 * 4 + 1, 2 * 2 * 8 + 1, 33]
    assert not any(l.subsampled for l in rep.layers)
    for l in rep.layers:
        assert l.misfit <= l.epsilon * (1 + SLACK)
    # pruned conv kernels keep the HWIO layout and agree with the masks
    k0 = cascade.model.convs[0].kernel.get_value()
    assert k0.shape == (3, 3, 1, 4)
    np.testing.assert_array_equal(np.asarray(cascade.masks["convs"][0]["kernel"].get_value()), np.asarray(k0) != 0)
    # cascade bound: a posteriori within epsilon_L; a priori epsilon_1 prod gamma g_l ||W_l||_2
    # (g = 3 = sqrt(3 * 3) for the 3x3 conv, 1 for dense; pooling and flatten are 1-Lipschitz)
    logits0, logits1 = cnn(calib), cascade.model(calib)
    err = float(jnp.linalg.norm(logits0 - logits1))
    assert rep.output_error == pytest.approx(err, rel=1e-3)
    assert err <= rep.layers[-1].epsilon * (1 + SLACK)
    W = _layers(cnn)
    gains = [3.0, 3.0, 1.0, 1.0]
    mats = [S.kernel_matrix(S.Conv(W[1].kernel.get_value()))] + [W[j].kernel.get_value() for j in (2, 3)]
    bound = rep.layers[0].epsilon * np.prod(
        [GAMMA * g * np.linalg.norm(np.asarray(m, np.float64), 2) for g, m in zip(gains[1:], mats)]
    )
    assert rep.bound == pytest.approx(bound, rel=1e-3)
    assert err <= bound
    # sparsity and accuracy
    _, _, xte, yte = digits_images
    assert rep.nnz_after < 0.7 * rep.nnz_before
    assert accuracy(cascade.model, xte, yte) >= accuracy(cnn, xte, yte) - 0.06
    # the input model was not touched
    assert float(jnp.min(jnp.abs(cnn.convs[0].kernel.get_value()))) > 0


def test_parallel_conv_layers_within_epsilon(cnn, parallel, calib):
    res = parallel
    # recompute conv2's program misfit from its patches, independently of the report
    conv1, new1 = cnn.convs[1], res.model.convs[1]
    h = nnx.max_pool(jax.nn.relu(cnn.convs[0](calib)), (2, 2), strides=(2, 2))
    A = S.layer_rows(S.Conv(conv1.kernel.get_value()), h)
    A = jnp.concatenate([A, jnp.ones((A.shape[0], 1))], 1)
    Y = jax.nn.relu(conv1(h)).reshape(-1, 8)
    K = S.kernel_matrix(S.Conv(new1.kernel.get_value(), new1.bias.get_value()))
    misfit = float(jnp.linalg.norm(jax.nn.relu(A @ K) - Y))
    assert misfit <= EPS * float(jnp.linalg.norm(Y)) * (1 + SLACK)
    assert res.report.layers[1].epsilon == pytest.approx(EPS * float(jnp.linalg.norm(Y)), rel=1e-4)
    for l in res.report.layers:
        assert l.misfit <= l.epsilon * (1 + SLACK)  # conv1: on its sampled rows


def test_conv_patch_subsampling(parallel):
    rep = parallel.report
    assert [l.rows for l in rep.layers] == [9000, 2400, 150, 150]
    assert [l.subsampled for l in rep.layers] == [True, False, False, False]
    # on all calibration patches conv1 is still close (no guarantee: sampled rows only)
    assert rep.layers[0].discrepancy < 2 * EPS
    assert rep.nnz_after < 0.7 * rep.nnz_before


def test_linen_cnn_gives_the_same_pruned_weights(cnn, cascade, calib):
    module = LinenCNN(channels=(4, 8), hidden=32, num_classes=10, image_size=8)
    names = ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
    variables = {
        "params": {n: {"kernel": l.kernel.get_value(), "bias": l.bias.get_value()} for n, l in zip(names, _layers(cnn))}
    }
    np.testing.assert_allclose(module.apply(variables, calib), cnn(calib), rtol=1e-5, atol=1e-5)
    lin = _prune((module, variables), calib, scheme="cascade", epsilon=EPS, gamma=GAMMA, max_patches=None)
    assert [l.activation for l in lin.report.layers] == ["relu", "relu", "relu", "linear"]
    for n, l in zip(names, _layers(cascade.model)):
        np.testing.assert_allclose(lin.model["params"][n]["kernel"], l.kernel.get_value(), atol=1e-5)
        np.testing.assert_allclose(lin.model["params"][n]["bias"], l.bias.get_value(), atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matrix_round_trips_and_its_shape_is_known_without_it(groups, bias):
    """``with_matrix`` inverts ``kernel_matrix`` (grouped convs included) and
    ``kernel_shape`` (what a sparsity count is out of) is its shape."""
    rng = np.random.default_rng(groups)
    conv = S.Conv(jnp.asarray(rng.standard_normal((3, 3, 8 // groups, 8)), jnp.float32), None, groups=groups)
    dense = S.Dense(jnp.asarray(rng.standard_normal((5, 3)), jnp.float32))
    for spec in (conv, dense):
        if bias:
            spec = spec._replace(bias=jnp.asarray(rng.standard_normal(spec.kernel.shape[-1]), jnp.float32))
        K = S.kernel_matrix(spec)
        assert S.kernel_shape(spec) == K.shape
        back = S.with_matrix(spec, K)
        np.testing.assert_array_equal(back.kernel, spec.kernel)
        assert (back.bias is None) == (not bias)
        if bias:
            np.testing.assert_array_equal(back.bias, spec.bias)
