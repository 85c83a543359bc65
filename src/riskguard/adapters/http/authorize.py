"""``/v1/authorize``: the gateway's checks for proxies that already sit in front of services.

Envoy (``ext_authz`` HTTP service), NGINX (``auth_request``) and Traefik (``ForwardAuth``) ask
before they forward a request; this router answers with the same checks ``riskguard gateway``
makes (``adapters/gateway/gatekeeper.py``: JWT, rate limit, risk decision, recorded like any
other decision): **200** to allow — with ``X-Riskguard-Subject``, ``X-Riskguard-Decision``,
``X-Riskguard-Outcome`` (and ``X-Riskguard-Deployment``) for the proxy to pass upstream — or a
problem: **401** (no or bad token, or a step-up challenge), **403** (blocked), **429**
(``Retry-After``), **503** (no usable keys), **404** when identity is not configured.

The original request is read from what each proxy sends:

- **method**: ``X-Original-Method`` (NGINX, by configuration) or ``X-Forwarded-Method``
  (Traefik); else the ``method`` of a JSON body (``POST /v1/authorize`` called directly); else
  the check request's own method (Envoy keeps it).
- **URI**: ``X-Original-URI`` or ``X-Forwarded-Uri``; else the JSON body's ``uri``; else the
  path after ``/v1/authorize`` plus the query (Envoy's ``path_prefix: /v1/authorize``).
- **host** (→ the target service when no gateway configuration names one): ``X-Original-Host``,
  ``X-Forwarded-Host``, the JSON body's ``host``, else ``Host``.
- **caller address**: the last ``X-Forwarded-For`` entry (the one the proxy added), else
  ``X-Real-IP``, else the connection's peer. **Size**: ``X-Original-Content-Length``.
- **token**: the check request's ``Authorization`` header only (every proxy forwards it).

With ``RISKGUARD_GATEWAY_CONFIG`` naming the gateway's configuration file, its routes decide
the target service, its declared routes and rate limits apply and ``risk`` sets the policy and
the tenant; without it the target is the original host's name and the defaults apply.

Include it with one line in ``create_app``: ``app.include_router(authorize_router)``. Its
lifespan (merged into the app's, after the container has started) builds the checks and closes
them at shutdown.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from riskguard.adapters.gateway.config import GatewayConfig, RiskConfig, load_config
from riskguard.adapters.gateway.gatekeeper import (
    DEPLOYMENT,
    Check,
    Gatekeeper,
    Verdict,
    problem_body,
)
from riskguard.adapters.gateway.ratelimit import RateLimit
from riskguard.adapters.gateway.risk import GatewayRisk, usable_id
from riskguard.adapters.gateway.routes import (
    AmbiguousPath,
    RouteCatalog,
    RouteTable,
    check_path,
)
from riskguard.adapters.http.problems import PROBLEM_JSON, responses
from riskguard.ports import DependencyUnavailable
from riskguard.services.rules import NotFoundError

log = structlog.get_logger("riskguard.authorize")

CONFIG_FILE_ENV = "RISKGUARD_GATEWAY_CONFIG"
PREFIX = "/v1/authorize"
_ANY = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_EMPTY = RouteCatalog()


@dataclass(slots=True)
class _Authorizer:
    """What the router checks with, built at startup."""

    gatekeeper: Gatekeeper | None  # None: identity is not configured
    config: GatewayConfig | None  # the gateway's configuration file, when named
    table: RouteTable | None
    catalogs: dict[str, RouteCatalog]
    default_limit: RateLimit
    closers: list[Any]


async def _build(app: FastAPI) -> _Authorizer:
    from riskguard.adapters.gateway.settings import (
        build_rate_limiter,
        build_verifier,
        load_gateway_settings,
    )

    container = app.state.container
    identity = load_gateway_settings()  # invalid settings fail the start (fail closed)
    path = os.environ.get(CONFIG_FILE_ENV)
    config: GatewayConfig | None = None
    table = None
    catalogs: dict[str, RouteCatalog] = {}
    if path:
        config, base_dir = load_config(Path(path))
        table = RouteTable([(r.prefix, r.strip_prefix) for r in config.routes])
        catalogs = config.catalogs(base_dir)
    policy = config.risk if config is not None else RiskConfig()
    if not identity.identity_configured:
        log.info("authorize_disabled", reason="RISKGUARD_JWT_* not configured")
        return _Authorizer(None, config, table, catalogs, identity.rate_limit, [])
    verifier = build_verifier(identity)
    limiter = build_rate_limiter(identity)
    closers = [getattr(verifier.keys, "aclose", None), getattr(limiter, "close", None)]
    closers = [c for c in closers if c is not None]
    risk = None
    if policy.enabled:
        risk = GatewayRisk(
            config=policy,
            settings=container.settings,
            store=container.store,
            state=container.state,
            engines=container.engines,
            metrics=container.metrics,
        )
        try:
            await risk.ready()
        except (DependencyUnavailable, NotFoundError) as exc:  # the requests retry it
            log.warning("authorize_risk_deferred", reason=type(exc).__name__)
    service_limit = config.service_rate_limit if config is not None else None
    gatekeeper = Gatekeeper(
        verifier=verifier,
        limiter=limiter,
        risk=risk,
        policy=policy,
        service_limit=None
        if service_limit is None
        else RateLimit(service_limit.rate_per_s, service_limit.burst),
    )
    return _Authorizer(gatekeeper, config, table, catalogs, identity.rate_limit, closers)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    authorizer = await _build(app)
    app.state.authorizer = authorizer
    try:
        yield
    finally:
        gatekeeper = authorizer.gatekeeper
        if gatekeeper is not None and gatekeeper.risk is not None:
            await gatekeeper.risk.drain()
        for close in authorizer.closers:
            await close()


authorize_router = APIRouter(tags=["gateway"], lifespan=_lifespan)


def _problem(
    status: int, detail: str | None, request: Request, verdict: Verdict | None = None
) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    body = problem_body(
        status,
        detail,
        request_id=request_id if isinstance(request_id, str) else None,
        decision_id=verdict.decision_id if verdict is not None else None,
        slug=verdict.slug if verdict is not None else None,
    )
    headers = {n.decode(): v.decode("latin-1") for n, v in verdict.headers} if verdict else None
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _header(request: Request, *names: str) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value:
            return value
    return None


def _address(value: str | None) -> str | None:
    """The canonical text of an IP address, or None (headers are the caller's to fill)."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _caller(request: Request) -> str | None:
    """The calling instance: the entry the proxy added last to ``X-Forwarded-For``, else
    ``X-Real-IP``, else the connection's peer."""
    forwarded = request.headers.get("x-forwarded-for")
    client = request.client
    return (
        _address(forwarded.rsplit(",", 1)[-1] if forwarded else None)
        or _address(request.headers.get("x-real-ip"))
        or _address(client.host if client else None)
    )


async def _original(
    request: Request, rest: str | None
) -> tuple[str, str, str | None, dict[str, Any]]:
    """(method, URI, host, JSON body fields) of the request being authorized."""
    fields: dict[str, Any] = {}
    method = _header(request, "x-original-method", "x-forwarded-method")
    uri = _header(request, "x-original-uri", "x-forwarded-uri")
    if method is None and uri is None and request.method == "POST" and rest is None:
        body = await request.body()
        if body:
            try:
                decoded = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ValueError("the body is not JSON") from None
            if not isinstance(decoded, dict):
                raise ValueError("the body must be a JSON object")
            fields = decoded
            method = fields.get("method")
            uri = fields.get("uri")
            if not isinstance(method, str) or not isinstance(uri, str):
                raise ValueError("the body needs 'method' and 'uri' strings")
    if method is None:
        method = request.method
    if uri is None:
        uri = "/" + (rest or "")
        if request.url.query:
            uri += "?" + request.url.query
    host = _header(request, "x-original-host", "x-forwarded-host")
    if host is None and isinstance(fields.get("host"), str):
        host = fields["host"]
    if host is None:
        host = request.headers.get("host")
    return method.upper(), uri, host, fields


async def authorize(request: Request, rest: str | None = None) -> Response:
    authorizer: _Authorizer = request.app.state.authorizer
    gatekeeper = authorizer.gatekeeper
    if gatekeeper is None:
        # a feature this service was not set up for: not found, not a server failure
        return _problem(
            404,
            "authorization is not enabled here: the gateway's identity settings "
            "(RISKGUARD_JWT_*) are not configured",
            request,
        )
    try:
        method, uri, host, fields = await _original(request, rest)
    except ValueError as exc:
        return _problem(400, str(exc), request)
    parts = urlsplit(uri)
    raw_path = parts.path or "/"
    path = unquote(raw_path)
    try:
        check_path(path, raw_path.encode("latin-1", "replace"))
    except AmbiguousPath as exc:
        return _problem(400, str(exc), request)

    target: str | None
    catalog, route_key, limit, at_target = _EMPTY, "", authorizer.default_limit, path
    if authorizer.table is not None and authorizer.config is not None:
        match = authorizer.table.match(path)
        if match is None:
            return _problem(403, "no gateway route serves this path", request)
        route = authorizer.config.routes[match.index]
        target, route_key, at_target = route.upstream, route.key, match.upstream_path
        catalog = authorizer.catalogs[route.upstream]
        if route.rate_limit is not None:
            limit = RateLimit(route.rate_limit.rate_per_s, route.rate_limit.burst)
    else:
        name = (host or "").rsplit(":", 1)[0].strip("[]").lower() if host else ""
        target = usable_id(name)
        route_key = target or "unknown"
    if target is None:
        return _problem(400, "the original request names no usable host", request)

    length = _header(request, "x-original-content-length")
    if length is None and isinstance(fields.get("content_length"), int):
        length = str(fields["content_length"])
    verdict = await gatekeeper.check(
        Check(
            method=method,
            path=at_target,
            target=target,
            catalog=catalog,
            route_key=route_key,
            rate_limit=limit,
            authorization=[v.encode("latin-1") for v in request.headers.getlist("authorization")],
            query=parts.query.encode("latin-1", "replace"),
            ip=_caller(request),
            user_agent=request.headers.get("user-agent"),
            request_bytes=int(length) if length is not None and length.isdigit() else None,
        )
    )
    if not verdict.allowed:
        return _problem(verdict.status, verdict.detail, request, verdict)
    body = orjson.dumps(
        {
            "allow": True,
            "subject": verdict.subject,
            "decision_id": verdict.decision_id,
            "outcome": verdict.outcome,
        }
    )
    headers = {n.decode(): v.decode("latin-1") for n, v in verdict.headers}
    # always present (empty without a deployment claim), so a proxy that copies the headers it
    # gets over the client's (Envoy) replaces a client's copy of every one of them
    headers.setdefault(DEPLOYMENT.decode(), "")
    return Response(body, media_type="application/json", headers=headers)


_DOC = responses(400, 401, 403, 404, 429, 503)


@authorize_router.post(
    PREFIX,
    summary="Authorize one request for a proxy (Envoy ext_authz, NGINX auth_request, Traefik "
    "ForwardAuth)",
    responses={200: {"description": "Allowed: pass the X-Riskguard-* headers upstream"}, **_DOC},
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "method": {"type": "string", "example": "GET"},
                            "uri": {"type": "string", "example": "/v1/accounts/7?x=1"},
                            "host": {"type": "string", "example": "ledger"},
                            "content_length": {"type": "integer", "minimum": 0},
                        },
                        "required": ["method", "uri"],
                    }
                }
            },
        }
    },
)
async def authorize_post(request: Request) -> Response:
    return await authorize(request)


@authorize_router.api_route(
    PREFIX, methods=[m for m in _ANY if m != "POST"], include_in_schema=False
)
async def authorize_any(request: Request) -> Response:
    return await authorize(request)


@authorize_router.api_route(PREFIX + "/{rest:path}", methods=_ANY, include_in_schema=False)
async def authorize_prefixed(request: Request, rest: str) -> Response:
    return await authorize(request, rest)
