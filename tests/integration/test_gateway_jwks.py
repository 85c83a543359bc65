"""The JWKS cache against a real HTTP server on a loopback port: rotation, rate-limited
refetch, stale keys while the server is down or slow, single flight, refused documents.

The server is ``http.server`` in a thread; the cache's own clock (TTL, refetch interval,
staleness) is a settable clock so the tests do not sleep through minutes, while timeouts are
real. Tokens are ES256, signed here with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from riskguard.adapters.gateway.jwks import JwksCache, check_jwks_url
from riskguard.adapters.gateway.jwt import JwtError, JwtVerifier

from .conftest import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
ISS = "https://idp.internal.example"
AUD = "riskguard-gateway"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An ES256 key of the identity provider."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def jwk(self) -> dict[str, Any]:
        nums = self.key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "use": "sig",
            "x": b64(nums.x.to_bytes(32, "big")),
            "y": b64(nums.y.to_bytes(32, "big")),
        }

    def token(self, sub: str = "svc-orders", kid: str | None = None) -> str:
        now = time.time()
        header = {"alg": "ES256", "kid": kid or self.kid}
        claims = {"iss": ISS, "aud": AUD, "sub": sub, "exp": now + 300, "iat": now}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class JwksServer:
    """A JWKS endpoint the test controls: its document, status, delay, and whether it runs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.body = b'{"keys": []}'
        self.status = 200
        self.delay_s = 0.0
        self.content_length = True
        self.hits = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def publish(self, *signers: Signer) -> None:
        self.body = json.dumps({"keys": [s.jwk for s in signers]}).encode()

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits += 1
                if owner.delay_s:
                    owner._release.wait(owner.delay_s)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/.well-known/jwks.json")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/jwk-set+json")
                if owner.content_length:
                    self.send_header("Content-Length", str(len(owner.body)))
                else:
                    self.close_connection = True
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (timeout, size)
                    self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server
        self._release.clear()

    def stop(self) -> None:
        if self._server is not None:
            self._release.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


