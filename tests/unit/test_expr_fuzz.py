"""Property tests: any input compiles or raises ExprError, and evaluation never raises.

Compiled results are also checked against a deliberately naive tree-walking interpreter of the
documented semantics, so constant folding and the specialised closures cannot drift from them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.engine.expr import (
    CompiledExpr,
    ExprError,
    ExprType,
    compile_expression,
    default_functions,
    parse,
)
from riskguard.engine.expr.functions import ip_in_network
from riskguard.engine.expr.parser import (
    Binary,
    Call,
    ListLiteral,
    Literal,
    Logical,
    Node,
    Path,
    Unary,
)

SCHEMA: Mapping[str, str] = {
    "data.amount": "number",
    "data.count": "number",
    "data.channel": "string",
    "context.ip": "string",
    "context.geo.lat": "number",
    "context.geo.lon": "number",
    "data.success": "bool",
    "features.account_tx.count_5m": "number",
    "hour": "number",
    "type": "string",
}
LISTS: Mapping[str, frozenset[str] | frozenset[float]] = {
    "countries": frozenset({"KP", "IR", "web"}),
    "amounts": frozenset({0, 1.5, 100}),
}
FUNCTIONS = default_functions()
SETTINGS = settings(max_examples=300, deadline=None)


def compile_or_none(source: str) -> CompiledExpr | None:
    """Compile, treating ExprError as the one acceptable failure (anything else propagates)."""
    try:
        return compile_expression(source, schema=SCHEMA, functions=FUNCTIONS, lists=LISTS)
    except ExprError as caught:
        error = caught
    assert 0 <= error.position <= len(source)
    assert error.message
    assert str(error).startswith(f"at position {error.position}: ")
    return None


# --- strategies ---------------------------------------------------------------------------------

PATHS = list(SCHEMA)
OPERATORS = ["||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%", "!"]
PUNCTUATION = ["(", ")", "[", "]", ",", "."]
NUMBER_TEXTS = ["0", "1", "3", "1000", "0.5", "1e3", "2.5E-3", "1e400", "9" * 320, "007", "1."]
SPECIAL_STRINGS = [
    "'countries'",
    "'amounts'",
    "'nope'",
    "'10.0.0.0/8'",
    "'2001:db8::/32'",
    "'10.0.0.1/8'",
    "'web'",
    '"KP"',
    r"'a\'b'",
    r'"x\ny"',
    r"'\q'",
    "'unterminated",
    '"',
]


def quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
tokens = st.one_of(
    st.sampled_from(OPERATORS + PUNCTUATION + ["true", "false", "null"]),
    st.sampled_from(PATHS),
    st.sampled_from(FUNCTIONS.names()),
    st.sampled_from(NUMBER_TEXTS),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(SPECIAL_STRINGS),
    st.text(max_size=4).map(quoted),
    identifiers,
    st.sampled_from(["=", "&", "|", "#", "?", ":", "\t", "\n", "\u00a0"]),
)
token_soup = st.lists(st.tuples(tokens, st.sampled_from(["", " ", " "])), max_size=30).map(
    lambda pairs: "".join(token + gap for token, gap in pairs)
)


def _binary(op: str) -> Callable[[tuple[str, str]], str]:
    return lambda pair: f"({pair[0]} {op} {pair[1]})"


leaves = st.one_of(
    st.sampled_from(PATHS),
    st.sampled_from(["true", "false", "null", "0", "1", "2.5", "1e3", "-3", "1e308"]),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(["'web'", "'KP'", "''", "'10.1.2.3'", "'2001:db8::1'"]),
    st.text(max_size=3).map(quoted),
    st.sampled_from(["[1, 2.5, 100]", "['KP', 'IR']", "[0]"]),
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pairs = st.tuples(children, children)
    return st.one_of(
        st.sampled_from(OPERATORS[:-1]).flatmap(lambda op: pairs.map(_binary(op))),
        children.map(lambda c: f"!{c}"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"({c})"),
        st.tuples(st.sampled_from(["abs", "lower", "upper", "len", "has"]), children).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        st.tuples(
            st.sampled_from(["min", "max", "starts_with", "ends_with", "contains"]), pairs
        ).map(lambda t: f"{t[0]}({t[1][0]}, {t[1][1]})"),
        st.tuples(children, st.sampled_from(["'countries'", "'amounts'"])).map(
            lambda t: f"in_list({t[0]}, {t[1]})"
        ),
        st.tuples(children, st.sampled_from(["'10.0.0.0/8'", "'2001:db8::/32'"])).map(
            lambda t: f"in_cidr({t[0]}, {t[1]})"
        ),
        st.lists(children, min_size=4, max_size=4).map(lambda c: f"distance_km({', '.join(c)})"),
    )


expressions = st.recursive(leaves, _extend, max_leaves=12)  # often ill-typed, on purpose


def _typed(kind: str, depth: int) -> st.SearchStrategy[str]:
    """Well-typed expressions of ``kind`` ("number", "string" or "bool") nested up to ``depth``."""
    paths = st.sampled_from([p for p, k in SCHEMA.items() if k == kind])
    literal = {
        "number": st.sampled_from(["0", "1", "-2", "2.5", "1e3", "1e308", "100"]),
        "string": st.sampled_from(["'web'", "'KP'", "''", "'10.1.2.3'", "'::1'"]),
        "bool": st.sampled_from(["true", "false"]),
    }[kind]
    base = st.one_of(paths, literal, st.just("null"))
    if depth == 0:
        return base
    n, s, b = (_typed(k, depth - 1) for k in ("number", "string", "bool"))

    def call(name: str, *args: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.tuples(*args).map(lambda a: f"{name}({', '.join(a)})")

    def infix(
        left: st.SearchStrategy[str], ops: list[str], right: st.SearchStrategy[str]
    ) -> st.SearchStrategy[str]:
        return st.tuples(left, st.sampled_from(ops), right).map(lambda t: f"({t[0]} {t[1]} {t[2]})")

    compound = {
        "number": [
            infix(n, ["+", "-", "*", "/", "%"], n),
            n.map(lambda x: f"-{x}"),
            call("abs", n),
            call("min", n, n),
            call("max", n, n),
            call("len", s),
            call("distance_km", n, n, n, n),
        ],
        "string": [
            infix(s, ["+"], s),
            call("lower", s),
            call("upper", s),
        ],
        "bool": [
            infix(n, ["<", "<=", ">", ">=", "==", "!="], n),
            infix(s, ["<", "<=", ">", ">=", "==", "!="], s),
            infix(b, ["&&", "||", "==", "!="], b),
            infix(n, ["in"], st.sampled_from(["[1, 2.5, 100]", "[0]"])),
            infix(s, ["in"], st.sampled_from(["['KP', 'web']", "['']"])),
            b.map(lambda x: f"!{x}"),
            call("starts_with", s, s),
            call("ends_with", s, s),
            call("contains", s, s),
            call("has", st.sampled_from(PATHS)),
            call("in_list", s, st.just("'countries'")),
            call("in_list", n, st.just("'amounts'")),
            call("in_cidr", s, st.sampled_from(["'10.0.0.0/8'", "'2001:db8::/32'"])),
        ],
    }[kind]
    return st.one_of(base, *compound)


typed_expressions = st.one_of(_typed("bool", 3), _typed("number", 3), _typed("string", 2))

numbers = st.one_of(
    st.integers(),
    st.floats(),  # includes infinities and NaN
    st.sampled_from([0, -0.0, 10**400, -(10**400), 1e308, 90, -180]),
)
strings = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["KP", "web", "10.1.2.3", "2001:db8::1", "::1", "0.0.0.0", "1.2.3"]),
)
VALUES: Mapping[str, st.SearchStrategy[Any]] = {
    "number": numbers,
    "string": strings,
    "bool": st.booleans(),
}
MISSING = object()
envs = st.fixed_dictionaries(
    {path: st.one_of(st.just(MISSING), st.none(), VALUES[kind]) for path, kind in SCHEMA.items()}
).map(lambda drawn: {k: v for k, v in drawn.items() if v is not MISSING})


# --- the reference interpreter ------------------------------------------------------------------

ARITHMETIC: Mapping[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}
ORDERING: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def reference(node: Node, env: Mapping[str, Any]) -> Any:
    """The documented semantics, evaluated the slow and obvious way."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, ListLiteral):
        return tuple(reference(item, env) for item in node.items)
    if isinstance(node, Path):
        return env.get(node.path)
    if isinstance(node, Unary):
        value = reference(node.operand, env)
        if node.op == "!":
            return value is not True
        return None if value is None else -value
    if isinstance(node, Logical):
        values = [reference(o, env) is True for o in node.operands]
        return all(values) if node.op == "&&" else any(values)
    if isinstance(node, Binary):
        left, right = reference(node.left, env), reference(node.right, env)
        if node.op == "==":
            return left == right
        if node.op == "!=":
            return left != right
        if left is None or right is None:
            return None if node.op in ARITHMETIC else False
        if node.op == "in":
            return left in right
        if node.op in ORDERING:
            return ORDERING[node.op](left, right)
        if node.op in ("/", "%") and right == 0:
            return None
        try:
            return ARITHMETIC[node.op](left, right)
        except OverflowError:
            return None
    assert isinstance(node, Call)
    if node.name == "has":
        assert isinstance(node.args[0], Path)
        return env.get(node.args[0].path) is not None
    args = [reference(arg, env) for arg in node.args]
    function = FUNCTIONS.get(node.name)
    assert function is not None
    if any(arg is None for arg in args):
        return False if function.returns is ExprType.BOOL else None
    if node.name == "in_list":
        return args[0] in LISTS[args[1]]
    if node.name == "in_cidr":
        return ip_in_network(args[0], args[1])
    return function.impl(*args)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def check_evaluation(compiled: CompiledExpr, env_list: list[dict[str, Any]]) -> None:
    tree = parse(compiled.source)
    for env in env_list:
        result = compiled.fn(env)
        expected = reference(tree, env)
        assert same(result, expected), (compiled.source, env, result, expected)


# --- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(st.text())
def test_any_text_compiles_or_raises_expr_error(source: str) -> None:
    compile_or_none(source)


@SETTINGS
@given(token_soup, st.lists(envs, max_size=3))
def test_token_soup_compiles_or_raises_expr_error(
    source: str, env_list: list[dict[str, Any]]
) -> None:
    compiled = compile_or_none(source)
    if compiled is not None:
        check_evaluation(compiled, env_list)


@SETTINGS
@given(expressions, st.lists(envs, max_size=3))
def test_random_expressions_compile_or_raise_expr_error(
    source: str, env_list: list[dict[str, Any]]
) -> None:
    compiled = compile_or_none(source)
    if compiled is not None:
        check_evaluation(compiled, env_list)


@SETTINGS
@given(typed_expressions, st.lists(envs, min_size=1, max_size=4))
def test_well_typed_expressions_compile_never_raise_and_match_the_reference(
    source: str, env_list: list[dict[str, Any]]
) -> None:
    compiled = compile_or_none(source)
    assert compiled is not None, source
    check_evaluation(compiled, env_list)
