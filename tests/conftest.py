"""Shared test fixtures.

The MNIST data root is read from ``$NETTRIM_DATA``; if unset, ``<repo>/../shared/data`` is
used when it exists.  Tests that need MNIST call the ``mnist_root`` fixture, which skips when
no root is available.  scikit-learn's 8x8 digits (always available) back the fast tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent


def _default_data_root():
    env = os.environ.get("NETTRIM_DATA")
    if env:
        return Path(env)
    cand = _REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


DATA_ROOT = _default_data_root()
if DATA_ROOT is not None and "NETTRIM_DATA" not in os.environ:
    os.environ["NETTRIM_DATA"] = str(DATA_ROOT)


@pytest.fixture(scope="session")
def data_root():
    """The data root (``$NETTRIM_DATA`` or ``../shared/data``), or None."""
    return DATA_ROOT


@pytest.fixture(scope="session")
def mnist_root(data_root):
    """The MNIST data root; skips the test when the files are not available."""
    if data_root is None or not (Path(data_root) / "mnist").is_dir():
        pytest.skip("MNIST not available: set NETTRIM_DATA to a folder containing mnist/")
    return data_root


@pytest.fixture(scope="session")
def digits():
    """scikit-learn 8x8 digits: (x_train (P, 64), y_train, x_test, y_test), fixed split."""
    from nettrim_jax.training import load_digits_split

    return load_digits_split(test_fraction=0.25, seed=0)


@pytest.fixture(scope="session")
def digits_images():
    """The same split as ``digits`` with images (P, 8, 8, 1) NHWC."""
    from nettrim_jax.training import load_digits_split

    return load_digits_split(test_fraction=0.25, seed=0, images=True)


_NUMERIC_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_dtype_promotion")


@pytest.fixture(autouse=True)
def _numeric_flags_unchanged():
    """A test that leaves a process-wide numeric flag changed fails: the tests after it in
    the same worker would run at another precision (an experiment that enabled float64 at
    import made a later ResNet prune miss its sparsity target by 5.7 points)."""
    import jax

    before = {f: getattr(jax.config, f) for f in _NUMERIC_FLAGS}
    yield
    after = {f: getattr(jax.config, f) for f in _NUMERIC_FLAGS}
    changed = {f: (before[f], after[f]) for f in _NUMERIC_FLAGS if before[f] != after[f]}
    for f in changed:
        jax.config.update(f, before[f])  # restored, so only the leaking test fails
    assert not changed, f"test changed process-wide JAX flags (before, after): {changed}"


@pytest.fixture(autouse=True)
def _compiled_programs_bounded():
    """After each test, JAX's compiled programs are dropped once this worker holds more than
    a third of the kernel's memory mappings (``network.compiled.release_if_crowded``): a
    worker that ran ~250 tests over many distinct models passed the 65530 mappings, and XLA's
    next mapping ended it with a segmentation fault (twice, in a worker's last test)."""
    yield
    from nettrim_jax.network.compiled import release_if_crowded

    release_if_crowded(fraction=1 / 3)


# The command line keeps compiled programs in ~/.cache by default; the tests' runs do not
# (a test of the cache passes its own folder).
os.environ["NETTRIM_COMPILE_CACHE"] = "off"
