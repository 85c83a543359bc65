"""SqlDecisionStore and its migrations against real SQLite files and a real PostgreSQL.

Every test runs on both databases (a fresh SQLite file / a fresh PostgreSQL database each) and
drives its coroutines with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from riskguard.adapters.sql import migrate
from riskguard.adapters.sql import outbox as ob
from riskguard.adapters.sql import store as store_module
from riskguard.adapters.sql.engines import make_engine
from riskguard.adapters.sql.store import SqlDecisionStore, decode_cursor, encode_cursor
from riskguard.adapters.sql.tables import metadata
from riskguard.adapters.sql.urls import dialect_of, normalize, redact
from riskguard.ports import (
    ApiKey,
    DecisionQuery,
    DecisionRecord,
    DependencyUnavailable,
    Draft,
    RulesetVersion,
)
from tests.integration.conftest import PG_HOST, PG_PORT, free_port

pytestmark = pytest.mark.integration

DIALECTS = ["sqlite", "postgresql"]
TABLES = {"tenants", "api_keys", "decisions", "ruleset_versions", "active_rulesets", "rule_drafts"}
BASE_TIME = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database: a new SQLite file or a new PostgreSQL database."""
    return str(
        request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")
    )


@pytest.fixture
def url(db_url: str) -> str:
    """``db_url`` migrated to head."""
    migrate.upgrade(db_url)
    return db_url


@contextlib.asynccontextmanager
async def opened(url: str, **kwargs: Any) -> AsyncIterator[SqlDecisionStore]:
    store = SqlDecisionStore(url, **kwargs)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def run(work: Callable[[SqlDecisionStore], Any], url: str, **kwargs: Any) -> Any:
    async def main() -> Any:
        async with opened(url, **kwargs) as store:
            return await work(store)

    return asyncio.run(main())


def new_id() -> str:
    return "dec_" + uuid.uuid4().hex


def make_record(
    tenant_id: str = "t_a",
    event_id: str | None = None,
    *,
    at: datetime | None = None,
    **changes: Any,
) -> DecisionRecord:
    record = DecisionRecord(
        decision_id=new_id(),
        tenant_id=tenant_id,
        event_id=event_id or "ev_" + uuid.uuid4().hex[:12],
        event_type="payment",
        body_hash="b" * 64,
        entity="acct_1",
        occurred_at=at or BASE_TIME,
        received_at=(at or BASE_TIME) + timedelta(milliseconds=3),
        outcome="allow",
        score=0.25,
        ruleset_version="rs-0123456789abcdef",
        model_version="iforest-1",
        latency_ms=1.5,
        degraded=False,
        event={"event_id": "x", "amount": 12.5},
        features={"velocity.count_1h": 3},
        reasons=[{"code": "OK"}],
        shadow_reasons=[],
        explanation="Allowed.",
    )
    return replace(record, **changes)


async def raw_rows(url: str, sql: str) -> list[Any]:
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.connect() as conn:
            return list((await conn.exec_driver_sql(sql)).all())
    finally:
        await engine.dispose()


# -- migrations ----------------------------------------------------------------------------


def test_migrations_from_an_empty_database(db_url: str) -> None:
    assert migrate.current(db_url) is None
    head = migrate.head()
    assert migrate.upgrade(db_url) == head
    assert migrate.current(db_url) == head

    async def schema() -> tuple[set[str], list[Any]]:
        engine = make_engine(db_url, null_pool=True)
        try:
            async with engine.connect() as conn:
                names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
                diff = await conn.run_sync(
                    lambda c: compare_metadata(
                        MigrationContext.configure(c, opts={"compare_type": True}), metadata
                    )
                )
                return names, diff
        finally:
            await engine.dispose()

    names, diff = asyncio.run(schema())
    assert names >= TABLES
    assert diff == []  # the hand-written migration creates exactly tables.py
    indexes = asyncio.run(
        raw_rows(
            db_url,
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            if dialect_of(db_url) == "sqlite"
            else "SELECT indexname FROM pg_indexes WHERE tablename = 'decisions'",
        )
    )
    assert {
        "ix_decisions_tenant_time",
        "ix_decisions_tenant_entity",
        "ix_decisions_tenant_type",
        "ix_decisions_tenant_outcome",
    } <= {row[0] for row in indexes}

    # a second upgrade is a no-op
    assert migrate.upgrade(db_url) == head
    assert asyncio.run(raw_rows(db_url, "SELECT version_num FROM alembic_version")) == [(head,)]

    if dialect_of(db_url) == "sqlite":
        path = normalize(db_url).split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_upgrades_migrate_once(db_url: str) -> None:
    """Replicas starting together: every one ends at head, none fails."""
    code = (
        "import sys; from riskguard.adapters.sql.migrate import upgrade; "
        "print(upgrade(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == migrate.head()
    assert asyncio.run(raw_rows(db_url, "SELECT version_num FROM alembic_version")) == [
        (migrate.head(),)
    ]


def test_store_sets_sqlite_pragmas_on_every_connection(url: str) -> None:
    async def work(store: SqlDecisionStore) -> dict[str, Any]:
        if store.dialect != "sqlite":
            return {}
        engine = make_engine(url, null_pool=True)
        try:
            async with engine.connect() as conn:
                return {
                    p: (await conn.exec_driver_sql(f"PRAGMA {p}")).scalar_one()
                    for p in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
                }
        finally:
            await engine.dispose()

    pragmas = run(work, url)
    if dialect_of(url) == "sqlite":
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 2,
            "busy_timeout": 5000,
            "foreign_keys": 1,
        }


