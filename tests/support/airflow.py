"""Real Airflow for integration tests: a metadata DB per test session and ``dag.test()`` runs.

A DAG under test is written as a file into the session's DAGS_FOLDER (Airflow 3.3's ``dag.test()``
only runs DAGs from a bundle), parsed, run, and its file removed again so later runs re-parse little.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the session's SQLite metadata database once."""
    from airflow.utils import db

    db.initdb()


@dataclass
class DagRunResult:
    """
    The outcome of one ``dag.test()``.

    :param dag_run: the DagRun ORM row.
    :param dag_id: the DAG id.
    """

    dag_run: Any
    dag_id: str

    @property
    def state(self) -> str:
        """Final DagRun state."""
        return str(self.dag_run.state)

    def task_states(self) -> dict[str, str]:
        """``task_id[map_index]`` -> state."""
        states = {}
        for ti in self.dag_run.get_task_instances():
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            states[key] = str(ti.state)
        return states

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """A task's XCom value (``None`` when absent)."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == self.dag_run.run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == key,
                    XComModel.map_index == map_index,
                )
                .one_or_none()
            )
            return None if row is None else row.value


class DagTester:
    """Writes DAG sources into DAGS_FOLDER and runs them with ``dag.test()``."""

    def __init__(self, dags_folder: Path) -> None:
        self.dags_folder = dags_folder

    def run(
        self, source: str, dag_id: str, *, conf: dict[str, Any] | None = None, keep: bool = False
    ) -> DagRunResult:
        """Run the DAG ``dag_id`` defined by ``source`` once and return its outcome."""
        from airflow.dag_processing.dagbag import DagBag

        path = self.dags_folder / f"{dag_id}.py"
        path.write_text(textwrap.dedent(source))
        try:
            bag = DagBag(dag_folder=str(path))
            assert not bag.import_errors, bag.import_errors
            dag = bag.get_dag(dag_id)
            assert dag is not None, f"{dag_id} not found in {path}"
            dag_run = dag.test(run_conf=conf)
            return DagRunResult(dag_run=dag_run, dag_id=dag_id)
        finally:
            if not keep:
                path.unlink(missing_ok=True)

    def run_file(self, file: Path, dag_id: str, *, conf: dict[str, Any] | None = None) -> DagRunResult:
        """Run a DAG from an existing file (copied into DAGS_FOLDER for the run)."""
        return self.run(file.read_text(), dag_id, conf=conf)


@pytest.fixture(scope="session")
def dag_tester(airflow_db: None) -> DagTester:
    """A :class:`DagTester` bound to the session's DAGS_FOLDER."""
    return DagTester(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]))
