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


class _NoObjects:
    """A storage with nothing in it: the copy step then only clears and marks the folder."""

    def list_objects(self, bucket: str, prefix: str, **ranges: object) -> list[object]:
        return []


def test_the_copy_keeps_what_the_demo_did_not_write(demo, tmp_path) -> None:
    out = tmp_path / "Documents"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("keep me")
    (out / "photo.jpg").write_bytes(b"keep me too")

    assert demo.download_outputs(_NoObjects(), out, []) == 0

    assert (out / "notes" / "mine.txt").read_text() == "keep me"
    assert (out / "photo.jpg").read_bytes() == b"keep me too"
    assert (out / demo.OUTPUT_MARKER).is_file()


def test_a_second_run_replaces_only_the_files_the_first_one_wrote(demo, tmp_path) -> None:
    out = tmp_path / "out"
    demo.download_outputs(_NoObjects(), out, [])
    demo.write_output(out, "cutouts/old.png", b"from the last run")
    demo.write_output(out, "report.json", b"{}")
    (out / "mine.txt").write_text("keep me")

    demo.download_outputs(_NoObjects(), out, [])

    assert not (out / "cutouts").exists()
    assert not (out / "report.json").exists()
    assert (out / "mine.txt").read_text() == "keep me"


def test_a_file_added_after_a_run_under_the_demos_names_is_refused(demo, tmp_path) -> None:
    out = tmp_path / "Documents"
    demo.clear_output(out)
    demo.write_output(out, "reports/run-1/report.json", b"{}")
    (out / "reports" / "q3.pdf").write_bytes(b"a user's report, saved while or after the demo ran")

    assert demo.output_conflicts(out) == ["reports/q3.pdf"]
    with pytest.raises(demo.DemoFailure, match="the demo did not write"):
        demo.download_outputs(_NoObjects(), out, [])
    assert (out / "reports" / "q3.pdf").exists() and (out / "reports" / "run-1" / "report.json").exists()


def test_a_folder_holding_entries_the_demo_would_replace_is_refused_before_anything_runs(
    demo, tmp_path, capsys
) -> None:
    out = tmp_path / "project"
    (out / "reports").mkdir(parents=True)
    (out / "reports" / "q3.pdf").write_bytes(b"a user's report")

    with pytest.raises(SystemExit) as refused:
        demo.main(["--quick", "--work", str(tmp_path / "work"), "--output", str(out)])

    assert refused.value.code == 2
    assert "holds reports/q3.pdf, not written by the demo" in capsys.readouterr().err
    assert (out / "reports" / "q3.pdf").read_bytes() == b"a user's report"
    assert not (tmp_path / "work").exists()  # refused before the scratch folder or any process
    with pytest.raises(demo.DemoFailure, match="the demo did not write"):
        demo.download_outputs(_NoObjects(), out, [])
    assert (out / "reports" / "q3.pdf").exists()


def test_the_default_folder_is_the_demos_own(demo) -> None:
    assert demo.output_conflicts(demo.DEFAULT_OUTPUT) == []


def test_a_copy_interrupted_midway_leaves_a_folder_the_next_run_clears(demo, tmp_path) -> None:
    out = tmp_path / "out"
    demo.clear_output(out)
    demo.write_output(out, "cutouts/a.png", b"landed before the interruption")

    assert demo.output_conflicts(out) == []
    demo.download_outputs(_NoObjects(), out, [])
    assert not (out / "cutouts").exists()
