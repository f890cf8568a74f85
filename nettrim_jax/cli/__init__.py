"""``nettrim``: the command line (parse, load, call the library, print)."""

from nettrim_jax.cli.app import main

__all__ = ["main"]
