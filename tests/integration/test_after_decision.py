"""What follows a decision, end to end through a real ``riskguard serve``: the outbox message
written with the decision, the in-process dispatcher opening an alert, appending the audit log
and publishing CloudEvents to the real Redis; ``GET /v1/audit`` with proofs; and
``riskguard audit verify`` on the database the server wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.integration.conftest import free_port
from tests.integration.service import (
    AUDIT_KEY,
    ROOT,
    Backend,
    Server,
    TenantKeys,
    provision_tenant,
    transaction,
)

pytestmark = pytest.mark.integration
FAST_CHECKPOINTS = {"RISKGUARD_AUDIT_CHECKPOINT_INTERVAL_S": "0.5"}


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "riskguard.db"
        return Backend("sqlite", f"sqlite+aiosqlite:///{path}", extra_env=dict(FAST_CHECKPOINTS))
    prefix = f"{request.getfixturevalue('redis_prefix')}ad"
    return Backend(
        "postgres+redis",
        request.getfixturevalue("pg_url"),
        redis_url=request.getfixturevalue("redis_url"),
        redis_prefix=prefix,
        extra_env=dict(FAST_CHECKPOINTS),
    )


@pytest.fixture(scope="module")
def tenant(backend: Backend) -> TenantKeys:
    return provision_tenant(backend, f"after-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def server(
    backend: Backend, tenant: TenantKeys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with Server(backend, free_port(), log_path=log) as srv:
        yield srv


def _until(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _block(server: Server, tenant: TenantKeys) -> dict[str, Any]:
    """A payment to a sanctioned country: the default pack blocks it."""
    body = transaction(f"ev-{uuid.uuid4().hex[:10]}", account=f"acct-{uuid.uuid4().hex[:6]}")
    body["data"]["counterparty_country"] = "KP"
    body["context"]["geo"]["country"] = "KP"
    r = httpx.post(server.url + "/v1/decisions", json=body, headers=tenant.headers("ingest"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_blocked_decision_opens_an_alert_is_audited_and_published(
    server: Server, tenant: TenantKeys, backend: Backend
) -> None:
    decision = _block(server, tenant)
    assert decision["outcome"] in ("block", "review"), decision
    headers = tenant.headers("read")

    def alert() -> dict[str, Any] | None:
        r = httpx.get(server.url + "/v1/alerts", headers=headers, params={"limit": 100})
        assert r.status_code == 200, r.text
        for item in r.json()["items"]:
            if decision["decision_id"] in (
                item.get("first_decision_id"),
                item.get("last_decision_id"),
            ):
                return dict(item)
        return None

    opened = _until(alert)
    assert opened is not None, "no alert opened for the blocked decision"
    assert opened["status"] == "open"

    admin = tenant.headers("admin")

    def audited() -> dict[str, Any] | None:
        r = httpx.get(
            server.url + "/v1/audit",
            headers=admin,
            params={"action": "decision.created", "limit": 500},
        )
        assert r.status_code == 200, r.text
        for record in r.json()["records"]:
            if record["body"].get("decision_id") == decision["decision_id"]:
                return dict(record)
        return None

    record = _until(audited)
    assert record is not None, "the decision never reached the audit log"
    assert record["tenant_id"] == tenant.tenant_id

    def proof() -> dict[str, Any] | None:
        r = httpx.get(f"{server.url}/v1/audit/{record['seq']}/proof", headers=admin)
        return dict(r.json()) if r.status_code == 200 else None

    # provable once a checkpoint covers it (signed every 0.5 s here)
    included = _until(proof)
    assert included is not None, "no inclusion proof"
    assert included["seq"] == record["seq"]
    assert included["tree_size"] >= record["seq"]
    assert len(included["checkpoint"].splitlines()) >= 4  # origin, size, root, blank, signature

    # other roles and other tenants see nothing of it
    assert httpx.get(server.url + "/v1/audit", headers=headers).status_code == 403

    if backend.redis_url is not None:
        client = redis.Redis.from_url(backend.redis_url)
        key = backend.stream_prefix + "riskguard.decisions"

        def published() -> dict[str, Any] | None:
            for _id, fields in client.xrange(key):
                event = orjson.loads(fields[b"event"])
                if event.get("subject") == decision["decision_id"]:
                    return dict(event)
            return None

        event = _until(published)
        client.close()
        assert event is not None, "no CloudEvent on the Redis stream"
        assert event["type"] == "io.riskguard.decision.created"
        assert event["specversion"] == "1.0"
        assert event["tenantid"] == tenant.tenant_id


def test_audit_verify_accepts_the_log_the_server_wrote(
    server: Server, tenant: TenantKeys, backend: Backend
) -> None:
    for _ in range(3):
        _block(server, tenant)
    time.sleep(1.5)  # the dispatcher appends within its poll interval
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env["RISKGUARD_AUDIT_SIGNING_KEY"] = AUDIT_KEY
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "riskguard",
            "audit",
            "verify",
            "--database-url",
            backend.database_url,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert Path(AUDIT_KEY).exists()
