"""The typed results: an image result carries its call's outcome (``ImageResult.call``)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_bgremoval.results import ImageResult
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
