"""
### Remove backgrounds as new photos land, and announce the cut-outs

A watcher on the photos' prefix lists it every 30 seconds (a listing only: no vendor call, nothing
billed) and starts this DAG once a burst of uploads has settled (60 seconds without a new photo, or
15 minutes after the first one) and at least one photo has no finished cut-out, so an upload of 300
photos makes one run, not 300.

* **remove_backgrounds** removes the backgrounds of the photos that have no finished cut-out (the
  others are skipped and charge 0 credits); broken files are recorded, not fatal. On success its
  outlet, the cut-outs' prefix, gets an asset event carrying the counts (done, skipped, rejected,
  failed, pending), the credits spent and the manifest's URI: `example_publish_cutouts` runs on it.

Runs never overlap: photos that land during a run start the next one once it is over. Photos a run
leaves unfinished (a budget halt, vendor failures) wait for the next run: for a catch-up without new
uploads, schedule the DAG daily as well (docs/arrivals.md, "Photos a fired run did not finish").

**Before the first run:** a `pixelcut_default` connection (for Pixian.AI or Poof, change
`VENDOR_CONN_ID` and `POOL` at the top of the file); the pool, e.g.
`airflow pools set pixelcut_api 4 "Pixelcut API"`; a `google_cloud_default` connection for the
buckets (else Application Default Credentials); a triggerer running (it runs the watcher).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from airflow.sdk import DAG, Asset, AssetWatcher

from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.triggers.arrivals import NewImagesTrigger

#: The vendor connection (``pixelcut``, ``pixian`` or ``poof``) and its pool: change them together.
VENDOR_CONN_ID = "pixelcut_default"
POOL = "pixelcut_api"
#: Where the photos land and where their cut-outs go.
SOURCE_BUCKET, SOURCE_PREFIX = "shop-raw", "incoming/"
DESTINATION_BUCKET, DESTINATION_PREFIX = "shop-cutouts", "cutouts/"
#: When a burst has settled: seconds between listings, quiet seconds, longest wait (docs/arrivals.md).
POLL_INTERVAL, SETTLE_SECONDS, MAX_WAIT = 30, 60, 900


class Batch(TypedDict):
    """The arguments the watcher and the removal task share."""

    conn_id: str
    source_bucket: str
    source_prefix: str
    destination_bucket: str
    destination_prefix: str
    include: list[str]
    output_format: str


# [START howto_bgremoval_arrivals_batch]
batch: Batch = {  # what the watcher calls finished and what the task makes: the same batch
    "conn_id": VENDOR_CONN_ID,
    "source_bucket": SOURCE_BUCKET,
    "source_prefix": SOURCE_PREFIX,
    "destination_bucket": DESTINATION_BUCKET,
    "destination_prefix": DESTINATION_PREFIX,
    "include": ["*.jpg", "*.jpeg", "*.png", "*.webp"],
    "output_format": "webp",
}
# [END howto_bgremoval_arrivals_batch]

# [START howto_trigger_new_images]
new_photos = Asset(
    f"gs://{SOURCE_BUCKET}/{SOURCE_PREFIX}",
    watchers=[
        AssetWatcher(
            name="new_photos",
            trigger=NewImagesTrigger(
                **batch,
                poll_interval=POLL_INTERVAL,
                settle_seconds=SETTLE_SECONDS,
                max_wait=MAX_WAIT,
                min_batch=1,
            ),
        )
    ],
)
# [END howto_trigger_new_images]
cutouts = Asset(f"gs://{DESTINATION_BUCKET}/{DESTINATION_PREFIX}")

with DAG(
    dag_id="example_process_on_arrival",
    description="Remove backgrounds as new photos land, and announce the cut-outs",
    schedule=[new_photos],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["bgremoval", "example"],
    doc_md=__doc__,
) as dag:
    # [START howto_operator_remove_background_outlet]
    RemoveBackgroundOperator(
        task_id="remove_backgrounds",
        pool=POOL,
        max_concurrency=8,
        on_error="continue",  # broken files are recorded in the manifest, not fatal
        outlets=[cutouts],  # its asset event carries the summary counts and the manifest URI
        **batch,
    )
    # [END howto_operator_remove_background_outlet]
