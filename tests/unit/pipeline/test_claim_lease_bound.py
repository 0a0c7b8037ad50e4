"""The shortest claim lease covers one image's longest stay with its claim, on the connections' settings."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.pipeline.claims import ClaimStore, parse_lease_seconds
from airflow_provider_bgremoval.retry import LEASE_MARGIN_SECONDS, ClaimHold, lease_margin
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.vendors.base import VendorSpec
from airflow_provider_bgremoval.vendors.pixelcut import PIXELCUT_SPEC
from airflow_provider_bgremoval.vendors.pixian import PIXIAN_SPEC
from airflow_provider_bgremoval.vendors.poof import POOF_SPEC
from tests.support.connections import set_connection


def _hook(
    monkeypatch: pytest.MonkeyPatch, conn_id: str, vendor: str, **extra: Any
) -> BackgroundRemovalHook[Any]:
    """A vendor hook of connection ``conn_id`` with ``extra`` (no call made)."""
    set_connection(monkeypatch, conn_id, vendor, login="an-id", password="a-test-key", extra=extra or None)
    return BackgroundRemovalHook.get_hook(conn_id)


@pytest.mark.parametrize("spec", [PIXIAN_SPEC, PIXELCUT_SPEC, POOF_SPEC], ids=lambda spec: spec.name)
def test_the_shortest_lease_outlasts_a_call_with_every_retry_and_its_store(spec: VendorSpec) -> None:
    """A claim is not renewed while its image is sent: every attempt may run to the idle timeout, with
    the policy's whole wait budget between them (Pixian: 7 x 180 s + 300 s = 1560 s), then the output
    is stored. A lease the operator accepts at DAG parse must outlast that on the default settings."""
    hold = ClaimHold("default", spec.retry_policy, spec.default_timeout)
    assert hold.seconds <= LEASE_MARGIN_SECONDS, (spec.name, hold.seconds)
    assert lease_margin([hold]).seconds == LEASE_MARGIN_SECONDS  # never under the floor
    assert parse_lease_seconds(LEASE_MARGIN_SECONDS) == LEASE_MARGIN_SECONDS


@pytest.mark.parametrize(
    ("extra", "seconds", "setting"),
    [
        ({"timeout": 600}, 7 * 600 + 300 + 240, "timeout"),  # 4740 s: past the one-hour default lease
        ({"max_retries": 20}, 21 * 180 + 300 + 240, "max_retries"),
        ({"timeout": "600", "max_retries": "20"}, 21 * 600 + 300 + 240, "timeout"),
    ],
)
def test_a_connection_s_timeout_or_max_retries_extra_sets_how_long_an_image_holds_its_claim(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], seconds: float, setting: str
) -> None:
    """The hold is the hook's own: its timeout (the extra) and retry policy (max_retries + 1 attempts)."""
    hold = ClaimHold.of(_hook(monkeypatch, "pixian_slow", "pixian", **extra))
    assert hold.seconds == seconds
    assert hold.conn_id == "pixian_slow" and setting in hold.drivers
    margin = lease_margin([ClaimHold.of(_hook(monkeypatch, "poof_fast", "poof")), hold])
    assert margin.seconds == seconds and margin.hold == hold  # the chain's longest
    assert "connection 'pixian_slow'" in str(hold) and f"its {setting} extra" in str(hold)


def test_a_lease_shorter_than_a_connection_s_hold_is_refused_naming_the_hold_and_its_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pixian with a 600 s timeout: one image may hold its claim 4740 s, past the 3600 s default lease;
    the claim would lapse mid-call and another run could pay for the image again."""
    hold = ClaimHold.of(_hook(monkeypatch, "pixian_slow", "pixian", timeout=600))
    with pytest.raises(InvalidOptionError, match=r"3600 s is shorter than the 4740 s") as caught:
        parse_lease_seconds(3600, [hold])
    message = str(caught.value)
    assert caught.value.parameter == "claim_lease"
    assert "connection 'pixian_slow'" in message and "its timeout extra" in message, message
    assert "another run could take the claim over and pay for the image again" in message
    assert parse_lease_seconds("4740", [hold]) == 4740.0


def test_the_claim_store_keeps_the_connections_margin_for_the_call_stage(gcs_storage: GcsStorage) -> None:
    """The call stage keeps the store's margin in hand before a call (failover, a wait for a probe)."""
    slow = ClaimHold("pixian_slow", PIXIAN_SPEC.retry_policy, 600.0, ("timeout",))
    store = ClaimStore(gcs_storage, "dst", "_bgremoval/", "dag/run1/t/-1", lease_seconds=5000, holds=[slow])
    assert store.margin == 4740.0
    assert ClaimStore(gcs_storage, "dst", "_bgremoval/", "dag/run1/t/-1").margin == LEASE_MARGIN_SECONDS
    with pytest.raises(InvalidOptionError, match="shorter than the 4740 s"):
        ClaimStore(gcs_storage, "dst", "_bgremoval/", "dag/run1/t/-1", holds=[slow])


def test_checking_a_lease_does_not_import_the_call_stage() -> None:
    """claims.py took the margin from failover.py inside a function (failover imports claims)."""
    code = (
        "import sys\n"
        "from airflow_provider_bgremoval.pipeline.claims import parse_lease_seconds\n"
        "parse_lease_seconds(3600)\n"
        "assert 'airflow_provider_bgremoval.pipeline.failover' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_margin_s_old_home_still_gives_it_with_a_deprecation_warning() -> None:
    from airflow_provider_bgremoval.pipeline import failover

    with pytest.warns(
        DeprecationWarning, match="import LEASE_MARGIN_SECONDS from airflow_provider_bgremoval.retry"
    ):
        assert failover.LEASE_MARGIN_SECONDS == LEASE_MARGIN_SECONDS
