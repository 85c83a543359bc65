"""The function registry and each built-in function, including null inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from riskguard.engine.expr import (
    CallSite,
    Evaluator,
    ExprError,
    ExprType,
    Function,
    FunctionRegistry,
    compile_expression,
    default_functions,
)

SCHEMA: Mapping[str, str] = {
    "a": "number",
    "b": "number",
    "s": "string",
    "t": "string",
    "ip": "string",
    "lat1": "number",
    "lon1": "number",
    "lat2": "number",
    "lon2": "number",
    "flag": "bool",
}
LISTS: Mapping[str, frozenset[str] | frozenset[float]] = {
    "countries": frozenset({"KP", "IR"}),
    "bins": frozenset({411111.0, 555555}),
    "empty": frozenset(),
}
BUILTINS = [
    "abs",
    "contains",
    "distance_km",
    "ends_with",
    "has",
    "in_cidr",
    "in_list",
    "len",
    "lower",
    "max",
    "min",
    "starts_with",
    "upper",
]


def run(source: str, env: Mapping[str, Any], registry: FunctionRegistry | None = None) -> Any:
    compiled = compile_expression(
        source, schema=SCHEMA, functions=registry or default_functions(), lists=LISTS
    )
    return compiled.fn(env)


Case = tuple[str, Mapping[str, Any], Any]


def check(cases: list[Case]) -> None:
    """Each source evaluates to exactly the expected value (and type) in its env."""
    for source, env, expected in cases:
        result = run(source, env)
        assert result == expected, (source, env, result)
        assert type(result) is type(expected), (source, env, result)


def test_abs() -> None:
    check([("abs(a)", {"a": -3}, 3), ("abs(a)", {"a": 2.5}, 2.5), ("abs(a)", {}, None)])


def test_min() -> None:
    check(
        [
            ("min(a, b)", {"a": 1, "b": 2}, 1),
            ("min(a, 0.5)", {"a": 1}, 0.5),
            ("min(a, b)", {"a": 1}, None),
            ("min(a, b)", {"b": 1}, None),
        ]
    )


def test_max() -> None:
    check(
        [
            ("max(a, b)", {"a": 1, "b": 2}, 2),
            ("max(-1, a)", {"a": -5}, -1),
            ("max(a, b)", {"a": None, "b": 2}, None),
        ]
    )


def test_lower() -> None:
    check([("lower(s)", {"s": "AbC"}, "abc"), ("lower(s)", {}, None)])


def test_upper() -> None:
    check([("upper(s)", {"s": "AbC"}, "ABC"), ("upper(s) == 'X'", {}, False)])


def test_starts_with() -> None:
    check(
        [
            ("starts_with(s, 'ab')", {"s": "abc"}, True),
            ("starts_with(s, 'bc')", {"s": "abc"}, False),
            ("starts_with(s, t)", {"s": "abc", "t": ""}, True),
            ("starts_with(s, t)", {"s": "abc"}, False),
            ("starts_with(s, 'a')", {}, False),
        ]
    )


def test_ends_with() -> None:
    check(
        [
            ("ends_with(s, 'bc')", {"s": "abc"}, True),
            ("ends_with(s, 'ab')", {"s": "abc"}, False),
            ("ends_with(s, 'c')", {}, False),
        ]
    )


def test_contains() -> None:
    check(
        [
            ("contains(s, 'b')", {"s": "abc"}, True),
            ("contains(s, 'x')", {"s": "abc"}, False),
            ("contains('abc', s)", {"s": "bc"}, True),
            ("contains(s, t)", {"t": "x"}, False),
        ]
    )


def test_len() -> None:
    check([("len(s)", {"s": "héllo"}, 5), ("len(s)", {"s": ""}, 0), ("len(s) > 3", {}, False)])


def test_distance_km() -> None:
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    env = dict(zip(("lat1", "lon1", "lat2", "lon2"), (*london, *paris), strict=True))
    source = "distance_km(lat1, lon1, lat2, lon2)"
    assert run(source, env) == pytest.approx(343.56, abs=0.05)
    # A quarter of the way around the equator, and antipodes: rounding must not leave asin's domain.
    assert run("distance_km(0, 0, 0, 90)", {}) == pytest.approx(6371.0088 * 3.141592653589793 / 2)
    assert run("distance_km(0, 0, 0, 180)", {}) == pytest.approx(6371.0088 * 3.141592653589793)
    assert run("distance_km(90, 0, -90, 0)", {}) == pytest.approx(6371.0088 * 3.141592653589793)
    assert run(source, {**env, "lat2": None}) is None
    assert run(source, {"lat1": 1, "lon1": 2}) is None
    # Out-of-range or non-finite coordinates give null, never an exception.
    bad_coordinates = [
        ("lat2", 90.5),
        ("lat1", -90.01),
        ("lon2", -181),
        ("lon1", 180.5),
        ("lon2", 10**400),
        ("lat2", float("inf")),
        ("lon1", float("nan")),
    ]
    for field, bad in bad_coordinates:
        assert run(source, {**env, field: bad}) is None, (field, bad)


def test_in_list() -> None:
    check(
        [
            ("in_list(s, 'countries')", {"s": "KP"}, True),
            ("in_list(s, 'countries')", {"s": "ZA"}, False),
            ("in_list(s, 'countries')", {}, False),
            ("in_list(lower(s), 'countries')", {"s": "KP"}, False),
            ("in_list(upper(s), 'countries')", {"s": "ir"}, True),
            ("in_list(a, 'bins')", {"a": 411111}, True),
            ("in_list(a, 'bins')", {"a": 555555.0}, True),
            ("in_list(a, 'bins')", {"a": 1}, False),
            ("in_list(a, 'empty')", {"a": 1}, False),
            ("in_list(s, 'empty')", {"s": "x"}, False),
            ("in_list('KP', 'countries')", {}, True),
        ]
    )


def test_in_list_with_an_unknown_list_points_at_the_name() -> None:
    with pytest.raises(ExprError) as caught:
        run("flag || in_list(s, 'contries')", {})
    error = caught.value
    assert (error.position, error.message, error.expected) == (
        19,
        "unknown list 'contries'",
        "'countries'",
    )


def test_in_list_refuses_a_list_of_other_values() -> None:
    with pytest.raises(ValueError, match="neither a number nor a string"):
        compile_expression(
            "in_list(s, 'odd')",
            schema=SCHEMA,
            functions=default_functions(),
            lists={"odd": frozenset({True})},
        )


def test_in_cidr() -> None:
    check(
        [
            ("in_cidr(ip, '10.0.0.0/8')", {"ip": "10.20.30.40"}, True),
            ("in_cidr(ip, '10.0.0.0/8')", {"ip": "11.0.0.1"}, False),
            ("in_cidr(ip, '196.25.1.9')", {"ip": "196.25.1.9"}, True),
            ("in_cidr(ip, '196.25.1.9/32')", {"ip": "196.25.1.8"}, False),
            ("in_cidr(ip, '0.0.0.0/0')", {"ip": "8.8.8.8"}, True),
            ("in_cidr(ip, '2001:db8::/32')", {"ip": "2001:db8::1"}, True),
            ("in_cidr(ip, '2001:db8::/32')", {"ip": "2001:db9::1"}, False),
            ("in_cidr(ip, '::/0')", {"ip": "10.0.0.1"}, False),  # versions never mix
            ("in_cidr(ip, '0.0.0.0/0')", {"ip": "::1"}, False),
            ("in_cidr(ip, '10.0.0.0/8')", {"ip": "not an ip"}, False),
            ("in_cidr(ip, '10.0.0.0/8')", {"ip": ""}, False),
            ("in_cidr(ip, '10.0.0.0/8')", {"ip": "10.0.0.256"}, False),
            ("in_cidr(ip, '10.0.0.0/8')", {}, False),
            ("in_cidr(lower(ip), '2001:db8::/32')", {"ip": "2001:DB8::1"}, True),
        ]
    )


def test_in_cidr_repeated_addresses_give_the_same_answer() -> None:
    compiled = compile_expression(
        "in_cidr(ip, '10.0.0.0/8')", schema=SCHEMA, functions=default_functions()
    )
    for _ in range(3):
        assert compiled.fn({"ip": "10.1.1.1"}) is True
        assert compiled.fn({"ip": "x"}) is False


def test_has() -> None:
    check(
        [
            ("has(a)", {"a": 0}, True),
            ("has(s)", {"s": ""}, True),
            ("has(flag)", {"flag": False}, True),
            ("has(a)", {}, False),
            ("has(a)", {"a": None}, False),
        ]
    )


def test_default_functions_are_the_documented_builtins() -> None:
    assert default_functions().names() == BUILTINS


def test_default_functions_returns_a_new_registry_each_call() -> None:
    first = default_functions()
    first.register(Function("double", (ExprType.NUMBER,), ExprType.NUMBER, lambda x: 2 * x))
    assert default_functions().get("double") is None


def test_registry_refuses_duplicate_names() -> None:
    registry = default_functions()
    with pytest.raises(ValueError, match="'abs' is already registered"):
        registry.register(Function("abs", (ExprType.NUMBER,), ExprType.NUMBER, abs))


def test_registry_lookup() -> None:
    registry = FunctionRegistry()
    assert registry.names() == []
    assert registry.get("abs") is None
    fn = Function("abs", (ExprType.NUMBER,), ExprType.NUMBER, abs)
    registry.register(fn)
    assert registry.get("abs") is fn


@pytest.mark.parametrize("name", ["", "1abs", "a-b", "a.b", "in", "true", "null"])
def test_function_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid identifier"):
        Function(name, (), ExprType.BOOL, lambda: True)


def test_any_is_only_a_parameter_type() -> None:
    with pytest.raises(ValueError, match="only a parameter type"):
        Function("f", (), ExprType.ANY, lambda: None)


def test_a_registered_function_is_type_checked_and_never_sees_null() -> None:
    seen: list[tuple[Any, ...]] = []

    def weekend(hour: float, day: str) -> bool:
        seen.append((hour, day))
        return day in ("sat", "sun")

    registry = default_functions()
    registry.register(
        Function("weekend", (ExprType.NUMBER, ExprType.STRING), ExprType.BOOL, weekend)
    )
    assert run("weekend(a, s)", {"a": 1, "s": "sun"}, registry) is True
    assert run("weekend(a, s)", {"a": 1}, registry) is False
    assert run("weekend(a, s)", {"s": "sun"}, registry) is False
    assert seen == [(1, "sun")]
    with pytest.raises(ExprError) as caught:
        run("weekend(s, s)", {}, registry)
    assert (caught.value.position, caught.value.expected) == (8, "number")


def test_a_registered_function_with_many_arguments() -> None:
    registry = default_functions()
    registry.register(
        Function(
            "clamp", (ExprType.NUMBER,) * 3, ExprType.NUMBER, lambda x, lo, hi: min(hi, max(lo, x))
        )
    )
    assert run("clamp(a, 0, b)", {"a": 7, "b": 5}, registry) == 5
    assert run("clamp(a, 0, b)", {"a": 7}, registry) is None
    assert run("clamp(-1, 0, 10)", {}, registry) == 0


def test_a_registered_function_can_specialise_its_call_sites() -> None:
    def specialise(site: CallSite) -> Evaluator:
        value, factor = site.args
        if not factor.is_constant:
            raise ExprError(factor.position, "needs a literal", "a number literal")
        scale = 2**factor.value  # computed once per call site, not per evaluation
        evaluate = value.evaluate

        def scaled(env: Mapping[str, Any]) -> Any:
            x = evaluate(env)
            return None if x is None else x * scale

        return scaled

    registry = default_functions()
    registry.register(
        Function(
            "shift",
            (ExprType.NUMBER, ExprType.NUMBER),
            ExprType.NUMBER,
            lambda x, n: x * 2**n,
            specialise,
        )
    )
    assert run("shift(a, 3)", {"a": 5}, registry) == 40
    assert run("shift(a, 3)", {}, registry) is None
    assert run("shift(1, 4)", {}, registry) == 16  # constant arguments fold
    with pytest.raises(ExprError, match="needs a literal"):
        run("shift(a, b)", {}, registry)
