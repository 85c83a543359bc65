"""``riskguard worker``: the after-decision work in its own process, against a real
``riskguard serve`` (dispatcher off) on the real PostgreSQL and Redis."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.conftest import free_port
from tests.integration.service import (
    ROOT,
    Backend,
    Server,
    TenantKeys,
    provision_tenant,
    transaction,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(
        "postgres+redis",
        request.getfixturevalue("pg_url"),
        redis_url=request.getfixturevalue("redis_url"),
        redis_prefix=f"{request.getfixturevalue('redis_prefix')}wk",
        extra_env={"RISKGUARD_DISPATCHER": "false"},
    )


@pytest.fixture(scope="module")
def tenant(backend: Backend) -> TenantKeys:
    return provision_tenant(backend, f"worker-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def server(backend: Backend, tenant: TenantKeys) -> Iterator[Server]:
    with Server(backend, free_port()) as srv:
        yield srv


def _pending(backend: Backend, tenant_id: str) -> int:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def count() -> int:
        engine = create_async_engine(backend.database_url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM outbox_messages "
                        "WHERE tenant_id = :t AND dispatched_at IS NULL"
                    ),
                    {"t": tenant_id},
                )
                return int(result.scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(count())


def _block(server: Server, tenant: TenantKeys) -> dict[str, Any]:
    body = transaction(f"ev-{uuid.uuid4().hex[:10]}", account=f"acct-{uuid.uuid4().hex[:6]}")
    body["data"]["counterparty_country"] = "KP"
    body["context"]["geo"]["country"] = "KP"
    r = httpx.post(server.url + "/v1/decisions", json=body, headers=tenant.headers("ingest"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _alert_for(server: Server, tenant: TenantKeys, decision_id: str) -> dict[str, Any] | None:
    r = httpx.get(server.url + "/v1/alerts", headers=tenant.headers("read"), params={"limit": 100})
    assert r.status_code == 200, r.text
    for item in r.json()["items"]:
        if decision_id in (item.get("first_decision_id"), item.get("last_decision_id")):
            return dict(item)
    return None


def test_the_worker_does_what_the_service_left_in_the_outbox(
    server: Server, tenant: TenantKeys, backend: Backend
) -> None:
    decisions = [_block(server, tenant) for _ in range(3)]
    assert all(d["outcome"] in ("block", "review") for d in decisions), decisions
    time.sleep(1.5)  # longer than a dispatcher's poll: nobody in the service dispatches
    assert _pending(backend, tenant.tenant_id) == 3
    assert _alert_for(server, tenant, decisions[0]["decision_id"]) is None

    worker = subprocess.Popen(
        [sys.executable, "-m", "riskguard", "worker"],
        env=backend.env() | {"RISKGUARD_LOG_LEVEL": "info"},  # worker_started is at info
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _pending(backend, tenant.tenant_id):
            assert worker.poll() is None, worker.communicate()[0].decode()
            time.sleep(0.2)
        assert _pending(backend, tenant.tenant_id) == 0
        for decision in decisions:
            assert _alert_for(server, tenant, decision["decision_id"]) is not None
        r = httpx.get(
            server.url + "/v1/audit",
            headers=tenant.headers("admin"),
            params={"action": "decision.created", "limit": 500},
        )
        assert r.status_code == 200, r.text
        audited = {rec["body"].get("decision_id") for rec in r.json()["records"]}
        assert {d["decision_id"] for d in decisions} <= audited
        # a decision made while the worker runs is picked up too
        later = _block(server, tenant)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _alert_for(server, tenant, later["decision_id"]):
            time.sleep(0.2)
        assert _alert_for(server, tenant, later["decision_id"]) is not None
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0].decode()
    assert worker.returncode == 0, output
    assert "Traceback" not in output, output
    # start-up's objects frozen out of the collector's walks, as in the service
    frozen = re.search(r'"?gc_frozen"?[=:]\s*(\d+)', output)
    assert frozen is not None, output
    assert int(frozen.group(1)) > 10_000, output


def test_the_worker_refuses_bad_settings_with_a_clear_error(backend: Backend) -> None:
    env = backend.env()
    env["RISKGUARD_STREAM_MAXLEN"] = "0"
    out = subprocess.run(
        [sys.executable, "-m", "riskguard", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "invalid settings" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_container_that_does_not_decide_compiles_no_ruleset_and_polls_for_none(
    tmp_path: Any,
) -> None:
    """``riskguard worker`` starts its container with ``decides=False``: it has no rules to
    run, so it must neither compile the tenants' rulesets nor poll for new ones every second
    (as a service process does)."""
    import asyncio

    from riskguard.settings import load_settings
    from riskguard.wiring import Container, provision

    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rg.db'}",
        secret_key="k" * 32,
        outbox=True,
        dispatcher=True,
        log_level="warning",
        ruleset_poll_s=0.05,
    )

    async def loaded(decides: bool) -> tuple[bool, int]:
        container = Container(settings)
        await container.start(decides=decides)
        try:
            if decides:
                await asyncio.sleep(0.2)  # a few polls
            found = container.engines.get(tenant_id) is not None
            polls = sum(1 for t in asyncio.all_tasks() if "EngineCache.poll" in repr(t))
            return found, polls
        finally:
            await container.stop()

    async def setup() -> str:
        container = Container(settings)
        await container.start()
        try:
            tid, _ = await provision(container.store, b"k" * 32, "acme")
            return tid
        finally:
            await container.stop()

    tenant_id = asyncio.run(setup())
    assert asyncio.run(loaded(decides=True)) == (True, 1)  # the service's way: the control
    assert asyncio.run(loaded(decides=False)) == (False, 0)
