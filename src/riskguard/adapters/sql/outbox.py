"""The transactional outbox: side effects written with the decision, delivered later.

A decision (or an alert change) that must reach other systems is written as an
``outbox_messages`` row in the same transaction as the record itself, so the two commit or
fail together: a crash can never lose a side effect of a stored decision, nor invent one for a
decision that was not stored. A dispatcher (``riskguard.adapters.webhooks.dispatcher``) claims
the rows afterwards, fans each out to webhook subscriptions (``webhook_deliveries``) and to the
event streams, and deletes it — or, when it has deliveries (which read its payload) or needed
a retry, marks it dispatched, to be pruned after the retention.

Tables (on the schema's one ``metadata``; migration 0004 creates them):

- ``outbox_messages`` — ``id`` (``evt_`` + 26 Crockford base32, time-ordered; the CloudEvents
  id), ``tenant_id``, ``topic`` (``decision.created`` | ``alert.opened`` | ``alert.updated``),
  ``subject`` (the decision or alert id), ``payload`` (JSON), ``created_at``; the dispatch
  state: ``attempts``, ``next_attempt_at`` (a lease while claimed, a back-off after a failed
  publish), ``sinks_done`` (comma-separated names of the streams already published to),
  ``dispatched_at`` (set once every sink has it) and ``last_error``. Like ``decisions`` it has
  no foreign key to ``tenants`` (it is written on the hot path); ``payload`` is ``json``, not
  ``jsonb``, on PostgreSQL (written once, read whole).
- ``webhook_subscriptions`` — one endpoint of a tenant: ``url``, ``events`` (topic patterns),
  ``outcomes`` (optional filter of decision outcomes), ``secrets`` (a JSON list of sealed
  ``whsec_`` secrets, several active during a rotation), ``enabled``, ``revision``.
- ``webhook_deliveries`` — one message to one subscription. Its ``id`` is the
  ``webhook-id`` header: derived from the message and subscription ids, so fanning a message out
  twice (after a crash) makes the same rows, and every retry of a delivery carries the same id.
  ``state`` is ``pending`` | ``delivered`` | ``dead``.

Entry points for writing messages inside the caller's transaction, one per way the decision
store talks to its database: :func:`enqueue` (a SQLAlchemy ``AsyncConnection``),
:func:`enqueue_sqlite` (the group committer's raw ``sqlite3`` connection, inside its
``BEGIN IMMEDIATE``), :func:`enqueue_pg` (a raw asyncpg connection, inside the caller's
transaction) and :func:`pg_insert_with_outbox`, which folds the outbox insert into the
decision ``INSERT`` itself so an autocommitted batch stays one statement and one round trip —
and has the server build each ``decision.created`` message from the row it inserted, so the
service spends nothing of its own on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from riskguard.adapters.sql.engines import dumps
from riskguard.adapters.sql.tables import Json, Timestamp, metadata
from riskguard.ids import time_ordered_id
from riskguard.ports import DecisionRecord

DECISION_CREATED = "decision.created"
ALERT_OPENED = "alert.opened"
ALERT_UPDATED = "alert.updated"
TOPICS: tuple[str, ...] = (DECISION_CREATED, ALERT_OPENED, ALERT_UPDATED)

# the predicate of the partial index the dispatcher's claim reads
UNDISPATCHED_WHERE = "dispatched_at IS NULL"
PENDING_WHERE = "state = 'pending'"
DISPATCHED_WHERE = "dispatched_at IS NOT NULL"

outbox_messages = Table(
    "outbox_messages",
    metadata,
    Column("id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("topic", String, nullable=False),
    Column("subject", String, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("sinks_done", String, nullable=False),
    Column("dispatched_at", Timestamp, nullable=True),
    Column("last_error", Text, nullable=True),
    PrimaryKeyConstraint("id", name="pk_outbox_messages"),
)
Index(
    "ix_outbox_messages_due",
    outbox_messages.c.next_attempt_at,
    postgresql_where=text(UNDISPATCHED_WHERE),
    sqlite_where=text(UNDISPATCHED_WHERE),
)
# pruning reads dispatched messages only; undispatched ones (every message, as it is inserted)
# get no entry (migration 0006)
Index(
    "ix_outbox_messages_dispatched",
    outbox_messages.c.dispatched_at,
    postgresql_where=text(DISPATCHED_WHERE),
    sqlite_where=text(DISPATCHED_WHERE),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String, nullable=False),
    Column(
        "tenant_id",
        String,
        ForeignKey(
            "tenants.id", name="fk_webhook_subscriptions_tenant_id_tenants", ondelete="CASCADE"
        ),
        nullable=False,
    ),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("events", Json, nullable=False),
    Column("outcomes", Json, nullable=True),
    Column("secrets", Json, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("revision", Integer, nullable=False),
    PrimaryKeyConstraint("id", name="pk_webhook_subscriptions"),
    Index("ix_webhook_subscriptions_tenant_created", "tenant_id", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column(
        "subscription_id",
        String,
        ForeignKey(
            "webhook_subscriptions.id",
            name="fk_webhook_deliveries_subscription_id_webhook_subscriptions",
            ondelete="CASCADE",
        ),
        nullable=False,
    ),
    Column(
        "message_id",
        String,
        ForeignKey(
            "outbox_messages.id",
            name="fk_webhook_deliveries_message_id_outbox_messages",
            ondelete="CASCADE",
        ),
        nullable=False,
    ),
    Column("state", String, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("last_attempt_at", Timestamp, nullable=True),
    Column("delivered_at", Timestamp, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    Index("ix_webhook_deliveries_subscription", "subscription_id", "created_at", "id"),
    Index("ix_webhook_deliveries_message_id", "message_id"),
)
Index(
    "ix_webhook_deliveries_due",
    webhook_deliveries.c.next_attempt_at,
    postgresql_where=text(PENDING_WHERE),
    sqlite_where=text(PENDING_WHERE),
)

OUTBOX_COLUMNS: tuple[str, ...] = (
    "id",
    "tenant_id",
    "topic",
    "subject",
    "payload",
    "created_at",
    "attempts",
    "next_attempt_at",
    "sinks_done",
)


def new_message_id(now: float | None = None) -> str:
    """``evt_`` + 26 Crockford base32 characters, time-ordered (riskguard.ids): ids sort by
    creation time, which keeps the primary key index append-mostly."""
    return time_ordered_id("evt_", now)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One side effect to deliver: ``topic`` about ``subject`` (a decision or alert id)."""

    id: str
    tenant_id: str
    topic: str
    subject: str
    payload: Mapping[str, Any]
    created_at: datetime

    @classmethod
    def new(
        cls,
        tenant_id: str,
        topic: str,
        subject: str,
        payload: Mapping[str, Any],
        *,
        now: datetime | None = None,
    ) -> OutboxMessage:
        """A message with a fresh id; ValueError for a topic outside :data:`TOPICS`."""
        if topic not in TOPICS:
            raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPICS)}")
        at = _utc(now) if now is not None else datetime.now(UTC)
        return cls(new_message_id(at.timestamp()), tenant_id, topic, subject, payload, at)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return _utc(value).isoformat().replace("+00:00", "Z")


