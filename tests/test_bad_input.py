"""Bad input everywhere a user can reach: one test per case of issue #5.

Layer level (``solve_layer``) here; the whole-network (``prune``) and command-line levels are
below.  Each case either raises a clear ValueError or has a documented, tested behaviour:

* P < N (fewer samples than inputs) and a rank-deficient X are legal programs: they solve,
  converge and satisfy the misfit constraint.
* a dead layer (all outputs zero on the calibration set) gives an all-zero kernel: zero is
  feasible (X 0 = 0 <= threshold) and optimal (||0||_1 = 0).
"""

import warnings

import numpy as np
import pytest

from nettrim_jax import solve_layer

RNG = np.random.default_rng(0)


def _problem(p=40, n=12, m=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n)).astype(np.float32)
    w = rng.standard_normal((n, m)) * (rng.random((n, m)) < 0.5)
    return x, np.maximum(x @ w, 0).astype(np.float32)


# ----------------------------------------------------------------------------- layer level


@pytest.mark.parametrize(
    "xs, ys, match",
    [
        ((40, 12), (39, 4), "40 samples but Y has 39"),
        ((40,), (40, 4), "X must be 2-D"),
        ((40, 12), (40, 4, 1), "Y must be 2-D"),
        ((40, 12, 1), (40, 4), "X must be 2-D"),
    ],
)
def test_layer_wrong_shapes(xs, ys, match):
    with pytest.raises(ValueError, match=match):
        solve_layer(np.ones(xs, np.float32), np.ones(ys, np.float32), epsilon=0.1)


@pytest.mark.parametrize("where", ["X", "Y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_layer_nan_inf(where, bad):
    x, y = _problem()
    (x if where == "X" else y)[3, 1] = bad
    if where == "Y" and bad == -np.inf:
        y[3, 1] = np.nan  # -inf would first trip the ReLU sign check
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf"):
        solve_layer(x, y, epsilon=0.1)


@pytest.mark.parametrize("xs, ys", [((0, 12), (0, 4)), ((40, 0), (40, 4)), ((40, 12), (40, 0))])
def test_layer_empty(xs, ys):
    with pytest.raises(ValueError, match="empty problem"):
        solve_layer(np.ones(xs, np.float32), np.ones(ys, np.float32), epsilon=0.1)


@pytest.mark.parametrize("eps", [-1e-6, -1.0, np.nan])
def test_layer_bad_epsilon(eps):
    x, y = _problem()
    with pytest.raises(ValueError, match="epsilon"):
        solve_layer(x, y, epsilon=eps)


@pytest.mark.parametrize(
    "eps, match",
    [
        ("1", "epsilon must be a number, got '1'"),
        (None, "epsilon must be a number, got None"),
        (1 + 2j, "epsilon must be a real number"),
    ],
)
def test_layer_epsilon_of_wrong_type(eps, match):
    x, y = _problem()
    with pytest.raises(ValueError, match=match):
        solve_layer(x, y, epsilon=eps)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(max_iters=0), "max_iters must be >= 1"),
        (dict(max_iters="10"), "max_iters must be an integer"),
        (dict(check_every=0), "check_every must be >= 1"),
        (dict(gap_tol=float("nan")), "gap_tol must be >= 0"),
        (dict(eps_rel=-1.0), "eps_rel must be >= 0"),
        (dict(relaxation=2.0), "relaxation must be > 0.0 and < 2.0"),
        (dict(margin=1.0), "margin must be >= 0.0 and < 1.0"),
        (dict(adaptive_rho=1), "adaptive_rho must be True or False"),
        (dict(feas_tol=-1e-3), "feas_tol must be >= 0"),
    ],
)
def test_layer_bad_solver_options(kw, match):
    x, y = _problem()
    with pytest.raises(ValueError, match=match):
        solve_layer(x, y, epsilon=0.1, **kw)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "gelu", "", None])
def test_layer_unsupported_activation(act):
    x, y = _problem()
    with pytest.raises(ValueError, match="unknown activation"):
        solve_layer(x, y, epsilon=0.1, activation=act)


