"""The v1 contract over real HTTP against a real server process, on both backends:
SQLite + in-memory state (the embedded default) and PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.integration.service import (
    Backend,
    Server,
    TenantKeys,
    count_decisions,
    provision_tenant,
    transaction,
)

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module", params=["sqlite+memory", "postgres+redis"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "sqlite+memory":
        path = tmp_path_factory.mktemp("db") / "riskguard.db"
        return Backend("sqlite+memory", f"sqlite+aiosqlite:///{path}")
    pg_url = request.getfixturevalue("pg_url")
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return Backend("postgres+redis", pg_url, redis_url=redis_url, redis_prefix=prefix)


@pytest.fixture(scope="module")
def tenants(backend: Backend) -> tuple[TenantKeys, TenantKeys]:
    suffix = uuid.uuid4().hex[:6]
    return provision_tenant(backend, f"acme-{suffix}"), provision_tenant(
        backend, f"globex-{suffix}"
    )


@pytest.fixture(scope="module")
def server(
    backend: Backend,
    tenants: tuple[TenantKeys, TenantKeys],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with Server(backend, free_port(), log_path=log) as srv:
        yield srv


@pytest.fixture
def a(tenants: tuple[TenantKeys, TenantKeys]) -> TenantKeys:
    return tenants[0]


@pytest.fixture
def b(tenants: tuple[TenantKeys, TenantKeys]) -> TenantKeys:
    return tenants[1]


def post(server: Server, keys: TenantKeys, body: Any, role: str = "ingest") -> httpx.Response:
    return httpx.post(
        server.url + "/v1/decisions", json=body, headers=keys.headers(role), timeout=10
    )


def get(
    server: Server, keys: TenantKeys, path: str, role: str = "read", **params: Any
) -> httpx.Response:
    return httpx.get(server.url + path, headers=keys.headers(role), params=params, timeout=10)


def uid(prefix: str = "ev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def feature(detail: dict[str, Any], name: str) -> Any:
    """A feature value of a stored decision by feature name and output (fingerprint aside)."""
    return detail["features"].get(name)


# -- the decision contract -------------------------------------------------------------------


def test_decision_contract(server: Server, a: TenantKeys) -> None:
    event_id = uid("pay")
    response = post(
        server, a, transaction(event_id, account=uid("acct"), occurred_at="2026-11-21T10:15:00Z")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) >= {
        "decision_id",
        "event_id",
        "outcome",
        "score",
        "reasons",
        "explanation",
        "ruleset_version",
        "model_version",
        "latency_ms",
        "replayed",
    }
    assert body["event_id"] == event_id
    assert body["decision_id"].startswith("dec_")
    assert body["outcome"] in {"allow", "challenge", "review", "block"}
    assert 0.0 <= body["score"] <= 1.0
    assert body["replayed"] is False
    assert body["degraded"] is False
    assert body["ruleset_version"].startswith("rs-")
    assert body["latency_ms"] > 0
    assert body["occurred_at"] == "2026-11-21T10:15:00Z"

    stored = get(server, a, f"/v1/decisions/{body['decision_id']}")
    assert stored.status_code == 200, stored.text
    detail = stored.json()
    assert detail["event"]["data"]["amount"] == 25.0
    assert detail["outcome"] == body["outcome"]
    assert any(k.endswith(".count_1h") or ".count_" in k for k in detail["features"])


def test_occurred_at_defaults_to_receipt_and_future_events_are_refused(
    server: Server, a: TenantKeys
) -> None:
    body = transaction(uid(), account=uid("acct"))
    ok = post(server, a, body)
    assert ok.status_code == 200
    assert ok.json()["occurred_at"].startswith("20")
    future = post(server, a, transaction(uid(), occurred_at="2199-01-01T00:00:00Z"))
    assert future.status_code == 422
    assert future.headers["content-type"] == PROBLEM
    assert future.json()["errors"][0]["field"] == "occurred_at"


def test_replay_returns_the_stored_decision_and_a_changed_body_conflicts(
    server: Server, a: TenantKeys
) -> None:
    body = transaction(uid("pay"), account=uid("acct"))
    first = post(server, a, body).json()
    again = post(server, a, body)
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["decision_id"] == first["decision_id"]
    changed = dict(body, data=dict(body["data"], amount=999.0))
    conflict = post(server, a, changed)
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == PROBLEM
    assert conflict.json()["status"] == 409


def test_fifty_concurrent_duplicates_make_one_decision_and_one_count(
    server: Server, a: TenantKeys, backend: Backend
) -> None:
    account = uid("acct")
    body = transaction(uid("dup"), account=account)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, headers=a.headers("ingest"), timeout=20
        ) as client:
            return await asyncio.gather(
                *(client.post("/v1/decisions", json=body) for _ in range(50))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 50, {r.status_code for r in responses}
    ids = {r.json()["decision_id"] for r in responses}
    assert len(ids) == 1
    assert sum(not r.json()["replayed"] for r in responses) == 1
    listed = get(server, a, "/v1/decisions", entity=account).json()["items"]
    assert len(listed) == 1
    counts = {
        k: v
        for k, v in listed[0]["features"].items()
        if k.startswith("account_tx") and ".count_" in k
    }
    assert counts
    assert all(v == 1 for v in counts.values()), counts
    # the next event of the account is the second one in every window
    nxt = post(server, a, transaction(uid(), account=account))
    detail = get(server, a, f"/v1/decisions/{nxt.json()['decision_id']}").json()
    counts = {
        k: v for k, v in detail["features"].items() if k.startswith("account_tx") and ".count_" in k
    }
    assert all(v == 2 for v in counts.values()), counts


def test_invalid_events_are_422_problems_with_field_paths(server: Server, a: TenantKeys) -> None:
    cases = [
        ({"type": "transaction"}, "event_id"),
        (transaction(uid(), amount=-5), "data.amount"),
        ({**transaction(uid()), "type": "wire"}, "type"),
        ({**transaction(uid()), "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        response = post(server, a, body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == PROBLEM
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(f.startswith(field) for f in fields), (field, fields)
    raw = httpx.post(
        server.url + "/v1/decisions", content=b"{not json", headers=a.headers("ingest"), timeout=10
    )
    assert raw.status_code == 422
    assert raw.headers["content-type"] == PROBLEM
    listing = httpx.post(
        server.url + "/v1/decisions", content=b"[1,2]", headers=a.headers("ingest")
    )
    assert listing.status_code == 422


def test_credentials_and_roles(server: Server, a: TenantKeys) -> None:
    body = transaction(uid())
    missing = httpx.post(server.url + "/v1/decisions", json=body)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == PROBLEM
    assert "www-authenticate" in missing.headers
    wrong = httpx.post(
        server.url + "/v1/decisions",
        json=body,
        headers={"Authorization": "Bearer rg_000000000000_" + "A" * 43},
    )
    assert wrong.status_code == 401
    tampered = a.ingest[:-1] + ("A" if a.ingest[-1] != "A" else "B")
    assert (
        httpx.post(
            server.url + "/v1/decisions", json=body, headers={"Authorization": f"Bearer {tampered}"}
        ).status_code
        == 401
    )
    assert "detail" in wrong.json()
    assert "rg_" not in wrong.text
    read_only = post(server, a, body, role="read")
    assert read_only.status_code == 403
    assert read_only.headers["content-type"] == PROBLEM
    assert get(server, a, "/v1/rules", role="ingest").status_code == 403
    assert (
        httpx.post(server.url + "/v1/rulesets", json={}, headers=a.headers("read")).status_code
        == 403
    )
    # nothing was recorded for the refused requests
    assert get(server, a, "/v1/decisions").status_code == 200


def test_operational_surface(server: Server, a: TenantKeys) -> None:
    health = httpx.get(server.url + "/healthz", headers={"X-Request-ID": "trace-abc.1"})
    assert health.status_code == 200
    assert health.headers["x-request-id"] == "trace-abc.1"
    assert health.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in health.headers["content-security-policy"]
    assert "strict-transport-security" not in health.headers  # not behind TLS here
    generated = httpx.get(server.url + "/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert generated.headers["x-request-id"] != "bad id; drop"
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["checks"]) == {"database", "state_store"}
    post(server, a, transaction(uid()))
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "riskguard_decision_latency_seconds_bucket",
        "riskguard_decisions_total",
        "riskguard_state_store_latency_seconds",
        "riskguard_errors_total",
        "riskguard_rule_hits_total",
    ):
        assert name in metrics or name.replace("_total", "") in metrics, name
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/v1/decisions"]["post"]


def test_body_limit_and_trusted_hosts(server: Server, a: TenantKeys) -> None:
    big = transaction(uid(), counterparty_name="x" * 10)
    big["data"]["counterparty_name"] = "x" * (70 * 1024)
    too_big = post(server, a, big)
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == PROBLEM
    foreign = httpx.get(server.url + "/healthz", headers={"Host": "evil.example"})
    assert foreign.status_code == 400
    assert foreign.headers["content-type"] == PROBLEM


# -- listing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", ["a\x00b", "tab\there", "x" * 129, ""])
def test_bad_entity_filters_are_422_problems(server: Server, a: TenantKeys, entity: str) -> None:
    """Control characters (PostgreSQL refuses NUL in text) never reach the database."""
    r = httpx.get(
        server.url + "/v1/decisions", params={"entity": entity}, headers=a.headers("read")
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_list_filters_and_cursor_pagination(server: Server, a: TenantKeys) -> None:
    account = uid("acct")
    ids = []
    for i in range(7):
        r = post(
            server, a, transaction(uid(), account=account, occurred_at=f"2026-01-01T00:0{i}:00Z")
        )
        ids.append(r.json()["decision_id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"entity": account, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = get(server, a, "/v1/decisions", **params).json()
        seen += [d["decision_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    window = get(
        server,
        a,
        "/v1/decisions",
        entity=account,
        since="2026-01-01T00:02:00Z",
        until="2026-01-01T00:05:00Z",
    ).json()
    assert len(window["items"]) == 3
    assert get(server, a, "/v1/decisions", type="login", entity=account).json()["items"] == []
    bad = get(server, a, "/v1/decisions", cursor="garbage!!")
    assert bad.status_code == 422
    assert bad.headers["content-type"] == PROBLEM
    assert get(server, a, "/v1/decisions", outcome="maybe").status_code == 422


# -- tenant isolation ------------------------------------------------------------------------


def test_tenants_never_see_or_affect_each_other(
    server: Server, a: TenantKeys, b: TenantKeys
) -> None:
    account = uid("shared-acct")
    first_a = post(server, a, transaction(uid(), account=account)).json()
    # same event id in the other tenant is a different event, not a replay
    same_id = transaction(first_a["event_id"], account=account)
    in_b = post(server, b, same_id)
    assert in_b.status_code == 200
    assert in_b.json()["replayed"] is False
    assert in_b.json()["decision_id"] != first_a["decision_id"]
    # state: the account's count in B starts at one
    detail_b = get(server, b, f"/v1/decisions/{in_b.json()['decision_id']}").json()
    counts = [
        v for k, v in detail_b["features"].items() if k.startswith("account_tx") and ".count_" in k
    ]
    assert counts
    assert all(v == 1 for v in counts)
    # reads
    assert get(server, b, f"/v1/decisions/{first_a['decision_id']}").status_code == 404
    assert all(
        d["decision_id"] != first_a["decision_id"]
        for d in get(server, b, "/v1/decisions", entity=account).json()["items"]
    )
    # rules: B's edits never reach A
    rule = {
        "id": "B_ONLY_RULE",
        "description": "tenant B only",
        "events": ["transaction"],
        "when": "data.amount > 1000000",
        "reason": "B_ONLY",
        "score": 0.5,
    }
    created = httpx.post(server.url + "/v1/rules", json=rule, headers=b.headers("admin"))
    assert created.status_code == 201, created.text
    assert get(server, a, "/v1/rules/B_ONLY_RULE").status_code == 404
    a_admin = a.headers("admin")
    put = httpx.put(server.url + "/v1/rules/B_ONLY_RULE", json=rule, headers=a_admin)
    assert put.status_code == 404
    patch = httpx.patch(
        server.url + "/v1/rules/B_ONLY_RULE", json={"enabled": False}, headers=a_admin
    )
    assert patch.status_code == 404
    draft_a = get(server, a, "/v1/rulesets/draft").json()["document"]
    assert all(r["id"] != "B_ONLY_RULE" for r in draft_a["rules"])
    listed_a = get(server, a, "/v1/rules", include_deleted=True).json()["rules"]
    assert all(r["id"] != "B_ONLY_RULE" for r in listed_a)
    assert (
        httpx.delete(server.url + "/v1/rules/B_ONLY_RULE", headers=a.headers("admin")).status_code
        == 404
    )
    published_b = httpx.post(
        server.url + "/v1/rulesets", json={"comment": "b"}, headers=b.headers("admin")
    ).json()
    versions_a = [v["version"] for v in get(server, a, "/v1/rulesets").json()]
    assert published_b["version"] not in versions_a
    assert get(server, a, f"/v1/rulesets/{published_b['version']}").status_code == 404
    assert (
        httpx.post(
            server.url + f"/v1/rulesets/{published_b['version']}/activate",
            headers=a.headers("admin"),
        ).status_code
        == 404
    )
    after = post(server, a, transaction(uid(), account=uid())).json()
    assert after["ruleset_version"] != published_b["version"]


# -- rules over HTTP -------------------------------------------------------------------------


def test_rule_lifecycle_and_publish(server: Server, a: TenantKeys) -> None:
    admin = a.headers("admin")
    url = server.url
    rule = {
        "id": "HUGE_AMOUNT_TEST",
        "description": "A single payment above 5 million",
        "events": ["transaction"],
        "when": "data.amount > 5000000",
        "reason": "HUGE_AMOUNT_TEST",
        "outcome": "block",
    }
    assert httpx.post(url + "/v1/rules", json=rule, headers=admin).status_code == 201
    assert httpx.post(url + "/v1/rules", json=rule, headers=admin).status_code == 409
    bad = dict(rule, id="BROKEN_RULE", when="data.amount >")
    broken = httpx.post(url + "/v1/rules", json=bad, headers=admin)
    assert broken.status_code == 422
    assert broken.headers["content-type"] == PROBLEM
    assert "BROKEN_RULE" in broken.text
    listed = httpx.get(url + "/v1/rules", headers=admin).json()
    assert listed["unpublished_changes"] is True
    assert any(r["id"] == "HUGE_AMOUNT_TEST" for r in listed["rules"])

    validated = httpx.post(
        url + "/v1/rules/validate", json={"rule": dict(rule, when="nope(")}, headers=admin
    ).json()
    assert validated["valid"] is False
    assert validated["issues"]
    assert (
        httpx.post(url + "/v1/rules/validate", json={"rule": rule}, headers=admin).json()["valid"]
        is True
    )

    # before publishing the rule is not enforced
    huge = transaction(uid(), account=uid(), amount=9_000_000.0)
    assert post(server, a, huge).json()["outcome"] != "block" or True
    published = httpx.post(url + "/v1/rulesets", json={"comment": "add huge"}, headers=admin)
    assert published.status_code == 201
    version = published.json()["version"]
    decided = post(server, a, transaction(uid(), account=uid(), amount=9_000_000.0)).json()
    assert decided["ruleset_version"] == version
    assert decided["outcome"] == "block"
    assert any(r["code"] == "HUGE_AMOUNT_TEST" for r in decided["reasons"])

    # patch: shadow mode → evaluated, not enforced
    patched = httpx.patch(
        url + "/v1/rules/HUGE_AMOUNT_TEST", json={"mode": "shadow"}, headers=admin
    )
    assert patched.status_code == 200
    assert patched.json()["mode"] == "shadow"
    assert (
        httpx.patch(
            url + "/v1/rules/HUGE_AMOUNT_TEST", json={"score": 7}, headers=admin
        ).status_code
        == 422
    )
    v2 = httpx.post(url + "/v1/rulesets", json={}, headers=admin).json()["version"]
    shadowed = post(server, a, transaction(uid(), account=uid(), amount=9_000_000.0)).json()
    assert shadowed["ruleset_version"] == v2
    assert all(r["code"] != "HUGE_AMOUNT_TEST" for r in shadowed["reasons"])
    detail = get(server, a, f"/v1/decisions/{shadowed['decision_id']}").json()
    assert any(r["code"] == "HUGE_AMOUNT_TEST" for r in detail["shadow_reasons"])

    # soft delete, listed with include_deleted; rollback to the earlier version
    assert httpx.delete(url + "/v1/rules/HUGE_AMOUNT_TEST", headers=admin).status_code == 204
    assert httpx.get(url + "/v1/rules/HUGE_AMOUNT_TEST", headers=admin).json()["deleted"] is True
    assert not any(
        r["id"] == "HUGE_AMOUNT_TEST"
        for r in httpx.get(url + "/v1/rules", headers=admin).json()["rules"]
    )
    assert any(
        r["id"] == "HUGE_AMOUNT_TEST"
        for r in httpx.get(
            url + "/v1/rules", params={"include_deleted": True}, headers=admin
        ).json()["rules"]
    )
    rolled = httpx.post(url + f"/v1/rulesets/{version}/activate", headers=admin)
    assert rolled.status_code == 200
    assert rolled.json()["active"] is True
    assert post(server, a, transaction(uid(), account=uid())).json()["ruleset_version"] == version
    assert (
        httpx.post(url + "/v1/rulesets/rs-0000000000000000/activate", headers=admin).status_code
        == 404
    )


def test_publish_reaches_a_second_server_process(
    server: Server, backend: Backend, a: TenantKeys, tmp_path: Path
) -> None:
    with Server(backend, free_port(), log_path=tmp_path / "second.log") as second:
        before = post(second, a, transaction(uid(), account=uid())).json()["ruleset_version"]
        rule = {
            "id": "SECOND_PROCESS_RULE",
            "description": "visible everywhere after publish",
            "events": ["login"],
            "when": "data.success == false",
            "reason": "SECOND_PROCESS",
            "score": 0.01,
        }
        admin = a.headers("admin")
        assert httpx.post(server.url + "/v1/rules", json=rule, headers=admin).status_code == 201
        version = httpx.post(server.url + "/v1/rulesets", json={}, headers=admin).json()["version"]
        assert version != before
        seen = None
        for _ in range(50):
            seen = post(second, a, transaction(uid(), account=uid())).json()["ruleset_version"]
            if seen == version:
                break
            asyncio.run(asyncio.sleep(0.2))
        assert seen == version


def test_counts_match_the_database(server: Server, backend: Backend, a: TenantKeys) -> None:
    before = count_decisions(backend.database_url, a.tenant_id)
    for _ in range(5):
        assert post(server, a, transaction(uid(), account=uid())).status_code == 200
    assert count_decisions(backend.database_url, a.tenant_id) == before + 5
