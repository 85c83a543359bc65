"""Parse expression source into an immutable syntax tree.

Binary operators are parsed with an explicit operator stack, so only brackets, calls and lists
recurse; both the bracket nesting and the depth of the resulting tree are capped at
``MAX_DEPTH`` so that neither parsing nor compiling can hit Python's recursion limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from riskguard.engine.expr.errors import ExprError
from riskguard.engine.expr.lexer import END, IDENT, NUMBER, STRING, Token, tokenize

MAX_SOURCE_LENGTH: Final = 4096
MAX_DEPTH: Final = 64

LiteralValue = int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, string, ``true``, ``false`` or ``null`` written in the source."""

    position: int
    value: LiteralValue


@dataclass(frozen=True, slots=True)
class ListLiteral:
    """A bracketed list such as ``["KP", "IR"]``."""

    position: int
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Path:
    """A dotted field path such as ``data.amount``, read from the evaluation environment."""

    position: int
    path: str


@dataclass(frozen=True, slots=True)
class Call:
    """A call of a registered function, ``name(args...)``."""

    position: int
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Unary:
    """``!operand`` or ``-operand``; ``position`` is that of the operator."""

    position: int
    op: str
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    """An arithmetic, comparison or ``in`` operation; ``position`` is where ``left`` starts."""

    position: int
    op: str
    left: Node
    right: Node
    op_position: int


@dataclass(frozen=True, slots=True)
class Logical:
    """A chain of two or more operands joined by the same ``&&`` or ``||``."""

    position: int
    op: str
    operands: tuple[Node, ...]


Node = Literal | ListLiteral | Path | Call | Unary | Binary | Logical

LOGICAL_OPERATORS: Final = frozenset({"&&", "||"})
COMPARISON_OPERATORS: Final = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})

_COMPARISON: Final = 3
_PRECEDENCE: Final[dict[str, int]] = {
    "||": 1,
    "&&": 2,
    **dict.fromkeys(COMPARISON_OPERATORS, _COMPARISON),
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
}
_UNARY_OPERATORS: Final = frozenset({"!", "-"})
_LITERAL_KEYWORDS: Final[dict[str, bool | None]] = {"true": True, "false": False, "null": None}
_TOO_DEEP: Final = "expression is nested too deeply"
_DEPTH_LIMIT: Final = f"at most {MAX_DEPTH} levels"

# A parsed sub-expression and the depth of its tree (a literal or path has depth 1).
_Parsed = tuple[Node, int]


