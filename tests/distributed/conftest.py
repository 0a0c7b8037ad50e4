"""
The distributed tests need services of their own (Debian's ``redis-server`` as the Celery broker,
two Celery workers, Airflow's components as separate processes): they run only when asked for by
path — ``make test-distributed`` (``pytest tests/distributed``) — and stay out of ``make test``'s
``pytest tests``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave this folder out unless a command-line path points into it."""
    if collection_path.name.startswith("test_") and not _asked_for(config):
        return True
    return None
