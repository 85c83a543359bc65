"""One raw ASGI middleware for what every request needs, in a single pass (no per-layer cost):
trusted hosts, request id, body size limit, security headers, the access log and request
metrics.

- **Trusted hosts**: a ``Host`` not in the list gets a 400 problem (``*`` allows any,
  ``*.example.com`` any subdomain).
- **Request id**: an incoming ``X-Request-ID`` of 1-64 safe characters is kept, otherwise one is
  made; it is echoed in the response header and bound to every log line of the request.
- **Body limit**: a ``Content-Length`` over the limit is refused before reading; a chunked body
  is counted as it arrives and refused with 413 the moment it passes the limit.
- **Security headers**: ``X-Content-Type-Options: nosniff``, a strict CSP for the API
  (``default-src 'none'``; the interactive docs get one that lets them load), ``X-Frame-Options:
  DENY``, ``Referrer-Policy: no-referrer``, ``Cache-Control: no-store``, and HSTS when the
  service is behind TLS.
- **Access log**: method, route, status, duration, request id — never bodies, queries or
  credentials.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog

from riskguard.adapters.http.metrics import Metrics
from riskguard.adapters.http.problems import PROBLEM_JSON, problem_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_random_bits = random.Random().getrandbits  # seeded from os.urandom when created
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_API_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_DOCS_CSP = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'"
)
_HSTS = b"max-age=63072000; includeSubDomains"
_DOCS_PATHS = ("/docs", "/redoc")
_DECISIONS = "/v1/decisions"


class _Route:
    path = _DECISIONS


_DECISIONS_ROUTE = _Route()

log = structlog.get_logger("riskguard.http")


class BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_hosts: list[str],
        max_body_bytes: int,
        behind_tls: bool,
        access_log: bool,
        metrics: Metrics,
        decide: Callable[[str | None, bytes, str, float], Awaitable[Any]] | None = None,
    ) -> None:
        self.app = app
        self.decide = decide
        self.max_body = max_body_bytes
        self.behind_tls = behind_tls
        self.access_log = access_log
        self.metrics = metrics
        self.any_host = "*" in trusted_hosts
        self.exact = {h.lower() for h in trusted_hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in trusted_hosts if h.startswith("*."))

    def _host_ok(self, headers: dict[bytes, bytes]) -> bool:
        if self.any_host:
            return True
        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host.split("]", 1)[0] + "]" if host.startswith("[") else host.split(":", 1)[0]
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def _fast(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        request_id: str,
    ) -> None:
        assert self.decide is not None
        received = time.time()
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        authorization = headers.get(b"authorization")
        response = await self.decide(
            authorization.decode("latin-1") if authorization is not None else None,
            body,
            request_id,
            received,
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id")
        request_id = None
        if incoming is not None:
            text = incoming.decode("latin-1")
            if _REQUEST_ID.match(text):
                request_id = text
        if request_id is None:
            # Unique, not secret: 64 bits from the per-process Mersenne Twister (uuid4 reads
            # os.urandom on every call).
            request_id = f"{_random_bits(64):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        docs = path.startswith(_DOCS_PATHS)
        status_holder = [500]
        response_started = [False]
        extra = [
            (b"x-request-id", request_id.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", _DOCS_CSP if docs else _API_CSP),
        ]
        if not docs:
            extra.append((b"cache-control", b"no-store"))
        if self.behind_tls or scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", _HSTS))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        async def reject(status: int, detail: str) -> None:
            body = problem_bytes(status, detail, request_id)
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            if not self._host_ok(headers):
                await reject(400, "the Host header is not one this service answers to")
                return
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    too_big = int(length) > self.max_body
                except ValueError:
                    await reject(400, "invalid Content-Length")
                    return
                if too_big:
                    await reject(413, f"the body exceeds {self.max_body} bytes")
                    return
            received = [0]
            limit = self.max_body

            async def counting_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        raise BodyTooLarge
                return message

            try:
                if self.decide is not None and path == _DECISIONS and scope["method"] == "POST":
                    # The hot path skips the framework's routing and dependency machinery
                    # (measured at over half of the request's CPU); the route in the FastAPI app
                    # documents it.
                    scope["route"] = _DECISIONS_ROUTE
                    await self._fast(
                        scope, counting_receive, send_with_headers, headers, request_id
                    )
                else:
                    await self.app(scope, counting_receive, send_with_headers)
            except BodyTooLarge:
                if not response_started[0]:
                    await reject(413, f"the body exceeds {self.max_body} bytes")
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            status = status_holder[0]
            self.metrics.count_request(scope["method"], template, status)
            if self.access_log:
                log.info(
                    "request",
                    method=scope["method"],
                    route=template,
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
                )
            structlog.contextvars.unbind_contextvars("request_id")
