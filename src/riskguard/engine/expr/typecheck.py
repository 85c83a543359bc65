"""The static types of expressions and the typing rule of each operator.

``null`` fits wherever a value is expected (a missing field is null at run time anyway), so a
rule never has to guard a comparison against it. Each rule raises ExprError at the position of
the offending operand, with the type that would have been accepted as ``expected``.
"""

from __future__ import annotations

import enum
from typing import Final

from riskguard.engine.expr.errors import ExprError


class ExprType(enum.Enum):
    """The static type of an expression; the values are the names used in schemas and messages."""

    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"
    LIST_NUMBER = "list of numbers"
    LIST_STRING = "list of strings"
    NULL = "null"
    # Only as a Function parameter type, for a parameter the function checks itself (has() takes
    # a path of any type; in_list() a number or a string, whichever its list holds). No
    # expression ever has this type.
    ANY = "any"


NUMBER: Final = ExprType.NUMBER
STRING: Final = ExprType.STRING
BOOL: Final = ExprType.BOOL
NULL: Final = ExprType.NULL

# The field types a schema may declare.
SCHEMA_TYPES: Final[dict[str, ExprType]] = {"number": NUMBER, "string": STRING, "bool": BOOL}

LIST_OF: Final[dict[ExprType, ExprType]] = {
    NUMBER: ExprType.LIST_NUMBER,
    STRING: ExprType.LIST_STRING,
}
ELEMENT_OF: Final[dict[ExprType, ExprType]] = {v: k for k, v in LIST_OF.items()}

ARITHMETIC_OPERATORS: Final = frozenset({"+", "-", "*", "/", "%"})
ORDERING_OPERATORS: Final = frozenset({"<", "<=", ">", ">="})
EQUALITY_OPERATORS: Final = frozenset({"==", "!="})


def literal_type(value: object) -> ExprType:
    """The type of a literal value (bool is tested before number: bool is an int in Python)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    raise TypeError(f"not a literal value: {value!r}")


def unary_type(op: str, operand: ExprType, position: int) -> ExprType:
    """The type of ``op operand`` for ``!`` and unary ``-``."""
    wanted = BOOL if op == "!" else NUMBER
    if operand not in (wanted, NULL):
        raise _operand_error(op, operand, position, wanted.value)
    return wanted


def logical_operand(op: str, operand: ExprType, position: int) -> None:
    """Check one operand of ``&&`` or ``||``."""
    if operand not in (BOOL, NULL):
        raise _operand_error(op, operand, position, BOOL.value)


def binary_type(
    op: str, left: ExprType, left_position: int, right: ExprType, right_position: int
) -> ExprType:
    """The type of ``left op right`` for arithmetic, comparison and ``in``."""
    if op == "+":
        return _same_type(op, left, left_position, right, right_position)
    if op in ARITHMETIC_OPERATORS:
        for operand, position in ((left, left_position), (right, right_position)):
            if operand not in (NUMBER, NULL):
                raise _operand_error(op, operand, position, NUMBER.value)
        return NUMBER
    if op in ORDERING_OPERATORS:
        _same_type(op, left, left_position, right, right_position)
        return BOOL
    if op in EQUALITY_OPERATORS:
        if left is NULL or right is NULL or left is right:
            return BOOL
        raise ExprError(
            right_position,
            f"cannot compare {left.value} with {right.value} using '{op}'",
            left.value,
        )
    if op == "in":
        return _membership_type(left, left_position, right, right_position)
    raise AssertionError(f"unknown operator {op!r}")  # the parser only produces the above


def list_type(elements: list[tuple[ExprType, int]], position: int) -> ExprType:
    """The type of a list literal from its elements' types and positions."""
    if not elements:
        raise ExprError(position, "empty list", "at least one element")
    first, first_position = elements[0]
    if first not in LIST_OF:
        raise ExprError(first_position, f"list element has type {first.value}", "number or string")
    for element, element_position in elements[1:]:
        if element is not first:
            raise ExprError(
                element_position,
                f"list element has type {element.value}, the list holds {first.value}s",
                first.value,
            )
    return LIST_OF[first]


def argument(function: str, index: int, param: ExprType, arg: ExprType, position: int) -> None:
    """Check the ``index``-th (0-based) argument of a call against its parameter type."""
    if param is ExprType.ANY or arg in (param, NULL):
        return
    raise ExprError(
        position, f"argument {index + 1} of '{function}' has type {arg.value}", param.value
    )


def _same_type(
    op: str, left: ExprType, left_position: int, right: ExprType, right_position: int
) -> ExprType:
    """Both operands numbers or both strings (either may be null); the shared type."""
    either = f"{NUMBER.value} or {STRING.value}"
    if left not in (NUMBER, STRING, NULL):
        raise _operand_error(op, left, left_position, either)
    if right not in (NUMBER, STRING, NULL):
        raise _operand_error(op, right, right_position, either if left is NULL else left.value)
    if left is NULL:
        return right
    if right is NULL or left is right:
        return left
    raise ExprError(
        right_position,
        f"operands of '{op}' have types {left.value} and {right.value}",
        left.value,
    )


def _membership_type(
    left: ExprType, left_position: int, right: ExprType, right_position: int
) -> ExprType:
    if right is NULL:
        if left not in (NUMBER, STRING, NULL):
            raise _operand_error("in", left, left_position, f"{NUMBER.value} or {STRING.value}")
        return BOOL
    element = ELEMENT_OF.get(right)
    if element is None:
        raise ExprError(
            right_position, f"right operand of 'in' has type {right.value}", "a list, e.g. [1, 2]"
        )
    if left not in (element, NULL):
        raise ExprError(
            left_position,
            f"left operand of 'in' has type {left.value}, the list holds {element.value}s",
            element.value,
        )
    return BOOL


def _operand_error(op: str, operand: ExprType, position: int, expected: str) -> ExprError:
    return ExprError(position, f"operand of '{op}' has type {operand.value}", expected)
