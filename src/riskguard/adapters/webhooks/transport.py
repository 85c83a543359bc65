"""An httpx transport that connects only to addresses checked for this request.

Checking a URL and then letting the HTTP client resolve its host again leaves a gap: the name
can resolve to a public address for the check and to an internal one for the call (DNS
rebinding). Here the URL keeps its host name — so TLS verifies the certificate for that name,
SNI and ``Host`` are right, and connections are pooled per host name — but the TCP connection
goes to one of the addresses :func:`~riskguard.adapters.webhooks.urls.resolve_target` just
checked, given for the duration of the request with :func:`pinned`. A request whose host was
not pinned cannot open a connection at all. A pooled connection is reused only for its own host
name, and it was opened to an address that was allowed when it was opened.
"""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from riskguard.adapters.webhooks.urls import Target

_PINNED: contextvars.ContextVar[dict[tuple[str, int], tuple[str, ...]] | None] = (
    contextvars.ContextVar("riskguard_webhook_pinned", default=None)
)


@contextmanager
def pinned(target: Target) -> Iterator[None]:
    """Let requests in this context connect to ``target.host`` at ``target.addresses`` only."""
    token = _PINNED.set({(target.host, target.port): target.addresses})
    try:
        yield
    finally:
        _PINNED.reset(token)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = (_PINNED.get() or {}).get((host, port))
        if not addresses:
            raise httpcore.ConnectError(f"{host}:{port} was not checked for this request")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over connections to pinned addresses only (see the module docstring)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        keepalive_expiry_s: float = 30.0,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
            http1=True,
            http2=False,
            network_backend=_PinnedBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._pool.handle_async_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
