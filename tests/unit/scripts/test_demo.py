"""``scripts/demo.py``'s helpers: how the report prints the output folder, wherever it is."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def demo() -> Iterator[ModuleType]:
    """The demo script as a module (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("bgremoval_demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_a_folder_outside_the_working_directory_is_shown_absolute(demo, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    outside = tmp_path / "not-yet" / "demo-output"
    assert demo.shown(outside) == str(outside)
    assert not outside.exists()  # showing a path creates nothing


def test_a_folder_inside_the_working_directory_is_shown_relative(demo, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert demo.shown(tmp_path / "out" / "run") == os.path.join("out", "run")
    assert demo.shown(Path("out")) == "out"
    assert demo.shown(Path("a/../out")) == "out"
    assert demo.shown(tmp_path) == "."


def test_a_relative_folder_outside_the_working_directory_is_shown_absolute(
    demo, tmp_path, monkeypatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert demo.shown(Path("../elsewhere")) == str(tmp_path / "elsewhere")
