"""``SqlDecisionStore``: the :class:`~riskguard.ports.DecisionStore` on SQLite or PostgreSQL.

Decisions are group-committed. ``record()`` serialises its record (orjson), queues it and waits;
one writer task takes everything queued (up to ``batch_max``), writes it in one transaction and
answers every waiter after the commit. A lone request is written at once; under load the
requests that arrive while a commit is in flight share the next one, so the number of commits
(and fsyncs) follows what the database can do, not the request rate.

- PostgreSQL: ``INSERT INTO decisions ... SELECT ... FROM unnest($1::decision_insert_row[])``
  — one fixed, prepared statement whatever the batch size, with the whole batch in one
  parameter (an array of a composite type: asyncpg encodes it with a fraction of the Python
  work of one array per column), run in autocommit (the statement is its own transaction: one
  round trip per batch) on the writer's own asyncpg connection (no SQLAlchemy, no greenlet on
  the hot path). The JSON columns are ``json`` and get orjson's bytes as they are (the json
  codec of that connection is binary pass-through). The plain INSERT has no ``ON CONFLICT`` and
  no ``RETURNING``: every row is new in the common case, and the speculative insertion of
  ``ON CONFLICT`` costs the server an index probe and an extra WAL record per row. When a key
  exists already the statement fails whole (unique violation) and the batch is written again
  with ``ON CONFLICT DO NOTHING RETURNING tenant_id, event_id``. Rows are sorted by (tenant,
  event id) so replicas writing the same keys lock them in the same order.
- SQLite file: one ``sqlite3`` connection on a thread of its own runs ``BEGIN IMMEDIATE`` (the
  write lock, also against other processes on the file), one query for which (tenant, event id)
  pairs exist already, ``executemany`` of the new rows and ``COMMIT`` — one thread hop a batch.
  (In-memory SQLite goes through the engine's single kept connection instead.)

A duplicate event id, in the database or earlier in the same batch, answers False. A batch that
cannot reach the database answers :class:`DependencyUnavailable` to each of its waiters, and for
a short back-off (up to 1 s) records queued behind it fail at once rather than each waiting out
a timeout; then the next batch tries again, on a new connection (a kept PostgreSQL connection
found dead is replaced and the batch retried once at once; rows the lost attempt did commit are
recognised by their decision ids). A batch the database refuses
for its data (one bad row) is retried row by row, so one record cannot fail its neighbours.
Reads and the admin writes use SQLAlchemy Core on a small pool; a pooled connection found dead
is replaced and the work retried once. Every failure to reach the database becomes
DependencyUnavailable with a message that names the database without its password.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy import Boolean, Select, and_, func, literal_column, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from riskguard.adapters.sql import outbox as ob
from riskguard.adapters.sql import tables as t
from riskguard.adapters.sql.engines import (
    SQLITE_PRAGMAS,
    asyncpg_connect_kwargs,
    dumps,
    dumps_bytes,
    error_kind,
    is_db_error,
    make_engine,
)
from riskguard.adapters.sql.urls import dialect_of, is_memory, normalize, redact, sqlite_path
from riskguard.ports import (
    ApiKey,
    DecisionQuery,
    DecisionRecord,
    DependencyUnavailable,
    Draft,
    RulesetVersion,
    Tenant,
)

T = TypeVar("T")

MAX_PAGE = 500
_MAX_BACKOFF_S = 1.0
_MAX_CURSOR_CHARS = 512

_COLUMNS = t.DECISION_COLUMNS
_PG_INSERT = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM unnest($1::{t.DECISION_ROW_TYPE}[])"
)
_PG_INSERT_ABSENT = _PG_INSERT + " ON CONFLICT DO NOTHING RETURNING tenant_id, event_id"
# With the outbox on, one statement inserts the batch and the outbox rows of exactly the
# decisions it inserted (adapters/sql/outbox.py): still one round trip per group commit.
_PG_INSERT_OUTBOX = ob.pg_insert_with_outbox(_PG_INSERT)
_PG_INSERT_OUTBOX_ABSENT = ob.pg_insert_with_outbox(_PG_INSERT + " ON CONFLICT DO NOTHING")
_SQLITE_INSERT = (
    f"INSERT INTO decisions ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT DO NOTHING"
)
_SQLITE_EXISTING = (
    "SELECT d.tenant_id, d.event_id FROM json_each(?) AS j "
    "JOIN decisions AS d ON d.tenant_id = json_extract(j.value, '$[0]') "
    "AND d.event_id = json_extract(j.value, '$[1]')"
)
_PG_OURS = (
    "SELECT d.tenant_id, d.event_id FROM decisions AS d "
    "JOIN unnest($1::text[]) AS o(decision_id) ON d.decision_id = o.decision_id"
)

Key = tuple[str, str]  # (tenant_id, event_id)


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive value is taken to be UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _sqlite_ts(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, so Core reads parse what the writer wrote
    return utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def encode_cursor(occurred_at: datetime, decision_id: str) -> str:
    """The opaque, URL-safe cursor pointing just after (occurred_at, decision_id)."""
    raw = orjson.dumps([utc(occurred_at).isoformat(timespec="microseconds"), decision_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(occurred_at, decision_id) of a cursor; ValueError("invalid cursor") when malformed."""
    try:
        if not cursor or len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
        if not (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], str)
            and value[1]
        ):
            raise ValueError
        occurred_at = datetime.fromisoformat(value[0])
        if occurred_at.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ValueError("invalid cursor") from None
    return utc(occurred_at), value[1]


