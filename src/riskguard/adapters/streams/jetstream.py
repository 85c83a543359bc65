"""Publishing CloudEvents to NATS JetStream, de-duplicated by the server.

Subjects are ``{subject_prefix}.decisions.{tenant id}`` and ``{subject_prefix}.alerts.{tenant
id}`` (``riskguard.decisions.t_...``), so a consumer takes one tenant or, with a wildcard, all.
Each event is published with the header ``Nats-Msg-Id`` = the event id: a dispatcher that
re-publishes after a crash is answered "duplicate" by JetStream within the stream's duplicate
window (two minutes by default; make it longer than the dispatcher's lease) and the stream keeps
one copy. The operator creates the stream (riskguard does not choose its retention or
replication); publishing to a subject no stream covers fails, and the outbox retries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from riskguard.adapters.streams.cloudevents import CONTENT_TYPE, event_json, stream_of

_CONNECT_TIMEOUT_S = 5.0


async def _quiet(_exc: Exception) -> None:
    """Connection errors surface as failed publishes (and outbox retries), not log noise."""


class JetStreamPublisher:
    """``js.publish`` of each event, acknowledged by the stream, in parallel."""

    name = "nats"

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        subject_prefix: str = "riskguard",
        timeout_s: float = 5.0,
    ) -> None:
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self.subject_prefix = subject_prefix
        self._timeout_s = timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    def subject(self, event: Mapping[str, Any]) -> str | None:
        stream = stream_of(str(event["type"]).removeprefix("io.riskguard."))
        if stream is None:
            return None
        family = stream.rsplit(".", 1)[1]  # "decisions" | "alerts"
        return f"{self.subject_prefix}.{family}.{event['tenantid']}"

    async def _context(self) -> JetStreamContext:
        async with self._lock:
            if self._js is None or self._nc is None or self._nc.is_closed:
                self._nc = await nats.connect(
                    servers=self._servers,
                    connect_timeout=_CONNECT_TIMEOUT_S,
                    max_reconnect_attempts=-1,
                    error_cb=_quiet,
                )
                self._js = self._nc.jetstream(timeout=self._timeout_s)
            return self._js

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        work: list[tuple[str, Mapping[str, Any]]] = []
        for event in events:
            subject = self.subject(event)
            if subject is not None:
                work.append((subject, event))
        if not work:
            return
        js = await self._context()
        await asyncio.gather(
            *(
                js.publish(
                    subject,
                    event_json(event),
                    timeout=self._timeout_s,
                    headers={"Nats-Msg-Id": str(event["id"]), "Content-Type": CONTENT_TYPE},
                )
                for subject, event in work
            )
        )

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()
