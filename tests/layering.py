"""The package's import rules, checked from its source: floors import only downward, no cycles.

Floors, lowest first (a module may import its own floor and the ones below it):

    _versions < solver < network < {baselines, models, training} < io < cli

``baselines``, ``models`` and ``training`` share a floor but do not import one another.
The top-level facade ``nettrim_jax/__init__.py`` re-exports from every floor and is exempt.
Beyond the floors, the module graph (every ``import``, including those inside functions)
must have no cycle: two modules of one floor that need each other are one job split badly.

    python tests/layering.py [PACKAGE_DIR]     # exit 1 and one line per violation

Used by ``make lint`` and by ``tests/test_layering.py``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FLOORS: tuple[tuple[str, ...], ...] = (
    ("_versions",),
    ("solver",),
    ("network",),
    ("baselines", "models", "training"),
    ("io",),
    ("cli",),
)


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file for every ``.py`` under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict) -> set[str]:
    """The package's modules named by one import statement (deepest known module of each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (functions included)."""
    files = module_files(root)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(module, path, node, files)
        edges.discard(root.name)  # importing the facade from inside is caught as a cycle below
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def floor_of(module: str) -> tuple[int, str] | None:
    """(floor rank, unit name) of a package module; None for the top-level facade."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for rank, units in enumerate(FLOORS):
        if parts[1] in units:
            return rank, parts[1]
    raise ValueError(f"{module} is in no floor of tests/layering.py: add its unit to FLOORS")


def violations(root: Path) -> list[str]:
    """Every broken rule in the package at ``root``, one readable line each (empty: all good)."""
    graph = import_graph(root)
    out = []
    for module, targets in sorted(graph.items()):
        here = floor_of(module)
        if here is None:
            continue
        for target in sorted(targets):
            there = floor_of(target)
            if there is None:
                continue
            if there[0] > here[0]:
                out.append(f"upward import: {module} ({here[1]}) imports {target} ({there[1]})")
            elif there[0] == here[0] and there[1] != here[1]:
                out.append(f"sideways import: {module} ({here[1]}) imports {target} ({there[1]})")
    for component in cycles(graph):
        out.append("import cycle: " + " <-> ".join(component))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "nettrim_jax"
    found = violations(root)
    for line in found:
        print(line)
    if not found:
        print(f"{root.name}: {len(import_graph(root))} modules, floors respected, no import cycle")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
