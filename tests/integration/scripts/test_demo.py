"""``scripts/demo.py --quick`` end to end, with its output folder outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_quick_demo_copies_its_outputs_to_a_relative_folder_outside_the_repository(tmp_path) -> None:
    # run from outside the repository with a relative --output that does not exist yet
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--quick", "--work", "work", "--output", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    report = done.stdout
    assert done.returncode == 0, report[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "contact-sheet.png").is_file() and (out / "report.json").is_file()
    cutouts = [p for p in (out / "cutouts").rglob("*") if p.is_file()]
    assert cutouts and not any("_bgremoval" in p.parts for p in out.rglob("*"))
    assert "Copying outputs, reports and the contact sheet to out/" in report
    assert "  contact sheet: out/contact-sheet.png" in report
