"""An event's JSON built around the outbox's payload text says what the event's dict says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.adapters.streams.cloudevents import CloudEvent, event_json, to_cloudevent
from riskguard.adapters.webhooks.models import ClaimedMessage


def message(payload: dict[str, Any], **fields: Any) -> ClaimedMessage:
    values: dict[str, Any] = {
        "id": "evt_01M8Y638T7CYDM7S55Q276E7G3",
        "tenant_id": "t_1cdf78530813f395",
        "topic": "decision.created",
        "subject": "dec_01M8Y638T7CYDM7S55Q276E7G3",
        "payload": payload,
        "created_at": datetime(2026, 12, 3, 14, 49, 21, 479562, tzinfo=UTC),
        "attempts": 1,
        "sinks_done": frozenset(),
    }
    values.update(fields)
    return ClaimedMessage(**values)


PAYLOAD = {
    "decision_id": "dec_01M8Y638T7CYDM7S55Q276E7G3",
    "outcome": "block",
    "score": 0.93565,
    "reasons": [{"code": "VELOCITY", "value": 12, "message": "12 payments in 5 minutes"}],
    "model_version": None,
    "degraded": False,
}


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(2026, 12, 3, 14, 49, 21, 479562, tzinfo=UTC),
        datetime(2026, 12, 3, 14, 49, 21, tzinfo=UTC),  # no microseconds
        datetime(2026, 12, 3, 16, 49, 21, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 12, 3, 14, 49, 21, 5),  # naive: UTC
    ],
)
def test_the_json_built_from_the_payload_text_is_the_events_json(created_at: datetime) -> None:
    m = message(PAYLOAD, created_at=created_at)
    event = to_cloudevent(m, payload_json=orjson.dumps(PAYLOAD).decode())
    assert orjson.loads(event_json(event)) == orjson.loads(orjson.dumps(event))
    assert event["time"].endswith("Z")
    assert datetime.fromisoformat(event["time"]) == (
        created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at
    )


def test_the_payload_text_is_kept_as_the_service_wrote_it() -> None:
    text = '{"b": 1, "a": [1.50, "é"]}'  # spaces, key order, a trailing zero: kept as they are
    event = to_cloudevent(message(orjson.loads(text)), payload_json=text)
    assert event_json(event).endswith(b',"data":' + text.encode() + b"}")
    assert orjson.loads(event_json(event))["data"] == event["data"]


def test_without_the_text_the_event_is_encoded_from_its_dict() -> None:
    event = to_cloudevent(message(PAYLOAD))
    assert isinstance(event, CloudEvent)
    assert event_json(event) == orjson.dumps(event)
    plain = dict(event)
    assert event_json(plain) == orjson.dumps(plain)


def test_the_events_dict_is_the_one_consumers_always_read() -> None:
    event = to_cloudevent(message(PAYLOAD), payload_json=orjson.dumps(PAYLOAD).decode())
    assert dict(event) == {
        "specversion": "1.0",
        "id": "evt_01M8Y638T7CYDM7S55Q276E7G3",
        "source": "/riskguard/tenants/t_1cdf78530813f395",
        "type": "io.riskguard.decision.created",
        "subject": "dec_01M8Y638T7CYDM7S55Q276E7G3",
        "time": "2026-12-03T14:49:21.479562Z",
        "datacontenttype": "application/json",
        "tenantid": "t_1cdf78530813f395",
        "data": PAYLOAD,
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
names = st.text(min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    tenant=names,
    subject=names,
    event_id=names,
)
def test_any_payload_and_names_give_the_same_json_value(
    payload: dict[str, Any], tenant: str, subject: str, event_id: str
) -> None:
    try:
        text = orjson.dumps(payload).decode()
    except orjson.JSONEncodeError:  # e.g. a lone surrogate in a key: no JSON to start from
        return
    m = message(orjson.loads(text), tenant_id=tenant, subject=subject, id=event_id)
    event = to_cloudevent(m, payload_json=text)
    assert orjson.loads(event_json(event)) == orjson.loads(orjson.dumps(dict(event)))


def test_the_json_is_built_once_and_kept_for_the_next_stream() -> None:
    event = to_cloudevent(message(PAYLOAD), payload_json=orjson.dumps(PAYLOAD).decode())
    first = event_json(event)
    assert event_json(event) is first
