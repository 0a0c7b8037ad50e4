"""The sandbox's error answers: the ``Retry-After`` header of its 429s."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import pytest

from airflow_provider_bgremoval.sandbox.config import VENDORS
from airflow_provider_bgremoval.sandbox.errors import rate_limited


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(5, "5"), (1000, "1000"), (1234567, "1234567"), (1e6, "1000000"), (2.5, "3"), (0.2, "1"), (0, "0")],
)
def test_retry_after_is_whole_delta_seconds(seconds: float, header: str) -> None:
    # RFC 9110: delta-seconds is 1*DIGIT. `:g` gave "1e+06" and "1.23457e+06", which no server sends and a
    # strict client reads as no Retry-After at all; a fraction rounds up, so a client never comes back
    # before the sandbox would let it in.
    for vendor in VENDORS:
        assert rate_limited(vendor, seconds).headers == {"Retry-After": header}


def test_no_retry_after_unless_configured() -> None:
    for vendor in VENDORS:
        assert rate_limited(vendor, None).headers == {}


def test_retry_after_as_an_http_date() -> None:
    # RFC 9110's other form: the time to come back, in IMF-fixdate, rounded up to the second
    before = time.time()
    for vendor in VENDORS:
        header = rate_limited(vendor, 30, http_date=True).headers["Retry-After"]
        assert header.endswith(" GMT")
        assert before + 30 <= parsedate_to_datetime(header).timestamp() <= time.time() + 31
