"""Event models: the four contract types validate, flatten, and reject bad input by field."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from riskguard.engine.events import (
    FIELD_TYPES,
    ApiCallData,
    InvalidEventError,
    LoginData,
    SessionData,
    TransactionData,
    parse_event,
)

BASE: dict[str, Any] = {"event_id": "e1", "occurred_at": "2026-11-21T10:15:00Z"}
GOOD = {
    "transaction": {
        "account_id": "a1",
        "counterparty_id": "c1",
        "amount": 12.5,
        "currency": "EUR",
    },
    "login": {"user_id": "u1", "success": True},
    "session": {"user_id": "u1", "session_id": "s1", "action": "view"},
    "api_call": {"service_id": "svc", "target": "ledger", "method": "GET", "path": "/v1/x"},
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_each_type_parses_and_flattens(kind: str) -> None:
    event = parse_event(
        {
            **BASE,
            "type": kind,
            "data": GOOD[kind],
            "context": {"ip": "196.25.1.9", "geo": {"country": "ZA", "lat": -26.2, "lon": 28.0}},
        }
    )
    fields = event.fields()
    assert fields["type"] == kind
    assert fields["hour"] == 10
    assert fields["context.geo.country"] == "ZA"
    assert event.ts == pytest.approx(1795256100.0)
    # Every flattened path is declared with the right expression type.
    for path, value in fields.items():
        declared = FIELD_TYPES[kind][path]
        expected = {"number": (int, float), "string": str, "bool": bool}[declared]
        assert isinstance(value, expected), path


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        (TransactionData, "transaction"),
        (LoginData, "login"),
        (SessionData, "session"),
        (ApiCallData, "api_call"),
    ],
)
def test_field_types_cover_every_data_field(model: Any, kind: str) -> None:
    declared = {p[5:] for p in FIELD_TYPES[kind] if p.startswith("data.")}
    assert declared == set(model.model_fields)


@pytest.mark.parametrize(
    ("event", "field", "fragment"),
    [
        ({"type": "transfer"}, "type", "must be one of"),
        ({"type": "login", "data": {"user_id": "u"}}, "data.success", "required"),
        (
            {"type": "transaction", "data": {**GOOD["transaction"], "amount": -1}},
            "data.amount",
            "greater than 0",
        ),
        (
            {"type": "transaction", "data": {**GOOD["transaction"], "amount": float("nan")}},
            "data.amount",
            "",
        ),
        (
            {"type": "transaction", "data": {**GOOD["transaction"], "currency": "euro"}},
            "data.currency",
            "pattern",
        ),
        (
            {"type": "login", "data": GOOD["login"], "context": {"ip": "1.2.3"}},
            "context.ip",
            "IPv4",
        ),
        (
            {"type": "login", "data": GOOD["login"], "context": {"geo": {"lat": 1.0}}},
            "context.geo",
            "together",
        ),
        ({"type": "login", "data": {**GOOD["login"], "extra": 1}}, "data.extra", "unknown field"),
        ({"type": "login", "data": {"user_id": "u", "success": "yes"}}, "data.success", "boolean"),
        (
            {"type": "transaction", "data": {**GOOD["transaction"], "amount": "12.5"}},
            "data.amount",
            "number",
        ),
        (
            {"type": "api_call", "data": {**GOOD["api_call"], "request_bytes": "9"}},
            "data.request_bytes",
            "integer",
        ),
        (
            {"type": "api_call", "data": {**GOOD["api_call"], "path": "no-slash"}},
            "data.path",
            "pattern",
        ),
        (
            {"type": "login", "data": GOOD["login"], "occurred_at": "2026-11-21T10:15:00"},
            "occurred_at",
            "timezone",
        ),
        ({"type": "login", "data": GOOD["login"], "event_id": ""}, "event_id", "at least 1"),
        (
            {"type": "login", "data": GOOD["login"], "occurred_at": "1969-12-31T23:59:59Z"},
            "occurred_at",
            "between 1970",
        ),
    ],
)
def test_invalid_events_name_the_field(event: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        parse_event({**BASE, **event})
    issues = {i.field: i.message for i in info.value.issues}
    assert field in issues, issues
    assert fragment in issues[field]


def test_non_object_is_rejected() -> None:
    with pytest.raises(InvalidEventError, match="JSON object"):
        parse_event([1, 2])


def test_event_types_are_the_contract() -> None:
    from riskguard.engine.events import EventType

    assert set(get_args(EventType)) == set(FIELD_TYPES)


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"event_id": "a\x00b"}, "event_id", "pattern"),
        ({"occurred_at": 1795256100}, "occurred_at", "RFC 3339"),
    ],
)
def test_more_invalid_events(changes: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        parse_event({**BASE, "type": "login", "data": GOOD["login"], **changes})
    issues = {i.field: i.message for i in info.value.issues}
    assert fragment in issues[field]


def test_nan_amount_is_reported_as_not_finite() -> None:
    with pytest.raises(InvalidEventError, match="finite"):
        parse_event(
            {**BASE, "type": "transaction", "data": {**GOOD["transaction"], "amount": float("nan")}}
        )