class Clock:
    """The cache's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(server: JwksServer, clock: Clock, **kwargs: Any) -> JwksCache:
    options: dict[str, Any] = {
        "ttl_s": 300.0,
        "refetch_interval_s": 30.0,
        "max_stale_s": 3600.0,
        "timeout_s": 1.0,
        "allow_http_loopback": True,
        "clock": clock,
        **kwargs,
    }
    return JwksCache(server.url, **options)


def verifier(keys: JwksCache) -> JwtVerifier:
    return JwtVerifier(keys, issuer=ISS, audience=AUD)


async def code_of(v: JwtVerifier, token: str) -> str:
    try:
        await v.verify(token)
    except JwtError as exc:
        return exc.code
    return "accepted"


async def settle(keys: JwksCache) -> None:
    """Let a background refresh finish."""
    for _ in range(200):
        if not keys.refreshing:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the background refresh did not finish")


# --------------------------------------------------------------------------------------------


def test_concurrent_first_requests_share_one_fetch(server: JwksServer) -> None:
    idp = Signer("k1")
    server.publish(idp)
    server.delay_s = 0.2  # every request arrives while the one fetch is in flight

    async def main() -> list[str]:
        keys = cache(server, Clock())
        try:
            v = JwtVerifier(keys, issuer=ISS, audience=AUD, cache_size=0)
            return await asyncio.gather(*(code_of(v, idp.token(f"svc-{i}")) for i in range(50)))
        finally:
            await keys.aclose()

    assert run(main()) == ["accepted"] * 50
    assert server.hits == 1


def test_a_rotated_key_is_picked_up_by_an_unknown_kid_refetch(server: JwksServer) -> None:
    old, new = Signer("2026-01"), Signer("2026-02")
    server.publish(old)
    clock = Clock()

    async def main() -> None:
        keys = cache(server, clock)
        v = verifier(keys)
        try:
            assert await code_of(v, old.token()) == "accepted"
            server.publish(old, new)  # the issuer rotates: the new key appears
            # fetched a moment ago: the unknown kid waits for the refetch interval
            assert await code_of(v, new.token()) == "unknown_kid"
            assert server.hits == 1
            clock.now += 30
            assert await code_of(v, new.token()) == "accepted"
            assert server.hits == 2
            assert await code_of(v, old.token("svc-b")) == "accepted"  # both keys held
            server.publish(new)  # the old key is retired
            clock.now += 301  # past the TTL: a background refresh drops it
            assert await code_of(v, old.token("svc-c")) == "accepted"  # still the current set
            await settle(keys)
            assert server.hits == 3
            assert await code_of(v, old.token("svc-d")) == "unknown_kid"
            assert await code_of(v, new.token("svc-e")) == "accepted"
        finally:
            await keys.aclose()

    run(main())


def test_refetch_on_unknown_kids_is_rate_limited(server: JwksServer) -> None:
    idp = Signer("k1")
    server.publish(idp)
    clock = Clock()

    async def main() -> None:
        keys = cache(server, clock, refetch_interval_s=10.0)
        v = verifier(keys)
        try:
            assert await code_of(v, idp.token()) == "accepted"
            for minute in range(3):
                clock.now += 10
                made_up = [idp.token(kid=uuid.uuid4().hex) for _ in range(100)]
                codes = await asyncio.gather(*(code_of(v, t) for t in made_up))
                assert set(codes) == {"unknown_kid"}
                assert server.hits == 1 + minute + 1  # one refetch per interval, not 100
                more = await asyncio.gather(*(code_of(v, t) for t in made_up[:10]))
                assert set(more) == {"unknown_kid"}
                assert server.hits == 1 + minute + 1
        finally:
            await keys.aclose()

    run(main())


def test_stale_keys_serve_while_the_server_is_down(server: JwksServer) -> None:
    idp = Signer("k1")
    server.publish(idp)
    clock = Clock()

    async def main() -> None:
        keys = cache(server, clock, max_stale_s=3600.0)
        v = JwtVerifier(keys, issuer=ISS, audience=AUD, cache_size=0)
        try:
            assert await code_of(v, idp.token()) == "accepted"
            server.stop()
            clock.now += 301  # past the TTL
            assert await code_of(v, idp.token()) == "accepted"  # stale keys, refresh started
            await settle(keys)
            assert keys.failures == 1
            assert keys.last_error is not None
            assert keys.last_error.startswith("request failed (ConnectError)")
            clock.now += 30  # the next attempt, one interval later, fails too
            assert await code_of(v, idp.token()) == "accepted"
            await settle(keys)
            assert keys.failures == 2
            clock.now += 3600  # past max-stale: no keys to trust any more
            assert await code_of(v, idp.token()) == "keys_unavailable"
            assert keys.failures == 3
            assert await code_of(v, idp.token()) == "keys_unavailable"  # no fetch storm
            assert keys.failures == 3
            server.start()
            clock.now += 30
            assert await code_of(v, idp.token()) == "accepted"  # recovered by itself
            assert keys.last_error is None
        finally:
            await keys.aclose()

    run(main())


def test_a_slow_server_times_out_and_stale_keys_serve(server: JwksServer) -> None:
    idp = Signer("k1")
    server.publish(idp)
    clock = Clock()

    async def main() -> None:
        keys = cache(server, clock, timeout_s=0.3)
        v = JwtVerifier(keys, issuer=ISS, audience=AUD, cache_size=0)
        try:
            assert await code_of(v, idp.token()) == "accepted"
            server.delay_s = 3.0
            clock.now += 301
            started = time.perf_counter()
            assert await code_of(v, idp.token()) == "accepted"  # never waits for the refresh
            assert time.perf_counter() - started < 0.1
            await settle(keys)
            took = time.perf_counter() - started
            assert 0.25 < took < 1.5
            assert keys.last_error == "no answer within 0.3 s"
            # an unknown kid waits for its refetch, which times out
            clock.now += 30
            started = time.perf_counter()
            assert await code_of(v, idp.token(kid="k2")) == "unknown_kid"
            assert 0.25 < time.perf_counter() - started < 1.5
            assert keys.failures == 2
        finally:
            await keys.aclose()

    run(main())


def test_a_cold_start_against_a_slow_server_is_a_503(server: JwksServer) -> None:
    server.publish(Signer("k1"))
    server.delay_s = 3.0

    async def main() -> None:
        keys = cache(server, Clock(), timeout_s=0.2)
        try:
            started = time.perf_counter()
            assert await code_of(verifier(keys), Signer("k1").token()) == "keys_unavailable"
            assert time.perf_counter() - started < 1.0
        finally:
            await keys.aclose()

    run(main())


def test_a_cancelled_request_does_not_cancel_the_shared_fetch(server: JwksServer) -> None:
    idp = Signer("k1")
    server.publish(idp)
    server.delay_s = 0.3

    async def main() -> None:
        keys = cache(server, Clock())
        v = JwtVerifier(keys, issuer=ISS, audience=AUD, cache_size=0)
        try:
            impatient = asyncio.create_task(v.verify(idp.token()))
            patient = asyncio.create_task(v.verify(idp.token("svc-b")))
            await asyncio.sleep(0.1)
            impatient.cancel()
            assert (await patient).service_id == "svc-b"
            with pytest.raises(asyncio.CancelledError):
                await impatient
            assert server.hits == 1
        finally:
            await keys.aclose()

    run(main())


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 404}, "HTTP 404"),
        ({"body": b"<html>not json</html>"}, "refused: the JWKS is not JSON"),
        ({"body": b'{"keys": "none"}'}, "refused: a JWKS must be a JSON object"),
        ({"private": True}, "refused: the JWKS holds private key material"),
        ({"body": b'{"keys": []}'}, "no usable key in the JWKS (no keys)"),
        ({"body": b'{"keys": [{"kty": "oct", "k": "AAAA"}]}'}, "no usable key in the JWKS"),
        ({"huge": True}, "the JWKS is larger than 4096 bytes"),
        ({"huge": True, "content_length": False}, "the JWKS is larger than 4096 bytes"),
    ],
)
def test_refused_documents_keep_the_keys_in_use(
    server: JwksServer, setup: dict[str, Any], error: str
) -> None:
    idp = Signer("k1")
    server.publish(idp)
    clock = Clock()

    async def main() -> None:
        keys = cache(server, clock, max_bytes=4096)
        v = JwtVerifier(keys, issuer=ISS, audience=AUD, cache_size=0)
        try:
            assert await code_of(v, idp.token()) == "accepted"
            server.status = setup.get("status", 200)
            server.content_length = setup.get("content_length", True)
            if setup.get("private"):
                server.body = json.dumps(
                    {"keys": [dict(idp.jwk, d=b64(bytes(32)))]}
                ).encode()  # fmt: skip
            elif setup.get("huge"):
                server.body = json.dumps({"keys": [idp.jwk] * 40}).encode()
            else:
                server.body = setup.get("body", server.body)
            clock.now += 301
            assert await code_of(v, idp.token()) == "accepted"
            await settle(keys)
            assert keys.last_error is not None
            assert keys.last_error.startswith(error)
            assert await code_of(v, idp.token()) == "accepted"  # the previous keys
        finally:
            await keys.aclose()

    run(main())


def test_redirects_are_not_followed(server: JwksServer) -> None:
    idp = Signer("k1")
    server.publish(idp)

    async def main() -> None:
        url = f"http://127.0.0.1:{server.port}/redirect"
        keys = JwksCache(url, allow_http_loopback=True, timeout_s=1.0)
        try:
            assert await code_of(verifier(keys), idp.token()) == "keys_unavailable"
            assert keys.last_error == "HTTP 302"
            assert server.hits == 1
        finally:
            await keys.aclose()

    run(main())


@pytest.mark.parametrize(
    ("url", "loopback_ok", "allowed"),
    [
        ("https://idp.example/jwks", False, True),
        ("http://127.0.0.1:8080/jwks", True, True),
        ("http://127.0.0.2/jwks", True, True),
        ("http://[::1]:8080/jwks", True, True),
        ("http://localhost/jwks", True, True),
        ("http://127.0.0.1:8080/jwks", False, False),
        ("http://idp.example/jwks", True, False),
        ("http://10.1.2.3/jwks", True, False),
        ("http://localhost.evil.example/jwks", True, False),
        ("file:///etc/jwks.json", True, False),
        ("https:///jwks", True, False),
    ],
)
def test_only_https_or_loopback_http_in_development(
    url: str, loopback_ok: bool, allowed: bool
) -> None:
    if allowed:
        assert check_jwks_url(url, allow_http_loopback=loopback_ok) == url
    else:
        with pytest.raises(ValueError, match="JWKS URL"):
            check_jwks_url(url, allow_http_loopback=loopback_ok)


def test_an_https_jwks_url_is_fetched_over_tls_only() -> None:
    """A plain HTTP server on loopback cannot answer an https:// URL: the fetch fails."""
    port = free_port()
    srv = JwksServer()
    srv.port = port
    srv.publish(Signer("k1"))
    srv.start()

    async def main() -> None:
        keys = JwksCache(f"https://127.0.0.1:{port}/jwks", timeout_s=1.0)
        try:
            assert await code_of(verifier(keys), Signer("k1").token()) == "keys_unavailable"
            assert keys.last_error is not None
            assert keys.last_error.startswith("request failed")
        finally:
            await keys.aclose()

    try:
        run(main())
    finally:
        srv.stop()
