"""Lazy submodule access, so ``import synthcp3d`` is cheap and ``synthcp3d.engines.segmentation.f`` works
in MONAI bundle expressions (whose ``$import a.b.c`` binds no usable name)."""

from __future__ import annotations

import importlib
from types import ModuleType


def lazy_submodules(package: str):
    """Return a module ``__getattr__`` importing ``package.<name>`` on first access."""

    def __getattr__(name: str) -> ModuleType:
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