def test_layer_non_relu_outputs_with_relu_activation():
    """Outputs of a tanh/linear unit (negative entries) are not a ReLU layer's outputs."""
    x, _ = _problem()
    y = np.tanh(x[:, :4])
    with pytest.raises(ValueError, match="not a ReLU output"):
        solve_layer(x, y, epsilon=0.1)


def _check_feasible(sol, x, y, eps, tol=1e-2):
    k = np.asarray(sol.kernel, np.float64)
    z = x.astype(np.float64) @ k
    om = y > 0
    misfit = np.linalg.norm(np.where(om, z - y, 0))
    assert bool(sol.info.converged)
    assert misfit <= eps * (1 + tol) + 1e-6
    assert np.max(np.where(om, -np.inf, z)) <= 1e-3 * np.abs(y).max()


def test_layer_fewer_samples_than_inputs_solves():
    """P < N: the program is underdetermined but legal; it solves and is feasible."""
    x, y = _problem(p=10, n=40, m=3, seed=1)
    eps = 0.05 * np.linalg.norm(y)
    sol = solve_layer(x, y, epsilon=eps)
    _check_feasible(sol, x, y, eps)
    assert np.count_nonzero(np.asarray(sol.kernel)) < x.shape[1] * y.shape[1]


def test_layer_rank_deficient_solves():
    """Duplicated / dependent input columns: still a legal program; solves and is feasible."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((60, 5))
    x = np.concatenate([base, base[:, :2] + base[:, 2:4], base[:, :1]], 1).astype(np.float32)
    assert np.linalg.matrix_rank(x) == 5 < x.shape[1]
    y = np.maximum(x @ rng.standard_normal((8, 3)), 0).astype(np.float32)
    eps = 0.05 * np.linalg.norm(y)
    _check_feasible(solve_layer(x, y, epsilon=eps), x, y, eps)


def test_layer_dead_outputs_give_zero_kernel():
    """A dead layer (Y == 0): the zero kernel is feasible and optimal; returned exactly."""
    x, _ = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no non-convergence warning either
        sol = solve_layer(x, np.zeros((x.shape[0], 4), np.float32), epsilon=0.1)
    assert np.all(np.asarray(sol.kernel) == 0)
    assert bool(sol.info.converged)


# ----------------------------------------------------------------------------- network level (prune)
#
# The command line's own checks (data shapes, NaN/Inf, empty sets, corrupt or mismatched
# checkpoints, unsupported layer types and activations) are tested in test_cli.py and
# test_checkpoint.py; these are the library entry point's.


def _net(seed=0, bias=0.1, act="relu"):
    from nettrim_jax import Dense

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 16)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.standard_normal((16, 3)) / 4).astype(np.float32)
    return [Dense(w1, np.full(16, bias, np.float32), act), Dense(w2, np.zeros(3, np.float32), "linear")]


def _x(p=60, seed=1):
    return np.random.default_rng(seed).standard_normal((p, 8)).astype(np.float32)


def _prune(net, x, **kw):
    from nettrim_jax import prune

    return prune(net, x, progress=False, **kw)


@pytest.mark.parametrize("shape", [(0, 8), (60, 0)])
def test_prune_empty_calibration_set(shape):
    with pytest.raises(ValueError, match=r"calibration data x is empty"):
        _prune(_net(), np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(epsilon=-0.1), "epsilon must be >= 0"),
        (dict(epsilon=[0.1, -1.0]), r"epsilon must be >= 0 .*entry 1"),
        (dict(epsilon=float("nan")), "epsilon must be >= 0 and finite"),
        (dict(epsilon=[0.1, np.inf]), "epsilon must be >= 0 and finite"),
        (dict(epsilon=[0.1, 0.1, 0.1]), "epsilon has 3 entries but the network has 2"),
        (dict(gamma=0.99), "gamma must be >= 1"),
        (dict(gamma=float("nan")), "gamma must be >= 1"),
        (dict(scheme="serial"), "unknown scheme"),
        (dict(solver="lbfgs"), "unknown solver"),
        (dict(max_patches=0), "max_patches must be a positive int"),
        (dict(output_epsilon=-0.1), "output_epsilon must be >= 0"),
        (dict(output_epsilon="x"), "output_epsilon must be a number"),
        (dict(output_epsilon=0.02, scheme="parallel"), "output_epsilon applies to scheme='cascade' only"),
        (dict(output_epsilon=0.02, activations={"1": "skip"}), "output_epsilon needs a linear output layer"),
        (dict(max_iters=0), r"^max_iters must be >= 1, got 0$"),
        (dict(max_iters=2.5), "max_iters must be an integer"),
        (dict(check_every=0), "check_every must be >= 1"),
        (dict(gap_tol=-1e-3), "gap_tol must be >= 0"),
        (dict(solver="pdhg", step=1.5), "step must be > 0.0 and < 1.0"),
        (dict(model_kwargs=["train"]), "model_kwargs must be a dict or None, got list"),
        (dict(activations="relu"), "activations must be a dict or None, got str"),
    ],
)
def test_prune_bad_parameters(kw, match):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any solve: no unconverged warnings
        with pytest.raises(ValueError, match=match):
            _prune(_net(), _x(), **kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            dict(train=False),
            r"unknown keyword\(s\) \['train'\]; valid: \[.*'model_kwargs'.*\], and the options of "
            r"solver='admm': \[.*'max_iters'",
        ),
        (dict(solver="pdhg", rho=1.0), r"unknown keyword\(s\) \['rho'\].*solver='pdhg': \[.*'step'"),
        (dict(solver_options={"max_iters": 5}), r"unknown keyword\(s\) \['solver_options'\]"),
    ],
)
def test_prune_unknown_keyword_lists_the_valid_ones(kw, match):
    with pytest.raises(TypeError, match=match):
        _prune(_net(), _x(), **kw)


def test_prune_records_are_the_flat_keywords():
    """Program / Target / Run records give the same prune as their flat keywords; a keyword
    overrides its record's field; anything else positional, or a record twice, is refused."""
    from nettrim_jax import Program, Run, Target, prune

    flat = _prune(_net(), _x(), epsilon=0.2, sparsity=0.5, max_iters=300)
    records = prune(
        _net(),
        _x(),
        Program(epsilon=0.9),
        Target(sparsity=0.5),
        Run(progress=False, solver_options={"max_iters": 300}),
        epsilon=0.2,
    )
    assert records.report.options == flat.report.options
    assert records.report.options["max_iters"] == 300 and records.report.options["epsilon"] == 0.2
    for a, b in zip(flat.model, records.model):
        np.testing.assert_array_equal(np.asarray(a.kernel), np.asarray(b.kernel))
    with pytest.raises(TypeError, match="got two Program records"):
        prune(_net(), _x(), Program(), Program())
    with pytest.raises(TypeError, match="got dict; pass other options by keyword"):
        prune(_net(), _x(), {"epsilon": 0.1})
    with pytest.raises(ValueError, match="gamma must be >= 1"):
        prune(_net(), _x(), Program(gamma=0.5))


