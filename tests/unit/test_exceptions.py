"""The exception hierarchy: classification flags, text, pickling and primitive forms."""

from __future__ import annotations

import copy
import pickle

import pytest
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval.exceptions import (
    BgRemovalError,
    InputRejectedError,
    InvalidOptionError,
    InvalidVendorResponseError,
    OutOfCreditsError,
    RateLimitedError,
    ResultDownloadError,
    TransientVendorError,
    VendorAuthError,
    VendorRequestError,
    safe_excerpt,
)

# class -> (retryable, fatal for the batch)
CLASSIFICATION: dict[type[BgRemovalError], tuple[bool, bool]] = {
    VendorAuthError: (False, True),
    OutOfCreditsError: (False, True),
    RateLimitedError: (True, False),
    TransientVendorError: (True, False),
    InputRejectedError: (False, False),
    VendorRequestError: (False, False),
    InvalidVendorResponseError: (False, False),
    ResultDownloadError: (False, False),
    InvalidOptionError: (False, False),
}


@pytest.mark.parametrize(("cls", "flags"), CLASSIFICATION.items(), ids=lambda v: getattr(v, "__name__", ""))
def test_classification(cls: type[BgRemovalError], flags: tuple[bool, bool]) -> None:
    assert (cls.retryable, cls.fatal_for_batch) == flags
    assert issubclass(cls, BgRemovalError)
    assert issubclass(cls, AirflowException)


def test_invalid_option_is_also_a_value_error() -> None:
    error = InvalidOptionError("margin", "bad")
    assert isinstance(error, ValueError)
    assert error.parameter == "margin"
    assert error.code == "invalid_option"
    assert str(error) == "[invalid_option] invalid 'margin': bad"


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "boom"),
        ({"vendor": "pixian"}, "[pixian] boom"),
        ({"vendor": "pixian", "status_code": 402}, "[pixian 402] boom"),
        ({"vendor": "pixian", "status_code": 402, "code": "1006"}, "[pixian 402 1006] boom"),
        ({"status_code": 500}, "[500] boom"),
        ({"code": "empty_file"}, "[empty_file] boom"),
        ({"vendor": "poof", "request_id": "req-1"}, "[poof] boom"),
    ],
)
def test_str_format(kwargs: dict[str, object], text: str) -> None:
    assert str(BgRemovalError("boom", **kwargs)) == text  # type: ignore[arg-type]


EXAMPLES: list[BgRemovalError] = [
    VendorAuthError("bad key", vendor="pixelcut", status_code=401, code="invalid_api_key", request_id="r1"),
    OutOfCreditsError("no credits", vendor="pixelcut", status_code=403, code="insufficient_api_credits"),
    RateLimitedError("slow down", vendor="pixian", status_code=429, retry_after=12.5),
    TransientVendorError("lost", vendor="poof", code="ReadTimeout", possibly_charged=True),
    InputRejectedError("too big", vendor="pixian", code="file_size_too_large", local=True),
    VendorRequestError("bad param", vendor="poof", status_code=400, code="invalid_parameter"),
    InvalidVendorResponseError("empty", vendor="poof", possibly_charged=False),
    ResultDownloadError("expired", vendor="pixelcut", status_code=404, code="result_download"),
    InvalidOptionError("max_size", "too big"),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_pickling_round_trip_keeps_every_field(error: BgRemovalError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert clone.__dict__ == error.__dict__
    assert str(clone) == str(error)
    assert clone.args == error.args
    assert copy.deepcopy(error).__dict__ == error.__dict__


def test_subclass_specific_fields_survive_pickling() -> None:
    rate = pickle.loads(pickle.dumps(EXAMPLES[2]))
    assert rate.retry_after == 12.5
    transient = pickle.loads(pickle.dumps(EXAMPLES[3]))
    assert transient.possibly_charged is True
    rejected = pickle.loads(pickle.dumps(EXAMPLES[4]))
    assert rejected.local is True
    option = pickle.loads(pickle.dumps(EXAMPLES[8]))
    assert option.parameter == "max_size"


def test_defaults() -> None:
    assert RateLimitedError("x").retry_after is None
    assert TransientVendorError("x").possibly_charged is False
    assert InputRejectedError("x").local is False
    # A bad 2xx body or a failed result download came after a billed call.
    assert InvalidVendorResponseError("x").possibly_charged is True
    assert ResultDownloadError("x").possibly_charged is True


def test_as_dict() -> None:
    error = EXAMPLES[0]
    assert error.as_dict() == {
        "error_type": "VendorAuthError",
        "vendor": "pixelcut",
        "status_code": 401,
        "code": "invalid_api_key",
        "message": "bad key",
        "request_id": "r1",
    }
    for example in EXAMPLES:
        data = example.as_dict()
        assert data["error_type"] == type(example).__name__
        assert all(isinstance(v, (str, int, type(None))) for v in data.values())


def test_no_secrets_in_exceptions() -> None:
    """Errors carry only what they are given; none of them holds settings, headers or requests."""
    secret = "sk_live_0123456789abcdef"
    for error in EXAMPLES:
        text = " ".join([str(error), repr(error), str(error.as_dict()), str(pickle.dumps(error))])
        assert secret not in text
        assert not any(hasattr(error, name) for name in ("settings", "headers", "request", "api_key"))


def test_safe_excerpt() -> None:
    assert (
        safe_excerpt("  <html>\n  <body>Bad\tGateway</body>\n</html> ")
        == "<html> <body>Bad Gateway</body> </html>"
    )
    long = "x" * 1000
    excerpt = safe_excerpt(long)
    assert len(excerpt) == 300
    assert excerpt.endswith("…")
    assert safe_excerpt("abc", limit=2) == "a…"
    assert safe_excerpt("") == ""
