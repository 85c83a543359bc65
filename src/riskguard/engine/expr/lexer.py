"""Split expression source into tokens, each with its 0-based character position."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Final

from riskguard.engine.expr.errors import ExprError

KEYWORDS: Final[frozenset[str]] = frozenset({"true", "false", "null", "in"})

# Token kinds that are not the token's own text (operators, punctuation and keywords are).
NUMBER: Final = "number"
STRING: Final = "string"
IDENT: Final = "ident"
END: Final = "end"

_TOKEN_RE: Final = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>\|\||&&|==|!=|<=|>=|[<>+\-*/%!()\[\],.])
    | (?P<quote>["'])
    """,
    re.VERBOSE | re.ASCII,
)

# A number running straight into one of these ("1e", "3in", "1.2.3") is a typo, not two tokens.
_NUMBER_TAIL: Final = re.compile(r"[A-Za-z0-9_.]", re.ASCII)

_ESCAPES: Final[dict[str, str]] = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}

# Common slips from other languages get a pointed hint instead of "unexpected character".
_HINTS: Final[dict[str, str]] = {
    "=": "'==' to compare",
    "&": "'&&'",
    "|": "'||'",
}

# Integer literals longer than this cannot be below the largest double; checking the length first
# keeps int() away from huge digit strings (and from the interpreter's int-conversion limit).
_MAX_INT_DIGITS: Final = 310


@dataclass(frozen=True, slots=True)
class Token:
    """One token: ``kind`` is number/string/ident/end, or the operator or keyword text itself."""

    kind: str
    text: str
    position: int
    value: int | float | str | None = None

    def describe(self) -> str:
        """The token as an error message shows it, e.g. "')'" or "end of expression"."""
        if self.kind == END:
            return "end of expression"
        text = self.text if len(self.text) <= 24 else self.text[:21] + "..."
        if self.kind in (NUMBER, STRING):
            return f"{self.kind} {text}"
        return f"'{text}'"


def tokenize(source: str) -> list[Token]:
    """Split ``source`` into tokens ending with an END token; raise ExprError on a lexical error."""
    tokens: list[Token] = []
    position = 0
    length = len(source)
    while position < length:
        match = _TOKEN_RE.match(source, position)
        if match is None:
            char = source[position]
            raise ExprError(position, f"unexpected character {char!r}", _HINTS.get(char, ""))
        group = match.lastgroup
        text = match.group()
        if group == "number":
            tokens.append(Token(NUMBER, text, position, _number_value(source, text, position)))
        elif group == "ident":
            kind = text if text in KEYWORDS else IDENT
            tokens.append(Token(kind, text, position))
        elif group == "op":
            tokens.append(Token(text, text, position))
        elif group == "quote":
            value, end = _scan_string(source, position)
            tokens.append(Token(STRING, source[position:end], position, value))
            position = end
            continue
        position = match.end()
    tokens.append(Token(END, "", length))
    return tokens


def _number_value(source: str, text: str, position: int) -> int | float:
    end = position + len(text)
    if _NUMBER_TAIL.match(source, end):
        raise ExprError(position, f"malformed number {source[position : end + 1]!r}", "a number")
    if "." in text or "e" in text or "E" in text:
        value = float(text)
        if value == float("inf"):
            raise ExprError(position, f"number {text} is out of range", "a finite number")
        return value
    if len(text) > _MAX_INT_DIGITS or int(text) > sys.float_info.max:
        raise ExprError(position, "number is out of range", "a finite number")
    return int(text)


def _scan_string(source: str, start: int) -> tuple[str, int]:
    """Decode the string literal opening at ``start``; return its value and the end offset."""
    quote = source[start]
    parts: list[str] = []
    index = start + 1
    length = len(source)
    while index < length:
        char = source[index]
        if char == quote:
            return "".join(parts), index + 1
        if char == "\\":
            escape = source[index + 1 : index + 2]
            if not escape:
                break
            if escape not in _ESCAPES:
                raise ExprError(index, f"unknown escape '\\{escape}'", r"one of \\ \" \' \n \t")
            parts.append(_ESCAPES[escape])
            index += 2
            continue
        parts.append(char)
        index += 1
    raise ExprError(start, "unterminated string", f"a closing {quote}")
