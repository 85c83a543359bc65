"""A JWKS cache: the identity provider's public keys, fetched over HTTPS and kept close.

:class:`JwksCache` is a :class:`~riskguard.adapters.gateway.jwt.KeySource`. Behaviour:

- **Parsed once.** A fetched document becomes a :class:`~.jwt.KeySet` (keys parsed into
  ``cryptography`` objects, looked up by ``kid``); keys whose JWK did not change are carried over
  from the previous set as the same objects, so a refresh costs nothing per request and the
  verifier's result cache stays valid across refreshes.
- **TTL, refreshed in the background.** After ``ttl_s`` the next request starts a refresh and
  goes on with the current keys; requests never wait for a refresh while usable keys exist.
- **Unknown ``kid``.** A token naming a kid we do not hold waits for a refetch (key rotation:
  the issuer published a new key) — but at most one fetch starts per ``refetch_interval_s``,
  whatever starts it, so a flood of made-up kids costs one fetch per interval and otherwise an
  immediate ``unknown_kid``. A fetch already in flight is awaited instead.
- **Stale keys.** A failed or timed-out fetch (connection refused, HTTP error, body too large,
  not JSON, a set refused by :meth:`~.jwt.KeySet.from_jwks`, or a set with no usable key)
  leaves the current keys in place; they keep verifying until ``max_stale_s`` after the last
  successful fetch, after which requests fail with ``keys_unavailable`` (503) until a fetch
  succeeds.
- **Single flight.** Concurrent requests share one in-flight fetch; a cancelled request does not
  cancel it.
- **Bounded fetch.** One GET with an overall deadline of ``timeout_s`` (connect, headers and
  body together), no redirects followed, a body of at most ``max_bytes`` (refused early on
  ``Content-Length``, and while streaming otherwise).
- **HTTPS only**, except plain ``http://`` to a loopback host (127.0.0.0/8, ``::1``,
  ``localhost``) when ``allow_http_loopback`` is set — the development setting, so tests and a
  local identity provider work; production refuses any ``http://`` URL. Symmetric (``oct``)
  keys are never taken from a URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import httpx

from riskguard.adapters.gateway.jwt import (
    DEFAULT_ALGORITHMS,
    KeySet,
    KeySetError,
    KeysUnavailable,
    UnknownKid,
    VerificationKey,
    check_algorithms,
)


class JwksFetchError(Exception):
    """One fetch of the JWKS failed (the message says how, without the URL's credentials)."""


def check_jwks_url(url: str, *, allow_http_loopback: bool) -> str:
    """The URL if it may be fetched: https, or http to loopback when allowed; else ValueError."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("the JWKS URL must name a host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_http_loopback and _is_loopback(parts.hostname):
        return url
    if parts.scheme == "http":
        raise ValueError(
            "the JWKS URL must use https (plain http only to a loopback host in development)"
        )
    raise ValueError(f"the JWKS URL scheme {parts.scheme!r} is not supported; use https")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JwksCache:
    """Keys from a JWKS URL (see the module docstring for the policy)."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        ttl_s: float = 300.0,
        refetch_interval_s: float = 30.0,
        max_stale_s: float = 86_400.0,
        timeout_s: float = 2.0,
        max_bytes: int = 256 * 1024,
        allow_http_loopback: bool = False,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (refetch_interval_s > 0 and 0 < ttl_s <= max_stale_s and timeout_s > 0):
            raise ValueError("need 0 < ttl_s <= max_stale_s, refetch_interval_s > 0, timeout_s > 0")
        self.url = check_jwks_url(url, allow_http_loopback=allow_http_loopback)
        self.algorithms = check_algorithms(algorithms)
        self.ttl_s = ttl_s
        self.refetch_interval_s = refetch_interval_s
        self.max_stale_s = max_stale_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.clock = clock
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False
        )
        self._keys: KeySet | None = None
        self._fetched_at = -float("inf")  # last successful fetch (clock time)
        self._attempted_at = -float("inf")  # last fetch started, successful or not
        self._inflight: asyncio.Task[KeySet | None] | None = None
        self.fetches = 0  # fetches started
        self.failures = 0  # fetches failed
        self.last_error: str | None = None

    # -- KeySource --------------------------------------------------------------------------

    def current(self) -> KeySet | None:
        """The usable keys now (None when there are none, or they are past ``max_stale_s``);
        starts a background refresh when they are older than ``ttl_s``."""
        if self._keys is None:
            return None
        age = self.clock() - self._fetched_at
        if age > self.max_stale_s:
            return None
        if age > self.ttl_s and self._may_fetch():
            self._start_fetch()
        return self._keys

    async def key_for(self, kid: str | None, alg: str) -> VerificationKey:
        keys = self.current()
        if keys is None:
            keys = await self._fetch_or_wait()
            if keys is None:
                raise KeysUnavailable()
        key = keys.find(kid, alg)
        if key is not None:
            return key
        if self._inflight is None and not self._may_fetch():
            raise UnknownKid()  # refetched recently: rate limited
        keys = await self._fetch_or_wait()
        key = keys.find(kid, alg) if keys is not None else None
        if key is None:
            raise UnknownKid()
        return key

    @property
    def refreshing(self) -> bool:
        """Whether a fetch is in flight."""
        return self._inflight is not None

    # -- fetching -----------------------------------------------------------------------------

    async def refresh(self) -> KeySet:
        """Fetch now (joining a fetch in flight); raises KeysUnavailable when it fails and there
        are no usable stale keys."""
        keys = await self._join(self._start_fetch())
        if keys is None:
            raise KeysUnavailable()
        return keys

    async def aclose(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._own_client:
            await self._client.aclose()

    def _may_fetch(self) -> bool:
        return self.clock() - self._attempted_at >= self.refetch_interval_s

    async def _fetch_or_wait(self) -> KeySet | None:
        """The keys after the fetch in flight, or after a new one if the interval allows;
        without either, the usable keys as they are."""
        if self._inflight is not None:
            return await self._join(self._inflight)
        if self._may_fetch():
            return await self._join(self._start_fetch())
        return self.current()

    async def _join(self, task: asyncio.Task[KeySet | None]) -> KeySet | None:
        await asyncio.shield(task)  # a cancelled waiter must not cancel the shared fetch
        return self.current()

    def _start_fetch(self) -> asyncio.Task[KeySet | None]:
        if self._inflight is None:
            self._attempted_at = self.clock()
            self.fetches += 1
            self._inflight = asyncio.get_running_loop().create_task(self._fetch_guarded())
        return self._inflight

    async def _fetch_guarded(self) -> KeySet | None:
        try:
            keys = await self._fetch()
        except JwksFetchError as exc:
            self.failures += 1
            self.last_error = str(exc)
            return None
        else:
            self._keys = keys
            self._fetched_at = self.clock()
            self.last_error = None
            return keys
        finally:
            self._inflight = None

    async def _fetch(self) -> KeySet:
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._get()
        except TimeoutError:
            raise JwksFetchError(f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise JwksFetchError(f"request failed ({type(exc).__name__})") from None
        try:
            keys = KeySet.from_json(
                body, algorithms=self.algorithms, allow_symmetric=False, previous=self._keys
            )
        except KeySetError as exc:
            raise JwksFetchError(f"refused: {exc}") from None
        if not keys:
            reasons = "; ".join(s.reason for s in keys.skipped) or "no keys"
            raise JwksFetchError(f"no usable key in the JWKS ({reasons})")
        return keys

    async def _get(self) -> bytes:
        headers = {"Accept": "application/jwk-set+json, application/json"}
        request = self._client.stream("GET", self.url, headers=headers, follow_redirects=False)
        async with request as response:
            if response.status_code != 200:
                raise JwksFetchError(f"HTTP {response.status_code}")
            length = response.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                raise JwksFetchError(f"the JWKS is larger than {self.max_bytes} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise JwksFetchError(f"the JWKS is larger than {self.max_bytes} bytes")
        return bytes(body)
