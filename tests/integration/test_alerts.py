"""Alerts, cases and labels over real HTTP, on SQLite and a real PostgreSQL.

The application is built by ``riskguard.wiring`` (as ``riskguard serve`` builds it) with the
alert routes included, and served by uvicorn on a loopback port from a thread of the test
process. Decisions are made through ``POST /v1/decisions`` or written with the decision store,
then handed to ``AlertService.on_decision`` the way the outbox dispatcher hands them over.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from riskguard.adapters.http.app import create_app
from riskguard.adapters.sql.alerts import SqlAlertStore
from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.ports import DecisionRecord
from riskguard.services.alerts import (
    Absorbed,
    Alert,
    AlertChange,
    AlertService,
    InvalidChange,
    InvalidTransition,
    Resolution,
    Severity,
    Status,
    apply_change,
    severity_for,
)
from riskguard.services.auth import new_key
from riskguard.services.decisions import new_decision_id
from riskguard.settings import load_settings
from riskguard.wiring import Container, provision
from tests.integration.conftest import free_port
from tests.integration.service import transaction

pytestmark = pytest.mark.integration

SECRET = "alert-tests-secret-key-0123456789abcdef0123"
PROBLEM = "application/problem+json"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# -- a server built by riskguard.wiring, with the alert routes -------------------------------


class AlertServer:
    """uvicorn serving the wired application (alert routes included) from a thread."""

    def __init__(self, database_url: str, port: int) -> None:
        self.database_url = database_url
        self.url = f"http://127.0.0.1:{port}"
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="alert-server", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    async def _main(self) -> None:
        settings = load_settings(
            database_url=self.database_url,
            secret_key=SECRET,
            gc_tuning=False,
            # these tests deliver decisions to the alert service themselves, deterministically;
            # the dispatcher's path is tested in test_after_decision.py
            dispatcher=False,
            access_log=False,
            log_level="warning",
            ruleset_poll_s=0.5,
        )
        asgi = create_app(Container(settings))
        config = uvicorn.Config(
            asgi, host="127.0.0.1", port=self._port, log_level="warning", lifespan="on", ws="none"
        )
        self._server = uvicorn.Server(config)
        await self._server.serve()

    def start(self) -> AlertServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self._error!r}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not answer /healthz in time")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self._error is not None:
            raise self._error


@dataclass
class Keys:
    tenant_id: str
    keys: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def provision_tenant(database_url: str, name: str) -> Keys:
    """A tenant with one key per role, ``analyst`` included."""
    upgrade(database_url)
    pepper = load_settings(database_url=database_url, secret_key=SECRET).secret

    async def work() -> Keys:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            tenant_id, keys = await provision(store, pepper, name, ("admin", "ingest", "read"))
            # ports.ROLES does not list "analyst" yet, so new_key() refuses the name; the role is
            # a stored string, so a key made for "read" and stored as "analyst" is the real thing
            row, plaintext = new_key(tenant_id, "read", pepper)
            await store.create_key(replace(row, role="analyst"))  # type: ignore[arg-type]
            keys["analyst"] = plaintext
            return Keys(tenant_id, keys)
        finally:
            await store.close()

    return asyncio.run(work())


# -- decisions and their delivery to the alert service ----------------------------------------


def decision(
    tenant_id: str,
    entity: str | None,
    *,
    outcome: str = "review",
    score: float = 0.75,
    at: datetime = T0,
    reason: str = "TX_VELOCITY",
) -> DecisionRecord:
    event_id = f"ev-{uuid.uuid4().hex[:12]}"
    return DecisionRecord(
        decision_id=new_decision_id(),
        tenant_id=tenant_id,
        event_id=event_id,
        event_type="transaction",
        body_hash="0" * 64,
        entity=entity,
        occurred_at=at,
        received_at=at,
        outcome=outcome,
        score=score,
        ruleset_version="rs-0000000000000000",
        model_version=None,
        latency_ms=1.0,
        degraded=False,
        event={"event_id": event_id},
        features={},
        reasons=[{"code": reason, "source": "rule", "message": "m", "contribution": score}],
        shadow_reasons=[],
        explanation="Held for review.",
    )


def store_records(database_url: str, *records: DecisionRecord) -> None:
    async def work() -> None:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            for record in records:
                assert await store.record(record)
        finally:
            await store.close()

    asyncio.run(work())


def stored_record(database_url: str, tenant_id: str, event_id: str) -> DecisionRecord:
    async def work() -> DecisionRecord | None:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            return await store.get_by_event(tenant_id, event_id)
        finally:
            await store.close()

    record = asyncio.run(work())
    assert record is not None
    return record


def deliver(database_url: str, *records: DecisionRecord) -> list[Absorbed | None]:
    """Hand recorded decisions to a fresh alert service, one after the other."""

    async def work() -> list[Absorbed | None]:
        service = AlertService(SqlAlertStore.from_url(database_url))
        try:
            return [await service.on_decision(r) for r in records]
        finally:
            await service.close()

    return asyncio.run(work())


def record_and_deliver(database_url: str, *records: DecisionRecord) -> list[Absorbed | None]:
    store_records(database_url, *records)
    return deliver(database_url, *records)


def opened(database_url: str, record: DecisionRecord) -> str:
    """Store and deliver one decision; the id of the alert it went to."""
    (result,) = record_and_deliver(database_url, record)
    assert result is not None
    return result.alert.id


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("alerts") / "riskguard.db"
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[AlertServer]:
    upgrade(database_url)
    srv = AlertServer(database_url, free_port()).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def a(database_url: str) -> Keys:
    return provision_tenant(database_url, f"acme-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def b(database_url: str) -> Keys:
    return provision_tenant(database_url, f"globex-{uuid.uuid4().hex[:8]}")


def call(
    server: AlertServer,
    keys: Keys,
    method: str,
    path: str,
    role: str = "analyst",
    **kwargs: Any,
) -> httpx.Response:
    return httpx.request(
        method, server.url + path, headers=keys.headers(role), timeout=15, **kwargs
    )


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- pure rules: severity and the workflow ----------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "score", "expected"),
    [
        ("challenge", 0.5, Severity.LOW),
        ("challenge", 0.95, Severity.MEDIUM),
        ("review", 0.7, Severity.MEDIUM),
        ("review", 0.9, Severity.HIGH),
        ("block", 0.2, Severity.HIGH),
        ("block", 0.97, Severity.CRITICAL),
    ],
)
def test_severity_from_outcome_and_score(outcome: str, score: float, expected: Severity) -> None:
    assert severity_for(outcome, score) is expected


def _alert(status: Status, resolution: Resolution | None = None) -> Alert:
    return Alert(
        id="alr_" + "0" * 26,
        tenant_id="t",
        entity="acct",
        reason="R",
        severity=Severity.MEDIUM,
        status=status,
        assignee=None,
        resolution=resolution,
        score=0.8,
        decision_count=1,
        first_decision_id="d1",
        last_decision_id="d1",
        first_seen_at=T0,
        last_seen_at=T0,
        opened_at=T0,
        updated_at=T0,
        resolved_at=None,
        resolved_by=None,
        dedup_key=None if status == "resolved" else "R:acct",
        revision=1,
    )


@pytest.mark.parametrize(
    ("status", "target", "allowed"),
    [
        ("open", "acknowledged", True),
        ("open", "resolved", True),
        ("acknowledged", "open", True),
        ("acknowledged", "resolved", True),
        ("resolved", "open", False),
        ("resolved", "acknowledged", False),
    ],
)
def test_status_transitions(status: Status, target: Status, allowed: bool) -> None:
    before = _alert(status, "fraud" if status == "resolved" else None)
    change = AlertChange(
        status=target,
        resolution="legitimate" if target == "resolved" else None,
    )
    if not allowed:
        with pytest.raises(InvalidTransition):
            apply_change(before, change, actor="k", now=T0)
        return
    after = apply_change(before, change, actor="k", now=T0 + timedelta(minutes=1))
    assert after.status == target
    assert after.revision == before.revision + 1
    assert (after.dedup_key is None) == (target == "resolved")


def test_inconsistent_changes_are_refused() -> None:
    with pytest.raises(InvalidChange, match="resolution"):
        apply_change(_alert("open"), AlertChange(status="resolved"), actor="k", now=T0)
    with pytest.raises(InvalidChange, match="resolution"):
        apply_change(_alert("open"), AlertChange(resolution="fraud"), actor="k", now=T0)
    same = _alert("acknowledged")
    assert apply_change(same, AlertChange(), actor="k", now=T0) is same
    assert apply_change(same, AlertChange(status="acknowledged"), actor="k", now=T0) is same


# -- alerts from decisions --------------------------------------------------------------------


def test_block_decision_from_the_api_opens_an_alert(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    account = uid("acct")
    blocked = transaction(uid("pay"), account=account)
    blocked["data"]["counterparty_country"] = "KP"  # sanctioned: a hard block
    allowed = transaction(uid("pay"), account=uid("acct"))
    for body in (blocked, allowed):
        answer = call(server, a, "POST", "/v1/decisions", role="ingest", json=body)
        assert answer.status_code == 200, answer.text
    block = stored_record(database_url, a.tenant_id, blocked["event_id"])
    allow = stored_record(database_url, a.tenant_id, allowed["event_id"])
    assert (block.outcome, allow.outcome) == ("block", "allow")

    result, nothing = deliver(database_url, block, allow)
    assert nothing is None  # allow does not alert
    assert result is not None
    assert result.opened

    got = call(server, a, "GET", f"/v1/alerts/{result.alert.id}", role="read")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["entity"] == account
    assert body["reason"] == "SANCTIONED_COUNTRY"
    assert body["status"] == "open"
    assert body["severity"] == severity_for("block", block.score).label
    assert body["decision_count"] == 1
    assert body["first_decision_id"] == body["last_decision_id"] == block.decision_id
    assert body["recent_decisions"] == [
        {
            "decision_id": block.decision_id,
            "event_id": block.event_id,
            "outcome": "block",
            "score": block.score,
            "occurred_at": body["recent_decisions"][0]["occurred_at"],
        }
    ]
    listed = call(server, a, "GET", "/v1/alerts", role="read", params={"entity": account})
    assert [x["id"] for x in listed.json()["items"]] == [result.alert.id]


def test_alert_publishes_an_outbox_message_when_it_opens(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    from sqlalchemy import select

    from riskguard.adapters.sql.engines import make_engine
    from riskguard.adapters.sql.outbox import outbox_messages

    alert_id = opened(database_url, decision(a.tenant_id, uid("acct")))
    patched = call(server, a, "PATCH", f"/v1/alerts/{alert_id}", json={"status": "acknowledged"})
    assert patched.status_code == 200, patched.text

    async def topics() -> list[tuple[str, str]]:
        engine = make_engine(database_url, null_pool=True)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(outbox_messages.c.topic, outbox_messages.c.payload)
                    .where(outbox_messages.c.subject == alert_id)
                    .order_by(outbox_messages.c.id)
                )
                return [(r.topic, r.payload["status"]) for r in rows]
        finally:
            await engine.dispose()

    assert asyncio.run(topics()) == [("alert.opened", "open"), ("alert.updated", "acknowledged")]


def test_decisions_within_the_window_join_one_alert_and_a_later_one_opens_another(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    entity = uid("acct")
    first = decision(a.tenant_id, entity, outcome="review", score=0.72, at=T0)
    second = decision(a.tenant_id, entity, outcome="block", score=0.95, at=T0 + timedelta(hours=5))
    older = decision(a.tenant_id, entity, outcome="review", score=0.7, at=T0 - timedelta(hours=1))
    # 24 h after the newest decision of the alert (T0 + 5 h): outside the window
    later = decision(a.tenant_id, entity, outcome="review", score=0.71, at=T0 + timedelta(hours=29))
    other_reason = decision(a.tenant_id, entity, at=T0 + timedelta(hours=1), reason="TX_AMOUNT")
    results = [
        r for r in record_and_deliver(database_url, first, second, older, later, other_reason) if r
    ]
    assert [r.opened for r in results] == [True, False, False, True, True]
    alert_id = results[0].alert.id
    assert results[1].alert.id == results[2].alert.id == alert_id
    assert len({r.alert.id for r in results}) == 3

    body = call(server, a, "GET", f"/v1/alerts/{alert_id}", role="read").json()
    assert body["decision_count"] == 3
    assert body["severity"] == "critical"  # raised by the block at 0.95
    assert body["score"] == 0.95
    assert body["first_decision_id"] == older.decision_id
    assert body["last_decision_id"] == second.decision_id
    assert body["first_seen_at"] == "2026-03-02T08:00:00Z"
    assert body["last_seen_at"] == "2026-03-02T14:00:00Z"
    assert [d["decision_id"] for d in body["recent_decisions"]] == [
        second.decision_id,
        first.decision_id,
        older.decision_id,
    ]
    # the stale alert stays in the queue, still open, beside the new one
    listed = call(server, a, "GET", "/v1/alerts", role="read", params={"entity": entity}).json()
    assert sorted((x["reason"], x["decision_count"], x["status"]) for x in listed["items"]) == [
        ("TX_AMOUNT", 1, "open"),
        ("TX_VELOCITY", 1, "open"),
        ("TX_VELOCITY", 3, "open"),
    ]


def test_the_outbox_consumer_absorbs_a_batch_as_one_by_one_would(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    """The dispatcher's path: CloudEvents of decision.created messages (payloads read back
    from JSON, as from the outbox) go to AlertsConsumer, which absorbs the batch in one
    transaction from the payloads alone — with the same alerts, counts, order and opened
    messages as delivering each stored decision on its own (the window test above)."""
    import orjson
    from sqlalchemy import func, select

    from riskguard.adapters.sql.engines import make_engine
    from riskguard.adapters.sql.outbox import decision_message, outbox_messages
    from riskguard.adapters.streams.cloudevents import to_cloudevent
    from riskguard.services.consumers import AlertsConsumer

    entity = uid("acct")
    first = decision(a.tenant_id, entity, outcome="review", score=0.72, at=T0)
    second = decision(a.tenant_id, entity, outcome="block", score=0.95, at=T0 + timedelta(hours=5))
    allowed = decision(a.tenant_id, entity, outcome="allow", score=0.1, at=T0 + timedelta(hours=2))
    older = decision(a.tenant_id, entity, outcome="review", score=0.7, at=T0 - timedelta(hours=1))
    later = decision(a.tenant_id, entity, outcome="review", score=0.71, at=T0 + timedelta(hours=29))
    other_reason = decision(a.tenant_id, entity, at=T0 + timedelta(hours=1), reason="TX_AMOUNT")
    early = decision(a.tenant_id, uid("acct"))  # delivered before the batch: a redelivery
    store_records(database_url, first, second, allowed, older, later, other_reason, early)
    (early_result,) = deliver(database_url, early)
    assert early_result is not None

    def event(record: DecisionRecord) -> dict[str, Any]:
        message = decision_message(record)
        message = replace(message, payload=orjson.loads(orjson.dumps(message.payload)))
        return to_cloudevent(message)

    batch = [first, second, allowed, older, early, later, other_reason, first]  # first twice

    async def consume() -> None:
        alerts = AlertService(SqlAlertStore.from_url(database_url))
        try:
            malformed = {**event(first), "id": "msg_bad", "data": {"outcome": "block"}}
            # a payload that is not a decision's is skipped, not the batch failed
            await AlertsConsumer(alerts).publish([malformed, *(event(r) for r in batch)])
        finally:
            await alerts.close()

    asyncio.run(consume())
    listed = call(server, a, "GET", "/v1/alerts", role="read", params={"entity": entity}).json()
    assert sorted((x["reason"], x["decision_count"], x["status"]) for x in listed["items"]) == [
        ("TX_AMOUNT", 1, "open"),
        ("TX_VELOCITY", 1, "open"),
        ("TX_VELOCITY", 3, "open"),
    ]
    (joined,) = [x for x in listed["items"] if x["decision_count"] == 3]
    body = call(server, a, "GET", f"/v1/alerts/{joined['id']}", role="read").json()
    assert (body["severity"], body["score"]) == ("critical", 0.95)
    assert body["first_decision_id"] == older.decision_id
    assert body["last_decision_id"] == second.decision_id
    assert [d["decision_id"] for d in body["recent_decisions"]] == [
        second.decision_id,
        first.decision_id,
        older.decision_id,
    ]
    again = call(server, a, "GET", f"/v1/alerts/{early_result.alert.id}", role="read").json()
    assert again["decision_count"] == 1

    async def opened_messages() -> int:
        engine = make_engine(database_url, null_pool=True)
        try:
            async with engine.connect() as conn:
                count = await conn.scalar(
                    select(func.count())
                    .select_from(outbox_messages)
                    .where(
                        outbox_messages.c.topic == "alert.opened",
                        outbox_messages.c.subject.in_([x["id"] for x in listed["items"]]),
                    )
                )
                return int(count or 0)
        finally:
            await engine.dispose()

    assert asyncio.run(opened_messages()) == 3


def test_a_redelivered_decision_counts_once(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    entity = uid("acct")
    record = decision(a.tenant_id, entity)
    first, again = record_and_deliver(database_url, record) + deliver(database_url, record)
    assert first is not None
    assert first.opened
    assert not first.duplicate
    assert again is not None
    assert again.duplicate
    assert not again.opened
    assert again.alert.id == first.alert.id
    assert again.alert.decision_count == 1
    body = call(server, a, "GET", f"/v1/alerts/{first.alert.id}", role="read").json()
    assert body["decision_count"] == 1


def test_a_batch_rolls_back_when_one_of_its_decisions_is_counted_meanwhile(
    server: AlertServer, database_url: str, a: Keys, b: Keys
) -> None:
    """A batch of two tenants, each with a decision already counted (found by the batch's
    check), and a decision linked by someone else after the check (another dispatcher on an
    expired lease): the link insert comes back short, the whole transaction rolls back (the
    alert it opened and the join it counted included) and each candidate is absorbed on its
    own, the raced one as a duplicate."""
    from riskguard.adapters.sql.alerts import alert_decisions
    from riskguard.adapters.sql.engines import make_engine
    from riskguard.services.alerts import AlertCandidate, candidate_for

    entity_a, entity_b, raced_entity = uid("acct"), uid("acct"), uid("acct")
    held_a = decision(a.tenant_id, entity_a)
    held_b = decision(b.tenant_id, entity_b)
    joins = decision(a.tenant_id, entity_a, at=T0 + timedelta(minutes=1))
    raced = decision(b.tenant_id, raced_entity, at=T0 + timedelta(minutes=2))
    store_records(database_url, held_a, held_b, joins, raced)
    alert_a, alert_b = deliver(database_url, held_a, held_b)
    assert alert_a is not None
    assert alert_b is not None

    async def link_elsewhere() -> None:
        engine = make_engine(database_url, null_pool=True)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    alert_decisions.insert().values(
                        tenant_id=b.tenant_id,
                        decision_id=raced.decision_id,
                        alert_id=alert_b.alert.id,
                        event_id=raced.event_id,
                        outcome=raced.outcome,
                        score=raced.score,
                        occurred_at=raced.occurred_at,
                    )
                )
        finally:
            await engine.dispose()

    checks = 0

    async def absorb() -> list[Absorbed]:
        store = SqlAlertStore.from_url(database_url)
        service = AlertService(store)
        check = store._held

        async def check_then_race(conn: Any, candidates: Any) -> set[tuple[str, str]]:
            nonlocal checks
            found = await check(conn, candidates)
            checks += 1
            if checks == 1:
                await link_elsewhere()
            return found

        store._held = check_then_race  # type: ignore[method-assign]
        try:
            candidates: list[AlertCandidate] = []
            for record in (held_a, joins, held_b, raced):
                candidate = candidate_for(record, service.policy)
                assert candidate is not None
                candidates.append(candidate)
            return await service.on_candidates(candidates)
        finally:
            await service.close()

    results = asyncio.run(absorb())
    assert checks == 5  # the batch, then each candidate on its own
    assert [(r.alert.id, r.opened, r.duplicate) for r in results] == [
        (alert_a.alert.id, False, True),
        (alert_a.alert.id, False, False),
        (alert_b.alert.id, False, True),
        (alert_b.alert.id, False, True),
    ]
    body = call(server, a, "GET", f"/v1/alerts/{alert_a.alert.id}", role="read").json()
    assert body["decision_count"] == 2  # the rolled-back join is not counted twice
    assert body["last_decision_id"] == joins.decision_id
    body = call(server, b, "GET", f"/v1/alerts/{alert_b.alert.id}", role="read").json()
    assert body["decision_count"] == 1
    listed = call(server, b, "GET", "/v1/alerts", role="read", params={"entity": raced_entity})
    assert listed.json()["items"] == []  # the alert the batch opened was rolled back


def test_concurrent_decisions_for_one_entity_open_one_alert(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    entity = uid("acct")
    records = [
        decision(a.tenant_id, entity, at=T0 + timedelta(seconds=i), score=0.70 + i / 1000)
        for i in range(24)
    ]
    store_records(database_url, *records)
    redelivered = records[:6]

    async def race() -> list[Absorbed | None]:
        # four services, each with its own engine and connection pool: real concurrent
        # transactions in the database, as four dispatcher replicas would run them
        services = [AlertService(SqlAlertStore.from_url(database_url)) for _ in range(4)]
        try:
            jobs = [services[i % 4].on_decision(r) for i, r in enumerate([*records, *redelivered])]
            return await asyncio.gather(*jobs)
        finally:
            for service in services:
                await service.close()

    results = asyncio.run(race())
    assert all(r is not None for r in results)
    assert len({r.alert.id for r in results if r is not None}) == 1
    assert sum(1 for r in results if r is not None and r.opened) == 1
    assert sum(1 for r in results if r is not None and r.duplicate) == len(redelivered)
    listed = call(server, a, "GET", "/v1/alerts", role="read", params={"entity": entity}).json()
    assert len(listed["items"]) == 1
    assert listed["items"][0]["decision_count"] == len(records)
    assert listed["items"][0]["last_decision_id"] == records[-1].decision_id
    assert listed["items"][0]["first_decision_id"] == records[0].decision_id


def test_decisions_without_an_entity_are_never_merged(database_url: str, a: Keys) -> None:
    one, two = (decision(a.tenant_id, None) for _ in range(2))
    first, second = record_and_deliver(database_url, one, two)
    assert first is not None
    assert second is not None
    assert first.opened
    assert second.opened
    assert first.alert.id != second.alert.id


def test_in_memory_store_keeps_its_own_schema() -> None:
    async def work() -> tuple[bool, int]:
        service = AlertService(SqlAlertStore.from_url("sqlite://"))
        try:
            first = await service.on_decision(decision("t_mem", "acct"))
            second = await service.on_decision(decision("t_mem", "acct"))
            assert first is not None
            assert second is not None
            detail = await service.get_alert(tenant_id="t_mem", alert_id=first.alert.id)
            return first.opened, detail.alert.decision_count
        finally:
            await service.close()

    assert asyncio.run(work()) == (True, 2)


# -- the workflow -----------------------------------------------------------------------------


def test_workflow_resolution_labels_and_invalid_transitions(
    server: AlertServer, database_url: str, a: Keys
) -> None:
    entity = uid("acct")
    records = [decision(a.tenant_id, entity, at=T0 + timedelta(minutes=i)) for i in range(3)]
    alert_id = {r.alert.id for r in record_and_deliver(database_url, *records) if r}.pop()
    path = f"/v1/alerts/{alert_id}"

    acked = call(server, a, "PATCH", path, json={"status": "acknowledged", "assignee": "dana"})
    assert acked.status_code == 200, acked.text
    assert (acked.json()["status"], acked.json()["assignee"]) == ("acknowledged", "dana")

    no_resolution = call(server, a, "PATCH", path, json={"status": "resolved"})
    assert no_resolution.status_code == 422
    assert no_resolution.headers["content-type"] == PROBLEM
    assert no_resolution.json()["errors"][0]["field"] == "resolution"
    early = call(server, a, "PATCH", path, json={"resolution": "fraud"})
    assert early.status_code == 422
    unchanged = call(server, a, "PATCH", path, json={})
    assert unchanged.status_code == 200
    assert unchanged.json() == acked.json()
    assert call(server, a, "PATCH", path, json={"status": "closed"}).status_code == 422
    assert call(server, a, "PATCH", path, json={"severity": "low"}).status_code == 422

    handed_back = call(server, a, "PATCH", path, json={"status": "open", "assignee": None})
    assert handed_back.status_code == 200
    assert (handed_back.json()["status"], handed_back.json()["assignee"]) == ("open", None)

    resolved = call(server, a, "PATCH", path, json={"status": "resolved", "resolution": "fraud"})
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert (body["status"], body["resolution"]) == ("resolved", "fraud")
    assert body["resolved_by"]
    assert body["resolved_at"]

    def labels() -> dict[str, tuple[str, str, str | None]]:
        page = call(server, a, "GET", "/v1/labels", role="read", params={"source": "analyst"})
        assert page.status_code == 200, page.text
        return {
            x["event_id"]: (x["label"], x["source"], x["alert_id"])
            for x in page.json()["items"]
            if x["alert_id"] == alert_id
        }

    assert labels() == {r.event_id: ("fraud", "analyst", alert_id) for r in records}

    for status in ("open", "acknowledged"):
        refused = call(server, a, "PATCH", path, json={"status": status})
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"] == PROBLEM
    assert call(server, a, "PATCH", path, json={"assignee": "sam"}).status_code == 409
    same = call(server, a, "PATCH", path, json={"status": "resolved", "resolution": "fraud"})
    assert same.status_code == 200
    assert same.json()["updated_at"] == body["updated_at"]

    corrected = call(server, a, "PATCH", path, json={"resolution": "legitimate"})
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["resolution"] == "legitimate"
    assert labels() == {r.event_id: ("legitimate", "analyst", alert_id) for r in records}

    # the entity misbehaves again inside the window: a new alert, not the resolved one
    again = decision(a.tenant_id, entity, at=T0 + timedelta(minutes=10))
    (result,) = record_and_deliver(database_url, again)
    assert result is not None
    assert result.opened
    assert result.alert.id != alert_id
    assert call(server, a, "GET", path, role="read").json()["decision_count"] == 3


def test_concurrent_changes_lose_no_update(database_url: str, a: Keys) -> None:
    alert_id = opened(database_url, decision(a.tenant_id, uid("acct")))
    names = [f"analyst-{i}" for i in range(6)]

    async def race() -> tuple[list[Alert], Alert]:
        services = [AlertService(SqlAlertStore.from_url(database_url)) for _ in names]
        try:
            changes = [
                service.change_alert(
                    tenant_id=a.tenant_id,
                    alert_id=alert_id,
                    change=AlertChange(assignee=name, set_assignee=True),
                    actor="k",
                )
                for service, name in zip(services, names, strict=True)
            ]
            results = await asyncio.gather(*changes)
            final = await services[0].get_alert(tenant_id=a.tenant_id, alert_id=alert_id)
            return list(results), final.alert
        finally:
            for service in services:
                await service.close()

    results, final = asyncio.run(race())
    # each change was applied on top of the one before it: revisions 2..7, none written twice
    assert sorted(r.revision for r in results) == list(range(2, 2 + len(names)))
    assert final.revision == 1 + len(names)
    assert final.assignee == max(results, key=lambda r: r.revision).assignee


def test_notes(server: AlertServer, database_url: str, a: Keys) -> None:
    alert_id = opened(database_url, decision(a.tenant_id, uid("acct")))
    path = f"/v1/alerts/{alert_id}/notes"
    texts = ["Called the customer.", "Card reported stolen\non 2 March.", "Closing."]
    for text in texts:
        added = call(server, a, "POST", path, json={"text": text})
        assert added.status_code == 201, added.text
        assert added.json()["alert_id"] == alert_id
        assert added.json()["text"] == text
    listed = call(server, a, "GET", path, role="read")
    assert listed.status_code == 200
    assert [n["text"] for n in listed.json()["items"]] == texts

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = call(server, a, "GET", path, role="read", params=params).json()
        seen += [n["text"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == texts

    assert call(server, a, "POST", path, json={"text": "   "}).status_code == 422
    assert call(server, a, "POST", path, json={"text": "x" * 4001}).status_code == 422
    assert call(server, a, "POST", path, json={}).status_code == 422
    unknown = "/v1/alerts/alr_" + "0" * 26 + "/notes"
    missing = call(server, a, "POST", unknown, json={"text": "hello"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert call(server, a, "GET", unknown, role="read").status_code == 404
    bad_cursor = call(server, a, "GET", path, role="read", params={"cursor": "nope"})
    assert bad_cursor.status_code == 422


# -- lists ------------------------------------------------------------------------------------


def test_alert_list_filters_and_pagination(server: AlertServer, database_url: str, a: Keys) -> None:
    specs = [
        ("block", 0.95, "e1"),  # critical
        ("block", 0.5, "e2"),  # high
        ("review", 0.75, "e3"),  # medium
        ("review", 0.71, "e4"),  # medium
        ("review", 0.91, "e5"),  # high
    ]
    prefix = uid("q")
    ids = {}
    for outcome, score, name in specs:
        record = decision(a.tenant_id, f"{prefix}-{name}", outcome=outcome, score=score)
        ids[name] = opened(database_url, record)
    call(server, a, "PATCH", f"/v1/alerts/{ids['e3']}", json={"assignee": "dana"})
    call(server, a, "PATCH", f"/v1/alerts/{ids['e5']}", json={"status": "acknowledged"})

    walked: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = call(server, a, "GET", "/v1/alerts", role="read", params=params)
        assert page.status_code == 200, page.text
        walked += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    mine = [x for x in walked if x["entity"].startswith(prefix)]
    assert len(walked) == len({x["id"] for x in walked})
    assert len(mine) == len(specs)
    ranks = [Severity.parse(x["severity"]) for x in walked]
    assert ranks == sorted(ranks, reverse=True)
    assert mine[0]["id"] == ids["e1"]
    # most recently updated first within a severity: e3 was assigned after e4 was opened
    assert [x["id"] for x in mine if x["severity"] == "medium"] == [ids["e3"], ids["e4"]]

    def query(**params: Any) -> set[str]:
        got = call(server, a, "GET", "/v1/alerts", role="read", params={"limit": 500, **params})
        assert got.status_code == 200, got.text
        return {x["id"] for x in got.json()["items"]} & set(ids.values())

    assert query(severity="high") == {ids["e2"], ids["e5"]}
    assert query(status="acknowledged") == {ids["e5"]}
    assert query(status="open", severity="high") == {ids["e2"]}
    assert query(assignee="dana") == {ids["e3"]}
    assert query(entity=f"{prefix}-e4") == {ids["e4"]}
    assert query(reason="TX_VELOCITY") == set(ids.values())
    assert query(reason="OTHER_REASON") == set()
    assert query(since="2000-01-01T00:00:00Z", until="2199-01-01T00:00:00+02:00") == set(
        ids.values()
    )
    assert query(until="2000-01-01T00:00:00Z") == set()

    for params in (
        {"cursor": "not-a-cursor"},
        {"since": "2026-03-02T09:00:00"},  # no offset
        {"since": "0001-01-01T00:00:00+01:00"},
        {"status": "closed"},
        {"severity": "urgent"},
        {"limit": 0},
        {"entity": "a\x00b"},  # PostgreSQL refuses NUL in text: caught before the query
        {"assignee": "tab\there"},
    ):
        bad = call(server, a, "GET", "/v1/alerts", role="read", params=params)
        assert bad.status_code == 422, (params, bad.text)
        assert bad.headers["content-type"] == PROBLEM
    assert call(server, a, "GET", "/v1/alerts/not-an-id", role="read").status_code == 422
    assert call(server, a, "GET", "/v1/alerts/alr_" + "Z" * 26, role="read").status_code == 404


def test_labels_api(server: AlertServer, a: Keys) -> None:
    event = uid("pay")
    first = call(
        server,
        a,
        "POST",
        "/v1/labels",
        json={
            "event_id": event,
            "label": "fraud",
            "source": "chargeback",
            "labelled_at": "2026-03-05T12:00:00+01:00",
        },
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["event_id"], body["label"], body["source"]) == (event, "fraud", "chargeback")
    assert body["labelled_at"] == "2026-03-05T11:00:00Z"
    assert body["alert_id"] is None
    assert body["author"]

    replaced = call(
        server,
        a,
        "POST",
        "/v1/labels",
        json={"event_id": event, "label": "legitimate", "source": "chargeback"},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["id"] == body["id"]
    assert replaced.json()["label"] == "legitimate"
    analyst = call(server, a, "POST", "/v1/labels", json={"event_id": event, "label": "fraud"})
    assert analyst.status_code == 201
    assert analyst.json()["source"] == "analyst"

    listed = call(server, a, "GET", "/v1/labels", role="read", params={"event_id": event})
    assert sorted((x["source"], x["label"]) for x in listed.json()["items"]) == [
        ("analyst", "fraud"),
        ("chargeback", "legitimate"),
    ]
    only = call(
        server, a, "GET", "/v1/labels", role="read", params={"event_id": event, "label": "fraud"}
    )
    assert [x["source"] for x in only.json()["items"]] == ["analyst"]

    more = [uid("pay") for _ in range(5)]
    for event_id in more:
        posted = call(
            server,
            a,
            "POST",
            "/v1/labels",
            json={"event_id": event_id, "label": "fraud", "source": "bulk_import"},
        )
        assert posted.status_code == 201
    walked: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"source": "bulk_import", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = call(server, a, "GET", "/v1/labels", role="read", params=params).json()
        walked += [x["event_id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == list(reversed(more))  # newest first

    window = call(
        server,
        a,
        "GET",
        "/v1/labels",
        role="read",
        params={"since": "2026-03-05T10:59:00Z", "until": "2026-03-05T11:01:00Z"},
    )
    assert [x["event_id"] for x in window.json()["items"]] == []  # replaced: labelled now

    for bad in (
        {"event_id": event, "label": "maybe"},
        {"event_id": "", "label": "fraud"},
        {"event_id": "x" * 129, "label": "fraud"},
        {"event_id": "a\x00b", "label": "fraud"},
        {"event_id": event, "label": "fraud", "source": "Chargeback!"},
        {"event_id": event, "label": "fraud", "labelled_at": "2026-03-05T12:00:00"},
        {"event_id": event, "label": "fraud", "labelled_at": "9999-12-31T23:59:59-01:00"},
        {"event_id": event, "label": "fraud", "tenant_id": "t_other"},
    ):
        refused = call(server, a, "POST", "/v1/labels", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.headers["content-type"] == PROBLEM
    for params in ({"cursor": "x"}, {"event_id": "a\x00b"}, {"label": "maybe"}):
        listed = call(server, a, "GET", "/v1/labels", role="read", params=params)
        assert listed.status_code == 422, (params, listed.text)


# -- tenants and roles ------------------------------------------------------------------------


def test_tenant_isolation(server: AlertServer, database_url: str, a: Keys, b: Keys) -> None:
    alert_id = opened(database_url, decision(a.tenant_id, uid("acct")))
    event = uid("pay")
    assert (
        call(
            server, a, "POST", "/v1/labels", json={"event_id": event, "label": "fraud"}
        ).status_code
        == 201
    )
    path = f"/v1/alerts/{alert_id}"
    for role in ("read", "analyst", "admin"):
        assert call(server, b, "GET", path, role=role).status_code == 404
        assert call(server, b, "GET", path + "/notes", role=role).status_code == 404
    for role in ("analyst", "admin"):
        patch = call(server, b, "PATCH", path, role=role, json={"status": "acknowledged"})
        assert patch.status_code == 404
        assert patch.headers["content-type"] == PROBLEM
        note = call(server, b, "POST", path + "/notes", role=role, json={"text": "mine now"})
        assert note.status_code == 404
    listed = call(server, b, "GET", "/v1/alerts", role="read", params={"limit": 500}).json()
    assert listed["items"] == []
    labels = call(server, b, "GET", "/v1/labels", role="read", params={"event_id": event}).json()
    assert labels["items"] == []
    # tenant b labelling the same event id writes its own label, leaving a's alone
    assert (
        call(server, b, "POST", "/v1/labels", json={"event_id": event, "label": "legitimate"})
    ).status_code == 201
    mine = call(server, a, "GET", "/v1/labels", role="read", params={"event_id": event}).json()
    assert [x["label"] for x in mine["items"]] == ["fraud"]
    # nothing b tried changed a's alert
    body = call(server, a, "GET", path, role="read").json()
    assert (body["status"], body["assignee"]) == ("open", None)
    assert call(server, a, "GET", path + "/notes", role="read").json()["items"] == []


def test_roles(server: AlertServer, database_url: str, a: Keys) -> None:
    alert_id = opened(database_url, decision(a.tenant_id, uid("acct")))
    path = f"/v1/alerts/{alert_id}"
    label = {"event_id": uid("pay"), "label": "fraud"}

    # read keys read, and change nothing
    assert call(server, a, "GET", path, role="read").status_code == 200
    assert call(server, a, "GET", "/v1/labels", role="read").status_code == 200
    for method, target, body in (
        ("PATCH", path, {"status": "acknowledged"}),
        ("POST", path + "/notes", {"text": "hi"}),
        ("POST", "/v1/labels", label),
    ):
        refused = call(server, a, method, target, role="read", json=body)
        assert refused.status_code == 403, (method, target, refused.text)
        assert refused.headers["content-type"] == PROBLEM
    # ingest keys (machines posting events) neither read nor change alerts
    assert call(server, a, "GET", "/v1/alerts", role="ingest").status_code == 403
    assert (
        call(server, a, "PATCH", path, role="ingest", json={"status": "acknowledged"}).status_code
        == 403
    )
    # no key, a wrong key
    assert httpx.get(server.url + "/v1/alerts", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer rg_000000000000_" + "A" * 43}
    assert httpx.get(server.url + path, headers=wrong, timeout=10).status_code == 401

    # analysts work alerts and write labels, but cannot touch rules
    assert call(server, a, "PATCH", path, json={"status": "acknowledged"}).status_code == 200
    assert call(server, a, "POST", path + "/notes", json={"text": "on it"}).status_code == 201
    assert call(server, a, "POST", "/v1/labels", json=label).status_code == 201
    rules = call(server, a, "GET", "/v1/rules", role="read").json()["rules"]
    rule_id = rules[0]["id"]
    for method, target, body in (
        ("PATCH", f"/v1/rules/{rule_id}", {"enabled": False}),
        ("DELETE", f"/v1/rules/{rule_id}", None),
        ("POST", "/v1/rulesets", {"comment": "analyst publish"}),
    ):
        refused = call(server, a, method, target, json=body)
        assert refused.status_code == 403, (method, target, refused.text)
    # admins may do anything
    done = call(
        server,
        a,
        "PATCH",
        path,
        role="admin",
        json={"status": "resolved", "resolution": "legitimate"},
    )
    assert done.status_code == 200, done.text


# -- the fuzzer over the alert and label operations -------------------------------------------


def test_alert_routes_survive_the_api_fuzzer(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    keys = provision_tenant(database_url, f"fuzz-{uuid.uuid4().hex[:6]}")
    # an alert to find, so the fuzzer's ids are not all unknown ones
    opened(database_url, decision(keys.tenant_id, "acct-fuzz"))
    srv = AlertServer(database_url, free_port()).start()
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                srv.url + "/openapi.json",
                "--include-path-regex",
                "^/v1/(alerts|labels)",
                "--checks",
                "not_a_server_error,status_code_conformance,"
                "content_type_conformance,response_schema_conformance",
                "--max-examples",
                "30",
                "--seed",
                "20261122",
                "--header",
                f"Authorization: Bearer {keys.keys['admin']}",
                "--request-timeout",
                "20",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=tmp_path,
        )
    finally:
        srv.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # every alert and label operation was exercised (7 of them)
    assert "Tested: 7" in run.stdout, run.stdout[-3000:]
