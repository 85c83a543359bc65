"""Webhooks end to end: a real HTTP receiver on a loopback port, real SQLite and PostgreSQL.

Signatures verify (with the project's verifier and an independent recomputation); a receiver
that is down for a while gets every delivery exactly once per delivery id, in bounded time,
once it is back; one that always fails ends in dead-letter and can be redelivered; a dispatcher
killed (SIGKILL) mid-delivery loses nothing. Also: the outbox written in the caller's
transaction, the target URL policy (at creation and again at delivery), and ``/v1/webhooks``
over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpcore
import httpx
import pytest
from sqlalchemy import select

from riskguard.adapters.sql.engines import make_engine
from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.outbox import (
    ALERT_OPENED,
    OutboxMessage,
    decision_message,
    enqueue,
    enqueue_pg,
    enqueue_sqlite,
    outbox_messages,
    pg_insert_with_outbox,
    webhook_deliveries,
)
from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.adapters.sql.tables import DECISION_COLUMNS, DECISION_ROW_TYPE
from riskguard.adapters.sql.urls import normalize, sqlite_path
from riskguard.adapters.webhooks.dispatcher import Dispatcher, DispatcherConfig, RetryPolicy
from riskguard.adapters.webhooks.models import MessageOutcome, delivery_id
from riskguard.adapters.webhooks.sealing import SecretBox
from riskguard.adapters.webhooks.service import Change, ConflictError, WebhookService
from riskguard.adapters.webhooks.signing import WebhookSecret, verify
from riskguard.adapters.webhooks.store import WebhookStore
from riskguard.adapters.webhooks.transport import PinnedTransport
from riskguard.adapters.webhooks.urls import UnsafeUrlError, UrlPolicy, resolve_target
from riskguard.ports import DecisionRecord
from tests.integration.conftest import free_port
from tests.integration.service import ROOT, SECRET, Backend, provision_tenant

pytestmark = pytest.mark.integration

SERVICE_KEY = SECRET.encode()  # the key the test servers seal secrets with
LOOPBACK = UrlPolicy(require_https=True, allow_loopback=True)
PRODUCTION = UrlPolicy()
FAST_RETRY = RetryPolicy(max_attempts=50, base_s=0.05, cap_s=0.4)
FAST = DispatcherConfig(
    poll_interval_s=0.05,
    request_timeout_s=2.0,
    connect_timeout_s=0.5,
    resolve_timeout_s=0.5,
    publish_timeout_s=1.0,
    lease_s=3.0,
    retry=FAST_RETRY,
    url_policy=LOOPBACK,
)


# -- a real receiver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """An HTTP/1.0 server on a loopback port (each request on its own connection, so a
    stopped receiver refuses every attempt). Answers ``status`` (per path in ``statuses``)
    after ``delay_s``; records every request as it arrives."""

    port: int = field(default_factory=free_port)
    status: int = 204
    statuses: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    inflight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                arrival = Arrival(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.arrivals.append(arrival)
                    receiver.inflight += 1
                try:
                    time.sleep(receiver.delay_s)
                    self.send_response(receiver.statuses.get(self.path, receiver.status))
                    self.send_header("content-length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the dispatcher is gone (killed): it will send this again
                finally:
                    with receiver._lock:
                        receiver.inflight -= 1

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = None

    def snapshot(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def processed(self) -> dict[str, Arrival]:
        """What a receiver de-duplicating on webhook-id processes: the first of each id."""
        first: dict[str, Arrival] = {}
        for arrival in self.snapshot():
            first.setdefault(arrival.webhook_id, arrival)
        return first


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


# -- databases, messages, helpers --------------------------------------------------------------


@dataclass(frozen=True)
class Db:
    url: str
    tenant_id: str
    dialect: str


async def _tenant(url: str, name: str) -> str:
    store = SqlDecisionStore(url)
    await store.start()
    try:
        return (await store.create_tenant(name)).id
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    """A migrated database (SQLite file or a fresh PostgreSQL database) with one tenant."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'riskguard.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    upgrade(url)
    return Db(url, asyncio.run(_tenant(url, "acme")), request.param)


def record(tenant_id: str, outcome: str = "review", **changes: Any) -> DecisionRecord:
    now = datetime.now(UTC)
    base = DecisionRecord(
        decision_id="dec_" + uuid.uuid4().hex[:26].upper(),
        tenant_id=tenant_id,
        event_id="ev_" + uuid.uuid4().hex[:12],
        event_type="transaction",
        body_hash="b" * 64,
        entity="acct-1",
        occurred_at=now,
        received_at=now,
        outcome=outcome,
        score={"allow": 0.1, "review": 0.7, "block": 0.95}.get(outcome, 0.5),
        ruleset_version="rs-0123456789abcdef",
        model_version=None,
        latency_ms=1.2,
        degraded=False,
        event={"event_id": "x", "data": {"amount": 10.0}},
        features={"velocity.count_1h": 3},
        reasons=[{"code": "VELOCITY_ACCOUNT_COUNT_5M", "source": "rule", "contribution": 0.4}],
        shadow_reasons=[],
        explanation="Held for review.",
    )
    return replace(base, **changes)


def alert(tenant_id: str) -> OutboxMessage:
    return OutboxMessage.new(
        tenant_id,
        ALERT_OPENED,
        "alr_" + uuid.uuid4().hex[:12],
        {"alert_id": "alr_1", "severity": "high", "entity": "acct-1"},
    )


async def put(url: str, messages: list[OutboxMessage]) -> None:
    """Write messages the way the decision store does: inside a transaction of the caller."""
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.begin() as conn:
            await enqueue(conn, messages)
    finally:
        await engine.dispose()