@dataclass(slots=True)
class _Pending:
    key: Key
    decision_id: str
    row: tuple[Any, ...]
    future: asyncio.Future[bool]
    message: ob.OutboxMessage | None = None


class _SqliteFileWriter:
    """The group committer's one SQLite connection, on a thread of its own.

    A batch is one hop to that thread (BEGIN IMMEDIATE, the existing-keys query, executemany,
    COMMIT), where through aiosqlite each of the four statements would be a hop of its own —
    on a small VM a hop costs about 0.3 ms, more than the fsync of a commit. A connection that
    fails is closed; the next batch opens a new one.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="riskguard-sqlite-writer")

    async def write(self, items: Sequence[_Pending]) -> set[Key]:
        batch = [(item.key, item.row, item.message) for item in items]
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._write, batch)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=False)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        try:
            for pragma in SQLITE_PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _write(
        self, batch: Sequence[tuple[Key, tuple[Any, ...], ob.OutboxMessage | None]]
    ) -> set[Key]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            keys = dumps([key for key, _, _ in batch])
            existing = {(r[0], r[1]) for r in conn.execute(_SQLITE_EXISTING, (keys,))}
            new = [item for item in batch if item[0] not in existing]
            if new:
                conn.executemany(_SQLITE_INSERT, [row for _, row, _ in new])
                ob.enqueue_sqlite(conn, [m for _, _, m in new if m is not None])
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
                    self._disconnect()
            except sqlite3.Error:
                self._disconnect()
            raise
        return {key for key, _, _ in new}


def _as_is(value: bytes) -> bytes:
    return value


class _PgWriter:
    """The group committer's own asyncpg connection and the statements it runs.

    One connection, opened on first use and kept; one found closed is replaced before use. An
    error that is not about the data (22/23) drops it; when the error says the connection was
    lost (not a timeout: the statement may still be running), the batch is retried once at once
    on a new connection — rows the lost attempt did commit conflict then, and are ours when the
    stored decision id is ours (:meth:`_ours_pg`).
    """

    def __init__(self, connect_kwargs: dict[str, Any], *, outbox: bool) -> None:
        self._connect_kwargs = connect_kwargs
        self._outbox = outbox  # the statement writes each decision's outbox message too
        self._conn: Any = None  # asyncpg.Connection

    async def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        conn = await asyncpg.connect(**self._connect_kwargs)
        try:
            # json in binary is its text: orjson's bytes go out as they are
            await conn.set_type_codec(
                "json", schema="pg_catalog", encoder=_as_is, decoder=_as_is, format="binary"
            )
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    async def write(self, items: Sequence[_Pending]) -> set[Key]:
        """Insert ``items`` (one transaction); the keys actually inserted."""
        rows = [item.row for item in items]
        conn = await self._connection()
        try:
            return await self._insert(conn, items, rows)
        except BaseException as exc:
            if not self._drop(conn, exc):
                raise
        conn = await self._connection()
        try:
            inserted = await self._insert(conn, items, rows)
            missing = [item for item in items if item.key not in inserted]
            if missing:
                inserted |= await self._ours_pg(conn, missing)
        except BaseException as exc:
            self._drop(conn, exc)
            raise
        return inserted

    async def _insert(self, conn: Any, items: Sequence[_Pending], rows: list[Any]) -> set[Key]:
        try:
            await conn.execute(_PG_INSERT_OUTBOX if self._outbox else _PG_INSERT, rows)
        except asyncpg.UniqueViolationError:
            # a key is stored already (a repeated event, another replica, a retry): the
            # statement wrote nothing; again, skipping what exists
            absent = _PG_INSERT_OUTBOX_ABSENT if self._outbox else _PG_INSERT_ABSENT
            return _keys(await conn.fetch(absent, rows))
        return {item.key for item in items}

    async def _ours_pg(self, conn: Any, items: Sequence[_Pending]) -> set[Key]:
        return _keys(await conn.fetch(_PG_OURS, [item.decision_id for item in items]))

    def _drop(self, conn: Any, exc: BaseException) -> bool:
        """Forget ``conn`` unless ``exc`` is about the data; True when the connection was lost
        (worth one retry on a new one)."""
        if _rejected_data(exc):
            return False
        lost = not isinstance(exc, (TimeoutError, asyncio.CancelledError)) and (
            conn.is_closed()
            or isinstance(exc, (OSError, asyncpg.PostgresConnectionError))
            or _sqlstate(exc).startswith("57P")  # the server is shutting down / restarting
        )
        if self._conn is conn:
            self._conn = None
        conn.terminate()
        return bool(lost)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2.0)
            except Exception:
                conn.terminate()


class SqlDecisionStore:
    """Decision records, tenants, API keys and rulesets in SQLite or PostgreSQL.

    ``start()`` creates the engines and the group-commit writer (``record()`` starts them on
    first use too); ``close()`` writes whatever is queued, then stops. Counters for tests,
    metrics and benchmarks: ``batches`` (group commits), ``records_written`` (rows inserted),
    ``duplicates``, ``failed_batches`` and ``largest_batch``.
    """

    def __init__(self, url: str, *, batch_max: int = 512, outbox: bool = False) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.url = normalize(url)
        self.dialect: str = dialect_of(url)
        self._where = redact(self.url)
        self._memory = is_memory(url)
        self._batch_max = batch_max
        # every decision also writes a ``decision.created`` outbox message in its transaction
        self.outbox = outbox
        self._engine: AsyncEngine | None = None  # set by start()
        self._shared_engine: AsyncEngine | None = None
        self._writer_engine: AsyncEngine | None = None
        self._sqlite_writer: _SqliteFileWriter | None = None
        self._pg_writer: _PgWriter | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._pending: deque[_Pending] = deque()
        self._start_lock: asyncio.Lock | None = None
        self._closing = False
        # after a batch fails to reach the database, records fail at once until _retry_at
        # (then the next batch probes): a database that hangs cannot grow an endless queue
        self._down: DependencyUnavailable | None = None
        self._retry_at = 0.0
        self._failures = 0
        self.batches = 0
        self.records_written = 0
        self.duplicates = 0
        self.failed_batches = 0
        self.largest_batch = 0

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the engines and the writer task (no connection is made yet: a store can
        start while its database is down and recovers when it returns)."""
        if self._writer is not None:
            return
        if self._closing:
            raise DependencyUnavailable("the decision store is closed")
        engine = self.engine
        writer_engine: AsyncEngine | None = None
        path = sqlite_path(self.url)
        if self._memory:
            writer_engine = engine
            async with engine.begin() as conn:
                await conn.run_sync(t.metadata.create_all)
        elif path is not None:
            self._sqlite_writer = _SqliteFileWriter(path)
        else:
            self._pg_writer = _PgWriter(asyncpg_connect_kwargs(engine), outbox=self.outbox)
        self._engine, self._writer_engine = engine, writer_engine
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="riskguard-group-commit")

    async def close(self) -> None:
        """Write everything queued, stop the writer and close every connection."""
        self._closing = True
        if self._writer is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._writer
        while self._pending:  # only if the writer died: never leave a caller waiting
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(DependencyUnavailable("the decision store is closed"))
        sqlite_writer, self._sqlite_writer = self._sqlite_writer, None
        if sqlite_writer is not None:
            await sqlite_writer.close()
        pg_writer, self._pg_writer = self._pg_writer, None
        if pg_writer is not None:
            await pg_writer.close()
        for engine in {id(e): e for e in (self._writer_engine, self._engine) if e}.values():
            await engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The store's SQLAlchemy engine (made on first use, connecting lazily): the alert,
        webhook and audit stores share it, so they see the same database — for in-memory
        SQLite, the same connection — and add no pool of their own."""
        if self._shared_engine is None:
            sqlite = self.dialect == "sqlite"
            self._shared_engine = make_engine(
                self.url, pool_size=4 if sqlite else 8, max_overflow=4
            )
        return self._shared_engine

    async def _ready(self) -> AsyncEngine:
        if self._closing:
            raise DependencyUnavailable("the decision store is closed")
        if self._engine is None:
            if self._start_lock is None:
                self._start_lock = asyncio.Lock()
            async with self._start_lock:
                await self.start()
        assert self._engine is not None
        return self._engine

    # -- errors ----------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> DependencyUnavailable:
        # the class name only: driver messages can echo connection parameters
        return DependencyUnavailable(f"database {self._where} is unavailable ({error_kind(exc)})")

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]], *, write: bool) -> T:
        """``work`` on a pooled connection (committed when ``write``). A connection the database
        dropped is replaced and ``work`` retried once, unless the drop came during the commit
        (then whether it committed is unknown). IntegrityError passes through for the caller."""
        engine = await self._ready()
        for attempt in (1, 2):
            committing = False
            try:
                async with engine.connect() as conn:
                    result = await work(conn)
                    if write:
                        committing = True
                        await conn.commit()
                    return result
            except IntegrityError:
                raise
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated and not committing:
                    continue
                raise self._unavailable(exc) from None
            except Exception as exc:
                if is_db_error(exc):
                    raise self._unavailable(exc) from None
                raise
        raise AssertionError("unreachable")

    # -- decisions: group-committed writes -------------------------------------------------

    async def record(self, record: DecisionRecord) -> bool:
        if self._closing:
            raise DependencyUnavailable("the decision store is closed")
        if self._writer is None:
            await self._ready()
        row = self._row(record)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # PostgreSQL: the insert statement makes the message from the row (outbox.py)
        message = (
            ob.decision_message(record) if self.outbox and self.dialect != "postgresql" else None
        )
        self._pending.append(
            _Pending((record.tenant_id, record.event_id), record.decision_id, row, future, message)
        )
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    def _row(self, r: DecisionRecord) -> tuple[Any, ...]:
        json: Callable[[Any], Any]
        if self.dialect == "sqlite":
            occurred: Any = _sqlite_ts(r.occurred_at)
            received: Any = _sqlite_ts(r.received_at)
            json = dumps
        else:
            occurred, received = utc(r.occurred_at), utc(r.received_at)
            json = dumps_bytes  # the writer's connection sends json as bytes
        return (
            r.decision_id,
            r.tenant_id,
            r.event_id,
            r.event_type,
            r.body_hash,
            r.entity,
            occurred,
            received,
            r.outcome,
            float(r.score),
            r.ruleset_version,
            r.model_version,
            float(r.latency_ms),
            bool(r.degraded),
            json(r.event),
            json(r.features),
            json(r.reasons),
            json(r.shadow_reasons),
            r.explanation,
        )

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        pending, wakeup = self._pending, self._wakeup
        while True:
            if not pending:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            if self._down is not None and time.monotonic() < self._retry_at:
                down = self._down
                while pending:
                    _settle(pending.popleft().future, down)
                continue
            batch = [pending.popleft() for _ in range(min(len(pending), self._batch_max))]
            try:
                await self._flush(batch)
            except Exception as exc:  # never let the writer die: answer and carry on
                error = self._unavailable(exc)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)

    async def _flush(self, batch: list[_Pending]) -> None:
        self.largest_batch = max(self.largest_batch, len(batch))
        first: dict[Key, _Pending] = {}
        repeats: list[_Pending] = []
        for item in batch:
            if item.key in first:
                repeats.append(item)
            else:
                first[item.key] = item
        unique = list(first.values())
        if self.dialect == "postgresql":
            unique.sort(key=lambda item: item.key)
        outcome: dict[Key, bool | DependencyUnavailable] = {}
        try:
            inserted = await self._insert_batch(unique)
            for item in unique:
                outcome[item.key] = item.key in inserted
            self._down, self._failures = None, 0
        except Exception as exc:
            self.failed_batches += 1
            if len(unique) > 1 and _rejected_data(exc):
                for item in unique:  # one bad row must not fail its neighbours
                    try:
                        outcome[item.key] = item.key in await self._insert_batch([item])
                    except Exception as single:
                        outcome[item.key] = (
                            DependencyUnavailable(
                                f"database {self._where} rejected the record ({error_kind(single)})"
                            )
                            if _rejected_data(single)
                            else self._unavailable(single)
                        )
            else:
                error = self._unavailable(exc)
                outcome = dict.fromkeys(first, error)
                self._failures += 1
                self._down = error
                self._retry_at = time.monotonic() + min(_MAX_BACKOFF_S, 0.05 * 2**self._failures)
        for item in unique:
            _settle(item.future, outcome[item.key])
        for item in repeats:
            result = outcome[item.key]
            _settle(item.future, False if result is True else result)
        self.duplicates += len(repeats) + sum(1 for v in outcome.values() if v is False)

    async def _insert_batch(self, items: Sequence[_Pending]) -> set[Key]:
        """Insert in one transaction; the keys actually inserted."""
        if self._sqlite_writer is not None:
            inserted = await self._sqlite_writer.write(items)
        elif self._pg_writer is not None:
            inserted = await self._pg_writer.write(items)
        else:
            inserted = await self._insert_sqlite(items)
        self.batches += 1
        self.records_written += len(inserted)
        return inserted

    async def _insert_sqlite(self, items: Sequence[_Pending]) -> set[Key]:
        assert self._writer_engine is not None
        async with self._writer_engine.connect() as conn:
            if self._memory:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                keys = dumps([item.key for item in items])
                existing = _keys((await conn.exec_driver_sql(_SQLITE_EXISTING, (keys,))).all())
                new = [item for item in items if item.key not in existing]
                if new:
                    await conn.exec_driver_sql(_SQLITE_INSERT, [item.row for item in new])
                    messages = [item.message for item in new if item.message is not None]
                    if messages:
                        await ob.enqueue(conn, messages)
                await conn.exec_driver_sql("COMMIT")
            except BaseException:
                try:
                    await conn.exec_driver_sql("ROLLBACK")
                except Exception:
                    await conn.invalidate()  # never hand a connection stuck in a transaction
                raise
            return {item.key for item in new}

    # -- decisions: reads ------------------------------------------------------------------

    async def get(self, tenant_id: str, decision_id: str) -> DecisionRecord | None:
        query = select(t.decisions).where(
            t.decisions.c.tenant_id == tenant_id, t.decisions.c.decision_id == decision_id
        )
        return await self._one_decision(query)

    async def get_by_event(self, tenant_id: str, event_id: str) -> DecisionRecord | None:
        query = select(t.decisions).where(
            t.decisions.c.tenant_id == tenant_id, t.decisions.c.event_id == event_id
        )
        return await self._one_decision(query)

    async def _one_decision(self, query: Select[Any]) -> DecisionRecord | None:
        async def work(conn: AsyncConnection) -> Row[Any] | None:
            row: Row[Any] | None = (await conn.execute(query)).first()
            return row

        row = await self._run(work, write=False)
        return None if row is None else _decision(row)

    async def list(
        self, tenant_id: str, query: DecisionQuery
    ) -> tuple[list[DecisionRecord], str | None]:
        d = t.decisions.c
        limit = max(1, min(MAX_PAGE, int(query.limit)))
        conditions = [d.tenant_id == tenant_id]
        if query.event_type is not None:
            conditions.append(d.event_type == query.event_type)
        if query.outcome is not None:
            conditions.append(d.outcome == query.outcome)
            if query.outcome != "allow":
                # the predicate of the partial outcome index, as a literal: both planners see
                # that the index applies (a bound value would hide it from a generic plan)
                conditions.append(literal_column(t.OUTCOME_INDEX_WHERE, Boolean()))
        if query.entity is not None:
            conditions.append(d.entity == query.entity)
        if query.since is not None:
            conditions.append(d.occurred_at >= utc(query.since))
        if query.until is not None:
            conditions.append(d.occurred_at < utc(query.until))
        if query.cursor is not None:
            at, decision_id = decode_cursor(query.cursor)
            # a row-value comparison: both databases use it as an index range
            conditions.append(tuple_(d.occurred_at, d.decision_id) < tuple_(at, decision_id))
        statement = (
            select(t.decisions)
            .where(*conditions)
            .order_by(d.occurred_at.desc(), d.decision_id.desc())
            .limit(limit + 1)
        )

        async def work(conn: AsyncConnection) -> Sequence[Row[Any]]:
            rows: Sequence[Row[Any]] = (await conn.execute(statement)).all()
            return rows

        rows = await self._run(work, write=False)
        records = [_decision(row) for row in rows[:limit]]
        cursor = None
        if len(rows) > limit:
            last = records[-1]
            cursor = encode_cursor(last.occurred_at, last.decision_id)
        return records, cursor

    async def count(self, tenant_id: str | None = None) -> int:
        statement = select(func.count()).select_from(t.decisions)
        if tenant_id is not None:
            statement = statement.where(t.decisions.c.tenant_id == tenant_id)

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(statement)).scalar_one())

        return await self._run(work, write=False)

    # -- tenants and keys ------------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        tenant = Tenant(id="t_" + secrets.token_hex(8), name=name, created_at=_now())

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                t.tenants.insert().values(
                    id=tenant.id, name=tenant.name, created_at=tenant.created_at
                )
            )

        try:
            await self._run(work, write=True)
        except IntegrityError:
            raise ValueError(f"a tenant named {name!r} already exists") from None
        return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._rows(select(t.tenants).where(t.tenants.c.id == tenant_id))
        return _tenant(rows[0]) if rows else None

    async def find_tenant(self, id_or_name: str) -> Tenant | None:
        c = t.tenants.c
        rows = await self._rows(
            select(t.tenants).where(or_(c.id == id_or_name, c.name == id_or_name))
        )
        if not rows:
            return None
        by_id = [row for row in rows if row.id == id_or_name]
        return _tenant(by_id[0] if by_id else rows[0])

    async def create_key(self, key: ApiKey) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                t.api_keys.insert().values(
                    key_id=key.key_id,
                    tenant_id=key.tenant_id,
                    role=key.role,
                    secret_hash=key.secret_hash,
                    created_at=utc(key.created_at),
                    revoked=key.revoked,
                )
            )

        try:
            await self._run(work, write=True)
        except IntegrityError:
            raise ValueError(
                f"cannot store key {key.key_id!r}: the key id exists or the tenant does not"
            ) from None

    async def get_key(self, key_id: str) -> ApiKey | None:
        rows = await self._rows(select(t.api_keys).where(t.api_keys.c.key_id == key_id))
        if not rows:
            return None
        row = rows[0]
        return ApiKey(
            key_id=row.key_id,
            tenant_id=row.tenant_id,
            role=row.role,
            secret_hash=row.secret_hash,
            created_at=utc(row.created_at),
            revoked=bool(row.revoked),
        )

    # -- rulesets --------------------------------------------------------------------------

    async def get_draft(self, tenant_id: str) -> Draft | None:
        rows = await self._rows(select(t.rule_drafts).where(t.rule_drafts.c.tenant_id == tenant_id))
        if not rows:
            return None
        row = rows[0]
        return Draft(
            tenant_id=row.tenant_id,
            document=row.document,
            deleted_rules=row.deleted_rules,
            updated_at=utc(row.updated_at),
            revision=int(row.revision),
        )

    async def save_draft(self, draft: Draft) -> bool:
        values = {
            "document": draft.document,
            "deleted_rules": draft.deleted_rules,
            "updated_at": _now(),
            "revision": draft.revision + 1,
        }
        if draft.revision == 0:
            statement: Any = (
                self._insert(t.rule_drafts)
                .values(tenant_id=draft.tenant_id, **values)
                .on_conflict_do_nothing(index_elements=["tenant_id"])
            )
        else:
            statement = (
                update(t.rule_drafts)
                .where(
                    t.rule_drafts.c.tenant_id == draft.tenant_id,
                    t.rule_drafts.c.revision == draft.revision,
                )
                .values(**values)
            )

        async def work(conn: AsyncConnection) -> bool:
            return (await conn.execute(statement)).rowcount == 1

        try:
            return await self._run(work, write=True)
        except IntegrityError:
            raise ValueError(f"unknown tenant {draft.tenant_id!r}") from None

    async def publish(self, version: RulesetVersion) -> None:
        created = self._insert(t.ruleset_versions).values(
            tenant_id=version.tenant_id,
            version=version.version,
            document=version.document,
            created_at=utc(version.created_at),
            created_by=version.created_by,
            comment=version.comment,
        )
        active = self._insert(t.active_rulesets).values(
            tenant_id=version.tenant_id, version=version.version, activated_at=_now()
        )
        activate = active.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"version": active.excluded.version, "activated_at": active.excluded.activated_at},
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                created.on_conflict_do_nothing(index_elements=["tenant_id", "version"])
            )
            await conn.execute(activate)

        try:
            await self._run(work, write=True)
        except IntegrityError:
            raise ValueError(f"unknown tenant {version.tenant_id!r}") from None

    async def get_version(self, tenant_id: str, version: str) -> RulesetVersion | None:
        v = t.ruleset_versions.c
        rows = await self._rows(
            self._versions_query().where(v.tenant_id == tenant_id, v.version == version)
        )
        return _version(rows[0]) if rows else None

    async def list_versions(self, tenant_id: str) -> builtins.list[RulesetVersion]:
        v = t.ruleset_versions.c
        rows = await self._rows(
            self._versions_query()
            .where(v.tenant_id == tenant_id)
            .order_by(v.created_at.desc(), v.version.desc())
        )
        return [_version(row) for row in rows]

    def _versions_query(self) -> Select[Any]:
        v, a = t.ruleset_versions.c, t.active_rulesets.c
        return select(t.ruleset_versions, a.version.label("active_version")).outerjoin(
            t.active_rulesets, and_(a.tenant_id == v.tenant_id, a.version == v.version)
        )

    async def active_versions(self) -> dict[str, str]:
        a = t.active_rulesets.c
        rows = await self._rows(select(a.tenant_id, a.version))
        return {row.tenant_id: row.version for row in rows}

    # -- health ----------------------------------------------------------------------------

    async def ping(self) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.exec_driver_sql("SELECT 1")

        await self._run(work, write=False)

    # -- helpers ---------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)

    async def _rows(self, statement: Select[Any]) -> Sequence[Row[Any]]:
        async def work(conn: AsyncConnection) -> Sequence[Row[Any]]:
            rows: Sequence[Row[Any]] = (await conn.execute(statement)).all()
            return rows

        return await self._run(work, write=False)


def _keys(rows: Sequence[Any]) -> set[Key]:
    return {(row[0], row[1]) for row in rows}


def _now() -> datetime:
    return datetime.now(UTC)


def _sqlstate(exc: BaseException) -> str:
    inner: BaseException | None = getattr(exc, "orig", None) or exc
    while inner is not None:
        code = getattr(inner, "pgcode", None) or getattr(inner, "sqlstate", None)
        if isinstance(code, str):
            return code
        inner = inner.__cause__
    return ""


def _rejected_data(exc: BaseException) -> bool:
    """The database refused the data itself (a bad value, a constraint), not the connection:
    SQLSTATE class 22 (data exception) or 23 (integrity constraint violation), or sqlite3's
    equivalents (a constraint, a value it cannot bind), or a value asyncpg cannot encode."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return _sqlstate(exc)[:2] in ("22", "23")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return True  # asyncpg's client-side DataError: raised before anything is sent
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    return isinstance(exc, (DataError, IntegrityError)) or _sqlstate(exc)[:2] in ("22", "23")


