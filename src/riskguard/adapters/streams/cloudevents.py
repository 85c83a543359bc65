"""Published events as CloudEvents 1.0 (JSON structured mode), and the publisher protocol.

Every outbox message becomes one event::

    {"specversion": "1.0", "id": "evt_...", "source": "/riskguard/tenants/t_...",
     "type": "io.riskguard.decision.created", "subject": "dec_...",
     "time": "2026-11-21T10:15:00.123456Z", "datacontenttype": "application/json",
     "tenantid": "t_...", "data": {...}}

``id`` is the outbox message id, so a consumer can drop the copy a dispatcher re-publishes
after a crash; ``source`` + ``id`` is unique as the specification requires. ``tenantid`` is an
extension attribute (consumers filter on it without parsing ``source``). ``data`` is the
message payload: for decisions the answer the caller got (see ``outbox.decision_payload``).
Messages of a family (``decision``, ``alert``) go to its stream (``riskguard.decisions``,
``riskguard.alerts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

SPEC_VERSION = "1.0"
TYPE_PREFIX = "io.riskguard."
CONTENT_TYPE = "application/cloudevents+json"
SOURCE_PREFIX = "/riskguard"
# topic family -> stream name
STREAMS: Mapping[str, str] = {"decision": "riskguard.decisions", "alert": "riskguard.alerts"}


class Message(Protocol):
    """What an event is made from (an outbox message as claimed)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def payload(self) -> Mapping[str, Any]: ...
    @property
    def created_at(self) -> datetime: ...


class EventPublisher(Protocol):
    """A stream that takes events; ``publish`` returns once the stream has them all (or
    raises, and then any of them may or may not be there, and all are offered again later).

    An in-process consumer of the outbox (e.g. one that opens alerts for stored decisions,
    loading each by its ``subject``) is a publisher too: it gets the same progress tracking,
    retries and at-least-once delivery, so it must be idempotent."""

    name: str  # "redis" | "nats" | ...: recorded in the outbox once done (no ",")

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None: ...

    async def close(self) -> None: ...


def stream_of(topic: str) -> str | None:
    """The stream a topic's events go to (None: not published)."""
    return STREAMS.get(topic.split(".", 1)[0])


def to_cloudevent(message: Message, *, source_prefix: str = SOURCE_PREFIX) -> dict[str, Any]:
    at = message.created_at
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return {
        "specversion": SPEC_VERSION,
        "id": message.id,
        "source": f"{source_prefix}/tenants/{message.tenant_id}",
        "type": TYPE_PREFIX + message.topic,
        "subject": message.subject,
        "time": at.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "tenantid": message.tenant_id,
        "data": dict(message.payload),
    }