async def rows(url: str, table: Any) -> list[Any]:
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(select(table))).all())
    finally:
        await engine.dispose()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, step_s: float = 0.05
) -> float:
    """Wait until ``check()``; the seconds it took (fails after ``timeout_s``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(step_s)
    return time.monotonic() - started


def service_for(url: str, policy: UrlPolicy = LOOPBACK) -> WebhookService:
    return WebhookService(WebhookStore.from_url(url), SecretBox(SERVICE_KEY), policy)


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        dispatcher.stop()
        await task
        await dispatcher.close()


async def states(url: str) -> dict[str, str]:
    return {row.id: row.state for row in await rows(url, webhook_deliveries)}


def recomputed(secret: WebhookSecret, arrival: Arrival) -> str:
    """The signature as the specification states it, computed here from scratch."""
    content = b".".join(
        (
            arrival.headers["webhook-id"].encode(),
            arrival.headers["webhook-timestamp"].encode(),
            arrival.body,
        )
    )
    digest = hmac.new(secret.key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# -- the outbox in the caller's transaction ----------------------------------------------------


def test_enqueue_commits_and_rolls_back_with_the_callers_transaction(db: Db) -> None:
    async def scenario() -> None:
        kept = [decision_message(record(db.tenant_id)) for _ in range(3)]
        dropped = decision_message(record(db.tenant_id))
        engine = make_engine(db.url, null_pool=True)
        try:
            async with engine.begin() as conn:
                await enqueue(conn, kept)
            conn_ = await engine.connect()
            trans = await conn_.begin()
            await enqueue(conn_, [dropped])
            await trans.rollback()
            await conn_.close()
        finally:
            await engine.dispose()
        stored = await rows(db.url, outbox_messages)
        assert {r.id for r in stored} == {m.id for m in kept}
        by_id = {r.id: r for r in stored}
        for m in kept:
            row = by_id[m.id]
            assert (row.topic, row.subject, row.tenant_id) == (
                "decision.created",
                m.subject,
                db.tenant_id,
            )
            assert row.payload == json.loads(json.dumps(dict(m.payload)))
            assert row.dispatched_at is None
            assert row.attempts == 0

    asyncio.run(scenario())


def test_raw_driver_entry_points_share_the_decision_insert_transaction(db: Db) -> None:
    """What the decision store's own connections do: sqlite3 inside BEGIN IMMEDIATE, asyncpg
    inside a transaction, and on PostgreSQL the single statement that inserts decisions and
    the outbox rows of exactly the decisions it inserted."""
    first, second, third = (record(db.tenant_id) for _ in range(3))

    if db.dialect == "sqlite":
        import sqlite3

        path = sqlite_path(db.url)
        assert path is not None
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            enqueue_sqlite(conn, [decision_message(first)])
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            enqueue_sqlite(conn, [decision_message(second)])
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        subjects = {r.subject for r in asyncio.run(rows(db.url, outbox_messages))}
        assert subjects == {first.decision_id}
        return

    async def pg() -> None:
        dsn = normalize(db.url).replace("postgresql+asyncpg", "postgresql")
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await enqueue_pg(conn, [decision_message(first)])
            failed = conn.transaction()  # the decision insert of this one fails: rollback
            await failed.start()
            await enqueue_pg(conn, [decision_message(second)])
            await failed.rollback()
            insert = (
                f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) SELECT "
                f"{', '.join(DECISION_COLUMNS)} FROM unnest($1::{DECISION_ROW_TYPE}[]) "
                "ON CONFLICT DO NOTHING"
            )
            statement = pg_insert_with_outbox(insert)

            def row(r: DecisionRecord) -> tuple[Any, ...]:
                values = []
                for name in DECISION_COLUMNS:
                    value = getattr(r, name)
                    values.append(json.dumps(value) if isinstance(value, (dict, list)) else value)
                return tuple(values)

            # third is new; a copy of third with another decision id repeats its event id
            duplicate = replace(third, decision_id="dec_" + uuid.uuid4().hex[:26].upper())
            inserted = await conn.fetch(statement, [row(third)])
            assert [tuple(r) for r in inserted] == [(db.tenant_id, third.event_id)]
            again = await conn.fetch(statement, [row(duplicate)])
            assert again == []  # the event id exists: no decision, so no message either
        finally:
            await conn.close()
        subjects = {r.subject for r in await rows(db.url, outbox_messages)}
        assert subjects == {first.decision_id, third.decision_id}

    asyncio.run(pg())


# -- signatures and filters ----------------------------------------------------------------------


def test_deliveries_are_signed_filtered_and_tenant_scoped(db: Db, receiver: Receiver) -> None:
    receiver.start()

    async def scenario() -> None:
        service = service_for(db.url)
        other_tenant = await _tenant(db.url, "globex")
        try:
            everything, first_secret = await service.create(
                db.tenant_id, url=receiver.url + "/all", events=["*"]
            )
            everything, second_secret = await service.update(
                db.tenant_id, everything.id, Change(rotate_secret=True)
            )
            assert second_secret is not None
            alerts, _ = await service.create(
                db.tenant_id, url=receiver.url + "/alerts", events=["alert.*"]
            )
            blocks, _ = await service.create(
                db.tenant_id,
                url=receiver.url + "/blocks",
                events=["decision.created"],
                outcomes=["block"],
            )
            await service.create(
                db.tenant_id, url=receiver.url + "/off", events=["*"], enabled=False
            )
            await service.create(other_tenant, url=receiver.url + "/globex", events=["*"])

            allowed = decision_message(record(db.tenant_id, "allow"))
            blocked = decision_message(record(db.tenant_id, "block"))
            opened = alert(db.tenant_id)
            await put(db.url, [allowed, blocked, opened])
            expected = {
                delivery_id(m.id, everything.id): ("/all", m) for m in (allowed, blocked, opened)
            }
            expected[delivery_id(opened.id, alerts.id)] = ("/alerts", opened)
            expected[delivery_id(blocked.id, blocks.id)] = ("/blocks", blocked)

            async def done() -> bool:
                s = await states(db.url)
                return len(s) == len(expected) and set(s.values()) == {"delivered"}

            async with running(Dispatcher(service.store, service.box, config=FAST)):
                await eventually(done, 20, "every delivery delivered")
        finally:
            await service.close()

        arrivals = receiver.snapshot()
        assert sorted(a.webhook_id for a in arrivals) == sorted(expected)
        for arrival in arrivals:
            path, message = expected[arrival.webhook_id]
            assert arrival.path == path
            assert arrival.headers["content-type"] == "application/json"
            assert abs(int(arrival.headers["webhook-timestamp"]) - time.time()) < 60
            body = json.loads(arrival.body)
            assert body["type"] == message.topic
            assert body["data"] == json.loads(json.dumps(dict(message.payload)))
            assert datetime.fromisoformat(body["timestamp"]) == message.created_at
            signatures = arrival.headers["webhook-signature"].split(" ")
            if path == "/all":  # rotated: signed with the old and the new secret
                assert len(signatures) == 2
                for secret in (first_secret, second_secret):
                    assert verify(arrival.body, arrival.headers, secret) == arrival.webhook_id
                    assert recomputed(secret, arrival) in signatures
            else:
                assert len(signatures) == 1
            with pytest.raises(ValueError, match="no matching signature"):
                verify(arrival.body, arrival.headers, WebhookSecret.generate())

    asyncio.run(scenario())


# -- a receiver down for a while, then back ------------------------------------------------------


def test_a_receiver_that_was_down_gets_everything_once_in_bounded_time(
    db: Db, receiver: Receiver
) -> None:
    count = 25

    async def scenario() -> float:
        service = service_for(db.url)
        try:
            sub, secret = await service.create(db.tenant_id, url=receiver.url + "/in", events=["*"])
            messages = [decision_message(record(db.tenant_id)) for _ in range(count)]
            await put(db.url, messages)
            expected = {delivery_id(m.id, sub.id) for m in messages}
            store = service.store

            async def failed_twice() -> bool:
                found = await rows(db.url, webhook_deliveries)
                return len(found) == count and all(r.attempts >= 2 for r in found)

            async def all_delivered() -> bool:
                return set((await states(db.url)).values()) == {"delivered"}

            async with running(Dispatcher(store, service.box, config=FAST)):
                await eventually(
                    failed_twice, 20, "every delivery tried while the receiver is down"
                )
                assert not receiver.snapshot()
                receiver.start()
                took = await eventually(all_delivered, 20, "everything delivered once back")
        finally:
            await service.close()
        processed = receiver.processed()
        assert set(processed) == expected
        assert len(receiver.snapshot()) == count  # no duplicate at all: exactly once per id
        for arrival in processed.values():
            assert verify(arrival.body, arrival.headers, secret) == arrival.webhook_id
        return took

    took = asyncio.run(scenario())
    # bound: the back-off cap (0.4 s) plus a poll and the attempts themselves
    assert took < FAST_RETRY.cap_s + 3.0, took
    print(
        f"\n[{db.dialect}] {count} deliveries delivered {took:.2f} s after the receiver came back"
    )


# -- a receiver that always fails -----------------------------------------------------------------


def test_a_receiver_that_always_fails_ends_in_dead_letter_and_can_be_redelivered(
    db: Db, receiver: Receiver
) -> None:
    receiver.status = 500
    receiver.statuses["/gone"] = 410
    receiver.start()
    config = replace(FAST, retry=RetryPolicy(max_attempts=3, base_s=0.05, cap_s=0.2))

    async def scenario() -> None:
        service = service_for(db.url)
        try:
            failing, _ = await service.create(db.tenant_id, url=receiver.url + "/x", events=["*"])
            gone, _ = await service.create(db.tenant_id, url=receiver.url + "/gone", events=["*"])
            messages = [decision_message(record(db.tenant_id)) for _ in range(3)]
            await put(db.url, messages)

            async def all_dead() -> bool:
                s = await states(db.url)
                return len(s) == 6 and set(s.values()) == {"dead"}

            async with running(Dispatcher(service.store, service.box, config=config)):
                await eventually(all_dead, 20, "every delivery dead")
                found = {r.id: r for r in await rows(db.url, webhook_deliveries)}
                for m in messages:
                    dead = found[delivery_id(m.id, failing.id)]
                    assert (dead.attempts, dead.last_status, dead.last_error) == (
                        3,
                        500,
                        "HTTP 500",
                    )
                    gone_one = found[delivery_id(m.id, gone.id)]
                    assert (gone_one.attempts, gone_one.last_status) == (1, 410)
                per_id: dict[str, int] = {}
                for arrival in receiver.snapshot():
                    per_id[arrival.webhook_id] = per_id.get(arrival.webhook_id, 0) + 1
                assert sorted(per_id.values()) == [1, 1, 1, 3, 3, 3]
                after_gone = await service.get(db.tenant_id, gone.id)
                assert not after_gone.enabled
                assert after_gone.disabled_reason == "the receiver answered 410 Gone"

                # on demand: the same delivery id, once the receiver works again
                receiver.status = 200
                again = delivery_id(messages[0].id, failing.id)
                redelivered = await service.redeliver(db.tenant_id, failing.id, again)
                assert (redelivered.state, redelivered.attempts) == ("pending", 0)

                async def delivered() -> bool:
                    return (await states(db.url))[again] == "delivered"

                await eventually(delivered, 10, "the redelivery delivered")
                assert receiver.snapshot()[-1].webhook_id == again
            # (no dispatcher now) a pending delivery is not redelivered: it will be attempted
            other = delivery_id(messages[1].id, failing.id)
            await service.redeliver(db.tenant_id, failing.id, other)
            with pytest.raises(ConflictError, match="pending already"):
                await service.redeliver(db.tenant_id, failing.id, other)
        finally:
            await service.close()

    asyncio.run(scenario())


class SlowSink:
    """A publisher that needs 10 ms per event and keeps what it took only when it finishes
    (a batch cut off by the publish timeout leaves nothing, as a rolled-back transaction)."""

    name = "slow"

    def __init__(self) -> None:
        self.taken: list[str] = []

    async def publish(self, events: Any) -> None:
        await asyncio.sleep(0.01 * len(events))
        self.taken.extend(str(e["id"]) for e in events)

    async def close(self) -> None:
        return None


class PacedSink:
    """A stream that takes ``seconds`` (waiting, not computing) for every batch and notes
    when each batch came."""

    name = "paced"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[float] = []

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.calls.append(time.monotonic())
        await asyncio.sleep(self.seconds)

    async def close(self) -> None:
        return None


def test_while_messages_keep_coming_a_claim_starts_every_poll_interval(db: Db) -> None:
    """Messages arrive all the time and a batch takes 0.3 s to publish: the dispatcher claims
    every 0.5 s (its poll interval), not every 0.8 s (the interval after each batch), so a
    message waits at most the interval plus one batch, however long batches take."""
    config = replace(FAST, poll_interval_s=0.5)

    async def scenario() -> list[float]:
        sink = PacedSink(0.3)
        store = WebhookStore.from_url(db.url)
        dispatcher = Dispatcher(store, SecretBox(b"k" * 32), config=config, publishers=[sink])
        async with running(dispatcher):
            for _ in range(40):  # 4 s of traffic
                await put(db.url, [decision_message(record(db.tenant_id, "allow"))])
                await asyncio.sleep(0.1)
        await store.close()
        return sink.calls

    calls = asyncio.run(scenario())
    gaps = sorted(b - a for a, b in itertools.pairwise(calls))
    assert len(gaps) >= 4, calls
    assert gaps[len(gaps) // 2] < 0.7, gaps  # 0.5 s apart; 0.8 s with the batch time added


def test_a_sink_too_slow_for_the_batch_gets_smaller_batches_and_everything_through(
    db: Db,
) -> None:
    """200 messages, a sink taking 2 s for all of them, 1 s to publish a batch: the first claim
    times out, the batch halves until it fits, every message goes through once, and the batch
    grows back after the backlog is gone."""
    config = replace(
        FAST,
        batch_size=200,
        publish_retry=RetryPolicy(max_attempts=0, base_s=0.01, cap_s=0.02),
    )

    async def scenario() -> tuple[list[int], list[str], int]:
        messages = [decision_message(record(db.tenant_id, "allow")) for _ in range(200)]
        await put(db.url, messages)
        sink = SlowSink()
        store = WebhookStore.from_url(db.url)
        dispatcher = Dispatcher(store, SecretBox(b"k" * 32), config=config, publishers=[sink])
        sizes = []
        try:
            for _ in range(30):
                sizes.append(dispatcher.batch_size)
                await dispatcher.dispatch_messages()
                if len(sink.taken) == len(messages):
                    break
                await asyncio.sleep(0.03)  # past the back-off
            left = [r for r in await rows(db.url, outbox_messages) if r.dispatched_at is None]
            return sizes, sink.taken, len(left)
        finally:
            await dispatcher.close()
            await store.close()

    sizes, taken, left = asyncio.run(scenario())
    assert sizes[0] == 200
    assert min(sizes) <= 100  # shrunk after the timeout
    assert any(after > before for before, after in itertools.pairwise(sizes))  # and grew back
    assert left == 0
    assert len(taken) == len(set(taken)) == 200  # each once: cut-off batches kept nothing


def test_two_dispatchers_share_the_work_and_never_send_twice(db: Db, receiver: Receiver) -> None:
    """Claims are disjoint (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the write lock)."""
    receiver.delay_s = 0.02
    receiver.start()
    count = 60

    async def scenario() -> None:
        service = service_for(db.url)
        second_store = WebhookStore.from_url(db.url)
        try:
            sub, _ = await service.create(db.tenant_id, url=receiver.url + "/in", events=["*"])
            messages = [decision_message(record(db.tenant_id)) for _ in range(count)]
            await put(db.url, messages)
            config = replace(FAST, batch_size=7, concurrency=4)
            first = Dispatcher(service.store, service.box, config=config)
            second = Dispatcher(second_store, service.box, config=config)

            async def all_delivered() -> bool:
                s = await states(db.url)
                return len(s) == count and set(s.values()) == {"delivered"}

            async with running(first), running(second):
                await eventually(all_delivered, 30, "everything delivered")
            assert first.delivered > 0
            assert second.delivered > 0
            assert first.delivered + second.delivered == count
        finally:
            await second_store.close()
            await service.close()
        assert len(receiver.snapshot()) == count
        assert set(receiver.processed()) == {delivery_id(m.id, sub.id) for m in messages}

    asyncio.run(scenario())


def test_a_claim_reads_only_its_batch_however_stale_the_statistics(fresh_pg_url: str) -> None:
    """PostgreSQL: a backlog of 3,000 in an outbox never analyzed (a new one, or any whose
    backlog outgrew its last statistics), for which the planner expects a few dozen due rows.
    The claim must still walk the due index in order and stop at its limit; left to the
    planner (the control) it fetches the whole backlog and sorts it under the row locks."""
    from riskguard.adapters.webhooks.store import _PG_LOCK_MESSAGES, _PG_QUEUE_PLAN

    upgrade(fresh_pg_url)
    tenant_id = asyncio.run(_tenant(fresh_pg_url, "acme"))

    async def scenario() -> tuple[str, str, int]:
        conn = await asyncpg.connect(fresh_pg_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await put(fresh_pg_url, [decision_message(record(tenant_id)) for _ in range(3_000)])
            plans = []
            for setting in ("", _PG_QUEUE_PLAN):
                async with conn.transaction():
                    if setting:
                        await conn.execute(setting)
                    plan = await conn.fetchval(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + _PG_LOCK_MESSAGES,
                        datetime.now(UTC),
                        50,
                    )
                    plans.append(plan)
            async with conn.transaction():
                await conn.execute(_PG_QUEUE_PLAN)
                claimed = len(await conn.fetch(_PG_LOCK_MESSAGES, datetime.now(UTC), 50))
            return plans[0], plans[1], claimed
        finally:
            await conn.close()

    control, planned, claimed = asyncio.run(scenario())
    assert claimed == 50
    assert '"Sort"' in control, control  # the failure mode is there to be avoided
    assert '"Sort"' not in planned, planned
    assert "ix_outbox_messages_due" in planned, planned
    scanned = json.loads(planned)[0]["Plan"]
    while scanned.get("Plans"):
        scanned = scanned["Plans"][0]
    assert scanned["Node Type"] == "Index Scan", planned
    assert scanned["Actual Rows"] <= 50, planned


def test_a_claimed_batch_is_held_until_its_outcome_and_given_back_by_a_failure(db: Db) -> None:
    """Two claims at once take disjoint messages. On PostgreSQL the claim writes nothing (a row
    lock, not a lease: the rows keep their version until the outcome, which counts the
    attempt) and a batch abandoned by an exception is due again at once; on SQLite the claim is
    a lease, due again when it runs out."""

    async def versions() -> dict[str, str]:
        engine = make_engine(db.url, null_pool=True)
        try:
            async with engine.connect() as conn:
                result = await conn.exec_driver_sql(
                    "SELECT id, attempts FROM outbox_messages"
                    if db.dialect == "sqlite"
                    else "SELECT id, xmin::text || '/' || attempts FROM outbox_messages"
                )
                return {str(r[0]): str(r[1]) for r in result.all()}
        finally:
            await engine.dispose()

    async def scenario() -> None:
        messages = [decision_message(record(db.tenant_id)) for _ in range(6)]
        await put(db.url, messages)
        first, second = WebhookStore.from_url(db.url), WebhookStore.from_url(db.url)
        before = await versions()
        now = datetime.now(UTC)
        try:
            held: list[Any] = []

            async def crash_mid_batch() -> None:
                async with first.claimed_messages(4, 30.0, now) as batch:
                    held.extend(batch.messages)
                    assert len(held) == 4
                    assert {m.attempts for m in held} == {1}
                    async with second.claimed_messages(10, 30.0, now) as other:
                        assert len(other.messages) == 2
                        assert not {m.id for m in held} & {m.id for m in other.messages}
                        await other.finish(
                            [MessageOutcome(m.id, frozenset(), m.attempts) for m in other.messages],
                            [],
                            now,
                        )
                    if db.dialect == "postgresql":
                        held_ids = {m.id for m in held}
                        during = await versions()
                        assert {i: during[i] for i in held_ids} == {i: before[i] for i in held_ids}
                    raise RuntimeError("publisher crashed")

            with pytest.raises(RuntimeError, match="publisher crashed"):
                await crash_mid_batch()
            after = await versions()
            finished = {m.id for m in messages} - {m.id for m in held}
            assert not finished & set(after)  # dispatched at the first attempt: deleted
            later = now + timedelta(seconds=31)
            async with second.claimed_messages(10, 30.0, now) as again:
                due_now = {m.id for m in again.messages}
            if db.dialect == "postgresql":
                assert due_now == {m.id for m in held}  # given back at once
                assert {after[i] for i in due_now} == {before[i] for i in due_now}
                async with second.claimed_messages(10, 30.0, now) as again:
                    assert {m.attempts for m in again.messages} == {1}  # nothing counted
                    await again.finish(
                        [MessageOutcome(m.id, frozenset(), m.attempts) for m in again.messages],
                        [],
                        now,
                    )
            else:
                assert due_now == set()  # leased
                async with second.claimed_messages(10, 30.0, later) as again:
                    assert {m.id for m in again.messages} == {m.id for m in held}
                    assert {m.attempts for m in again.messages} == {2}
                    await again.finish(
                        [MessageOutcome(m.id, frozenset(), m.attempts) for m in again.messages],
                        [],
                        later,
                    )
            left = [r for r in await rows(db.url, outbox_messages) if r.dispatched_at is None]
            assert left == []
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_notify_wakes_an_idle_dispatcher_at_once(db: Db, receiver: Receiver) -> None:
    """With a long poll interval, a message written and announced is delivered at once."""
    receiver.start()

    async def scenario() -> float:
        service = service_for(db.url)
        try:
            await service.create(db.tenant_id, url=receiver.url + "/in", events=["*"])
            dispatcher = Dispatcher(
                service.store, service.box, config=replace(FAST, poll_interval_s=30.0)
            )
            async with running(dispatcher):
                await asyncio.sleep(0.3)  # both loops idle, waiting out the poll interval
                await put(db.url, [decision_message(record(db.tenant_id))])
                dispatcher.notify()

                async def delivered() -> bool:
                    return set((await states(db.url)).values()) == {"delivered"}

                return await eventually(delivered, 5, "delivered without waiting for a poll")
        finally:
            await service.close()

    assert asyncio.run(scenario()) < 5


# -- a dispatcher killed mid-delivery -------------------------------------------------------------

DISPATCHER = """
import asyncio, json, sys
from riskguard.adapters.webhooks.dispatcher import DispatcherConfig, RetryPolicy, run_dispatcher
from riskguard.adapters.webhooks.urls import UrlPolicy
a = json.loads(sys.argv[1])
config = DispatcherConfig(
    poll_interval_s=0.05, concurrency=a["concurrency"], request_timeout_s=a["timeout"],
    connect_timeout_s=0.5, resolve_timeout_s=0.5, publish_timeout_s=1.0, lease_s=a["lease"],
    retry=RetryPolicy(max_attempts=50, base_s=0.05, cap_s=0.5),
    url_policy=UrlPolicy(require_https=True, allow_loopback=True),
)
asyncio.run(run_dispatcher(a["url"], a["key"].encode(), config=config))
"""


def _dispatcher_process(url: str, log: Path) -> subprocess.Popen[bytes]:
    args = {"url": url, "key": SECRET, "concurrency": 4, "timeout": 3.0, "lease": 4.0}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, json.dumps(args)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_dispatcher_killed_mid_delivery_loses_nothing(
    db: Db, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.delay_s = 1.5  # slow: attempts are in flight when the dispatcher dies
    receiver.start()
    log = tmp_path / "dispatcher.log"

    async def scenario() -> None:
        service = service_for(db.url)
        try:
            sub, secret = await service.create(db.tenant_id, url=receiver.url + "/in", events=["*"])
            before = [decision_message(record(db.tenant_id)) for _ in range(12)]
            await put(db.url, before)
            first = _dispatcher_process(db.url, log)
            try:

                async def mid_delivery() -> bool:
                    done = list((await states(db.url)).values()).count("delivered")
                    return done >= 4 and receiver.inflight >= 2

                await eventually(mid_delivery, 30, "attempts in flight")
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(10)
            killed_with = receiver.inflight
            receiver.delay_s = 0.0
            after = [decision_message(record(db.tenant_id)) for _ in range(5)]
            await put(db.url, after)  # written while no dispatcher runs
            expected = {delivery_id(m.id, sub.id) for m in before + after}

            async def all_delivered() -> bool:
                s = await states(db.url)
                return len(s) == len(expected) and set(s.values()) == {"delivered"}

            second = _dispatcher_process(db.url, log)
            try:
                await eventually(all_delivered, 40, "everything delivered after the restart")
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0, log.read_text()
            messages = await rows(db.url, outbox_messages)
            assert len(messages) == 17
            assert all(m.dispatched_at is not None for m in messages)
        finally:
            await service.close()

        arrivals = receiver.snapshot()
        processed = receiver.processed()
        assert set(processed) == expected  # nothing lost, nothing invented
        duplicates = len(arrivals) - len(processed)
        assert killed_with >= 1
        assert duplicates >= 1  # the attempts cut short were sent again ...
        for arrival in arrivals:  # ... under the same id, with the same body
            assert arrival.body == processed[arrival.webhook_id].body
            assert verify(arrival.body, arrival.headers, secret) == arrival.webhook_id
        print(f"\n[{db.dialect}] killed with {killed_with} in flight; {duplicates} resent, same id")

    asyncio.run(scenario())


# -- the target URL policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.169.254/latest/meta-data/", "https"),
        ("https://[fd00:ec2::254]/", "cloud metadata"),
        ("https://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("https://169.254.10.1/", "link-local"),
        ("https://[fe80::1]/", "link-local"),
        ("https://10.0.0.5/hook", "private"),
        ("https://172.16.3.4/", "private"),
        ("https://192.168.1.1/", "private"),
        ("https://100.64.0.1/", "private"),
        ("https://[fd12:3456::1]/", "private"),
        ("https://127.0.0.1/", "loopback"),
        ("https://localhost:8443/hook", "loopback"),
        ("https://2130706433/", "loopback"),
        ("https://0x7f000001/", "loopback"),
        ("https://[::1]/", "loopback"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
        ("https://240.0.0.1/", "reserved"),
        ("https://192.0.2.10/", "reserved"),
        ("file:///etc/passwd", "https"),
        ("ftp://example.com/", "https"),
        ("gopher://example.com/", "https"),
        ("http://8.8.8.8/hook", "https"),
        ("https://user:pass@8.8.8.8/", "credentials"),
        ("https://8.8.8.8/#fragment", "fragment"),
        ("https://no-such-host.invalid/", "does not resolve"),
        ("", "1 to 2048"),
        ("https://" + "a" * 2100 + ".com/", "1 to 2048"),
    ],
)
def test_target_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrlError, match=reason):
        asyncio.run(resolve_target(url, PRODUCTION))


def test_target_urls_allowed_by_policy() -> None:
    async def check() -> None:
        public = await resolve_target("https://8.8.8.8/hook", PRODUCTION)
        assert (public.host, public.port, public.addresses) == ("8.8.8.8", 443, ("8.8.8.8",))
        v6 = await resolve_target("https://[2606:4700:4700::1111]:8443/x", PRODUCTION)
        assert (v6.host, v6.port) == ("2606:4700:4700::1111", 8443)
        # loopback only when allowed, and then plain http to loopback too
        for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "https://[::1]/"):
            with pytest.raises(UnsafeUrlError, match=r"loopback|https"):
                await resolve_target(url, PRODUCTION)
            assert (await resolve_target(url, LOOPBACK)).addresses
        with pytest.raises(UnsafeUrlError, match="http is allowed for loopback only"):
            await resolve_target("http://8.8.8.8/", LOOPBACK)
        with pytest.raises(UnsafeUrlError, match="private"):
            await resolve_target("https://10.0.0.5/", LOOPBACK)
        private = UrlPolicy(allow_private=True)
        assert (await resolve_target("https://10.0.0.5/", private)).addresses == ("10.0.0.5",)
        # development: http and private targets, never metadata or link-local
        dev = UrlPolicy.for_environment("development")
        assert await resolve_target("http://192.168.1.10:8080/hook", dev)
        for url in ("http://169.254.169.254/", "http://[fe80::1]/", "http://0.0.0.0/"):
            with pytest.raises(UnsafeUrlError):
                await resolve_target(url, dev)
        assert UrlPolicy.for_environment("production") == PRODUCTION
        # an operator's explicit exception
        import ipaddress

        exception = UrlPolicy(allowed_networks=(ipaddress.ip_network("10.9.0.0/16"),))
        assert await resolve_target("https://10.9.1.2/", exception)
        with pytest.raises(UnsafeUrlError, match="private"):
            await resolve_target("https://10.8.1.2/", exception)

    asyncio.run(check())


def test_the_target_is_checked_again_at_delivery_time(db: Db, receiver: Receiver) -> None:
    """A URL accepted when the subscription was made (under a policy allowing loopback) but
    refused when it is called: the dispatcher never connects, the delivery ends dead."""
    receiver.start()
    no_loopback = UrlPolicy(require_https=False, allow_loopback=False)
    config = replace(
        FAST, url_policy=no_loopback, retry=RetryPolicy(max_attempts=2, base_s=0.05, cap_s=0.1)
    )

    async def scenario() -> None:
        service = service_for(db.url, LOOPBACK)
        try:
            await service.create(db.tenant_id, url=receiver.url + "/in", events=["*"])
            await put(db.url, [decision_message(record(db.tenant_id))])

            async def dead() -> bool:
                return set((await states(db.url)).values()) == {"dead"}

            async with running(Dispatcher(service.store, service.box, config=config)):
                await eventually(dead, 10, "the delivery dead")
            (row,) = await rows(db.url, webhook_deliveries)
            assert row.last_error.startswith("refused: the host '127.0.0.1' resolves to a loopback")
            assert row.last_status is None
        finally:
            await service.close()
        assert receiver.snapshot() == []

        # and the transport itself opens no connection to a host not checked for the request
        async with httpx.AsyncClient(transport=PinnedTransport()) as client:
            with pytest.raises(httpcore.ConnectError, match="not checked"):
                await client.post(receiver.url + "/direct", content=b"{}")
        assert receiver.snapshot() == []

    asyncio.run(scenario())


# -- /v1/webhooks over real HTTP -----------------------------------------------------------------

SERVER = """
import sys, uvicorn
from riskguard.settings import load_settings
from riskguard.wiring import build_app
app = build_app(load_settings())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@dataclass
class Api:
    url: str
    keys: Any
    other: Any

    def call(self, method: str, path: str, role: str = "admin", **kwargs: Any) -> httpx.Response:
        headers = self.keys.headers(role)
        return httpx.request(method, self.url + path, headers=headers, timeout=20, **kwargs)