# -- decisions -----------------------------------------------------------------------------


def test_record_round_trip_keeps_every_field(url: str) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    record = make_record(
        "t_round",
        "ev-round-1",
        event_type="login",
        entity=None,
        occurred_at=datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=ist),
        received_at=datetime(2025, 6, 30, 18, 30, 0, 123456, tzinfo=UTC),
        outcome="challenge",
        score=0.1 + 0.2,
        model_version=None,
        latency_ms=1e-3,
        degraded=True,
        event={
            "event_id": "ev-round-1",
            "nested": {"list": [1, 2.5, -0.0, True, None, "x"], "empty": {}},
            "unicode": "naïve — 東京 \u2028 😀",
            "big": 2**53 + 1,
            "tiny": 1e-300,
        },
        features={"velocity.count_1h": 7, "geo.km_per_h": 912.3333333333334, "f.flag": False},
        reasons=[{"code": "R1", "contribution": 0.3, "outcome": None}],
        shadow_reasons=[{"code": "S1", "message": "shadow"}],
        explanation="Challenged: new device.",
    )

    async def work(store: SqlDecisionStore) -> tuple[Any, ...]:
        inserted = await store.record(record)
        return (
            inserted,
            await store.get("t_round", record.decision_id),
            await store.get_by_event("t_round", "ev-round-1"),
            await store.get("t_other", record.decision_id),
            await store.get_by_event("t_other", "ev-round-1"),
            await store.get("t_round", "dec_missing"),
        )

    inserted, by_id, by_event, other_id, other_event, missing = run(work, url)
    assert inserted is True
    assert by_id == record
    assert by_event == record
    assert other_id is None
    assert other_event is None
    assert missing is None
    for stamp in (by_id.occurred_at, by_id.received_at):
        assert stamp.utcoffset() == timedelta(0)
    assert by_id.occurred_at == datetime(2025, 6, 30, 18, 29, 59, 999999, tzinfo=UTC)
    assert by_id.score == 0.30000000000000004
    assert by_id.event["big"] == 2**53 + 1
    assert by_id.event["tiny"] == 1e-300
    assert by_id.features["geo.km_per_h"] == 912.3333333333334
    assert by_id.degraded is True
    assert by_id.entity is None
    assert by_id.model_version is None


def test_duplicate_event_id_is_stored_once(url: str) -> None:
    async def work(store: SqlDecisionStore) -> dict[str, Any]:
        first = make_record("t_dup", "ev-dup")
        results: dict[str, Any] = {"first": await store.record(first)}
        results["again"] = await store.record(make_record("t_dup", "ev-dup"))
        results["same_record"] = await store.record(first)
        # 50 concurrent requests for one new event id, then the same record 10 times at once
        racers = [make_record("t_dup", "ev-race") for _ in range(50)]
        results["race"] = await asyncio.gather(*(store.record(r) for r in racers))
        twin = make_record("t_dup", "ev-twin")
        results["twins"] = await asyncio.gather(*(store.record(twin) for _ in range(10)))
        results["stored_race"] = await store.get_by_event("t_dup", "ev-race")
        results["racers"] = racers
        results["stored_first"] = await store.get_by_event("t_dup", "ev-dup")
        results["first_record"] = first
        results["count"] = await store.count("t_dup")
        # the same event id in another tenant is another event
        results["other_tenant"] = await store.record(make_record("t_dup2", "ev-dup"))
        return results

    r = run(work, url)
    assert r["first"] is True
    assert r["again"] is False
    assert r["same_record"] is False
    assert sorted(r["race"]) == [False] * 49 + [True]
    winner = r["racers"][r["race"].index(True)]
    assert r["stored_race"] == winner
    assert sorted(r["twins"]) == [False] * 9 + [True]
    assert r["stored_first"] == r["first_record"]
    assert r["count"] == 3
    assert r["other_tenant"] is True
    rows = asyncio.run(
        raw_rows(url, "SELECT count(*) FROM decisions WHERE event_id IN ('ev-dup', 'ev-race')")
    )
    assert rows == [(3,)]


