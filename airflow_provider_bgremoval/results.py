"""Typed results every vendor client returns, whatever the vendor's wire format."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from airflow_provider_bgremoval._moved import moved_attribute
from airflow_provider_bgremoval.retry import CallStats


class AccountState(str, enum.Enum):
    """Normalised account state; ``DORMANT`` and ``SUSPENDED`` accounts have no usable credits."""

    ACTIVE = "active"
    DORMANT = "dormant"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ImageResult:
    """
    One processed image as returned by a vendor (after any local post-processing).

    :param content: the encoded image bytes.
    :param content_type: MIME type of ``content`` (``image/png``, ``image/jpeg``, ``image/webp``).
    :param vendor: vendor name.
    :param width: pixel width of ``content`` when known.
    :param height: pixel height of ``content`` when known.
    :param request_id: the vendor's request id, when it sends one.
    :param credits_charged: credits this call cost, when the vendor says or the contract fixes it.
    :param credits_calculated: what a production call would have cost (Pixian test mode only).
    :param metadata: vendor metadata parsed from headers (foreground boxes, processing time…).
    :param call: the call's outcome, set by the hook (attempts, possibly charged lost replies).
    """

    content: bytes = field(repr=False)  # never dump megabytes of image into a log line
    content_type: str
    vendor: str
    width: int | None = None
    height: int | None = None
    request_id: str | None = None
    credits_charged: Decimal | None = None
    credits_calculated: Decimal | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)
    call: CallStats = field(default_factory=CallStats, repr=False)

    attempts = moved_attribute("ImageResult.attempts", "call.attempts")
    possibly_charged_retries = moved_attribute(
        "ImageResult.possibly_charged_retries", "call.possibly_charged"
    )


@dataclass(frozen=True)
class Balance:
    """
    A vendor account balance, normalised.

    :param vendor: vendor name.
    :param remaining: credits that can still be spent (0 when the account is dormant or suspended).
    :param state: normalised account state.
    :param credit_pack: credit-pack or subscription-plan name when the vendor reports one.
    :param raw: the vendor's reply as parsed JSON (never contains secrets).
    :param expires_at: when the credits expire and can no longer be spent, where the vendor reports it
        (Pixian's ``useBefore``, when the pack goes dormant; UTC); ``None``: no expiry reported.
    :param test_mode: the connection it was read through sends its calls in test mode (Pixian's
        ``test_mode`` extra): free calls, which an account without a pack (dormant) still takes.
    """

    vendor: str
    remaining: Decimal
    state: AccountState = AccountState.ACTIVE
    credit_pack: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    test_mode: bool = False

    @property
    def usable(self) -> bool:
        """True when the account can pay for work now."""
        return self.state in (AccountState.ACTIVE, AccountState.UNKNOWN) and self.remaining > 0

    def as_dict(self) -> dict[str, Any]:
        """Primitive form for XCom and trigger events (``expires_at`` and ``test_mode`` only when set)."""
        entry: dict[str, Any] = {
            "vendor": self.vendor,
            "remaining": str(self.remaining),
            "state": self.state.value,
            "credit_pack": self.credit_pack,
        }
        if self.expires_at is not None:
            entry["expires_at"] = self.expires_at.isoformat()
        if self.test_mode:
            entry["test_mode"] = True
        return entry
