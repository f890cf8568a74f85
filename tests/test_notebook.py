"""The Colab notebook stays in sync with its generator and runs top to bottom on CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import nbclient  # test extra: nbclient, nbformat, ipykernel (no importorskip: a missing
import nbformat  # dependency must fail CI, not silently stop running the notebook)
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "experiments" / "notebooks"
NOTEBOOK = NB_DIR / "nettrim_colab.ipynb"


def _generator():
    spec = importlib.util.spec_from_file_location("make_colab", NB_DIR / "make_colab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebook_matches_generator():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    fresh = _generator().build()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in fresh.cells], (
        "run `python experiments/notebooks/make_colab.py` and commit the notebook"
    )
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), "commit it without outputs"


def test_install_cell_installs_what_exists():
    """nettrim-jax is not on PyPI: the install cell must take an uploaded wheel (``make dist``)
    or the repository URL, and say so; never ``pip install nettrim-jax`` from the index."""
    install = [c.source for c in _generator().build().cells if "%pip install" in c.source]
    assert len(install) == 1
    cell = install[0]
    assert "pip install -q nettrim-jax" not in cell
    assert 'glob.glob("nettrim_jax-*.whl")' in cell and "make dist" in cell
    assert 'REPO = "git+https://' in cell and "%pip install -q {source}" in cell
    makefile = (NB_DIR.parent.parent / "Makefile").read_text()
    assert "\ndist:" in makefile and "pip wheel . --no-deps -w dist" in makefile


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec running *this* interpreter (the one with nettrim_jax installed), found
    through JUPYTER_PATH, so the test needs no globally registered kernel."""
    name = "nettrim-test-python"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "nettrim test",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


def test_notebook_executes_on_cpu(tmp_path, kernel_name):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "run"
    work.mkdir()
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    def text(cell):
        out = []
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out.append(o.get("data", {}).get("text/plain", ""))
            out.append(o.get("data", {}).get("text/markdown", ""))
        return "".join(out)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "nettrim-jax" in text(code[1]) and "pip" not in text(code[1])  # install skipped
    assert "CPU: 2 device(s)" in text(code[2])
    assert "pruned 3 layers on 2 device(s)" in text(code[4])
    table = text(code[5])
    assert "| layers/0 | dense | relu |" in table and "parallel Net-Trim" in table
    assert any("image/png" in o.get("data", {}) for o in code[6].outputs)
    assert "reloaded model agrees: True" in text(code[7])
    assert (work / "pruned-digits" / "model.json").is_file()
