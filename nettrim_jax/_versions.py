"""The oldest dependency versions the package works with, checked once at import.

pip enforces ``pyproject.toml``'s floors on install, but an environment can hold an older
package installed another way (a notebook image's preinstalled flax, say); this says so in
one line instead of failing later on a missing attribute.
"""

from __future__ import annotations

from importlib import metadata

FLOORS = {"flax": (0, 12), "jax": (0, 4, 30)}


def _parse(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def check_versions() -> None:
    """Raise ImportError (one line) when an installed dependency is older than its floor."""
    for name, floor in FLOORS.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # the import of the package itself will say it is missing
        if _parse(found) < floor:
            want = ".".join(map(str, floor))
            raise ImportError(
                f"nettrim-jax needs {name}>={want}, found {name} {found}: pip install -U '{name}>={want}'"
            )


check_versions()
