"""The shortest claim lease covers one image's longest stay with its claim, on the connections' settings."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from typing import Any

import httpx
import pytest
from PIL import Image

from airflow_provider_bgremoval.exceptions import InvalidOptionError, TransientVendorError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.pacing import ManualClock
from airflow_provider_bgremoval.pipeline.claims import ClaimStore, parse_lease_seconds
from airflow_provider_bgremoval.retry import (
    LEASE_MARGIN_SECONDS,
    STORE_ALLOWANCE_SECONDS,
    ClaimHold,
    lease_margin,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage
from airflow_provider_bgremoval.vendors.base import VendorSpec
from airflow_provider_bgremoval.vendors.pixelcut import PIXELCUT_SPEC
from airflow_provider_bgremoval.vendors.pixian import PIXIAN_SPEC
from airflow_provider_bgremoval.vendors.poof import POOF_SPEC
from tests.support.connections import SleepRecorder, set_connection


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


def _png(size: int = 64, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (size, size), (200, 10, 10, 255)[: len(mode)]).save(out, format="PNG")
    return out.getvalue()


def test_a_pixelcut_hold_counts_the_result_download_retried_after_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Pixelcut reply may be a ``result_url``: the hook then downloads the result in a second sequence
    retried under the same policy (its attempts, its timeout, its wait budget again). On the default
    settings that is 2 x (6 x 120 s + 300 s) + 240 s = 2280 s, past the 1800 s floor."""
    sleep = SleepRecorder()
    served = {"remove": 0, "result": 0}

    def vendor(request: httpx.Request) -> httpx.Response:
        kind = "remove" if request.url.path == "/v1/remove-background" else "result"
        served[kind] += 1
        if served[kind] < 6:  # every retry the policy allows, in both sequences
            return httpx.Response(502, json={"error": "bad gateway"})
        if kind == "remove":
            return httpx.Response(200, json={"result_url": "https://assets.pixelcut.app/public/r.png"})
        return httpx.Response(200, content=_png(mode="RGBA"), headers={"content-type": "image/png"})

    transport = httpx.MockTransport(vendor)
    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password="a-test-key")
    hook = BackgroundRemovalHook.get_hook(
        "pixelcut_default", {"transport": transport, "sleep": sleep, "requests_per_second": 0}
    )
    hook.remove_background(_png())
    policy = hook.retry_policy
    assert served == {"remove": policy.max_attempts, "result": policy.max_attempts}  # two sequences
    hold = ClaimHold.of(hook)
    attempts = served["remove"] + served["result"]
    assert attempts * hold.timeout + sum(sleep.waits) + STORE_ALLOWANCE_SECONDS <= hold.seconds
    assert hold.seconds == 2 * (6 * 120 + 300) + 240 == 2280
    assert "result download" in str(hold), str(hold)
    with pytest.raises(InvalidOptionError, match="1800 s is shorter than the 2280 s"):
        parse_lease_seconds(1800, [hold])


@pytest.mark.parametrize(("vendor", "seconds"), [("pixian", 1800), ("poof", 5 * 60 + 300 + 240)])
def test_a_vendor_whose_result_comes_in_its_reply_holds_one_retried_sequence(
    monkeypatch: pytest.MonkeyPatch, vendor: str, seconds: float
) -> None:
    hold = ClaimHold.of(_hook(monkeypatch, f"{vendor}_default", vendor))
    assert hold.seconds == seconds and "result download" not in str(hold)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_hook_s_slot_waits_held_by_its_other_images_stay_within_the_hold(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Each attempt waits for its pacer slot; a 503 with Retry-After on another image of the hook holds
    them all (up to max_retry_after, 120 s). Those waits count in the call's wait budget, so a call
    stays within its ClaimHold: they were uncounted, and a call whose every retry was held two minutes
    waited 600 s, twice its 300 s budget."""
    clock = ManualClock()
    hook: BackgroundRemovalHook[Any] | None = None

    def vendor(request: httpx.Request) -> httpx.Response:
        assert hook is not None and hook.pacer is not None
        hook.pacer.hold(120.0)  # another image's 503 (Retry-After: 120) came back meanwhile
        return httpx.Response(502, json={"error": "bad gateway"})

    set_connection(monkeypatch, "pixelcut_default", "pixelcut", password="a-test-key")
    params: dict[str, Any] = {"pacing_clock": clock, "sleep": clock.sleep, "async_sleep": clock.asleep}
    transport = httpx.MockTransport(vendor)
    hook = BackgroundRemovalHook.get_hook(
        "pixelcut_default", {**params, "transport": transport, "async_transport": transport}
    )
    with pytest.raises(TransientVendorError):
        await (
            hook.aremove_background(_png())
            if mode == "async"
            else asyncio.to_thread(hook.remove_background, _png())
        )
    hold = ClaimHold.of(hook)
    assert clock.now() <= hold.policy.max_wait + 1e-6  # every attempt was answered at once: waits only
