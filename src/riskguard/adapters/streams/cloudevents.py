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

An event is a :class:`CloudEvent`: a dict (what in-process consumers read) that can also carry
its payload's JSON text. A message claimed from the outbox on PostgreSQL comes with that text
as stored, so a stream's publisher gets the event's JSON built around it (:func:`event_json`,
once per event, on first use) instead of encoding the decoded payload again: the same JSON
value, not necessarily the same bytes as ``orjson.dumps(event)`` (the payload keeps the text
the service wrote).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

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


class CloudEvent(dict[str, Any]):
    """A CloudEvent (a plain dict to read) and, when the outbox's JSON text of its payload was
    at hand, that text (and, once :func:`event_json` built it, the event's JSON). Consumers
    must not change it: the JSON would no longer say what the dict does."""

    __slots__ = ("encoded", "payload_json")
    payload_json: str
    encoded: bytes


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


_TIME_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _time_json(at: datetime) -> bytes:
    """``at`` in UTC as a quoted RFC 3339 string ending in ``Z`` (naive means UTC)."""
    if at.tzinfo is not None and at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return orjson.dumps(at, option=_TIME_OPTIONS)


def to_cloudevent(
    message: Message, *, source_prefix: str = SOURCE_PREFIX, payload_json: str | None = None
) -> CloudEvent:
    """The event of ``message``. ``payload_json``: the payload's JSON text, when at hand (the
    outbox's own), which :func:`event_json` then builds the event's JSON around."""
    event = CloudEvent(
        specversion=SPEC_VERSION,
        id=message.id,
        source=f"{source_prefix}/tenants/{message.tenant_id}",
        type=TYPE_PREFIX + message.topic,
        subject=message.subject,
        time=_time_json(message.created_at)[1:-1].decode(),
        datacontenttype="application/json",
        tenantid=message.tenant_id,
        data=dict(message.payload),
    )
    if payload_json is not None:
        event.payload_json = payload_json
    return event


def event_json(event: Mapping[str, Any]) -> bytes:
    """The JSON of ``event``: for a :class:`CloudEvent` with its payload's text, built around
    that text (once: kept on the event for the next stream), else ``orjson.dumps(event)``."""
    if not isinstance(event, CloudEvent):
        return orjson.dumps(event)
    encoded: bytes | None = getattr(event, "encoded", None)
    if encoded is not None:
        return encoded
    text: str | None = getattr(event, "payload_json", None)
    if text is None:
        return orjson.dumps(event)
    # the event's other members as orjson writes them, then the payload's text as "data"
    head = orjson.dumps({key: value for key, value in event.items() if key != "data"})
    encoded = head[:-1] + b',"data":' + text.encode() + b"}"
    event.encoded = encoded
    return encoded
