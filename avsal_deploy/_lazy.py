"""Lazy package exports: names resolved from their submodule on first access (PEP 562).

A package's ``__init__`` lists ``{name: submodule}`` and gets ``__all__`` and a module-level
``__getattr__`` from :func:`lazy_exports`, so that importing one submodule does not import (and
build) the whole package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package`` whose names live in the submodules ``exports`` maps them to."""
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(table), __getattr__
