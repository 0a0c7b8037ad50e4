"""The example bucket DAG under OpenLineage's real listener: the events a lineage backend receives.

apache-airflow-providers-openlineage is installed (the ``openlineage`` extra) and its listener is on
only when a transport is configured, which Airflow reads once per process: the DAG runs in a child
process (:mod:`tests.support.dag_process`) with the file transport, and the test reads the events
it wrote, as Marquez or any OpenLineage backend would receive them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_bgremoval.sandbox.testing import RunningSandbox
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from tests.integration.examples.conftest import EXAMPLES, renditions_conf, seed
from tests.support.dag_process import run_in_child

pytestmark = pytest.mark.integration

DAG_ID = "example_bucket_remove_background"


def lineage_of(events: list[dict[str, Any]], task_id: str) -> set[tuple[Any, ...]]:
    """``(side, (namespace, name), ...)`` of ``task_id``'s events, per side (``inputs`` / ``outputs``)."""
    found = set()
    for event in events:
        if event["job"]["name"] == f"{DAG_ID}.{task_id}":
            for side in ("inputs", "outputs"):
                found.add((side, *sorted((d["namespace"], d["name"]) for d in event[side])))
    return found


def test_the_bucket_dag_reports_its_prefixes_to_openlineage(
    vendor_connections: RunningSandbox,
    gcs_storage: GcsStorage,
    gcs_bucket_factory: Callable[..., str],
    pixelcut_pool: str,
    images_dir: Path,
    tmp_path: Path,
) -> None:
    src, dst = gcs_bucket_factory("raw"), gcs_bucket_factory("cut")
    seed(gcs_storage, src, {f"products/{p.name}": p.read_bytes() for p in sorted(images_dir.glob("*.png"))})
    events_file = tmp_path / "openlineage.jsonl"
    transport = {"type": "file", "log_file_path": str(events_file), "append": True}
    conf = renditions_conf(src, dst)
    env = {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "test",
    }

    run = run_in_child(EXAMPLES / f"{DAG_ID}.py", DAG_ID, conf, env, tmp_path / "run.json")

    assert run["state"] == "success", run["tasks"]
    text = events_file.read_text()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    completes = [e for e in events if e["eventType"] == "COMPLETE"]
    shards = [key for key in run["tasks"] if key.startswith("remove_background[")]
    assert shards and len([e for e in completes if e["job"]["name"] == f"{DAG_ID}.remove_background"]) == len(
        shards
    )
    source, cutouts = (f"gs://{src}", "products/"), (f"gs://{dst}", "cutouts/")
    # every shard reads the source prefix and writes the cut-outs; the renditions task reads those
    # and writes one folder per rendition; the provider's own _bgremoval/ objects are never reported
    assert lineage_of(completes, "remove_background") == {("inputs", source), ("outputs", cutouts)}
    folders = tuple((f"gs://{dst}", f"renditions/{name}/") for name in ("amazon", "shopify", "thumb"))
    assert lineage_of(completes, "renditions") == {("inputs", cutouts), ("outputs", *folders)}
    datasets = [d["name"] for e in events for side in ("inputs", "outputs") for d in e.get(side, [])]
    assert datasets and not any("_bgremoval" in name for name in datasets)
    secrets = (vendor_connections.pixelcut_key, vendor_connections.pixian_secret, vendor_connections.poof_key)
    assert not any(secret in text for secret in secrets)
