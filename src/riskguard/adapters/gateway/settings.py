"""The gateway's identity and rate-limit settings, read from ``RISKGUARD_*`` variables.

Self-contained beside :class:`riskguard.settings.Settings` (same prefix, same style, the same
``RISKGUARD_ENV``/``RISKGUARD_REDIS_URL``/``RISKGUARD_REDIS_PREFIX`` variables) so that the two
can be merged. :func:`build_verifier` and :func:`build_rate_limiter` turn them into adapters;
both fail closed: no verifier without a key source, an issuer and an audience.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from riskguard.adapters.gateway.jwks import JwksCache, check_jwks_url
from riskguard.adapters.gateway.jwt import (
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    MAX_LEEWAY_S,
    JwtVerifier,
    KeySet,
    KeySetError,
    KeySource,
    StaticKeys,
    check_algorithms,
)
from riskguard.adapters.gateway.ratelimit import (
    MemoryRateLimiter,
    RateLimit,
    RateLimiter,
    RedisRateLimiter,
)
from riskguard.settings import SettingsError


def _split(v: Any) -> Any:
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    return v


class GatewaySettings(BaseSettings):
    """JWT verification and rate limiting (see docs/gateway.md for each variable)."""

    model_config = SettingsConfigDict(env_prefix="RISKGUARD_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "development"
    jwt_jwks_url: str | None = None
    jwt_keys_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: Annotated[list[str], NoDecode] = Field(default_factory=list)
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS)
    )
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=MAX_LEEWAY_S)
    jwt_max_token_bytes: int = Field(default=8192, ge=1024, le=65_536)
    jwt_cache_size: int = Field(default=4096, ge=0, le=1_000_000)
    jwt_jwks_ttl_s: float = Field(default=300.0, gt=0, le=86_400)
    jwt_jwks_refetch_interval_s: float = Field(default=30.0, ge=1, le=3600)
    jwt_jwks_max_stale_s: float = Field(default=86_400.0, gt=0, le=7 * 86_400)
    jwt_jwks_timeout_s: float = Field(default=2.0, gt=0, le=30)
    jwt_jwks_max_bytes: int = Field(default=256 * 1024, ge=1024, le=4 * 1024 * 1024)
    ratelimit_backend: Literal["memory", "redis"] = "memory"
    ratelimit_rate_per_s: float = Field(default=100.0, gt=0, le=1_000_000)
    ratelimit_burst: int = Field(default=200, ge=1, le=1_000_000)
    ratelimit_max_keys: int = Field(default=100_000, ge=1, le=10_000_000)
    ratelimit_timeout_s: float = Field(default=0.05, gt=0, le=5)
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="rg", pattern=r"^[A-Za-z0-9_.-]{1,32}$")

    @field_validator("jwt_audience", "jwt_algorithms", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _split(v)

    @field_validator("jwt_algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        check_algorithms(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if self.jwt_jwks_url and self.jwt_keys_file:
            raise ValueError("set RISKGUARD_JWT_JWKS_URL or RISKGUARD_JWT_KEYS_FILE, not both")
        if self.jwt_jwks_url:
            check_jwks_url(self.jwt_jwks_url, allow_http_loopback=self.env == "development")
            if set(self.jwt_algorithms) & set(HMAC_ALGORITHMS):
                raise ValueError(
                    "HS* algorithms need a symmetric key in RISKGUARD_JWT_KEYS_FILE; "
                    "secret keys are never fetched from a JWKS URL"
                )
        if self.identity_configured and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("RISKGUARD_JWT_ISSUER and RISKGUARD_JWT_AUDIENCE are required")
        if self.jwt_jwks_ttl_s > self.jwt_jwks_max_stale_s:
            raise ValueError("RISKGUARD_JWT_JWKS_TTL_S exceeds RISKGUARD_JWT_JWKS_MAX_STALE_S")
        if self.ratelimit_backend == "redis" and self.redis_url is None:
            raise ValueError("RISKGUARD_RATELIMIT_BACKEND=redis needs RISKGUARD_REDIS_URL")
        RateLimit(self.ratelimit_rate_per_s, self.ratelimit_burst)  # raises on an impossible pair
        return self

    @property
    def identity_configured(self) -> bool:
        return bool(self.jwt_jwks_url or self.jwt_keys_file)

    @property
    def rate_limit(self) -> RateLimit:
        """The default limit of every (service, route)."""
        return RateLimit(self.ratelimit_rate_per_s, self.ratelimit_burst)


def load_gateway_settings(**overrides: Any) -> GatewaySettings:
    """Settings from the environment (and ``overrides``); SettingsError names what is wrong."""
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            name = f"RISKGUARD_{loc.split('.')[0].upper()}" if loc else "settings"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{name}: {msg}" if loc else msg)
        raise SettingsError("; ".join(problems)) from None


def build_key_source(settings: GatewaySettings) -> KeySource:
    """The JWKS cache or the static key file of ``settings`` (the file is read now)."""
    if settings.jwt_jwks_url:
        return JwksCache(
            settings.jwt_jwks_url,
            algorithms=settings.jwt_algorithms,
            ttl_s=settings.jwt_jwks_ttl_s,
            refetch_interval_s=settings.jwt_jwks_refetch_interval_s,
            max_stale_s=settings.jwt_jwks_max_stale_s,
            timeout_s=settings.jwt_jwks_timeout_s,
            max_bytes=settings.jwt_jwks_max_bytes,
            allow_http_loopback=settings.env == "development",
        )
    if settings.jwt_keys_file:
        symmetric = bool(set(settings.jwt_algorithms) & set(HMAC_ALGORITHMS))
        try:
            keys = KeySet.from_file(
                settings.jwt_keys_file,
                algorithms=settings.jwt_algorithms,
                allow_symmetric=symmetric,
            )
            return StaticKeys(keys)
        except KeySetError as exc:
            raise SettingsError(f"RISKGUARD_JWT_KEYS_FILE: {exc}") from None
    raise SettingsError(
        "the gateway needs RISKGUARD_JWT_JWKS_URL or RISKGUARD_JWT_KEYS_FILE "
        "(and RISKGUARD_JWT_ISSUER, RISKGUARD_JWT_AUDIENCE)"
    )


def build_verifier(settings: GatewaySettings) -> JwtVerifier:
    keys = build_key_source(settings)
    if not settings.jwt_issuer:  # the settings refuse this already; kept for the type checker
        raise SettingsError("RISKGUARD_JWT_ISSUER is required")
    return JwtVerifier(
        keys,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        algorithms=settings.jwt_algorithms,
        leeway_s=settings.jwt_leeway_s,
        max_token_bytes=settings.jwt_max_token_bytes,
        cache_size=settings.jwt_cache_size,
    )


def build_rate_limiter(settings: GatewaySettings) -> RateLimiter:
    if settings.ratelimit_backend == "redis" and settings.redis_url is not None:
        return RedisRateLimiter.from_url(
            settings.redis_url.get_secret_value(),
            prefix=settings.redis_prefix,
            timeout_s=settings.ratelimit_timeout_s,
        )
    return MemoryRateLimiter(max_keys=settings.ratelimit_max_keys)
