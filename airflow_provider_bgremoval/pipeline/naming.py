"""Deterministic, safe destination names (DESIGN.md decision 5): ``<source_prefix>2026/11/shoe.jpg``
becomes ``<destination_prefix>2026/11/shoe.png``; a name that could escape the destination prefix is refused.
"""

from __future__ import annotations

import posixpath
from urllib.parse import quote

#: Where the provider keeps its own objects (manifests, reports, claims) under a destination prefix.
INTERNAL_DIR = "_bgremoval/"


#: Characters an id keeps as they are in a folder name (letters and digits too); every other character,
#: ``%`` included, is percent-encoded, so two ids never share a folder.
_ID_SAFE = "_.-~:+=@,"


def folder_name(value: str) -> str:
    """
    One id (a DAG id, run id, task id) as one readable folder name of the provider's own objects
    (plans, manifests, reports, balance histories): percent-encoded but for letters, digits and
    ``_.-~:+=@,`` (``backfill/12`` -> ``backfill%2F12``; ``.`` and ``..`` too), an injective mapping.

    :param value: the id.
    """
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe=_ID_SAFE)


#: The longest object name GCS stores (bytes, UTF-8 encoded); a longer write is refused by GCS.
MAX_OBJECT_NAME_BYTES = 1024


class UnsafeNameError(ValueError):
    """A source name cannot be mapped to a destination name safely."""


def normalise_prefix(prefix: str | None) -> str:
    """``""`` or a prefix ending in ``/`` (``"a/b"`` -> ``"a/b/"``); a leading ``/`` is dropped."""
    prefix = (prefix or "").lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return prefix


def internal_prefix(destination_prefix: str | None) -> str:
    """The provider's own folder (:data:`INTERNAL_DIR`) under ``destination_prefix``."""
    return f"{normalise_prefix(destination_prefix)}{INTERNAL_DIR}"


#: The masters' folder under the destination prefix, with renditions and no ``masters_prefix`` given.
MASTERS_DIR = "masters/"


def masters_prefix(destination_prefix: str | None, masters_prefix: str | None = None) -> str:
    """
    Where the masters go with renditions: ``masters_prefix``, by default ``<destination_prefix>masters/``.

    :param destination_prefix: the destination prefix (the rendition folders' parent).
    :param masters_prefix: the prefix given, if any (``None`` or ``""``: the default).
    """
    return masters_prefix or f"{normalise_prefix(destination_prefix)}{MASTERS_DIR}"


def in_internal_folder(relative: str) -> bool:
    """
    True when ``relative`` (a name below a listed prefix) lies in a provider's own folder: the prefix's
    :data:`INTERNAL_DIR` or one deeper down (the destination of a job whose prefix lies below it).

    :param relative: the name below the prefix.
    """
    return relative.startswith(INTERNAL_DIR) or f"/{INTERNAL_DIR}" in relative


def check_safe(relative: str) -> str:
    """Raise :class:`UnsafeNameError` if ``relative`` could escape the destination prefix."""
    if not relative:
        raise UnsafeNameError("empty object name")
    if "\\" in relative:
        raise UnsafeNameError(f"backslash in object name {relative!r}")
    if relative.startswith("/"):
        raise UnsafeNameError(f"absolute object name {relative!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in relative):
        raise UnsafeNameError("control character in object name")
    if any(segment in ("..", ".") for segment in relative.split("/")):
        raise UnsafeNameError(f"'..' or '.' path segment in object name {relative!r}")
    if in_internal_folder(relative):
        raise UnsafeNameError(f"object name {relative!r} is inside the provider's own {INTERNAL_DIR} folder")
    return relative


def output_stem(name: str) -> str:
    """
    The part of a source name its output keeps: the name without its extension (``a.jpg`` and ``a.png``
    share ``a``, so they would make one output); a name that is an extension alone (``.jpg``) whole.

    :param name: a source object name (or its part below the source prefix).
    """
    stem, _ = posixpath.splitext(name)
    return stem if posixpath.basename(stem) else name


def destination_name(source_name: str, source_prefix: str, destination_prefix: str, extension: str) -> str:
    """
    Map a source object name to its destination object name; :class:`UnsafeNameError` when it could
    escape the destination prefix, or would be longer than GCS stores (:data:`MAX_OBJECT_NAME_BYTES`:
    a longer destination prefix or an added extension can push a valid source name past it, and the
    write would fail after the vendor was paid).
    """
    relative = check_safe(source_name.removeprefix(source_prefix))
    destination = f"{destination_prefix}{output_stem(relative)}{extension}"
    length = len(destination.encode("utf-8", "surrogatepass"))
    if length > MAX_OBJECT_NAME_BYTES:
        raise UnsafeNameError(
            f"output name {destination[:60]!r}... would be {length} bytes, longer than the "
            f"{MAX_OBJECT_NAME_BYTES} bytes GCS allows an object name"
        )
    return destination
