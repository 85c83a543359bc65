"""``riskguard gateway`` over real HTTP: a real upstream on one loopback port, the gateway (the
real CLI, in a child process) on another, on both backends — SQLite + in-memory state and
PostgreSQL + Redis (state and rate limits shared through Redis)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.engine.events import parse_event
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "gateway"
ISSUER = "https://idp.test.internal"
AUDIENCE = "riskguard-gateway"
PROBLEM = "application/problem+json"
SENSITIVE = [  # never-seen sensitive routes of a lateral move (the simulator's kind)
    ("GET", "/admin/users"),
    ("GET", "/v1/keys"),
    ("GET", "/internal/export"),
    ("GET", "/v1/accounts/7/credentials"),
    ("GET", "/internal/config/secrets"),
]
NORMAL = [
    ("GET", "/v1/accounts/{n}/balance"),
    ("GET", "/v1/accounts/{n}/entries"),
    ("GET", "/v1/fx/rates"),
    ("POST", "/v1/transfers"),
]


# --------------------------------------------------------------------------------------------
# Identity: an ES256 key whose public half the gateway reads from a JWKS file


@dataclass
class Keys:
    private: ECKey
    jwks_path: Path

    def token(self, sub: str, *, deployment: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
        }
        if deployment is not None:
            body["deployment"] = deployment
        body.update(claims)
        return jwt.encode({"alg": "ES256", "kid": "gw-test"}, body, self.private)

    def headers(self, sub: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, **kwargs)}"}


def make_keys(folder: Path) -> Keys:
    key = ECKey.generate_key("P-256", private=True)
    public = key.as_dict(private=False) | {"kid": "gw-test", "use": "sig", "alg": "ES256"}
    path = folder / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    return Keys(key, path)


# --------------------------------------------------------------------------------------------
# A real upstream: HTTP/1.1 (h11) over asyncio, in a thread of its own


@dataclass
class Upstream:
    """Echoes what it received; ``/v1/upload`` and ``/v1/stream`` prove streaming both ways;
    ``/v1/slow`` answers after 3 s."""

    port: int = field(default_factory=free_port)
    seen: list[dict[str, Any]] = field(default_factory=list)
    upload_started: threading.Event = field(default_factory=threading.Event)
    stream_release: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await self._stop.wait()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the upstream did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)

        async def next_event() -> Any:
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                conn.receive_data(await reader.read(65536))

        async def send(*events: Any) -> None:
            for event in events:
                writer.write(conn.send(event) or b"")
            await writer.drain()

        try:
            while True:
                event = await next_event()
                if isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request)
                target = event.target.decode()
                digest, size = hashlib.sha256(), 0
                while True:
                    part = await next_event()
                    if isinstance(part, h11.EndOfMessage):
                        break
                    if isinstance(part, h11.Data):
                        digest.update(part.data)
                        size += len(part.data)
                        if target.startswith("/v1/upload"):
                            self.upload_started.set()
                seen = {
                    "method": event.method.decode(),
                    "target": target,
                    "headers": [(n.decode(), v.decode()) for n, v in event.headers],
                    "size": size,
                    "sha256": digest.hexdigest(),
                }
                self.seen.append(seen)
                if target.startswith("/v1/slow"):
                    await asyncio.sleep(3)
                if target.startswith("/v1/stream"):
                    await send(h11.Response(status_code=200, headers=[("x-kind", "stream")]))
                    await send(h11.Data(data=b"first-chunk;"))
                    released = await asyncio.to_thread(self.stream_release.wait, 10)
                    for i in range(3):
                        await send(h11.Data(data=b"more-%d;" % i))
                    await send(h11.Data(data=b"released" if released else b"timeout"))
                    await send(h11.EndOfMessage())
                else:
                    body = orjson.dumps(seen)
                    headers = [
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                        ("x-end-to-end", "kept"),
                        ("x-upstream-hop", "1"),
                        ("connection", "x-upstream-hop"),
                        ("keep-alive", "timeout=5"),
                        ("proxy-authenticate", "Basic"),
                    ]
                    await send(h11.Response(status_code=200, headers=headers))
                    if event.method != b"HEAD":
                        await send(h11.Data(data=body))
                    await send(h11.EndOfMessage())
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            writer.close()


# --------------------------------------------------------------------------------------------
# The gateway: `python -m riskguard gateway` as a child process


@dataclass
class Gateway:
    url: str
    database_url: str
    tenant: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=15, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=15, **kwargs)

    def stored(self, decision_id: str) -> Any:
        async def work() -> Any:
            store = SqlDecisionStore(self.database_url)
            await store.start()
            try:
                tenant = await store.find_tenant(self.tenant)
                assert tenant is not None
                return await store.get(tenant.id, decision_id)
            finally:
                await store.close()

        return asyncio.run(work())


def write_config(folder: Path, upstream: Upstream, tenant: str, port: int) -> Path:
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstreams": {
            "ledger": {
                "url": upstream.url,
                "openapi": str(DATA / "ledger-openapi.json"),
                "routes": ["GET /v1/slow", "GET /v1/limited"],
            },
            "down": {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout_s": 2},
        },
        "routes": [
            {"prefix": "/ledger", "upstream": "ledger", "strip_prefix": True},
            {"prefix": "/slow", "upstream": "ledger", "strip_prefix": True, "timeout_s": 0.5},
            {"prefix": "/down", "upstream": "down"},
            {
                "prefix": "/limited",
                "upstream": "ledger",
                "strip_prefix": True,
                "name": "limited",
                "rate_limit": {"rate_per_s": 0.5, "burst": 2},
            },
        ],
        "risk": {"tenant": tenant},
    }
    path = folder / "gateway.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def start_gateway(
    folder: Path, config: Path, port: int, keys: Keys, env_extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env.update(
        RISKGUARD_JWT_KEYS_FILE=str(keys.jwks_path),
        RISKGUARD_JWT_ISSUER=ISSUER,
        RISKGUARD_JWT_AUDIENCE=AUDIENCE,
        RISKGUARD_JWT_ALGORITHMS="ES256",
        RISKGUARD_RATELIMIT_RATE_PER_S="1000",
        RISKGUARD_RATELIMIT_BURST="1000",
        RISKGUARD_RULESET_POLL_S="0.5",
        RISKGUARD_LOG_LEVEL="warning",
        **env_extra,
    )
    log = open(folder / "gateway.log", "ab")  # noqa: SIM115 - the child keeps its own copy
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "riskguard", "gateway", "--config", str(config)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = (folder / "gateway.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{text}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_riskguard/healthz", timeout=1).is_success:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(process)
    raise RuntimeError("the gateway did not answer in time")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module", params=["sqlite+memory", "postgres+redis"])
def gateway(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    keys: Keys,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    env: dict[str, str] = {}
    if request.param == "sqlite+memory":
        database_url = f"sqlite+aiosqlite:///{folder / 'riskguard.db'}"
    else:
        database_url = request.getfixturevalue("pg_url")
        env.update(
            RISKGUARD_REDIS_URL=request.getfixturevalue("redis_url"),
            RISKGUARD_REDIS_PREFIX=request.getfixturevalue("redis_prefix"),
            # the event streams under the session's prefix, deleted with its keys
            RISKGUARD_STREAM_PREFIX=request.getfixturevalue("redis_prefix") + ":",
            RISKGUARD_RATELIMIT_BACKEND="redis",
        )
    env["RISKGUARD_DATABASE_URL"] = database_url
    tenant = f"gateway-{uuid.uuid4().hex[:8]}"
    port = free_port()
    process = start_gateway(folder, write_config(folder, upstream, tenant, port), port, keys, env)
    try:
        yield Gateway(f"http://127.0.0.1:{port}", database_url, tenant, process, folder)
    finally:
        stop(process)


def service() -> str:
    """A calling service unique to one test (its behavioural history starts empty)."""
    return f"svc-{uuid.uuid4().hex[:10]}"


def raw_request(port: int, text: str) -> tuple[int, dict[str, str], bytes]:
    """Send ``text`` (CRLF line ends added) as one HTTP/1.1 request; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(text.replace("\n", "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += sock.recv(65536)
        return int(lines[0].split()[1]), headers, body


# --------------------------------------------------------------------------------------------
# Forwarding


def test_forwards_with_trusted_identity_and_strips_hop_by_hop_and_spoofed_headers(
    gateway: Gateway, upstream: Upstream, keys: Keys
) -> None:
    sub = service()
    token = keys.token(sub, deployment="rel-1")
    port = int(gateway.url.rsplit(":", 1)[1])
    status, headers, body = raw_request(
        port,
        f"GET /ledger/v1/echo?page=2&q=a%20b HTTP/1.1\n"
        f"Host: gateway.internal\n"
        f"Authorization: Bearer {token}\n"
        f"X-Riskguard-Subject: svc-admin\n"
        f"X-Riskguard-Decision: dec_FAKE\n"
        f"X-Riskguard-Outcome: allow\n"
        f"X-Forwarded-For: 6.6.6.6\n"
        f"Connection: keep-alive, X-Hop-Header\n"
        f"X-Hop-Header: secret\n"
        f"Keep-Alive: timeout=99\n"
        f"Proxy-Authorization: Basic Zm9vOmJhcg==\n"
        f"Proxy-Connection: keep-alive\n"
        f"TE: trailers\n"
        f"Upgrade: h2c\n"
        f"User-Agent: svc-test/1.0\n"
        f"X-End-To-End: yes\n"
        f"Connection: close\n\n",
    )
    assert status == 200
    seen = orjson.loads(body)
    sent = {}
    for name, value in seen["headers"]:
        sent.setdefault(name, []).append(value)
    assert seen["target"] == "/v1/echo?page=2&q=a%20b"  # prefix stripped, query kept as sent
    assert sent["x-riskguard-subject"] == [sub]
    assert sent["x-riskguard-deployment"] == ["rel-1"]
    assert sent["x-riskguard-outcome"] == ["allow"]
    assert len(sent["x-riskguard-decision"]) == 1
    assert sent["x-riskguard-decision"][0].startswith("dec_")
    assert sent["x-forwarded-for"] == ["127.0.0.1"]  # the peer, not the caller's claim
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == ["gateway.internal"]
    assert sent["host"] == [f"127.0.0.1:{upstream.port}"]
    assert sent["x-end-to-end"] == ["yes"]
    assert sent["user-agent"] == ["svc-test/1.0"]
    assert "1.1 riskguard" in sent["via"][0]
    for hop in (
        "connection",
        "x-hop-header",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
        "authorization",
    ):
        assert hop not in sent, hop
    # the answer: the upstream's hop-by-hop headers removed, end-to-end ones kept
    assert headers["x-end-to-end"] == "kept"
    for hop in ("x-upstream-hop", "keep-alive", "proxy-authenticate"):
        assert hop not in headers, hop
    assert "riskguard" in headers["via"]
    assert headers["x-request-id"]


def test_request_bodies_stream_to_the_upstream(
    gateway: Gateway, upstream: Upstream, keys: Keys
) -> None:
    headers = keys.headers(service())
    upstream.upload_started.clear()
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        first = os.urandom(32 * 1024)
        sent.update(first)
        yield first
        # the rest only once the upstream has the first part: a gateway that buffered the
        # whole body first would never get here (and the test would fail on the wait)
        assert upstream.upload_started.wait(10), "the upstream never saw the first part"
        for _ in range(4):
            part = os.urandom(64 * 1024)
            sent.update(part)
            yield part

    response = gateway.request("PUT", "/ledger/v1/upload", headers=headers, content=body())
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["size"] == 32 * 1024 + 4 * 64 * 1024
    assert echoed["sha256"] == sent.hexdigest()
    assert ("transfer-encoding", "chunked") in [tuple(h) for h in echoed["headers"]]

    fixed = os.urandom(300_000)  # with a Content-Length: forwarded with it, byte for byte
    response = gateway.request("POST", "/ledger/v1/echo", headers=headers, content=fixed)
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["sha256"] == hashlib.sha256(fixed).hexdigest()
    assert ("content-length", "300000") in [tuple(h) for h in echoed["headers"]]


def test_response_bodies_stream_to_the_client(
    gateway: Gateway, upstream: Upstream, keys: Keys
) -> None:
    upstream.stream_release.clear()
    url = gateway.url + "/ledger/v1/stream"
    with httpx.stream("GET", url, headers=keys.headers(service()), timeout=15) as response:
        assert response.status_code == 200
        assert response.headers["x-kind"] == "stream"
        chunks = response.iter_raw()
        first = next(chunks)
        # the client holds the first part while the upstream is still waiting to send the rest
        assert first.startswith(b"first-chunk;")
        upstream.stream_release.set()
        rest = b"".join(chunks)
    assert (first + rest).endswith(b"more-2;released")


def test_head_and_keep_alive_reuse(gateway: Gateway, keys: Keys) -> None:
    headers = keys.headers(service())
    with httpx.Client(timeout=15) as client:
        head = client.head(gateway.url + "/ledger/v1/echo", headers=headers)
        assert head.status_code == 200
        assert head.content == b""
        for _ in range(3):  # the next requests on the same client connection still work
            assert client.get(gateway.url + "/ledger/v1/echo", headers=headers).status_code == 200


def test_connection_handling_pipelining_http10_and_bad_requests(
    gateway: Gateway, keys: Keys
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    token = keys.token(service())
    one = f"GET /ledger/v1/echo?n=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    two = one.replace("n=1", "n=2").replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall((one + two).encode())  # pipelined: answered in order, on one connection
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b"n=1") < data.index(b"n=2")

    status, headers, _ = raw_request(
        port, f"GET /ledger/v1/echo HTTP/1.0\nAuthorization: Bearer {token}\n\n"
    )
    assert status == 200
    assert headers["connection"] == "close"  # HTTP/1.0 without keep-alive

    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    big = "x" * 70_000
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(f"GET /ledger/v1/echo HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 431 ")
    status, _, _ = raw_request(  # a transfer coding the gateway would forward wrongly
        port,
        f"POST /ledger/v1/echo HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\n"
        "Transfer-Encoding: gzip, chunked\nConnection: close\n\n1\nx\n0\n\n",
    )
    assert status == 501


def test_upstream_down_is_a_502_problem(gateway: Gateway, keys: Keys) -> None:
    response = gateway.get("/down/v1/anything", headers=keys.headers(service()))
    assert response.status_code == 502
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 502
    assert "down" in response.json()["detail"]


def test_upstream_timeout_is_a_504_problem(gateway: Gateway, keys: Keys) -> None:
    started = time.monotonic()
    response = gateway.get("/slow/v1/slow", headers=keys.headers(service()))
    assert response.status_code == 504
    assert response.headers["content-type"] == PROBLEM
    assert time.monotonic() - started < 2.5  # the route's 0.5 s, not the upstream's 3 s


def test_ambiguous_paths_and_unknown_routes_are_refused(gateway: Gateway, keys: Keys) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    token = keys.token(service())
    for target in ("/ledger/v1/../admin/users", "/ledger/admin%2Fusers", "/ledger//admin"):
        status, headers, _ = raw_request(
            port,
            f"GET {target} HTTP/1.1\nHost: x\nAuthorization: Bearer {token}\nConnection: close\n\n",
        )
        assert status == 400, target
        assert headers["content-type"] == PROBLEM
    assert gateway.get("/nowhere", headers=keys.headers(service())).status_code == 404


# --------------------------------------------------------------------------------------------
# Identity and rate limits


def test_requests_without_a_valid_token_get_401(gateway: Gateway, keys: Keys) -> None:
    missing = gateway.get("/ledger/v1/echo")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == PROBLEM
    assert missing.headers["www-authenticate"].startswith("Bearer")
    other = ECKey.generate_key("P-256", private=True)
    forged = jwt.encode(
        {"alg": "ES256", "kid": "gw-test"},
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-x", "exp": int(time.time()) + 60},
        other,
    )
    expired = keys.token("svc-x", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    wrong_audience = keys.token("svc-x", aud="someone-else")
    for token in ("not-a-jwt", forged, expired, wrong_audience):
        response = gateway.get("/ledger/v1/echo", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    basic = gateway.get("/ledger/v1/echo", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert basic.status_code == 401


def test_a_token_in_the_url_is_refused(gateway: Gateway, keys: Keys) -> None:
    token = keys.token(service())
    headers = {"Authorization": f"Bearer {token}"}
    for query in (f"access_token={token}", f"jwt={token}", f"q={token}"):
        response = gateway.get(f"/ledger/v1/echo?{query}", headers=headers)
        assert response.status_code == 401, query
        assert response.json()["type"].endswith("/token-in-url")
    only_url = gateway.get(f"/ledger/v1/echo?access_token={token}")
    assert only_url.status_code == 401


def test_rate_limit_answers_429_with_retry_after(gateway: Gateway, keys: Keys) -> None:
    headers = keys.headers(service())
    answers = [gateway.get("/limited/v1/limited", headers=headers) for _ in range(4)]
    assert [r.status_code for r in answers[:2]] == [200, 200]  # the burst
    refused = answers[2]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM
    assert int(refused.headers["retry-after"]) >= 1
    # another service has its own budget on the same route
    assert gateway.get("/limited/v1/limited", headers=keys.headers(service())).status_code == 200


# --------------------------------------------------------------------------------------------
# Risk: lateral movement, releases, recorded decisions


def _normal_calls(gateway: Gateway, headers: dict[str, str], rounds: int) -> list[int]:
    statuses = []
    for i in range(rounds):
        for method, template in NORMAL:
            path = "/ledger" + template.format(n=100 + i)
            statuses.append(
                gateway.request(method, path, headers=headers, content=b"{}").status_code
            )
    return statuses


def test_lateral_movement_is_blocked_while_normal_traffic_passes(
    gateway: Gateway, keys: Keys
) -> None:
    headers = keys.headers(service(), deployment="rel-7")
    assert set(_normal_calls(gateway, headers, 3)) == {200}  # a normal history: 4 routes

    blocked: list[httpx.Response] = []
    normal_after: list[int] = []
    for method, path in SENSITIVE:
        response = gateway.request(method, "/ledger" + path, headers=headers)
        if response.status_code == 403:
            blocked.append(response)
        normal_after += _normal_calls(gateway, headers, 1)
    assert len(blocked) >= 1, "no call of the lateral move was blocked"
    first_blocked = next(
        i
        for i, (m, p) in enumerate(SENSITIVE)
        if any(r.request.url.path == "/ledger" + p for r in blocked)
    )
    assert first_blocked < 5
    assert len(blocked) == len(SENSITIVE)  # every never-seen sensitive route, in fact
    assert set(normal_after) == {200}  # while its normal traffic keeps passing

    problem = blocked[0].json()
    assert blocked[0].headers["content-type"] == PROBLEM
    assert problem["decision_id"].startswith("dec_")
    assert blocked[0].headers["x-riskguard-decision"] == problem["decision_id"]
    stored = gateway.stored(problem["decision_id"])  # recorded like any other decision
    assert stored is not None
    assert stored.outcome == "block"
    assert "API_SENSITIVE_NEW_ROUTE" in [r["code"] for r in stored.reasons]
    parse_event(stored.event)  # the gateway's event is a valid v1 api_call event
    assert stored.event["data"]["path"] == "/admin/users"
    assert stored.event["context"]["device_id"] == "rel-7"

    retry = gateway.request("GET", "/ledger/admin/users", headers=headers)
    assert retry.status_code == 403  # a blocked call taught nothing: the retry is blocked too


def test_a_new_deployment_adding_a_declared_route_is_not_blocked(
    gateway: Gateway, keys: Keys
) -> None:
    sub = service()
    old = keys.headers(sub, deployment="rel-1")
    assert set(_normal_calls(gateway, old, 3)) == {200}

    new = keys.headers(sub, deployment="rel-2")
    declared = [gateway.request("POST", "/ledger/admin/reindex", headers=new) for _ in range(3)]
    assert [r.status_code for r in declared] == [200, 200, 200]  # learned, then known
    # an undeclared new non-sensitive route of the release is learned too
    assert gateway.get("/ledger/v2/accounts/9/balance", headers=new).status_code == 200
    # an undeclared sensitive one is challenged (step-up), never silently allowed
    challenged = gateway.get("/ledger/internal/debug/export", headers=new)
    assert challenged.status_code == 401
    assert 'error="insufficient_user_authentication"' in challenged.headers["www-authenticate"]
    assert challenged.json()["decision_id"].startswith("dec_")
    stored = gateway.stored(challenged.json()["decision_id"])
    assert stored is not None
    assert stored.outcome == "challenge"
    assert stored.reasons[0]["code"] == "GATEWAY_UNDECLARED_SENSITIVE_ROUTE"
    assert set(_normal_calls(gateway, new, 1)) == {200}


def test_allowed_decisions_are_recorded_with_their_ids(gateway: Gateway, keys: Keys) -> None:
    response = gateway.get("/ledger/v1/echo", headers=keys.headers(service()))
    assert response.status_code == 200
    sent = dict(response.json()["headers"])
    decision_id = sent["x-riskguard-decision"]
    deadline = time.monotonic() + 10
    stored = None
    while stored is None and time.monotonic() < deadline:  # written behind the request
        stored = gateway.stored(decision_id)
        time.sleep(0.1)
    assert stored is not None
    assert stored.outcome == "allow"
    assert stored.event_type == "api_call"
    assert stored.event["data"]["target"] == "ledger"
    assert stored.event["data"]["path"] == "/v1/echo"


def test_admin_endpoints(gateway: Gateway) -> None:
    assert gateway.get("/_riskguard/healthz").json() == {"status": "ok"}
    ready = gateway.get("/_riskguard/readyz").json()
    assert ready["status"] == "ready"
    metrics = gateway.get("/_riskguard/metrics").text
    assert "riskguard_decisions_total" in metrics
    assert "riskguard_http_requests_total" in metrics


def test_bad_configuration_is_a_clear_cli_error(tmp_path: Path, keys: Keys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("upstreams: {a: {url: 'ftp://x'}}\nroutes: [{prefix: /a, upstream: b}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env.update(
        RISKGUARD_JWT_KEYS_FILE=str(keys.jwks_path),
        RISKGUARD_JWT_ISSUER=ISSUER,
        RISKGUARD_JWT_AUDIENCE=AUDIENCE,
    )
    result = subprocess.run(
        [sys.executable, "-m", "riskguard", "gateway", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "upstreams.a.url" in result.stderr
    assert "Traceback" not in result.stderr
    no_identity = {k: v for k, v in env.items() if not k.startswith("RISKGUARD_JWT")}
    good = tmp_path / "good.yaml"
    good.write_text(
        "upstreams: {a: {url: 'http://127.0.0.1:1'}}\nroutes: [{prefix: /, upstream: a}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "riskguard", "gateway", "--config", str(good)],
        env=no_identity,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "RISKGUARD_JWT_JWKS_URL or RISKGUARD_JWT_KEYS_FILE" in result.stderr


def test_workers_share_the_port_and_sigterm_records_every_decision(
    tmp_path: Path,
    upstream: Upstream,
    keys: Keys,
    fresh_pg_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    port = free_port()
    tenant = f"gateway-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, upstream, tenant, port)
    env = {
        "RISKGUARD_DATABASE_URL": fresh_pg_url,
        "RISKGUARD_REDIS_URL": redis_url,
        "RISKGUARD_REDIS_PREFIX": redis_prefix,
        "RISKGUARD_STREAM_PREFIX": redis_prefix + ":",
        "RISKGUARD_RATELIMIT_BACKEND": "redis",
    }
    env_all = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env_all.update(
        RISKGUARD_JWT_KEYS_FILE=str(keys.jwks_path),
        RISKGUARD_JWT_ISSUER=ISSUER,
        RISKGUARD_JWT_AUDIENCE=AUDIENCE,
        RISKGUARD_LOG_LEVEL="warning",
        **env,
    )
    log = tmp_path / "workers.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "riskguard",
                "gateway",
                "--config",
                str(config),
                "--workers",
                "2",
            ],
            env=env_all,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_riskguard/healthz", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the workers did not answer in time"
            time.sleep(0.1)
        headers = keys.headers(service())
        with httpx.Client(timeout=15) as client:  # new connections spread over the workers
            statuses = [
                client.get(f"http://127.0.0.1:{port}/ledger/v1/echo", headers=headers).status_code
                for _ in range(20)
            ]
        assert statuses == [200] * 20
    finally:
        stop(process)
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]

    async def count() -> int:
        store = SqlDecisionStore(fresh_pg_url)
        await store.start()
        try:
            found = await store.find_tenant(tenant)
            assert found is not None
            return await store.count(found.id)
        finally:
            await store.close()

    assert asyncio.run(count()) == 20  # written behind the answers, all there after SIGTERM
