"""Every setting of the service, read from ``RISKGUARD_*`` environment variables.

Development (``RISKGUARD_ENV=development``, the default) runs on the embedded default with no
configuration at all. Production (``RISKGUARD_ENV=production``) fails closed: the service
refuses to start without a secret key, an explicit database URL and an explicit list of trusted
hosts, rather than running with a development default.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from riskguard.engine.events import EVENT_TYPES

DEV_SECRET = "riskguard-development-only-secret"  # refused outside development
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./riskguard.db"


class TypePolicy(BaseModel):
    """The latency budget of one event type and what to answer when a dependency fails it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_ms: float = Field(default=100.0, gt=0, le=60_000)
    on_failure: Literal["allow", "review", "block"] = "allow"

    @property
    def fail_open(self) -> bool:
        return self.on_failure == "allow"


# Payments fail closed to review (a person looks before money moves); logins, sessions and
# internal calls fail open (an outage of the risk store must not lock every user out).
DEFAULT_POLICIES: dict[str, TypePolicy] = {
    "transaction": TypePolicy(budget_ms=100.0, on_failure="review"),
    "login": TypePolicy(budget_ms=100.0, on_failure="allow"),
    "session": TypePolicy(budget_ms=100.0, on_failure="allow"),
    "api_call": TypePolicy(budget_ms=50.0, on_failure="allow"),
}


class SettingsError(ValueError):
    """Settings that cannot be used; the message names the variable."""


class Settings(BaseSettings):
    """The service's configuration (see docs/operations.md for each variable)."""

    model_config = SettingsConfigDict(env_prefix="RISKGUARD_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="rg", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    secret_key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "[::1]", "testserver"]
    )
    behind_tls: bool = False  # send HSTS (set when a TLS-terminating proxy fronts the service)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    policies: Annotated[dict[str, TypePolicy], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_POLICIES)
    )
    ruleset_poll_s: float = Field(default=1.0, gt=0, le=300)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    idempotency_ttl_s: int = Field(default=86_400, ge=60)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    auto_migrate: bool = True
    workers: int = Field(default=1, ge=1, le=64)
    # After start-up, move every object alive then out of the cyclic collector's reach
    # (gc.freeze) and collect the young generation less often: a full collection otherwise
    # walks ~150k start-up objects and stalls the event loop for 60-90 ms (the p99 tail).
    gc_tuning: bool = True
    # What happens after a decision (docs/webhooks.md, docs/alerts.md, docs/audit.md): every
    # decision writes an outbox message in its own transaction; a dispatcher (in each service
    # process unless turned off here, or `riskguard worker`) opens alerts, appends the audit
    # log, delivers webhooks and publishes CloudEvents to Redis Streams / NATS JetStream.
    outbox: bool = True
    model_dir: str = "models"  # the model registry (docs/models.md)
    audit: bool = True  # RISKGUARD_AUDIT_* settings: docs/audit.md
    dispatcher: bool = True
    nats_url: str | None = None
    stream_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    stream_maxlen: int = Field(default=1_000_000, ge=1)

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("policies", mode="before")
    @classmethod
    def _policies(cls, v: Any) -> Any:
        """Accept JSON (``{"transaction": {"budget_ms": 80, "on_failure": "block"}}``),
        merged over the defaults."""
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"RISKGUARD_POLICIES is not JSON: {exc.msg}") from None
        if not isinstance(v, dict):
            raise ValueError("must be a JSON object keyed by event type")
        unknown = set(v) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}; expected {EVENT_TYPES}")
        merged: dict[str, Any] = dict(DEFAULT_POLICIES)
        merged.update(v)
        return merged

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        if self.env == "production":
            missing = []
            if self.secret_key is None or len(self.secret_key.get_secret_value()) < 32:
                missing.append("RISKGUARD_SECRET_KEY (at least 32 characters)")
            if "RISKGUARD_DATABASE_URL" not in _env_names():
                missing.append("RISKGUARD_DATABASE_URL")
            if "RISKGUARD_TRUSTED_HOSTS" not in _env_names() or "*" in self.trusted_hosts:
                missing.append("RISKGUARD_TRUSTED_HOSTS (explicit host names, no '*')")
            if missing:
                raise ValueError("production settings are missing: " + "; ".join(missing))
        return self

    @property
    def secret(self) -> bytes:
        """The key that peppers API key hashes (a development default outside production)."""
        value = self.secret_key.get_secret_value() if self.secret_key else DEV_SECRET
        return value.encode()

    def policy(self, event_type: str) -> TypePolicy:
        return self.policies.get(event_type) or DEFAULT_POLICIES[event_type]


def _env_names() -> set[str]:
    import os

    return set(os.environ)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and ``overrides``); SettingsError names what is wrong."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            name = f"RISKGUARD_{loc.split('.')[0].upper()}" if loc else "settings"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{name}: {msg}")
        raise SettingsError("; ".join(problems)) from None
