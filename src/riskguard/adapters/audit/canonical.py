"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) for audit record bodies.

The same value always gives the same bytes, so a hash over them means one thing:

- objects: keys sorted by their UTF-16 code units (RFC 8785 section 3.2.3; for keys of the
  Basic Multilingual Plane this is code point order), no duplicate keys (a Python dict has
  none), keys must be strings;
- no whitespace anywhere; the output is UTF-8, characters are never ``\\u``-escaped except
  ``"``, ``\\`` and U+0000..U+001F (``\\b \\t \\n \\f \\r`` in short form, the others as
  ``\\u00xx``, lower-case hex) — exactly ECMAScript's ``JSON.stringify``. Lone surrogates
  are refused;
- numbers as ECMAScript prints a double: the shortest digits that round-trip (Python's
  ``repr``), ``1`` for ``1.0``, ``-0`` as ``0``, exponents only below 1e-6 or from 1e21
  (``1e+21``, ``1.5e-7``). NaN and the infinities are refused. Integers must be exact in a
  double (``|i| <= 2**53 - 1``; larger ones are refused: send them as strings);
- ``true``, ``false``, ``null``; lists and tuples are arrays.

Two conveniences beyond plain JSON values, both written as strings: an aware ``datetime``
becomes ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, always six fraction digits); a naive one is
refused. Anything else (bytes, sets, Decimal, objects) raises :class:`CanonicalJSONError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form; the message says where and why."""


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 bytes of ``value``."""
    try:
        return orjson.dumps(_prepare(value, 0))
    except _PathError as exc:
        raise CanonicalJSONError(f"${''.join(reversed(exc.path))}: {exc.reason}") from None
    except orjson.JSONEncodeError as exc:  # a lone surrogate in a string
        raise CanonicalJSONError(f"not encodable as UTF-8 JSON: {exc}") from None


# orjson prints a float as Python's repr does, which is ECMAScript's text except for an
# integral float (``1.0``, ``-0.0``) and an exponent form (``1e+16``, ``1e-06`` -> ``1e-6``;
# the exponent always carries its sign). Inside a container every number is followed by ``,``
# ``}`` or ``]``, so ``e-``, ``e+`` and ``.0`` before one of those find every such float. An
# exponent, even one found in a string, sends the value down the exact path: slower, never
# wrong. An integral float (a score of ``0.0``, common in decisions) is rewritten in place
# when the text shows it is outside every string (see _integral_floats_as_integers).
_FAST_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def canonical_json_of_json(value: Any) -> bytes:
    """:func:`canonical_json` of a value decoded from JSON — only ``str``, ``int``,
    ``float``, ``bool``, ``None``, lists and dicts with string keys, so never NaN, an
    infinity or a ``datetime`` — several times faster on an object of a few dozen values.

    orjson with sorted keys writes exactly the RFC 8785 bytes of an object or array when the
    text is ASCII (code point order is UTF-16 order), no integer exceeds 2**53 - 1
    (``OPT_STRICT_INTEGER`` refuses it), no float prints differently (see the
    comment above) and the nesting is within :data:`MAX_DEPTH` (bounded by counting
    brackets); an integral float's ``X.0`` becomes ``X``. Whenever one of those is not
    certain, the exact path runs (and raises where it would)."""
    kind = type(value)
    if kind is dict or kind is list:
        try:
            out = orjson.dumps(value, option=_FAST_OPTIONS)
        except orjson.JSONEncodeError:
            return canonical_json(value)
        if (
            out.isascii()
            and b"e-" not in out
            and b"e+" not in out
            and out.count(b"{") + out.count(b"[") <= MAX_DEPTH
        ):
            fast = _integral_floats_as_integers(out)
            if fast is not None:
                return fast
    return canonical_json(value)


_NUMBER_ENDS = frozenset(b",}]")
_AFTER_VALUE_START = frozenset(b":,[")


def _integral_floats_as_integers(out: bytes) -> bytes | None:
    """``out`` (an object or array, ASCII, no exponents) with every float printed ``X.0``
    written as ECMAScript prints it, ``X`` (``-0.0`` as ``0``); None when that is not certain.

    A ``.0`` right before ``,``, ``}`` or ``]`` ends a number when it is outside every string,
    which the parity of the quotes before it tells — as long as no quote is escaped, so a
    text with a backslash goes to the exact path. One scan for ``.0`` (rare, and each byte
    scanned costs), then a look at the bytes around each one found."""
    at = out.find(b".0")
    if at < 0:
        return out
    if b"\\" in out:
        return None
    parts: list[bytes] = []
    start = 0
    while at >= 0:
        end = at + 2  # never out of range: a container ends in } or ]
        if out[end] in _NUMBER_ENDS and out.count(b'"', 0, at) % 2 == 0:
            if out[at - 2 : at] == b"-0" and out[at - 3] in _AFTER_VALUE_START:
                parts += (out[start : at - 2], b"0")  # -0.0: ECMAScript prints 0
            else:
                parts.append(out[start:at])
            start = end
        at = out.find(b".0", end)
    parts.append(out[start:])
    return b"".join(parts)


class _PathError(Exception):
    """A problem deep in a value; each level adds its key on the way out (paths are only
    built when something is wrong)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def format_time(value: datetime) -> str:
    """``value`` (aware) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise CanonicalJSONError("a time must carry its time zone")
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
        f".{v.microsecond:06d}Z"
    )


def es_number(value: float) -> str:
    """``value`` as ECMAScript's Number.prototype.toString prints it (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(value):
        raise CanonicalJSONError(f"{value!r} is not a JSON number")
    if value == 0:
        return "0"
    text = repr(value)
    if "e" not in text:  # 1e-4 <= |value| < 1e16: the same shortest digits, fixed notation
        return text[:-2] if text.endswith(".0") else text
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)  # trailing zeros moved into the exponent
    digits = digits.lstrip("0")
    k = len(digits)
    n = k + exponent  # value = 0.<digits> * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


_SCALARS = (str, bool, type(None))


def _prepare(value: Any, depth: int) -> Any:
    """``value`` with every float as its ECMAScript text (an orjson Fragment) and every object
    rebuilt in canonical key order; checks types and ranges on the way."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _PathError(f"{value!r} is not a JSON number")
        return orjson.Fragment(es_number(value))
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise _PathError(f"integer {value} is not exact in I-JSON (> 2**53 - 1)")
    if depth >= MAX_DEPTH:
        raise _PathError(f"nested deeper than {MAX_DEPTH}")
    if kind is dict or isinstance(value, Mapping):
        keys = list(value)
        try:
            ascii_keys = "".join(keys).isascii()
        except TypeError:  # a key that is not a string
            ascii_keys = False
        if ascii_keys:
            keys.sort()  # ASCII: code point order is UTF-16 order
        else:
            for key in keys:
                if not isinstance(key, str):
                    raise _PathError(f"object key {key!r} is not a string")
            keys.sort(key=_utf16_key)
        out = {}
        for key in keys:
            try:
                out[str.__str__(key)] = _prepare(value[key], depth + 1)
            except _PathError as exc:
                exc.path.append(f".{key}")
                raise
        return out
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_prepare(v, depth + 1))
            except _PathError as exc:
                exc.path.append(f"[{i}]")
                raise
        return items
    if isinstance(value, str):  # str subclasses (StrEnum)
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):  # int subclasses (IntEnum)
        return _prepare(int(value), depth)
    if isinstance(value, float):
        return _prepare(float(value), depth)
    if isinstance(value, datetime):
        try:
            return format_time(value)
        except CanonicalJSONError as exc:
            raise _PathError(str(exc)) from None
    raise _PathError(f"{type(value).__name__} is not a JSON value")
