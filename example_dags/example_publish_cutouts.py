"""
### Publish the new cut-outs when a background-removal run made some

Scheduled on the cut-outs' prefix (the outlet of `example_process_on_arrival`): each run starts after
a removal task succeeded there, and reads the asset events that started it. Each event carries the
counts of the task's batch and the URIs of its manifests (one per try of the task: a retried task's
earlier tries made cut-outs too).

* **new_cutouts** reads each event's manifests and lists the cut-outs the runs made (rows `done` in
  any try; skipped photos already had theirs), as `gs://` URIs;
* **publish** hands them to the storefront (here it logs them; put the shop's upload or cache purge
  here).

**Before the first run:** a `google_cloud_default` connection for the cut-outs' bucket (else
Application Default Credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

#: The cut-outs' prefix: the outlet of the removal task.
DESTINATION_BUCKET, DESTINATION_PREFIX = "shop-cutouts", "cutouts/"

log = logging.getLogger(__name__)
cutouts = Asset(f"gs://{DESTINATION_BUCKET}/{DESTINATION_PREFIX}")

with DAG(
    dag_id="example_publish_cutouts",
    description="Publish the new cut-outs when a background-removal run made some",
    schedule=[cutouts],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["bgremoval", "example"],
    doc_md=__doc__,
) as dag:
    # [START howto_read_outlet_manifest]
    @task
    def new_cutouts(triggering_asset_events: Mapping[Asset, Sequence[Any]] | None = None) -> list[str]:
        """The cut-outs the triggering runs made, from the manifests of every try of their tasks."""
        from airflow_provider_bgremoval.run_summary import summarise_manifests
        from airflow_provider_bgremoval.storage.gcs import GcsStorage

        assert triggering_asset_events is not None  # Airflow passes them in at run time
        storage = GcsStorage()
        made: list[str] = []
        for event in triggering_asset_events[cutouts]:
            log.info("Run %s: %s", event.source_run_id, event.extra)
            uris = event.extra.get("manifest_uris") or [event.extra["manifest_uri"]]
            manifests = []
            for uri in uris:
                bucket, _, name = uri.removeprefix("gs://").partition("/")
                manifests.append((uri, storage.read(bucket, name)))
            # a photo done by an earlier try is `skipped` in the later one: its row is the `done` one
            made += [row["destination"] for row in summarise_manifests(manifests).by_status("done")]
        return made

    # [END howto_read_outlet_manifest]

    @task
    def publish(uris: list[str]) -> int:
        """Publish each new cut-out (here: log it)."""
        for uri in uris:
            log.info("Publishing %s", uri)
        return len(uris)

    # Airflow's Task.__call__ types a task's arguments as its function's: not the XComArg it takes
    publish(new_cutouts())  # type: ignore[arg-type]
