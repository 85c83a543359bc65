"""End to end through the shell: real events, the default pack, in-memory state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from riskguard.engine.decide import Decision, Engine
from riskguard.engine.events import parse_event
from riskguard.engine.policy import Outcome
from riskguard.engine.state import InMemoryStateStore
from riskguard.rulefile import load_pack_file
from riskguard.scoring import Scorer

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
JOBURG = {"country": "ZA", "lat": -26.2, "lon": 28.0}
LONDON = {"country": "GB", "lat": 51.5, "lon": -0.13}


class World:
    def __init__(self) -> None:
        self.scorer = Scorer(Engine(load_pack_file(None)), InMemoryStateStore())
        self.ids = count()

    def send(self, kind: str, at: timedelta, data: dict[str, Any], **context: Any) -> Decision:
        raw = {
            "event_id": f"e{next(self.ids)}",
            "type": kind,
            "occurred_at": (START + at).isoformat(),
            "data": data,
            "context": {"ip": "196.25.1.9", "device_id": "d1", "geo": JOBURG, **context},
        }
        return self.scorer.score(parse_event(raw))


def codes(d: Decision) -> set[str]:
    return {r.code for r in d.reasons}


def pay(amount: float, cp: str = "shop", account: str = "a1") -> dict[str, Any]:
    return {"account_id": account, "counterparty_id": cp, "amount": amount, "currency": "EUR"}


def test_ordinary_payments_are_allowed_and_explained() -> None:
    w = World()
    for i in range(20):
        d = w.send("transaction", timedelta(hours=5 * i), pay(40 + i % 7, cp=f"cp{i % 4}"))
        assert d.outcome is Outcome.ALLOW, d.explanation
    assert d.explanation == "Allowed: no risk signals."
    assert d.ruleset_version.startswith("rs-")
    assert d.feature_snapshot()["account_tx.count_24h"] >= 1


def test_payment_burst_is_stopped() -> None:
    w = World()
    for i in range(10):
        w.send("transaction", timedelta(days=i), pay(50.0))
    outcomes = [
        w.send("transaction", timedelta(days=11, seconds=20 * i), pay(300.0)) for i in range(10)
    ]
    assert outcomes[-1].outcome >= Outcome.REVIEW
    assert "VELOCITY_ACCOUNT_COUNT_5M" in codes(outcomes[-1])
    assert "payments from this account in 5 minutes" in outcomes[-1].explanation


def test_sanctioned_counterparty_is_blocked() -> None:
    d = World().send("transaction", timedelta(0), {**pay(10.0), "counterparty_country": "IR"})
    assert d.outcome is Outcome.BLOCK
    assert d.explanation.startswith("Blocked: counterparty in sanctioned country IR")


def test_brute_force_then_success_is_caught() -> None:
    w = World()
    for i in range(6):
        d = w.send("login", timedelta(seconds=10 * i), {"user_id": "u1", "success": False})
    assert d.outcome >= Outcome.CHALLENGE
    assert "BRUTE_FORCE_USER" in codes(d)
    d = w.send("login", timedelta(seconds=70), {"user_id": "u1", "success": True})
    assert "SUCCESS_AFTER_FAILURES" in codes(d)
    assert d.outcome >= Outcome.REVIEW


def test_credential_stuffing_from_one_ip() -> None:
    w = World()
    for i in range(12):
        d = w.send(
            "login", timedelta(seconds=5 * i), {"user_id": f"u{i}", "success": False}, ip="45.1.1.1"
        )
    assert "CREDENTIAL_STUFFING_IP" in codes(d)
    assert d.outcome >= Outcome.REVIEW


def test_impossible_travel() -> None:
    w = World()
    w.send("login", timedelta(0), {"user_id": "u1", "success": True})
    d = w.send("login", timedelta(hours=1), {"user_id": "u1", "success": True}, geo=LONDON)
    assert "IMPOSSIBLE_TRAVEL" in codes(d)
    assert d.outcome >= Outcome.CHALLENGE
    reason = next(r for r in d.reasons if r.code == "IMPOSSIBLE_TRAVEL")
    assert reason.value > 1000


def test_account_takeover_sequence_is_blocked() -> None:
    w = World()
    for i in range(5):
        w.send("login", timedelta(days=i), {"user_id": "u1", "success": True})
    w.send("login", timedelta(days=6), {"user_id": "u1", "success": True}, device_id="evil")
    session = {"user_id": "u1", "session_id": "s9"}
    d = w.send(
        "session",
        timedelta(days=6, minutes=2),
        {**session, "action": "change_password"},
        device_id="evil",
    )
    assert "CREDENTIAL_CHANGE_NEW_DEVICE" in codes(d)
    d = w.send(
        "session",
        timedelta(days=6, minutes=9),
        {**session, "action": "payout", "amount": 900.0, "currency": "EUR"},
        device_id="evil",
    )
    assert d.outcome is Outcome.BLOCK
    assert "ACCOUNT_TAKEOVER_SEQUENCE" in codes(d)


def test_session_hijacking() -> None:
    w = World()
    s = {"user_id": "u1", "session_id": "s1"}
    assert w.send("session", timedelta(0), {**s, "action": "view"}).outcome is Outcome.ALLOW
    d = w.send(
        "session", timedelta(minutes=3), {**s, "action": "view"}, ip="77.7.7.7", device_id="d-x"
    )
    assert "SESSION_HIJACKING" in codes(d)
    assert d.outcome >= Outcome.REVIEW


def test_lateral_movement_to_a_sensitive_route_is_blocked() -> None:
    w = World()
    routes = ["/v1/balance", "/v1/ledger", "/v1/fx", "/v1/limits"]
    for i in range(200):
        call = {"service_id": "billing", "target": "ledger", "method": "GET", "path": routes[i % 4]}
        d = w.send(
            "api_call", timedelta(minutes=15 * i), call, ip="10.0.0.5", geo=None, device_id=None
        )
        assert d.outcome is Outcome.ALLOW or i < 4, (i, d.explanation)
    bad = {"service_id": "billing", "target": "iam", "method": "GET", "path": "/admin/users"}
    d = w.send("api_call", timedelta(days=3), bad, ip="10.0.0.5", geo=None, device_id=None)
    assert d.outcome is Outcome.BLOCK
    assert "API_SENSITIVE_NEW_ROUTE" in codes(d)


def test_same_events_same_decisions() -> None:
    """Replayable: the same events in the same order give the same decisions."""

    def run() -> list[tuple[str, float]]:
        w = World()
        out = []
        for i in range(30):
            d = w.send("transaction", timedelta(minutes=i), pay(10.0 * (i % 5 + 1), cp=f"c{i}"))
            out.append((d.outcome.label, d.score))
        return out

    assert run() == run()


@pytest.mark.parametrize("kind", ["transaction", "login", "session", "api_call"])
def test_decision_dict_has_the_contract_fields(kind: str) -> None:
    data = {
        "transaction": pay(5.0),
        "login": {"user_id": "u", "success": True},
        "session": {"user_id": "u", "session_id": "s", "action": "view"},
        "api_call": {"service_id": "a", "target": "b", "method": "GET", "path": "/x"},
    }[kind]
    out = World().send(kind, timedelta(0), data).to_dict()
    assert {"event_id", "outcome", "score", "reasons", "explanation", "ruleset_version"} <= set(out)
