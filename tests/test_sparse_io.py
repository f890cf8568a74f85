"""Compressed storage of pruned kernels: exact round trip, the smaller index, sizes."""

import jax.numpy as jnp
import numpy as np
import pytest

from nettrim_jax.io import sparse


def _kernel(shape, sparsity, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    k = rng.standard_normal(shape).astype(dtype)
    return np.where(rng.random(shape) < sparsity, 0, k).astype(dtype)


@pytest.mark.parametrize("sparsity,fmt", [(0.9, "bitmask"), (0.99, "indices"), (0.0, "bitmask"), (1.0, "indices")])
def test_round_trip_exact(sparsity, fmt):
    k = _kernel((301, 100), sparsity)
    c = sparse.compress(k)
    assert c.format == fmt
    out = sparse.decompress(c)
    assert out.dtype == k.dtype and out.shape == k.shape
    np.testing.assert_array_equal(out, k)
    assert sparse.compressed_nbytes(c) == min(4 * np.count_nonzero(k), -(-k.size // 8)) + 4 * np.count_nonzero(k)


def test_size_at_90_percent_sparsity():
    k = _kernel((784, 300), 0.9, seed=1)
    c = sparse.compress(jnp.asarray(k))  # JAX arrays too
    nnz = np.count_nonzero(k)
    assert sparse.compressed_nbytes(c) == 4 * nnz + -(-k.size // 8)
    ratio = k.nbytes / sparse.compressed_nbytes(c)
    assert 7.0 < ratio < 8.2  # 4 / (0.4 + 0.125) = 7.6
    # float64, any rank, special values survive.
    k64 = _kernel((3, 3, 16, 8), 0.9, seed=2, dtype=np.float64)
    k64.flat[5] = np.nan
    k64.flat[7] = -np.inf
    out = sparse.decompress(sparse.compress(k64))
    np.testing.assert_array_equal(out, k64)
    assert out.dtype == np.float64


def test_tree_keeps_dense_where_smaller():
    params = {
        "Dense_0": {"kernel": _kernel((64, 32), 0.9), "bias": np.ones(32, np.float32)},
        "Dense_1": {"kernel": _kernel((32, 10), 0.5)},
    }
    c = sparse.compress_tree(params)
    assert isinstance(c["Dense_0"]["kernel"], sparse.Compressed)
    assert isinstance(c["Dense_0"]["bias"], np.ndarray)  # dense bias: no saving
    assert isinstance(c["Dense_1"]["kernel"], sparse.Compressed)  # 50%: 0.5 * 4 + 1/8 < 4 bytes
    back = sparse.decompress_tree(c)
    for layer in params:
        for name in params[layer]:
            np.testing.assert_array_equal(back[layer][name], params[layer][name])
    dense = sum(a.nbytes for d in params.values() for a in d.values())
    assert sparse.tree_nbytes(c) < 0.6 * dense


def test_bad_compressed_input():
    c = sparse.compress(_kernel((10, 10), 0.5))
    with pytest.raises(ValueError, match="does not fit shape"):
        sparse.decompress(c._replace(shape=(20, 10)))
    with pytest.raises(ValueError, match="values"):
        sparse.decompress(c._replace(values=c.values[:-1]))
    c = sparse.compress(_kernel((100, 100), 0.999))
    with pytest.raises(ValueError, match="out of range"):
        sparse.decompress(c._replace(shape=(2, 2)))
    with pytest.raises(ValueError, match="int32 indices or a uint8 bitmask"):
        sparse.decompress(c._replace(index=c.index.astype(np.int64)))
