"""Time-ordered ids (riskguard.ids) and the ids built on them."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

from riskguard.adapters.sql.outbox import new_message_id
from riskguard.ids import CROCKFORD, time_ordered_id
from riskguard.services.alerts import new_id
from riskguard.services.decisions import new_decision_id

_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD.encode())


def _number(digits: str) -> int:
    value = 0
    for ch in digits:
        value = value << 5 | CROCKFORD.index(ch)
    return value


def test_an_id_is_the_prefix_then_26_crockford_digits_of_milliseconds_and_random_bits() -> None:
    at = 1_767_225_600.123  # 2026-01-01T00:00:00.123Z
    value = time_ordered_id("x_", at)
    assert re.fullmatch(r"x_[0-9A-HJKMNP-TV-Z]{26}", value)
    number = _number(value[2:])
    assert number >> 128 == 0  # 128 bits in 130: the first digit is 0-7
    assert number >> 80 == 1_767_225_600_123
    # the layout decision ids always had: base32 of the 20-byte big-endian number, last 26
    encoded = base64.b32encode(number.to_bytes(20, "big"))[6:].translate(_TO_CROCKFORD)
    assert encoded.decode() == value[2:]


def test_ids_sort_by_time_and_do_not_repeat() -> None:
    times = [1_767_225_600.0 + i * 0.001 for i in range(2_000)]
    ids = [time_ordered_id("dec_", t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    same_ms = {time_ordered_id("dec_", 1_767_225_600.0) for _ in range(2_000)}
    assert len(same_ms) == 2_000


def test_decision_message_and_alert_ids_share_the_layout() -> None:
    at = datetime(2026, 12, 2, 12, 0, 0, 250_000, tzinfo=UTC)
    for value, prefix in (
        (new_decision_id(at.timestamp()), "dec_"),
        (new_message_id(at.timestamp()), "evt_"),
        (new_id("alr_", at), "alr_"),
    ):
        assert value.startswith(prefix)
        assert len(value) == len(prefix) + 26
        assert _number(value[len(prefix) :]) >> 80 == 1_796_212_800_250
    assert new_decision_id() < new_decision_id(4_102_444_800.0)  # now sorts before 2100
