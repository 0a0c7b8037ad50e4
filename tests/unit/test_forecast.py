"""Balance history, burn rate and forecast; the history store over fake-gcs-server."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from airflow_provider_bgremoval.forecast import (
    HistoryStore,
    Sample,
    add_sample,
    as_utc,
    burn_rate,
    dump_history,
    forecast,
    is_late,
    object_name,
    parse_history,
    predecessor,
    spend_between,
)
from airflow_provider_bgremoval.storage.gcs import GcsStorage

DAY0 = datetime(2026, 1, 1, 6, tzinfo=timezone.utc)


def daily(*balances: float) -> list[Sample]:
    return [Sample(DAY0 + timedelta(days=d), Decimal(str(b))) for d, b in enumerate(balances)]


def test_history_round_trips_as_json_lines() -> None:
    samples = daily(100, 97.5, 90)
    data = dump_history(samples)
    assert data.decode().splitlines()[1] == '{"at": "2026-01-02T06:00:00+00:00", "remaining": "97.5"}'
    assert parse_history(data + b"\n") == samples


def test_add_sample_keeps_order_replaces_same_time_and_bounds() -> None:
    samples = daily(10, 9, 8)
    again = add_sample(samples, Sample(samples[1].at, Decimal(7)), limit=10)
    assert [s.remaining for s in again] == [10, 7, 8]
    late = add_sample(samples, Sample(DAY0 - timedelta(days=1), Decimal(11)), limit=10)
    assert late[0].remaining == 11
    assert [s.remaining for s in add_sample(samples, Sample(DAY0 + timedelta(days=5), Decimal(1)), 3)] == [
        9,
        8,
        1,
    ]


def test_burn_rate_ignores_top_ups() -> None:
    # 50 a day; +200 between day 3 and 4: the rise is no negative spend and its interval is left out
    samples = daily(600, 550, 500, 450, 600, 550)
    assert burn_rate(samples) == 50
    assert burn_rate(daily(100)) is None
    assert burn_rate(daily(100, 300)) is None  # only a top-up so far
    assert burn_rate(daily(100, 100, 100)) == 0


def test_burn_rate_window_and_fractions() -> None:
    samples = daily(1000, 900, 800, 799.5, 799, 798.5)
    assert burn_rate(samples, window_days=2) == Decimal("0.5")
    hourly = [Sample(DAY0 + timedelta(hours=h), Decimal(100 - h)) for h in range(25)]
    assert burn_rate(hourly) == 24


def test_forecast_alerts_within_the_lead_time_with_the_covering_top_up() -> None:
    fc = forecast("pixian_default", "pixian", daily(800, 750, 700, 650, 600, 550, 500, 450, 400, 340), 7)
    assert fc.burn_rate == Decimal(460) / 9
    assert fc.alert  # 340 credits at ~51.1/day last 6.65 days
    assert fc.top_up == 18  # 7 x 51.11 - 340 = 17.8 -> 18 whole credits
    assert fc.as_dict()["runs_out_on"] == "2026-01-16"
    assert fc.describe() == (
        "pixian_default (pixian): 340 credits, burning 51.11 credits/day, runs out on 2026-01-16 "
        "(in 6.6 days): FORECAST LOW within 7 days; a top-up of 18 credits covers 7 days"
    )
    calm = forecast("poof_default", "poof", daily(800, 750), 7)
    assert not calm.alert and calm.top_up == 0
    assert "lasts the 7 days forecast window" in calm.describe()
    assert (
        forecast("c", None, daily(5), 7).describe()
        == "c (unknown vendor): 5 credits, no burn rate yet (1 reading(s))"
    )
    idle = forecast("c", "poof", daily(5, 5), 1)
    assert idle.runs_out_at is None and not idle.alert
    with pytest.raises(ValueError, match="forecast_days"):
        forecast("c", None, daily(5), 0)


def test_object_names_are_safe() -> None:
    assert object_name("h/", "my conn/1", ".jsonl") == "h/my_conn_1.jsonl"


def test_store_creates_appends_and_bounds(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    store = HistoryStore(gcs_storage, gcs_bucket, "_credit_history/", limit=3)
    for sample in daily(10, 9, 8, 7):
        store.record("poof_default", sample)
    samples, generation = store.load("poof_default")
    assert [s.remaining for s in samples] == [9, 8, 7]
    assert generation > 0
    info = gcs_storage.stat(gcs_bucket, "_credit_history/poof_default.jsonl")
    assert info is not None and info.content_type == "application/x-ndjson"
    with pytest.raises(ValueError, match="history_limit"):
        HistoryStore(gcs_storage, gcs_bucket, "p/", limit=1)


def test_concurrent_writers_lose_no_reading(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    store = HistoryStore(gcs_storage, gcs_bucket, "h/")
    # racing monitors read seconds apart (a reading older than the newest beyond a few minutes is late)
    samples = [Sample(DAY0 + timedelta(seconds=i), Decimal(100 - i)) for i in range(8)]
    threads = [threading.Thread(target=store.record, args=("c", s)) for s in samples]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.load("c")[0] == samples


def test_as_utc_gives_plain_utc_datetimes() -> None:
    import pendulum

    moment = as_utc(pendulum.datetime(2026, 1, 1, 7, tz="Europe/Berlin"))
    assert type(moment) is datetime and moment == DAY0
    assert moment - DAY0 == timedelta(0)
    assert as_utc("2026-01-01T06:00:00") == DAY0


def test_an_idle_large_account_has_no_run_out_in_sight() -> None:
    # 0.1 credits in 14 days of 100,000: a run-out ~38 million years away is past the range of dates
    samples = [Sample(DAY0, Decimal(100000)), Sample(DAY0 + timedelta(days=14), Decimal("99999.9"))]
    fc = forecast("pixian_default", "pixian", samples, 7)
    assert fc.burn_rate is not None and fc.burn_rate > 0
    assert fc.days_left is None and fc.runs_out_at is None and not fc.alert
    assert fc.as_dict()["runs_out_on"] is None and fc.as_dict()["days_left"] is None
    assert fc.describe().endswith("credits/day: no run-out in sight")
    # within a century it is still forecast
    century = [Sample(DAY0, Decimal(36000)), Sample(DAY0 + timedelta(days=1), Decimal(35999))]
    assert forecast("c", None, century, 7).days_left == 35999


def test_unreadable_history_lines_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    good = daily(100, 90)
    lines = [
        dump_history(good[:1]).decode().strip(),
        '{"at": "2026-01-01T12:00:00+00:00", "remaining": "12 credits"}',
        '{"at": "yesterday", "remaining": "5"}',
        '{"at": "2026-01-01T13:00:00+00:00", "remaining": "NaN"}',
        '{"remaining": "5"}',
        '["not", "a", "reading"]',
        '{"at": 5, "remaining": "5"}',
        "not json",
        dump_history(good[1:2]).decode().strip(),
    ]
    data = ("\n".join(lines) + "\n").encode() + b"\xff\n"
    assert parse_history(data, "gs://b/h.jsonl") == good
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 8 and skipped[0].startswith("gs://b/h.jsonl line 2 skipped")


def test_a_short_span_gives_no_rate_until_the_minimum() -> None:
    # 1000 then 999 a minute apart would be 1440 a day, running out in 0.7 days: a false alarm
    minute = [Sample(DAY0, Decimal(1000)), Sample(DAY0 + timedelta(minutes=1), Decimal(999))]
    assert burn_rate(minute) is None
    fc = forecast("c", "poof", minute, 7)
    assert not fc.alert and fc.burn_rate is None and "no burn rate yet" in fc.describe()
    assert burn_rate(minute, min_span_days=0) == 1440  # the minimum is a parameter
    # the span counts spending intervals only: a day with a top-up in it is not a day of spending
    topped = [*daily(100, 200), Sample(DAY0 + timedelta(days=1, hours=1), Decimal(199))]
    assert burn_rate(topped) is None
    assert burn_rate([*daily(100, 99), Sample(DAY0 + timedelta(days=1, hours=12), Decimal(98))]) == Decimal(
        "2"
    ) / Decimal("1.5")


def test_a_reading_older_than_the_newest_is_late() -> None:
    samples = daily(10, 9, 8)
    assert is_late(samples, Sample(samples[1].at, Decimal(3)))
    assert not is_late(samples, Sample(samples[-1].at - timedelta(minutes=1), Decimal(3)))  # racing
    assert not is_late(samples, Sample(samples[-1].at, Decimal(3)))  # a retry
    assert not is_late([], Sample(DAY0, Decimal(3)))
    assert predecessor(samples, samples[2]) == samples[1]
    assert predecessor(samples, samples[0]) is None


def test_store_does_not_record_a_late_reading(gcs_storage: GcsStorage, gcs_bucket: str) -> None:
    store = HistoryStore(gcs_storage, gcs_bucket, "_credit_history/")
    for sample in daily(10, 9, 8):
        assert store.record("poof_default", sample)[1]
    samples, recorded = store.record("poof_default", Sample(DAY0 + timedelta(days=1), Decimal(500)))
    assert not recorded and [s.remaining for s in samples] == [10, 9, 8]
    assert [s.remaining for s in store.load("poof_default")[0]] == [10, 9, 8]


def test_a_duplicated_reading_is_no_spend_without_time() -> None:
    # A hand-edited history holding two readings at one time: the last line is the reading (as
    # add_sample keeps it), and a drop between two readings of one instant is no spend per day.
    data = b"".join(
        (
            b'{"at": "2026-01-01T06:00:00+00:00", "remaining": "100"}\n',
            b'{"at": "2026-01-01T06:00:00+00:00", "remaining": "90"}\n',
            b'{"at": "2026-01-02T06:00:00+00:00", "remaining": "80"}\n',
        )
    )
    samples = parse_history(data)
    assert [s.remaining for s in samples] == [90, 80]
    assert burn_rate(samples) == 10
    twice = [
        Sample(DAY0, Decimal(100)),
        Sample(DAY0, Decimal(90)),
        Sample(DAY0 + timedelta(days=1), Decimal(80)),
    ]
    assert burn_rate(twice) == 10


def test_unordered_readings_are_taken_in_time_order() -> None:
    samples = daily(600, 550, 500, 450)
    shuffled = [samples[2], samples[0], samples[3], samples[1]]
    assert burn_rate(shuffled) == 50
    fc = forecast("poof_default", "poof", shuffled, 7)
    assert (fc.remaining, fc.at, fc.burn_rate) == (Decimal(450), samples[3].at, Decimal(50))


def test_days_left_in_the_message_never_reads_as_the_lead_time() -> None:
    # 699.3 credits at 100 a day last 6.993 days: alerting "within 7 days" while saying "in 7.0 days"
    fc = forecast(
        "pixian_default",
        "pixian",
        [Sample(DAY0, Decimal("799.3")), Sample(DAY0 + timedelta(days=1), Decimal("699.3"))],
        7,
    )
    assert fc.alert
    assert "(in 6.9 days): FORECAST LOW within 7 days" in fc.describe()


def test_readings_of_an_account_that_cannot_spend_are_no_spend() -> None:
    # A dormant (or suspended) account reads 0 usable credits: its frozen credits were not spent, and
    # while it cannot spend its time says nothing of the burn rate.
    samples = daily(300, 250, 250, 750, 700)
    samples[2] = Sample(samples[2].at, Decimal(0), usable=False)
    assert burn_rate(samples) == 50
    assert spend_between(samples[1], samples[2]) == 0
    went_dormant = [Sample(DAY0, Decimal(300)), Sample(DAY0 + timedelta(days=1), Decimal(0), usable=False)]
    assert burn_rate(went_dormant) is None  # no spending interval yet, not 300 a day
    data = dump_history(samples)
    line = '{"at": "2026-01-03T06:00:00+00:00", "remaining": "0", "usable": false}'
    assert data.decode().splitlines()[2] == line
    assert parse_history(data) == samples
    assert parse_history(b'{"at": "2026-01-03T06:00:00+00:00", "remaining": "0", "usable": "no"}\n') == []


def test_a_burn_rate_below_a_hundredth_is_not_written_as_0() -> None:
    # 0.056 credits spent in 14 days (0.004 a day): "burning 0 credits/day" with a run-out date is a lie
    slow = forecast(
        "pixian_default",
        "pixian",
        [Sample(DAY0, Decimal("0.106")), Sample(DAY0 + timedelta(days=14), Decimal("0.05"))],
        30,
    )
    assert slow.burn_rate == Decimal("0.004") and slow.alert  # 12.5 days left
    assert "burning 0.004 credits/day, runs out on 2026-01-27 (in 12.5 days)" in slow.describe()
    assert slow.as_dict()["burn_rate"] == "0.004"
    tiny = forecast(
        "c", None, [Sample(DAY0, Decimal("1.0")), Sample(DAY0 + timedelta(days=3), Decimal("0.985"))], 7
    )
    assert tiny.as_dict()["burn_rate"] == "0.005"  # not rounded half-even to 0
    assert forecast("c", None, daily(900, 800, 700), 7).as_dict()["burn_rate"] == "100"
    assert forecast("c", None, daily(10, 9.666), 7).as_dict()["burn_rate"] == "0.33"


def test_an_empty_account_that_spends_nothing_is_not_out_of_sight() -> None:
    # 0 credits for two days (nothing left to spend): "no run-out in sight" said the opposite
    fc = forecast("poof_default", "poof", daily(0, 0, 0), 7)
    assert fc.burn_rate == 0
    assert fc.describe() == "poof_default (poof): 0 credits, burning 0 credits/day: no credits left"
    lasting = forecast("poof_default", "poof", daily(5, 5, 5), 7)
    assert lasting.describe().endswith("burning 0 credits/day: no run-out in sight")


def test_credits_that_expire_before_they_run_out_are_forecast_by_their_expiry() -> None:
    # 500 credits at 10 a day last 50 days by burn, but they expire in 5: "lasts 50 days" misled
    samples = daily(520, 510, 500)
    fc = forecast("pixian_default", "pixian", samples, 7, expires_at=samples[-1].at + timedelta(days=5))
    assert fc.days_left == 50 and fc.as_dict()["runs_out_on"] == "2026-02-22"  # by burn, as before
    assert (fc.limited_by, fc.usable_days, fc.expiring_credits) == ("expiry", 5, 450)
    assert fc.alert and fc.top_up == 0  # the balance covers the spend; the expiry does not wait
    entry = fc.as_dict()
    assert {key: entry[key] for key in ("expires_at", "expiring_credits", "usable_until", "limited_by")} == {
        "expires_at": "2026-01-08T06:00:00+00:00",
        "expiring_credits": "450",
        "usable_until": "2026-01-08",
        "limited_by": "expiry",
    }
    assert fc.describe() == (
        "pixian_default (pixian): 500 credits, burning 10 credits/day, expire on 2026-01-08 (in 5.0 days) "
        "before they run out: 450 credits expire unused at this rate: FORECAST LOW within 7 days; "
        "buy new credits before 2026-01-08 to keep the account usable"
    )
    later = forecast("c", "pixian", samples, 7, expires_at=samples[-1].at + timedelta(days=20.5))
    assert (later.limited_by, later.expiring_credits, later.alert) == ("expiry", 295, False)
    assert later.describe().endswith(
        "(in 20.5 days) before they run out: 295 credits expire unused at this rate: lasts the 7 days "
        "forecast window"
    )


def test_credits_that_run_out_before_they_expire_are_forecast_by_their_burn() -> None:
    samples = daily(520, 510, 500)
    fc = forecast("c", "pixian", samples, 7, expires_at=samples[-1].at + timedelta(days=60))
    assert (fc.limited_by, fc.usable_days, fc.expiring_credits, fc.alert) == ("burn", 50, 0, False)
    assert fc.as_dict()["usable_until"] == fc.as_dict()["runs_out_on"] == "2026-02-22"
    assert fc.describe() == forecast("c", "pixian", samples, 7).describe()
    plain = forecast("c", "poof", samples, 7).as_dict()  # no expiry reported: the keys say so
    assert (plain["expires_at"], plain["expiring_credits"], plain["limited_by"]) == (None, None, "burn")


def test_an_expiry_alerts_without_a_burn_rate_and_never_on_an_empty_account() -> None:
    first = daily(300)
    fc = forecast("c", "pixian", first, 7, expires_at=DAY0 + timedelta(days=2))
    assert fc.burn_rate is None and fc.alert and fc.limited_by == "expiry"
    assert fc.expiring_credits is None  # how many go unused needs a rate; up to all 300
    assert fc.describe() == (
        "c (pixian): 300 credits, no burn rate yet (1 reading(s)); they expire on 2026-01-03 (in 2.0 days), "
        "up to 300 of them unused: FORECAST LOW within 7 days; buy new credits before 2026-01-03 to keep "
        "the account usable"
    )
    idle = forecast("c", "pixian", daily(300, 300), 7, expires_at=DAY0 + timedelta(days=3))
    assert (idle.expiring_credits, idle.alert, idle.usable_days) == (300, True, 2)
    past = forecast("c", "pixian", first, 7, expires_at=DAY0 - timedelta(days=1))  # state lagging
    assert (past.usable_days, past.alert) == (0, True)
    assert past.describe().endswith(
        "they expired on 2025-12-31, up to 300 of them unused: FORECAST LOW within 7 days; buy new credits "
        "to keep the account usable"
    )
    empty = forecast("c", "pixian", daily(0, 0), 7, expires_at=DAY0 + timedelta(days=2))
    assert not empty.alert and empty.limited_by is None and empty.expiring_credits == 0
    far = forecast("c", "pixian", first, 7, expires_at=datetime(9999, 12, 31, tzinfo=timezone.utc))
    assert not far.alert and far.limited_by is None and far.as_dict()["usable_until"] is None