def test_prune_one_dimensional_sample_is_refused():
    """A (64,) x is one sample or 64 scalar samples: ambiguous, so refused with the fix."""
    from nettrim_jax import Dense

    rng = np.random.default_rng(0)
    net = [
        Dense(rng.standard_normal((64, 8)).astype(np.float32), None, "relu"),
        Dense(rng.standard_normal((8, 3)).astype(np.float32), None, "linear"),
    ]
    with pytest.raises(ValueError, match=r"shape \(64,\) has no sample axis: pass shape \(P, 64\)"):
        _prune(net, rng.standard_normal(64).astype(np.float32))


def test_prune_unsupported_layer_item():
    net = _net()
    with pytest.raises(TypeError, match="Dense/Conv specs or callables"):
        _prune([net[0], "maxpool", net[1]], _x())


@pytest.mark.parametrize("act", ["gelu", "tanh"])
def test_prune_unsupported_activation_name(act):
    with pytest.raises(ValueError, match=f"unknown activation '{act}'"):
        _prune(_net(act=act), _x())


def test_prune_non_relu_hidden_activation():
    """A tanh hidden layer (spec or NNX module) has no Net-Trim program: by default the linear
    program on its pre-activation (said in the report); with on_unsupported="error" a clear
    error, with "skip" the layer is kept as it is, with a warning."""
    import jax.numpy as jnp
    from flax import nnx

    res = _prune(_net(act=jnp.tanh), _x(), max_iters=500)
    assert res.report.layers[0].activation == "linear"
    assert res.report.layers[0].reason == "linear (followed by an op with no Net-Trim program)"
    with pytest.raises(ValueError, match="no program for"):
        _prune(_net(act=jnp.tanh), _x(), on_unsupported="error")

    class TanhMLP(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(8, 16, rngs=rngs)
            self.b = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    with pytest.raises(ValueError, match="layer 'a' is followed by an activation"):
        _prune(TanhMLP(nnx.Rngs(0)), _x(), on_unsupported="error")
    net = _net(act=jnp.tanh)
    with pytest.warns(UserWarning, match="skipping it"):
        res = _prune(net, _x(), on_unsupported="skip", max_iters=500)
    np.testing.assert_array_equal(np.asarray(res.model[0].kernel), net[0].kernel)
    assert res.report.layers[0].activation == "skipped"


def test_prune_dead_layer_gives_zero_kernels():
    """Hidden units that never fire on the calibration data: the pruned layer is all zeros
    (kernel and bias), and so is everything it fed (its outputs are identically zero)."""
    with pytest.warns(RuntimeWarning, match="pruned to all zeros"):
        res = _prune(_net(bias=-100.0), _x(), max_iters=500)
    for spec in res.model:
        assert not np.any(np.asarray(spec.kernel)) and not np.any(np.asarray(spec.bias))
    assert res.report.layers[0].converged and res.report.nnz_after == 0


@pytest.mark.parametrize("case", ["P < N", "rank-deficient"])
def test_prune_legal_degenerate_data(case):
    """Fewer samples than inputs, or dependent input features: legal programs that solve;
    every layer meets its misfit budget (solver tolerance)."""
    x = _x()
    x = x[:5] if case == "P < N" else np.concatenate([x[:, :4], x[:, :4]], 1)
    assert np.linalg.matrix_rank(x) < x.shape[1]
    res = _prune(_net(), x, scheme="parallel", epsilon=0.05)
    for l in res.report.layers:
        assert l.misfit <= l.epsilon * 1.01 + 1e-6, l
    assert res.report.nnz_after < res.report.nnz_before


# ``prune`` validates its input before any solve: the calibration data's shape (on the first
# forward pass), NaN/Inf in the data and in every prunable layer's weights.  (These were
# strict xfails recording the gap until prune checked them.)


def _no_solve(monkeypatch):
    """Make any solver call fail the test: the checks must come first."""
    import importlib

    def boom(*a, **k):
        raise AssertionError("the solver was reached")

    for module, name in (
        ("problems", "solve_layer"),
        ("problems", "jitted_solver"),
        ("parallel", "solver_for"),
        ("targets", "jitted_solver"),
        ("cascade", "solve_layer"),
        ("cascade", "_scan_solver"),
    ):
        monkeypatch.setattr(importlib.import_module(f"nettrim_jax.network.{module}"), name, boom)


@pytest.mark.parametrize("scheme", ["cascade", "parallel"])
def test_prune_wrong_data_shape_is_a_value_error(monkeypatch, scheme):
    _no_solve(monkeypatch)
    with pytest.raises(
        ValueError,
        match=r"^calibration data x of shape \(60, 5\) does not fit the "
        r"model: layer '0' expects 8 input features.*\(60, 5\)$",
    ):
        _prune(_net(), _x()[:, :5], scheme=scheme)


def test_prune_wrong_data_shape_nnx_linen_conv(monkeypatch):
    """The same check for NNX and Linen models, Conv layers, and a mismatch that shows up
    only after an in-between op (the model's own reshape), which is reported with jax's
    shape message."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from nettrim_jax import Conv

    _no_solve(monkeypatch)

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(8, 16, rngs=rngs)
            self.b = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    with pytest.raises(ValueError, match=r"x of shape \(60, 5\) .*layer 'a' expects 8 input"):
        _prune(MLP(nnx.Rngs(0)), _x()[:, :5])

    class LinenMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(16)(x))
            return nn.Dense(3)(h)

    m = LinenMLP()
    v = m.init(jax.random.key(0), _x())
    with pytest.raises(ValueError, match=r"x of shape \(60, 5\) .*layer 'Dense_0' expects 8 input"):
        _prune((m, v), _x()[:, :5])

    rng = np.random.default_rng(0)
    conv = Conv(rng.standard_normal((3, 3, 2, 4)).astype(np.float32), np.zeros(4, np.float32))
    dense = _net()[1]._replace(kernel=rng.standard_normal((64, 3)).astype(np.float32))
    imgs = rng.standard_normal((5, 4, 4, 2)).astype(np.float32)
    with pytest.raises(
        ValueError, match=r"x of shape \(5, 4, 4, 3\) .*layer '0' expects NHWC inputs \(batch, H, W, 2\)"
    ):
        _prune([conv, dense], np.concatenate([imgs, imgs[..., :1]], -1))
    with pytest.raises(ValueError, match=r"x of shape \(5, 5, 5, 2\) .*layer '1' expects 64 input"):
        _prune([conv, dense], np.zeros((5, 5, 5, 2), np.float32))
    # the model's own reshape fails: jax's shape message, one line, chained
    net = [lambda t: jnp.reshape(t, (-1, 8)), *_net()]
    with pytest.raises(ValueError, match=r"x of shape \(60, 7\) .*forward pass failed: cannot reshape") as e:
        _prune(net, _x()[:, :7])
    assert "\n" not in str(e.value) and isinstance(e.value.__cause__, TypeError)


def test_prune_unrelated_forward_errors_are_not_rewritten():
    """Only shape errors become the calibration-shape ValueError."""

    def broken(t):
        raise RuntimeError("model bug")

    with pytest.raises(RuntimeError, match="model bug"):
        _prune([broken, *_net()], _x())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_prune_nan_in_data_is_a_value_error(monkeypatch, bad):
    _no_solve(monkeypatch)
    x = _x()
    x[2, 3] = bad
    with pytest.raises(ValueError, match=r"calibration data x contains NaN or Inf \(1 entries, in samples \[2\]\)"):
        _prune(_net(), x)


@pytest.mark.parametrize("layer, part", [(0, "kernel"), (0, "bias"), (1, "kernel"), (1, "bias")])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_prune_nan_in_weights_is_a_value_error(monkeypatch, layer, part, bad):
    _no_solve(monkeypatch)
    net = _net()
    getattr(net[layer], part)[1] = bad
    with pytest.raises(ValueError, match=f"model weights: layer '{layer}' {part} .*NaN or Inf"):
        _prune(net, _x())


def test_prune_nan_in_nnx_weights_names_the_layer(monkeypatch):
    from flax import nnx

    _no_solve(monkeypatch)

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)])

        def __call__(self, x):
            return self.layers[1](nnx.relu(self.layers[0](x)))

    model = MLP(nnx.Rngs(0))
    model.layers[1].kernel.set_value(model.layers[1].kernel.get_value().at[0, 0].set(np.nan))
    with pytest.raises(ValueError, match=r"model weights: layer 'layers/1' kernel"):
        _prune(model, _x())


def test_prune_overflow_in_forward_is_a_value_error(monkeypatch):
    """Finite data and weights whose forward pass overflows (float32)."""
    _no_solve(monkeypatch)
    net = _net()
    net[0] = net[0]._replace(kernel=np.full((8, 16), 1e38, np.float32))
    with pytest.raises(ValueError, match=r"layer '0' output \(pre-activation\) .*NaN or Inf"):
        _prune(net, np.abs(_x()) + 1)


def test_old_flax_is_named_in_one_line(monkeypatch):
    """An environment with a flax older than the floor gets one ImportError line naming it."""
    from importlib import metadata

    from nettrim_jax import _versions

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.10.4" if name == "flax" else real(name))
    with pytest.raises(ImportError, match=r"needs flax>=0.12, found flax 0.10.4"):
        _versions.check_versions()
    monkeypatch.setattr(metadata, "version", real)
    _versions.check_versions()  # the installed versions pass
