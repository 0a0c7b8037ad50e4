"""The bucket operators' verdict on a finished batch."""

from __future__ import annotations

from collections import Counter

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.pipeline.engine import BatchResult

SUMMARY = {"manifest_uri": "gs://out/_bgremoval/manifest.jsonl", "total": 11, "claims_elsewhere": []}


def test_the_failure_rate_counts_the_images_sent_to_the_vendor_only() -> None:
    op = RemoveBackgroundOperator(
        task_id="t",
        conn_id="pixian_default",
        source_bucket="raw",
        destination_bucket="out",
        gcp_conn_id=None,
        on_error="fail_rate",
        max_failure_rate=0.1,
    )
    # 5 images sent and done; 6 render-only sources failed (0 credits, no vendor call).
    rendered = BatchResult(counts=Counter(done=5, failed=6), render_only=Counter(failed=6), billable=5)
    op._verdict({}, "pixian", rendered, SUMMARY)  # type: ignore[arg-type]
    # 5 done and 6 rejected by planning's local checks (never sent): the rate judges the 5 sent
    local = BatchResult(counts=Counter(done=5, rejected=6), billable=11, sent=Counter(done=5))
    op._verdict({}, "pixian", local, SUMMARY)  # type: ignore[arg-type]
    sent = BatchResult(counts=Counter(done=5, failed=6), billable=11, sent=Counter(done=5, failed=6))
    with pytest.raises(AirflowException, match="failure rate 55% is over max_failure_rate 10%"):
        op._verdict({}, "pixian", sent, SUMMARY)  # type: ignore[arg-type]


BUCKETS = {
    "conn_id": "pixian_default",
    "source_bucket": "raw",
    "destination_bucket": "out",
    "gcp_conn_id": None,
}
RENDITIONS = [{"name": "thumb", "format": "jpeg", "size": 256}, {"name": "web", "format": "webp"}]


def test_lineage_without_renditions_is_the_source_and_destination_prefixes() -> None:
    op = RemoveBackgroundOperator(task_id="t", source_prefix="in", destination_prefix="cut/", **BUCKETS)
    assert op.lineage_datasets() == ([("gs://raw", "in/")], [("gs://out", "cut/")])
    whole = RemoveBackgroundOperator(task_id="t", **BUCKETS)
    assert whole.lineage_datasets() == ([("gs://raw", "/")], [("gs://out", "/")])


@pytest.mark.parametrize(
    ("masters_prefix", "masters"), [(None, "cut/masters/"), ("archive/masters/", "archive/masters/")]
)
def test_lineage_with_renditions_names_the_masters_and_every_rendition_folder(
    masters_prefix: str | None, masters: str
) -> None:
    op = RemoveBackgroundOperator(
        task_id="t",
        source_prefix="in/",
        destination_prefix="cut/",
        renditions=RENDITIONS,
        masters_prefix=masters_prefix,
        **BUCKETS,
    )
    inputs, outputs = op.lineage_datasets()
    # the stored masters are read too: the renditions of finished masters are rendered from them
    assert inputs == [("gs://raw", "in/"), ("gs://out", masters)]
    assert outputs == [("gs://out", masters), ("gs://out", "cut/thumb/"), ("gs://out", "cut/web/")]
    assert not any("_bgremoval" in name for _, name in inputs + outputs)


def test_openlineage_facets_carry_the_lineage_datasets() -> None:
    """OpenLineage's own classes (apache-airflow-providers-openlineage, the ``openlineage`` extra)."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    op = RemoveBackgroundOperator(
        task_id="t", source_prefix="in/", destination_prefix="cut/", renditions=RENDITIONS, **BUCKETS
    )
    lineage = op.get_openlineage_facets_on_complete(None)
    assert isinstance(lineage, OperatorLineage)
    assert lineage.inputs == [Dataset("gs://raw", "in/"), Dataset("gs://out", "cut/masters/")]
    assert [d.name for d in lineage.outputs] == ["cut/masters/", "cut/thumb/", "cut/web/"]
