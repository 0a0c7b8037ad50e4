"""A small synchronous client for the sandbox admin API (``/_sandbox/...``)."""

from __future__ import annotations

from typing import Any

import httpx


class SandboxAdmin:
    """Drive a running sandbox: balances, faults, logs, clock.

    Example::

        admin = SandboxAdmin("http://127.0.0.1:8765")
        admin.reset()
        admin.set_balance("pixelcut", 5)
        admin.set_faults("poof", latency_ms=200, error_rate=0.2, error_statuses=[503])
        ...
        assert admin.total_charged("pixelcut") == 5

    :param base_url: the sandbox base URL, e.g. ``http://127.0.0.1:8765``
    :param timeout: HTTP timeout in seconds
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, f"/_sandbox/{path}", **kwargs)
        if response.status_code >= 400:
            raise ValueError(f"sandbox admin {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def health(self) -> bool:
        """Return whether the sandbox answers."""
        try:
            return bool(self._call("GET", "health")["status"] == "ok")
        except httpx.HTTPError:
            return False

    def state(self) -> dict[str, Any]:
        """Return accounts (fingerprints), costs, faults and counters."""
        result: dict[str, Any] = self._call("GET", "state")
        return result

    def reset(self) -> None:
        """Restore start-up balances and faults; clear logs, results and the clock offset."""
        self._call("POST", "reset")

    def set_balance(
        self,
        vendor: str,
        credits: float | None = None,
        key: str | None = None,
        state: str | None = None,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Set a key's balance and/or (Pixian) account state; unknown keys are created.

        :param vendor: ``pixelcut``, ``pixian`` or ``poof``
        :param credits: the new balance (may be fractional)
        :param key: the key (Pixian: the API id); default: the vendor's default sandbox key
        :param state: Pixian ``active`` or ``dormant``
        :param secret: Pixian API secret for a new API id
        :returns: the account (``credits``, ``used``, ``state``, key fingerprint)
        """
        body: dict[str, Any] = {"vendor": vendor, "credits": credits, "key": key, "state": state}
        if secret is not None:
            body["secret"] = secret
        result: dict[str, Any] = self._call("PUT", "balances", json=body)
        return result

    def get_balance(self, vendor: str, key: str | None = None) -> float:
        """Return a key's current balance.

        :param vendor: the vendor
        :param key: the key (default: the vendor's default sandbox key)
        """
        params = {"vendor": vendor, **({"key": key} if key else {})}
        return float(self._call("GET", "balances", params=params)["credits"])

    def account(self, vendor: str, key: str | None = None) -> dict[str, Any]:
        """Return a key's account view (``credits``, ``used``, ``state``, ``key`` fingerprint).

        :param vendor: the vendor
        :param key: the key (default: the vendor's default sandbox key)
        """
        params = {"vendor": vendor, **({"key": key} if key else {})}
        result: dict[str, Any] = self._call("GET", "balances", params=params)
        return result

    def set_spend(self, vendor: str, credits_per_day: float, key: str | None = None) -> dict[str, Any]:
        """Make a key spend ``credits_per_day`` per simulated day: each whole 86,400 s of the sandbox
        clock (:meth:`advance_clock`) lowers its balance by that much (never below 0), without
        charge-log entries.

        :param vendor: the vendor
        :param credits_per_day: the drain (0 stops it)
        :param key: the key (default: the vendor's default sandbox key)
        :returns: the account (``credits``, ``used``, ``spend_per_day``...)
        """
        body: dict[str, Any] = {"vendor": vendor, "credits_per_day": credits_per_day, "key": key}
        result: dict[str, Any] = self._call("PUT", "spend", json=body)
        return result

    def set_faults(self, vendor: str, **faults: Any) -> dict[str, Any]:
        """Replace one vendor's latency, limits and faults.

        Settings (all optional): ``latency_ms``, ``jitter_ms``, ``rate_limit_rps`` (+
        ``rate_limit_burst``), ``max_concurrency``, ``retry_after`` (+ ``retry_after_format``),
        ``error_rate`` + ``error_statuses``, ``fault`` (+
        ``rate`` | ``next`` | ``requests``, ``status``, a time window ``from_s``/``until_s`` in
        sandbox-clock seconds from now), ``rules`` (a list of such dicts),
        ``slow_seconds``, ``auth_revoked``, ``result_url_status``, ``exhaust_after``, ``apply_to``,
        ``seed``. Fault kinds: ``error``, ``rate_limited``, ``slow``, ``drop_before_headers``,
        ``drop_after_processing``, ``drop_mid_body``, ``truncated_body``, ``non_image_body``,
        ``empty_body``.

        :param vendor: the vendor
        :param faults: the settings
        :returns: the vendor's new fault state
        """
        result: dict[str, Any] = self._call("POST", "faults", json={"vendor": vendor, **faults})
        return result

    def outage(
        self, vendor: str, seconds: float | None, *, status: int = 503, after: float = 0.0, **settings: Any
    ) -> dict[str, Any]:
        """Make every billed call of ``vendor`` fail with ``status`` over a window of the sandbox
        clock: from ``after`` seconds from now, for ``seconds`` (``None``: until cleared); then it
        recovers by itself. ``advance_clock`` moves through the window without waiting.

        Replaces the vendor's faults like :meth:`set_faults` (``settings`` are added to the same
        call, e.g. ``latency_ms`` or ``apply_to="all"`` to take the balance endpoint down too).

        :param vendor: the vendor
        :param seconds: how long the outage lasts (``None``: until :meth:`clear_faults`)
        :param status: the HTTP status of every failed call (5xx for an outage)
        :param after: seconds from now until it starts
        :param settings: further fault settings, as :meth:`set_faults` takes them
        :returns: the vendor's new fault state (its rule shows ``from_s``, ``until_s``, ``active``)
        """
        window: dict[str, Any] = {"from_s": after}
        if seconds is not None:
            window["until_s"] = after + seconds
        return self.set_faults(vendor, fault="error", status=status, **window, **settings)

    def fail_next(self, vendor: str, count: int = 1, fault: str = "error", status: int = 500) -> None:
        """Make the vendor's next ``count`` billed requests fail with ``fault``.

        :param vendor: the vendor
        :param count: how many requests
        :param fault: the fault kind
        :param status: the status for ``error``
        """
        self.set_faults(vendor, fault=fault, next=count, status=status)

    def clear_faults(self, vendor: str | None = None) -> None:
        """Remove latency, limits and faults (of one vendor, or all).

        :param vendor: the vendor, or ``None`` for all
        """
        self._call("DELETE", "faults", params={"vendor": vendor} if vendor else None)

    def settings(self, **settings: Any) -> dict[str, Any]:
        """Change run-time settings: ``result_ttl_seconds``, ``pixelcut_credits_type``,
        ``poof_crop_padding``, ``allow_private_urls``, ``fetch_timeout_seconds``, ``costs`` (a dict).

        :param settings: the settings
        """
        result: dict[str, Any] = self._call("POST", "settings", json=settings)
        return result

    def advance_clock(self, seconds: float) -> float:
        """Move the sandbox clock forward (e.g. past a result URL's expiry).

        :param seconds: how far
        :returns: the new clock offset
        """
        return float(self._call("POST", "clock", json={"advance": seconds})["offset"])

    def charges(self, vendor: str | None = None) -> list[dict[str, Any]]:
        """Return the charge log: ``vendor``, ``key`` (fingerprint), ``endpoint``, ``credits``,
        ``balance_after``, ``request_id``, ``timestamp``.

        :param vendor: only this vendor
        """
        params = {"vendor": vendor} if vendor else None
        result: list[dict[str, Any]] = self._call("GET", "charges", params=params)["charges"]
        return result

    def total_charged(self, vendor: str | None = None) -> float:
        """Return the sum of all charges (of one vendor).

        :param vendor: only this vendor
        """
        params = {"vendor": vendor} if vendor else None
        return float(self._call("GET", "charges", params=params)["total"])

    def requests(self, vendor: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the request log (oldest first): ``vendor``, ``method``, ``endpoint``, ``status``,
        ``fault``, ``key`` (fingerprint), ``charged``, ``duration_ms``, ``params``...

        :param vendor: only this vendor
        :param limit: only the last N entries
        """
        params: dict[str, Any] = {}
        if vendor:
            params["vendor"] = vendor
        if limit:
            params["limit"] = limit
        result: list[dict[str, Any]] = self._call("GET", "requests", params=params)
        return result
