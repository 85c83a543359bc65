"""Static typing of rule expressions: result types, type errors and their positions."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from riskguard.engine.expr import (
    CompiledExpr,
    ExprError,
    ExprType,
    compile_expression,
    default_functions,
)

SCHEMA: Mapping[str, str] = {
    "data.amount": "number",
    "data.account_id": "string",
    "data.channel": "string",
    "data.success": "bool",
    "context.ip": "string",
    "context.geo.country": "string",
    "features.account_tx.count_5m": "number",
    "hour": "number",
    "type": "string",
}
LISTS: Mapping[str, frozenset[str] | frozenset[float]] = {
    "countries": frozenset({"KP", "IR"}),
    "amounts": frozenset({1.0, 2.5}),
    "empty": frozenset(),
}


def compile_(source: str) -> CompiledExpr:
    return compile_expression(source, schema=SCHEMA, functions=default_functions(), lists=LISTS)


N, S, B, NULL = ExprType.NUMBER, ExprType.STRING, ExprType.BOOL, ExprType.NULL


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1", N),
        ("-1.5", N),
        ("'a'", S),
        ("true", B),
        ("null", NULL),
        ("[1, 2]", ExprType.LIST_NUMBER),
        ("['a']", ExprType.LIST_STRING),
        ("data.amount", N),
        ("data.channel", S),
        ("data.success", B),
        ("data.amount + 1", N),
        ("data.channel + '!'", S),
        ("null + 1", N),
        ("'a' + null", S),
        ("null + null", NULL),
        ("-null", N),
        ("data.amount % 7", N),
        ("data.amount > 1", B),
        ("'a' <= data.channel", B),
        ("data.success == true", B),
        ("data.amount == null", B),
        ("null == null", B),
        ("[1] == [2]", B),
        ("type in ['login', 'session']", B),
        ("null in [1]", B),
        ("data.channel in null", B),
        ("!data.success", B),
        ("!null", B),
        ("data.success && null || false", B),
        ("null < 3", B),
        ("abs(data.amount)", N),
        ("abs(null)", N),
        ("lower(data.channel)", S),
        ("len(data.channel)", N),
        ("starts_with(data.channel, 'w')", B),
        ("has(data.amount)", B),
        ("in_list(data.amount, 'amounts')", B),
        ("in_list(data.channel, 'empty')", B),
        ("in_list(null, 'countries')", B),
        ("in_cidr(context.ip, '10.0.0.0/8')", B),
        ("distance_km(1, 2, 3, data.amount)", N),
    ],
)
def test_result_types(source: str, expected: ExprType) -> None:
    assert compile_(source).type is expected


@pytest.mark.parametrize(
    ("source", "position", "message", "expected"),
    [
        # arithmetic
        ("1 + 'a'", 4, "operands of '+' have types number and string", "number"),
        ("'a' + 1", 6, "operands of '+' have types string and number", "string"),
        ("true + 1", 0, "operand of '+' has type bool", "number or string"),
        ("1 + true", 4, "operand of '+' has type bool", "number"),
        ("null + true", 7, "operand of '+' has type bool", "number or string"),
        ("[1] + [2]", 0, "operand of '+' has type list of numbers", "number or string"),
        ("'a' - 1", 0, "operand of '-' has type string", "number"),
        ("data.amount * data.channel", 14, "operand of '*' has type string", "number"),
        ("data.amount / true", 14, "operand of '/' has type bool", "number"),
        ("hour % 'x'", 7, "operand of '%' has type string", "number"),
        ("-'a'", 1, "operand of '-' has type string", "number"),
        ("-data.success", 1, "operand of '-' has type bool", "number"),
        # logic
        ("!1", 1, "operand of '!' has type number", "bool"),
        ("!data.channel", 1, "operand of '!' has type string", "bool"),
        ("1 && true", 0, "operand of '&&' has type number", "bool"),
        ("true || 'x'", 8, "operand of '||' has type string", "bool"),
        ("data.success && data.amount || true", 16, "operand of '&&' has type number", "bool"),
        # ordering
        ("1 < 'a'", 4, "operands of '<' have types number and string", "number"),
        ("data.channel >= 3", 16, "operands of '>=' have types string and number", "string"),
        ("true < false", 0, "operand of '<' has type bool", "number or string"),
        ("1 > false", 4, "operand of '>' has type bool", "number"),
        ("null <= true", 8, "operand of '<=' has type bool", "number or string"),
        # equality
        ("1 == 'a'", 5, "cannot compare number with string using '=='", "number"),
        ("data.success != 1", 16, "cannot compare bool with number using '!='", "bool"),
        (
            "[1] == ['a']",
            7,
            "cannot compare list of numbers with list of strings",
            "list of numbers",
        ),
        # membership
        ("1 in ['a']", 0, "left operand of 'in' has type number, the list holds strings", "string"),
        ("data.channel in [1, 2]", 0, "left operand of 'in' has type string", "number"),
        ("true in null", 0, "operand of 'in' has type bool", "number or string"),
        ("1 in 2", 5, "right operand of 'in' has type number", "a list, e.g. [1, 2]"),
        ("'a' in 'abc'", 7, "right operand of 'in' has type string", "a list, e.g. [1, 2]"),
        # lists
        ("[]", 0, "empty list", "at least one element"),
        ("[1, 'a']", 4, "list element has type string, the list holds numbers", "number"),
        ("['a', 'b', 3]", 11, "list element has type number, the list holds strings", "string"),
        ("[true]", 1, "list element has type bool", "number or string"),
        ("[null]", 1, "list element has type null", "number or string"),
        ("[[1]]", 1, "list element has type list of numbers", "number or string"),
        ("[data.amount]", 1, "list elements must be literals", "a literal"),
        ("hour in [1, hour]", 12, "list elements must be literals", "a literal"),
        # fields
        (
            "data.amout > 1",
            0,
            "unknown field 'data.amout'",
            "'data.amount' or 'data.account_id'",
        ),
        ("lower == 'x'", 0, "unknown field 'lower'", "a call such as lower(...)"),
        (
            "1 < data.acount_id",
            4,
            "unknown field 'data.acount_id'",
            "'data.account_id' or 'data.amount'",
        ),
        ("zzz", 0, "unknown field 'zzz'", ""),
        ("data", 0, "unknown field 'data'", ""),
        # calls
        ("lowr(data.channel)", 0, "unknown function 'lowr'", "'lower'"),
        ("lowercase(data.channel)", 0, "unknown function 'lowercase'", "'lower'"),
        ("frobnicate()", 0, "unknown function 'frobnicate'", ""),
        ("abs('x')", 4, "argument 1 of 'abs' has type string", "number"),
        ("max(1, 'x')", 7, "argument 2 of 'max' has type string", "number"),
        (
            "starts_with(data.channel, 1)",
            26,
            "argument 2 of 'starts_with' has type number",
            "string",
        ),
        ("abs(1, 2)", 7, "'abs' takes 1 argument, got 2", "1 argument"),
        ("min(1)", 0, "'min' takes 2 arguments, got 1", "2 arguments"),
        ("lower()", 0, "'lower' takes 1 argument, got 0", "1 argument"),
        ("in_cidr(1, '10.0.0.0/8')", 8, "argument 1 of 'in_cidr' has type number", "string"),
        ("in_list(1, 'nope')", 11, "unknown list 'nope'", "one of 'amounts', 'countries', 'empty'"),
        ("in_list('x', 'countrys')", 13, "unknown list 'countrys'", "'countries'"),
        (
            "in_list(data.amount, 'countries')",
            8,
            "list 'countries' holds strings, the value has type number",
            "string",
        ),
        (
            "in_list(data.channel, 'amounts')",
            8,
            "list 'amounts' holds numbers, the value has type string",
            "number",
        ),
        ("in_list(true, 'empty')", 8, "argument 1 of 'in_list' has type bool", "number or string"),
        (
            "in_list('x', data.channel)",
            13,
            "the second argument of 'in_list' must be a literal",
            "a list name in quotes, e.g. 'blocked_countries'",
        ),
        (
            "in_list('x', null)",
            13,
            "the second argument of 'in_list' must be a literal",
            "a list name in quotes, e.g. 'blocked_countries'",
        ),
        (
            "in_cidr(context.ip, data.channel)",
            20,
            "the second argument of 'in_cidr' must be a literal",
            "a network in quotes, e.g. '10.0.0.0/8'",
        ),
        (
            "in_cidr(context.ip, '10.0.0.1/8')",
            20,
            "invalid network '10.0.0.1/8': 10.0.0.1/8 has host bits set",
            "a network in quotes, e.g. '10.0.0.0/8'",
        ),
        (
            "in_cidr(context.ip, 'banana')",
            20,
            "invalid network 'banana'",
            "a network in quotes, e.g. '10.0.0.0/8'",
        ),
        (
            "has(1)",
            4,
            "the argument of 'has' must be a field path",
            "a field path, e.g. data.channel",
        ),
        (
            "has(lower(data.channel))",
            4,
            "the argument of 'has' must be a field path",
            "a field path, e.g. data.channel",
        ),
        ("has(data.nope)", 4, "unknown field 'data.nope'", ""),
        ("has(data.amount, 1)", 17, "'has' takes 1 argument, got 2", "1 argument"),
    ],
)
def test_type_errors(source: str, position: int, message: str, expected: str) -> None:
    with pytest.raises(ExprError) as caught:
        compile_(source)
    error = caught.value
    assert (error.position, error.expected) == (position, expected), str(error)
    assert error.message.startswith(message), str(error)


def test_type_error_text() -> None:
    with pytest.raises(ExprError) as caught:
        compile_("data.amount > 1000 && data.channel")
    assert str(caught.value) == ("at position 22: operand of '&&' has type string (expected bool)")


def test_unknown_list_when_no_lists_are_configured() -> None:
    with pytest.raises(ExprError) as caught:
        compile_expression("in_list(1, 'x')", schema=SCHEMA, functions=default_functions())
    assert (caught.value.position, caught.value.expected) == (11, "a configured list")


def test_callable_schema() -> None:
    def schema(path: str) -> str | None:
        return "number" if path.startswith("features.") else None

    compiled = compile_expression(
        "features.a.count_5m + features.b.sum_1h > 3", schema=schema, functions=default_functions()
    )
    assert compiled.fields == {"features.a.count_5m", "features.b.sum_1h"}
    with pytest.raises(ExprError) as caught:
        compile_expression("data.amount > 1", schema=schema, functions=default_functions())
    # A callable schema cannot list its fields, so there is no suggestion.
    assert (caught.value.message, caught.value.expected) == ("unknown field 'data.amount'", "")


def test_schema_with_an_unsupported_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"'data\.when' the type 'datetime'"):
        compile_expression(
            "data.when > 1", schema={"data.when": "datetime"}, functions=default_functions()
        )


def test_fields_lists_every_path_read_once() -> None:
    compiled = compile_(
        "data.amount > 1000 && features.account_tx.count_5m >= 3 || has(context.ip)"
        " || data.amount < 0 || in_list(context.geo.country, 'countries')"
    )
    assert compiled.fields == {
        "data.amount",
        "features.account_tx.count_5m",
        "context.ip",
        "context.geo.country",
    }
    assert compile_("1 + 2").fields == frozenset()


def test_compiled_expression_keeps_its_source() -> None:
    source = "hour < 6"
    assert compile_(source).source == source