def decision_payload(record: DecisionRecord) -> dict[str, Any]:
    """What subscribers learn about a decision: the answer the caller got, its entity and
    times — not the event body nor the feature snapshot (they can hold personal data; a
    receiver that needs them reads ``GET /v1/decisions/{id}``)."""
    return {
        "decision_id": record.decision_id,
        "event_id": record.event_id,
        "type": record.event_type,
        "entity": record.entity,
        "outcome": record.outcome,
        "score": record.score,
        "reasons": record.reasons,
        "explanation": record.explanation,
        "ruleset_version": record.ruleset_version,
        "model_version": record.model_version,
        "degraded": record.degraded,
        "occurred_at": _iso(record.occurred_at),
        "received_at": _iso(record.received_at),
    }


def decision_message_id(decision_id: str) -> str:
    """The id of a decision's ``decision.created`` message: ``evt_`` and the decision id's
    own 26 time-ordered characters. A decision is stored once, so its message id is unique
    among decision messages; derived, it costs nothing to make (on PostgreSQL the insert
    computes it, :func:`pg_insert_with_outbox`) and a consumer can tell from an event which
    decision it is about. An id not in the ``dec_`` form keeps all of it after ``evt_``."""
    return "evt_" + (decision_id[4:] if decision_id.startswith("dec_") else decision_id)


def decision_message(record: DecisionRecord) -> OutboxMessage:
    """The ``decision.created`` message of a decision about to be stored."""
    return OutboxMessage(
        decision_message_id(record.decision_id),
        record.tenant_id,
        DECISION_CREATED,
        record.decision_id,
        decision_payload(record),
        _utc(record.received_at),
    )


