"""The typed results: an image result carries its call's outcome (``ImageResult.call``)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from airflow_provider_bgremoval.results import AccountState, Balance, ImageResult
from airflow_provider_bgremoval.retry import CallStats


def test_the_outcome_is_a_declared_field_defaulting_to_no_call() -> None:
    result = ImageResult(content=b"png", content_type="image/png", vendor="poof")
    assert result.call == CallStats()
    outcome = CallStats(attempts=3, possibly_charged=2, billed_reply=True, credits_charged=Decimal(1))
    assert ImageResult(b"png", "image/png", "poof", call=outcome).call.possibly_charged == 2
    assert "call" not in repr(result)  # the repr stays one short line


def test_old_names_are_deprecated_aliases_for_one_release() -> None:
    result = ImageResult(b"png", "image/png", "poof", call=CallStats(attempts=3, possibly_charged=2))
    with pytest.warns(DeprecationWarning, match=r"\.call\.attempts"):
        assert result.attempts == 3
    with pytest.warns(DeprecationWarning, match=r"\.call\.possibly_charged"):
        assert result.possibly_charged_retries == 2


def test_a_balance_carries_its_expiry_and_test_mode_in_its_primitive_form_only_when_set() -> None:
    """``expires_at`` and ``test_mode`` on every vendor's balance; the XCom shape unchanged without them."""
    plain = Balance(vendor="poof", remaining=Decimal(5), credit_pack="Pro")
    assert (plain.expires_at, plain.test_mode) == (None, False)
    assert plain.as_dict() == {"vendor": "poof", "remaining": "5", "state": "active", "credit_pack": "Pro"}
    moment = datetime(2027, 1, 1, 6, tzinfo=timezone.utc)
    dated = Balance(vendor="pixian", remaining=Decimal(0), state=AccountState.DORMANT, expires_at=moment)
    assert dated.as_dict() == {
        "vendor": "pixian",
        "remaining": "0",
        "state": "dormant",
        "credit_pack": None,
        "expires_at": "2027-01-01T06:00:00+00:00",
    }
    assert Balance(vendor="pixian", remaining=Decimal(0), test_mode=True).as_dict()["test_mode"] is True
