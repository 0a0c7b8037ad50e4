"""One ``dag.test()`` in its own process, for the SIGTERM cell: ``python -m tests.faults.dag_runner``.

Arguments: the DAG file (inside DAGS_FOLDER) and the DAG id. The metadata DB, the connections and
``STORAGE_EMULATOR_HOST`` come from the environment. Airflow's task runner installs its SIGTERM
handler (which calls the operator's ``on_kill``) exactly as on a worker. Prints the run's task
states and the ``summary`` XCom as one JSON line.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    """Parse the DAG, run it once, print what happened."""
    path, dag_id = argv
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=path)
    dag = bag.get_dag(dag_id)
    assert dag is not None, bag.import_errors
    dag_run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(
                XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id, XComModel.key == "summary"
            )
            .one_or_none()
        )
        summary = None if row is None else row.value
    print(json.dumps({"states": states, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
