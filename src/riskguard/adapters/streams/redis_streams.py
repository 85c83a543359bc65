"""Publishing CloudEvents to Redis Streams (``XADD``), one stream per topic family.

Each entry has the fields ``id`` (the CloudEvents id), ``type``, ``tenant`` and ``event`` (the
whole event, structured-mode JSON), so a consumer group can route on the small fields and
parse only what it keeps. Streams are capped with ``MAXLEN ~`` (Redis trims whole nodes, so
the length stays near the cap at almost no cost); size the cap so consumers never fall that far
behind. A batch goes in one pipelined round trip. Redelivery after a dispatcher crash can add an
event twice: consumers de-duplicate on ``id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as redis

from riskguard.adapters.streams.cloudevents import stream_of

DEFAULT_MAXLEN = 100_000
_TIMEOUT_S = 5.0


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

    def stream_key(self, stream: str) -> str:
        return self.key_prefix + stream

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        queued = 0
        for event in events:
            stream = stream_of(str(event["type"]).removeprefix("io.riskguard."))
            if stream is None:
                continue
            fields: dict[Any, Any] = {
                "id": event["id"],
                "type": event["type"],
                "tenant": event["tenantid"],
                "event": orjson.dumps(event),
            }
            pipe.xadd(self.stream_key(stream), fields, maxlen=self.maxlen, approximate=True)
            queued += 1
        if queued:
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()
