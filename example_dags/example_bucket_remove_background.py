"""
Daily background removal over a GCS prefix: pre-flight credits, shard, remove, report.

What it does, in order:

1. ``check_credits`` — plans the whole batch (finished outputs and broken files are not billable),
   prices it and compares with the vendor balance plus a safety margin. Too few credits → the task
   fails without retries (or skips, with ``on_insufficient="skip"``) and **nothing is spent**.
2. ``list_shards`` — lists the source prefix and splits it into at most ``max_shards`` shards.
3. ``remove_background`` — one mapped task per shard, in the vendor's pool (``pixelcut_api``), with
   bounded concurrency inside each task. Outputs carry provenance metadata, so a rerun skips
   everything already done and charges 0 credits; each task writes a JSON Lines manifest.
4. ``run_report`` — reads the run's manifests and writes ``report.json`` plus a before/after
   ``contact-sheet.png`` to ``<destination_prefix>_bgremoval/reports/<dag_id>/<run_id>/``. It runs
   also when a shard failed (and then fails itself after writing, so the run still fails).

Settings — every one can be given when triggering (``conf`` / the trigger form's params), else the
Airflow Variable ``bgremoval_<name>`` (e.g. ``AIRFLOW_VAR_BGREMOVAL_SOURCE_BUCKET``), else the default
in :data:`DEFAULTS`. So the same file runs in ``make demo`` and in production.

Pools: the remove tasks run in the pool :data:`POOL` (one pool per vendor caps concurrent shards
across all DAGs and workers). Create it once, e.g. ``airflow pools set pixelcut_api 4 "Pixelcut API"``;
switch :data:`POOL` together with ``conn_id`` when you use another vendor (``pixian_api``,
``poof_api``). A task whose pool does not exist is never scheduled.

Connections: ``conn_id`` (a ``pixelcut``, ``pixian`` or ``poof`` connection) and ``gcp_conn_id``
(``google_cloud_default``; Application Default Credentials when it does not exist).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, Variable

from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.credits import CreditsCheckOperator
from airflow_provider_bgremoval.operators.sharding import ListImageShardsOperator
from airflow_provider_bgremoval.reporting import RunReportOperator

#: Pool of the vendor calls (one per vendor: ``pixelcut_api``, ``pixian_api``, ``poof_api``).
POOL = "pixelcut_api"

#: No shard smaller than this (small batches run in fewer tasks).
MIN_SHARD_SIZE = 4

#: Built-in defaults (lowest precedence; see the module docstring).
DEFAULTS: dict[str, Any] = {
    "conn_id": "pixelcut_default",
    "gcp_conn_id": "google_cloud_default",
    "source_bucket": "shop-raw",
    "source_prefix": "incoming/",
    "destination_bucket": "shop-cutouts",
    "destination_prefix": "cutouts/",
    "include": "*.jpg,*.jpeg,*.png,*.webp",
    "output_format": "png",
    "max_shards": 4,
    "safety_margin": "10%",
    "on_insufficient": "fail",
    "sample_size": 6,
}


def setting(params: dict[str, Any], name: str) -> Any:
    """Trigger ``conf``/param, else Variable ``bgremoval_<name>``, else :data:`DEFAULTS` (runtime only)."""
    value = params.get(name)
    if value not in (None, ""):
        return value
    return Variable.get(f"bgremoval_{name}", default=DEFAULTS[name])


def patterns(value: Any) -> list[str]:
    """``"*.jpg,*.png"`` or a list → a list of glob patterns."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _param(name: str, description: str) -> Param:
    return Param(
        None, type=["null", "string", "integer"], description=f"{description} (default: {DEFAULTS[name]!r})"
    )


def _t(name: str) -> str:
    return f"{{{{ setting(params, {name!r}) }}}}"


with DAG(
    dag_id="example_bucket_remove_background",
    description="Remove backgrounds from a GCS prefix, with a credits pre-flight and a run report",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    user_defined_macros={"setting": setting, "patterns": patterns},
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "conn_id": _param("conn_id", "vendor connection id"),
        "gcp_conn_id": _param("gcp_conn_id", "Google Cloud connection id"),
        "source_bucket": _param("source_bucket", "bucket of the source photos"),
        "source_prefix": _param("source_prefix", "prefix of the source photos"),
        "destination_bucket": _param("destination_bucket", "bucket for the cut-outs"),
        "destination_prefix": _param("destination_prefix", "prefix of the cut-outs"),
        "include": _param("include", "comma-separated glob patterns of sources"),
        "output_format": _param("output_format", "png, webp or jpeg"),
        "max_shards": _param("max_shards", "at most this many mapped tasks"),
        "safety_margin": _param("safety_margin", "credits or a percentage on top of the estimate"),
        "on_insufficient": _param("on_insufficient", "fail or skip when credits are short"),
        "sample_size": _param("sample_size", "pairs on the contact sheet"),
    },
    tags=["bgremoval", "example"],
    doc_md=__doc__,
) as dag:
    bucket_args: dict[str, Any] = {
        "conn_id": _t("conn_id"),
        "gcp_conn_id": _t("gcp_conn_id"),
        "source_bucket": _t("source_bucket"),
        "source_prefix": _t("source_prefix"),
        "destination_bucket": _t("destination_bucket"),
        "destination_prefix": _t("destination_prefix"),
        "include": "{{ patterns(setting(params, 'include')) }}",
        "output_format": _t("output_format"),
    }

    check_credits = CreditsCheckOperator(
        task_id="check_credits",
        safety_margin=_t("safety_margin"),
        on_insufficient=_t("on_insufficient"),
        retries=0,
        **bucket_args,
    )

    shards = ListImageShardsOperator(
        task_id="list_shards",
        source_bucket=_t("source_bucket"),
        source_prefix=_t("source_prefix"),
        include="{{ patterns(setting(params, 'include')) }}",
        max_shards=_t("max_shards"),
        min_shard_size=MIN_SHARD_SIZE,
        gcp_conn_id=_t("gcp_conn_id"),
    )

    cutouts = RemoveBackgroundOperator.partial(
        task_id="remove_background",
        pool=POOL,
        max_concurrency=8,
        on_error="continue",  # broken files are reported (manifest, report), not fatal
        map_index_template="shard {{ ti.map_index }}",
        **bucket_args,
    ).expand(source_objects=shards.output)

    report = RunReportOperator(
        task_id="run_report",
        destination_bucket=_t("destination_bucket"),
        destination_prefix=_t("destination_prefix"),
        gcp_conn_id=_t("gcp_conn_id"),
        estimate="{{ ti.xcom_pull(task_ids='check_credits') }}",
        sample_size=_t("sample_size"),
        trigger_rule="all_done_min_one_success",
    )

    check_credits >> shards
    cutouts >> report