@pytest.fixture
def api(db: Db, tmp_path: Path) -> Iterator[Api]:
    backend = Backend(db.dialect, db.url)
    keys = provision_tenant(backend, "api-" + uuid.uuid4().hex[:6])
    other = provision_tenant(backend, "other-" + uuid.uuid4().hex[:6])
    port = free_port()
    log = tmp_path / "server.log"
    # the test runs its own dispatcher: one in the server would race it for the same messages
    env = backend.env() | {"RISKGUARD_DISPATCHER": "false"}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield Api(url, keys, other)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "unhandled_error" not in log.read_text()


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def test_the_webhooks_api(api: Api, db: Db, receiver: Receiver) -> None:
    receiver.start()
    target = receiver.url + "/hook"  # development server: loopback http allowed

    created = api.call("POST", "/v1/webhooks", json={"url": target, "events": ["decision.*"]})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    secret = WebhookSecret.parse(hook["secret"])
    assert hook["events"] == ["decision.*"]
    assert hook["enabled"] is True
    assert [s["expires_at"] for s in hook["secrets"]] == [None]
    hook_id = hook["id"]

    listed = api.call("GET", "/v1/webhooks", role="read").json()["items"]
    assert [h["id"] for h in listed] == [hook_id]
    got = api.call("GET", f"/v1/webhooks/{hook_id}", role="read").json()
    assert "secret" not in got  # shown once only
    assert hook["secret"] not in api.call("GET", f"/v1/webhooks/{hook_id}").text

    # roles and tenants
    _problem(api.call("POST", "/v1/webhooks", role="read", json={"url": target}), 403)
    _problem(api.call("GET", "/v1/webhooks", role="ingest"), 403)
    _problem(httpx.get(api.url + "/v1/webhooks", headers={"authorization": "Bearer no"}), 401)
    other = httpx.get(
        f"{api.url}/v1/webhooks/{hook_id}", headers=api.other.headers("admin"), timeout=10
    )
    _problem(other, 404)
    assert httpx.get(
        f"{api.url}/v1/webhooks", headers=api.other.headers("admin"), timeout=10
    ).json() == {"items": []}

    # bad input: clear 422 problems naming the field
    bad = _problem(
        api.call("POST", "/v1/webhooks", json={"url": "https://169.254.169.254/latest"}), 422
    )
    assert bad["errors"][0]["field"] == "url"
    assert "cloud metadata" in bad["errors"][0]["message"]
    bad = _problem(api.call("POST", "/v1/webhooks", json={"url": "file:///etc/passwd"}), 422)
    assert bad["errors"][0]["field"] == "url"
    bad = _problem(
        api.call("POST", "/v1/webhooks", json={"url": target, "events": ["decision.deleted"]}), 422
    )
    assert bad["errors"][0]["field"] == "events.0"
    bad = _problem(api.call("POST", "/v1/webhooks", json={"url": target, "secret": "whsec_x"}), 422)
    assert bad["errors"][0]["field"] == "secret"
    _problem(api.call("POST", "/v1/webhooks", json={"url": target, "outcomes": ["maybe"]}), 422)
    _problem(api.call("POST", "/v1/webhooks", json={"url": target, "colour": "red"}), 422)
    _problem(api.call("POST", "/v1/webhooks", content=b"{not json"), 422)
    _problem(api.call("GET", "/v1/webhooks/wh_nothex"), 422)
    _problem(api.call("GET", "/v1/webhooks/wh_0123456789abcdef"), 404)

    # rotate: a new secret, shown once; the old one keeps signing for the overlap
    rotated = api.call("PATCH", f"/v1/webhooks/{hook_id}", json={"rotate_secret": True})
    assert rotated.status_code == 200, rotated.text
    new_secret = WebhookSecret.parse(rotated.json()["secret"])
    old_entry, new_entry = rotated.json()["secrets"]
    assert old_entry["expires_at"] is not None
    assert new_entry["expires_at"] is None
    patched = api.call(
        "PATCH",
        f"/v1/webhooks/{hook_id}",
        json={"events": ["*"], "outcomes": ["review", "block"], "description": "fraud desk"},
    ).json()
    assert (patched["events"], patched["outcomes"], patched["secret"]) == (
        ["*"],
        ["review", "block"],
        None,
    )
    cleared = api.call("PATCH", f"/v1/webhooks/{hook_id}", json={"outcomes": None}).json()
    assert cleared["outcomes"] is None
    assert cleared["description"] == "fraud desk"
    bad = _problem(
        api.call("PATCH", f"/v1/webhooks/{hook_id}", json={"url": "https://169.254.10.1/"}), 422
    )
    assert bad["errors"][0]["field"] == "url"
    bad = _problem(
        api.call("PATCH", f"/v1/webhooks/{hook_id}", json={"remove_secrets": ["whs_unknown"]}),
        422,
    )
    assert bad["errors"][0]["field"] == "remove_secrets"

    # deliveries: run a dispatcher on the same database, then list and redeliver
    async def deliver() -> list[str]:
        messages = [decision_message(record(api.keys.tenant_id, "review")) for _ in range(3)]
        await put(db.url, messages)
        service = service_for(db.url, UrlPolicy.for_environment("development"))
        try:
            dispatcher = Dispatcher(service.store, service.box, config=FAST)
            await dispatcher.dispatch_messages()
            assert await dispatcher.deliver_due() == 3
            await dispatcher.close()
        finally:
            await service.close()
        return [delivery_id(m.id, hook_id) for m in messages]

    ids = asyncio.run(deliver())
    for arrival in receiver.snapshot():  # signed with both secrets during the overlap
        assert verify(arrival.body, arrival.headers, secret)
        assert verify(arrival.body, arrival.headers, new_secret)
    page = api.call("GET", f"/v1/webhooks/{hook_id}/deliveries?limit=2", role="read").json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = api.call(
        "GET",
        f"/v1/webhooks/{hook_id}/deliveries",
        role="read",
        params={"limit": 2, "cursor": page["next_cursor"]},
    ).json()
    assert rest["next_cursor"] is None
    listed_ids = [d["id"] for d in page["items"] + rest["items"]]
    assert sorted(listed_ids) == sorted(ids)
    assert {d["state"] for d in page["items"] + rest["items"]} == {"delivered"}
    assert page["items"][0]["topic"] == "decision.created"
    dead = api.call(
        "GET", f"/v1/webhooks/{hook_id}/deliveries", params={"state": "dead"}, role="read"
    )
    assert dead.json() == {"items": [], "next_cursor": None}
    _problem(api.call("GET", f"/v1/webhooks/{hook_id}/deliveries?cursor=xyz"), 422)
    _problem(api.call("GET", f"/v1/webhooks/{hook_id}/deliveries?state=lost"), 422)

    one = api.call("GET", f"/v1/webhooks/{hook_id}/deliveries/{ids[0]}", role="read").json()
    assert (one["id"], one["state"], one["attempts"], one["last_status"]) == (
        ids[0],
        "delivered",
        1,
        204,
    )
    redo = f"/v1/webhooks/{hook_id}/deliveries/{ids[0]}/redeliver"
    _problem(api.call("POST", redo, role="read"), 403)
    again = api.call("POST", redo)
    assert again.status_code == 202, again.text
    assert (again.json()["state"], again.json()["attempts"]) == ("pending", 0)
    _problem(api.call("POST", redo), 409)  # pending already
    _problem(api.call("POST", f"/v1/webhooks/{hook_id}/deliveries/msg_{'0' * 32}/redeliver"), 404)

    # disable, delete
    off = api.call("PATCH", f"/v1/webhooks/{hook_id}", json={"enabled": False}).json()
    assert off["enabled"] is False
    _problem(api.call("DELETE", f"/v1/webhooks/{hook_id}", role="read"), 403)
    assert api.call("DELETE", f"/v1/webhooks/{hook_id}").status_code == 204
    _problem(api.call("DELETE", f"/v1/webhooks/{hook_id}"), 404)
    _problem(api.call("GET", f"/v1/webhooks/{hook_id}/deliveries"), 404)

    # documented in the OpenAPI schema
    schema = httpx.get(api.url + "/openapi.json", timeout=10).json()
    assert "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver" in schema["paths"]


