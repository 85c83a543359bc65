"""Publishing CloudEvents to Redis Streams (``XADD``), one stream per topic family.

Each entry has the fields ``id`` (the CloudEvents id), ``type``, ``tenant`` and ``event`` (the
whole event, structured-mode JSON), so a consumer group can route on the small fields and
parse only what it keeps. Streams are capped with ``MAXLEN ~`` (Redis trims whole nodes, so
the length stays near the cap at almost no cost); size the cap so consumers never fall that far
behind. A batch is one server-side script call per stream (its events as the call's arguments):
one command to build and one reply to parse instead of one per event, which is where a client
pipeline spends its time. A script that fails part-way keeps the entries it added, like a
pipeline would. A call carries at most ``EVENTS_PER_CALL`` events: a script runs alone on the
server, and the decisions' own state commands should not wait behind thousands of ``XADD``s
(a dispatcher batch holds up to 2,000 messages). The calls are packed by hiredis and sent on
one of the client's pooled connections. Redelivery (after a failure or a dispatcher
crash) can add an event twice: consumers de-duplicate on ``id``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
import redis.asyncio as redis
from redis.exceptions import NoScriptError

from riskguard.adapters.streams.cloudevents import event_json, stream_of

DEFAULT_MAXLEN = 100_000
# ~1 ms of the server's time a call (about 11 µs an event, measured): the decisions' state
# scripts that arrive meanwhile wait behind it, so a call is kept short (250 stalled them ~3 ms)
EVENTS_PER_CALL = 100
_TIMEOUT_S = 5.0
# KEYS[1]: the stream; ARGV[1]: MAXLEN; then id, type, tenant, event per entry
_XADD_ALL = """
for i = 2, #ARGV, 4 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[i], 'type', ARGV[i + 1],
    'tenant', ARGV[i + 2], 'event', ARGV[i + 3])
end
return (#ARGV - 1) / 4
"""


class RedisStreamPublisher:
    """``XADD`` to ``{key_prefix}riskguard.decisions`` / ``{key_prefix}riskguard.alerts``."""

    name = "redis"

    def __init__(self, url: str, *, key_prefix: str = "", maxlen: int = DEFAULT_MAXLEN) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self._sha = hashlib.sha1(_XADD_ALL.encode()).hexdigest()  # EVALSHA; EVAL on NOSCRIPT

    def stream_key(self, stream: str) -> str:
        return self.key_prefix + stream

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        batches: dict[str, list[Any]] = {}
        for event in events:
            stream = stream_of(str(event["type"]).removeprefix("io.riskguard."))
            if stream is None:
                continue
            args = batches.get(stream)
            if args is None:
                args = batches[stream] = [self.maxlen]
            args += (event["id"], event["type"], event["tenantid"], event_json(event))
        step = 4 * EVENTS_PER_CALL
        for stream, args in batches.items():
            key = self.stream_key(stream)
            for start in range(1, len(args), step):
                await self._call(key, args[start : start + step])

    async def _call(self, key: str, args: list[Any]) -> None:
        """One script call, packed by hiredis (C) on a pooled connection: redis-py's own
        packing of a call's ~1,000 arguments cost the dispatcher more than the rest of the
        publish (an isinstance chain and a copy of the growing buffer per argument)."""
        command = ["EVALSHA", self._sha, 1, key, self.maxlen, *args]
        pool: Any = self._client.connection_pool  # redis-py leaves get_connection untyped
        conn = await pool.get_connection()
        try:
            try:
                await self._send(conn, command)
            except NoScriptError:  # a restarted or flushed server: the script goes with it
                command[0], command[1] = "EVAL", _XADD_ALL
                await self._send(conn, command)
        except BaseException:
            await asyncio.shield(conn.disconnect(nowait=True))
            raise
        finally:
            await pool.release(conn)

    @staticmethod
    async def _send(conn: Any, command: list[Any]) -> Any:
        await conn.send_packed_command(hiredis.pack_command(tuple(command)), check_health=False)
        return await conn.read_response()  # an error reply raises (NoScriptError, ...)

    async def close(self) -> None:
        await self._client.aclose()
