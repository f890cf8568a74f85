"""Baselines: exact sparsity, the right weights kept, SparseGPT and ALPS reconstruct better."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nettrim_jax import baselines as bl


def _problem(p=400, n=60, m=12, seed=0, correlated=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n))
    if correlated:  # correlated inputs with unequal scales: where OBS and Wanda matter
        x = x @ (np.eye(n) + 0.5 * rng.standard_normal((n, n)) / np.sqrt(n))
        x = x * rng.uniform(0.2, 3.0, n)
    w = rng.standard_normal((n, m))
    return x.astype(np.float32), w.astype(np.float32)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.93, 0.98, 1.0])
def test_every_method_hits_the_exact_count(sparsity):
    x, w = _problem()
    keep = bl.keep_count(w.size, sparsity)
    for out in (
        bl.magnitude(w, keep),
        bl.wanda(w, x, keep),
        bl.wanda(w, x, keep, per_output=False),
        bl.sparsegpt(w, x, keep),
        bl.sparsegpt(w, x, keep, blocksize=7),
        bl.alps(w, x, keep),
    ):
        assert out.shape == w.shape
        assert int(jnp.sum(out != 0)) == keep


def test_keep_count_and_validation():
    assert bl.keep_count(100, 0.9) == 10
    assert bl.keep_count(7, 0.5) == 3 or bl.keep_count(7, 0.5) == 4
    with pytest.raises(ValueError):
        bl.keep_count(10, 1.5)
    with pytest.raises(ValueError):
        bl.magnitude(np.ones((3, 3)), 10)


def test_magnitude_keeps_the_largest_and_does_not_change_them():
    x, w = _problem()
    out = np.asarray(bl.magnitude(w, 100))
    kept = np.abs(w[out != 0])
    dropped = np.abs(w[out == 0])
    assert kept.min() >= dropped.max()
    np.testing.assert_array_equal(out[out != 0], w[out != 0])


def test_magnitude_global_uses_one_threshold():
    _, w1 = _problem(seed=1)
    w2 = 5 * _problem(seed=2, m=7)[1]
    o1, o2 = bl.magnitude_global([w1, w2], 0.9)
    total = w1.size + w2.size
    assert int(jnp.sum(o1 != 0) + jnp.sum(o2 != 0)) == bl.keep_count(total, 0.9)
    # the 5x larger layer keeps a larger share
    assert bl.sparsity_of(o2) < bl.sparsity_of(o1)


def test_wanda_per_output_is_balanced_and_uses_input_norms():
    x, w = _problem(m=12)
    keep = 12 * 9 + 5
    out = np.asarray(bl.wanda(w, x, keep))
    per_col = (out != 0).sum(0)
    assert per_col.min() >= 9 and per_col.max() <= 10 and per_col.sum() == keep
    # with one input scaled up a lot, Wanda keeps all of its weights; magnitude need not
    x2 = x.copy()
    x2[:, 3] *= 1e5
    w2 = w.copy()
    w2[3] = 1e-3 * np.sign(w2[3])
    out2 = np.asarray(bl.wanda(w2, x2, 12 * 5))
    assert np.all(out2[3] != 0)
    assert np.all(np.asarray(bl.magnitude(w2, 12 * 5))[3] == 0)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(sparsity):
    x, w = _problem(seed=3)
    keep = bl.keep_count(w.size, sparsity)
    e_mag = bl.reconstruction_error(x, w, bl.magnitude(w, keep))
    e_wanda = bl.reconstruction_error(x, w, bl.wanda(w, x, keep))
    e_gpt = bl.sparsegpt(w, x, keep)
    e_gpt = bl.reconstruction_error(x, w, e_gpt)
    assert e_gpt < e_wanda < e_mag


def test_sparsegpt_no_pruning_is_identity_and_dead_inputs_are_zeroed():
    x, w = _problem()
    out = bl.sparsegpt(w, x, w.size)
    np.testing.assert_allclose(np.asarray(out), w, rtol=1e-5, atol=1e-5)
    x = x.copy()
    x[:, 5] = 0  # an input never active: its weights are irrelevant and removed
    out = np.asarray(bl.sparsegpt(w, x, bl.keep_count(w.size, 0.5)))
    assert np.all(out[5] == 0)


def test_sparsegpt_matches_the_least_squares_fit_on_its_mask_when_one_block():
    # With one input at a time pruned (column by column) the OBS update is exact least
    # squares on the remaining inputs; check the end result is close to the refit on its mask.
    x, w = _problem(p=300, n=20, m=3, seed=4)
    keep = bl.keep_count(w.size, 0.5)
    out = np.asarray(bl.sparsegpt(w, x, keep, damp=1e-8, blocksize=20))
    mask = out != 0
    ref = x @ w
    refit_err = 0.0
    for j in range(w.shape[1]):
        cols = np.flatnonzero(mask[:, j])
        coef, *_ = np.linalg.lstsq(x[:, cols], ref[:, j], rcond=None)
        refit_err += np.sum((x[:, cols] @ coef - ref[:, j]) ** 2)
    ours = np.sum((x @ out - ref) ** 2)
    assert ours <= 1.5 * refit_err + 1e-6


def _lstsq_error(x, w, mask):
    """||X W - X W_hat||_F / ||X W||_F with W_hat the exact least-squares fit on ``mask``."""
    ref = x.astype(np.float64) @ w
    err = 0.0
    for j in range(w.shape[1]):
        cols = np.flatnonzero(mask[:, j])
        fit = 0.0
        if cols.size:
            coef, *_ = np.linalg.lstsq(x[:, cols].astype(np.float64), ref[:, j], rcond=None)
            fit = x[:, cols] @ coef
        err += np.sum((fit - ref[:, j]) ** 2)
    return np.sqrt(err) / np.linalg.norm(ref)


@pytest.mark.parametrize("sparsity", [0.7, 0.8, 0.9])
def test_alps_reconstructs_at_least_as_well_as_sparsegpt_and_magnitude(sparsity):
    for seed in range(3):
        x, w = _problem(p=200, n=40, m=10, seed=seed)
        keep = bl.keep_count(w.size, sparsity)
        out = bl.alps(w, x, keep)
        assert int(jnp.sum(out != 0)) == keep
        e_alps = bl.reconstruction_error(x, w, out)
        assert e_alps <= bl.reconstruction_error(x, w, bl.sparsegpt(w, x, keep))
        assert e_alps <= bl.reconstruction_error(x, w, bl.magnitude(w, keep))


def test_alps_refit_is_the_least_squares_fit_on_its_support():
    # The PCG step solves the normal equations on the final support: the result should be
    # the exact least-squares fit there (up to the 1% ridge the reference adds).
    x, w = _problem(p=200, n=40, m=10, seed=5)
    out = np.asarray(bl.alps(w, x, bl.keep_count(w.size, 0.8)))
    ours = bl.reconstruction_error(x, w, out)
    assert ours <= 1.02 * _lstsq_error(x, w, out != 0) + 1e-6


def test_alps_all_weights_kept_is_the_dense_support_and_none_kept_is_zero():
    x, w = _problem(p=200, n=40, m=10)
    w = w.copy()
    w[3, 4] = 0.0
    out = bl.alps(w, x, w.size)
    np.testing.assert_array_equal(np.asarray(bl.mask_of(out)), w != 0)
    np.testing.assert_array_equal(np.asarray(out), w)
    assert int(jnp.sum(bl.alps(w, x, 0) != 0)) == 0


def test_alps_dtypes():
    x, w = _problem(p=200, n=40, m=10, seed=1)
    keep = bl.keep_count(w.size, 0.8)
    assert bl.alps(w, x, keep).dtype == jnp.float32
    with jax.enable_x64(True):
        out = bl.alps(w.astype(np.float64), x.astype(np.float64), keep)
        assert out.dtype == jnp.float64
        assert int(jnp.sum(out != 0)) == keep
        assert bl.reconstruction_error(x, w, out) <= bl.reconstruction_error(
            x, w, bl.sparsegpt(w.astype(np.float64), x.astype(np.float64), keep)
        )


@pytest.mark.parametrize(
    "case", ["keep<0", "keep>size", "x cols", "x 1-D", "kernel 1-D", "nan x", "nan kernel", "inf kernel", "rho"]
)
def test_alps_bad_input_is_a_one_line_value_error(case):
    x, w = _problem(p=50, n=8, m=3)
    keep = 10
    if case == "keep<0":
        keep = -1
    elif case == "keep>size":
        keep = w.size + 1
    elif case == "x cols":
        x = x[:, :7]
    elif case == "x 1-D":
        x = x[0]
    elif case == "kernel 1-D":
        w = w[:, 0]
    elif case == "nan x":
        x = x.copy()
        x[3, 2] = np.nan
    elif case == "nan kernel":
        w = w.copy()
        w[1, 1] = np.nan
    elif case == "inf kernel":
        w = w.copy()
        w[1, 1] = np.inf
    kw = {"rho": 0.0} if case == "rho" else {}
    with pytest.raises(ValueError) as err:
        bl.alps(w, x, keep, **kw)
    assert "\n" not in str(err.value)
