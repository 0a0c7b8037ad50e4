"""Old import paths kept for one release: a module-level ``__getattr__`` that warns and forwards."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(old_module: str, new_homes: Mapping[str, str]) -> Callable[[str], Any]:
    """
    A module ``__getattr__`` (PEP 562) serving names that moved, each with a DeprecationWarning.

    .. code-block:: python

        __getattr__ = moved_names(__name__, {"OldName": "package.new_module:NewName"})

    :param old_module: the module the names used to live in (``__name__``).
    :param new_homes: old name → ``"module:name"`` (or just ``"module"`` when the name is unchanged).
    """

    def __getattr__(name: str) -> Any:
        home = new_homes.get(name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = home.partition(":")
        new_name = new_name or name
        warnings.warn(
            f"{old_module}.{name} is deprecated and will be removed in the next release: "
            f"import {new_name} from {module}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
