"""``dag.test()`` of one DAG file in a child process, for what Airflow reads once per process.

Plugins and listeners (OpenLineage's among them) are loaded at the first import and decided by the
environment of that moment, so a test that needs them on runs its DAG here with its own environment;
the child shares the test session's metadata database and DAGS_FOLDER. Run as
``python -m tests.support.dag_process FILE DAG_ID --conf JSON --out RESULT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_in_child(
    file: Path, dag_id: str, conf: dict[str, Any], env: dict[str, str], out: Path
) -> dict[str, Any]:
    """
    Run ``dag_id`` of ``file`` with ``conf`` in a child process whose environment is this one's plus ``env``.

    :param file: the DAG file (copied into DAGS_FOLDER for the run).
    :param dag_id: the DAG to run.
    :param conf: the run's conf.
    :param env: extra environment variables of the child.
    :param out: where the child writes its result.
    :return: ``{"state": ..., "tasks": {"task_id[map_index]": state}}``.
    """
    command = [
        sys.executable,
        "-m",
        "tests.support.dag_process",
        str(file),
        dag_id,
        "--conf",
        json.dumps(conf),
    ]
    done = subprocess.run(
        [*command, "--out", str(out)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from airflow.dag_processing.dagbag import DagBag

    target = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / args.file.name
    shutil.copyfile(args.file, target)
    try:
        bag = DagBag(dag_folder=str(target))
        dag = bag.get_dag(args.dag_id)
        if dag is None:
            raise SystemExit(f"{args.dag_id} not in {target}: {bag.import_errors}")
        dag_run = dag.test(run_conf=json.loads(args.conf))
        tasks = {
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
            for ti in dag_run.get_task_instances()
        }
    finally:
        target.unlink(missing_ok=True)
    args.out.write_text(json.dumps({"state": str(dag_run.state), "tasks": tasks}))


if __name__ == "__main__":
    main()
