"""
### Remove backgrounds from a GCS prefix, with a credits pre-flight and a run report

1. **check_credits** plans the run once: it lists the photos, skips finished outputs, checks each
   file locally, keeps the plan in the destination bucket as at most *Max shards* shards of at least
   4 photos, and prices exactly that plan plus *Safety margin (%)* against both vendor accounts
   (the primary's balance first, then the secondary's). When their credits together are short the run
   fails (or skips, see *When credits are short*) before anything is spent.
2. **shards** hands the plan's shard descriptors on (Airflow maps only over a return value).
3. **remove_background** runs once per shard in the `pixelcut_api` pool, on exactly the photos
   priced, with Pixelcut first; when Pixelcut runs out of credits, refuses the key or is down, the
   rest of the shard goes on with Poof in the same task, and comes back to Pixelcut once it answers
   again. A rerun skips finished outputs, whichever vendor made them, and charges 0 credits; broken
   files are recorded, not fatal.
4. **run_report** writes `report.json` and a before/after `contact-sheet.png` to
   `<destination_prefix>_bgremoval/reports/<dag_id>/<run_id>/`, also when a shard failed (the run
   still fails).
5. **renditions** renders marketplace images (Amazon, Shopify, a thumbnail) of the PNG cut-outs,
   one folder each under `<renditions_prefix>`, locally: no vendor call, 0 credits. A rerun renders
   only new or changed cut-outs, and a rendition added to *Renditions* (in the trigger form, or to
   `RENDITIONS` for every run) is rendered for the whole catalogue for free. Images that break a
   marketplace's rules (e.g. too small for Amazon) are reported, never written.

Scheduled runs use the parameters' defaults; a manual run can change them in the trigger form.

**Before the first run:** the `pixelcut_default` and `poof_default` connections (for other
accounts or another order, change `VENDOR_CONN_IDS` and `POOL` at the top of the file); the pool, e.g.
`airflow pools set pixelcut_api 4 "Pixelcut API"` (a task whose pool does not exist is never
scheduled); a `google_cloud_default` connection for the buckets (else Application Default
Credentials).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from airflow.sdk import DAG, Param

from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.preflight import CreditsCheckOperator
from airflow_provider_bgremoval.operators.render import RenderRenditionsOperator
from airflow_provider_bgremoval.operators.report import RunReportOperator
from airflow_provider_bgremoval.operators.sharding import PlannedShardsOperator

#: The vendor accounts, primary first: the batch moves on to the next when one runs out of credits,
#: refuses its key or is down (one id alone: no failover). The pool is the primary's.
VENDOR_CONN_IDS = ["pixelcut_default", "poof_default"]
POOL = "pixelcut_api"

#: The sources: photos matching one of these patterns.
INCLUDE = ["*.jpg", "*.jpeg", "*.png", "*.webp"]

# [START howto_bgremoval_renditions]
#: Rendered from each PNG cut-out (free); add one and the next run renders it for every photo.
RENDITIONS = [
    {"name": "amazon", "preset": "amazon_main"},  # JPEG on pure white, 85 % fill, >= 1000 px
    {"name": "shopify", "preset": "shopify_square"},  # 2048 px square JPEG
    {"name": "thumb", "format": "webp", "size": 256, "background": "transparent", "margin": "4%"},
]
# [END howto_bgremoval_renditions]


class Batch(TypedDict):
    """The arguments the pre-flight and the remove tasks share (templated from the trigger form)."""

    conn_id: list[str]
    source_bucket: str
    source_prefix: str
    destination_bucket: str
    destination_prefix: str
    include: list[str]
    output_format: str


with DAG(
    dag_id="example_bucket_remove_background",
    description="Remove backgrounds from a GCS prefix, with a credits pre-flight and a run report",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    # [START howto_bgremoval_trigger_params]
    params={
        "source_bucket": Param(
            "shop-raw", type="string", title="Source bucket", description="Bucket of the photos."
        ),
        "source_prefix": Param(
            "incoming/", type="string", title="Source prefix", description="Photos under this prefix."
        ),
        "destination_bucket": Param(
            "shop-cutouts", type="string", title="Destination bucket", description="Bucket of the cut-outs."
        ),
        "destination_prefix": Param(  # not the bucket's root: the renditions go beside the cut-outs
            "cutouts/",
            type="string",
            pattern="[^/]",
            title="Destination prefix",
            description="Cut-outs under this prefix (a folder, not the bucket's root).",
        ),
        "output_format": Param(
            "png",
            type="string",
            enum=["png", "webp", "jpeg"],
            values_display={"png": "PNG", "webp": "WebP", "jpeg": "JPEG (on white)"},
            title="Output format",
            description="Format of the cut-outs.",
        ),
        "renditions_prefix": Param(
            "renditions/",
            type="string",
            title="Renditions prefix",
            description="Marketplace renditions of the PNG cut-outs under this prefix.",
        ),
        "renditions": Param(
            RENDITIONS,
            type="array",
            title="Renditions",
            description="Images rendered from each PNG cut-out, free (docs/renditions.md).",
        ),
        "max_shards": Param(
            4, type="integer", minimum=1, title="Max shards", description="At most this many parallel tasks."
        ),
        "safety_margin_percent": Param(
            10,
            type="number",
            minimum=0,
            title="Safety margin (%)",
            description="Credits on top of the estimate, in % of it.",
        ),
        "on_insufficient": Param(
            "fail",
            type="string",
            enum=["fail", "skip"],
            values_display={"fail": "Fail the run", "skip": "Skip the run"},
            title="When credits are short",
            description="Nothing is spent either way.",
        ),
    },
    # [END howto_bgremoval_trigger_params]
    tags=["bgremoval", "example"],
    doc_md=__doc__,
) as dag:
    # [START howto_bgremoval_batch]
    batch: Batch = {  # what the pre-flight prices and the remove tasks do: the same batch
        "conn_id": VENDOR_CONN_IDS,
        "source_bucket": "{{ params.source_bucket }}",
        "source_prefix": "{{ params.source_prefix }}",
        "destination_bucket": "{{ params.destination_bucket }}",
        "destination_prefix": "{{ params.destination_prefix }}",
        "include": INCLUDE,
        "output_format": "{{ params.output_format }}",
    }
    # [END howto_bgremoval_batch]

    # [START howto_operator_credits_check]
    check_credits = CreditsCheckOperator(
        task_id="check_credits",
        safety_margin="{{ params.safety_margin_percent }}%",
        on_insufficient="{{ params.on_insufficient }}",
        max_shards="{{ params.max_shards }}",  # keep the plan in the bucket, in shards
        min_shard_size=4,
        retries=0,
        **batch,
    )
    # [END howto_operator_credits_check]

    # [START howto_operator_planned_shards]
    shards = PlannedShardsOperator(task_id="shards", preflight_task_id="check_credits")
    # [END howto_operator_planned_shards]

    # [START howto_operator_remove_background]
    cutouts = RemoveBackgroundOperator.partial(
        task_id="remove_background",
        pool=POOL,
        max_concurrency=8,
        on_error="continue",  # broken files are recorded (manifest, report), not fatal
        map_index_template="shard {{ ti.map_index }}",
        **batch,
    ).expand(shard=shards.output)
    # [END howto_operator_remove_background]

    # [START howto_operator_run_report]
    report = RunReportOperator(
        task_id="run_report",
        destination_bucket="{{ params.destination_bucket }}",
        destination_prefix="{{ params.destination_prefix }}",
        estimate="{{ ti.xcom_pull(task_ids='check_credits') | tojson }}",
        sample_size=6,
        trigger_rule="all_done_min_one_success",
    )
    # [END howto_operator_run_report]

    # [START howto_operator_render_renditions]
    renditions = RenderRenditionsOperator(  # no vendor call: the cut-outs are the masters
        task_id="renditions",
        source_bucket="{{ params.destination_bucket }}",
        source_prefix="{{ params.destination_prefix }}",
        destination_bucket="{{ params.destination_bucket }}",
        destination_prefix="{{ params.renditions_prefix }}",
        include=["*.png"],
        renditions="{{ params.renditions }}",
        on_error="continue",  # a non-compliant rendition is reported, not fatal
        trigger_rule="all_done_min_one_success",
    )
    # [END howto_operator_render_renditions]

    check_credits >> shards
    cutouts >> [report, renditions]
