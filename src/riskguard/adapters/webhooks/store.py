"""``WebhookStore``: subscriptions, deliveries and the dispatcher's claims, in SQL.

Outbox messages are claimed for fan-out differently per database
(:meth:`WebhookStore.claimed_messages`). On PostgreSQL the claim is a row lock, ``FOR NO KEY
UPDATE SKIP LOCKED``, held by one transaction on one pooled connection from the claim to the
outcomes, while the publishers work on other connections: concurrent dispatchers take disjoint
batches, a message's row is rewritten once (its outcome, which also counts the attempt) instead
of twice (a lease, then the outcome, each a new row version with new index entries), and a
dispatcher that dies releases its batch with its connection. On SQLite, where a transaction
held across the publish would hold the database's one write lock and stop every decision, the
claim is a lease — one UPDATE moving ``next_attempt_at`` to the lease's end and counting the
attempt — and the outcomes a second short transaction; a dispatcher that dies leaves its rows
to be claimed again when the lease runs out.

Webhook deliveries are leases on both: the work (an HTTP call) runs outside any transaction, a
dispatcher that dies mid-attempt leaves the delivery to be claimed again when its lease runs
out — the same delivery, with the same id.

The fan-out's outcomes are written on PostgreSQL as raw asyncpg statements, not through
SQLAlchemy: usually one ``UPDATE ... WHERE id = ANY(...)`` for hundreds of messages, where
SQLAlchemy's executemany would process and execute one UPDATE per message.

Every failure to reach the database becomes
:class:`~riskguard.ports.DependencyUnavailable` (with the database named, never its password).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Boolean, bindparam, delete, exists, literal_column, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from riskguard.adapters.sql.engines import error_kind, is_db_error, loads, make_engine
from riskguard.adapters.sql.outbox import (
    PENDING_WHERE,
    outbox_messages,
    webhook_deliveries,
    webhook_subscriptions,
)
from riskguard.adapters.sql.store import decode_cursor, encode_cursor, utc
from riskguard.adapters.sql.urls import redact
from riskguard.adapters.webhooks.models import (
    ClaimedMessage,
    Delivery,
    DueDelivery,
    MessageBatch,
    MessageOutcome,
    NewDelivery,
    SecretRecord,
    Subscription,
)
from riskguard.ports import DependencyUnavailable

T = TypeVar("T")
MAX_PAGE = 200

_m = outbox_messages.c
_s = webhook_subscriptions.c
_d = webhook_deliveries.c
_PENDING = literal_column(PENDING_WHERE, Boolean())  # as a literal: the partial index applies


class StaleError(Exception):
    """A subscription changed since it was read (the caller re-reads and retries)."""


class AlreadyPendingError(Exception):
    """Redelivery of a delivery that is still pending (it will be attempted anyway)."""


class WebhookStore:
    """Webhook data on the decision store's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self.dialect: str = engine.dialect.name
        self._where = redact(engine.url.render_as_string(hide_password=True))

    @classmethod
    def from_url(cls, url: str) -> WebhookStore:
        """A store with an engine of its own (closed by :meth:`close`)."""
        return cls(make_engine(url, pool_size=4, max_overflow=4), owns_engine=True)

    async def close(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]], *, write: bool) -> T:
        try:
            if write:
                async with self._engine.begin() as conn:
                    return await work(conn)
            async with self._engine.connect() as conn:
                return await work(conn)
        except IntegrityError:
            raise
        except Exception as exc:
            if is_db_error(exc):
                raise DependencyUnavailable(
                    f"database {self._where} is unavailable ({error_kind(exc)})"
                ) from None
            raise

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    # -- subscriptions -----------------------------------------------------------------------

    async def create_subscription(self, sub: Subscription) -> None:
        """Store a new subscription; ValueError when its tenant does not exist."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(webhook_subscriptions.insert().values(**_subscription_row(sub)))

        try:
            await self._run(work, write=True)
        except IntegrityError:
            raise ValueError(f"unknown tenant {sub.tenant_id!r}") from None

    async def get_subscription(self, tenant_id: str, subscription_id: str) -> Subscription | None:
        rows = await self._rows(
            select(webhook_subscriptions).where(_s.tenant_id == tenant_id, _s.id == subscription_id)
        )
        return _subscription(rows[0]) if rows else None

    async def list_subscriptions(self, tenant_id: str) -> list[Subscription]:
        rows = await self._rows(
            select(webhook_subscriptions)
            .where(_s.tenant_id == tenant_id)
            .order_by(_s.created_at, _s.id)
        )
        return [_subscription(row) for row in rows]

    async def save_subscription(self, sub: Subscription, *, expected_revision: int) -> None:
        """Write ``sub`` over the stored row if that is still at ``expected_revision``
        (:class:`StaleError` otherwise, or when the row is gone)."""
        values = _subscription_row(sub)
        for key in ("id", "tenant_id", "created_at"):
            del values[key]
        statement = (
            update(webhook_subscriptions)
            .where(
                _s.tenant_id == sub.tenant_id,
                _s.id == sub.id,
                _s.revision == expected_revision,
            )
            .values(**values)
        )

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(statement)).rowcount)

        if await self._run(work, write=True) != 1:
            raise StaleError(sub.id)

    async def delete_subscription(self, tenant_id: str, subscription_id: str) -> bool:
        """Delete it and its deliveries; False when there was none."""
        statement = delete(webhook_subscriptions).where(
            _s.tenant_id == tenant_id, _s.id == subscription_id
        )

        async def work(conn: AsyncConnection) -> bool:
            await conn.execute(
                delete(webhook_deliveries).where(
                    _d.tenant_id == tenant_id, _d.subscription_id == subscription_id
                )
            )
            return int((await conn.execute(statement)).rowcount) == 1

        return await self._run(work, write=True)

    async def disable_subscription(self, subscription_id: str, reason: str, now: datetime) -> None:
        """Stop deliveries to a subscription (a receiver answered 410 Gone)."""
        statement = (
            update(webhook_subscriptions)
            .where(_s.id == subscription_id)
            .values(
                enabled=False,
                disabled_reason=reason,
                updated_at=utc(now),
                revision=_s.revision + 1,
            )
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self._run(work, write=True)

    # -- deliveries: reads and redelivery ----------------------------------------------------

    async def list_deliveries(
        self,
        tenant_id: str,
        subscription_id: str,
        *,
        state: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Delivery], str | None]:
        """A page, newest first, and the next page's cursor (ValueError for a bad cursor)."""
        limit = max(1, min(MAX_PAGE, int(limit)))
        conditions = [_d.tenant_id == tenant_id, _d.subscription_id == subscription_id]
        if state is not None:
            conditions.append(_d.state == state)
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            conditions.append(tuple_(_d.created_at, _d.id) < tuple_(at, last_id))
        rows = await self._rows(
            _deliveries_query()
            .where(*conditions)
            .order_by(_d.created_at.desc(), _d.id.desc())
            .limit(limit + 1)
        )
        items = [_delivery(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(items[-1].created_at, items[-1].id)
        return items, next_cursor

    async def get_delivery(
        self, tenant_id: str, subscription_id: str, delivery_id: str
    ) -> Delivery | None:
        rows = await self._rows(
            _deliveries_query().where(
                _d.tenant_id == tenant_id,
                _d.subscription_id == subscription_id,
                _d.id == delivery_id,
            )
        )
        return _delivery(rows[0]) if rows else None

    async def redeliver(
        self, tenant_id: str, subscription_id: str, delivery_id: str, now: datetime
    ) -> Delivery | None:
        """Make a delivered or dead delivery pending again, due now, with a fresh attempt
        budget and the same id. None when it does not exist; :class:`AlreadyPendingError`
        when it is pending already (it will be attempted anyway)."""
        statement = (
            update(webhook_deliveries)
            .where(
                _d.tenant_id == tenant_id,
                _d.subscription_id == subscription_id,
                _d.id == delivery_id,
                _d.state != "pending",
            )
            .values(
                state="pending",
                attempts=0,
                next_attempt_at=utc(now),
                delivered_at=None,
                last_status=None,
                last_error=None,
            )
        )

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(statement)).rowcount)

        changed = await self._run(work, write=True)
        delivery = await self.get_delivery(tenant_id, subscription_id, delivery_id)
        if delivery is not None and not changed:
            raise AlreadyPendingError(delivery_id)
        return delivery

    # -- the dispatcher: messages ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claimed_messages(
        self, limit: int, lease_s: float, now: datetime
    ) -> AsyncIterator[MessageBatch]:
        """Up to ``limit`` undispatched messages that are due, oldest first, held for fan-out
        until the block ends; record their outcomes with :meth:`MessageBatch.finish` inside it.

        PostgreSQL: one transaction from the claim to the outcomes. The claim is a row lock
        (``FOR NO KEY UPDATE SKIP LOCKED``: concurrent dispatchers take disjoint batches) rather
        than a lease written into the rows, so a message is rewritten once (its outcome), not
        twice, and a dispatcher that dies leaves nothing to wait for: its locks go with its
        connection. Leaving the block by an exception rolls the batch back (due again at once).
        SQLite: a lease (``lease_s``), as :meth:`finish_messages` documents; the work between
        claim and outcome holds no lock there, so decisions are never kept waiting behind it."""
        if self.dialect != "postgresql":
            yield MessageBatch(await self._lease_messages(limit, lease_s, now), self._finish_leased)
            return
        try:
            async with self._engine.connect() as conn:
                raw: Any = (await conn.get_raw_connection()).driver_connection
                transaction = raw.transaction()
                await transaction.start()
                try:
                    await raw.execute(_PG_QUEUE_PLAN)
                    rows = await raw.fetch(_PG_LOCK_MESSAGES, utc(now), limit)
                    claimed = [
                        ClaimedMessage(
                            id=row[0],
                            tenant_id=row[1],
                            topic=row[2],
                            subject=row[3],
                            payload=loads(row[4]),
                            created_at=row[5],
                            attempts=row[6] + 1,
                            sinks_done=frozenset(row[7].split(",")) if row[7] else _NO_SINKS,
                            payload_json=row[4],
                        )
                        for row in rows
                    ]
                    claimed.sort(key=_message_order)

                    async def finish(
                        outcomes: Sequence[MessageOutcome],
                        deliveries: Sequence[NewDelivery],
                        at: datetime,
                    ) -> None:
                        for statement, args in _pg_finish_statements(outcomes, deliveries, utc(at)):
                            await raw.execute(statement, *args)

                    yield MessageBatch(claimed, finish)
                except BaseException:
                    await transaction.rollback()
                    raise
                await transaction.commit()
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(None, None, exc) from exc
        except Exception as exc:
            if is_db_error(exc):
                raise DependencyUnavailable(
                    f"database {self._where} is unavailable ({error_kind(exc)})"
                ) from None
            raise

    async def _lease_messages(
        self, limit: int, lease_s: float, now: datetime
    ) -> list[ClaimedMessage]:
        """SQLite: lease up to ``limit`` undispatched messages that are due, oldest first."""
        due = (
            select(_m.id)
            .where(_m.dispatched_at.is_(None), _m.next_attempt_at <= utc(now))
            .order_by(_m.next_attempt_at)
            .limit(limit)
        )
        statement = (
            update(outbox_messages)
            .where(_m.id.in_(due.scalar_subquery()))
            .values(
                attempts=_m.attempts + 1,
                next_attempt_at=utc(now) + timedelta(seconds=lease_s),
            )
            .returning(
                _m.id,
                _m.tenant_id,
                _m.topic,
                _m.subject,
                _m.payload,
                _m.created_at,
                _m.attempts,
                _m.sinks_done,
            )
        )

        async def work(conn: AsyncConnection) -> Sequence[Row[Any]]:
            rows: Sequence[Row[Any]] = (await conn.execute(statement)).all()
            return rows

        stored = await self._run(work, write=True)
        claimed = [
            ClaimedMessage(
                id=row.id,
                tenant_id=row.tenant_id,
                topic=row.topic,
                subject=row.subject,
                payload=row.payload,
                created_at=utc(row.created_at),
                attempts=int(row.attempts),
                sinks_done=frozenset(filter(None, row.sinks_done.split(","))),
            )
            for row in stored
        ]
        claimed.sort(key=_message_order)
        return claimed

    async def enabled_subscriptions(self, tenant_ids: Sequence[str]) -> list[Subscription]:
        """The enabled subscriptions of ``tenant_ids`` (asked once per fan-out batch: on
        PostgreSQL one fixed statement on the driver, which the server keeps prepared, rather
        than a query SQLAlchemy compiles anew for every batch's list of tenants)."""
        if not tenant_ids:
            return []
        if self.dialect == "postgresql":
            found = await self._raw(_PG_ENABLED_SUBSCRIPTIONS, sorted(set(tenant_ids)))
            return [_subscription_of(dict(record)) for record in found]
        rows = await self._rows(
            select(webhook_subscriptions).where(
                _s.tenant_id.in_(sorted(set(tenant_ids))), _s.enabled.is_(True)
            )
        )
        return [_subscription(row) for row in rows]

    async def _finish_leased(
        self,
        outcomes: Sequence[MessageOutcome],
        deliveries: Sequence[NewDelivery],
        now: datetime,
    ) -> None:
        """SQLite, after :meth:`_lease_messages`: in one transaction, create ``deliveries``
        (those that exist already are kept as they are) and record each message's outcome:
        deleted when dispatched at its first attempt with no delivery, else dispatched or due
        again later (see _PG_DELETE_DONE)."""
        at = utc(now)
        insert = self._insert(webhook_deliveries).on_conflict_do_nothing(index_elements=["id"])
        delivery_rows = [
            {
                "id": d.id,
                "tenant_id": d.tenant_id,
                "subscription_id": d.subscription_id,
                "message_id": d.message_id,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": at,
                "created_at": at,
            }
            for d in deliveries
        ]
        finish = (
            update(outbox_messages)
            .where(_m.id == bindparam("b_id"))
            .values(
                sinks_done=bindparam("b_sinks"),
                dispatched_at=bindparam("b_dispatched"),
                next_attempt_at=bindparam("b_next"),
                last_error=bindparam("b_error"),
            )
        )
        done = set(_done(outcomes, deliveries))
        outcome_rows = [
            {
                "b_id": o.id,
                "b_sinks": ",".join(sorted(o.sinks_done)),
                "b_dispatched": at if o.retry_at is None else None,
                "b_next": at if o.retry_at is None else utc(o.retry_at),
                "b_error": o.error,
            }
            for o in outcomes
            if o.id not in done
        ]

        async def work(conn: AsyncConnection) -> None:
            if delivery_rows:
                await conn.execute(insert, delivery_rows)
            if done:
                await conn.execute(delete(outbox_messages).where(_m.id.in_(sorted(done))))
            if outcome_rows:
                await conn.execute(finish, outcome_rows)

        await self._run(work, write=True)

    # -- the dispatcher: deliveries ----------------------------------------------------------

    async def claim_deliveries(
        self, limit: int, lease_s: float, now: datetime
    ) -> list[DueDelivery]:
        """Lease up to ``limit`` pending deliveries that are due, of enabled subscriptions,
        counting this attempt; with each its subscription's URL and secrets and its message."""
        at = utc(now)
        due = (
            select(_d.id)
            .where(
                _PENDING,
                _d.next_attempt_at <= at,
                exists().where(_s.id == _d.subscription_id, _s.enabled.is_(True)),
            )
            .order_by(_d.next_attempt_at)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True, of=webhook_deliveries)
        claim = (
            update(webhook_deliveries)
            .where(_d.id.in_(due.scalar_subquery()))
            .values(
                attempts=_d.attempts + 1,
                next_attempt_at=at + timedelta(seconds=lease_s),
                last_attempt_at=at,
            )
            .returning(_d.id)
        )

        details = (
            select(
                _d.id,
                _d.attempts,
                _d.subscription_id,
                _d.tenant_id,
                _s.url,
                _s.secrets,
                _m.id.label("message_id"),
                _m.topic,
                _m.payload,
                _m.created_at.label("message_created_at"),
            )
            .join(webhook_subscriptions, _s.id == _d.subscription_id)
            .join(outbox_messages, _m.id == _d.message_id)
            .order_by(_d.next_attempt_at, _d.id)
        )

        async def work(conn: AsyncConnection) -> list[Any]:
            if self.dialect == "postgresql":
                await conn.exec_driver_sql(_PG_QUEUE_PLAN)
            ids = [row.id for row in (await conn.execute(claim)).all()]
            if not ids:
                return []
            return list((await conn.execute(details.where(_d.id.in_(ids)))).all())

        rows = await self._run(work, write=True)
        return [
            DueDelivery(
                id=row.id,
                attempts=int(row.attempts),
                subscription_id=row.subscription_id,
                tenant_id=row.tenant_id,
                url=row.url,
                secrets=_secrets(row.secrets),
                message_id=row.message_id,
                topic=row.topic,
                payload=row.payload,
                message_created_at=utc(row.message_created_at),
            )
            for row in rows
        ]

    async def delivery_succeeded(self, delivery_id: str, status: int, now: datetime) -> None:
        statement = (
            update(webhook_deliveries)
            .where(_d.id == delivery_id, _PENDING)
            .values(state="delivered", delivered_at=utc(now), last_status=status, last_error=None)
        )
        await self._execute(statement)

    async def delivery_failed(
        self,
        delivery_id: str,
        *,
        attempts: int,
        status: int | None,
        error: str,
        retry_at: datetime | None,
    ) -> None:
        """Record a failed attempt: due again at ``retry_at``, or dead when that is None.
        Only if the delivery is still at ``attempts`` (no later claim has taken it)."""
        values: dict[str, Any] = {"last_status": status, "last_error": error[:500]}
        if retry_at is None:
            values["state"] = "dead"
        else:
            values["next_attempt_at"] = utc(retry_at)
        statement = (
            update(webhook_deliveries)
            .where(_d.id == delivery_id, _PENDING, _d.attempts == attempts)
            .values(**values)
        )
        await self._execute(statement)

    async def prune(self, before: datetime) -> int:
        """Delete messages dispatched before ``before`` that have no pending delivery, with
        their deliveries; the number of messages deleted."""
        at = utc(before)
        other = webhook_deliveries.alias("other")
        doomed = select(_m.id).where(
            _m.dispatched_at < at,
            ~exists().where(other.c.message_id == _m.id, other.c.state == "pending"),
        )
        drop_deliveries = delete(webhook_deliveries).where(_d.message_id.in_(doomed))
        drop_messages = delete(outbox_messages).where(
            _m.dispatched_at < at, ~exists().where(_d.message_id == _m.id, _PENDING)
        )

        async def work(conn: AsyncConnection) -> int:
            await conn.execute(drop_deliveries)
            return int((await conn.execute(drop_messages)).rowcount)

        return await self._run(work, write=True)

    # -- helpers ---------------------------------------------------------------------------

    async def _on_driver(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work`` on a pooled connection's own asyncpg connection, in autocommit: the
        dispatcher's hot statements skip SQLAlchemy's per-row parameter processing (and an
        explicit BEGIN/COMMIT around a single statement)."""

        async def on(conn: AsyncConnection) -> T:
            raw = await conn.get_raw_connection()
            try:
                return await work(raw.driver_connection)
            except asyncpg.IntegrityConstraintViolationError as exc:
                # as through SQLAlchemy: about the data, not the database being unavailable
                raise IntegrityError(None, None, exc) from exc

        return await self._run(on, write=False)

    async def _raw(self, statement: str, *args: Any) -> builtins.list[Any]:
        async def work(conn: Any) -> builtins.list[Any]:
            return list(await conn.fetch(statement, *args))

        return await self._on_driver(work)

    async def _execute(self, statement: Any) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement)

        await self._run(work, write=True)

    async def _rows(self, statement: Any) -> builtins.list[Row[Any]]:
        async def work(conn: AsyncConnection) -> builtins.list[Row[Any]]:
            return list((await conn.execute(statement)).all())

        return await self._run(work, write=False)


_NO_SINKS: frozenset[str] = frozenset()

_PG_ENABLED_SUBSCRIPTIONS = (
    "SELECT id, tenant_id, url, description, events::text, outcomes::text, secrets::text, "
    "enabled, disabled_reason, created_at, updated_at, revision FROM webhook_subscriptions "
    "WHERE enabled AND tenant_id = ANY($1::text[])"
)

# Both queues (messages, deliveries) are claimed oldest first, a batch at a time, through
# their partial "due" index, whose order is the claim's order. Statistics lag a queue: a
# backlog that grew since the last ANALYZE (or with autovacuum off) is estimated at a few rows,
# and the planner then fetches every due row by bitmap scan and sorts them all — the row locks
# keep the LIMIT from bounding the sort — so each claim costs the whole backlog (30 ms instead
# of 0.5 ms for 500 of 19,000 messages, measured), exactly when the dispatcher is behind.
# Without a sort the one plan left is the ordered index scan, which stops at the limit.
_PG_QUEUE_PLAN = "SET LOCAL enable_sort = off"
# The PostgreSQL claim: row locks held by the batch's transaction. SKIP LOCKED keeps
# concurrent dispatchers on disjoint rows; NO KEY UPDATE is enough (ids never change) and does
# not conflict with the key-share locks of the deliveries inserted for the same messages.
_PG_LOCK_MESSAGES = (
    "SELECT id, tenant_id, topic, subject, payload::text, created_at, attempts, sinks_done "
    "FROM outbox_messages WHERE dispatched_at IS NULL AND next_attempt_at <= $1 "
    "ORDER BY next_attempt_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED"
)
# The outcomes, which also count the attempt (the claim wrote nothing).
_PG_FINISH_MESSAGES = (
    "UPDATE outbox_messages AS m SET sinks_done = o.sinks, dispatched_at = o.dispatched, "
    "next_attempt_at = o.next, last_error = o.error, attempts = m.attempts + 1 "
    "FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[]) "
    "AS o(id, sinks, dispatched, next, error) WHERE m.id = o.id"
)
_PG_DISPATCHED = (
    "UPDATE outbox_messages SET sinks_done = $2, dispatched_at = $3, next_attempt_at = $3, "
    "last_error = NULL, attempts = attempts + 1 WHERE id = ANY($1::text[])"
)
# A message dispatched at its first attempt with no deliveries has nothing left to do: it
# leaves the queue. One with deliveries stays, marked dispatched, for their payload until it is
# pruned; so does one dispatched after a retry (an earlier attempt may have made deliveries for
# a subscription since disabled or changed, which a delete would cascade away). A delete
# writes a few dozen bytes of WAL where the update wrote a new copy of the row, payload and
# all, and two index entries.
_PG_DELETE_DONE = "DELETE FROM outbox_messages WHERE id = ANY($1::text[])"


def _done(outcomes: Sequence[MessageOutcome], deliveries: Sequence[NewDelivery]) -> list[str]:
    """The messages of a batch that leave the outbox (see _PG_DELETE_DONE): dispatched at their
    first attempt, with no delivery."""
    delivered_to = {d.message_id for d in deliveries}
    return [
        o.id
        for o in outcomes
        if o.retry_at is None and o.error is None and o.attempt == 1 and o.id not in delivered_to
    ]


_PG_INSERT_DELIVERIES = (
    "INSERT INTO webhook_deliveries (id, tenant_id, subscription_id, message_id, state, "
    "attempts, next_attempt_at, created_at) "
    "SELECT d.id, d.tenant_id, d.subscription_id, d.message_id, 'pending', 0, $5, $5 "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
    "AS d(id, tenant_id, subscription_id, message_id) ON CONFLICT (id) DO NOTHING"
)


def _message_order(m: ClaimedMessage) -> tuple[datetime, str]:
    return (m.created_at, m.id)


def _pg_finish_statements(
    outcomes: Sequence[MessageOutcome], deliveries: Sequence[NewDelivery], at: datetime
) -> list[tuple[str, tuple[Any, ...]]]:
    """PostgreSQL: a batch's outcomes in a statement or two, not one per message, after the
    deliveries' insert: the messages that are done (:func:`_done`; the usual batch: all of
    them) deleted by one ``DELETE ... WHERE id = ANY($1)``, the other dispatched ones marked by
    one ``UPDATE ... WHERE id = ANY($1)`` per set of streams done, the rest (due again) by one
    ``UPDATE ... FROM unnest(...)``."""
    done = _done(outcomes, deliveries)
    leaving = set(done)
    dispatched: dict[frozenset[str], list[str]] = {}
    retried: list[MessageOutcome] = []
    for o in outcomes:
        if o.retry_at is not None or o.error is not None:
            retried.append(o)
        elif o.id not in leaving:
            dispatched.setdefault(o.sinks_done, []).append(o.id)
    statements: list[tuple[str, tuple[Any, ...]]] = []
    if deliveries:
        statements.append(
            (
                _PG_INSERT_DELIVERIES,
                (
                    [d.id for d in deliveries],
                    [d.tenant_id for d in deliveries],
                    [d.subscription_id for d in deliveries],
                    [d.message_id for d in deliveries],
                    at,
                ),
            )
        )
    if done:
        statements.append((_PG_DELETE_DONE, (done,)))
    for sinks, ids in dispatched.items():
        statements.append((_PG_DISPATCHED, (ids, ",".join(sorted(sinks)), at)))
    if retried:
        statements.append(
            (
                _PG_FINISH_MESSAGES,
                (
                    [o.id for o in retried],
                    [",".join(sorted(o.sinks_done)) for o in retried],
                    [at if o.retry_at is None else None for o in retried],
                    [at if o.retry_at is None else utc(o.retry_at) for o in retried],
                    [o.error for o in retried],
                ),
            )
        )
    return statements


def _deliveries_query() -> Any:
    return select(webhook_deliveries, _m.topic).join(outbox_messages, _m.id == _d.message_id)


def _secret_json(s: SecretRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "sealed": s.sealed,
        "created_at": utc(s.created_at).isoformat(),
        "expires_at": None if s.expires_at is None else utc(s.expires_at).isoformat(),
    }


def _secrets(value: Any) -> tuple[SecretRecord, ...]:
    return tuple(
        SecretRecord(
            id=item["id"],
            sealed=item["sealed"],
            created_at=datetime.fromisoformat(item["created_at"]),
            expires_at=(
                None
                if item.get("expires_at") is None
                else datetime.fromisoformat(item["expires_at"])
            ),
        )
        for item in value
    )


def _subscription_row(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "tenant_id": sub.tenant_id,
        "url": sub.url,
        "description": sub.description,
        "events": list(sub.events),
        "outcomes": None if sub.outcomes is None else list(sub.outcomes),
        "secrets": [_secret_json(s) for s in sub.secrets],
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason,
        "created_at": utc(sub.created_at),
        "updated_at": utc(sub.updated_at),
        "revision": sub.revision,
    }


def _subscription(row: Row[Any]) -> Subscription:
    return _subscription_of(row._mapping)


def _subscription_of(m: Any) -> Subscription:
    """A subscription from its row's columns by name (JSON columns decoded, or their text)."""

    def json(value: Any) -> Any:
        return loads(value) if isinstance(value, str) else value

    outcomes = json(m["outcomes"])
    return Subscription(
        id=m["id"],
        tenant_id=m["tenant_id"],
        url=m["url"],
        description=m["description"],
        events=tuple(json(m["events"])),
        outcomes=None if outcomes is None else tuple(outcomes),
        secrets=_secrets(json(m["secrets"])),
        enabled=bool(m["enabled"]),
        created_at=utc(m["created_at"]),
        updated_at=utc(m["updated_at"]),
        revision=int(m["revision"]),
        disabled_reason=m["disabled_reason"],
    )


def _delivery(row: Row[Any]) -> Delivery:
    m = row._mapping

    def at(name: str) -> datetime | None:
        value = m[name]
        return None if value is None else utc(value)

    return Delivery(
        id=m["id"],
        tenant_id=m["tenant_id"],
        subscription_id=m["subscription_id"],
        message_id=m["message_id"],
        topic=m["topic"],
        state=m["state"],
        attempts=int(m["attempts"]),
        next_attempt_at=utc(m["next_attempt_at"]),
        created_at=utc(m["created_at"]),
        last_attempt_at=at("last_attempt_at"),
        delivered_at=at("delivered_at"),
        last_status=m["last_status"],
        last_error=m["last_error"],
    )
