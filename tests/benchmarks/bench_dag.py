"""One client process of the scale benchmark (:mod:`.bench_scale`): a DAG run, or one planning.

Run as a file (``python tests/benchmarks/bench_dag.py …``), not as a module, so that ``PYTHONPATH`` alone
decides which checkout of the provider it measures (the baseline runs an older one). Modes:

* ``dag FILE DAG_ID``: ``dag.test()`` of the DAG in ``FILE`` with ``--conf``; writes the start time first
  (the driver takes the first paid call from the sandbox's ledger) and, when it ends, the task states and
  each task's duration.
* ``plan``: a bucket task's planning of ``--objects`` explicit source names (a shard handed to a mapped
  task), with its peak RSS above the baseline after Airflow, the provider and the clients are loaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

_PROCESS = psutil.Process()


def _rss_mb() -> float:
    return _PROCESS.memory_info().rss / 2**20


def _write(path: Path, figures: dict[str, Any]) -> None:
    path.write_text(json.dumps(figures, default=str))


def run_dag(args: argparse.Namespace) -> dict[str, Any]:
    """``dag.test()`` of one DAG run; the figures the driver needs."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool
    from airflow.utils import db

    if args.init_db:
        db.initdb()
    Pool.create_or_update_pool("pixelcut_api", slots=4, description="Pixelcut API", include_deferred=False)
    target = Path(args.dags_folder) / Path(args.file).name
    shutil.copyfile(args.file, target)
    bag = DagBag(dag_folder=str(target))
    dag = bag.get_dag(args.dag_id)
    if dag is None:
        raise SystemExit(f"{args.dag_id} not in {target}: {bag.import_errors}")
    started = time.time()
    _write(args.result, {"started": started})
    dag_run = dag.test(run_conf=json.loads(args.conf))
    tasks = [
        {
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "state": str(ti.state),
            "duration_s": ti.duration,
            "start": ti.start_date.timestamp() if ti.start_date else None,
        }
        for ti in dag_run.get_task_instances()
    ]
    return {"started": started, "finished": time.time(), "state": str(dag_run.state), "tasks": tasks}


def run_plan(args: argparse.Namespace) -> dict[str, Any]:
    """A bucket task's planning of explicit source names; peak RSS above the loaded baseline."""
    import gc

    import airflow  # noqa: F401 - part of the baseline, as in a task process

    from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator

    names = [f"{args.prefix}{line}" for line in Path(args.objects).read_text().split()]
    operator = RemoveBackgroundOperator(
        task_id="shard",
        conn_id=args.conn_id,
        source_bucket=args.bucket,
        source_prefix=args.prefix,
        source_objects=names,
        destination_bucket=args.dst_bucket,
        destination_prefix=args.dst_prefix,
        max_concurrency=8,
    )
    job = operator.prepare_job()
    job.storage.client  # noqa: B018 - create the GCS client before the baseline
    gc.collect()
    baseline = peak = _rss_mb()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall = time.perf_counter()
    plan = job.plan_batch()
    wall = time.perf_counter() - wall
    done.set()
    sampler.join()
    return {
        "sources": len(names),
        "billable": len(plan.items),
        "settled": len(plan.settled),
        "plan_wall_s": wall,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": max(peak, _rss_mb()),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the mode, write the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("dag", "plan"))
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--file", help="DAG file (mode dag)")
    parser.add_argument("--dag-id")
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--dags-folder")
    parser.add_argument("--init-db", action="store_true")
    parser.add_argument("--objects", help="file of source names, one per line (mode plan)")
    parser.add_argument("--conn-id", default="pixelcut_default")
    parser.add_argument("--bucket")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--dst-bucket")
    parser.add_argument("--dst-prefix", default="")
    args = parser.parse_args(argv)
    figures = run_dag(args) if args.mode == "dag" else run_plan(args)
    _write(args.result, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
