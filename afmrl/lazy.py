"""Packages whose public names are imported on first access (so light modules stay light)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``package.names[name]``
    on first access (and caches it in the package's namespace)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{names[name]}")
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__


__all__ = ["lazy_exports"]
