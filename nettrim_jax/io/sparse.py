"""Kernels stored without their zeros: the nonzero values plus whichever index is smaller.

An array with ``nnz`` nonzeros out of ``size`` entries is stored as its nonzero values in
row-major (C) order and one of

  * ``int32`` flat indices into the row-major array: 4 * nnz bytes, or
  * a bitmask of the nonzeros (``numpy.packbits``, row-major, big bit order): ceil(size / 8) bytes,

the bitmask when it is at most as large (density >= 1/32, about 3.1%), the indices below
that.  A float32 kernel at 90% sparsity thus takes 0.4 + 0.125 = 0.525 bytes per entry
against 4 dense (7.6x smaller).  The round trip is exact for every value that compares
unequal to zero (NaN included); a negative zero comes back as +0.0.  Arrays of more than
2^31 - 1 entries use the bitmask (int32 indices could not address them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

_INT32_MAX = np.iinfo(np.int32).max


class Compressed(NamedTuple):
    """One array without its zeros.

    Attributes:
      index: 1-D int32 flat row-major indices of the nonzeros, or 1-D uint8 packed bitmask
        (``numpy.packbits`` of the row-major nonzero pattern); its dtype tells which.
      values: 1-D nonzero values in row-major order, the array's dtype.
      shape: the array's shape.
    """

    index: np.ndarray  # type: ignore[assignment]  # shadows tuple.index
    values: np.ndarray
    shape: tuple

    @property
    def format(self) -> str:
        """ "indices" or "bitmask"."""
        return "bitmask" if self.index.dtype == np.uint8 else "indices"


def compress(kernel) -> Compressed:
    """``Compressed`` form of an array of any shape (numpy or JAX), the smaller index chosen."""
    a = np.asarray(kernel)
    flat = a.reshape(-1)
    nonzero = flat != 0
    values = flat[nonzero]
    nnz, size = values.size, flat.size
    bitmask_bytes = -(-size // 8)
    index: np.ndarray
    if 4 * nnz < bitmask_bytes and size <= _INT32_MAX:
        index = np.flatnonzero(nonzero).astype(np.int32)
    else:
        index = np.packbits(nonzero)
    return Compressed(index=index, values=values, shape=tuple(a.shape))


def decompress(c: Compressed) -> np.ndarray:
    """The dense numpy array of a ``Compressed`` (zeros restored)."""
    shape = tuple(int(d) for d in c.shape)
    size = int(np.prod(shape, dtype=np.int64))
    values = np.asarray(c.values)
    index = np.asarray(c.index)
    if index.dtype == np.uint8:
        if index.size != -(-size // 8):
            raise ValueError(f"bitmask of {index.size} bytes does not fit shape {shape}")
        where = np.unpackbits(index, count=size).astype(bool)
    elif index.dtype == np.int32:
        if index.size and (index.min() < 0 or index.max() >= size):
            raise ValueError(f"indices out of range for shape {shape}")
        where = index
    else:
        raise ValueError(f"index must be int32 indices or a uint8 bitmask, got dtype {index.dtype}")
    out = np.zeros(size, values.dtype)
    n_index = int(np.count_nonzero(where)) if where.dtype == bool else where.size
    if n_index != values.size:
        raise ValueError(f"{n_index} indexed positions but {values.size} values")
    out[where] = values
    return out.reshape(shape)


def compressed_nbytes(c: Compressed) -> int:
    """Bytes of the index and the values (the shape's few integers not counted)."""
    return int(np.asarray(c.index).nbytes + np.asarray(c.values).nbytes)


def compress_tree(tree) -> Any:
    """Every array leaf of a pytree (e.g. Flax params) as ``Compressed`` where that is smaller
    than the dense array, else left as it is (a numpy array)."""

    def one(leaf):
        c = compress(leaf)
        return c if compressed_nbytes(c) < np.asarray(leaf).nbytes else np.asarray(leaf)

    return jax.tree_util.tree_map(one, tree)


def decompress_tree(tree) -> Any:
    """Inverse of ``compress_tree``: every ``Compressed`` leaf back to a dense numpy array."""
    return jax.tree_util.tree_map(
        lambda x: decompress(x) if isinstance(x, Compressed) else x, tree, is_leaf=lambda x: isinstance(x, Compressed)
    )


def tree_nbytes(tree) -> int:
    """Bytes of a pytree's arrays, ``Compressed`` leaves counted by ``compressed_nbytes``."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, Compressed))
    return sum(compressed_nbytes(x) if isinstance(x, Compressed) else int(np.asarray(x).nbytes) for x in leaves)
