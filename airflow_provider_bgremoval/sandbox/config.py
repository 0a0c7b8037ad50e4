"""Configuration of the vendor sandbox: keys, balances, costs, limits and faults.

Everything can be given as a plain JSON document (``--config file.json`` on the command line, or a
``dict`` to :func:`~airflow_provider_bgremoval.sandbox.testing.run_sandbox`). The settings are
pydantic dataclasses: values are validated and converted on load (numeric text is accepted), unknown
keys are an error so that typos do not silently configure nothing, and every mistake is a
:class:`ConfigError` naming the setting. ``TypeAdapter(SandboxConfig).json_schema()`` describes the
typed form (the JSON form also takes the shorthands of :meth:`FaultConfig.from_dict` and
:meth:`SandboxConfig.from_dict`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

VENDORS: tuple[str, ...] = ("pixelcut", "pixian", "poof")

#: Default credentials. They are sandbox-only values, never real vendor keys.
DEFAULT_PIXELCUT_KEY = "sk_sandbox_pixelcut_key"
DEFAULT_PIXIAN_ID = "px_sandbox_id"
DEFAULT_PIXIAN_SECRET = "px_sandbox_secret"
DEFAULT_POOF_KEY = "pk_sandbox_poof_key"
DEFAULT_BALANCE = Decimal(1000)

FaultKind = Literal[
    "error",
    "rate_limited",
    "slow",
    "drop_before_headers",
    "drop_after_processing",
    "drop_mid_body",
    "truncated_body",
    "non_image_body",
    "empty_body",
]
#: Names of the fault kinds a fault rule may ask for (see :mod:`.faults`).
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
#: The keys of one fault rule that the one-rule shorthand of :meth:`FaultConfig.from_dict` takes.
_RULE_SHORTHAND_KEYS = ("rate", "next", "requests", "status", "statuses", "from_s", "until_s")
#: The keys that choose which requests a rule applies to (a rule naming none applies to every request).
_SELECTOR_KEYS = frozenset({"rate", "next", "requests"})
_UNKNOWN_KEY_ERRORS = frozenset({"unexpected_keyword_argument", "extra_forbidden"})
_SETTINGS = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class ConfigError(ValueError):
    """Raised for an invalid sandbox configuration or admin request."""


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    return str(value).strip() if isinstance(value, str) else value


#: A non-negative amount of credits (a JSON number or numeric text).
Credits = Annotated[Decimal, Field(ge=0, allow_inf_nan=False), BeforeValidator(_not_a_boolean)]


def _validated(model: Any, data: Any, what: str) -> Any:
    """``data`` validated as ``model``; a mistake is a :class:`ConfigError` naming the setting."""
    try:
        return TypeAdapter(model).validate_python(data)
    except ValidationError as exc:
        detail = exc.errors(include_url=False)[0]
        path = ".".join(str(part) for part in detail["loc"] if part != "[key]")
        if detail["type"] in _UNKNOWN_KEY_ERRORS:
            raise ConfigError(f"unknown {what} settings: {path}") from None
        cause = detail.get("ctx", {}).get("error")
        message = str(cause) if isinstance(cause, ValueError) else str(detail["msg"])
        raise ConfigError(f"{path}: {message}" if path else message) from None


def to_decimal(value: Any, name: str) -> Decimal:
    """Convert a JSON number or numeric string into a non-negative :class:`~decimal.Decimal`.

    :param value: the value to convert
    :param name: the setting's name, used in the error message
    """
    try:
        number: Decimal = TypeAdapter(Credits).validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}") from exc
    return number


@dataclass(config=_SETTINGS)
class KeyConfig:
    """One API key (or Pixian API id) and its starting account state.

    :param key: the API key (Pixelcut, Poof) or the API id (Pixian)
    :param credits: the starting balance
    :param secret: the Pixian API secret (ignored for other vendors)
    :param state: the Pixian account state, ``active`` or ``dormant``
    """

    key: str
    credits: Credits = DEFAULT_BALANCE
    secret: str | None = None
    state: Literal["active", "dormant"] = "active"


def _fault_kind(value: Any) -> Any:
    if value not in FAULT_KINDS:
        raise ValueError(f"unknown fault {value!r}; expected one of {', '.join(FAULT_KINDS)}")
    return value


HttpErrorStatus = Annotated[int, Field(ge=400, le=599)]


@dataclass(config=_SETTINGS)
class FaultRule:
    """One fault and the requests it applies to.

    A rule is chosen for a request when the request's ordinal (1-based, per vendor, counted since
    the faults were last set) is in ``requests``, or while ``next`` is positive (it is decremented),
    or with probability ``rate`` drawn from the vendor's seeded random generator.

    A **time window** (``from_s``/``until_s``, seconds of the sandbox clock since the faults were
    set) confines the rule: outside it the rule never applies (``next`` is not used up, the random
    draws still happen so the sequence stays seeded). A rule with a window and no ``rate``/``next``/
    ``requests`` applies to every request inside it: ``{"fault": "error", "status": 503,
    "until_s": 20}`` is a 20-second outage from the moment it is set. The window follows the sandbox
    clock, so ``advance_clock`` ends (or starts) it exactly, without waiting.

    :param fault: one of :data:`FAULT_KINDS`
    :param rate: probability 0..1 of applying the fault to any request
    :param next: apply to the next N requests
    :param requests: apply to these request ordinals
    :param statuses: for ``error``: the HTTP error statuses (400..599) to choose from (seeded choice)
    :param from_s: the window opens this many seconds after the faults were set (default 0)
    :param until_s: the window closes this many seconds after the faults were set (``None``: never)
    """

    fault: Annotated[FaultKind, BeforeValidator(_fault_kind)]
    rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    next: int = 0
    requests: list[int] = field(default_factory=list)
    statuses: Annotated[list[HttpErrorStatus], Field(min_length=1)] = field(
        default_factory=lambda: [500, 502, 503]
    )
    from_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    until_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        """``status`` is the one-status form of ``statuses`` (which wins when both are given); a
        window without a selector applies to every request in it (``rate`` 1)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if "status" in data:
            data.setdefault("statuses", [data.pop("status")])
        windowed = data.get("from_s") is not None or data.get("until_s") is not None
        if windowed and not _SELECTOR_KEYS & set(data):
            data["rate"] = 1.0
        return data

    @model_validator(mode="after")
    def _window_order(self) -> FaultRule:
        if self.until_s is not None and self.until_s <= self.from_s:
            raise ValueError(f"until_s ({self.until_s}) must be after from_s ({self.from_s})")
        return self

    def in_window(self, elapsed: float) -> bool:
        """Return whether the rule's window holds ``elapsed`` seconds since the faults were set.

        :param elapsed: sandbox-clock seconds since the faults were set
        """
        return self.from_s <= elapsed and (self.until_s is None or elapsed < self.until_s)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from its JSON form.

        :param data: ``{"fault": ..., "rate"|"next"|"requests": ..., "statuses"|"status": ...}``
        """
        rule: FaultRule = _validated(cls, data, "fault rule")
        return rule

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of this rule."""
        return asdict(self)


