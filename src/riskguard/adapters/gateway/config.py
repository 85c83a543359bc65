"""The gateway's configuration file (YAML or JSON) and command-line flags.

Identity (``RISKGUARD_JWT_*``), rate-limit defaults (``RISKGUARD_RATELIMIT_*``) and the stores
(``RISKGUARD_DATABASE_URL``, ``RISKGUARD_REDIS_URL``) come from the environment, as for
``riskguard serve``; this file names what only the gateway has: where to listen, the upstream
services and their declared routes, the routes (path prefix → upstream) and the risk policy.

.. code-block:: yaml

    listen: {host: 127.0.0.1, port: 8080}
    upstreams:
      ledger:
        url: http://10.0.0.5:8000
        timeout_s: 10
        openapi: ledger-openapi.json         # declared routes imported from the OpenAPI paths
        routes: ["POST /v1/transfers", "GET /v1/accounts/{id}/balance"]
    routes:
      - {prefix: /ledger, upstream: ledger, strip_prefix: true, timeout_s: 5,
         rate_limit: {rate_per_s: 50, burst: 100}}
    risk: {tenant: gateway, review: block, deployment_claim: deployment}

Relative ``openapi`` paths are read relative to the configuration file. Every problem is
reported at once, each with its place in the file (:class:`GatewayConfigError`).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from riskguard.adapters.gateway.routes import (
    DeclaredRoute,
    RouteCatalog,
    RouteError,
    load_openapi,
    parse_declared,
)

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Seconds = Annotated[float, Field(gt=0, le=3600)]
# The default pack's sensitive routes (API_SENSITIVE_NEW_ROUTE): kept in step with it.
DEFAULT_SENSITIVE_PREFIXES = ("/admin",)
DEFAULT_SENSITIVE_PARTS = ("/internal/", "/keys", "credential", "export", "/secrets")


class GatewayConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem and where."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Model):
    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


class UpstreamConfig(_Model):
    """One service behind the gateway."""

    url: str
    connect_timeout_s: Seconds = 2.0
    timeout_s: Seconds = 30.0  # default for routes to it: until the response head, and per read
    max_idle: int = Field(default=64, ge=0, le=10_000)  # keep-alive connections kept open
    routes: list[str] = Field(default_factory=list)  # declared: "GET /v1/x/{id}" or "/v1/y"
    openapi: Path | None = None  # declared routes imported from an OpenAPI document (file)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        try:
            parts.port  # noqa: B018 - raises on an invalid port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return v.rstrip("/")

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                parse_declared(text)
            except RouteError as exc:
                raise ValueError(str(exc)) from None
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def base_path(self) -> str:
        """The URL's path, put in front of every forwarded path ("" for none)."""
        return urlsplit(self.url).path.rstrip("/")


class RouteConfig(_Model):
    """A path prefix served by one upstream."""

    prefix: str = Field(pattern=r"^/", max_length=512)
    upstream: Name
    strip_prefix: bool = False
    timeout_s: Seconds | None = None  # default: the upstream's
    rate_limit: RateLimitConfig | None = None  # per calling service; default RISKGUARD_RATELIMIT_*
    name: str | None = Field(default=None, max_length=128)  # rate-limit key and logs (the prefix)

    @property
    def key(self) -> str:
        return self.name or self.prefix


class SensitivePaths(_Model):
    """What the gateway calls a sensitive path: a prefix or a part of it."""

    prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE_PREFIXES))
    contains: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE_PARTS))

    def match(self, path: str) -> bool:
        return path.startswith(tuple(self.prefixes)) or any(p in path for p in self.contains)


class RiskConfig(_Model):
    """How requests are scored and what each outcome does."""

    enabled: bool = True
    tenant: Name = "gateway"  # decisions are recorded under this tenant (created if missing)
    review: Literal["block", "challenge", "allow"] = "block"  # no human waits on a request
    deployment_claim: str = Field(default="deployment", min_length=1, max_length=64)
    undeclared_sensitive: Literal["challenge", "learn"] = "challenge"
    sensitive: SensitivePaths = Field(default_factory=SensitivePaths)
    record: Literal["async", "sync"] = "async"
    record_flush_ms: int = Field(default=20, ge=0, le=1000)  # write-behind records gather this long
    max_pending_records: int = Field(default=10_000, ge=1, le=1_000_000)


