"""Every example DAG imports cleanly: no import errors, no deprecation warnings, no network at parse.

Run by ``make test`` with ``-W error::FutureWarning`` (Airflow's ``DeprecatedImportWarning`` is a
FutureWarning), so a deprecated import anywhere in an example, or in the provider modules it imports,
is an error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import warnings

import pytest

from tests.integration.examples.conftest import EXAMPLE_DAG_IDS, EXAMPLE_FILES, EXAMPLES

pytestmark = pytest.mark.integration

# Parses each example in a fresh interpreter (so the provider modules are imported, and warn, anew)
# with every socket connection refused and every warning turned into an error except third-party
# noise we do not control.
PARSE_SCRIPT = r"""
import json, os, socket, sys, warnings
warnings.simplefilter("error", FutureWarning)
warnings.simplefilter("error", DeprecationWarning)
for module in ("google", "proto", "pkg_resources", "starlette", "fastapi", "httpx", "sqlalchemy", "pydantic"):
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=module + ".*")
attempts = []
def refuse(self, address, *args, **kwargs):
    if isinstance(address, (str, bytes)):  # unix sockets (logging) are fine
        return _connect(self, address, *args, **kwargs)
    attempts.append(repr(address))
    raise OSError("network access at DAG parse time")
_connect = socket.socket.connect
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
def refuse_create(address, *args, **kwargs):
    attempts.append(repr(address))
    raise OSError("network access at DAG parse time")
socket.create_connection = refuse_create
import runpy
results = {}
for path in sys.argv[1:]:
    namespace = runpy.run_path(path, run_name="example_under_test")
    from airflow.sdk import DAG
    results[os.path.basename(path)] = sorted(v.dag_id for v in namespace.values() if isinstance(v, DAG))
print("RESULT " + json.dumps({"dags": results, "network": attempts}))
"""


def test_examples_parse_without_warnings_or_network(tmp_path) -> None:
    env = {
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, *map(str, EXAMPLE_FILES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["network"] == []
    found = {dag_id for ids in result["dags"].values() for dag_id in ids}
    assert found == EXAMPLE_DAG_IDS
    assert len(result["dags"]) == len(EXAMPLE_FILES)


def test_dagbag_has_no_import_errors_and_the_documented_shape(monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    def refuse(*args, **kwargs):
        raise AssertionError("network access at DAG parse time")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS
    deprecations = [
        w for w in caught if issubclass(w.category, FutureWarning) and "example_dags" in str(w.filename)
    ]
    assert deprecations == []

    for dag_id in EXAMPLE_DAG_IDS:  # documented at the top
        dag = bag.dags[dag_id]
        assert dag.doc_md and len(dag.doc_md) > 200, dag_id

    bucket = bag.dags["example_bucket_remove_background"]
    assert bucket.schedule == "@daily"
    assert set(bucket.task_ids) == {
        "check_credits",
        "shards",
        "remove_background",
        "run_report",
        "renditions",
    }
    assert bucket.get_task("renditions").upstream_task_ids == {"remove_background"}
    remove = bucket.get_task("remove_background")
    assert remove.partial_kwargs["pool"] == "pixelcut_api"
    assert bucket.get_task("run_report").trigger_rule == "all_done_min_one_success"
    assert bucket.get_task("check_credits").downstream_task_ids == {"shards"}  # the run's one plan

    generate = bag.dags["example_generate_background"]
    assert set(generate.task_ids) == {"scene", "prompt"}
    assert {generate.get_task(t).pool for t in generate.task_ids} == {"pixelcut_api"}

    monitor = bag.dags["example_credit_monitor"]
    assert monitor.schedule == "@hourly"
    assert monitor.get_task("check_balances").on_low_callback is not None
    topup = bag.dags["example_credit_monitor_wait_for_topup"]
    assert topup.get_task("wait_for_topup").deferrable is True

    arrival = bag.dags["example_process_on_arrival"]  # watcher -> remove backgrounds -> outlet
    [watched] = arrival.timetable.asset_condition.objects
    [watcher] = watched.watchers
    assert type(watcher.trigger).__name__ == "NewImagesTrigger" and arrival.max_active_runs == 1
    [outlet] = arrival.get_task("remove_backgrounds").outlets
    publish = bag.dags["example_publish_cutouts"]  # scheduled on that outlet
    assert list(publish.timetable.asset_condition.objects) == [outlet]
    assert set(publish.task_ids) == {"new_cutouts", "publish"}
