"""Datasets: MNIST-format IDX files from a folder, and the nested spirals we generate.

The data folder is never hard-coded: pass it, or set ``NETTRIM_DATA`` to a folder holding
``mnist/`` and ``fashion-mnist/`` (each with the four ``*-idx?-ubyte[.gz]`` files).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

ENV_VAR = "NETTRIM_DATA"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# The canonical releases: (bytes, sha256) of each gzip file, and where to fetch them.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
}
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(folder: str | os.PathLike, name: str = "mnist") -> list[str]:
    """Problems with the four files of ``name`` in ``folder`` (empty list: all present and
    byte-identical to the canonical release, by size and SHA-256)."""
    folder = Path(folder)
    problems = []
    for fname, (size, digest) in CHECKSUMS[name].items():
        path = folder / fname
        problem = verify_file(path, size, digest) if path.exists() else "missing"
        if problem:
            problems.append(f"{path}: {problem}")
    return problems


def download(root: str | os.PathLike, name: str = "mnist", base_url: str | None = None) -> Path:
    """Fetch ``name`` ("mnist" | "fashion-mnist") into ``root/name``, checking every file.

    Files already present with the right checksum are kept.  Each download goes to a
    temporary file in the same folder, is checked (size and SHA-256) and only then renamed
    into place, so a failed or corrupted download never leaves a file that looks valid;
    a mismatch raises ``ValueError`` naming the file.  ``base_url`` overrides the mirror.
    Returns the dataset folder.
    """
    if name not in CHECKSUMS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(CHECKSUMS)}")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    base = base_url or MIRRORS[name]
    for fname, (size, digest) in CHECKSUMS[name].items():
        target = folder / fname
        if target.exists() and not verify_file(target, size, digest):
            continue
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{fname}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base.rstrip("/") + "/" + fname, timeout=60) as src:
                os.fchmod(out.fileno(), creation_mode(target))
                shutil.copyfileobj(src, out)
            problem = verify_file(Path(tmp), size, digest)
            if problem:
                raise ValueError(f"download of {fname} from {base}: {problem}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return folder


def creation_mode(path: str | os.PathLike) -> int:
    """Permission bits a plain ``open(path, "w")`` would leave: an existing file keeps its
    own; a new one gets 0o666 minus the process umask.  For files written through a
    ``mkstemp`` temporary (created 0o600) and renamed onto ``path``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask.  Linux shows it in /proc; elsewhere it is read by setting and
    restoring it (a brief window in which another thread's new files would get 0o022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def verify_file(path: Path, size: int, digest: str) -> str | None:
    """None if ``path`` has ``size`` bytes and SHA-256 ``digest``, else what is wrong."""
    actual = path.stat().st_size
    if actual != size:
        return f"{actual} bytes, expected {size}"
    if file_sha256(path) != digest:
        return "SHA-256 does not match the canonical release"
    return None


def data_dir(folder: str | os.PathLike | None = None) -> Path | None:
    """The data root: ``folder`` if given, else ``$NETTRIM_DATA``, else None."""
    folder = folder if folder is not None else os.environ.get(ENV_VAR)
    return Path(folder) if folder else None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array.

    Raises ValueError naming the file if the header, magic number or size is wrong.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise ValueError(f"{path}: expected {count} values for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {stem}[.gz]")


def load_idx_folder(folder: str | os.PathLike, split: str = "train"):
    """Images (n, 28, 28) float32 in [0, 1] and labels (n,) int32 from an MNIST-format folder."""
    folder = Path(folder)
    images_stem, labels_stem = _FILES[split]
    images = read_idx(_find(folder, images_stem))
    labels = read_idx(_find(folder, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def load_mnist(name: str = "mnist", split: str = "train", root=None):
    """MNIST or Fashion-MNIST (``name="fashion-mnist"``) from ``root`` / ``$NETTRIM_DATA``."""
    base = data_dir(root)
    if base is None:
        raise FileNotFoundError(f"no data folder: pass one or set {ENV_VAR}")
    return load_idx_folder(base / name, split)


def nested_spirals(n: int = 1000, turns: float = 2.0, noise: float = 0.0, seed: int = 0):
    """Two nested (interleaved) spirals in the plane, as in Net-Trim's supplement.

    Class k in {0, 1} follows r = t, angle = 2 pi turns t + k pi for t uniform in
    [0.05, 1], plus Gaussian noise of standard deviation ``noise``.  Returns points (n, 2)
    float32 and labels (n,) int32, classes alternating.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    t = rng.uniform(0.05, 1.0, n)
    angle = 2 * np.pi * turns * t + np.pi * labels
    pts = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    pts = pts + noise * rng.standard_normal(pts.shape)
    return pts.astype(np.float32), labels.astype(np.int32)