def _settle(future: asyncio.Future[bool], result: bool | DependencyUnavailable) -> None:
    if future.done():  # the caller gave up (cancelled); the row is written regardless
        return
    if isinstance(result, DependencyUnavailable):
        future.set_exception(result)
    else:
        future.set_result(result)


def _decision(row: Row[Any]) -> DecisionRecord:
    m = row._mapping
    return DecisionRecord(
        decision_id=m["decision_id"],
        tenant_id=m["tenant_id"],
        event_id=m["event_id"],
        event_type=m["event_type"],
        body_hash=m["body_hash"],
        entity=m["entity"],
        occurred_at=utc(m["occurred_at"]),
        received_at=utc(m["received_at"]),
        outcome=m["outcome"],
        score=float(m["score"]),
        ruleset_version=m["ruleset_version"],
        model_version=m["model_version"],
        latency_ms=float(m["latency_ms"]),
        degraded=bool(m["degraded"]),
        event=m["event"],
        features=m["features"],
        reasons=m["reasons"],
        shadow_reasons=m["shadow_reasons"],
        explanation=m["explanation"],
    )


def _tenant(row: Row[Any]) -> Tenant:
    return Tenant(id=row.id, name=row.name, created_at=utc(row.created_at))


def _version(row: Row[Any]) -> RulesetVersion:
    return RulesetVersion(
        tenant_id=row.tenant_id,
        version=row.version,
        document=row.document,
        created_at=utc(row.created_at),
        created_by=row.created_by,
        comment=row.comment,
        active=row.active_version is not None,
    )
