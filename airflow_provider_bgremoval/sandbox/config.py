"""Configuration of the vendor sandbox: keys, balances, costs, limits and faults.

Everything can be given as a plain JSON document (``--config file.json`` on the command line, or a
``dict`` to :func:`~airflow_provider_bgremoval.sandbox.testing.run_sandbox`). Unknown keys are an
error so that typos do not silently configure nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

VENDORS: tuple[str, ...] = ("pixelcut", "pixian", "poof")

#: Default credentials. They are sandbox-only values, never real vendor keys.
DEFAULT_PIXELCUT_KEY = "sk_sandbox_pixelcut_key"
DEFAULT_PIXIAN_ID = "px_sandbox_id"
DEFAULT_PIXIAN_SECRET = "px_sandbox_secret"
DEFAULT_POOF_KEY = "pk_sandbox_poof_key"
DEFAULT_BALANCE = Decimal(1000)

#: Names of the fault kinds a fault rule may ask for (see :mod:`.faults`).
FAULT_KINDS: tuple[str, ...] = (
    "error",
    "rate_limited",
    "slow",
    "drop_before_headers",
    "drop_after_processing",
    "drop_mid_body",
    "truncated_body",
    "non_image_body",
    "empty_body",
)


class ConfigError(ValueError):
    """Raised for an invalid sandbox configuration or admin request."""


def to_decimal(value: Any, name: str) -> Decimal:
    """Convert a JSON number or numeric string into a non-negative :class:`~decimal.Decimal`.

    :param value: the value to convert
    :param name: the setting's name, used in the error message
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number")
    try:
        result = Decimal(str(value))
    except Exception as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if not result.is_finite() or result < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return result


@dataclass
class KeyConfig:
    """One API key (or Pixian API id) and its starting account state.

    :param key: the API key (Pixelcut, Poof) or the API id (Pixian)
    :param credits: the starting balance
    :param secret: the Pixian API secret (ignored for other vendors)
    :param state: the Pixian account state, ``active`` or ``dormant``
    """

    key: str
    credits: Decimal = DEFAULT_BALANCE
    secret: str | None = None
    state: str = "active"


