"""``riskguard gateway``: a zero-trust reverse proxy in front of internal services.

Served by the gateway's own HTTP/1.1 server (``server.py``, asyncio + httptools on uvloop) and
forwarding through its own pooled HTTP/1.1 client (``upstream.py``) — both measured to cost a
fraction of uvicorn's and httpx's per-request CPU (see those modules). Every request passes the
:class:`~.gatekeeper.Gatekeeper` (JWT, rate limit, risk decision) before a byte of it reaches
an upstream.

**Headers.** Hop-by-hop headers are never forwarded, in either direction: ``Connection``,
``Keep-Alive``, ``Proxy-Authenticate``, ``Proxy-Authorization``, ``Proxy-Connection``, ``TE``,
``Trailer``, ``Transfer-Encoding``, ``Upgrade``, and every header named in ``Connection``
(RFC 9110 section 7.6.1); ``Expect`` is answered by the gateway itself. Every incoming
``X-Riskguard-*`` header is dropped: the upstream receives only the gateway's own
``X-Riskguard-Subject`` (the verified caller), ``X-Riskguard-Decision`` (the decision id),
``X-Riskguard-Outcome`` and ``X-Riskguard-Deployment``. ``Authorization`` is dropped too unless
``forward_authorization`` is set. ``X-Forwarded-For``/``-Proto``/``-Host`` are set from the
connection — kept and extended only when the peer is in ``trusted_proxies`` — and ``Via`` is
extended both ways. ``Host`` is the upstream's.

**Bodies** stream both ways (``Content-Length`` kept, chunked otherwise); ``max_body_bytes``
refuses larger requests (413). **Failures**: an upstream that refuses, resets or answers
garbage is a 502 problem, one that does not connect or answer within the route's
``timeout_s`` a 504 problem. Paths that could be read two ways are refused (400, see
``routes.check_path``).

The gateway's own endpoints live under ``admin_prefix`` (``/_riskguard``): ``/healthz``,
``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog

from riskguard.adapters.gateway.config import GatewayConfig, parse_config
from riskguard.adapters.gateway.gatekeeper import (
    TRUSTED_PREFIX,
    Check,
    Gatekeeper,
    problem_body,
    rate_limit_of,
)
from riskguard.adapters.gateway.ratelimit import RateLimit
from riskguard.adapters.gateway.risk import GatewayRisk
from riskguard.adapters.gateway.routes import AmbiguousPath, RouteCatalog, RouteTable, check_path
from riskguard.adapters.gateway.server import Request, Server
from riskguard.adapters.gateway.settings import (
    GatewaySettings,
    build_rate_limiter,
    build_verifier,
    load_gateway_settings,
)
from riskguard.adapters.gateway.upstream import UpstreamError, UpstreamPool
from riskguard.adapters.http.problems import PROBLEM_JSON
from riskguard.ports import DependencyUnavailable
from riskguard.services.rules import NotFoundError
from riskguard.settings import Settings, load_settings

log = structlog.get_logger("riskguard.gateway")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {b"expect", b"host", b"content-length"}
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")
_VIA = b"1.1 riskguard"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
_random_bits = random.Random().getrandbits  # unique, not secret: os.urandom is a system call
_PROBLEM = PROBLEM_JSON.encode()
_JSON = b"application/json"
CONFIG_ENV = "RISKGUARD_GATEWAY_CONFIG_JSON"  # the resolved configuration, for worker processes
BASE_DIR_ENV = "RISKGUARD_GATEWAY_BASE_DIR"


class GatewayStartError(Exception):
    """The gateway cannot start (the message says why, for the command line)."""


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Route:
    """What the hot path needs of one configured route, precomputed."""

    key: str
    upstream: str
    pool: UpstreamPool
    catalog: RouteCatalog
    timeout_s: float
    limit: RateLimit
    host: bytes  # the Host header sent upstream
    base_path: bytes


def _connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def response_headers(
    headers: list[tuple[bytes, bytes]], request_id: bytes
) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """An upstream's response headers as the client gets them — hop-by-hop ones (and those
    named in its ``Connection``) removed, ``Via`` extended, the request id added when absent —
    with its ``Content-Length`` (None: none) and whether it has a ``Date``."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named |= _connection_tokens(value)
    out = []
    via = None
    has_id = has_date = False
    length = None
    for name, value in headers:
        if name in HOP_BY_HOP or name in named:
            continue
        if name == b"content-length":
            length = int(value)  # the parser accepted it: digits
            continue
        if name == b"via":
            via = value + b", " + _VIA
            continue
        if name == b"x-request-id":
            has_id = True
        elif name == b"date":
            has_date = True
        out.append((name, value))
    out.append((b"via", via or _VIA))
    if not has_id:
        out.append((b"x-request-id", request_id))
    return out, length, has_date


