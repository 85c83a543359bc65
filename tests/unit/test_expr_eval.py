"""Evaluation of compiled expressions: operators, null semantics, short-circuit and folding."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from riskguard.engine.expr import CompiledExpr, compile_expression, default_functions

SCHEMA: Mapping[str, str] = {
    "data.amount": "number",
    "data.fee": "number",
    "data.channel": "string",
    "data.currency": "string",
    "data.success": "bool",
    "data.flagged": "bool",
    "context.geo.country": "string",
    "features.account_tx.count_5m": "number",
    "hour": "number",
    "type": "string",
}

ENV: Mapping[str, Any] = {
    "data.amount": 2500.0,
    "data.fee": 4,
    "data.channel": "web",
    "data.currency": "EUR",
    "data.success": True,
    "data.flagged": False,
    "context.geo.country": "ZA",
    "features.account_tx.count_5m": 3,
    "hour": 2,
    "type": "transaction",
}


def compile_(source: str) -> CompiledExpr:
    return compile_expression(source, schema=SCHEMA, functions=default_functions())


def evaluate(source: str, env: Mapping[str, Any] = ENV) -> Any:
    return compile_(source).fn(env)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # arithmetic
        ("data.amount + data.fee", 2504.0),
        ("data.amount - 500", 2000.0),
        ("data.fee * 2.5", 10.0),
        ("data.fee / 8", 0.5),
        ("7 / 2", 3.5),
        ("data.fee % 3", 1),
        ("-7 % 3", 2),  # the result has the sign of the divisor
        ("7 % -3", -2),
        ("7.5 % 2", 1.5),
        ("-data.fee", -4),
        ("--data.fee", 4),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("12 / 2 / 3", 2.0),
        ("2 * -3", -6),
        ("data.channel + '-' + data.currency", "web-EUR"),
        ("'a' + 'b'", "ab"),
        # ordering, numbers and strings
        ("data.amount > 1000", True),
        ("data.amount > 2500", False),
        ("data.amount >= 2500", True),
        ("data.amount < 2500", False),
        ("data.amount <= 2500", True),
        ("1000 < data.amount", True),
        ("2500 <= data.amount", True),
        ("3000 > data.amount", True),
        ("2500 >= data.amount", True),
        ("data.amount + 1 > data.fee * 1000", False),
        ("data.fee < data.amount", True),
        ("data.channel < 'xyz'", True),
        ("'abc' < data.channel", True),
        ("'B' < 'a'", True),  # code point order
        ("data.currency >= data.channel", False),
        # equality
        ("data.channel == 'web'", True),
        ("'web' == data.channel", True),
        ("data.channel != 'web'", False),
        ("data.fee == 4.0", True),  # integers and floats are one number type
        ("data.success == true", True),
        ("data.flagged != false", False),
        ("data.amount == data.amount", True),
        ("data.channel != data.currency", True),
        ("[1, 2] == [1, 2]", True),
        ("['a'] != ['b']", True),
        # membership
        ("context.geo.country in ['ZA', 'NG']", True),
        ("context.geo.country in ['KP', 'IR']", False),
        ("data.fee in [1, 4.0]", True),
        ("lower(data.currency) in ['eur']", True),
        ("data.fee * 2 in [8]", True),
        # logic
        ("data.success && data.amount > 1000", True),
        ("data.flagged || data.amount > 1000", True),
        ("data.flagged || data.amount > 9000", False),
        ("!data.flagged", True),
        ("!data.success", False),
        ("!(data.amount > 1000)", False),
        ("data.success && data.flagged", False),
        ("data.success && !data.flagged && hour < 6", True),
        ("data.flagged || data.flagged || data.success", True),
        ("data.flagged || data.flagged || data.flagged", False),
        ("true || false && false", True),  # && binds tighter
        ("(true || false) && false", False),
        ("!true == false", True),  # ! binds tighter than ==
        # bare values
        ("data.amount", 2500.0),
        ("data.channel", "web"),
        ("data.success", True),
        ("[1, 2]", (1, 2)),
        ("null", None),
    ],
)
def test_operators(source: str, expected: Any) -> None:
    result = evaluate(source)
    assert result == expected
    assert type(result) is type(expected)


MISSING: Mapping[str, Any] = {}
EXPLICIT_NULLS: Mapping[str, Any] = dict.fromkeys(SCHEMA)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # a missing field is null
        ("data.amount", None),
        ("data.amount == null", True),
        ("data.amount != null", False),
        ("null == data.channel", True),
        ("data.amount == data.fee", True),  # null == null
        ("data.amount == 1", False),
        ("data.amount != 1", True),
        ("data.channel != 'web'", True),
        # comparisons with null are false, whichever way round
        ("data.amount > 1000", False),
        ("data.amount <= 1000", False),
        ("data.amount < 1000", False),
        ("data.amount >= 1000", False),
        ("1000 > data.amount", False),
        ("data.amount + 1 > 0", False),
        ("data.amount > data.fee", False),
        ("data.amount < -data.fee", False),
        ("1 < data.fee || 1 >= data.fee", False),
        ("data.channel > 'a'", False),
        ("null < 1", False),
        ("null >= null", False),
        ("context.geo.country in ['ZA']", False),
        ("null in [1]", False),
        ("data.channel in null", False),
        # arithmetic with null is null
        ("data.amount + 1", None),
        ("1 - data.amount", None),
        ("data.amount * data.fee", None),
        ("-data.amount", None),
        ("data.channel + 'x'", None),
        ("'x' + data.channel", None),
        ("null + 1", None),
        ("data.amount / 2", None),
        ("2 % data.amount", None),
        # && || ! treat null as false and always give a bool
        ("data.success", None),
        ("!data.success", True),
        ("!!data.success", False),
        ("data.success && true", False),
        ("true && data.success", False),
        ("data.success || true", True),
        ("data.success || false", False),
        ("data.success || data.flagged", False),
        ("data.success && data.flagged && true", False),
        ("null && true", False),
        ("null || true", True),
        ("!null", True),
        # functions return null, or false for predicates
        ("abs(data.amount)", None),
        ("lower(data.channel)", None),
        ("len(data.channel)", None),
        ("starts_with(data.channel, 'w')", False),
        ("has(data.amount)", False),
        ("!has(data.amount)", True),
    ],
)
@pytest.mark.parametrize("env", [MISSING, EXPLICIT_NULLS], ids=["missing", "explicit-null"])
def test_null_semantics(source: str, expected: Any, env: Mapping[str, Any]) -> None:
    result = evaluate(source, env)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("data.amount / 0", None),
        ("data.amount % 0", None),
        ("data.amount / data.fee", None),
        ("data.amount % data.fee", None),
        ("data.amount / (data.fee * 4)", None),
        ("data.amount / -0.0", None),
        ("1 / 0", None),
        ("1 % 0.0", None),
        ("1 / 0 > 1", False),
    ],
)
def test_division_by_zero_is_null(source: str, expected: Any) -> None:
    assert evaluate(source, {"data.amount": 10, "data.fee": 0}) == expected


@pytest.mark.parametrize(
    ("source", "env", "expected"),
    [
        # An integer beyond the float range meeting a float: Python raises, we give null.
        ("data.amount / 3", {"data.amount": 10**400}, None),
        ("data.amount + 0.5", {"data.amount": 10**400}, None),
        ("data.amount * 1.5", {"data.amount": 10**400}, None),
        ("data.amount - 0.5", {"data.amount": 10**400}, None),
        ("data.amount % 1.5", {"data.amount": 10**400}, None),
        ("data.amount + 1 > 10", {"data.amount": 10**400}, True),  # ints stay exact
        ("data.amount > 1e308", {"data.amount": 10**400}, True),
        ("data.amount * 10 > 1e308", {"data.amount": 1e308}, True),  # float overflow is inf
        ("data.amount > 0 || data.amount <= 0", {"data.amount": math.nan}, False),
    ],
)
def test_extreme_numbers_never_raise(source: str, env: Mapping[str, Any], expected: Any) -> None:
    assert evaluate(source, env) == expected


class ExplodingEnv(dict[str, Any]):
    """An environment that fails the test if a path marked as forbidden is read."""

    def __init__(self, values: Mapping[str, Any], forbidden: str) -> None:
        super().__init__(values)
        self.forbidden = forbidden

    def get(self, key: str, default: Any = None) -> Any:
        assert key != self.forbidden, f"{key} was evaluated"
        return super().get(key, default)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("data.flagged && data.amount > 1", False),
        ("data.success || data.amount > 1", True),
        ("data.channel == 'web' || data.amount > 1", True),
        ("hour > 12 && data.amount > 1", False),
        ("data.flagged && hour < 6 && data.amount > 1", False),
        ("data.success || data.flagged || data.amount > 1", True),
        ("hour < 6 && (data.flagged && data.amount > 1)", False),
        ("data.fee > 1 || data.flagged && data.amount > 1", True),
        ("data.missing && data.amount > 1", False),  # null counts as false
        ("false && data.amount > 1", False),
        ("true || data.amount > 1", True),
    ],
)
def test_and_or_short_circuit(source: str, expected: bool) -> None:
    schema = {**SCHEMA, "data.missing": "bool"}
    compiled = compile_expression(source, schema=schema, functions=default_functions())
    env = ExplodingEnv(ENV, forbidden="data.amount")
    assert compiled.fn(env) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("-(2 + 3)", -5),
        ("'a' + 'b' == 'ab'", True),
        ("1 < 2 && 'b' > 'a'", True),
        ("[1, 2] == [1, 2]", True),
        ("2 in [1, 2]", True),
        ("abs(-3) + max(1, 2)", 5),
        ("upper('x')", "X"),
        ("in_cidr('10.1.2.3', '10.0.0.0/8')", True),
        ("distance_km(0, 0, 0, 0)", 0.0),
        ("false && data.amount > 1", False),  # a deciding constant folds the whole chain
        ("data.amount > 1 && false", False),
        ("data.amount > 1 || true", True),
        ("data.amount + null", None),
        ("data.amount / 0", None),
        ("data.amount < null", False),
        ("null in [1]", False),
        ("abs(null)", None),
        ("contains(data.channel, null)", False),
    ],
)
def test_constant_folding(source: str, expected: Any) -> None:
    compiled = compile_(source)
    # A folded expression reads nothing: this env fails the test on any read.
    assert compiled.fn(ExplodingEnv({}, forbidden="data.amount")) == expected
    assert compiled.fn.__name__ == "constant"


def test_constants_that_do_not_decide_are_dropped() -> None:
    assert evaluate("true && data.success && true") is True
    assert evaluate("false || data.flagged || null") is False
    assert evaluate("true && data.success", MISSING) is False  # still a bool, never null


def test_literal_on_either_side_gives_the_same_result() -> None:
    for amount in (999, 1000, 1001, None):
        env = {} if amount is None else {"data.amount": amount}
        for op, flipped in (("<", ">"), ("<=", ">="), ("==", "=="), ("!=", "!=")):
            assert evaluate(f"data.amount {op} 1000", env) == evaluate(
                f"1000 {flipped} data.amount", env
            ), (op, amount)


def test_comparisons_and_logic_always_give_bools() -> None:
    sources = [
        "data.amount > 1",
        "data.amount + 0 > 1",
        "data.amount == 1",
        "data.channel in ['web']",
        "!data.success",
        "data.success && data.flagged",
        "data.success || data.flagged",
        "has(data.amount)",
        "starts_with(data.channel, 'w')",
    ]
    for source in sources:
        for env in (ENV, MISSING, EXPLICIT_NULLS):
            assert type(evaluate(source, env)) is bool, (source, env)


def test_evaluation_accepts_any_mapping() -> None:
    from types import MappingProxyType

    assert evaluate("data.amount > 1000", MappingProxyType(dict(ENV))) is True


def test_string_escapes_evaluate_to_their_characters() -> None:
    schema = {"data.note": "string"}
    compiled = compile_expression(
        r"data.note == 'tab\there, \'quoted\', \"double\", back\\slash\nnext line'",
        schema=schema,
        functions=default_functions(),
    )
    assert compiled.fn({"data.note": "tab\there, 'quoted', \"double\", back\\slash\nnext line"})
