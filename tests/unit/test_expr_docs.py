"""docs/expressions.md stays true: its error examples and its function table match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from riskguard.engine.events import FIELD_TYPES
from riskguard.engine.expr import ExprError, compile_expression, default_functions

DOC = Path(__file__).resolve().parents[2] / "docs" / "expressions.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_documented_error_messages_are_the_real_ones() -> None:
    block = _section("Error messages").split("```text\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    assert len(lines) % 2 == 0
    schema = {**FIELD_TYPES["transaction"], "features.account_tx.count_5m": "number"}
    lists = {"sanctioned_countries": frozenset({"KP", "IR"})}
    for source, shown in zip(lines[::2], lines[1::2], strict=True):
        with pytest.raises(ExprError) as caught:
            compile_expression(source, schema=schema, functions=default_functions(), lists=lists)
        assert shown.strip() == str(caught.value), source


def test_every_builtin_function_is_documented() -> None:
    documented = set(re.findall(r"^\| `(\w+)\(", _section("Functions"), flags=re.MULTILINE))
    assert documented == set(default_functions().names())
