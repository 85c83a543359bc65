"""A small pooled HTTP/1.1 client for the gateway's upstreams, on asyncio protocols + httptools.

Why not httpx: on the proxy's hot path httpx (with httpcore) spends several times the CPU of
everything else the gateway does per request (JWT check, rate limit and risk decision included),
and the proxy needs none of its features — one HTTP/1.1 request at a time per kept-alive
connection, bytes in, bytes out. This client is what the proxy needs and no more:

- **Pool.** Per upstream, idle keep-alive connections are kept (at most ``max_idle``, most
  recently used first); a connection is reused only when its previous response was read to the
  end and both sides allowed keep-alive. A reused connection that turns out to be closed before
  any byte of the answer arrived is replaced once, for requests whose body was not streamed
  (it can be sent again).
- **Streaming.** The request body is written as it arrives (``Content-Length`` when the client
  gave one, else chunked) with write flow control; the response body is read chunk by chunk and
  reading pauses while more than ``HIGH_WATER`` bytes wait for the client.
- **Errors** (the gateway answers them as problems)::

      UpstreamError            502  the upstream could not answer
      ├── UpstreamUnavailable  502  refused, reset, closed early, not HTTP
      └── UpstreamTimeout      504  no connection or no answer within the time allowed

Responses to ``HEAD`` end with their head; their connection is not reused (the parser cannot be
told that a ``Content-Length`` in the head announces no body).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools

HIGH_WATER = 256 * 1024  # buffered response bytes before reading from the upstream pauses
LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not answer; ``status`` is the gateway's answer."""

    status = 502


class UpstreamUnavailable(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class _Connection(asyncio.Protocol):
    """One upstream connection: at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser: Any = None
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.head_only = False
        self.interim = False
        self.eof_body = False  # the body ends when the connection closes
        self.received_any = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writable: asyncio.Future[None] | None = None

    # -- exchange lifecycle ---------------------------------------------------------------------

    def begin(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers = []
        self.keep_alive = False
        self.head_only = head_only
        self.interim = False
        self.eof_body = False
        self.received_any = False
        self.chunks.clear()
        self.buffered = 0
        self.complete = False
        self.error = None

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and not self.head_only
            and not self.closed
            and self.error is None
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: the exchange re-raises it from error
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self.complete:
            self._fail(UpstreamUnavailable("the upstream sent data outside an exchange"))
            return
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnavailable("the upstream switched protocols"))
        except httptools.HttpParserError:
            self._fail(UpstreamUnavailable("the upstream's answer is not valid HTTP/1.1"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is None or self.complete:
            return
        if self.eof_body and self.head.done():
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
            return
        self._fail(UpstreamUnavailable("the upstream closed the connection"))
        writable = self.writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable = self.writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): skip it
            self.headers = []
            self.interim = True
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if not (status in (204, 304) or self.head_only):
            names = {n for n, _ in self.headers}
            self.eof_body = b"content-length" not in names and b"transfer-encoding" not in names
        assert self.head is not None
        if not self.head.done():
            self.head.set_result(None)
        if self.head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()


class UpstreamResponse:
    """The head of an upstream's answer and its body, read with :meth:`read`."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "status")

    def __init__(self, conn: _Connection, pool: UpstreamPool, read_timeout: float) -> None:
        self._conn = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self.status = conn.status
        self.headers = conn.headers

    @property
    def finished(self) -> bool:
        """Whether every body byte has been received (and only buffered ones remain)."""
        return self._conn.complete

    def take_buffered(self) -> bytes:
        """Every body byte received so far (b"" if none)."""
        conn = self._conn
        if not conn.chunks:
            return b""
        data = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(conn.chunks)
        conn.chunks.clear()
        self._consumed()
        return data

    async def read(self) -> bytes | None:
        """The next piece of the body, or None at its end. Raises UpstreamError."""
        conn = self._conn
        while not conn.chunks:
            if conn.complete:
                return None
            if conn.error is not None:
                raise conn.error
            conn.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await conn.waiter
            except TimeoutError:
                conn.close()
                raise UpstreamTimeout("the upstream stopped sending its answer") from None
            finally:
                conn.waiter = None
        data = conn.chunks.popleft()
        self._consumed(len(data))
        return data

    def _consumed(self, size: int | None = None) -> None:
        conn = self._conn
        conn.buffered = conn.buffered - size if size is not None else 0
        if conn.reading_paused and conn.buffered < LOW_WATER and conn.transport is not None:
            conn.reading_paused = False
            conn.transport.resume_reading()

    def release(self) -> None:
        """Give the connection back (kept if reusable, else closed); call once, at the end."""
        self._pool.release(self._conn)


# A request body: None (no body), the whole body, or a source of pieces (None at the end).
BodySource = Callable[[], Awaitable[bytes | None]]


class UpstreamPool:
    """Keep-alive connections to one upstream (host, port, TLS or not)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        connect_timeout_s: float = 2.0,
        max_idle: int = 64,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._ssl = ssl.create_default_context() if tls else None
        self._idle: list[_Connection] = []
        self.connects = 0  # connections opened (tests and metrics)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl
                )
        except TimeoutError:
            raise UpstreamTimeout("no connection to the upstream in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(
                f"cannot connect to the upstream ({type(exc).__name__})"
            ) from None
        self.connects += 1
        return conn

    def release(self, conn: _Connection) -> None:
        if conn.reusable and len(self._idle) < self.max_idle:
            conn.parser = None
            conn.head = None
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def request(
        self,
        head: bytes,
        body: bytes | BodySource | None,
        *,
        chunked: bool,
        head_only: bool,
        timeout_s: float,
    ) -> UpstreamResponse:
        """Send one request (``head`` is the request line and headers, ending in a blank line)
        and wait for the answer's head, all within ``timeout_s``; body reads then wait at most
        ``timeout_s`` each. Raises UpstreamError."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._idle:
                    conn = self._idle.pop()
                    if conn.closed:
                        continue
                    try:
                        return await self._exchange(conn, head, body, chunked, head_only, timeout_s)
                    except UpstreamUnavailable:
                        # a kept connection the upstream had closed: retry only when nothing
                        # was answered and the body can be sent again
                        if conn.received_any or callable(body):
                            raise
                conn = await self._connect()
                return await self._exchange(conn, head, body, chunked, head_only, timeout_s)
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not answer in time") from None

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes | BodySource | None,
        chunked: bool,
        head_only: bool,
        timeout_s: float,
    ) -> UpstreamResponse:
        conn.begin(head_only)
        transport = conn.transport
        assert transport is not None
        assert conn.head is not None
        try:
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                transport.write(head + body)
            else:
                transport.write(head)
                await _stream(conn, transport, body, chunked)
            await conn.head
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, self, timeout_s)


async def _stream(
    conn: _Connection, transport: asyncio.Transport, source: BodySource, chunked: bool
) -> None:
    while True:
        piece = await source()
        if conn.error is not None:
            raise conn.error
        if piece is None:
            if chunked:
                transport.write(b"0\r\n\r\n")
            return
        if piece:
            if chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            else:
                transport.write(piece)
        writable = conn.writable
        if writable is not None and not writable.done():
            await writable
            if conn.error is not None:
                raise conn.error