def _apply_to(value: Any) -> Any:
    kinds = [value] if isinstance(value, str) else value
    return ["process", "account"] if isinstance(kinds, list) and "all" in kinds else kinds


@dataclass(config=_SETTINGS)
class FaultConfig:
    """Operational behaviour of one vendor: latency, limits and injected faults.

    :param latency_ms: fixed latency added to every request (an ``asyncio.sleep``)
    :param jitter_ms: extra uniformly distributed latency 0..jitter_ms (seeded)
    :param rate_limit_rps: at most this many requests per second are accepted; others get 429 (counted
        over a sliding one-second window of the accepted requests; rejected ones do not count)
    :param rate_limit_burst: with ``rate_limit_rps``: a token bucket of this many requests, refilled at
        ``rate_limit_rps``, instead of the sliding window (``None``: the window)
    :param max_concurrency: at most this many requests in flight; others get 429
    :param retry_after: ``Retry-After`` seconds sent with 429 answers, as whole delta-seconds (a
        fraction rounds up; ``None``: no header, as the vendors document)
    :param retry_after_format: ``seconds`` (delta-seconds) or ``http-date`` (the time to come back,
        RFC 9110's other form)
    :param rules: fault rules, tried in order; the first that applies wins
    :param slow_seconds: how long a ``slow`` fault stalls before answering
    :param auth_revoked: answer every request as if the key had been revoked
    :param result_url_status: if set, result URLs (Pixelcut) answer with this status
    :param exhaust_after: after this many more successful charged requests the key's balance
        drops to 0
    :param apply_to: which endpoint kinds latency, limits and fault rules apply to:
        ``process`` (billed calls) and/or ``account`` (balance endpoints); ``all`` is both
    :param seed: seed of this vendor's random generator (default: the sandbox seed)
    """

    latency_ms: Annotated[float, Field(ge=0)] = 0.0
    jitter_ms: Annotated[float, Field(ge=0)] = 0.0
    rate_limit_rps: float | None = None
    rate_limit_burst: Annotated[float, Field(ge=1)] | None = None
    max_concurrency: int | None = None
    retry_after: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    retry_after_format: Literal["seconds", "http-date"] = "seconds"
    rules: list[FaultRule] = field(default_factory=list)
    slow_seconds: Annotated[float, Field(ge=0)] = 30.0
    auth_revoked: bool = False
    result_url_status: int | None = None
    exhaust_after: int | None = None
    apply_to: Annotated[list[Literal["process", "account"]], BeforeValidator(_apply_to)] = field(
        default_factory=lambda: ["process"]
    )
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _rule_shorthands(cls, data: Any) -> Any:
        """``error_rate`` (+ ``error_statuses``) and ``fault`` (+ its rule keys) each add one rule."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        rules = list(data.pop("rules", []))
        if "error_rate" in data:
            error_rule = {"fault": "error", "rate": data.pop("error_rate")}
            if "error_statuses" in data:
                error_rule["statuses"] = data.pop("error_statuses")
            rules.append(error_rule)
        if "fault" in data:
            single = {"fault": data.pop("fault")}
            single.update({name: data.pop(name) for name in _RULE_SHORTHAND_KEYS if name in data})
            if not _SELECTOR_KEYS & set(single):
                single["rate"] = 1.0
            rules.append(single)
        return {**data, "rules": rules}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build the fault settings of one vendor from their JSON form.

        Besides the attributes, two shorthands are accepted: ``error_rate`` (with optional
        ``error_statuses``) adds an ``error`` rule, and ``fault`` (with ``rate``/``next``/
        ``requests``/``status`` and a window ``from_s``/``until_s``) adds one rule of that kind.

        :param data: the settings
        """
        config: FaultConfig = _validated(cls, data, "fault")
        return config

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of these settings."""
        return asdict(self)


@dataclass(config=_SETTINGS)
class Costs:
    """The cost table (credits charged per successful call).

    :param pixelcut_remove_background: Pixelcut remove-background base cost (undocumented; 1)
    :param pixelcut_shadow: Pixelcut AI-shadow surcharge (documented: +3)
    :param pixelcut_generate_background: Pixelcut generate-background cost (undocumented; 1)
    :param pixian_per_image: Pixian cost per production image (undocumented; may be fractional)
    :param poof_per_image: Poof cost per successful ``/remove`` (documented: 1)
    """

    pixelcut_remove_background: Credits = Decimal(1)
    pixelcut_shadow: Credits = Decimal(3)
    pixelcut_generate_background: Credits = Decimal(1)
    pixian_per_image: Credits = Decimal(1)
    poof_per_image: Credits = Decimal(1)

    def to_dict(self) -> dict[str, float]:
        """Return the JSON form of the cost table."""
        return {name: float(value) for name, value in asdict(self).items()}


#: The settings :meth:`SandboxConfig.update` changes at run time (``POST /_sandbox/settings``).
RUNTIME_SETTINGS = (
    "result_ttl_seconds",
    "fetch_timeout_seconds",
    "allow_private_urls",
    "pixelcut_credits_type",
    "poof_crop_padding",
    "costs",
)

_PADDING_VALUE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(%?)$")


def parse_padding(value: str) -> tuple[float, float]:
    """Parse a Poof (generation B) ``padding``: the fractions of the subject's width and height.

    One value for both axes or ``h,v``, each a fraction (``0.1``) or a percentage (``10%``); ``0``
    is a tight crop.

    :param value: the raw value, e.g. ``10%``, ``0.25`` or ``10%,7.5%``
    :raises ValueError: for anything else (a negative value, more than two values, no number)
    """
    parts = [part.strip() for part in value.split(",")]
    matches = [_PADDING_VALUE.match(part) for part in parts]
    if len(parts) > 2 or not all(matches):
        raise ValueError(f"padding must be a fraction (0.1) or a percentage (10%), or h,v; got {value!r}")
    fractions = [float(m.group(1)) / (100 if m.group(2) else 1) for m in matches if m]
    return fractions[0], fractions[-1]


def _padding(value: Any) -> Any:
    if isinstance(value, str):
        parse_padding(value)
    return value


def _key_entries(value: Any) -> Any:
    """``{"key": 50}`` or ``{"key": {"credits", "secret", "state"}}`` -> a list of key settings."""
    if not isinstance(value, Mapping):
        return value
    return [
        {**entry, "key": key} if isinstance(entry, Mapping) else {"key": key, "credits": entry}
        for key, entry in value.items()
    ]


def _default_keys() -> dict[str, list[KeyConfig]]:
    return {
        "pixelcut": [KeyConfig(DEFAULT_PIXELCUT_KEY)],
        "pixian": [KeyConfig(DEFAULT_PIXIAN_ID, secret=DEFAULT_PIXIAN_SECRET)],
        "poof": [KeyConfig(DEFAULT_POOF_KEY)],
    }


def _vendor(value: Any) -> Any:
    if value not in VENDORS:
        raise ValueError(f"unknown vendor {value!r}; expected one of {', '.join(VENDORS)}")
    return value


#: A vendor's name, as the keys of ``keys`` and ``faults``.
Vendor = Annotated[str, BeforeValidator(_vendor)]


def _base_url(value: Any) -> Any:
    return value.rstrip("/") if isinstance(value, str) else value


def use_before_time(value: str) -> datetime:
    """Parse Pixian's ``useBefore`` (ISO 8601; a time without an offset is UTC).

    :param value: e.g. ``2099-12-31T00:00:00Z``
    :raises ValueError: when it is no ISO 8601 date or time
    """
    when = datetime.fromisoformat(value.strip())
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _use_before(value: Any) -> Any:
    if isinstance(value, str):
        use_before_time(value)
    return value


@dataclass(config=_SETTINGS)
class SandboxConfig:
    """Complete sandbox configuration.

    :param seed: seed of the fault random generators (per vendor: seed + vendor index)
    :param keys: per vendor, the accepted keys with their starting balances (vendors not named
        keep their default key)
    :param costs: the cost table
    :param faults: per vendor, latency/limits/faults at start-up
    :param result_ttl_seconds: lifetime of Pixelcut ``result_url`` links (documented: 1 hour)
    :param public_base_url: base URL used in ``result_url`` links (default: from the request)
    :param pixelcut_credits_type: ``number`` (the documented example) or ``string`` (the
        documented schema) for ``credits_remaining``
    :param fetch_timeout_seconds: timeout when the sandbox fetches ``image_url`` inputs
    :param allow_private_urls: whether ``image_url`` may point at loopback/private hosts (on by
        default: tests point it at a local fake-gcs-server)
    :param poof_plan: the plan name reported by Poof ``GET /v1/me``
    :param poof_crop_padding: the ``padding`` of a Poof crop whose request sends none (generation B
        documents ``10%``; ``0`` gives generation A's tight crop)
    :param pixian_credit_pack: the ``creditPack`` reported by Pixian ``GET /api/v2/account``
    :param pixian_use_before: the ``useBefore`` reported by Pixian (ISO 8601): the pack goes
        ``dormant`` when the sandbox's date (the wall clock moved by ``advance_clock``) reaches it
    """

    seed: int = 0
    keys: dict[Vendor, Annotated[list[KeyConfig], BeforeValidator(_key_entries)]] = field(
        default_factory=dict
    )
    costs: Costs = field(default_factory=Costs)
    faults: dict[Vendor, FaultConfig] = field(default_factory=dict)
    result_ttl_seconds: float = 3600.0
    public_base_url: Annotated[str | None, BeforeValidator(_base_url)] = None
    pixelcut_credits_type: Literal["number", "string"] = "number"
    fetch_timeout_seconds: float = 15.0
    allow_private_urls: bool = True
    poof_plan: str = "Pro"
    poof_crop_padding: Annotated[str, BeforeValidator(_padding)] = "10%"
    pixian_credit_pack: str = "sandbox"
    pixian_use_before: Annotated[str, BeforeValidator(_use_before)] = "2099-12-31T00:00:00Z"

    def __post_init__(self) -> None:
        for vendor, entries in _default_keys().items():
            self.keys.setdefault(vendor, entries)
            self.faults.setdefault(vendor, FaultConfig())
        for entry in self.keys["pixian"]:
            if entry.secret is None:
                raise ConfigError(f"pixian key {entry.key!r} needs a secret")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxConfig:
        """Build a configuration from its JSON form.

        Example::

            {
              "seed": 7,
              "result_ttl_seconds": 3600,
              "pixelcut_credits_type": "string",
              "keys": {
                "pixelcut": {"sk_live_like": 50},
                "pixian": {"my_id": {"secret": "my_secret", "credits": 12.5, "state": "active"}},
                "poof": {"pk_abc": {"credits": 3}}
              },
              "costs": {"pixian_per_image": 0.25},
              "faults": {"poof": {"latency_ms": 200, "error_rate": 0.1}}
            }

        :param data: the configuration
        """
        config: SandboxConfig = _validated(cls, data, "configuration")
        return config

    def update(self, settings: Mapping[str, Any]) -> None:
        """Change the run-time settings (:data:`RUNTIME_SETTINGS`), validated as :meth:`from_dict` does.

        :param settings: the settings to change; ``costs`` may name only some of the costs
        """
        unknown = sorted(set(settings) - set(RUNTIME_SETTINGS))
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(unknown)}")
        current = {name: getattr(self, name) for name in RUNTIME_SETTINGS}
        costs = {**asdict(self.costs), **settings.get("costs", {})}
        changed = SandboxConfig.from_dict({**current, **settings, "costs": costs})
        for name in RUNTIME_SETTINGS:
            setattr(self, name, getattr(changed, name))

    @classmethod
    def from_file(cls, path: str | Path) -> SandboxConfig:
        """Read a JSON configuration file.

        :param path: the file
        """
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
