"""Old names kept for one release: each use warns (DeprecationWarning) and forwards to the new name."""

from __future__ import annotations

import importlib
import operator
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def warn_moved(old: str, new: str) -> None:
    """Warn the caller's caller that ``old`` is deprecated: ``new`` says what to use instead."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def moved_names(old_module: str, new_homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562): ``{"module" or "module:NewName": "OldName OtherOldName"}``."""
    homes = {name: home for home, names in new_homes.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = homes[name].partition(":")
        warn_moved(f"{old_module}.{name}", f"import {new_name or name} from {module}")
        return getattr(importlib.import_module(module), new_name or name)

    return __getattr__


def moved_attribute(old: str, path: str, read: Callable[[Any], Any] | None = None) -> Any:
    """A read-only property that warns: ``read(instance)``, by default the attribute ``path`` (dotted)."""
    getter = read or operator.attrgetter(path)

    def read_moved(self: object) -> Any:
        warn_moved(old, f"use .{path}")
        return getter(self)

    return property(read_moved)
