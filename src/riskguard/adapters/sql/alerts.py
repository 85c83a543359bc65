"""Alerts, their notes and decisions, and labels: tables and :class:`SqlAlertStore`.

Tables (on the schema's one ``metadata``; migration 0005 creates them):

- ``alerts`` — one row per alert (see :class:`riskguard.services.alerts.Alert`). ``severity`` is
  stored as its number (1 low .. 4 critical) so the queue sorts on it. ``dedup_key``
  (``REASON:entity``) is set only while the alert absorbs decisions; the partial unique index
  ``uq_alerts_tenant_dedup`` (``WHERE dedup_key IS NOT NULL``) allows one such alert per
  tenant and key, which is what makes concurrent decisions open one alert: the open is an
  ``INSERT ... ON CONFLICT (tenant_id, dedup_key) WHERE dedup_key IS NOT NULL DO UPDATE``
  (both PostgreSQL and SQLite). Resolving an alert, or a decision arriving after its window,
  clears the key: the predicate is on the key rather than on the status so that a stale alert
  still open in the queue can hand its key to a new one. Queue indexes lead with the tenant,
  then (optionally) the status, in the list's order (severity, updated, id, all descending).
- ``alert_decisions`` — which decisions an alert holds (primary key: tenant and decision id, so
  a decision delivered twice is counted once), with the event id a resolution labels.
- ``alert_notes`` — analysts' notes, oldest first.
- ``labels`` — one row per (tenant, event, source): a later write replaces the label (last
  write wins; ``id`` stays that of the first write, so the list order is stable).

No table has a foreign key to ``tenants``: tenant ids come from authenticated keys, and an
in-memory store (embedded tests) keeps these tables in a database of its own.

Alert changes are published through the outbox in the same transaction: ``alert.opened`` when a
decision opens one, ``alert.updated`` on every workflow change. A decision joining an existing
alert publishes nothing (its own ``decision.created`` message already went out).

A batch of decisions is absorbed in one transaction (:meth:`SqlAlertStore.absorb_many`). On
PostgreSQL the statements of that path have the same text whatever the batch size (column
arrays expanded with ``unnest``), and all but the first go straight to the asyncpg connection
under SQLAlchemy's; the first goes through SQLAlchemy because that is what sends the
transaction's BEGIN. On SQLite every statement goes through SQLAlchemy.
"""

from __future__ import annotations

import base64
import builtins
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    Column,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from riskguard.adapters.sql import tables as t
from riskguard.adapters.sql.engines import error_kind, is_db_error, make_engine
from riskguard.adapters.sql.outbox import (
    ALERT_OPENED,
    ALERT_UPDATED,
    OutboxMessage,
    enqueue,
    enqueue_pg,
)
from riskguard.adapters.sql.urls import is_memory, redact
from riskguard.ports import DependencyUnavailable
from riskguard.services.alerts import (
    ANALYST_SOURCE,
    Absorbed,
    Alert,
    AlertCandidate,
    AlertDecision,
    AlertQuery,
    Label,
    LabelQuery,
    Note,
    ResolutionLabel,
    Severity,
    new_id,
)

T = TypeVar("T")

MAX_PAGE = 500
DEDUP_WHERE = "dedup_key IS NOT NULL"  # the predicate of uq_alerts_tenant_dedup
_MAX_CURSOR_CHARS = 512
_ID_CURSOR = re.compile(r"^(note|lbl)_[0-9A-HJKMNP-TV-Z]{26}$")
_ABSORB_ATTEMPTS = 3
# many candidates at once on PostgreSQL (see SqlAlertStore._join_or_open_pg); the same
# upsert as _AbsorbStatements.upsert, with the window in SQL rather than a cutoff per row
_PG_ABSORB = """
INSERT INTO alerts (id, tenant_id, entity, reason, severity, status, score, decision_count,
    first_decision_id, last_decision_id, first_seen_at, last_seen_at, opened_at, updated_at,
    dedup_key, revision)
SELECT u.id, u.tenant_id, u.entity, u.reason, u.severity, 'open', u.score, 1,
    u.decision_id, u.decision_id, u.occurred, u.occurred, $10, $10, u.dedup_key, 1
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::float8[],
    $7::text[], $8::timestamptz[], $9::text[])
    AS u(id, tenant_id, entity, reason, severity, score, decision_id, occurred, dedup_key)
ON CONFLICT (tenant_id, dedup_key) WHERE dedup_key IS NOT NULL DO UPDATE SET
    decision_count = alerts.decision_count + 1,
    severity = greatest(alerts.severity, excluded.severity),
    score = greatest(alerts.score, excluded.score),
    last_decision_id = CASE WHEN excluded.last_seen_at >= alerts.last_seen_at
        THEN excluded.last_decision_id ELSE alerts.last_decision_id END,
    first_decision_id = CASE WHEN excluded.first_seen_at < alerts.first_seen_at
        THEN excluded.first_decision_id ELSE alerts.first_decision_id END,
    last_seen_at = greatest(alerts.last_seen_at, excluded.last_seen_at),
    first_seen_at = least(alerts.first_seen_at, excluded.first_seen_at),
    updated_at = excluded.updated_at,
    revision = alerts.revision + 1
WHERE alerts.last_seen_at > excluded.last_seen_at - $11::interval
RETURNING alerts.*
"""
# absorb_many on PostgreSQL: fixed texts whatever the batch size (one array per column), so the
# server reuses each prepared statement and SQLAlchemy compiles nothing per batch.
# The decisions of a batch already held, as (tenant, decision) pairs (the pairs are distinct).
_PG_COUNTED = """
SELECT d.tenant_id, d.decision_id
FROM unnest($1::text[], $2::text[]) AS k(tenant_id, decision_id)
JOIN alert_decisions AS d USING (tenant_id, decision_id)
"""
# The same insert as _AbsorbStatements.link: one row back per decision actually inserted.
_PG_LINK = """
INSERT INTO alert_decisions (tenant_id, decision_id, alert_id, event_id, outcome, score,
    occurred_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::float8[], $7::timestamptz[])
ON CONFLICT (tenant_id, decision_id) DO NOTHING
RETURNING decision_id
"""