def test_a_batch_mixing_stored_and_new_keys(url: str) -> None:
    """Stored keys in a batch answer False, its new keys True (PostgreSQL: the plain INSERT
    fails on the first stored key and the batch is written again skipping what exists)."""

    async def work(store: SqlDecisionStore) -> tuple[list[bool], list[bool], int]:
        stored = [make_record("t_mix") for _ in range(10)]
        first = await asyncio.gather(*(store.record(r) for r in stored))
        again = [make_record("t_mix", r.event_id) for r in stored[::2]]
        batch = [r for old in again for r in (old, make_record("t_mix"))]
        second = await asyncio.gather(*(store.record(r) for r in batch))
        return first, second, await store.count("t_mix")

    first, second, count = run(work, url)
    assert first == [True] * 10
    assert second == [False, True] * 5
    assert count == 15


def test_outbox_messages_are_written_with_exactly_the_decisions_inserted(url: str) -> None:
    """With the outbox on, every inserted decision has one ``decision.created`` message in the
    same transaction and a duplicate (stored before, or twice in one batch) has none."""

    async def work(store: SqlDecisionStore) -> tuple[list[bool], list[bool]]:
        stored = [make_record("t_out") for _ in range(6)]
        first = await asyncio.gather(*(store.record(r) for r in stored))
        again = [make_record("t_out", r.event_id) for r in stored[::2]]
        batch = [r for old in again for r in (old, make_record("t_out"), old)]
        second = await asyncio.gather(*(store.record(r) for r in batch))
        return first, second

    first, second = run(work, url, outbox=True)
    assert first == [True] * 6
    assert second.count(True) == 3
    rows = asyncio.run(
        raw_rows(
            url,
            "SELECT m.topic, m.subject, d.decision_id FROM outbox_messages AS m "
            "LEFT JOIN decisions AS d ON d.decision_id = m.subject WHERE m.tenant_id = 't_out'",
        )
    )
    assert len(rows) == 9
    assert {topic for topic, _, _ in rows} == {"decision.created"}
    assert all(decision_id == subject for _, subject, decision_id in rows)
    decisions = asyncio.run(
        raw_rows(url, "SELECT count(*) FROM decisions WHERE tenant_id = 't_out'")
    )
    assert decisions == [(9,)]


def test_the_stored_decision_message_is_decision_messages(url: str) -> None:
    """Each dialect stores exactly :func:`outbox.decision_message` of a decision — id,
    subject, payload and time — though on PostgreSQL the insert statement builds it from the
    inserted row: times with and without microseconds, scores integral or not, absent
    entity and model, text that JSON must escape."""
    records = [
        make_record("t_msg"),
        make_record(
            "t_msg",
            at=datetime(2025, 3, 1, 12, 0, 0, 120034, tzinfo=UTC),
            score=1.0,
            entity=None,
            model_version=None,
            degraded=True,
            outcome="block",
            reasons=[{"code": "SANCTIONS", "detail": {"list": "OFAC", "hits": [1, 2.5]}}],
            explanation='Blocked: "Zoë" \\ matched\nthe list \u2028 ✓',
        ),
        make_record("t_msg", score=0.1 + 0.2, decision_id="d-not-dec-form"),
    ]

    async def work(store: SqlDecisionStore) -> list[bool]:
        return list(await asyncio.gather(*(store.record(r) for r in records)))

    assert run(work, url, outbox=True) == [True] * 3
    rows = asyncio.run(
        raw_rows(
            url,
            "SELECT id, tenant_id, topic, subject, payload, created_at FROM outbox_messages "
            "WHERE tenant_id = 't_msg' ORDER BY subject",
        )
    )
    stored = {
        row[3]: (
            row[0],
            row[1],
            row[2],
            orjson.loads(row[4]) if isinstance(row[4], str) else row[4],
            row[5] if isinstance(row[5], datetime) else datetime.fromisoformat(row[5]),
        )
        for row in rows
    }
    assert len(stored) == 3
    for record in records:
        expected = ob.decision_message(record)
        message_id, tenant_id, topic, payload, created_at = stored[record.decision_id]
        assert (message_id, tenant_id, topic) == (expected.id, "t_msg", "decision.created")
        assert payload == expected.payload  # 1 == 1.0: an integral score may read back as 1
        assert created_at.replace(tzinfo=UTC) == record.received_at
    assert stored[records[0].decision_id][0] == "evt_" + records[0].decision_id[4:]
    assert stored["d-not-dec-form"][0] == "evt_d-not-dec-form"