def test_pruning_finds_dispatched_messages_through_their_partial_index(db: Db) -> None:
    """``ix_outbox_messages_dispatched`` holds dispatched messages only (migration 0006: a
    message being inserted, never dispatched yet, costs no entry); the pruning query's
    ``dispatched_at < cutoff`` still reaches its rows through it, on both databases."""
    query = "SELECT id FROM outbox_messages WHERE dispatched_at < '2100-01-01'"

    if db.dialect == "sqlite":
        explain = "EXPLAIN QUERY PLAN " + query
        definition_sql = (
            "SELECT sql FROM sqlite_master WHERE name = 'ix_outbox_messages_dispatched'"
        )
    else:
        explain = "EXPLAIN " + query
        definition_sql = (
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_outbox_messages_dispatched'"
        )

    async def plan() -> tuple[str, str]:
        engine = make_engine(db.url, null_pool=True)
        try:
            async with engine.connect() as conn:
                if db.dialect == "postgresql":
                    await conn.exec_driver_sql("SET enable_seqscan = off")
                lines = (await conn.exec_driver_sql(explain)).all()
                definition = (await conn.exec_driver_sql(definition_sql)).scalar_one()
                return " ".join(str(line[-1]) for line in lines), str(definition)
        finally:
            await engine.dispose()

    used, definition = asyncio.run(plan())
    assert "ix_outbox_messages_dispatched" in used
    assert "dispatched_at IS NOT NULL" in definition


