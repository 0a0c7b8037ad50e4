"""A pool in images on a Pixian connection in test mode (free calls): the rule of credits.takes_calls."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from airflow_provider_bgremoval.sensors.credits import CreditsSensor
from tests.support.balances import PIXIAN_ID, PIXIAN_SECRET, FakeVendors
from tests.support.connections import set_connection


def images_sensor(**kwargs: Any) -> CreditsSensor:
    return CreditsSensor(task_id="credits", poke_interval=0, timeout=60, **kwargs)


def poke(sensor: CreditsSensor) -> Any:
    ti = mock.MagicMock()
    ti.get_first_reschedule_date.return_value = None
    return sensor.poke({"ti": ti})  # type: ignore[arg-type]


def test_min_images_on_a_dormant_account_in_test_mode_is_met_at_once(
    vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    An account without a pack reads dormant, and its test calls are free (priced 0 by the cost table):
    it pays for any number of images. It was counted as 0 images, so the sensor waited for ever.
    """
    set_connection(
        monkeypatch,
        "pixian_test",
        "pixian",
        login=PIXIAN_ID,
        password=PIXIAN_SECRET,
        extra={"test_mode": True},
    )
    vendors.set_pixian(0, state="dormant")
    result = poke(images_sensor(conn_id="pixian_test", min_images=50))
    assert result.is_done
    pool = result.xcom_value
    assert (pool["met_by"], pool["amounts"], pool["costs"]) == (
        ["pixian_test"],
        {"pixian_test": "50"},
        {"pixian_test": "0"},
    )
    assert pool["balances"]["pixian_test"]["state"] == "dormant"
    assert pool["balances"]["pixian_test"]["test_mode"] is True
    vendors.set_poof(10, 10)  # Poof spent: the test-mode account alone pays for them
    pooled = poke(images_sensor(conn_id=["pixian_test", "poof_default"], min_images=50, pooling="total"))
    assert pooled.is_done and pooled.xcom_value["met_by"] == ["pixian_test"]


def test_min_images_on_a_dormant_account_not_in_test_mode_still_waits(vendors: FakeVendors) -> None:
    """Billed calls: a dormant account pays for none, also with cost_per_image=0 (pinned before)."""
    vendors.set_pixian(0, state="dormant")
    for cost in (None, 0):
        result = poke(images_sensor(conn_id="pixian_default", min_images=1, cost_per_image=cost))
        assert not result.is_done