alerts = Table(
    "alerts",
    t.metadata,
    Column("id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("entity", String, nullable=True),
    Column("reason", String, nullable=False),
    Column("severity", Integer, nullable=False),
    Column("status", String, nullable=False),
    Column("assignee", String, nullable=True),
    Column("resolution", String, nullable=True),
    Column("score", Double, nullable=False),
    Column("decision_count", Integer, nullable=False),
    Column("first_decision_id", String, nullable=False),
    Column("last_decision_id", String, nullable=False),
    Column("first_seen_at", t.Timestamp, nullable=False),
    Column("last_seen_at", t.Timestamp, nullable=False),
    Column("opened_at", t.Timestamp, nullable=False),
    Column("updated_at", t.Timestamp, nullable=False),
    Column("resolved_at", t.Timestamp, nullable=True),
    Column("resolved_by", String, nullable=True),
    Column("dedup_key", String, nullable=True),
    Column("revision", Integer, nullable=False),
    PrimaryKeyConstraint("id", name="pk_alerts"),
)
Index(
    "uq_alerts_tenant_dedup",
    alerts.c.tenant_id,
    alerts.c.dedup_key,
    unique=True,
    postgresql_where=text(DEDUP_WHERE),
    sqlite_where=text(DEDUP_WHERE),
)
Index(
    "ix_alerts_tenant_queue",
    alerts.c.tenant_id,
    alerts.c.severity.desc(),
    alerts.c.updated_at.desc(),
    alerts.c.id.desc(),
)
Index(
    "ix_alerts_tenant_status_queue",
    alerts.c.tenant_id,
    alerts.c.status,
    alerts.c.severity.desc(),
    alerts.c.updated_at.desc(),
    alerts.c.id.desc(),
)
Index("ix_alerts_tenant_entity", alerts.c.tenant_id, alerts.c.entity, alerts.c.opened_at)
Index("ix_alerts_tenant_assignee", alerts.c.tenant_id, alerts.c.assignee, alerts.c.status)

alert_decisions = Table(
    "alert_decisions",
    t.metadata,
    Column("tenant_id", String, nullable=False),
    Column("decision_id", String, nullable=False),
    Column("alert_id", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("outcome", String, nullable=False),
    Column("score", Double, nullable=False),
    Column("occurred_at", t.Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant_id", "decision_id", name="pk_alert_decisions"),
    ForeignKeyConstraint(
        ["alert_id"], ["alerts.id"], name="fk_alert_decisions_alert_id_alerts", ondelete="CASCADE"
    ),
    Index("ix_alert_decisions_alert_time", "alert_id", "occurred_at"),
)

alert_notes = Table(
    "alert_notes",
    t.metadata,
    Column("id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("alert_id", String, nullable=False),
    Column("author", String, nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", t.Timestamp, nullable=False),
    PrimaryKeyConstraint("id", name="pk_alert_notes"),
    ForeignKeyConstraint(
        ["alert_id"], ["alerts.id"], name="fk_alert_notes_alert_id_alerts", ondelete="CASCADE"
    ),
    Index("ix_alert_notes_alert_id", "alert_id", "id"),
)

labels = Table(
    "labels",
    t.metadata,
    Column("id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("label", String, nullable=False),
    Column("source", String, nullable=False),
    Column("labelled_at", t.Timestamp, nullable=False),
    Column("author", String, nullable=False),
    Column("recorded_at", t.Timestamp, nullable=False),
    Column("alert_id", String, nullable=True),
    PrimaryKeyConstraint("id", name="pk_labels"),
    UniqueConstraint("tenant_id", "event_id", "source", name="uq_labels_tenant_event_source"),
    Index("ix_labels_tenant_id", "tenant_id", "id"),
)

_a = alerts.c
_ad = alert_decisions.c
_n = alert_notes.c
_l = labels.c


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite hands back naive UTC values)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under ``conn``, for statements sent to it directly inside
    ``conn``'s transaction. SQLAlchemy's asyncpg adapter sends BEGIN just before the first
    statement it executes itself, so one must have gone through ``conn`` already (a statement
    sent to the driver before that would run, and commit, on its own): RuntimeError if not."""
    raw: Any = (await conn.get_raw_connection()).driver_connection
    if not raw.is_in_transaction():
        raise RuntimeError("no transaction is open yet on the driver connection")
    return raw


class _AlreadyCounted(Exception):
    """Raised inside an absorb transaction to roll it back: the decision was counted before."""


def encode_alert_cursor(severity: int, updated_at: datetime, alert_id: str) -> str:
    """The opaque, URL-safe cursor pointing just after (severity, updated_at, id)."""
    raw = orjson.dumps([severity, utc(updated_at).isoformat(timespec="microseconds"), alert_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_alert_cursor(cursor: str) -> tuple[int, datetime, str]:
    """(severity, updated_at, id) of a cursor; ValueError("invalid cursor") when malformed."""
    try:
        if not cursor or len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (
            isinstance(value, list)
            and len(value) == 3
            and type(value[0]) is int
            and isinstance(value[1], str)
            and isinstance(value[2], str)
            and value[2]
        ):
            raise ValueError
        updated_at = datetime.fromisoformat(value[1])
        if updated_at.tzinfo is None:
            raise ValueError
        return value[0], utc(updated_at), value[2]
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise ValueError("invalid cursor") from None


def _id_cursor(cursor: str) -> str:
    """Notes and labels page on their (time-ordered) id; the cursor is the last id seen."""
    if not _ID_CURSOR.match(cursor):
        raise ValueError("invalid cursor")
    return cursor


def _alert(row: Row[Any] | Any) -> Alert:
    """An alert from a SQLAlchemy row or an asyncpg record."""
    m = row._mapping if isinstance(row, Row) else row
    return Alert(
        id=m["id"],
        tenant_id=m["tenant_id"],
        entity=m["entity"],
        reason=m["reason"],
        severity=Severity(m["severity"]),
        status=m["status"],
        assignee=m["assignee"],
        resolution=m["resolution"],
        score=float(m["score"]),
        decision_count=int(m["decision_count"]),
        first_decision_id=m["first_decision_id"],
        last_decision_id=m["last_decision_id"],
        first_seen_at=utc(m["first_seen_at"]),
        last_seen_at=utc(m["last_seen_at"]),
        opened_at=utc(m["opened_at"]),
        updated_at=utc(m["updated_at"]),
        resolved_at=utc(m["resolved_at"]) if m["resolved_at"] is not None else None,
        resolved_by=m["resolved_by"],
        dedup_key=m["dedup_key"],
        revision=int(m["revision"]),
    )


def _alert_values(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "tenant_id": alert.tenant_id,
        "entity": alert.entity,
        "reason": alert.reason,
        "severity": int(alert.severity),
        "status": alert.status,
        "assignee": alert.assignee,
        "resolution": alert.resolution,
        "score": alert.score,
        "decision_count": alert.decision_count,
        "first_decision_id": alert.first_decision_id,
        "last_decision_id": alert.last_decision_id,
        "first_seen_at": utc(alert.first_seen_at),
        "last_seen_at": utc(alert.last_seen_at),
        "opened_at": utc(alert.opened_at),
        "updated_at": utc(alert.updated_at),
        "resolved_at": utc(alert.resolved_at) if alert.resolved_at is not None else None,
        "resolved_by": alert.resolved_by,
        "dedup_key": alert.dedup_key,
        "revision": alert.revision,
    }


def _label(row: Row[Any]) -> Label:
    m = row._mapping
    return Label(
        id=m["id"],
        tenant_id=m["tenant_id"],
        event_id=m["event_id"],
        label=m["label"],
        source=m["source"],
        labelled_at=utc(m["labelled_at"]),
        author=m["author"],
        recorded_at=utc(m["recorded_at"]),
        alert_id=m["alert_id"],
    )


def _note(row: Row[Any]) -> Note:
    m = row._mapping
    return Note(
        id=m["id"],
        tenant_id=m["tenant_id"],
        alert_id=m["alert_id"],
        author=m["author"],
        text=m["text"],
        created_at=utc(m["created_at"]),
    )


@dataclass(frozen=True, slots=True)
class _AbsorbStatements:
    """The statements absorbing a decision, built once per store with bound parameters (so
    SQLAlchemy compiles each once and every decision only binds its values).

    - ``upsert``: open an alert, or join the tenant's absorbing alert with the same dedup key
      whose newest decision is after ``:cutoff`` (the candidate's event time minus the window);
      returns the alert, or nothing when the key's holder is past its window;
    - ``release``: clear that stale holder's key (it stays in the queue, keyless);
    - ``link``: record which alert holds the decision (nothing returned for a decision already
      held: the primary key is tenant and decision)."""

    upsert: Any
    release: Any
    link: Any

    @classmethod
    def build(cls, store: SqlAlertStore) -> _AbsorbStatements:
        names = [
            "id",
            "tenant_id",
            "entity",
            "reason",
            "severity",
            "status",
            "score",
            "decision_count",
            "first_decision_id",
            "last_decision_id",
            "first_seen_at",
            "last_seen_at",
            "opened_at",
            "updated_at",
            "dedup_key",
            "revision",
        ]
        opening = store._insert(alerts).values({name: bindparam(name) for name in names})
        new = opening.excluded
        upsert = opening.on_conflict_do_update(
            index_elements=[_a.tenant_id, _a.dedup_key],
            index_where=text(DEDUP_WHERE),
            set_={
                "decision_count": _a.decision_count + 1,
                "severity": store._greatest(_a.severity, new.severity),
                "score": store._greatest(_a.score, new.score),
                "last_decision_id": case(
                    (new.last_seen_at >= _a.last_seen_at, new.last_decision_id),
                    else_=_a.last_decision_id,
                ),
                "first_decision_id": case(
                    (new.first_seen_at < _a.first_seen_at, new.first_decision_id),
                    else_=_a.first_decision_id,
                ),
                "last_seen_at": store._greatest(_a.last_seen_at, new.last_seen_at),
                "first_seen_at": store._least(_a.first_seen_at, new.first_seen_at),
                "updated_at": new.updated_at,
                "revision": _a.revision + 1,
            },
            # only an alert whose newest decision is inside the window absorbs this one
            where=_a.last_seen_at > bindparam("cutoff", type_=t.Timestamp),
        ).returning(*alerts.c)
        release = (
            update(alerts)
            .where(
                _a.tenant_id == bindparam("r_tenant"),
                _a.dedup_key == bindparam("r_key"),
                _a.last_seen_at <= bindparam("r_cutoff", type_=t.Timestamp),
            )
            .values(dedup_key=None)
        )
        link_names = [
            "tenant_id",
            "alert_id",
            "decision_id",
            "event_id",
            "outcome",
            "score",
            "occurred_at",
        ]
        link = (
            store._insert(alert_decisions)
            .values({name: bindparam(name) for name in link_names})
            .on_conflict_do_nothing(index_elements=[_ad.tenant_id, _ad.decision_id])
            .returning(_ad.decision_id)
        )
        return cls(upsert, release, link)


class SqlAlertStore:
    """The :class:`~riskguard.services.alerts.AlertStore` on SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self.dialect: str = engine.dialect.name
        self._where = redact(engine.url.render_as_string(hide_password=True))
        self._memory = engine.dialect.name == "sqlite" and is_memory(
            engine.url.render_as_string(hide_password=False)
        )
        self._schema_ready = not self._memory
        self._absorb: _AbsorbStatements | None = None

    @classmethod
    def from_url(cls, url: str) -> SqlAlertStore:
        """A store with an engine of its own (closed by :meth:`close`)."""
        return cls(make_engine(url, pool_size=4, max_overflow=4), owns_engine=True)

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]], *, write: bool) -> T:
        """``work`` in one transaction (committed when ``write``); database failures become
        DependencyUnavailable naming the database (never its password)."""
        try:
            if not self._schema_ready:
                # in-memory SQLite: the one kept connection is the whole database
                async with self._engine.begin() as conn:
                    await conn.run_sync(t.metadata.create_all)
                self._schema_ready = True
            if write:
                async with self._engine.begin() as conn:
                    return await work(conn)
            async with self._engine.connect() as conn:
                return await work(conn)
        except Exception as exc:
            if is_db_error(exc):
                raise DependencyUnavailable(
                    f"database {self._where} is unavailable ({error_kind(exc)})"
                ) from None
            raise

    async def _rows(self, statement: Any) -> Sequence[Row[Any]]:
        async def work(conn: AsyncConnection) -> Sequence[Row[Any]]:
            rows: Sequence[Row[Any]] = (await conn.execute(statement)).all()
            return rows

        return await self._run(work, write=False)

    def _insert(self, table: Table) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    def _greatest(self, a: Any, b: Any) -> ColumnElement[Any]:
        # SQLite's two-argument max() is scalar, like PostgreSQL's greatest()
        return func.greatest(a, b) if self.dialect == "postgresql" else func.max(a, b)

    def _least(self, a: Any, b: Any) -> ColumnElement[Any]:
        return func.least(a, b) if self.dialect == "postgresql" else func.min(a, b)

    # -- absorbing decisions -----------------------------------------------------------------

    async def absorb(
        self, candidate: AlertCandidate, *, window: timedelta, now: datetime
    ) -> Absorbed:
        (absorbed,) = await self.absorb_many([candidate], window=window, now=now)
        return absorbed

    async def absorb_many(
        self, candidates: Sequence[AlertCandidate], *, window: timedelta, now: datetime
    ) -> builtins.list[Absorbed]:
        """:meth:`absorb` each candidate, in order, in one transaction (the dispatcher's
        batches).

        The transaction first finds the decisions an alert already holds; each of those, and
        each repeat of a decision within the batch, is answered after the transaction as a
        duplicate. The other candidates join or open their alerts, one row per decision goes
        into ``alert_decisions`` and every alert opened gets an ``alert.opened`` outbox
        message. Should a decision be counted concurrently while the batch runs (another
        dispatcher on an expired lease), the link insert inserts fewer rows than it was given:
        the batch rolls back and each candidate is absorbed on its own.

        On PostgreSQL each statement has the same text whatever the batch size, so the server
        reuses its prepared statements and SQLAlchemy compiles nothing per batch: the check is
        one join with the batch's (tenant, decision) arrays (sent with ``exec_driver_sql``,
        which also opens the transaction; see :func:`_driver`), the alerts are upserted by
        :meth:`_join_or_open_pg`, and the links and the outbox messages are one
        ``INSERT ... SELECT ... FROM unnest(...)`` each, on the asyncpg connection itself. On
        SQLite the check is one ``IN`` query per tenant, each candidate one upsert (statements
        compiled once per store), the links one executemany and the messages one insert."""
        if not candidates:
            return []
        now = utc(now)
        pg = self.dialect == "postgresql"

        async def work(conn: AsyncConnection) -> builtins.list[Absorbed | None]:
            counted = await self._held(conn, candidates)
            raw: Any = await _driver(conn) if pg else None
            todo: builtins.list[AlertCandidate] = []
            for c in candidates:
                key = (c.tenant_id, c.decision_id)
                if key not in counted:
                    counted.add(key)  # the same decision twice in one batch counts once
                    todo.append(c)
            if pg:
                held = await self._join_or_open_pg(conn, raw, todo, window=window, now=now)
            else:
                held = {
                    (c.tenant_id, c.decision_id): await self._join_or_open(
                        conn, c, window=window, now=now
                    )
                    for c in todo
                }
            results: builtins.list[Absorbed | None] = []
            links: builtins.list[tuple[AlertCandidate, str]] = []
            messages: builtins.list[OutboxMessage] = []
            for c in candidates:
                alert = held.pop((c.tenant_id, c.decision_id), None)
                if alert is None:
                    results.append(None)  # counted before: answered outside the transaction
                    continue
                links.append((c, alert.id))
                opened = alert.id == c.alert_id
                results.append(Absorbed(alert, opened=opened))
                if opened:
                    messages.append(
                        OutboxMessage.new(
                            c.tenant_id, ALERT_OPENED, alert.id, alert.to_dict(), now=now
                        )
                    )
            if links and await self._link(conn, raw, links) != len(links):
                raise _AlreadyCounted  # counted meanwhile by someone else
            if pg:
                await enqueue_pg(raw, messages)
            else:
                await enqueue(conn, messages)
            return results

        try:
            results = await self._run(work, write=True)
        except _AlreadyCounted:
            if len(candidates) == 1:
                return [await self._counted(candidates[0])]
            return [await self.absorb(c, window=window, now=now) for c in candidates]
        return [
            absorbed if absorbed is not None else await self._counted(c)
            for c, absorbed in zip(candidates, results, strict=True)
        ]

    async def _held(
        self, conn: AsyncConnection, candidates: Sequence[AlertCandidate]
    ) -> set[tuple[str, str]]:
        """The (tenant, decision) pairs of ``candidates`` that an alert already holds."""
        keys = dict.fromkeys((c.tenant_id, c.decision_id) for c in candidates)
        if self.dialect == "postgresql":
            rows = await conn.exec_driver_sql(
                _PG_COUNTED, ([k[0] for k in keys], [k[1] for k in keys])
            )
            return {(r.tenant_id, r.decision_id) for r in rows}
        by_tenant: dict[str, builtins.list[str]] = {}
        for tenant_id, decision_id in keys:
            by_tenant.setdefault(tenant_id, []).append(decision_id)
        held: set[tuple[str, str]] = set()
        for tenant_id, ids in by_tenant.items():
            found = await conn.execute(
                select(_ad.decision_id).where(_ad.tenant_id == tenant_id, _ad.decision_id.in_(ids))
            )
            held.update((tenant_id, r[0]) for r in found)
        return held

    async def _link(
        self,
        conn: AsyncConnection,
        raw: Any,
        links: Sequence[tuple[AlertCandidate, str]],
    ) -> int:
        """Record which alert (by id) holds each candidate's decision; the number of rows
        inserted, fewer than ``links`` when a decision was already held. On PostgreSQL one
        statement on ``raw`` (the asyncpg connection under ``conn``), its rows in (tenant,
        decision) order so that two batches sharing decisions take their key locks in the same
        order; on SQLite an executemany of :attr:`_AbsorbStatements.link`."""
        if self.dialect == "postgresql":
            ordered = sorted(links, key=lambda link: (link[0].tenant_id, link[0].decision_id))
            rows = await raw.fetch(
                _PG_LINK,
                [c.tenant_id for c, _ in ordered],
                [c.decision_id for c, _ in ordered],
                [alert_id for _, alert_id in ordered],
                [c.event_id for c, _ in ordered],
                [c.outcome for c, _ in ordered],
                [float(c.score) for c, _ in ordered],
                [utc(c.occurred_at) for c, _ in ordered],
            )
            return len(rows)
        values = [
            {
                "tenant_id": c.tenant_id,
                "alert_id": alert_id,
                "decision_id": c.decision_id,
                "event_id": c.event_id,
                "outcome": c.outcome,
                "score": c.score,
                "occurred_at": utc(c.occurred_at),
            }
            for c, alert_id in links
        ]
        return len((await conn.execute(self._statements().link, values)).all())

    async def _counted(self, c: AlertCandidate) -> Absorbed:
        """The answer for a decision an alert already holds."""
        rows = await self._rows(
            select(alerts)
            .join(alert_decisions, _ad.alert_id == _a.id)
            .where(_ad.tenant_id == c.tenant_id, _ad.decision_id == c.decision_id)
        )
        return Absorbed(_alert(rows[0]), opened=False, duplicate=True)

    async def _join_or_open(
        self, conn: AsyncConnection, c: AlertCandidate, *, window: timedelta, now: datetime
    ) -> Alert:
        """The alert ``c`` joins or opens, on ``conn`` inside the caller's transaction."""
        statements = self._statements()
        occurred = utc(c.occurred_at)
        cutoff = occurred - window
        values = {
            "id": c.alert_id,
            "tenant_id": c.tenant_id,
            "entity": c.entity,
            "reason": c.reason,
            "severity": int(c.severity),
            "status": "open",
            "score": c.score,
            "decision_count": 1,
            "first_decision_id": c.decision_id,
            "last_decision_id": c.decision_id,
            "first_seen_at": occurred,
            "last_seen_at": occurred,
            "opened_at": now,
            "updated_at": now,
            "dedup_key": c.dedup_key,
            "revision": 1,
            "cutoff": cutoff,
        }
        for _ in range(_ABSORB_ATTEMPTS):
            row = (await conn.execute(statements.upsert, values)).first()
            if row is not None:
                return _alert(row)
            # the key's holder is past its window: it stays in the queue, keyless
            await conn.execute(
                statements.release,
                {"r_tenant": c.tenant_id, "r_key": c.dedup_key, "r_cutoff": cutoff},
            )
        # a release always lets the next insert through
        raise RuntimeError("could not open an alert: its dedup key kept changing")

    async def _join_or_open_pg(
        self,
        conn: AsyncConnection,
        raw: Any,
        todo: Sequence[AlertCandidate],
        *,
        window: timedelta,
        now: datetime,
    ) -> dict[tuple[str, str], Alert]:
        """:meth:`_join_or_open` for many candidates on PostgreSQL, by (tenant, decision): one
        ``INSERT ... SELECT unnest(...) ON CONFLICT DO UPDATE`` per round, a round taking the
        next candidate of each dedup key (a statement may not update one row twice; later
        decisions of a key go in later rounds, so each key's decisions keep their order).
        Rows go in key order, so two batches lock shared alerts in the same order. A candidate
        whose key's holder is past its window gets no row back; it is taken on its own. The
        upserts go to ``raw``, the asyncpg connection under ``conn`` (see :func:`_driver`)."""
        held: dict[tuple[str, str], Alert] = {}
        pending = list(todo)
        while pending:
            keys: set[tuple[str, str]] = set()
            batch: builtins.list[AlertCandidate] = []
            rest: builtins.list[AlertCandidate] = []
            for c in pending:
                if c.dedup_key is None:
                    batch.append(c)
                elif (c.tenant_id, c.dedup_key) in keys:
                    rest.append(c)
                else:
                    keys.add((c.tenant_id, c.dedup_key))
                    batch.append(c)
            batch.sort(key=lambda c: (c.tenant_id, c.dedup_key or "", c.alert_id))
            rows = await raw.fetch(
                _PG_ABSORB,
                [c.alert_id for c in batch],
                [c.tenant_id for c in batch],
                [c.entity for c in batch],
                [c.reason for c in batch],
                [int(c.severity) for c in batch],
                [c.score for c in batch],
                [c.decision_id for c in batch],
                [utc(c.occurred_at) for c in batch],
                [c.dedup_key for c in batch],
                now,
                window,
            )
            by_id = {row["id"]: row for row in rows}
            by_key = {(row["tenant_id"], row["dedup_key"]): row for row in rows}
            for c in batch:
                row = by_id.get(c.alert_id)
                if row is None and c.dedup_key is not None:
                    row = by_key.get((c.tenant_id, c.dedup_key))
                if row is not None:
                    held[c.tenant_id, c.decision_id] = _alert(row)
                else:  # the key's holder is past its window: release it, open anew
                    held[c.tenant_id, c.decision_id] = await self._join_or_open(
                        conn, c, window=window, now=now
                    )
            pending = rest
        return held

    def _statements(self) -> _AbsorbStatements:
        if self._absorb is None:
            self._absorb = _AbsorbStatements.build(self)
        return self._absorb

    # -- reading alerts ----------------------------------------------------------------------

    async def get(self, tenant_id: str, alert_id: str) -> Alert | None:
        rows = await self._rows(select(alerts).where(_a.tenant_id == tenant_id, _a.id == alert_id))
        return _alert(rows[0]) if rows else None

    async def list(
        self, tenant_id: str, query: AlertQuery
    ) -> tuple[builtins.list[Alert], str | None]:
        limit = max(1, min(MAX_PAGE, int(query.limit)))
        conditions: list[ColumnElement[bool]] = [_a.tenant_id == tenant_id]
        if query.status is not None:
            conditions.append(_a.status == query.status)
        if query.severity is not None:
            conditions.append(_a.severity == int(query.severity))
        if query.entity is not None:
            conditions.append(_a.entity == query.entity)
        if query.assignee is not None:
            conditions.append(_a.assignee == query.assignee)
        if query.reason is not None:
            conditions.append(_a.reason == query.reason)
        if query.since is not None:
            conditions.append(_a.opened_at >= utc(query.since))
        if query.until is not None:
            conditions.append(_a.opened_at < utc(query.until))
        if query.cursor is not None:
            severity, updated_at, alert_id = decode_alert_cursor(query.cursor)
            conditions.append(
                tuple_(_a.severity, _a.updated_at, _a.id) < tuple_(severity, updated_at, alert_id)
            )
        rows = await self._rows(
            select(alerts)
            .where(*conditions)
            .order_by(_a.severity.desc(), _a.updated_at.desc(), _a.id.desc())
            .limit(limit + 1)
        )
        found = [_alert(row) for row in rows[:limit]]
        cursor = None
        if len(rows) > limit:
            last = found[-1]
            cursor = encode_alert_cursor(int(last.severity), last.updated_at, last.id)
        return found, cursor

    async def decisions(
        self, tenant_id: str, alert_id: str, *, limit: int
    ) -> builtins.list[AlertDecision]:
        rows = await self._rows(
            select(alert_decisions)
            .where(_ad.tenant_id == tenant_id, _ad.alert_id == alert_id)
            .order_by(_ad.occurred_at.desc(), _ad.decision_id.desc())
            .limit(limit)
        )
        return [
            AlertDecision(
                decision_id=r.decision_id,
                event_id=r.event_id,
                outcome=r.outcome,
                score=float(r.score),
                occurred_at=utc(r.occurred_at),
            )
            for r in rows
        ]

    # -- workflow ----------------------------------------------------------------------------

    async def save(self, before: Alert, after: Alert, *, label: ResolutionLabel | None) -> bool:
        values = _alert_values(after)
        for fixed in ("id", "tenant_id"):
            del values[fixed]
        statement = (
            update(alerts)
            .where(
                _a.tenant_id == before.tenant_id,
                _a.id == before.id,
                _a.revision == before.revision,
            )
            .values(**values)
        )

        async def work(conn: AsyncConnection) -> bool:
            if (await conn.execute(statement)).rowcount != 1:
                return False
            if label is not None:
                await self._label_events(conn, after, label)
            message = OutboxMessage.new(
                after.tenant_id, ALERT_UPDATED, after.id, after.to_dict(), now=after.updated_at
            )
            await enqueue(conn, [message])
            return True

        return await self._run(work, write=True)

    async def _label_events(
        self, conn: AsyncConnection, alert: Alert, label: ResolutionLabel
    ) -> None:
        events = (
            await conn.execute(
                select(_ad.event_id)
                .where(_ad.tenant_id == alert.tenant_id, _ad.alert_id == alert.id)
                .order_by(_ad.occurred_at, _ad.decision_id)
            )
        ).scalars()
        at = utc(label.at)
        rows = [
            {
                "id": new_id("lbl_", at),
                "tenant_id": alert.tenant_id,
                "event_id": event_id,
                "label": label.label,
                "source": ANALYST_SOURCE,
                "labelled_at": at,
                "author": label.author,
                "recorded_at": at,
                "alert_id": alert.id,
            }
            for event_id in dict.fromkeys(events)
        ]
        if rows:
            await conn.execute(self._label_upsert(), rows)

    def _label_upsert(self) -> Any:
        statement = self._insert(labels)
        new = statement.excluded
        return statement.on_conflict_do_update(
            index_elements=[_l.tenant_id, _l.event_id, _l.source],
            set_={
                "label": new.label,
                "labelled_at": new.labelled_at,
                "author": new.author,
                "recorded_at": new.recorded_at,
                "alert_id": new.alert_id,
            },
        )

    # -- notes -------------------------------------------------------------------------------

    async def add_note(self, note: Note) -> None:
        statement = alert_notes.insert().values(
            id=note.id,
            tenant_id=note.tenant_id,
            alert_id=note.alert_id,
            author=note.author,
            text=note.text,
            created_at=utc(note.created_at),
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self._run(work, write=True)

    async def notes(
        self, tenant_id: str, alert_id: str, *, limit: int, cursor: str | None
    ) -> tuple[builtins.list[Note], str | None]:
        limit = max(1, min(MAX_PAGE, int(limit)))
        conditions = [_n.tenant_id == tenant_id, _n.alert_id == alert_id]
        if cursor is not None:
            conditions.append(_n.id > _id_cursor(cursor))
        rows = await self._rows(
            select(alert_notes).where(*conditions).order_by(_n.id).limit(limit + 1)
        )
        found = [_note(row) for row in rows[:limit]]
        return found, (found[-1].id if len(rows) > limit else None)

    # -- labels ------------------------------------------------------------------------------

    async def put_label(self, label: Label) -> tuple[Label, bool]:
        statement = (
            self._label_upsert()
            .values(
                id=label.id,
                tenant_id=label.tenant_id,
                event_id=label.event_id,
                label=label.label,
                source=label.source,
                labelled_at=utc(label.labelled_at),
                author=label.author,
                recorded_at=utc(label.recorded_at),
                alert_id=label.alert_id,
            )
            .returning(*labels.c)
        )

        async def work(conn: AsyncConnection) -> Row[Any]:
            row: Row[Any] = (await conn.execute(statement)).one()
            return row

        stored = _label(await self._run(work, write=True))
        return stored, stored.id == label.id

    async def labels(
        self, tenant_id: str, query: LabelQuery
    ) -> tuple[builtins.list[Label], str | None]:
        limit = max(1, min(MAX_PAGE, int(query.limit)))
        conditions = [_l.tenant_id == tenant_id]
        if query.event_id is not None:
            conditions.append(_l.event_id == query.event_id)
        if query.label is not None:
            conditions.append(_l.label == query.label)
        if query.source is not None:
            conditions.append(_l.source == query.source)
        if query.since is not None:
            conditions.append(_l.labelled_at >= utc(query.since))
        if query.until is not None:
            conditions.append(_l.labelled_at < utc(query.until))
        if query.cursor is not None:
            conditions.append(_l.id < _id_cursor(query.cursor))
        rows = await self._rows(
            select(labels).where(*conditions).order_by(_l.id.desc()).limit(limit + 1)
        )
        found = [_label(row) for row in rows[:limit]]
        return found, (found[-1].id if len(rows) > limit else None)
