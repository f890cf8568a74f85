"""Checksum-verified dataset download (offline: the 'mirror' is a local folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nettrim_jax.io import data


@pytest.fixture
def mirror(data_root, tmp_path):
    """A copy of the canonical MNIST files as a file:// mirror (skips without the data)."""
    if data_root is None or not (Path(data_root) / "mnist").is_dir():
        pytest.skip("no MNIST folder ($NETTRIM_DATA)")
    src = tmp_path / "mirror"
    shutil.copytree(Path(data_root) / "mnist", src)
    return src


def test_download_verifies_and_loads(mirror, tmp_path):
    root = tmp_path / "data"
    folder = data.download(root, "mnist", base_url=mirror.as_uri())
    assert data.verify(folder, "mnist") == []
    images, labels = data.load_mnist("mnist", "test", root)
    assert images.shape == (10000, 28, 28) and labels[:3].tolist() == [7, 2, 1]


def test_corrupt_download_raises_and_leaves_nothing(mirror, tmp_path):
    bad = mirror / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF  # same size, different bytes
    bad.chmod(0o644)
    bad.write_bytes(bytes(raw))
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*SHA-256"):
        data.download(root, "mnist", base_url=mirror.as_uri())
    left = sorted(p.name for p in (root / "mnist").iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in left
    assert not any(n.endswith(".part") for n in left)


def test_existing_good_files_are_kept_and_bad_ones_replaced(mirror, tmp_path):
    root = tmp_path / "data"
    folder = data.download(root, "mnist", base_url=mirror.as_uri())
    good = folder / "train-labels-idx1-ubyte.gz"
    stamp = good.stat().st_mtime_ns
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    assert any("t10k-labels" in p for p in data.verify(folder, "mnist"))
    data.download(root, "mnist", base_url=mirror.as_uri())
    assert good.stat().st_mtime_ns == stamp
    assert data.verify(folder, "mnist") == []


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.download("/nonexistent", "cifar")
