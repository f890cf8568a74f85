"""Generate ``nettrim_colab.ipynb`` (run from anywhere: ``python experiments/notebooks/make_colab.py``).

The notebook is kept as this generator so that its cells are reviewed as code;
``tests/test_notebook.py`` checks the committed .ipynb matches it and executes it on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "nettrim_colab.ipynb"

CELLS = [
    ("md", """\
# Net-Trim on a TPU, GPU or CPU: prune a Flax model in one call

[Net-Trim](https://arxiv.org/abs/1611.05162) (Aghasi, Abdi, Nguyen & Romberg, NIPS 2017) prunes a
trained ReLU network layer by layer with a convex program: the sparsest kernel whose outputs stay
within `epsilon` of the original layer's on calibration data.  This notebook

1. installs `nettrim-jax` (skipped when it is already importable, e.g. run from the repository).
   The package is not on PyPI: the install cell takes a wheel you uploaded to the runtime
   (build it with `make dist`, then drag `dist/nettrim_jax-*.whl` into Colab's *Files* panel),
   else the git repository at `REPO`, a placeholder to edit to the repository's URL,
2. detects the accelerator (TPU, GPU or CPU; in Colab pick *Runtime > Change runtime type*),
3. trains a small Flax NNX MLP on scikit-learn's 8x8 digits,
4. prunes it with **parallel** Net-Trim, whose independent layer problems are spread over
   **all** devices,
5. shows the per-layer table, the accuracy and the sparsity plots, and saves a checkpoint
   (readable `model.json` + safetensors weights) that the `nettrim` command line reads."""),
    ("code", """\
import os

# On a CPU-only runtime, expose two host devices so that the parallel scheme has something to
# spread over; this must happen before JAX starts and has no effect on TPU / GPU backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")"""),
    ("code", """\
import glob

# nettrim-jax is not published on PyPI.  Install an uploaded wheel (`make dist` builds
# dist/nettrim_jax-*.whl; upload it to this runtime), else the repository at REPO:
REPO = "git+https://github.com/YOUR-ORG/nettrim-jax.git"  # placeholder: edit to the repository's URL
try:
    import nettrim_jax
except ImportError:  # a fresh Colab runtime
    wheels = sorted(glob.glob("nettrim_jax-*.whl") + glob.glob("/content/nettrim_jax-*.whl"))
    source = wheels[-1] if wheels else REPO
    print("installing nettrim-jax from", source)
    %pip install -q {source} scikit-learn matplotlib safetensors
    import nettrim_jax
print("nettrim-jax", nettrim_jax.__version__)"""),
    ("code", """\
import jax

devices = jax.devices()
backend = jax.default_backend()
kind = {"tpu": "TPU", "gpu": "GPU", "cuda": "GPU", "rocm": "GPU"}.get(backend, "CPU")
print(f"{kind}: {len(devices)} device(s): {[str(d) for d in devices]}")"""),
    ("md", "## Train a small ReLU network"),
    ("code", """\
import time

import numpy as np
from nettrim_jax import training

x_train, y_train, x_test, y_test = training.load_digits_split(seed=0)
model = training.make_mlp((64, 64, 32, 10), seed=0)
t0 = time.perf_counter()
training.train_classifier(model, x_train, y_train, steps=300)
acc_before = training.accuracy(model, x_test, y_test)
print(f"trained in {time.perf_counter() - t0:.1f} s; test accuracy {acc_before:.4f}")"""),
    ("md", """\
## Prune it with parallel Net-Trim over all devices

Each layer is an independent convex program built from the original network's own inputs and
outputs.  `prune` places each whole layer problem on one device (largest first onto the least
loaded one) and dispatches them asynchronously, so the layers are solved side by side on a
TPU pod slice or several GPUs.  `epsilon=0.05` asks every layer to keep its outputs within 5%
(relative Frobenius norm) of the original's on the calibration data."""),
    ("code", """\
import nettrim_jax

t0 = time.perf_counter()
result = nettrim_jax.prune(model, x_train, scheme="parallel", epsilon=0.05, devices=devices,
                           progress=False)
print(f"pruned {len(result.report.layers)} layers on {len(devices)} device(s) "
      f"in {time.perf_counter() - t0:.1f} s")
acc_after = training.accuracy(result.model, x_test, y_test)
print(f"test accuracy: {acc_before:.4f} before, {acc_after:.4f} after")"""),
    ("code", """\
from IPython.display import Markdown, display

display(Markdown(result.report.to_markdown()))"""),
    ("md", "## Where the weights went"),
    ("code", """\
import matplotlib.pyplot as plt

rows = result.report.layers
names = [r.name for r in rows]
pos = np.arange(len(rows))
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].bar(pos - 0.2, [r.nnz_before for r in rows], 0.4, label="before")
axes[0].bar(pos + 0.2, [r.nnz_after for r in rows], 0.4, label="after Net-Trim")
axes[0].set_xticks(pos, names)
axes[0].set_ylabel("nonzero weights")
axes[0].set_title("Sparsity per layer")
axes[0].legend()
axes[1].plot(pos, [r.discrepancy for r in rows], "o-")
axes[1].axhline(0.05, color="gray", ls=":", label="epsilon")
axes[1].set_ylim(bottom=0)
axes[1].set_xticks(pos, names)
axes[1].set_title("Discrepancy along the pruned network")
axes[1].legend()
kernel = np.asarray(result.model.layers[0].kernel[...])
axes[2].imshow(kernel != 0, cmap="Greys", aspect="auto", interpolation="nearest")
axes[2].set_title(f"Layer 0 support ({np.mean(kernel != 0):.0%} kept)")
axes[2].set_xlabel("output unit")
axes[2].set_ylabel("input pixel")
fig.tight_layout()
plt.show()"""),
    ("md", """\
## Save a checkpoint for the command line

`checkpoint.save` writes `model.json` (layers, shapes, activations) beside the weights in
safetensors, atomically.  From a shell: `nettrim prune pruned-digits --data data.npz --epsilon 0.05
--out OUT` prunes further, and `nettrim report OUT --plot` shows the stored report."""),
    ("code", """\
from nettrim_jax.io import checkpoint, convert

layers, input_shape = convert.from_model(result.model, x_test[:8])   # any chain model
path = checkpoint.save("pruned-digits", layers, input_shape,
                       metadata={"scheme": "parallel", "epsilon": 0.05, "test_accuracy": acc_after})
reloaded = checkpoint.load(path)
back = convert.load_into(model, reloaded.layers, x_test[:8])          # into your own model
same = np.array_equal(np.asarray(back(x_test)).argmax(-1), np.asarray(result.model(x_test)).argmax(-1))
print(sorted(p.name for p in path.iterdir()), "| reloaded model agrees:", same)"""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["accelerator"] = "TPU"
    nb.metadata["colab"] = {"provenance": [], "name": NOTEBOOK.name}
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        cell["id"] = f"cell-{i:02d}"
    return nb


def main(argv=None) -> int:
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
