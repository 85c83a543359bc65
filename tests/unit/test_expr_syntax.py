"""Lexing and parsing of rule expressions: tokens, precedence, syntax errors and limits."""

from __future__ import annotations

import pytest

from riskguard.engine.expr import MAX_DEPTH, MAX_SOURCE_LENGTH, ExprError, parse
from riskguard.engine.expr.lexer import tokenize
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


def render(node: Node) -> str:
    """The tree fully parenthesised, so precedence and grouping are visible."""
    if isinstance(node, Literal):
        return repr(node.value)
    if isinstance(node, Path):
        return node.path
    if isinstance(node, Unary):
        return f"({node.op}{render(node.operand)})"
    if isinstance(node, Binary):
        return f"({render(node.left)} {node.op} {render(node.right)})"
    if isinstance(node, Logical):
        return "(" + f" {node.op} ".join(render(o) for o in node.operands) + ")"
    if isinstance(node, Call):
        return f"{node.name}(" + ", ".join(render(a) for a in node.args) + ")"
    assert isinstance(node, ListLiteral)
    return "[" + ", ".join(render(i) for i in node.items) + "]"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a || b && c", "(a || (b && c))"),
        ("a && b || c", "((a && b) || c)"),
        ("a || b || c", "(a || b || c)"),
        ("(a || b) || c", "(a || b || c)"),
        ("a && (b && c)", "(a && b && c)"),
        ("a && (b || c)", "(a && (b || c))"),
        ("a == b && c != d", "((a == b) && (c != d))"),
        ("a < b || c >= d", "((a < b) || (c >= d))"),
        ("x in [1, 2] || y", "((x in [1, 2]) || y)"),
        ("a + b < c * d", "((a + b) < (c * d))"),
        ("1 + 2 * 3", "(1 + (2 * 3))"),
        ("(1 + 2) * 3", "((1 + 2) * 3)"),
        ("1 - 2 - 3", "((1 - 2) - 3)"),
        ("8 / 4 / 2", "((8 / 4) / 2)"),
        ("a % b / c * d", "(((a % b) / c) * d)"),
        ("a - b + c", "((a - b) + c)"),
        ("-a * b", "((-a) * b)"),
        ("--a", "(-(-a))"),
        ("!a && b", "((!a) && b)"),
        ("!!a", "(!(!a))"),
        ("!a == b", "((!a) == b)"),
        ("a + -b", "(a + (-b))"),
        ("f(a, b + c)", "f(a, (b + c))"),
        ("f()", "f()"),
        (
            "data.amount > 1000 && features.x.count_5m >= 3",
            "((data.amount > 1000) && (features.x.count_5m >= 3))",
        ),
        ("context . geo . country", "context.geo.country"),
        ("[1, 2,]", "[1, 2]"),
        ("[\n  'a',\n  'b',\n]", "['a', 'b']"),
        ("true && false || null", "((True && False) || None)"),
    ],
)
def test_precedence_and_grouping(source: str, expected: str) -> None:
    assert render(parse(source)) == expected


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("0.5", 0.5),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        ("007", 7),
        ('"double"', "double"),
        ("'single'", "single"),
        (r'"a\\b"', "a\\b"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'it\'s'", "it's"),
        (r'"\'"', "'"),
        (r"'\"'", '"'),
        (r'"line\nbreak"', "line\nbreak"),
        (r'"tab\there"', "tab\there"),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ('""', ""),
        ('"日本"', "日本"),
        ("true", True),
        ("false", False),
        ("null", None),
    ],
)
def test_literals_and_string_escapes(source: str, value: object) -> None:
    node = parse(source)
    assert isinstance(node, Literal)
    assert node.value == value
    assert type(node.value) is type(value)


def test_tokens_carry_their_positions() -> None:
    tokens = tokenize("data.amount >= 1e3 && 'x'")
    assert [(t.kind, t.position) for t in tokens] == [
        ("ident", 0),
        (".", 4),
        ("ident", 5),
        (">=", 12),
        ("number", 15),
        ("&&", 19),
        ("string", 22),
        ("end", 25),
    ]


def test_nodes_record_where_they_start() -> None:
    node = parse("  x + abs(y)")
    assert isinstance(node, Binary)
    assert (node.position, node.op_position) == (2, 4)
    assert isinstance(node.right, Call)
    assert node.right.position == 6
    assert node.right.args[0].position == 10