def _sqlite_ts(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, so Core reads parse what raw writes wrote
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def outbox_rows(messages: Sequence[OutboxMessage], *, dialect: str) -> list[tuple[Any, ...]]:
    """``messages`` as rows in :data:`OUTBOX_COLUMNS` order, for a raw driver of ``dialect``
    (``"sqlite"``: timestamps as SQLAlchemy's text format; ``"postgresql"``: aware
    datetimes). ``payload`` is JSON text in both."""
    stamp = _sqlite_ts if dialect == "sqlite" else _utc
    rows = []
    for m in messages:
        at = stamp(m.created_at)
        rows.append((m.id, m.tenant_id, m.topic, m.subject, dumps(m.payload), at, 0, at, ""))
    return rows


async def enqueue(conn: AsyncConnection, messages: Sequence[OutboxMessage]) -> None:
    """Insert ``messages`` on ``conn``, in whatever transaction it is in (the caller commits)."""
    if not messages:
        return
    await conn.execute(
        outbox_messages.insert(),
        [
            {
                "id": m.id,
                "tenant_id": m.tenant_id,
                "topic": m.topic,
                "subject": m.subject,
                "payload": m.payload,
                "created_at": _utc(m.created_at),
                "attempts": 0,
                "next_attempt_at": _utc(m.created_at),
                "sinks_done": "",
            }
            for m in messages
        ],
    )


_SQLITE_INSERT = (
    f"INSERT INTO outbox_messages ({', '.join(OUTBOX_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in OUTBOX_COLUMNS)})"
)


def enqueue_sqlite(conn: sqlite3.Connection, messages: Sequence[OutboxMessage]) -> None:
    """Insert ``messages`` on a raw ``sqlite3`` connection inside the caller's transaction
    (the decision store's file writer calls it between ``BEGIN IMMEDIATE`` and ``COMMIT``)."""
    if messages:
        conn.executemany(_SQLITE_INSERT, outbox_rows(messages, dialect="sqlite"))


# One array per column (unnest zips them): text for the JSON too, cast on the server, so the
# statement works whatever json codec the connection has.
_PG_COLUMNS = f"INSERT INTO outbox_messages ({', '.join(OUTBOX_COLUMNS)}) "
_PG_INSERT = _PG_COLUMNS + (
    "SELECT m.id, m.tenant_id, m.topic, m.subject, m.payload::json, m.created_at, 0, "
    "m.created_at, '' FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::timestamptz[]) AS m(id, tenant_id, topic, subject, payload, created_at)"
)


def pg_outbox_params(messages: Sequence[OutboxMessage]) -> list[list[Any]]:
    """The six array parameters of the PostgreSQL outbox insert, in order (built column by
    column: this runs in the decision's group commit)."""
    return [
        [m.id for m in messages],
        [m.tenant_id for m in messages],
        [m.topic for m in messages],
        [m.subject for m in messages],
        [dumps(m.payload) for m in messages],
        [_utc(m.created_at) for m in messages],
    ]


async def enqueue_pg(conn: Any, messages: Sequence[OutboxMessage]) -> None:
    """Insert ``messages`` on a raw asyncpg connection (one statement), inside the caller's
    transaction (``async with conn.transaction(): ...``)."""
    if messages:
        await conn.execute(_PG_INSERT, *pg_outbox_params(messages))


def _pg_iso(column: str) -> str:
    """SQL for ``column`` (timestamptz) as :func:`_iso` writes it: UTC, ``Z``, microseconds
    only when there are any (as Python's ``isoformat`` does)."""
    day = 'YYYY-MM-DD"T"HH24:MI:SS'
    return (
        f"CASE WHEN date_part('microseconds', {column})::bigint % 1000000 = 0 "
        f"THEN to_char({column} AT TIME ZONE 'UTC', '{day}\"Z\"') "
        f"ELSE to_char({column} AT TIME ZONE 'UTC', '{day}.US\"Z\"') END"
    )


# decision_payload, written by the server from the row it has just inserted
_PG_DECISION_PAYLOAD = (
    "json_build_object('decision_id', d.decision_id, 'event_id', d.event_id, "
    "'type', d.event_type, 'entity', d.entity, 'outcome', d.outcome, 'score', d.score, "
    "'reasons', d.reasons, 'explanation', d.explanation, "
    "'ruleset_version', d.ruleset_version, 'model_version', d.model_version, "
    f"'degraded', d.degraded, 'occurred_at', {_pg_iso('d.occurred_at')}, "
    f"'received_at', {_pg_iso('d.received_at')})"
)
_PG_DECISION_MESSAGE_ID = (
    "'evt_' || CASE WHEN left(d.decision_id, 4) = 'dec_' THEN substr(d.decision_id, 5) "
    "ELSE d.decision_id END"
)


def pg_insert_with_outbox(decision_insert: str) -> str:
    """One statement: ``decision_insert`` plus the ``decision.created`` message of every
    decision it inserted, made by the server from the inserted rows.

    ``decision_insert`` is an ``INSERT INTO decisions ...`` without ``RETURNING`` (it may end
    in ``ON CONFLICT DO NOTHING``). A decision the insert skips (a duplicate event id) gets no
    message, and the whole statement is one transaction even in autocommit. The messages are
    :func:`decision_message`'s — id (:func:`decision_message_id`), payload
    (:func:`decision_payload`; a float score that is integral comes back as an integer, the
    same JSON number) and time — built in SQL, so the service's group commit sends no outbox
    parameters at all: the decision rows are the whole batch. It returns ``(tenant_id,
    event_id)`` of every decision inserted.
    """
    returning = (
        "decision_id, tenant_id, event_id, event_type, entity, outcome, score, reasons, "
        "explanation, ruleset_version, model_version, degraded, occurred_at, received_at"
    )
    return (
        f"WITH d AS ({decision_insert} RETURNING {returning}), "
        f"o AS ({_PG_COLUMNS}SELECT {_PG_DECISION_MESSAGE_ID}, d.tenant_id, "
        f"'{DECISION_CREATED}', d.decision_id, {_PG_DECISION_PAYLOAD}, d.received_at, 0, "
        "d.received_at, '' FROM d) "
        "SELECT tenant_id, event_id FROM d"
    )
