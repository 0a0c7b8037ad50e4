"""What the engine records for an image whose claim lease ran short before its next call (fake-gcs-server)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import OutOfCreditsError, TransientVendorError
from airflow_provider_bgremoval.pipeline.accounts import BreakerPolicy
from airflow_provider_bgremoval.pipeline.claims import ClaimStore
from tests.unit.pipeline.test_engine import seed
from tests.unit.pipeline.test_failover import Clock, Vendor, _run_with_claims, chain, names

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (OutOfCreditsError("no credits", vendor="pixian", status_code=402, code="402"), "out_of_credits"),
        (TransientVendorError("503 after retries", vendor="pixian", status_code=503), "outage"),
    ],
)
def test_an_image_whose_calls_took_its_lease_before_a_handoff_is_pending_for_what_took_it(
    batch, refusal: Exception, reason: str
) -> None:
    """
    00.png's calls on pixian take 2000 s of its one-hour claim, then pixian runs out of credits: 1600 s
    are left, too few for a call on poof, so it is left pending unsent. Its code said ``outage`` and the
    task failure "every account of the chain stayed in an outage", though no account was in one: it is
    ``lease_short`` (after an outage hand-off it stays ``outage``).
    """
    storage, src, spec = batch
    seed(storage, src, names(2))
    clock = Clock()

    def slow_then_refused(name: str, count: int) -> Any:
        if name == "00.png":
            clock.now += 2000  # the retries of the call before the refusal
            return refusal
        return None

    primary, secondary = Vendor("pixian", slow_then_refused), Vendor("poof")
    accounts = chain(primary, secondary, clock=clock, policy=BreakerPolicy(consecutive_failures=5))
    claims = ClaimStore(storage, spec.destination_bucket, "_bgremoval/", "dag/run1/t/-1", clock=clock)
    result, rows, _ = _run_with_claims(storage, spec, accounts, claims)
    assert primary.calls[0] == "00.png" and "00.png" not in secondary.calls  # never sent to poof
    by_name = {row["source"].rsplit("/", 1)[-1]: row for row in rows}
    handed = by_name["00.png"]
    code = "lease_short" if reason == "out_of_credits" else "outage"
    assert (handed["status"], handed["error_code"]) == ("pending", code)
    assert handed["handoffs"][0]["reason"] == reason
    assert "its calls on pixian_conn took until 1600 s were left" in handed["error_message"]
    assert result.pending_reasons == {code: 1} and by_name["01.png"]["status"] == "done"