class Listen(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class GatewayConfig(_Model):
    """The whole gateway configuration."""

    listen: Listen = Field(default_factory=Listen)
    upstreams: dict[Name, UpstreamConfig]
    routes: list[RouteConfig] = Field(min_length=1)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    service_rate_limit: RateLimitConfig | None = None  # all routes of a calling service together
    forward_authorization: bool = False  # the upstream trusts X-Riskguard-*, not the token
    trusted_proxies: list[str] = Field(default_factory=list)  # CIDRs whose X-Forwarded-* we keep
    max_body_bytes: int | None = Field(default=None, ge=0)  # per request; None: unlimited
    admin_prefix: str = Field(default="/_riskguard", pattern=r"^/[A-Za-z0-9._~/-]+$")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                ipaddress.ip_network(text)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not a network: {exc}") from None
        return v

    @model_validator(mode="after")
    def _routes_name_upstreams(self) -> GatewayConfig:
        for route in self.routes:
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(
                    f"route {route.prefix!r} names upstream {route.upstream!r} (known: {known})"
                )
        prefixes = [r.prefix.rstrip("/") or "/" for r in self.routes]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("two routes have the same prefix")
        if any(p == self.admin_prefix or p.startswith(self.admin_prefix + "/") for p in prefixes):
            raise ValueError(f"a route prefix falls under the admin prefix {self.admin_prefix}")
        return self

    def timeout_for(self, route: RouteConfig) -> float:
        return route.timeout_s or self.upstreams[route.upstream].timeout_s

    def catalogs(self, base_dir: Path | None = None) -> dict[str, RouteCatalog]:
        """Each upstream's declared routes (config + OpenAPI); raises GatewayConfigError."""
        out: dict[str, RouteCatalog] = {}
        for name, upstream in self.upstreams.items():
            try:
                declared: list[DeclaredRoute] = [parse_declared(t) for t in upstream.routes]
                if upstream.openapi is not None:
                    path = upstream.openapi
                    if not path.is_absolute() and base_dir is not None:
                        path = base_dir / path
                    declared.extend(load_openapi(path))
            except RouteError as exc:
                raise GatewayConfigError(f"upstreams.{name}: {exc}") from None
            out[name] = RouteCatalog(declared)
        return out


def _problems(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "(config)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_config(document: Any) -> GatewayConfig:
    """Validate a decoded document; raises GatewayConfigError."""
    if not isinstance(document, dict):
        raise GatewayConfigError("the gateway configuration must be a mapping")
    try:
        return GatewayConfig.model_validate(document)
    except ValidationError as exc:
        raise GatewayConfigError(_problems(exc)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The document of a YAML or JSON configuration file; raises GatewayConfigError."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise GatewayConfigError(f"cannot read {path}: {reason}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise GatewayConfigError(f"{path}: not valid YAML or JSON ({type(exc).__name__})") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise GatewayConfigError(f"{path}: the configuration must be a mapping")
    return document


def apply_flags(
    document: dict[str, Any],
    *,
    host: str | None = None,
    port: int | None = None,
    upstreams: list[str] | None = None,
    routes: list[str] | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    """The document with command-line flags applied over it.

    ``upstreams``: ``NAME=URL``; ``routes``: ``PREFIX=NAME`` (the prefix stripped when written
    ``PREFIX/*=NAME``). Raises GatewayConfigError for a malformed flag.
    """
    out = dict(document)
    if host is not None or port is not None:
        listen = dict(out.get("listen") or {})
        if host is not None:
            listen["host"] = host
        if port is not None:
            listen["port"] = port
        out["listen"] = listen
    if upstreams:
        merged = dict(out.get("upstreams") or {})
        for text in upstreams:
            name, sep, url = text.partition("=")
            if not sep or not name or not url:
                raise GatewayConfigError(f"--upstream {text!r}: expected NAME=URL")
            merged[name] = {**(merged.get(name) or {}), "url": url}
        out["upstreams"] = merged
    if routes:
        listed = list(out.get("routes") or [])
        for text in routes:
            prefix, sep, name = text.partition("=")
            if not sep or not prefix or not name:
                raise GatewayConfigError(f"--route {text!r}: expected PREFIX=UPSTREAM")
            strip = prefix.endswith("/*")
            listed.append(
                {
                    "prefix": prefix.removesuffix("/*") or "/",
                    "upstream": name,
                    "strip_prefix": strip,
                }
            )
        out["routes"] = listed
    if tenant is not None:
        out["risk"] = {**(out.get("risk") or {}), "tenant": tenant}
    return out


def load_config(path: Path | None = None, **flags: Any) -> tuple[GatewayConfig, Path | None]:
    """The configuration of ``path`` (optional) with ``flags`` over it, and the directory that
    relative paths in it are read from."""
    document = read_config_file(path) if path is not None else {}
    config = parse_config(apply_flags(document, **flags))
    return config, (path.parent if path is not None else None)
