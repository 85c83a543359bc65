"""The audit log's fast canonical JSON path gives exactly what the exact path gives, for any
value decoded from JSON — the same bytes, or the same error."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.adapters.audit.canonical import (
    CanonicalJSONError,
    canonical_json,
    canonical_json_of_json,
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(value)
    except CanonicalJSONError as exc:
        return "error", str(exc)


@settings(max_examples=600, deadline=None)
@given(_json)
def test_fast_path_equals_the_exact_path(value: Any) -> None:
    try:
        decoded = orjson.loads(orjson.dumps(value))  # what the consumer holds: JSON, decoded
    except orjson.JSONEncodeError:
        return  # not JSON at all (a lone surrogate, an integer beyond 64 bits)
    assert _outcome(canonical_json_of_json, decoded) == _outcome(canonical_json, decoded)


def test_known_vectors() -> None:
    # RFC 8785 appendix-style cases: key order by UTF-16 code units, number forms
    value = {"\u20ac": 1, "\r": 2, "1": 3, "\U0001f600": 4, "\u0080": 5, "\u00f6": 6}
    assert canonical_json_of_json(value) == canonical_json(value)
    numbers = [1e21, 1e-7, 0.1, -0.0, 333333333.3333333, 2**53 - 1]
    assert canonical_json_of_json(numbers) == canonical_json(numbers)
