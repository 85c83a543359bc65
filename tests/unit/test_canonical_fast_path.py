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


def test_integral_floats_outside_and_inside_strings() -> None:
    # a decision body's score of 0.0 and counts sent as floats: rewritten without the exact
    # path; the same characters inside strings (keys and values) are left alone
    value = {
        "score": 0.0,
        "neg": -0.0,
        "list": [-0.0, 1.0, -2.0, 100.0, 2.5, 1e15],
        "nested": {"a": [{"b": 3.0}]},
        "text": "v1.0, then 2.0]",
        "a.0": "x.0}",
        "q": 'say "1.0"',
        "back\\slash": 4.0,
    }
    decoded = orjson.loads(orjson.dumps(value))
    assert canonical_json_of_json(decoded) == canonical_json(decoded)
    without_escapes = {k: v for k, v in decoded.items() if k not in ("q", "back\\slash")}
    fast = canonical_json_of_json(without_escapes)
    assert fast == canonical_json(without_escapes)
    assert b'"score":0,' in fast
    assert b'"neg":0,' in fast
    assert b'"list":[0,1,-2,100,2.5,1000000000000000]' in fast
    assert b'"text":"v1.0, then 2.0]"' in fast
    assert b'"a.0":"x.0}"' in fast


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.floats(allow_nan=False, allow_infinity=False).map(float.__floor__).map(float)
        | st.sampled_from(["1.0", "x.0,", "-0.0]", ".0}", ""]),
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(st.sampled_from(["a", "b.0", "-0.0"]), inner, max_size=3)
        ),
        max_leaves=30,
    )
)
def test_integral_floats_equal_the_exact_path(value: Any) -> None:
    try:
        decoded = orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return
    assert _outcome(canonical_json_of_json, decoded) == _outcome(canonical_json, decoded)