def test_pruning_drops_old_dispatched_messages_but_not_pending_work(db: Db) -> None:
    async def scenario() -> None:
        service = service_for(db.url)
        try:
            sub, _ = await service.create(
                db.tenant_id, url="http://127.0.0.1:9/never", events=["*"]
            )
            old = [decision_message(record(db.tenant_id)) for _ in range(2)]
            await put(db.url, old)
            dispatcher = Dispatcher(service.store, service.box, config=FAST)
            await dispatcher.dispatch_messages()  # fanned out: both pending
            await dispatcher.close()
            pending_one = delivery_id(old[1].id, sub.id)
            store = service.store
            found = await store.get_delivery(db.tenant_id, sub.id, delivery_id(old[0].id, sub.id))
            assert found is not None
            # the first delivery finished (dead), the second is still pending
            await store.delivery_failed(found.id, attempts=0, status=500, error="x", retry_at=None)
            later = datetime.now(UTC) + timedelta(days=30)
            assert await store.prune(later) == 1
            left = {r.id for r in await rows(db.url, outbox_messages)}
            assert left == {old[1].id}
            assert set(await states(db.url)) == {pending_one}
        finally:
            await service.close()

    asyncio.run(scenario())


def test_a_message_done_at_its_first_attempt_leaves_the_outbox(db: Db) -> None:
    """Dispatched at its first attempt with no webhook delivery, a message has nothing left to
    do and is deleted; one with a delivery stays, marked dispatched, for the delivery's
    payload (and is pruned after the retention). A message dispatched after a retry stays too
    (tests/integration/test_streams.py)."""

    async def scenario() -> None:
        service = service_for(db.url)
        try:
            sub, _ = await service.create(
                db.tenant_id, url="http://127.0.0.1:9/never", events=["*"], outcomes=["block"]
            )
            plain = decision_message(record(db.tenant_id, "allow"))
            blocked = decision_message(record(db.tenant_id, "block"))
            await put(db.url, [plain, blocked])
            dispatcher = Dispatcher(service.store, service.box, config=FAST)
            try:
                assert await dispatcher.dispatch_messages() == 2
                assert await dispatcher.dispatch_messages() == 0
            finally:
                await dispatcher.close()
            stored = {r.id: r for r in await rows(db.url, outbox_messages)}
            assert set(stored) == {blocked.id}
            assert stored[blocked.id].dispatched_at is not None
            assert set(await states(db.url)) == {delivery_id(blocked.id, sub.id)}
        finally:
            await service.close()

    asyncio.run(scenario())
