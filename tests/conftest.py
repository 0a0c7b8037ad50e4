"""Test-session setup. Airflow reads its configuration at import, so the environment is set first."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = Path(__file__).resolve().parent / "data" / "images"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bgremoval-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_AIRFLOW_HOME / "dags"))
(_AIRFLOW_HOME / "dags").mkdir(exist_ok=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}")

import pytest  # noqa: E402

pytest_plugins = ["tests.support.gcs", "tests.support.airflow", "tests.support.sandbox"]


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """Folder of the sample photos carried by the repository (see tests/data/images/LICENSES.md)."""
    return IMAGES


@pytest.fixture(scope="session")
def photo_bytes() -> dict[str, bytes]:
    """The sample photos as bytes, by file name."""
    return {p.name: p.read_bytes() for p in sorted(IMAGES.iterdir()) if p.suffix in (".png", ".jpg")}
