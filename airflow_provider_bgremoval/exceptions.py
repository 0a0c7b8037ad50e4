"""The provider's exceptions: one class per kind of failure (see docs/retry-and-errors.md)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._moved import moved_attribute

if TYPE_CHECKING:
    from airflow_provider_bgremoval.retry import CallStats


def safe_excerpt(text: str, limit: int = 300) -> str:
    """Shorten a reply body for an error message (one line, at most ``limit`` characters)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


#: A URL query's parameter value (``?upload_id=…``, ``&X-Goog-Signature=…``).
_QUERY_VALUE = re.compile(r"([?&][\w.~-]+=)[^&#\s'\")\]]+")


def redact_query(text: str) -> str:
    """
    ``text`` with the value of every URL query parameter replaced by ``…``: an error message quoting a
    request's URL may carry a credential in its query (a resumable upload's ``upload_id``, which lets
    anyone holding it write the object; a signed URL's signature), and records and logs are read by many.

    :param text: an error message.
    """
    return _QUERY_VALUE.sub(r"\1…", text)


class _KeywordError(AirflowException):
    """An error whose keyword-only attributes survive pickling (multiprocessing, Airflow's serialisation)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt without __init__ (whose signature differs per class), then given its attributes.
        return (type(self).__new__, (type(self), self.message), self.__dict__.copy())


class BgRemovalError(_KeywordError):
    """
    Base class of every error raised by the provider's vendor clients.

    :param message: human-readable explanation (never contains secrets).
    :param vendor: vendor name (``pixelcut``, ``pixian``, ``poof``) or ``None`` for local errors.
    :param status_code: HTTP status of the vendor reply, if there was one.
    :param code: the vendor's error code (``malformed_image``, ``1006``…) or a local code.
    :param request_id: the vendor's request id, when it sent one.
    :param possibly_charged: whether the vendor may have billed the work (``None``: the class's default).
    """

    #: True when no further call on the same connection can succeed (stop the batch, do not retry).
    fatal_for_batch: bool = False
    #: True when the retry policy may repeat the call.
    retryable: bool = False
    #: True when the vendor may have done (and billed) the work of the attempt that failed like this.
    possibly_charged: bool = False
    #: The outcome of the image call that ended in this error, set by the hook (``None`` outside one).
    call: CallStats | None = None

    def __init__(
        self,
        message: str,
        *,
        vendor: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        possibly_charged: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.vendor = vendor
        self.status_code = status_code  # type: ignore[assignment]  # AirflowException: HTTPStatus
        self.code = code
        self.request_id = request_id
        if possibly_charged is not None:
            self.possibly_charged = possibly_charged

    attempts = moved_attribute(
        "BgRemovalError.attempts", "call.attempts", lambda self: self.call.attempts if self.call else 0
    )
    possibly_charged_attempts = moved_attribute(
        "BgRemovalError.possibly_charged_attempts",
        "call.possibly_charged and .call.billed_reply",
        lambda self: self.call.possibly_charged + int(self.call.billed_reply) if self.call else 0,
    )

    def __str__(self) -> str:
        parts = [str(part) for part in (self.vendor, self.status_code, self.code) if part not in (None, "")]
        return f"[{' '.join(parts)}] {self.message}" if parts else self.message

    def as_dict(self) -> dict[str, object]:
        """Primitive form for manifests and XCom."""
        fields = ("vendor", "status_code", "code", "message", "request_id")
        return {"error_type": type(self).__name__} | {name: getattr(self, name) for name in fields}


class VendorAuthError(BgRemovalError):
    """The vendor refused the credentials (missing, wrong or revoked key). Not retryable."""

    fatal_for_batch = True


class OutOfCreditsError(BgRemovalError):
    """The account has no credits left for this call (or is dormant). Not retryable."""

    fatal_for_batch = True


class RateLimitedError(BgRemovalError):
    """
    The vendor answered 429. Retryable.

    :param retry_after: seconds the vendor asked to wait (``Retry-After``), if it said so.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class TransientVendorError(BgRemovalError):
    """
    A failure that may pass (408, 5xx, network, timeout). Retryable. ``possibly_charged``: a lost reply.

    :param retry_after: seconds a 503's ``Retry-After`` asked to wait (RFC 9110), if it said so.
    """

    retryable = True
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class InputRejectedError(BgRemovalError):
    """
    The image (or an image parameter) cannot be processed: fatal for this image only.

    :param local: True when the provider rejected it before any vendor call (0 credits spent).
    """

    def __init__(self, message: str, *, local: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.local = local


class VendorRequestError(BgRemovalError):
    """Any other 4xx reply: the vendor refused the request and repeating it cannot help."""


class InvalidVendorResponseError(BgRemovalError):
    """A success status whose body is unusable (empty, not the promised image, truncated)."""

    possibly_charged = True


class ResultDownloadError(BgRemovalError):
    """Fetching a result URL failed (expired, 404, too large, not http(s)); the call was billed."""

    possibly_charged = True


class ResultProcessingError(BgRemovalError):
    """A billed call's success reply could not be turned into the output locally; the image fails alone."""


class InvalidOptionError(BgRemovalError, ValueError):
    """
    A user-supplied option is invalid or conflicts with another; raised before any call.

    :param parameter: the name of the offending parameter, as the user wrote it.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"invalid {parameter!r}: {message}", code="invalid_option")
        self.parameter = parameter