@pytest.mark.parametrize(
    ("source", "position", "message", "expected"),
    [
        (")", 0, "unexpected ')'", "an operand"),
        ("", 0, "unexpected end of expression", "an operand"),
        ("   ", 3, "unexpected end of expression", "an operand"),
        ("1 +", 3, "unexpected end of expression", "an operand"),
        ("a && || b", 5, "unexpected '||'", "an operand"),
        ("in", 0, "unexpected 'in'", "an operand"),
        ("(1", 2, "unexpected end of expression", "')' to close the '(' at position 0"),
        ("(a + b", 6, "unexpected end of expression", "')' to close the '(' at position 0"),
        ("1 2", 2, "unexpected number 2", "an operator or the end of the expression"),
        ("a b", 2, "unexpected 'b'", "an operator or the end of the expression"),
        ('a "s"', 2, 'unexpected string "s"', "an operator or the end of the expression"),
        ("a)", 1, "unexpected ')'", "an operator or the end of the expression"),
        ("a.(b)", 2, "unexpected '('", "a field name after '.'"),
        ("a.", 2, "unexpected end of expression", "a field name after '.'"),
        ("a.in", 2, "unexpected 'in'", "a field name after '.'"),
        ("a.5", 2, "unexpected number 5", "a field name after '.'"),
        ("data.lower(x)", 0, "'data.lower' cannot be called", "a function name"),
        ("a < b < c", 6, "comparisons cannot be chained", "'&&' or '||' between two comparisons"),
        ("a == b != c", 7, "comparisons cannot be chained", "'&&' or '||' between two comparisons"),
        (
            "a < b + c in d",
            10,
            "comparisons cannot be chained",
            "'&&' or '||' between two comparisons",
        ),
        ("a = b", 2, "unexpected character '='", "'==' to compare"),
        ("a & b", 2, "unexpected character '&'", "'&&'"),
        ("a | b", 2, "unexpected character '|'", "'||'"),
        ("a ? b : c", 2, "unexpected character '?'", ""),
        ("a\u00a0b", 1, "unexpected character", ""),
        ("[1, 2", 5, "unexpected end of expression", "',' or ']' to close the '[' at position 0"),
        ("[1 2]", 3, "unexpected number 2", "',' or ']' to close the '[' at position 0"),
        ("[,]", 1, "unexpected ','", "an operand"),
        ("f(1,)", 4, "unexpected ')'", "an operand"),
        ("f(1 2)", 4, "unexpected number 2", "',' or ')' to close the '(' at position 1"),
        ("1e", 0, "malformed number '1e'", "a number"),
        ("1.", 0, "malformed number '1.'", "a number"),
        ("1.2.3", 0, "malformed number '1.2.'", "a number"),
        ("3in [3]", 0, "malformed number '3i'", "a number"),
        ("1e999", 0, "number 1e999 is out of range", "a finite number"),
        ("9" * 400, 0, "number is out of range", "a finite number"),
        ("1" + "0" * 309, 0, "number is out of range", "a finite number"),
        ("'abc", 0, "unterminated string", "a closing '"),
        ('x == "abc', 5, "unterminated string", 'a closing "'),
        ('"abc\\', 0, "unterminated string", 'a closing "'),
        (r'"a\qb"', 2, r"unknown escape '\q'", r"one of \\ \" \' \n \t"),
        (r'"\u0041"', 1, r"unknown escape '\u'", r"one of \\ \" \' \n \t"),
    ],
)
def test_syntax_errors(source: str, position: int, message: str, expected: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse(source)
    error = caught.value
    assert (error.position, error.expected) == (position, expected)
    assert message in error.message


def test_error_text_names_position_message_and_expectation() -> None:
    with pytest.raises(ExprError) as caught:
        parse("(amount > 1))")
    assert str(caught.value) == (
        "at position 12: unexpected ')' (expected an operator or the end of the expression)"
    )
    assert str(ExprError(3, "something is off")) == "at position 3: something is off"


def test_expr_error_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(ExprError(4, "bad", "good")))
    assert (error.position, error.message, error.expected) == (4, "bad", "good")


def test_largest_double_is_a_valid_literal() -> None:
    node = parse("1" + "0" * 308)
    assert isinstance(node, Literal)
    assert node.value == 10**308


def test_source_length_limit() -> None:
    assert parse("a" * MAX_SOURCE_LENGTH) == Path(0, "a" * MAX_SOURCE_LENGTH)
    with pytest.raises(ExprError) as caught:
        parse("a" * (MAX_SOURCE_LENGTH + 1))
    assert caught.value.position == MAX_SOURCE_LENGTH
    assert "too long" in caught.value.message
    assert caught.value.expected == "at most 4096 characters"


def nested(depth: int, template: str, leaf: str = "1") -> str:
    source = leaf
    for _ in range(depth - 1):
        source = template.format(source)
    return source


@pytest.mark.parametrize(
    ("template", "leaf"),
    [
        ("({})", "1"),  # brackets: MAX_DEPTH pairs allowed
        ("[{}]", "1"),
        ("abs({})", "1"),
        ("-{}", "1"),
        ("!{}", "true"),
        ("{} + 1", "1"),  # left-deep arithmetic chain
        ("1 + ({})", "1"),
    ],
)
def test_depth_limit(template: str, leaf: str) -> None:
    # Brackets do not add tree levels, so allow one more wrapping for them to reach the limit.
    extra = 1 if template in ("({})",) else 0
    parse(nested(MAX_DEPTH + extra, template, leaf))
    with pytest.raises(ExprError) as caught:
        parse(nested(MAX_DEPTH + extra + 1, template, leaf))
    assert caught.value.message == "expression is nested too deeply"
    assert caught.value.expected.startswith(f"at most {MAX_DEPTH} levels")


def test_and_or_chains_do_not_count_against_the_depth_limit() -> None:
    node = parse(" && ".join(["a"] * 300) + " || " + " || ".join(["b"] * 300))
    assert isinstance(node, Logical)
    assert node.op == "||"
    assert len(node.operands) == 301


@pytest.mark.parametrize(
    "source",
    [
        "(" * 4000,
        "(" * 2000 + "1" + ")" * 2000,
        "[" * 4000,
        "abs(" * 1000,
        "-" * 4000 + "1",
        "!" * 4000 + "true",
        "1" + " + 1" * 1000,
        "1" + " * (1" * 600 + ")" * 600,
    ],
)
def test_deep_input_is_an_expr_error_never_a_recursion_error(source: str) -> None:
    with pytest.raises(ExprError, match="nested too deeply"):
        parse(source)