class Gateway:
    """The gateway's request handler and the dependencies it starts and stops."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        base_dir: Path | None = None,
        settings: Settings | None = None,
        gateway_settings: GatewaySettings | None = None,
    ) -> None:
        from riskguard.wiring import Container

        self.config = config
        self.settings = settings or load_settings()
        self.gateway_settings = gateway_settings or load_gateway_settings()
        self.container = Container(self.settings)
        self.metrics = self.container.metrics
        self.table = RouteTable([(r.prefix, r.strip_prefix) for r in config.routes])
        catalogs = config.catalogs(base_dir)
        self.pools = {
            name: UpstreamPool(
                up.host,
                up.port,
                tls=up.tls,
                connect_timeout_s=up.connect_timeout_s,
                max_idle=up.max_idle,
            )
            for name, up in config.upstreams.items()
        }
        self.default_limit = self.gateway_settings.rate_limit
        self.routes = []
        for route in config.routes:
            upstream = config.upstreams[route.upstream]
            default_port = 443 if upstream.tls else 80
            host = upstream.host if ":" not in upstream.host else f"[{upstream.host}]"
            if upstream.port != default_port:
                host = f"{host}:{upstream.port}"
            self.routes.append(
                _Route(
                    key=route.key,
                    upstream=route.upstream,
                    pool=self.pools[route.upstream],
                    catalog=catalogs[route.upstream],
                    timeout_s=config.timeout_for(route),
                    limit=rate_limit_of(route.rate_limit, self.default_limit),
                    host=host.encode("idna"),
                    base_path=upstream.base_path.encode(),
                )
            )
        self.trusted = [ipaddress.ip_network(n) for n in config.trusted_proxies]
        self.admin = config.admin_prefix
        self.gatekeeper: Gatekeeper | None = None
        self.risk: GatewayRisk | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.access_log = self.settings.access_log

    # -- life cycle -----------------------------------------------------------------------------

    async def startup(self) -> None:
        container = self.container
        await container.start()
        verifier = build_verifier(self.gateway_settings)
        keys_close = getattr(verifier.keys, "aclose", None)
        if keys_close is not None:
            self._closers.append(keys_close)
        limiter = build_rate_limiter(self.gateway_settings)
        limiter_close = getattr(limiter, "close", None)
        if limiter_close is not None:
            self._closers.append(limiter_close)
        risk = None
        if self.config.risk.enabled:
            risk = GatewayRisk(
                config=self.config.risk,
                settings=self.settings,
                store=container.store,
                state=container.state,
                engines=container.engines,
                metrics=self.metrics,
            )
            try:
                await risk.ready()  # the tenant and its engine now, not on the first request
            except (DependencyUnavailable, NotFoundError) as exc:  # retried by the requests
                log.warning("gateway_risk_deferred", reason=type(exc).__name__)
        self.risk = risk
        service_limit = self.config.service_rate_limit
        self.gatekeeper = Gatekeeper(
            verifier=verifier,
            limiter=limiter,
            risk=risk,
            policy=self.config.risk,
            service_limit=None
            if service_limit is None
            else rate_limit_of(service_limit, self.default_limit),
        )
        if self.settings.gc_tuning:
            from riskguard.gc_tuning import tune_gc

            tune_gc()

    async def shutdown(self) -> None:
        if self.risk is not None:
            await self.risk.drain()
        for pool in self.pools.values():
            await pool.close()
        for close in self._closers:
            await close()
        await self.container.stop()

    # -- requests -------------------------------------------------------------------------------

    async def handle(self, req: Request) -> None:
        started = time.perf_counter()
        status, route = await self._handle(req)
        self.metrics.count_request(req.method, route, status)
        if self.access_log:
            log.info(
                "request",
                method=req.method,
                route=route,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
            )

    def _problem(
        self,
        req: Request,
        status: int,
        detail: str | None,
        request_id: bytes,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        decision_id: str | None = None,
        slug: str | None = None,
    ) -> int:
        body = problem_body(
            status, detail, request_id=request_id.decode(), decision_id=decision_id, slug=slug
        )
        out = [
            (b"content-type", _PROBLEM),
            (b"cache-control", b"no-store"),
            (b"x-request-id", request_id),
            (b"via", _VIA),
        ]
        if headers:
            out.extend(headers)
        req.respond(status, out, body)
        return status

    def _peer_trusted(self, ip: str | None) -> bool:
        if not self.trusted or ip is None:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    async def _handle(self, req: Request) -> tuple[int, str]:
        peer = req.client
        trusted_peer = self._peer_trusted(peer)
        forward_auth = self.config.forward_authorization
        authorization: list[bytes] = []
        forwarded: list[tuple[bytes, bytes]] = []
        named: set[bytes] = set()
        request_id = b""
        content_length: bytes | None = None
        chunked = other_coding = False
        user_agent: bytes | None = None
        host = b""
        xff: bytes | None = None
        via: bytes | None = None
        for name, value in req.headers:
            if name in _DROP_REQUEST or name.startswith(TRUSTED_PREFIX):
                if name == b"transfer-encoding":
                    chunked = True
                    other_coding = value.strip().lower() != b"chunked"
                elif name == b"content-length":
                    content_length = value
                elif name == b"connection":
                    named |= _connection_tokens(value)
                elif name == b"host":
                    host = value
                continue
            if name == b"authorization":
                authorization.append(value)
                if not forward_auth:
                    continue
            elif name == b"x-request-id":
                if _REQUEST_ID.match(value):
                    request_id = value
                continue
            elif name == b"user-agent":
                user_agent = value
            elif name == b"via":
                via = value
                continue
            elif name in _FORWARDED:
                if not trusted_peer:
                    continue
                if name == b"x-forwarded-for":
                    xff = value
                    continue
            forwarded.append((name, value))
        if not request_id:
            request_id = b"%016x" % _random_bits(64)
        if named:
            forwarded = [(n, v) for n, v in forwarded if n not in named]
            if b"authorization" in named:
                authorization = []

        if other_coding:  # gzip and the like: the body would be forwarded wrongly
            detail = "transfer codings other than chunked are not supported"
            return self._problem(req, 501, detail, request_id), "invalid"
        path = req.path
        admin = self.admin
        if path.startswith(admin) and (len(path) == len(admin) or path[len(admin)] == "/"):
            return await self._admin(req, path[len(admin) :], request_id), path
        raw_path = req.raw_path
        try:
            check_path(path, raw_path)
        except AmbiguousPath as exc:
            return self._problem(req, 400, str(exc), request_id), "invalid"
        match = self.table.match(path)
        if match is None:
            return self._problem(req, 404, "no route serves this path", request_id), "unmatched"
        route = self.routes[match.index]
        if match.strip and raw_path[: match.strip] != path[: match.strip].encode():
            detail = "the route prefix must not be percent-encoded"
            return self._problem(req, 400, detail, request_id), route.key

        length: int | None = None
        if content_length is not None:
            length = int(content_length)  # the parser accepted it: digits
        limit = self.config.max_body_bytes
        if limit is not None and length is not None and length > limit:
            detail = f"the body exceeds {limit} bytes"
            return self._problem(req, 413, detail, request_id), route.key

        gatekeeper = self.gatekeeper
        assert gatekeeper is not None
        method = req.method
        verdict = await gatekeeper.check(
            Check(
                method=method,
                path=match.upstream_path,
                target=route.upstream,
                catalog=route.catalog,
                route_key=route.key,
                rate_limit=route.limit,
                authorization=authorization,
                query=req.query,
                ip=peer,
                user_agent=user_agent.decode("latin-1") if user_agent is not None else None,
                request_bytes=length,
            )
        )
        if not verdict.allowed:
            status = self._problem(
                req,
                verdict.status,
                verdict.detail,
                request_id,
                headers=verdict.headers,
                decision_id=verdict.decision_id,
                slug=verdict.slug,
            )
            return status, route.key

        # -- the request as the upstream gets it
        target = route.base_path + (raw_path[match.strip :] or b"/")
        if req.query:
            target += b"?" + req.query
        forwarded.extend(verdict.headers)
        # an untrusted peer's X-Forwarded-* were dropped above; a trusted proxy's are kept
        names = {n for n, _ in forwarded} if trusted_peer else ()
        if b"x-forwarded-proto" not in names:
            forwarded.append((b"x-forwarded-proto", b"http"))
        if b"x-forwarded-host" not in names and host:
            forwarded.append((b"x-forwarded-host", host))
        if peer is not None:
            address = peer.encode()
            forwarded.append((b"x-forwarded-for", xff + b", " + address if xff else address))
        forwarded.append((b"via", via + b", " + _VIA if via else _VIA))
        forwarded.append((b"x-request-id", request_id))
        has_body = chunked or (length is not None and length > 0)
        if chunked:
            forwarded.append((b"transfer-encoding", b"chunked"))
        elif length is not None:
            forwarded.append((b"content-length", b"%d" % length))
        head = b"".join(
            [
                method.encode(),
                b" ",
                target,
                b" HTTP/1.1\r\nhost: ",
                route.host,
                b"\r\n",
                *[n + b": " + v + b"\r\n" for n, v in forwarded],
                b"\r\n",
            ]
        )

        try:
            body = await self._body(req, chunked, limit) if has_body else None
            response = await route.pool.request(
                head,
                body,
                chunked=chunked,
                head_only=method == "HEAD",
                timeout_s=route.timeout_s,
            )
        except UpstreamError as exc:
            log.warning("upstream_failed", upstream=route.upstream, error=str(exc))
            detail = f"upstream {route.upstream}: {exc}"
            return self._problem(req, exc.status, detail, request_id), route.key
        except _BodyTooLarge:
            detail = f"the body exceeds {limit} bytes"
            return self._problem(req, 413, detail, request_id), route.key

        headers, length, has_date = response_headers(response.headers, request_id)
        status = response.status
        try:
            if response.finished:  # the whole answer is here: one write
                data = response.take_buffered()
                if length is None and method != "HEAD" and status not in (204, 304):
                    length = len(data)
                req.start(status, headers, length, add_date=not has_date)
                req.end(data)
                return status, route.key
            req.start(status, headers, length, add_date=not has_date)
            while True:
                chunk = response.take_buffered() or await response.read()
                if chunk is None:
                    break
                await req.write(chunk)
            req.end()
        except UpstreamError as exc:
            # the answer has started: the client sees the connection end early
            log.warning("upstream_failed_mid_response", upstream=route.upstream, error=str(exc))
        finally:
            response.release()
        return status, route.key

    async def _body(
        self, req: Request, chunked: bool, limit: int | None
    ) -> bytes | Callable[[], Awaitable[bytes | None]]:
        """The request body: the bytes when it has all arrived, else a source of pieces."""
        first = await req.body()
        if req.body_done:  # whatever else arrived is buffered already: no waiting
            parts = [first or b""]
            while (piece := await req.body()) is not None:
                parts.append(piece)
            whole = b"".join(parts)
            if limit is not None and len(whole) > limit:
                raise _BodyTooLarge
            if chunked:
                return b"%x\r\n%b\r\n0\r\n\r\n" % (len(whole), whole) if whole else b"0\r\n\r\n"
            return whole
        pending: list[bytes | None] = [first]
        seen = len(first or b"")

        async def source() -> bytes | None:
            nonlocal seen
            if pending:
                return pending.pop()
            piece = await req.body()
            if piece is not None:
                seen += len(piece)
                if limit is not None and seen > limit:
                    raise _BodyTooLarge
            return piece

        return source

    async def _admin(self, req: Request, sub: str, request_id: bytes) -> int:
        if sub == "/metrics":
            payload = self.metrics.render()
            req.respond(200, [(b"content-type", self.metrics.content_type.encode())], payload)
            return 200
        if sub == "/healthz":
            body = b'{"status":"ok"}'
        elif sub == "/readyz":
            checks = await self.container.check_dependencies()
            ok = all(c.ok for c in checks.values())
            body = orjson.dumps(
                {
                    "status": "ready" if ok else "degraded",
                    "checks": {k: v.model_dump() for k, v in checks.items()},
                    "pending_records": self.risk.pending_records if self.risk else 0,
                }
            )
        else:
            return self._problem(req, 404, "no such gateway endpoint", request_id)
        req.respond(200, [(b"content-type", _JSON), (b"cache-control", b"no-store")], body)
        return 200


# ---------------------------------------------------------------------------------------------
# Running it


async def run(
    config: GatewayConfig, *, base_dir: Path | None, settings: Settings, reuse_port: bool = False
) -> None:
    """Start, serve until SIGINT/SIGTERM, stop gracefully. Raises GatewayStartError."""
    stop = asyncio.Event()  # a signal during start-up stops the gateway once it has started
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config, base_dir=base_dir, settings=settings)
    try:
        await gateway.startup()
    except Exception as exc:
        await gateway.shutdown()
        raise GatewayStartError(f"cannot start: {type(exc).__name__}: {exc}") from None
    server = Server(gateway.handle)
    try:
        await server.listen(config.listen.host, config.listen.port, reuse_port=reuse_port)
    except OSError as exc:
        await gateway.shutdown()
        where = f"{config.listen.host}:{config.listen.port}"
        raise GatewayStartError(f"cannot listen on {where}: {exc.strerror}") from None
    log.info(
        "gateway_listening",
        host=config.listen.host,
        port=config.listen.port,
        routes=len(gateway.routes),
        risk=gateway.risk is not None,
        tenant=gateway.risk.tenant_id if gateway.risk is not None else None,
    )
    await stop.wait()
    await server.stop()
    await gateway.shutdown()


def serve(
    config: GatewayConfig, *, base_dir: Path | None, workers: int = 1, reuse_port: bool = False
) -> None:
    """Run the gateway until interrupted; ``workers`` processes share the port (SO_REUSEPORT).
    Raises GatewayStartError."""
    import uvloop

    from riskguard.wiring import configure_logging

    if workers > 1:
        _run_workers(config, base_dir, workers)
        return
    settings = load_settings()
    configure_logging(settings)
    uvloop.run(run(config, base_dir=base_dir, settings=settings, reuse_port=reuse_port))


def _run_workers(config: GatewayConfig, base_dir: Path | None, workers: int) -> None:
    settings = load_settings()
    env = dict(os.environ)
    if settings.auto_migrate:  # once here, not in every worker at the same moment
        from riskguard.adapters.sql.migrate import upgrade

        try:
            upgrade(settings.database_url)
        except Exception as exc:
            raise GatewayStartError(f"cannot migrate the database: {type(exc).__name__}") from None
        env["RISKGUARD_AUTO_MIGRATE"] = "false"
    if config.risk.enabled:  # the tenant once here too, not raced by every worker
        asyncio.run(_provision(settings, config))
    env[CONFIG_ENV] = config.model_dump_json()
    if base_dir is not None:
        env[BASE_DIR_ENV] = str(base_dir)
    children = [
        subprocess.Popen([sys.executable, "-m", "riskguard.adapters.gateway.proxy"], env=env)
        for _ in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    failed = [code for code in codes if code != 0]
    if failed:
        raise GatewayStartError(f"a worker exited with {failed[0]}")


async def _provision(settings: Settings, config: GatewayConfig) -> None:
    from riskguard.adapters.gateway.risk import resolve_tenant
    from riskguard.wiring import build_store

    store = build_store(settings)
    await store.start()
    try:
        await resolve_tenant(store, config.risk.tenant, settings.secret)
    except DependencyUnavailable as exc:
        raise GatewayStartError(f"the database is unavailable: {exc}") from None
    finally:
        await store.close()


def _worker() -> int:
    """One worker process of ``serve(workers=N)``: the configuration the parent resolved."""
    config = parse_config(orjson.loads(os.environ[CONFIG_ENV]))
    base = os.environ.get(BASE_DIR_ENV)
    try:
        serve(config, base_dir=Path(base) if base else None, reuse_port=True)
    except GatewayStartError as exc:
        print(f"riskguard: gateway worker {os.getpid()}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
