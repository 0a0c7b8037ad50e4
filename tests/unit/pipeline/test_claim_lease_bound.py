"""The shortest claim lease (LEASE_MARGIN_SECONDS) covers one image's longest stay with its claim."""

from __future__ import annotations

import pytest

from airflow_provider_bgremoval.pipeline.claims import parse_lease_seconds
from airflow_provider_bgremoval.pipeline.failover import LEASE_MARGIN_SECONDS
from airflow_provider_bgremoval.vendors.base import VendorSpec
from airflow_provider_bgremoval.vendors.pixelcut import PIXELCUT_SPEC
from airflow_provider_bgremoval.vendors.pixian import PIXIAN_SPEC
from airflow_provider_bgremoval.vendors.poof import POOF_SPEC

#: Seconds kept for the read before the call and the store after it (GCS requests of a few seconds).
STORE_ALLOWANCE = 120.0


@pytest.mark.parametrize("spec", [PIXIAN_SPEC, PIXELCUT_SPEC, POOF_SPEC], ids=lambda spec: spec.name)
def test_the_shortest_lease_outlasts_a_call_with_every_retry_and_its_store(spec: VendorSpec) -> None:
    """A claim is not renewed while its image is sent: every attempt may run to the idle timeout, with
    the policy's whole wait budget between them (Pixian: 7 x 180 s + 300 s = 1560 s), then the output
    is stored. A lease the operator accepts must outlast that, or another run could take the claim
    over mid-call and pay for the image again."""
    policy = spec.retry_policy
    call = policy.max_attempts * spec.default_timeout + policy.max_wait
    assert call + STORE_ALLOWANCE <= LEASE_MARGIN_SECONDS, (spec.name, call)
    assert parse_lease_seconds(LEASE_MARGIN_SECONDS) == LEASE_MARGIN_SECONDS
