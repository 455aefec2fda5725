"""The one shape of pyprune's input errors: a ValueError that names the argument."""
from __future__ import annotations


def fail(name: str, expected: str, got) -> None:
    """Raise ``ValueError("<name>: expected <expected>, got <got>")``."""
    raise ValueError(f"{name}: expected {expected}, got {got}")
