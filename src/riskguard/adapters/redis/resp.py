"""A minimal asyncio Redis client for the state store's hot path: one command in flight per
connection, RESP2 parsed by hiredis.

:class:`RespConnection` is an :class:`asyncio.Protocol`: a call writes a packed command to the
transport and awaits a future that ``data_received`` resolves with the parsed reply — no stream
reader, no task, no locks, one wake-up of the caller per call. That is all the state store needs
for its one ``EVALSHA`` an event; everything else (``PING``, ``DEL``) goes through redis-py.

Rules the caller relies on:

- A connection carries at most one command at a time. A call that fails, times out or is
  cancelled leaves a reply possibly pending, so the caller must :meth:`~RespConnection.close`
  the connection then (it never reads a stale reply as the answer to a new command).
- Error replies come back as values (:class:`hiredis.ReplyError`), not exceptions: the caller
  decides (``NOSCRIPT`` is a normal event for it). Transport failures raise
  :class:`ConnectionError` (an :class:`OSError`), an unanswered call :class:`TimeoutError`, a
  malformed stream :class:`hiredis.ProtocolError`.
- :func:`open_connection` authenticates (``AUTH [user] password``) and selects the database when
  the URL asks for it; TLS is not spoken here (the store keeps redis-py for ``rediss://``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: TCP (``host``/``port``) or a Unix socket (``path``)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    client_name: str | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Endpoint:
        """From redis-py's parsed URL (``ConnectionPool.connection_kwargs``)."""
        return cls(
            host=str(kwargs.get("host") or "localhost"),
            port=int(kwargs.get("port") or 6379),
            path=kwargs.get("path"),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username") or None,
            password=kwargs.get("password") or None,
            client_name=kwargs.get("client_name") or None,
        )


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("Timeout reading from socket"))


class RespConnection(asyncio.Protocol):
    """One connection; ``call`` sends a packed command and returns its parsed reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiter: asyncio.Future[Any] | None = None
        self.closed = False

    # asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._fail(exc)
            return
        if reply is False:  # not a whole reply yet
            return
        waiter = self.waiter
        if waiter is None:  # a reply nobody asked for: the stream cannot be trusted
            self._fail(ConnectionError("unexpected reply from Redis"))
            return
        self.waiter = None
        if not waiter.done():
            waiter.set_result(reply)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                ConnectionError("Connection closed by server.")
                if exc is None
                else ConnectionError(f"Connection lost: {exc}")
            )

    # the client ----------------------------------------------------------------------------

    async def call(self, command: bytes, timeout: float) -> Any:
        """Send one packed command and return its reply (a ``ReplyError`` for an error reply).

        Raises ``TimeoutError`` when no reply came within ``timeout`` seconds; after any
        exception (cancellation included) the connection must be closed.
        """
        if self.closed:
            raise ConnectionError("Connection closed.")
        loop = self.loop
        waiter = loop.create_future()
        self.waiter = waiter
        self.transport.write(command)  # type: ignore[union-attr]
        timer = loop.call_at(loop.time() + timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self, exc: BaseException | None = None) -> None:
        """Drop the connection now: a pending reply, if any, is never read; a call still
        waiting for it fails with ``exc`` (a ConnectionError by default)."""
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if self.transport is not None:
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionError("Connection closed."))

    def _fail(self, exc: BaseException) -> None:
        self.close(exc)


class ReplyErrorRaised(Exception):
    """An error reply during the connection's setup (``AUTH``, ``SELECT``)."""


async def open_connection(endpoint: Endpoint, timeout: float) -> RespConnection:
    """A connected, authenticated connection on ``endpoint``'s database, within ``timeout``."""
    loop = asyncio.get_running_loop()
    conn = RespConnection(loop)
    try:
        async with asyncio.timeout(timeout):
            if endpoint.path is not None:
                await loop.create_unix_connection(lambda: conn, endpoint.path)
            else:
                await loop.create_connection(lambda: conn, endpoint.host, endpoint.port)
            setup: list[tuple[Any, ...]] = []
            if endpoint.password is not None:
                if endpoint.username is not None:
                    setup.append(("AUTH", endpoint.username, endpoint.password))
                else:
                    setup.append(("AUTH", endpoint.password))
            if endpoint.client_name is not None:
                setup.append(("CLIENT", "SETNAME", endpoint.client_name))
            if endpoint.db:
                setup.append(("SELECT", endpoint.db))
            for command in setup:
                reply = await conn.call(hiredis.pack_command(command), timeout)
                if isinstance(reply, hiredis.ReplyError):
                    raise ReplyErrorRaised(f"{command[0]} failed: {reply}")
    except BaseException:
        conn.close()
        raise
    return conn


__all__ = ["Endpoint", "ReplyErrorRaised", "RespConnection", "open_connection"]