def test_pg_batch_committed_before_the_connection_was_lost_is_ours(
    fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert commits, then the connection dies before the answer: the retry on a new
    connection finds the rows stored and answers True for those with our decision ids (and
    False for a key another record holds); the batch does not count as failed."""
    migrate.upgrade(fresh_pg_url)
    real_insert = store_module._PgWriter._insert
    calls = 0

    async def lost_after_commit(self: Any, conn: Any, items: Any, rows: Any) -> Any:
        nonlocal calls
        calls += 1
        inserted = await real_insert(self, conn, items, rows)
        if calls == 2:  # the batch under test (call 1 stored the older record)
            conn.terminate()
            raise asyncpg.ConnectionDoesNotExistError("connection was closed")
        return inserted

    monkeypatch.setattr(store_module._PgWriter, "_insert", lost_after_commit)

    async def work(store: SqlDecisionStore) -> tuple[list[bool], int, int]:
        older = make_record("t_lost")
        assert await store.record(older)
        batch = [make_record("t_lost") for _ in range(5)]
        batch.append(make_record("t_lost", older.event_id))  # another record's key
        results = await asyncio.gather(*(store.record(r) for r in batch))
        return results, store.failed_batches, await store.count("t_lost")

    results, failed, count = run(work, fresh_pg_url)
    assert calls == 3  # the lost attempt and its retry
    assert sorted(results) == [False] + [True] * 5
    assert failed == 0
    assert count == 6


def test_group_commit_batches_concurrent_records(url: str) -> None:
    async def work(store: SqlDecisionStore) -> tuple[list[bool], int, int, int]:
        records = [make_record("t_gc") for _ in range(2000)]
        results = await asyncio.gather(*(store.record(r) for r in records))
        return results, store.batches, store.records_written, await store.count("t_gc")

    results, batches, written, count = run(work, url)
    assert all(results)
    assert written == count == 2000
    assert batches <= 100, f"2,000 concurrent records took {batches} commits"


def test_batches_respect_batch_max_and_sequential_records_commit_alone(url: str) -> None:
    async def work(store: SqlDecisionStore) -> tuple[int, int, int]:
        for _ in range(5):  # one at a time: each is committed on its own, at once
            assert await store.record(make_record("t_bm"))
        sequential = store.batches
        await asyncio.gather(*(store.record(make_record("t_bm")) for _ in range(300)))
        return sequential, store.largest_batch, await store.count("t_bm")

    sequential, largest, count = run(work, url, batch_max=64)
    assert sequential == 5
    assert largest <= 64
    assert count == 305


def test_close_flushes_queued_records(url: str) -> None:
    async def main() -> tuple[list[Any], int]:
        store = SqlDecisionStore(url)
        await store.start()
        tasks = [asyncio.create_task(store.record(make_record("t_close"))) for _ in range(300)]
        await asyncio.sleep(0)  # every task has queued its record
        await store.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(DependencyUnavailable):
            await store.record(make_record("t_close"))
        async with opened(url) as again:
            return results, await again.count("t_close")

    results, count = asyncio.run(main())
    assert results == [True] * 300
    assert count == 300


def test_a_rejected_row_fails_alone(url: str) -> None:
    """A row the database refuses fails on its own; its batch-mates are written."""

    async def work(store: SqlDecisionStore) -> list[Any]:
        records = [make_record("t_bad") for _ in range(30)]
        records[7] = make_record("t_bad", explanation=None)  # NOT NULL violation
        # a NUL in a JSON string: both databases store it (PostgreSQL's json, unlike jsonb)
        records[12] = make_record("t_bad", event={"user_agent": "bad\x00agent"})
        results = await asyncio.gather(*(store.record(r) for r in records), return_exceptions=True)
        stored = await store.get("t_bad", records[12].decision_id)
        return [*results, stored]

    *results, stored = run(work, url)
    assert [r for i, r in enumerate(results) if i != 7] == [True] * 29
    assert isinstance(results[7], DependencyUnavailable)
    assert "rejected the record" in str(results[7])
    assert stored is not None
    assert stored.event == {"user_agent": "bad\x00agent"}


# -- listing -------------------------------------------------------------------------------


def _expected(records: list[DecisionRecord], keep: Callable[[DecisionRecord], bool]) -> list[str]:
    chosen = sorted(
        (r for r in records if keep(r)),
        key=lambda r: (r.occurred_at, r.decision_id),
        reverse=True,
    )
    return [r.decision_id for r in chosen]


async def _walk(store: SqlDecisionStore, tenant: str, query: DecisionQuery) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        page, cursor = await store.list(tenant, replace(query, cursor=cursor))
        assert len(page) <= query.limit
        seen += [r.decision_id for r in page]
        if cursor is None:
            return seen
        assert page, "a cursor after an empty page"
    raise AssertionError("pagination did not end")


def test_list_filters_and_pagination(url: str) -> None:
    rng = random.Random(7)
    records: list[DecisionRecord] = []
    for i in range(260):
        # several decisions share a timestamp, so the decision id must break ties
        at = BASE_TIME + timedelta(seconds=rng.randrange(120))
        records.append(
            make_record(
                "t_list",
                f"ev-{i:04d}",
                at=at,
                event_type=rng.choice(["payment", "login", "api_call"]),
                outcome=rng.choice(["allow", "challenge", "review", "block"]),
                entity=rng.choice(["acct_1", "acct_2", "acct_3", None]),
            )
        )
    noise = [make_record("t_noise", f"ev-{i:04d}", at=BASE_TIME) for i in range(30)]
    since, until = BASE_TIME + timedelta(seconds=30), BASE_TIME + timedelta(seconds=90)
    cases: list[tuple[DecisionQuery, Callable[[DecisionRecord], bool]]] = [
        (DecisionQuery(limit=7), lambda r: True),
        (DecisionQuery(limit=50), lambda r: True),
        (DecisionQuery(limit=500), lambda r: True),
        (DecisionQuery(event_type="login", limit=9), lambda r: r.event_type == "login"),
        (DecisionQuery(outcome="review", limit=4), lambda r: r.outcome == "review"),
        (DecisionQuery(entity="acct_2", limit=11), lambda r: r.entity == "acct_2"),
        (
            DecisionQuery(since=since, until=until, limit=13),
            lambda r: since <= r.occurred_at < until,
        ),
        (
            DecisionQuery(
                event_type="payment",
                outcome="block",
                entity="acct_1",
                since=since.astimezone(timezone(timedelta(hours=-7))),
                limit=2,
            ),
            lambda r: (
                r.event_type == "payment"
                and r.outcome == "block"
                and r.entity == "acct_1"
                and r.occurred_at >= since
            ),
        ),
        (DecisionQuery(outcome="no-such-outcome"), lambda r: False),
    ]

    async def work(store: SqlDecisionStore) -> None:
        await asyncio.gather(*(store.record(r) for r in records + noise))
        for query, keep in cases:
            walked = await _walk(store, "t_list", query)
            assert walked == _expected(records, keep), query
            assert len(set(walked)) == len(walked)
        page, cursor = await store.list("t_list", DecisionQuery(limit=0))
        assert len(page) == 1
        assert cursor is not None
        page, _ = await store.list("t_list", DecisionQuery(limit=100_000))
        assert len(page) == 260  # clamped to 500, and this tenant has 260
        first, _ = await store.list("t_list", DecisionQuery(limit=1))
        assert first[0].decision_id == _expected(records, lambda r: True)[0]
        assert first[0] == next(r for r in records if r.decision_id == first[0].decision_id)
        assert await store.list("t_empty", DecisionQuery()) == ([], None)
        assert await store.count("t_list") == 260
        assert await store.count() == 290

        bad_cursors = [
            "not a cursor!",
            "%%%",
            base64.urlsafe_b64encode(b"not json").decode(),
            base64.urlsafe_b64encode(orjson.dumps({"a": 1})).decode(),
            base64.urlsafe_b64encode(orjson.dumps(["2025-01-01T00:00:00", "dec_x"])).decode(),
            base64.urlsafe_b64encode(orjson.dumps(["yesterday", "dec_x"])).decode(),
            base64.urlsafe_b64encode(orjson.dumps(["2025-01-01T00:00:00+00:00", 5])).decode(),
            "A" * 10_000,
        ]
        for bad in bad_cursors:
            with pytest.raises(ValueError, match="invalid cursor"):
                await store.list("t_list", DecisionQuery(cursor=bad))

    run(work, url)


def test_cursor_round_trip_is_url_safe() -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    cursor = encode_cursor(at, "dec_01ABC")
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(cursor) == (at, "dec_01ABC")


# -- tenants, keys, scoping ----------------------------------------------------------------


def test_tenants_and_keys(url: str) -> None:
    async def work(store: SqlDecisionStore) -> None:
        acme = await store.create_tenant("acme")
        assert acme.id.startswith("t_")
        assert len(acme.id) == 18
        int(acme.id[2:], 16)
        assert acme.created_at.utcoffset() == timedelta(0)
        with pytest.raises(ValueError, match="already exists"):
            await store.create_tenant("acme")
        assert await store.get_tenant(acme.id) == acme
        assert await store.get_tenant("t_0000000000000000") is None
        assert await store.find_tenant(acme.id) == acme
        assert await store.find_tenant("acme") == acme
        assert await store.find_tenant("nobody") is None
        # a tenant whose *name* is another tenant's id: the id wins
        tricky = await store.create_tenant(acme.id)
        assert await store.find_tenant(acme.id) == acme
        assert await store.get_tenant(tricky.id) == tricky

        key = ApiKey(
            key_id="abc123def456",
            tenant_id=acme.id,
            role="admin",
            secret_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            created_at=datetime(2025, 1, 1, tzinfo=UTC),
        )
        await store.create_key(key)
        assert await store.get_key("abc123def456") == key
        assert await store.get_key("nope") is None
        with pytest.raises(ValueError, match="cannot store key"):
            await store.create_key(key)  # the key id exists
        with pytest.raises(ValueError, match="cannot store key"):
            await store.create_key(replace(key, key_id="k2", tenant_id="t_unknown"))
        revoked = replace(key, key_id="k3", role="read", revoked=True)
        await store.create_key(revoked)
        assert await store.get_key("k3") == revoked

    run(work, url)


def test_tenant_scoping(url: str) -> None:
    async def work(store: SqlDecisionStore) -> None:
        a = await store.create_tenant("tenant-a")
        b = await store.create_tenant("tenant-b")
        rec = make_record(a.id, "shared-event-id")
        assert await store.record(rec)
        await store.save_draft(Draft(tenant_id=a.id, document={"rules": [{"id": "r1"}]}))
        version = RulesetVersion(
            tenant_id=a.id,
            version="rs-aaaaaaaaaaaaaaaa",
            document={"rules": []},
            created_at=BASE_TIME,
            created_by="system",
        )
        await store.publish(version)
        await store.create_key(
            ApiKey(
                key_id="key-a",
                tenant_id=a.id,
                role="ingest",
                secret_hash="h",
                created_at=BASE_TIME,
            )
        )

        assert await store.get(b.id, rec.decision_id) is None
        assert await store.get_by_event(b.id, "shared-event-id") is None
        assert await store.list(b.id, DecisionQuery()) == ([], None)
        assert await store.count(b.id) == 0
        assert await store.get_draft(b.id) is None
        assert await store.list_versions(b.id) == []
        assert await store.get_version(b.id, "rs-aaaaaaaaaaaaaaaa") is None
        assert await store.active_versions() == {a.id: "rs-aaaaaaaaaaaaaaaa"}
        key = await store.get_key("key-a")
        assert key is not None
        assert key.tenant_id == a.id
        # B's own event with the same id is B's
        assert await store.record(make_record(b.id, "shared-event-id"))
        page, _ = await store.list(a.id, DecisionQuery())
        assert [r.decision_id for r in page] == [rec.decision_id]
        # a cursor from A's list, replayed on B's, still only reaches B's rows
        assert await store.record(make_record(a.id, at=BASE_TIME - timedelta(days=1)))
        _, cursor = await store.list(a.id, DecisionQuery(limit=1))
        assert cursor is not None
        page, _ = await store.list(b.id, DecisionQuery(cursor=cursor))
        assert {r.tenant_id for r in page} <= {b.id}
        assert await store.count(a.id) == 2
        assert await store.count(b.id) == 1

    run(work, url)


# -- rulesets ------------------------------------------------------------------------------


def test_drafts_use_optimistic_concurrency(url: str) -> None:
    async def work(store: SqlDecisionStore) -> None:
        tenant = await store.create_tenant("drafts")
        tid = tenant.id
        assert await store.get_draft(tid) is None
        # revision 0 means "there is no draft yet"
        assert await store.save_draft(Draft(tid, {"rules": [{"id": "a"}]})) is True
        assert await store.save_draft(Draft(tid, {"rules": [{"id": "other"}]})) is False
        draft = await store.get_draft(tid)
        assert draft is not None
        assert draft.revision == 1
        assert draft.document == {"rules": [{"id": "a"}]}
        assert draft.updated_at is not None
        assert draft.updated_at.utcoffset() == timedelta(0)

        draft.document = {"rules": [{"id": "a"}, {"id": "b", "when": "amount > 10.5"}]}
        draft.deleted_rules = {"old": {"id": "old", "score": 0.5}}
        assert await store.save_draft(draft) is True
        assert draft.revision == 1  # the store does not touch the caller's object
        assert await store.save_draft(draft) is False  # stale now
        stored = await store.get_draft(tid)
        assert stored is not None
        assert stored.revision == 2
        assert stored.deleted_rules == {"old": {"id": "old", "score": 0.5}}
        assert stored.document["rules"][1]["when"] == "amount > 10.5"

        # ten editors with the same revision: exactly one wins
        editors = [Draft(tid, {"rules": [{"id": f"e{i}"}]}, revision=2) for i in range(10)]
        wins = await asyncio.gather(*(store.save_draft(d) for d in editors))
        assert sorted(wins) == [False] * 9 + [True]
        final = await store.get_draft(tid)
        assert final is not None
        assert final.revision == 3
        assert final.document == editors[wins.index(True)].document

        with pytest.raises(ValueError, match="unknown tenant"):
            await store.save_draft(Draft("t_nobody", {"rules": []}))

    run(work, url)


def test_publish_activates_and_lists_versions(url: str) -> None:
    async def work(store: SqlDecisionStore) -> None:
        tenant = await store.create_tenant("rules")
        other = await store.create_tenant("rules-2")
        tid = tenant.id
        assert await store.active_versions() == {}
        v1 = RulesetVersion(
            tenant_id=tid,
            version="rs-1111111111111111",
            document={"rules": [{"id": "r1", "score": 0.4}], "name": "pack"},
            created_at=BASE_TIME,
            created_by="system",
            comment="initial default pack",
            active=True,
        )
        await store.publish(v1)
        assert await store.active_versions() == {tid: v1.version}
        assert await store.get_version(tid, v1.version) == v1
        v2 = replace(
            v1,
            version="rs-2222222222222222",
            document={"rules": []},
            created_at=BASE_TIME + timedelta(minutes=5),
            created_by="key123",
            comment="",
        )
        await store.publish(v2)
        assert await store.active_versions() == {tid: v2.version}
        listed = await store.list_versions(tid)
        assert [(v.version, v.active) for v in listed] == [(v2.version, True), (v1.version, False)]
        assert listed[0] == v2
        assert listed[1] == replace(v1, active=False)

        # rolling back re-publishes v1: idempotent on the content hash, v1 active again
        await store.publish(replace(v1, created_at=BASE_TIME + timedelta(hours=1), comment="x"))
        listed = await store.list_versions(tid)
        assert [(v.version, v.active) for v in listed] == [(v2.version, False), (v1.version, True)]
        assert listed[1] == v1  # the stored version is unchanged
        assert await store.active_versions() == {tid: v1.version}

        await store.publish(replace(v2, tenant_id=other.id))
        assert await store.active_versions() == {tid: v1.version, other.id: v2.version}
        assert await store.get_version(tid, "rs-none") is None
        with pytest.raises(ValueError, match="unknown tenant"):
            await store.publish(replace(v1, tenant_id="t_nobody"))

    run(work, url)


# -- failures and recovery -----------------------------------------------------------------


def _down_url(dialect: str, tmp_path: Path) -> str:
    if dialect == "postgresql":
        return f"postgresql://riskguard:s3cret-pw@127.0.0.1:{free_port()}/riskguard"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory should be")
    return f"sqlite:///{blocker}/riskguard.db"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_database_down_raises_quickly_and_never_hangs(dialect: str, tmp_path: Path) -> None:
    url = _down_url(dialect, tmp_path)

    async def main() -> list[DependencyUnavailable]:
        errors: list[DependencyUnavailable] = []
        async with opened(url) as store:  # starting needs no connection
            for call in (
                lambda: store.record(make_record()),
                lambda: store.record(make_record()),  # the writer is still there
                store.ping,
                lambda: store.get("t_a", "dec_x"),
                lambda: store.list("t_a", DecisionQuery()),
                store.active_versions,
                lambda: store.create_tenant("x"),
            ):
                started = time.monotonic()
                with pytest.raises(DependencyUnavailable) as caught:
                    await asyncio.wait_for(call(), 10)
                assert time.monotonic() - started < 5
                errors.append(caught.value)
            results = await asyncio.gather(
                *(store.record(make_record()) for _ in range(50)), return_exceptions=True
            )
            assert all(isinstance(r, DependencyUnavailable) for r in results)
        return errors

    errors = asyncio.run(main())
    for error in errors:
        assert "s3cret" not in str(error)
        assert "database" in str(error)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unresponsive_database_fails_within_the_timeout(dialect: str, url_factory: Any) -> None:
    """A database that accepts and then says nothing (PostgreSQL) or holds its write lock
    (SQLite): one batch waits out the timeout, the records queued behind it fail at once."""
    url = url_factory(dialect)

    async def main() -> None:
        release = asyncio.Event()

        async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()
            writer.transport.abort()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        blocker: sqlite3.Connection | None = None
        target = url
        if dialect == "postgresql":
            target = f"postgresql://u:s3cret@127.0.0.1:{port}/db"
        else:
            blocker = sqlite3.connect(normalize(url).split("///", 1)[1], isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            async with opened(target) as store:
                started = time.monotonic()
                results = await asyncio.gather(
                    *(store.record(make_record()) for _ in range(100)), return_exceptions=True
                )
                elapsed = time.monotonic() - started
                assert all(isinstance(r, DependencyUnavailable) for r in results), results[:3]
                assert elapsed < 8, f"took {elapsed:.1f} s"  # not one timeout per batch
                assert all("s3cret" not in str(r) for r in results)
                if blocker is not None:
                    blocker.execute("ROLLBACK")
                    assert await _record_soon(store, make_record())
        finally:
            release.set()
            server.close()
            await server.wait_closed()
            if blocker is not None:
                blocker.close()

    asyncio.run(main())


@pytest.fixture
def url_factory(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A migrated database of the dialect asked for (PostgreSQL only when asked)."""

    def make(dialect: str) -> str:
        if dialect == "postgresql":
            return ""  # the test points at a silent server instead
        url = str(request.getfixturevalue("sqlite_url"))
        migrate.upgrade(url)
        return url

    return make


class _Proxy:
    """A TCP relay to PostgreSQL that can be taken down and brought back on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.transport.abort()


async def _record_soon(store: SqlDecisionStore, record: DecisionRecord) -> bool:
    """record() retried for up to 3 s: after an outage the store probes again within 1 s."""
    deadline = time.monotonic() + 3
    while True:
        try:
            return await store.record(record)
        except DependencyUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_store_recovers_when_the_database_returns(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/later/riskguard.db"  # the directory does not exist yet

        async def main() -> None:
            async with opened(url) as store:
                with pytest.raises(DependencyUnavailable):
                    await store.record(make_record())
                with pytest.raises(DependencyUnavailable):
                    await store.ping()
                await asyncio.to_thread(migrate.upgrade, url)  # the database "returns"
                await store.ping()
                assert await _record_soon(store, make_record())
                assert await store.count() == 1

        asyncio.run(main())
        return

    base = str(request.getfixturevalue("fresh_pg_url"))
    migrate.upgrade(base)
    port = free_port()
    via_proxy = base.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{port}")

    async def main_pg() -> None:
        proxy = _Proxy(port)
        await proxy.start()
        async with opened(via_proxy) as store:
            assert await store.record(make_record("t_r", "before"))
            await store.ping()
            await proxy.stop()  # the database goes away, pooled connections die with it
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(DependencyUnavailable):
                    await store.record(make_record("t_r"))
                with pytest.raises(DependencyUnavailable):
                    await store.ping()
                assert time.monotonic() - started < 5
            await proxy.start()  # and comes back: no restart of the store needed
            assert await _record_soon(store, make_record("t_r", "after"))
            await store.ping()
            assert {r.event_id for r in (await store.list("t_r", DecisionQuery()))[0]} == {
                "before",
                "after",
            }
            # a restart under an idle pool: the dead connections are replaced transparently
            failed = store.failed_batches
            await proxy.stop()
            await proxy.start()
            assert await store.record(make_record("t_r", "after-restart"))
            assert store.failed_batches == failed  # retried on a new connection, not failed
            assert await store.get_by_event("t_r", "before") is not None
        await proxy.stop()

    asyncio.run(main_pg())


# -- urls and the embedded in-memory database ----------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql+asyncpg://u@h/db?ssl=require"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./riskguard.db", "sqlite+aiosqlite:///./riskguard.db"),
        ("sqlite:////var/lib/rg.db", "sqlite+aiosqlite:////var/lib/rg.db"),
    ],
)
def test_urls_are_normalised_and_redacted(given: str, expected: str) -> None:
    assert normalize(given) == expected
    assert "p@" not in redact("postgresql://u:p@h:5432/db")
    assert redact("postgresql://u:s3cret@h/db") == "postgresql://u:***@h/db"
    assert "s3cret" not in redact("postgresql://u@h/db?password=s3cret")
    assert "s3cret" not in redact("postgresql://u:s3cret@h:bad-port/db")
    with pytest.raises(ValueError, match="unsupported database") as caught:
        normalize("mysql://u:s3cret@h/db")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("dialect", ["sqlite"])
def test_in_memory_sqlite_needs_no_migration(dialect: str) -> None:
    async def work(store: SqlDecisionStore) -> None:
        assert store.dialect == dialect
        tenant = await store.create_tenant("mem")
        assert await store.save_draft(Draft(tenant.id, {"rules": []}))
        results = await asyncio.gather(*(store.record(make_record(tenant.id)) for _ in range(200)))
        assert all(results)
        assert await store.count(tenant.id) == 200

    run(work, "sqlite://")
