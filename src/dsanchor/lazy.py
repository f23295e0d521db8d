"""Package exports that load their module on first use (PEP 562), so importing a package stays cheap.

A package's ``__init__.py`` names its public API in ``__all__`` and maps each name to the module that defines
it; ``from dsanchor.rl import PPOConfig`` then imports :mod:`dsanchor.rl.ppo` only. Importing the package never
imports its submodules, so a submodule may import a sibling (or a module that imports a sibling) without a
circle through the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public names ``where`` maps to their modules."""

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return sorted(where)

    return getattr_, dir_
