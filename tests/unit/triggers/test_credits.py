"""CreditsTrigger: serialisation, async polling over MockTransport and over the real sb."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.sandbox import RunningSandbox
from airflow_provider_bgremoval.triggers.credits import DEFAULT_MAX_POLL_INTERVAL, CreditsTrigger
from tests.support.balances import SECRETS, FakeVendors
from tests.support.connections import set_connection


class TimeTravel:
    """Replaces ``CreditsTrigger.sleep``: records the waits and yields to the loop without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def travel(monkeypatch: pytest.MonkeyPatch) -> TimeTravel:
    recorder = TimeTravel()
    monkeypatch.setattr(CreditsTrigger, "sleep", lambda self, seconds: recorder(seconds))
    return recorder


async def events(trigger: CreditsTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


# -- serialisation ---------------------------------------------------------------------------------
def test_serialize_round_trips_with_primitives_only() -> None:
    trigger = CreditsTrigger(
        "pixian_default", "10.25", poll_interval=15, exponential_backoff=True, max_poll_interval=60
    )
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_bgremoval.triggers.credits.CreditsTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert {type(v) for v in kwargs.values()} <= {str, float, bool, type(None)}
    rebuilt = CreditsTrigger(**kwargs)
    assert rebuilt == trigger
    assert rebuilt.serialize() == trigger.serialize()


def test_serialize_round_trips_through_airflow_serde() -> None:
    from airflow.sdk.serde import deserialize, serialize

    trigger = CreditsTrigger("poof_default", "0.5", poll_interval=0.25)
    _, kwargs = trigger.serialize()
    assert CreditsTrigger(**deserialize(serialize(kwargs))) == trigger


def test_backoff_intervals_are_capped() -> None:
    trigger = CreditsTrigger("c", "1", poll_interval=10, exponential_backoff=True, max_poll_interval=70)
    assert [trigger.next_interval(n) for n in range(1, 7)] == [10, 20, 40, 70, 70, 70]
    plain = CreditsTrigger("c", "1", poll_interval=10)
    assert {plain.next_interval(n) for n in range(1, 50)} == {10}
    default_cap = CreditsTrigger("c", "1", poll_interval=60, exponential_backoff=True)
    assert default_cap.next_interval(100) == DEFAULT_MAX_POLL_INTERVAL


# -- async run over MockTransport ------------------------------------------------------------------
async def test_success_at_first_poll(vendors: FakeVendors, travel: TimeTravel) -> None:
    vendors.set_poof(500, 100)
    [event] = await events(CreditsTrigger("poof_default", "400", poll_interval=5))
    assert event.payload == {
        "status": "success",
        "conn_id": "poof_default",
        "min_credits": "400",
        "balance": {"vendor": "poof", "remaining": "400", "state": "active", "credit_pack": "Pro"},
        "polls": 1,
    }
    assert travel.waits == []


async def test_waits_until_balance_reaches_threshold(vendors: FakeVendors, travel: TimeTravel) -> None:
    vendors.set_pixian("9.99")

    def top_up(vendor: str, calls: int) -> None:
        if calls == 4:
            vendors.set_pixian("10.00")

    vendors.on_request = top_up
    [event] = await events(CreditsTrigger("pixian_default", "10", poll_interval=30))
    assert event.payload["status"] == "success"
    assert event.payload["polls"] == 4
    assert event.payload["balance"]["remaining"] == "10.00"
    assert travel.waits == [30.0, 30.0, 30.0]


async def test_exponential_backoff_between_polls(vendors: FakeVendors, travel: TimeTravel) -> None:
    vendors.set_pixelcut(0)
    vendors.on_request = lambda vendor, calls: vendors.set_pixelcut(5) if calls == 6 else None
    trigger = CreditsTrigger(
        "pixelcut_default", "5", poll_interval=2, exponential_backoff=True, max_poll_interval=10
    )
    [event] = await events(trigger)
    assert event.payload["status"] == "success"
    assert travel.waits == [2, 4, 8, 10, 10]


async def test_dormant_waits_until_active(vendors: FakeVendors, travel: TimeTravel) -> None:
    vendors.set_pixian(500, state="dormant")
    vendors.on_request = lambda vendor, calls: vendors.set_pixian(500) if calls == 3 else None
    [event] = await events(CreditsTrigger("pixian_default", "1", poll_interval=1))
    assert event.payload["balance"] == {
        "vendor": "pixian",
        "remaining": "500",
        "state": "active",
        "credit_pack": "pack_500",
    }
    assert event.payload["polls"] == 3


@pytest.mark.parametrize("vendor", ["pixelcut", "pixian", "poof"])
async def test_auth_failure_is_a_fatal_event_at_once(
    vendors: FakeVendors, travel: TimeTravel, vendor: str
) -> None:
    vendors.script[vendor] = [401]
    conn_id = f"{vendor}_default"
    [event] = await events(CreditsTrigger(conn_id, "1", poll_interval=1))
    assert event.payload["status"] == "error"
    assert event.payload["fatal"] is True
    assert event.payload["error_type"] == "VendorAuthError"
    assert conn_id in event.payload["message"]
    assert vendors.calls(vendor) == 1
    assert travel.waits == []
    assert not any(secret in json.dumps(event.payload) for secret in SECRETS)


async def test_missing_connection_is_fatal(vendors: FakeVendors, travel: TimeTravel) -> None:
    [event] = await events(CreditsTrigger("no_such_conn", "1"))
    assert event.payload["status"] == "error"
    assert event.payload["fatal"] is True
    assert "no_such_conn" in event.payload["message"]


async def test_bad_threshold_is_fatal(vendors: FakeVendors, travel: TimeTravel) -> None:
    [event] = await events(CreditsTrigger("poof_default", "lots"))
    assert event.payload["fatal"] is True
    assert "min_credits" in event.payload["message"]


async def test_5xx_is_retried_and_polling_continues(
    vendors: FakeVendors, travel: TimeTravel, sleeper: Any, caplog: pytest.LogCaptureFixture
) -> None:
    vendors.set_pixelcut(50)
    vendors.script["pixelcut"] = [503] * 6 + [500, 502]  # poll 1 exhausts the retries; poll 2 succeeds
    [event] = await events(CreditsTrigger("pixelcut_default", "50", poll_interval=7))
    assert event.payload["status"] == "success"
    assert event.payload["polls"] == 2
    assert vendors.calls("pixelcut") == 9
    assert travel.waits == [7.0]  # one poll interval between the two polls
    assert len(sleeper.waits) == 7  # the hook's own retry waits (time travel), never a fatal error
    assert "failed after retries" in caplog.text


async def test_closes_the_hook_and_never_calls_the_sync_api(
    vendors: FakeVendors, travel: TimeTravel, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    real_aclose = BackgroundRemovalHook.aclose

    async def aclose(self: BackgroundRemovalHook[Any]) -> None:
        closed.append(self.conn_id)
        await real_aclose(self)

    def forbidden(self: BackgroundRemovalHook[Any], *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("blocking call in the triggerer")

    monkeypatch.setattr(BackgroundRemovalHook, "aclose", aclose)
    monkeypatch.setattr(BackgroundRemovalHook, "get_balance", forbidden)
    monkeypatch.setattr(BackgroundRemovalHook, "get_settings", forbidden)
    monkeypatch.setattr(BackgroundRemovalHook, "remove_background", forbidden)
    monkeypatch.setattr(BackgroundRemovalHook, "aremove_background", forbidden)
    [event] = await events(CreditsTrigger("poof_default", "1"))
    assert event.payload["status"] == "success"
    assert closed == ["poof_default"]


async def test_cancellation_closes_the_hook(vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    real_aclose = BackgroundRemovalHook.aclose

    async def aclose(self: BackgroundRemovalHook[Any]) -> None:
        closed.append(self.conn_id)
        await real_aclose(self)

    monkeypatch.setattr(BackgroundRemovalHook, "aclose", aclose)
    vendors.set_pixelcut(0)
    task = asyncio.ensure_future(events(CreditsTrigger("pixelcut_default", "1", poll_interval=3600)))
    while vendors.calls("pixelcut") < 1:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["pixelcut_default"]


async def test_hook_can_be_injected(vendors: FakeVendors, travel: TimeTravel) -> None:
    from airflow_provider_bgremoval.hooks.poof import PoofHook

    class Injected(CreditsTrigger):
        async def get_hook(self) -> BackgroundRemovalHook[Any]:
            import httpx

            def reply(request: httpx.Request) -> httpx.Response:
                return httpx.Response(200, json={"maxCredits": 10, "usedCredits": 3})

            return PoofHook(self.conn_id, async_transport=httpx.MockTransport(reply))

    [event] = await events(Injected("poof_default", "7"))
    assert event.payload["balance"]["remaining"] == "7"


async def test_a_connection_that_cannot_be_read_yet_is_read_again(
    vendors: FakeVendors, travel: TimeTravel, caplog: pytest.LogCaptureFixture
) -> None:
    # The API server restarting, a secrets backend timing out: the sensor's poke polls again, and so
    # does the trigger (it ended with a fatal event: the task failed without retries, or was skipped).
    attempts: list[str] = []

    class Flaky(CreditsTrigger):
        async def get_hook(self) -> BackgroundRemovalHook[Any]:
            attempts.append(str(self.conn_id))
            if len(attempts) == 1:
                raise RuntimeError("API_SERVER_ERROR: connection lookup timed out")
            return await super().get_hook()

    vendors.set_poof(500, 100)
    [event] = await events(Flaky("poof_default", "400", poll_interval=5))
    assert event.payload["status"] == "success" and event.payload["polls"] == 2
    assert attempts == ["poof_default", "poof_default"] and travel.waits == [5.0]
    assert "Poll 1: " in caplog.text and "API_SERVER_ERROR" in caplog.text


# -- against the sandbox over real sockets ---------------------------------------------------------
@pytest.mark.parametrize(
    ("conn_id", "vendor", "target"),
    [
        ("sb_pixelcut", "pixelcut", "25.5"),
        ("sb_pixian", "pixian", "25.5"),
        ("sb_poof", "poof", "25"),
    ],  # Poof: integers
)
async def test_sandbox_waits_then_resumes_when_topped_up(
    sb: RunningSandbox, conn_id: str, vendor: str, target: str
) -> None:
    admin = sb.admin
    admin.set_balance(vendor, 2)

    async def top_up_after_two_polls() -> None:
        while sum(1 for r in await asyncio.to_thread(admin.requests, vendor) if r["kind"] == "account") < 2:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(admin.set_balance, vendor, float(target))

    helper = asyncio.ensure_future(top_up_after_two_polls())
    [event] = await asyncio.wait_for(events(CreditsTrigger(conn_id, target, poll_interval=0.05)), timeout=30)
    await helper
    assert event.payload["status"] == "success"
    assert event.payload["polls"] >= 3
    assert Decimal(event.payload["balance"]["remaining"]) == Decimal(target)
    assert admin.charges() == []  # balance polls are free; nothing billed


async def test_sandbox_pixian_dormant_then_active(sb: RunningSandbox) -> None:
    sb.admin.set_balance("pixian", 40, state="dormant")
    trigger = CreditsTrigger("sb_pixian", "10", poll_interval=0.05)
    task = asyncio.ensure_future(events(trigger))
    await asyncio.sleep(0.3)
    assert not task.done()  # dormant: 0 usable, still waiting
    await asyncio.to_thread(sb.admin.set_balance, "pixian", None, None, "active")
    [event] = await asyncio.wait_for(task, timeout=30)
    assert event.payload["balance"]["state"] == "active"
    assert Decimal(event.payload["balance"]["remaining"]) == 40


async def test_sandbox_5xx_on_balance_polls_is_not_fatal(
    sb: RunningSandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One retry per poll (max_retries=1): poll 1 = two 503s (retried, then logged), poll 2 = 503 + 200.
    set_connection(
        monkeypatch, "sb_poof", "poof", password=sb.poof_key, host=sb.url, extra={"max_retries": 1}
    )
    sb.admin.set_faults("poof", fault="error", next=3, status=503, apply_to=["account"])
    [event] = await asyncio.wait_for(events(CreditsTrigger("sb_poof", "1", poll_interval=0.05)), timeout=60)
    assert event.payload["status"] == "success"
    statuses = [r["status"] for r in sb.admin.requests("poof")]
    assert statuses[:3] == [503, 503, 503]
    assert statuses[-1] == 200
    assert event.payload["polls"] == 2
    assert "failed after retries" in caplog.text


async def test_sandbox_revoked_key_is_fatal(sb: RunningSandbox) -> None:
    sb.admin.set_faults("pixelcut", auth_revoked=True, apply_to=["account"])
    [event] = await asyncio.wait_for(
        events(CreditsTrigger("sb_pixelcut", "1", poll_interval=0.05)), timeout=30
    )
    assert event.payload["status"] == "error"
    assert event.payload["fatal"] is True
    assert len(sb.admin.requests("pixelcut")) == 1


async def test_credit_amounts_are_logged_as_people_write_them(
    vendors: FakeVendors, travel: TimeTravel, caplog: pytest.LogCaptureFixture
) -> None:
    vendors.set_pixian("1000.0")
    with caplog.at_level("INFO"):
        [event] = await events(CreditsTrigger("pixian_default", "10.0"))
    assert event.payload["balance"]["remaining"] == "1000.0"
    assert "1000 usable credits, threshold 10: met after 1 poll(s)" in caplog.text


# -- pooled accounts -------------------------------------------------------------------------------
POOL = ["pixian_default", "poof_default"]


def test_pool_serialisation_round_trips() -> None:
    from airflow.sdk.serde import deserialize, serialize

    trigger = CreditsTrigger(POOL, "12", poll_interval=5, pooling="total")
    path, kwargs = trigger.serialize()
    assert kwargs["conn_id"] == POOL and kwargs["pooling"] == "total" and kwargs["costs"] is None
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert CreditsTrigger(**deserialize(serialize(kwargs))) == trigger
    assert CreditsTrigger(**kwargs) != CreditsTrigger(POOL, "12", poll_interval=5, pooling="any")


async def test_pool_total_waits_until_the_sum_is_enough(vendors: FakeVendors, travel: TimeTravel) -> None:
    vendors.set_pixian("4")
    vendors.set_poof(10, 9)

    def top_up(vendor: str, calls: int) -> None:
        if vendor == "poof" and calls == 3:
            vendors.set_poof(10, 2)  # 8 on the third poll: 12 in total

    vendors.on_request = top_up
    [event] = await events(CreditsTrigger(POOL, "12", poll_interval=7, pooling="total"))
    payload = event.payload
    assert (payload["status"], payload["polls"], payload["conn_id"]) == ("success", 3, POOL)
    assert (payload["pool"]["total"], payload["pool"]["met_by"]) == ("12", POOL)
    assert travel.waits == [7, 7]


async def test_pool_images_and_a_fatal_account(vendors: FakeVendors, travel: TimeTravel) -> None:
    vendors.set_pixian("3")
    vendors.set_poof(10, 10)
    vendors.script["poof"] = [401] * 4
    trigger = CreditsTrigger(
        POOL, None, pooling="any", min_images=5, costs={"pixian_default": "0.5", "poof_default": "1"}
    )
    [event] = await events(trigger)  # pixian: 3 credits at 0.5 = 6 images
    assert event.payload["pool"]["met_by"] == ["pixian_default"]
    vendors.set_pixian("1")
    vendors.script["poof"] = [401] * 4
    [event] = await events(trigger)
    assert (event.payload["status"], event.payload["fatal"]) == ("error", True)
    assert "poof_default: VendorAuthError" in event.payload["message"]
    for secret in SECRETS:
        assert secret not in json.dumps(event.payload)


async def test_pool_images_without_a_cost_is_a_fatal_error(vendors: FakeVendors, travel: TimeTravel) -> None:
    # a missing cost is no free account: it would meet any min_images without a credit
    vendors.set_pixian("0")
    vendors.set_poof(10, 10)
    for costs in (None, {"pixian_default": "0.5"}):
        [event] = await events(CreditsTrigger(POOL, None, pooling="any", min_images=5, costs=costs))
        assert (event.payload["status"], event.payload["fatal"]) == ("error", True)
        assert "invalid 'costs': min_images needs a cost per image for" in event.payload["message"]
        assert "poof_default" in event.payload["message"].split("for")[-1]
    assert travel.waits == []


async def test_pool_over_the_sandbox(sb: RunningSandbox, travel: TimeTravel) -> None:
    sb.admin.set_balance("pixian", 2.5)
    sb.admin.set_balance("poof", 3)
    [event] = await events(CreditsTrigger(["sb_pixian", "sb_poof"], "5.5", pooling="total"))
    assert event.payload["pool"]["total"] == "5.5"
    assert sb.admin.charges() == []


async def test_one_connection_counting_images_works_and_round_trips(
    vendors: FakeVendors, travel: TimeTravel
) -> None:
    """
    ``CreditsTrigger("pixian_default", None, min_images=...)``: it ended with a fatal event (its
    min_credits None is no number) and serialize() dropped min_images, pooling and costs, so a
    triggerer restart rebuilt a trigger waiting for nothing it was given.
    """
    from airflow.sdk.serde import deserialize, serialize

    vendors.set_pixian("3")
    trigger = CreditsTrigger(
        "pixian_default", None, poll_interval=5, pooling="any", min_images=6, costs={"pixian_default": "0.5"}
    )
    _, kwargs = trigger.serialize()
    assert (kwargs["min_images"], kwargs["pooling"], kwargs["costs"]) == (6, "any", {"pixian_default": "0.5"})
    rebuilt = CreditsTrigger(**deserialize(serialize(kwargs)))
    assert rebuilt == trigger and rebuilt.serialize() == trigger.serialize()
    for each in (trigger, rebuilt):
        [event] = await events(each)  # 3 credits at 0.5: 6 images
        payload = event.payload
        assert (payload["status"], payload["conn_id"]) == ("success", "pixian_default")
        assert (payload["pool"]["unit"], payload["pool"]["total"]) == ("images", "6")
    vendors.set_pixian("2.5")  # 5 images: waits for a top-up
    travel.waits.clear()

    first = vendors.calls("pixian")

    def top_up(vendor: str, calls: int) -> None:
        if calls - first == 2:  # the second poll reads 3 credits: 6 images
            vendors.set_pixian("3")

    vendors.on_request = top_up
    [event] = await events(rebuilt)
    assert (event.payload["status"], event.payload["polls"], travel.waits) == ("success", 2, [5])


def test_every_construction_round_trips_through_serialize() -> None:
    from airflow.sdk.serde import deserialize, serialize

    costs = {"pixian_default": "1"}
    for trigger in (
        CreditsTrigger("pixian_default", "5"),
        CreditsTrigger("pixian_default", "5", pooling="total"),
        CreditsTrigger("pixian_default", None, min_images=2, costs=costs),
        CreditsTrigger(["pixian_default"], None, pooling="total", min_images=2, costs=costs),
        CreditsTrigger(POOL, "5", pooling="any"),
    ):
        _, kwargs = trigger.serialize()
        rebuilt = CreditsTrigger(**deserialize(serialize(kwargs)))
        assert vars(rebuilt) == vars(trigger) and rebuilt.serialize() == trigger.serialize()
    _, kwargs = CreditsTrigger("pixian_default", "5").serialize()
    assert set(kwargs) == {
        "conn_id",
        "min_credits",
        "poll_interval",
        "exponential_backoff",
        "max_poll_interval",
    }


def test_backoff_from_a_zero_poke_interval_still_waits_and_doubles() -> None:
    # poke_interval=0 with exponential_backoff: 0 doubled stays 0, so the trigger polled the vendor's
    # balance in a tight loop for the whole deferral (the base sensor's backoff waits at least 1 s).
    trigger = CreditsTrigger("c", "1", poll_interval=0, exponential_backoff=True, max_poll_interval=10)
    assert [trigger.next_interval(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert CreditsTrigger("c", "1", poll_interval=0.5, exponential_backoff=True).next_interval(2) == 2
    assert CreditsTrigger("c", "1", poll_interval=0).next_interval(3) == 0  # no backoff: as given