def parse(source: str) -> Node:
    """Parse ``source`` into a syntax tree, or raise ExprError at the first problem."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExprError(
            MAX_SOURCE_LENGTH,
            f"expression is too long ({len(source)} characters)",
            f"at most {MAX_SOURCE_LENGTH} characters",
        )
    return _Parser(tokenize(source)).parse()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._nesting = 0

    def parse(self) -> Node:
        node, _ = self._expression()
        token = self._peek()
        if token.kind != END:
            raise _unexpected(token, "an operator or the end of the expression")
        return node

    def _peek(self) -> Token:
        return self._tokens[self._index]

    def _advance(self) -> Token:
        token = self._tokens[self._index]
        if token.kind != END:
            self._index += 1
        return token

    def _expect(self, kind: str, expected: str) -> Token:
        token = self._advance()
        if token.kind != kind:
            raise _unexpected(token, expected)
        return token

    def _enter(self, opener: Token) -> None:
        self._nesting += 1
        if self._nesting > MAX_DEPTH:
            raise ExprError(opener.position, _TOO_DEEP, f"{_DEPTH_LIMIT} of brackets")

    def _leave(self) -> None:
        self._nesting -= 1

    def _expression(self) -> _Parsed:
        """Parse binary operators by precedence with explicit stacks (no recursion per level)."""
        operands: list[_Parsed] = [self._unary()]
        operators: list[Token] = []
        while (precedence := _PRECEDENCE.get(self._peek().kind)) is not None:
            operator = self._advance()
            while operators and _PRECEDENCE[operators[-1].kind] >= precedence:
                if precedence == _COMPARISON == _PRECEDENCE[operators[-1].kind]:
                    # CEL has no a < b < c; reading it as (a < b) < c would be a silent surprise.
                    raise ExprError(
                        operator.position,
                        "comparisons cannot be chained",
                        "'&&' or '||' between two comparisons",
                    )
                _reduce(operands, operators.pop())
            operators.append(operator)
            operands.append(self._unary())
        while operators:
            _reduce(operands, operators.pop())
        return operands[0]

    def _unary(self) -> _Parsed:
        prefix: list[Token] = []
        while self._peek().kind in _UNARY_OPERATORS:
            prefix.append(self._advance())
        node, depth = self._primary()
        for operator in reversed(prefix):
            depth += 1
            if depth > MAX_DEPTH:
                raise ExprError(operator.position, _TOO_DEEP, _DEPTH_LIMIT)
            node = Unary(operator.position, operator.kind, node)
        return node, depth

    def _primary(self) -> _Parsed:
        token = self._advance()
        kind = token.kind
        if kind in (NUMBER, STRING):
            return Literal(token.position, token.value), 1
        if kind in _LITERAL_KEYWORDS:
            return Literal(token.position, _LITERAL_KEYWORDS[kind]), 1
        if kind == "(":
            self._enter(token)
            parsed = self._expression()
            self._expect(")", f"')' to close the '(' at position {token.position}")
            self._leave()
            return parsed
        if kind == "[":
            return self._list(token)
        if kind == IDENT:
            if self._peek().kind == "(":
                return self._call(token)
            return self._path(token)
        raise _unexpected(token, "an operand")

    def _list(self, opener: Token) -> _Parsed:
        self._enter(opener)
        items: list[Node] = []
        depth = 0
        closing = f"',' or ']' to close the '[' at position {opener.position}"
        while self._peek().kind != "]":
            item, item_depth = self._expression()
            items.append(item)
            depth = max(depth, item_depth)
            if self._peek().kind != ",":
                break
            self._advance()  # a trailing comma before ']' is allowed, as in CEL
        self._expect("]", closing)
        self._leave()
        if depth + 1 > MAX_DEPTH:
            raise ExprError(opener.position, _TOO_DEEP, _DEPTH_LIMIT)
        return ListLiteral(opener.position, tuple(items)), depth + 1

    def _call(self, name: Token) -> _Parsed:
        opener = self._advance()
        self._enter(opener)
        args: list[Node] = []
        depth = 0
        if self._peek().kind != ")":
            while True:
                arg, arg_depth = self._expression()
                args.append(arg)
                depth = max(depth, arg_depth)
                if self._peek().kind != ",":
                    break
                self._advance()
        self._expect(")", f"',' or ')' to close the '(' at position {opener.position}")
        self._leave()
        if depth + 1 > MAX_DEPTH:
            raise ExprError(name.position, _TOO_DEEP, _DEPTH_LIMIT)
        return Call(name.position, name.text, tuple(args)), depth + 1

    def _path(self, first: Token) -> _Parsed:
        names = [first.text]
        while self._peek().kind == ".":
            self._advance()
            names.append(self._expect(IDENT, "a field name after '.'").text)
        path = ".".join(names)
        if self._peek().kind == "(":
            raise ExprError(first.position, f"'{path}' cannot be called", "a function name")
        return Path(first.position, path), 1


def _reduce(operands: list[_Parsed], operator: Token) -> None:
    """Replace the top two operands with the node that ``operator`` makes of them."""
    right, right_depth = operands.pop()
    left, left_depth = operands.pop()
    op = operator.kind
    node: Node
    if op in LOGICAL_OPERATORS:
        # Flatten a && b && c into one node: it evaluates the same (the operators are
        # associative) and a long chain then does not count against the depth limit.
        parts: list[Node] = []
        depth = 0
        for side, side_depth in ((left, left_depth), (right, right_depth)):
            if isinstance(side, Logical) and side.op == op:
                parts.extend(side.operands)
                depth = max(depth, side_depth)
            else:
                parts.append(side)
                depth = max(depth, side_depth + 1)
        node = Logical(left.position, op, tuple(parts))
    else:
        node = Binary(left.position, op, left, right, operator.position)
        depth = max(left_depth, right_depth) + 1
    if depth > MAX_DEPTH:
        raise ExprError(operator.position, _TOO_DEEP, _DEPTH_LIMIT)
    operands.append((node, depth))


def _unexpected(token: Token, expected: str) -> ExprError:
    return ExprError(token.position, f"unexpected {token.describe()}", expected)
