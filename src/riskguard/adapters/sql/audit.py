"""The audit log in SQLite or PostgreSQL: its tables, :class:`SqlAuditLog`, and verification.

Tables (on the schema's one ``metadata``; migration 0003 creates them with triggers that
refuse UPDATE, DELETE and, on PostgreSQL, TRUNCATE):

- ``audit_log`` — one row per record (see :mod:`riskguard.adapters.audit.chain`): ``seq``,
  ``at``, ``tenant_id``, ``actor``, ``action``, ``body`` (canonical JSON text), ``prev_hash``,
  ``hash`` (hex).
- ``audit_checkpoints`` — one row per signed checkpoint: ``tree_size``, ``root_hash`` (hex),
  ``created_at``, ``note`` (the signed note) and ``compact_range`` (the Merkle compact range
  at that size, hex, comma-separated: lets an appender resume without reading the whole log;
  the verifier never trusts it).

Appending is group-committed: ``append()`` queues its entries and waits; one writer task takes
what is queued (whole appends, up to ``batch_max`` entries) into one transaction. In it, the
writer first takes the log's write lock — ``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN
IMMEDIATE`` (the database's single writer) on SQLite — then reads the last record and the
last checkpoint, so appenders in other processes never fork the chain: if another process
appended since, this one follows its records first (checking their chain as it goes). It then
chains the new records, inserts them (on PostgreSQL one ``INSERT ... SELECT unnest(...)`` over
column arrays, not a statement per record), signs a checkpoint when the policy says one is due
(every N records or T seconds; a timer covers quiet periods) and commits. The in-memory chain
state is adopted only after the commit; after any failure it is read again from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from riskguard.adapters.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainBroken,
    ChainState,
    CheckpointPolicy,
    new_entry,
)
from riskguard.adapters.audit.checkpoint import NoteSigner, NoteVerifier
from riskguard.adapters.audit.log import (
    Clock,
    ConsistencyProof,
    InclusionProof,
    SignedCheckpoint,
    _check_list_args,
    prove_consistency,
    prove_inclusion,
    signed_checkpoint,
    utcnow,
)
from riskguard.adapters.audit.merkle import CompactRange, MerkleTree
from riskguard.adapters.audit.verify import LogVerifier, StoredCheckpoint, VerifyReport
from riskguard.adapters.sql.engines import (
    asyncpg_connect_kwargs,
    error_kind,
    is_db_error,
    make_engine,
)
from riskguard.adapters.sql.tables import Timestamp, metadata
from riskguard.adapters.sql.urls import dialect_of, is_memory, normalize, redact, sqlite_path
from riskguard.ports import DependencyUnavailable

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, nullable=False, autoincrement=False),
    Column("at", Timestamp, nullable=False),
    Column("tenant_id", String, nullable=True),
    Column("actor", String, nullable=False),
    Column("action", String, nullable=False),
    Column("body", Text, nullable=False),
    Column("prev_hash", String, nullable=False),
    Column("hash", String, nullable=False),
    PrimaryKeyConstraint("seq", name="pk_audit_log"),
    Index("ix_audit_log_tenant_seq", "tenant_id", "seq"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("tree_size", BigInteger, nullable=False, autoincrement=False),
    Column("root_hash", String, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("note", Text, nullable=False),
    Column("compact_range", Text, nullable=False),
    PrimaryKeyConstraint("tree_size", name="pk_audit_checkpoints"),
)

# pg_advisory_xact_lock key of the audit log's writers: "riskgaud" as a signed 64-bit integer
ADVISORY_LOCK_KEY = int.from_bytes(b"riskgaud", "big", signed=True)
READ_CHUNK = 10_000
# the verifier's rows: `at` already in the canonical text form (see chain.record_bytes)
_SQLITE_ROWS = (
    "SELECT seq, replace(at, ' ', 'T') || 'Z', tenant_id, actor, action, body, prev_hash, hash "
    "FROM audit_log ORDER BY seq"
)
_PG_ROWS = (
    "SELECT seq, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
    "tenant_id, actor, action, body, prev_hash, hash FROM audit_log ORDER BY seq"
)
# the columns in AuditRecord's order: its tuples are the COPY's rows as they are
_COPY_COLUMNS = AuditRecord._fields
_CHECKPOINT_ROWS = "SELECT tree_size, root_hash, note FROM audit_checkpoints ORDER BY tree_size"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        at=_utc(row.at),
        tenant_id=row.tenant_id,
        actor=row.actor,
        action=row.action,
        body=row.body,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _checkpoint(row: Row[Any]) -> SignedCheckpoint:
    return SignedCheckpoint(
        tree_size=row.tree_size,
        root_hash=bytes.fromhex(row.root_hash),
        created_at=_utc(row.created_at),
        note=row.note,
    )


def _encode_range(tree: CompactRange) -> str:
    return ",".join(node.hex() for node in tree.nodes)


def _decode_range(size: int, text: str) -> CompactRange | None:
    try:
        nodes = [bytes.fromhex(n) for n in text.split(",")] if text else []
        return CompactRange(size, nodes)
    except ValueError:
        return None


@dataclass(slots=True)
class _Pending:
    entries: Sequence[AuditEntry]
    future: asyncio.Future[list[AuditRecord]]
    final: bool = False  # close(): sign whatever waits unsigned


class SqlAuditLog:
    """The :class:`~riskguard.adapters.audit.log.AuditLog` on SQLite or PostgreSQL.

    Counters for tests and benchmarks: ``batches`` (transactions that appended),
    ``records_written``, ``checkpoints_signed``, ``largest_batch``.
    """

    def __init__(
        self,
        url: str,
        signer: NoteSigner,
        *,
        policy: CheckpointPolicy | None = None,
        batch_max: int = 1024,
        clock: Clock = utcnow,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.url = normalize(url)
        self.dialect = dialect_of(url)
        self._where = redact(self.url)
        self._signer = signer
        self.verifier = signer.verifier
        self._policy = policy or CheckpointPolicy()
        self._batch_max = batch_max
        self._clock = clock
        self._engine: AsyncEngine | None = None
        self._state: ChainState | None = None  # None: read it from the database next time
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.records_written = 0
        self.checkpoints_signed = 0
        self.largest_batch = 0

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the engine, the writer and the checkpoint timer (no connection yet)."""
        if self._writer is not None:
            return
        if self._closing:
            raise DependencyUnavailable("the audit log is closed")
        engine = make_engine(self.url, pool_size=2, max_overflow=2)
        if is_memory(self.url):
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all, tables=[audit_log, audit_checkpoints])
        self._engine = engine
        self._writer = asyncio.create_task(self._write_loop(), name="riskguard-audit-writer")
        self._timer = asyncio.create_task(self._tick(), name="riskguard-audit-checkpoints")

    async def close(self) -> None:
        """Write what is queued, sign a last checkpoint when records wait unsigned, stop."""
        if self._closing:
            return
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._submit([], final=True)
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._writer is not None:
            self._wakeup.set()
            await self._writer
        if self._engine is not None:
            await self._engine.dispose()

    def _unavailable(self, exc: BaseException) -> DependencyUnavailable:
        return DependencyUnavailable(f"database {self._where} is unavailable ({error_kind(exc)})")

    # -- appending -------------------------------------------------------------------------

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        if not entries:
            return []
        return await self._submit(entries)

    async def append_one(
        self,
        *,
        action: str,
        actor: str,
        body: Any = None,
        tenant_id: str | None = None,
        at: datetime | None = None,
    ) -> AuditRecord:
        entry = new_entry(action=action, actor=actor, body=body, tenant_id=tenant_id, at=at)
        return (await self._submit([entry]))[0]

    async def checkpoint(self) -> SignedCheckpoint | None:
        await self._submit([], final=True)
        return await self.latest_checkpoint()

    async def _submit(
        self, entries: Sequence[AuditEntry], *, final: bool = False
    ) -> list[AuditRecord]:
        if self._closing:
            raise DependencyUnavailable("the audit log is closed")
        if self._writer is None:
            await self.start()
        future: asyncio.Future[list[AuditRecord]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(entries, future, final))
        self._wakeup.set()
        return await future

    async def _tick(self) -> None:
        """Ask for a checkpoint every ``every_seconds``: signed only if one is due."""
        while True:
            await asyncio.sleep(self._policy.every_seconds)
            with contextlib.suppress(Exception):  # the database may be down: next tick
                await self._submit([])

    async def _write_loop(self) -> None:
        pending, wakeup = self._pending, self._wakeup
        while True:
            if not pending:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            batch = [pending.popleft()]
            size = len(batch[0].entries)
            while pending and size + len(pending[0].entries) <= self._batch_max:
                size += len(pending[0].entries)
                batch.append(pending.popleft())
            try:
                records = await self._commit(
                    [e for item in batch for e in item.entries], any(i.final for i in batch)
                )
            except Exception as exc:
                error: BaseException = exc
                if not isinstance(exc, ChainBroken):
                    error = self._unavailable(exc) if is_db_error(exc) else exc
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            at = 0
            for item in batch:
                n = len(item.entries)
                if not item.future.done():
                    item.future.set_result(records[at : at + n])
                at += n

    async def _commit(self, entries: list[AuditEntry], final: bool) -> list[AuditRecord]:
        """One transaction: lock, follow, chain, insert, maybe sign, commit."""
        assert self._engine is not None
        sqlite = self.dialect == "sqlite"
        async with self._engine.connect() as conn:
            if sqlite:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await conn.begin()
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
            try:
                records, state = await self._chain(conn, entries, final)
                if sqlite:
                    await conn.exec_driver_sql("COMMIT")
                else:
                    await conn.commit()
            except BaseException:
                self._state = None
                with contextlib.suppress(Exception):
                    if sqlite:
                        await conn.exec_driver_sql("ROLLBACK")
                    else:
                        await conn.rollback()
                raise
        self._state = state
        if records:
            self.batches += 1
            self.records_written += len(records)
            self.largest_batch = max(self.largest_batch, len(records))
        return records

    async def _chain(
        self, conn: AsyncConnection, entries: list[AuditEntry], final: bool
    ) -> tuple[list[AuditRecord], ChainState]:
        head = (
            await conn.execute(
                select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
            )
        ).first()
        last = (
            await conn.execute(
                select(audit_checkpoints).order_by(audit_checkpoints.c.tree_size.desc()).limit(1)
            )
        ).first()
        state = await self._follow(conn, head, last)
        now = self._clock()
        records, state = state.extend(entries, now)
        if records and self.dialect == "postgresql":
            # a binary COPY of the records themselves: about half the client CPU of one
            # INSERT over eight column arrays (asyncpg checks every array element's type), and
            # far below SQLAlchemy's per-row executemany
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.copy_records_to_table("audit_log", records=records, columns=_COPY_COLUMNS)
        elif records:
            await conn.execute(
                audit_log.insert(),
                [
                    {
                        "seq": r.seq,
                        "at": r.at,
                        "tenant_id": r.tenant_id,
                        "actor": r.actor,
                        "action": r.action,
                        "body": r.body,
                        "prev_hash": r.prev_hash,
                        "hash": r.hash,
                    }
                    for r in records
                ],
            )
        last_size = last.tree_size if last is not None else 0
        last_at = _utc(last.created_at) if last is not None else None
        due = (
            state.size > last_size
            if final
            else self._policy.due(state.size, last_size, last_at, now)
        )
        if due:
            checkpoint = signed_checkpoint(self._signer, state, now)
            await conn.execute(
                audit_checkpoints.insert().values(
                    tree_size=checkpoint.tree_size,
                    root_hash=checkpoint.root_hash.hex(),
                    created_at=checkpoint.created_at,
                    note=checkpoint.note,
                    compact_range=_encode_range(state.tree),
                )
            )
            self.checkpoints_signed += 1
        return records, state

    async def _follow(self, conn: AsyncConnection, head: Any, last: Any) -> ChainState:
        """The chain state at the database's last record (read inside the write lock)."""
        size = head.seq if head is not None else 0
        head_hash = head.hash if head is not None else GENESIS_HASH
        if last is not None and last.tree_size > size:
            raise ChainBroken(
                f"the log ends at record {size} but a checkpoint covers {last.tree_size}: "
                "it was truncated"
            )
        state = self._state
        if state is not None and state.size == size and state.head == head_hash:
            return state
        if state is None or state.size > size:
            state = await self._resume(conn, last, size)
        while state.size < size:
            rows = (
                await conn.execute(
                    select(audit_log)
                    .where(audit_log.c.seq > state.size)
                    .order_by(audit_log.c.seq)
                    .limit(READ_CHUNK)
                )
            ).all()
            if not rows:
                break
            state = state.follow(_record(r) for r in rows)
        if state.size != size or state.head != head_hash:
            raise ChainBroken(f"the stored log does not chain up to record {size}")
        return state

    async def _resume(self, conn: AsyncConnection, last: Any, size: int) -> ChainState:
        """Start from the newest checkpoint's compact range (when it reproduces the signed
        root), else from the empty log."""
        if last is None or last.tree_size > size or last.tree_size == 0:
            return ChainState()
        tree = _decode_range(last.tree_size, last.compact_range)
        if tree is None or tree.root().hex() != last.root_hash:
            return ChainState()
        head = (
            await conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == last.tree_size))
        ).scalar()
        return ChainState(last.tree_size, head, tree) if head else ChainState()

    # -- reads and proofs ------------------------------------------------------------------

    async def _read(self) -> AsyncEngine:
        if self._closing:
            raise DependencyUnavailable("the audit log is closed")
        if self._engine is None:
            await self.start()
        assert self._engine is not None
        return self._engine

    async def _rows(self, statement: Any) -> Sequence[Row[Any]]:
        engine = await self._read()
        try:
            async with engine.connect() as conn:
                return (await conn.execute(statement)).all()
        except Exception as exc:
            if is_db_error(exc):
                raise self._unavailable(exc) from None
            raise

    async def latest_checkpoint(self) -> SignedCheckpoint | None:
        rows = await self._rows(
            select(audit_checkpoints).order_by(audit_checkpoints.c.tree_size.desc()).limit(1)
        )
        return _checkpoint(rows[0]) if rows else None

    async def checkpoints(self) -> list[SignedCheckpoint]:
        rows = await self._rows(select(audit_checkpoints).order_by(audit_checkpoints.c.tree_size))
        return [_checkpoint(r) for r in rows]

    async def get(self, seq: int) -> AuditRecord | None:
        rows = await self._rows(select(audit_log).where(audit_log.c.seq == seq))
        return _record(rows[0]) if rows else None

    async def list_records(
        self,
        *,
        tenant_id: str | None = None,
        action: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        _check_list_args(after, limit)
        query = select(audit_log).where(audit_log.c.seq > after)
        if tenant_id is not None:
            query = query.where(audit_log.c.tenant_id == tenant_id)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        rows = await self._rows(query.order_by(audit_log.c.seq).limit(limit))
        return [_record(r) for r in rows]

    async def _tree(self, size: int) -> MerkleTree:
        """The Merkle tree of records 1..size, read from the database (O(size))."""
        engine = await self._read()
        tree = MerkleTree()
        try:
            async with engine.connect() as conn:
                while tree.size < size:
                    rows = (
                        await conn.execute(
                            select(audit_log)
                            .where(audit_log.c.seq > tree.size, audit_log.c.seq <= size)
                            .order_by(audit_log.c.seq)
                            .limit(READ_CHUNK)
                        )
                    ).all()
                    if not rows:
                        break
                    for row in rows:
                        tree.append(_record(row).leaf_hash())
        except Exception as exc:
            if is_db_error(exc):
                raise self._unavailable(exc) from None
            raise
        return tree

    async def inclusion_proof(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        checkpoints = await self.checkpoints()
        size = (
            tree_size
            if tree_size is not None
            else max((c.tree_size for c in checkpoints), default=0)
        )
        return prove_inclusion(await self._tree(size), seq, tree_size, checkpoints)

    async def consistency_proof(self, size1: int, size2: int | None = None) -> ConsistencyProof:
        checkpoints = await self.checkpoints()
        size = size2 if size2 is not None else max((c.tree_size for c in checkpoints), default=0)
        return prove_consistency(await self._tree(size), size1, size2, checkpoints)


# -- verification straight from the database ----------------------------------------------


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[Any]]:
    while True:
        rows = cursor.fetchmany(READ_CHUNK)
        if not rows:
            return
        yield rows


def _verify_sqlite(
    path: str,
    verifier: NoteVerifier,
    inclusion: Sequence[int],
    extra: Sequence[StoredCheckpoint],
) -> VerifyReport:
    if not Path(path).is_file():
        raise FileNotFoundError(path)  # sqlite3 would create an empty database
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot for the checkpoints and the records
        stored = [StoredCheckpoint(*row) for row in conn.execute(_CHECKPOINT_ROWS)]
        checker = LogVerifier(verifier, [*stored, *extra])
        for rows in _chunks(conn.execute(_SQLITE_ROWS)):
            if not checker.feed(rows):
                break
        conn.execute("COMMIT")
    finally:
        conn.close()
    return checker.finish(inclusion)


async def _verify_pg(
    url: str,
    verifier: NoteVerifier,
    inclusion: Sequence[int],
    extra: Sequence[StoredCheckpoint],
) -> VerifyReport:
    engine = make_engine(url, null_pool=True)
    try:
        kwargs = asyncpg_connect_kwargs(engine)
    finally:
        await engine.dispose()
    kwargs["command_timeout"] = None  # a million records take longer than one statement's cap
    conn = await asyncpg.connect(**kwargs)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            stored = [StoredCheckpoint(*row) for row in await conn.fetch(_CHECKPOINT_ROWS)]
            checker = LogVerifier(verifier, [*stored, *extra])
            cursor = await conn.cursor(_PG_ROWS)
            while True:
                rows = await cursor.fetch(READ_CHUNK)
                if not rows or not checker.feed(rows):
                    break
    finally:
        await conn.close()
    return checker.finish(inclusion)


def verify_database(
    url: str,
    verifier: NoteVerifier,
    *,
    inclusion: Sequence[int] = (),
    extra_checkpoints: Sequence[StoredCheckpoint] = (),
) -> VerifyReport:
    """Verify the audit log stored at ``url`` (see :mod:`riskguard.adapters.audit.verify`).
    Raises DependencyUnavailable when the database cannot be read, ValueError for an
    in-memory database (nothing outside its process can see it)."""
    if is_memory(url):
        raise ValueError("an in-memory database cannot be verified from outside its process")
    try:
        path = sqlite_path(url)
        if path is not None:
            return _verify_sqlite(path, verifier, inclusion, extra_checkpoints)
        return asyncio.run(_verify_pg(url, verifier, inclusion, extra_checkpoints))
    except Exception as exc:
        if is_db_error(exc) or isinstance(exc, asyncpg.PostgresError):
            raise DependencyUnavailable(
                f"cannot read the audit log at {redact(url)} ({error_kind(exc)})"
            ) from None
        raise


@contextlib.asynccontextmanager
async def opened(url: str, signer: NoteSigner, **kwargs: Any) -> AsyncIterator[SqlAuditLog]:
    """A started :class:`SqlAuditLog`, closed on exit."""
    log = SqlAuditLog(url, signer, **kwargs)
    await log.start()
    try:
        yield log
    finally:
        await log.close()