@dataclass
class FaultRule:
    """One fault and the requests it applies to.

    A rule is chosen for a request when the request's ordinal (1-based, per vendor, counted since
    the faults were last set) is in ``requests``, or while ``next`` is positive (it is decremented),
    or with probability ``rate`` drawn from the vendor's seeded random generator.

    :param fault: one of :data:`FAULT_KINDS`
    :param rate: probability 0..1 of applying the fault to any request
    :param next: apply to the next N requests
    :param requests: apply to these request ordinals
    :param statuses: for ``error``: the statuses to choose from (seeded choice)
    """

    fault: str
    rate: float = 0.0
    next: int = 0
    requests: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=lambda: [500, 502, 503])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        """Build a rule from its JSON form.

        :param data: ``{"fault": ..., "rate"|"next"|"requests": ..., "statuses"|"status": ...}``
        """
        data = dict(data)
        fault = data.pop("fault", None)
        if fault not in FAULT_KINDS:
            raise ConfigError(f"unknown fault {fault!r}; expected one of {', '.join(FAULT_KINDS)}")
        rule = cls(fault=str(fault))
        if "rate" in data:
            rule.rate = float(data.pop("rate"))
            if not 0.0 <= rule.rate <= 1.0:
                raise ConfigError("rate must be within 0..1")
        if "next" in data:
            rule.next = int(data.pop("next"))
        if "requests" in data:
            rule.requests = [int(n) for n in data.pop("requests")]
        if "status" in data:
            rule.statuses = [int(data.pop("status"))]
        if "statuses" in data:
            rule.statuses = [int(s) for s in data.pop("statuses")]
        if not rule.statuses or any(not 400 <= s <= 599 for s in rule.statuses):
            raise ConfigError("statuses must be HTTP error statuses (400..599)")
        if data:
            raise ConfigError(f"unknown fault rule settings: {', '.join(sorted(data))}")
        return rule

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of this rule."""
        return {
            "fault": self.fault,
            "rate": self.rate,
            "next": self.next,
            "requests": list(self.requests),
            "statuses": list(self.statuses),
        }


@dataclass
class FaultConfig:
    """Operational behaviour of one vendor: latency, limits and injected faults.

    :param latency_ms: fixed latency added to every request (an ``asyncio.sleep``)
    :param jitter_ms: extra uniformly distributed latency 0..jitter_ms (seeded)
    :param rate_limit_rps: at most this many requests per second are accepted; others get 429
    :param max_concurrency: at most this many requests in flight; others get 429
    :param retry_after: ``Retry-After`` seconds sent with 429 answers (``None``: no header, as the
        vendors document)
    :param rules: fault rules, tried in order; the first that applies wins
    :param slow_seconds: how long a ``slow`` fault stalls before answering
    :param auth_revoked: answer every request as if the key had been revoked
    :param result_url_status: if set, result URLs (Pixelcut) answer with this status
    :param exhaust_after: after this many more successful charged requests the key's balance
        drops to 0
    :param apply_to: which endpoint kinds latency, limits and fault rules apply to:
        ``process`` (billed calls) and/or ``account`` (balance endpoints)
    :param seed: seed of this vendor's random generator (default: the sandbox seed)
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit_rps: float | None = None
    max_concurrency: int | None = None
    retry_after: float | None = None
    rules: list[FaultRule] = field(default_factory=list)
    slow_seconds: float = 30.0
    auth_revoked: bool = False
    result_url_status: int | None = None
    exhaust_after: int | None = None
    apply_to: list[str] = field(default_factory=lambda: ["process"])
    seed: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultConfig:
        """Build the fault settings of one vendor from their JSON form.

        Besides the attributes, two shorthands are accepted: ``error_rate`` (with optional
        ``error_statuses``) adds an ``error`` rule, and ``fault`` (with ``rate``/``next``/
        ``requests``/``status``) adds one rule of that kind.

        :param data: the settings
        """
        data = dict(data)
        cfg = cls()
        for name in ("latency_ms", "jitter_ms", "slow_seconds"):
            if name in data:
                setattr(cfg, name, float(data.pop(name)))
        for name in ("rate_limit_rps", "retry_after"):
            if name in data:
                value = data.pop(name)
                setattr(cfg, name, None if value is None else float(value))
        for name in ("max_concurrency", "result_url_status", "exhaust_after", "seed"):
            if name in data:
                value = data.pop(name)
                setattr(cfg, name, None if value is None else int(value))
        if "auth_revoked" in data:
            cfg.auth_revoked = bool(data.pop("auth_revoked"))
        if "apply_to" in data:
            apply_to = data.pop("apply_to")
            apply_to = [apply_to] if isinstance(apply_to, str) else list(apply_to)
            if "all" in apply_to:
                apply_to = ["process", "account"]
            if any(kind not in ("process", "account") for kind in apply_to):
                raise ConfigError("apply_to items must be 'process', 'account' or 'all'")
            cfg.apply_to = apply_to
        cfg.rules = [FaultRule.from_dict(rule) for rule in data.pop("rules", [])]
        if "error_rate" in data:
            error_rule: dict[str, Any] = {"fault": "error", "rate": data.pop("error_rate")}
            if "error_statuses" in data:
                error_rule["statuses"] = data.pop("error_statuses")
            cfg.rules.append(FaultRule.from_dict(error_rule))
        if "fault" in data:
            single = {"fault": data.pop("fault")}
            for name in ("rate", "next", "requests", "status", "statuses"):
                if name in data:
                    single[name] = data.pop(name)
            if not any(name in single for name in ("rate", "next", "requests")):
                single["rate"] = 1.0
            cfg.rules.append(FaultRule.from_dict(single))
        if data:
            raise ConfigError(f"unknown fault settings: {', '.join(sorted(data))}")
        if cfg.latency_ms < 0 or cfg.jitter_ms < 0 or cfg.slow_seconds < 0:
            raise ConfigError("latency_ms, jitter_ms and slow_seconds must be >= 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form of these settings."""
        return {
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "rate_limit_rps": self.rate_limit_rps,
            "max_concurrency": self.max_concurrency,
            "retry_after": self.retry_after,
            "rules": [rule.to_dict() for rule in self.rules],
            "slow_seconds": self.slow_seconds,
            "auth_revoked": self.auth_revoked,
            "result_url_status": self.result_url_status,
            "exhaust_after": self.exhaust_after,
            "apply_to": list(self.apply_to),
            "seed": self.seed,
        }


@dataclass
class Costs:
    """The cost table (credits charged per successful call).

    :param pixelcut_remove_background: Pixelcut remove-background base cost (undocumented; 1)
    :param pixelcut_shadow: Pixelcut AI-shadow surcharge (documented: +3)
    :param pixelcut_generate_background: Pixelcut generate-background cost (undocumented; 1)
    :param pixian_per_image: Pixian cost per production image (undocumented; may be fractional)
    :param poof_per_image: Poof cost per successful ``/remove`` (documented: 1)
    """

    pixelcut_remove_background: Decimal = Decimal(1)
    pixelcut_shadow: Decimal = Decimal(3)
    pixelcut_generate_background: Decimal = Decimal(1)
    pixian_per_image: Decimal = Decimal(1)
    poof_per_image: Decimal = Decimal(1)

    def to_dict(self) -> dict[str, float]:
        """Return the JSON form of the cost table."""
        return {name: float(value) for name, value in vars(self).items()}


@dataclass
class SandboxConfig:
    """Complete sandbox configuration.

    :param seed: seed of the fault random generators (per vendor: seed + vendor index)
    :param keys: per vendor, the accepted keys with their starting balances
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
    :param pixian_credit_pack: the ``creditPack`` reported by Pixian ``GET /api/v2/account``
    :param pixian_use_before: the ``useBefore`` reported by Pixian
    """

    seed: int = 0
    keys: dict[str, list[KeyConfig]] = field(default_factory=dict)
    costs: Costs = field(default_factory=Costs)
    faults: dict[str, FaultConfig] = field(default_factory=dict)
    result_ttl_seconds: float = 3600.0
    public_base_url: str | None = None
    pixelcut_credits_type: str = "number"
    fetch_timeout_seconds: float = 15.0
    allow_private_urls: bool = True
    poof_plan: str = "Pro"
    pixian_credit_pack: str = "sandbox"
    pixian_use_before: str = "2099-12-31T00:00:00Z"

    def __post_init__(self) -> None:
        defaults = {
            "pixelcut": [KeyConfig(DEFAULT_PIXELCUT_KEY)],
            "pixian": [KeyConfig(DEFAULT_PIXIAN_ID, secret=DEFAULT_PIXIAN_SECRET)],
            "poof": [KeyConfig(DEFAULT_POOF_KEY)],
        }
        for vendor in VENDORS:
            self.keys.setdefault(vendor, defaults[vendor])
            self.faults.setdefault(vendor, FaultConfig())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxConfig:
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
        data = dict(data)
        cfg = cls()
        simple: dict[str, type] = {
            "seed": int,
            "result_ttl_seconds": float,
            "fetch_timeout_seconds": float,
            "allow_private_urls": bool,
            "poof_plan": str,
            "pixian_credit_pack": str,
            "pixian_use_before": str,
        }
        for name, kind in simple.items():
            if name in data:
                setattr(cfg, name, kind(data.pop(name)))
        if "public_base_url" in data:
            value = data.pop("public_base_url")
            cfg.public_base_url = None if value is None else str(value).rstrip("/")
        if "pixelcut_credits_type" in data:
            cfg.pixelcut_credits_type = str(data.pop("pixelcut_credits_type"))
            if cfg.pixelcut_credits_type not in ("number", "string"):
                raise ConfigError("pixelcut_credits_type must be 'number' or 'string'")
        for vendor, entries in dict(data.pop("keys", {})).items():
            if vendor not in VENDORS:
                raise ConfigError(f"unknown vendor {vendor!r} in keys")
            cfg.keys[vendor] = [parse_key(vendor, key, value) for key, value in dict(entries).items()]
        for name, value in dict(data.pop("costs", {})).items():
            if not hasattr(cfg.costs, name):
                raise ConfigError(f"unknown cost {name!r}")
            setattr(cfg.costs, name, to_decimal(value, name))
        for vendor, settings in dict(data.pop("faults", {})).items():
            if vendor not in VENDORS:
                raise ConfigError(f"unknown vendor {vendor!r} in faults")
            cfg.faults[vendor] = FaultConfig.from_dict(dict(settings))
        if data:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(data))}")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> SandboxConfig:
        """Read a JSON configuration file.

        :param path: the file
        """
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def parse_key(vendor: str, key: str, value: Any) -> KeyConfig:
    """Parse one ``keys`` entry: a bare balance or ``{"credits", "secret", "state"}``.

    :param vendor: the vendor the key belongs to
    :param key: the key (Pixian: the API id)
    :param value: a number, or an object
    """
    if isinstance(value, dict):
        value = dict(value)
        entry = KeyConfig(key=key)
        if "credits" in value:
            entry.credits = to_decimal(value.pop("credits"), f"{vendor}.{key}.credits")
        if "secret" in value:
            entry.secret = str(value.pop("secret"))
        if "state" in value:
            entry.state = str(value.pop("state"))
        if value:
            raise ConfigError(f"unknown key settings: {', '.join(sorted(value))}")
    else:
        entry = KeyConfig(key=key, credits=to_decimal(value, f"{vendor}.{key}"))
    if entry.state not in ("active", "dormant"):
        raise ConfigError("state must be 'active' or 'dormant'")
    if vendor == "pixian" and entry.secret is None:
        raise ConfigError(f"pixian key {key!r} needs a secret")
    return entry
