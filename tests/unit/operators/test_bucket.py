"""The bucket operators' verdict on a finished batch."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.operators.bucket import RemoveBackgroundOperator
from airflow_provider_bgremoval.operators.bucket_job import BucketJob
from airflow_provider_bgremoval.pipeline.claims import parse_lease_seconds
from airflow_provider_bgremoval.pipeline.engine import BatchResult
from airflow_provider_bgremoval.pipeline.halts import HaltInfo
from tests.support.connections import set_connection

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


def test_images_left_pending_by_an_outage_fail_the_task_retryably() -> None:
    """Not sent because every account stayed in an outage until their leases ran short: not a limit the
    user set, so the task is not green (a retry sends them)."""
    op = RemoveBackgroundOperator(task_id="t", **BUCKETS)
    waited = BatchResult(counts=Counter(done=9, pending=2), billable=11, pending_reasons=Counter(outage=2))
    with pytest.raises(AirflowException, match=r"2 image\(s\) left pending .*: 2 in an outage") as caught:
        op._verdict({}, "pixian", waited, SUMMARY)  # type: ignore[arg-type]
    assert not isinstance(caught.value, AirflowFailException)  # retryable
    # their calls on an account that then ran out of credits used the lease up: no outage at all (the
    # failure said "every account of the chain stayed in an outage")
    reasons = Counter(outage=1, lease_short=2)
    short = BatchResult(counts=Counter(done=8, pending=3), billable=11, pending_reasons=reasons)
    expected = (
        r"3 image\(s\) left pending because their claims' leases ran short before a call: 1 in an outage "
        r".*; 2 after calls on an account that then refused them \(out of credits, key refused\)"
    )
    with pytest.raises(AirflowException, match=expected) as caught:
        op._verdict({}, "pixian", short, SUMMARY)  # type: ignore[arg-type]
    assert not isinstance(caught.value, AirflowFailException)  # retryable
    limited = BatchResult(
        counts=Counter(done=9, pending=2), billable=11, pending_reasons=Counter(max_images=2)
    )
    op._verdict({}, "pixian", limited, SUMMARY)  # type: ignore[arg-type]  # a limit the user set: green


def test_a_fatal_halt_after_failover_names_the_account_it_concerns_not_the_primary() -> None:
    """Pixian handed the chain on to poof, whose key was then refused: the failure names poof."""
    op = RemoveBackgroundOperator(task_id="t", **BUCKETS)
    halt = HaltInfo(
        "auth_failed", "poof", "API key refused", remaining_images=3, needed=Decimal(6), fatal=True
    )
    halted = BatchResult(counts=Counter(done=8, pending=3), billable=11, halt=halt)
    pushed: dict[str, Any] = {}
    ti = type("TI", (), {"xcom_push": lambda self, key, value: pushed.update({key: value})})()
    with pytest.raises(AirflowFailException, match=r"^poof: API key refused\. .*need about 6 credits"):
        op._verdict({"ti": ti}, "pixian", halted, SUMMARY)  # type: ignore[arg-type]
    assert pushed["halt"]["vendor"] == "poof"


@pytest.mark.parametrize("lease", [0, -60, "0", "soon", float("nan"), float("inf"), None, True])
def test_a_claim_lease_that_is_not_a_positive_number_is_refused_when_the_operator_is_built(
    lease: Any,
) -> None:
    """0 or less would expire every claim at once (two runs both pay); text fails each image."""
    with pytest.raises(InvalidOptionError) as caught:
        RemoveBackgroundOperator(task_id="t", claim_lease=lease, **BUCKETS)
    assert caught.value.parameter == "claim_lease"


def test_a_numeric_claim_lease_text_is_accepted_and_read_as_seconds() -> None:
    op = RemoveBackgroundOperator(task_id="t", claim_lease="5400", **BUCKETS)
    assert parse_lease_seconds(op.claim_lease) == 5400.0


@pytest.mark.parametrize("lease", [1, 60, "600", 1799.5])
def test_a_claim_lease_shorter_than_one_image_s_stay_is_refused_when_the_operator_is_built(
    lease: Any,
) -> None:
    """A claim is not renewed while its image's call runs (up to 1560 s: Pixian's 7 attempts of 180 s
    and 300 s of waits), so ``claim_lease=1`` let it lapse mid-call: another run took it over and paid
    for the image again. Refused at DAG parse, saying the minimum and why."""
    with pytest.raises(InvalidOptionError, match=r"shorter than the 1800 s one image may hold") as caught:
        RemoveBackgroundOperator(task_id="t", claim_lease=lease, **BUCKETS)
    assert caught.value.parameter == "claim_lease"
    assert "another run could take the claim over and pay for the image again" in str(caught.value)
    RemoveBackgroundOperator(task_id="t", claim_lease=1800, **BUCKETS)  # the minimum itself is sound


@pytest.mark.parametrize("rendered", ["-1", "60"])
def test_a_templated_claim_lease_is_checked_when_the_task_starts_before_any_work(
    monkeypatch: pytest.MonkeyPatch, rendered: str
) -> None:
    op = RemoveBackgroundOperator(task_id="t", claim_lease="{{ params.lease }}", **BUCKETS)
    op.claim_lease = rendered  # what the template rendered

    def no_work() -> Any:
        raise AssertionError("the job was prepared (listing, hooks) with a bad claim_lease")

    monkeypatch.setattr(op, "prepare_job", no_work)
    with pytest.raises(AirflowFailException, match="claim_lease"):
        op.execute({"ti": None})  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("extra", "hold", "setting"),
    [({"timeout": 600}, 4740, "timeout"), ({"max_retries": 20}, 4320, "max_retries")],
)
def test_a_claim_lease_shorter_than_the_connection_s_hold_is_refused_when_the_task_starts_before_any_read(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], hold: int, setting: str
) -> None:
    """
    A Pixian connection with a 600 s timeout (or 20 retries): one image may hold its claim 4740 s (7
    attempts of 600 s, 300 s of waits, the read and store), past the one-hour default lease, which
    would lapse mid-call: another run could take the claim over and pay for the image again. Refused
    once the hooks are built, naming the hold and the setting, before the listing (nothing read).
    """
    set_connection(monkeypatch, "pixian_slow", "pixian", login="an-id", password="a-test-key", extra=extra)

    def no_listing(self: Any, **kwargs: Any) -> Any:
        raise AssertionError("the batch was planned (sources listed) with a claim lease that lapses mid-call")

    monkeypatch.setattr(BucketJob, "plan_batch", no_listing)
    op = RemoveBackgroundOperator(task_id="t", **{**BUCKETS, "conn_id": "pixian_slow"})
    with pytest.raises(
        AirflowFailException, match=rf"invalid 'claim_lease': 3600 s is shorter than the {hold} s"
    ) as caught:
        op.execute({"ti": None})  # type: ignore[typeddict-item]
    assert "connection 'pixian_slow'" in str(caught.value) and f"its {setting} extra" in str(caught.value)
    op.claim_lease = hold
    with pytest.raises(AssertionError, match="the batch was planned"):  # long enough: the task goes on
        op.execute({"ti": None})  # type: ignore[typeddict-item]


def test_a_fatal_halt_counts_apart_the_pending_images_another_run_holds() -> None:
    """5 pending for the halt (priced) and 4 held by another run's claims: the message says both, as the
    manifest's 9 pending rows do, and prices only the 5."""
    op = RemoveBackgroundOperator(task_id="t", **BUCKETS)
    halt = HaltInfo(
        "out_of_credits", "pixian", "no credits", remaining_images=5, needed=Decimal(5), fatal=True
    )
    reasons = Counter(out_of_credits=5, claimed_elsewhere=4)
    halted = BatchResult(counts=Counter(done=5, pending=9), billable=14, halt=halt, pending_reasons=reasons)
    ti = type("TI", (), {"xcom_push": lambda self, key, value: None})()
    expected = (
        r"5 image\(s\) remain pending \(need about 5 credits; available: unknown\); 4 more pending "
        r"are held by another run's claims \(that run pays for them\)\. "
    )
    with pytest.raises(AirflowFailException, match=expected):
        op._verdict({"ti": ti}, "pixian", halted, SUMMARY)  # type: ignore[arg-type]


def test_a_fatal_halt_names_the_connection_it_concerns() -> None:
    """Two Pixian accounts in a chain: 'pixian:' alone did not say which one to top up."""
    op = RemoveBackgroundOperator(task_id="t", **BUCKETS)
    halt = HaltInfo(
        "out_of_credits", "pixian", "no credits", 2, Decimal(2), fatal=True, conn_id="pixian_backup"
    )
    halted = BatchResult(counts=Counter(done=9, pending=2), billable=11, halt=halt)
    ti = type("TI", (), {"xcom_push": lambda self, key, value: None})()
    with pytest.raises(AirflowFailException, match=r"^pixian \(pixian_backup\): no credits\. Stopped"):
        op._verdict({"ti": ti}, "pixian", halted, SUMMARY)  # type: ignore[arg-type]
