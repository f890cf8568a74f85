"""The import rules of tests/layering.py hold for the package, and the check can fail."""

from pathlib import Path

import layering


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "nettrim_jax"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in ("solver", "network", "io", "cli"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").touch()
    (root / "__init__.py").touch()
    return root


def test_the_package_respects_its_floors_and_has_no_import_cycle():
    root = Path(__file__).resolve().parents[1] / "nettrim_jax"
    assert layering.violations(root) == []
    graph = layering.import_graph(root)
    # the graph sees imports inside functions and relative ones (a check that saw nothing passes)
    assert "nettrim_jax.solver.gram_space" in graph["nettrim_jax.solver.layer"]  # from solver import x
    assert "nettrim_jax.network.adapters" in graph["nettrim_jax.io.convert"]


def test_an_upward_import_inside_a_function_is_reported(tmp_path):
    root = _package(
        tmp_path,
        {
            "solver/admm.py": "def f():\n    from nettrim_jax.network import prune\n",
            "network/prune.py": "from ..solver import admm\n",
        },
    )
    found = layering.violations(root)
    assert "upward import: nettrim_jax.solver.admm (solver) imports nettrim_jax.network.prune (network)" in found
    assert "import cycle: nettrim_jax.network.prune <-> nettrim_jax.solver.admm" in found


def test_a_cycle_within_one_floor_and_a_sideways_import_are_reported(tmp_path):
    root = _package(
        tmp_path,
        {
            "solver/layer.py": "from nettrim_jax.solver.gram_space import solve\n",
            "solver/gram_space.py": "from nettrim_jax.solver import layer\n",
            "models.py": "from nettrim_jax import training\n",
            "training.py": "",
        },
    )
    found = layering.violations(root)
    assert found == [
        "sideways import: nettrim_jax.models (models) imports nettrim_jax.training (training)",
        "import cycle: nettrim_jax.solver.gram_space <-> nettrim_jax.solver.layer",
    ]
    assert layering.main([str(root)]) == 1


def test_a_module_outside_every_floor_is_an_error(tmp_path):
    root = _package(tmp_path, {"alps.py": ""})
    try:
        layering.violations(root)
    except ValueError as err:
        assert "nettrim_jax.alps is in no floor" in str(err)
    else:
        raise AssertionError("a module in no floor passed")
