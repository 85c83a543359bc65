"""Type-check a syntax tree and compile it into nested plain Python closures.

Performance notes (a condition runs tens of thousands of times a second):

* every operand whose inputs are all literals is evaluated once, here (constant folding), by
  the very closure that would have run, so folded and unfolded results cannot disagree;
* the common shapes ``path <op> literal``, ``path in [...]`` and ``f(path)`` read the field
  inline instead of calling a closure for it;
* null checks are explicit ``is None`` tests, so evaluation never relies on catching
  exceptions; the one exception caught is OverflowError in number arithmetic, which Python
  raises when an integer too large for a float meets a float.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from riskguard.engine.expr import typecheck
from riskguard.engine.expr.errors import ExprError
from riskguard.engine.expr.functions import (
    CallSite,
    Env,
    Evaluator,
    Function,
    FunctionRegistry,
    NamedLists,
    Operand,
    suggestion,
)
from riskguard.engine.expr.parser import (
    Binary,
    Call,
    ListLiteral,
    Literal,
    Logical,
    Node,
    Path,
    Unary,
    parse,
)
from riskguard.engine.expr.typecheck import BOOL, SCHEMA_TYPES, ExprType

Schema = Mapping[str, str] | Callable[[str], str | None]

_NO_LISTS: Final[NamedLists] = MappingProxyType({})

_ARITHMETIC: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}
_ORDERING: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# a < b is b > a: lets "literal <op> path" reuse the "path <op> literal" closures.
_FLIPPED: Final[dict[str, str]] = {
    "<": ">",
    "<=": ">=",
    ">": "<",
    ">=": "<=",
    "==": "==",
    "!=": "!=",
}


@dataclass(frozen=True, slots=True)
class CompiledExpr:
    """A compiled expression: its source, static type, the fields it reads, and its evaluator.

    ``fn(env)`` evaluates it against a flat mapping of dotted path to value (a missing key is
    null); it never raises for values of the schema's types.
    """

    source: str
    type: ExprType
    fields: frozenset[str]
    fn: Callable[[Mapping[str, Any]], Any]


def compile_expression(
    source: str,
    *,
    schema: Schema,
    functions: FunctionRegistry,
    lists: NamedLists = _NO_LISTS,
) -> CompiledExpr:
    """Parse, type-check and compile ``source``; raise ExprError for any syntax or type problem.

    ``schema`` maps each readable dotted path to "number", "string" or "bool" (as a mapping, or
    a callable returning None for an unknown path); ``lists`` are the named lists in_list() reads.
    The result may have any type: a caller that needs a condition checks ``type`` is BOOL.
    """
    compiler = _Compiler(schema, functions, lists)
    result = compiler.compile(parse(source))
    return CompiledExpr(source, result.type, frozenset(compiler.fields), result.evaluate)


class _Compiler:
    def __init__(self, schema: Schema, functions: FunctionRegistry, lists: NamedLists) -> None:
        self._schema = schema
        self._functions = functions
        self._lists = lists
        self.fields: set[str] = set()

    def compile(self, node: Node) -> Operand:
        # The parser caps the tree depth, so this recursion is bounded.
        if isinstance(node, Literal):
            return _constant(node, typecheck.literal_type(node.value), node.value)
        if isinstance(node, Path):
            return self._path(node)
        if isinstance(node, Binary):
            return self._binary(node)
        if isinstance(node, Logical):
            return self._logical(node)
        if isinstance(node, Unary):
            return self._unary(node)
        if isinstance(node, Call):
            return self._call(node)
        return self._list(node)

    # --- leaves -------------------------------------------------------------------------------

    def _path(self, node: Path) -> Operand:
        path = node.path
        declared = self._field_type(path)
        if declared is None:
            if self._functions.get(path) is not None:
                hint = f"a call such as {path}(...)"
            else:
                candidates = list(self._schema) if isinstance(self._schema, Mapping) else []
                hint = suggestion(path, candidates)
            raise ExprError(node.position, f"unknown field '{path}'", hint)
        field_type = SCHEMA_TYPES.get(declared)
        if field_type is None:
            raise ValueError(
                f"schema gives field {path!r} the type {declared!r}; "
                f"expected one of {', '.join(SCHEMA_TYPES)}"
            )
        self.fields.add(path)

        def read(env: Env) -> Any:
            return env.get(path)

        return Operand(node, field_type, read)

    def _field_type(self, path: str) -> str | None:
        if isinstance(self._schema, Mapping):
            return self._schema.get(path)
        return self._schema(path)

    def _list(self, node: ListLiteral) -> Operand:
        items = [self.compile(item) for item in node.items]
        for item in items:
            if not item.is_constant:
                raise ExprError(item.position, "list elements must be literals", "a literal")
        list_type = typecheck.list_type([(i.type, i.position) for i in items], node.position)
        return _constant(node, list_type, tuple(i.value for i in items))

    # --- operators ----------------------------------------------------------------------------

    def _unary(self, node: Unary) -> Operand:
        operand = self.compile(node.operand)
        result_type = typecheck.unary_type(node.op, operand.type, operand.position)
        evaluate = operand.evaluate
        if node.op == "!":
            # Null counts as false, so !null is true and the result is always a bool.
            def negate(env: Env) -> bool:
                return evaluate(env) is not True

            return _folded(node, result_type, negate, (operand,))

        def minus(env: Env) -> Any:
            value = evaluate(env)
            return None if value is None else -value

        return _folded(node, result_type, minus, (operand,))

    def _logical(self, node: Logical) -> Operand:
        operands = [self.compile(operand) for operand in node.operands]
        for operand in operands:
            typecheck.logical_operand(node.op, operand.type, operand.position)
        # A constant that decides the result (false in &&, true in ||) decides it outright; a
        # constant that does not (true in &&; false or null in ||) is dropped.
        is_and = node.op == "&&"
        remaining: list[Evaluator] = []
        for operand in operands:
            if not operand.is_constant:
                remaining.append(operand.evaluate)
            elif (operand.value is True) != is_and:
                return _constant(node, BOOL, not is_and)
        if not remaining:
            return _constant(node, BOOL, is_and)
        return Operand(node, BOOL, _logical_chain(is_and, remaining))

    def _binary(self, node: Binary) -> Operand:
        left = self.compile(node.left)
        right = self.compile(node.right)
        op = node.op
        result_type = typecheck.binary_type(
            op, left.type, left.position, right.type, right.position
        )
        if op in _ARITHMETIC:
            if _is_null(left) or _is_null(right) or _is_zero_divisor(op, right):
                return _constant(node, result_type, None)
            strings = result_type is typecheck.STRING
            return _folded(node, result_type, _arithmetic(op, left, right, strings), (left, right))
        if op == "in":
            if _is_null(left) or _is_null(right):
                return _constant(node, BOOL, False)
            return _folded(node, BOOL, _membership(left, right), (left, right))
        if left.is_constant and not right.is_constant:
            # Put the literal on the right so one set of specialised closures serves both orders.
            left, right, op = right, left, _FLIPPED[op]
        if op in _ORDERING:
            if _is_null(left) or _is_null(right):
                return _constant(node, BOOL, False)
            return _folded(node, BOOL, _ordering(op, left, right), (left, right))
        return _folded(node, BOOL, _equality(op == "==", left, right), (left, right))

    # --- calls --------------------------------------------------------------------------------

    def _call(self, node: Call) -> Operand:
        function = self._functions.get(node.name)
        if function is None:
            raise ExprError(
                node.position,
                f"unknown function '{node.name}'",
                suggestion(node.name, self._functions.names()),
            )
        arity = len(function.params)
        if len(node.args) != arity:
            # Point at the first surplus argument, or at the call when some are missing.
            position = node.args[arity].position if len(node.args) > arity else node.position
            wanted = f"{arity} argument" + ("" if arity == 1 else "s")
            message = f"'{node.name}' takes {wanted}, got {len(node.args)}"
            raise ExprError(position, message, wanted)
        args = tuple(self.compile(arg) for arg in node.args)
        for index, (param, arg) in enumerate(zip(function.params, args, strict=True)):
            typecheck.argument(node.name, index, param, arg.type, arg.position)
        if function.specialise is not None:
            site = CallSite(function, node.position, args, self._lists)
            return _folded(node, function.returns, function.specialise(site), args)
        if any(_is_null(arg) for arg in args):
            return _constant(node, function.returns, function.null_result)
        return _folded(node, function.returns, _plain_call(function, args), args)


# --- helpers that build operands ----------------------------------------------------------------


def _constant(node: Node, value_type: ExprType, value: Any) -> Operand:
    def constant(env: Env) -> Any:
        return value

    return Operand(node, value_type, constant, True, value)


def _folded(
    node: Node, value_type: ExprType, evaluate: Evaluator, inputs: tuple[Operand, ...]
) -> Operand:
    """``evaluate`` as an operand, evaluated right now when all its inputs are constants."""
    if all(operand.is_constant for operand in inputs):
        return _constant(node, value_type, evaluate(MappingProxyType({})))
    return Operand(node, value_type, evaluate)


def _is_null(operand: Operand) -> bool:
    return operand.is_constant and operand.value is None


def _is_zero_divisor(op: str, right: Operand) -> bool:
    return op in ("/", "%") and right.is_constant and right.value == 0


# --- evaluator factories ------------------------------------------------------------------------
# Each returns a closure over already compiled operands. The closures are written out per shape
# (rather than composed from smaller ones) because every avoided Python call counts here.


def _logical_chain(is_and: bool, operands: list[Evaluator]) -> Evaluator:
    """``&&`` / ``||`` over one or more operands, short-circuiting; only True counts as true."""
    if len(operands) == 1:
        (only,) = operands

        def as_bool(env: Env) -> bool:
            return only(env) is True

        return as_bool
    if len(operands) == 2:
        first, second = operands
        if is_and:

            def and2(env: Env) -> bool:
                return first(env) is True and second(env) is True

            return and2

        def or2(env: Env) -> bool:
            return first(env) is True or second(env) is True

        return or2
    chain = tuple(operands)
    # Plain loops rather than all()/any(): no generator object per evaluation.
    if is_and:

        def and_n(env: Env) -> bool:
            for evaluate in chain:  # noqa: SIM110
                if evaluate(env) is not True:
                    return False
            return True

        return and_n

    def or_n(env: Env) -> bool:
        for evaluate in chain:  # noqa: SIM110
            if evaluate(env) is True:
                return True
        return False

    return or_n


def _arithmetic(op: str, left: Operand, right: Operand, strings: bool) -> Evaluator:
    apply = _ARITHMETIC[op]
    first, second = left.evaluate, right.evaluate
    if strings:

        def concatenate(env: Env) -> Any:
            x = first(env)
            if x is None:
                return None
            y = second(env)
            return None if y is None else x + y

        return concatenate
    if op in ("/", "%"):

        def divide(env: Env) -> Any:
            x = first(env)
            if x is None:
                return None
            y = second(env)
            if y is None or y == 0:
                return None
            try:
                return apply(x, y)
            except OverflowError:  # an int beyond float range met a float: no usable result
                return None

        return divide

    def calculate(env: Env) -> Any:
        x = first(env)
        if x is None:
            return None
        y = second(env)
        if y is None:
            return None
        try:
            return apply(x, y)
        except OverflowError:  # an int beyond float range met a float: no usable result
            return None

    return calculate


def _membership(left: Operand, right: Operand) -> Evaluator:
    if right.is_constant:
        members = frozenset(right.value)
        key = left.path
        if key is not None:

            def path_in(env: Env) -> bool:
                return env.get(key) in members  # null is never a member

            return path_in
        evaluate = left.evaluate

        def value_in(env: Env) -> bool:
            return evaluate(env) in members

        return value_in
    first, second = left.evaluate, right.evaluate

    def dynamic_in(env: Env) -> bool:
        x = first(env)
        if x is None:
            return False
        values = second(env)
        return values is not None and x in values

    return dynamic_in


def _ordering(op: str, left: Operand, right: Operand) -> Evaluator:
    """``<``, ``<=``, ``>``, ``>=``; false when either side is null."""
    key = left.path
    if key is not None and right.is_constant:
        return _path_ordering(op, key, right.value)
    compare = _ORDERING[op]
    evaluate = left.evaluate
    if right.is_constant:
        c = right.value

        def compare_constant(env: Env) -> bool:
            x = evaluate(env)
            return x is not None and compare(x, c)

        return compare_constant
    other = right.evaluate

    def compare_both(env: Env) -> bool:
        x = evaluate(env)
        if x is None:
            return False
        y = other(env)
        return y is not None and compare(x, y)

    return compare_both


def _path_ordering(op: str, key: str, c: Any) -> Evaluator:
    """The hottest shape of all, ``path <op> literal``, with the comparison inlined."""
    if op == "<":

        def less(env: Env) -> bool:
            x = env.get(key)
            return x is not None and x < c

        return less
    if op == "<=":

        def less_equal(env: Env) -> bool:
            x = env.get(key)
            return x is not None and x <= c

        return less_equal
    if op == ">":

        def greater(env: Env) -> bool:
            x = env.get(key)
            return x is not None and x > c

        return greater

    def greater_equal(env: Env) -> bool:
        x = env.get(key)
        return x is not None and x >= c

    return greater_equal


def _equality(equal: bool, left: Operand, right: Operand) -> Evaluator:
    """``==`` / ``!=``; null equals only null."""
    # Values are typed as object (not Any) so that == and != are known to give a bool.
    key = left.path
    evaluate = left.evaluate
    if right.is_constant:
        c: object = right.value
        if c is None:
            if equal:

                def is_null(env: Env) -> bool:
                    return evaluate(env) is None

                return is_null

            def is_not_null(env: Env) -> bool:
                return evaluate(env) is not None

            return is_not_null
        if key is not None:
            if equal:

                def path_equals(env: Env) -> bool:
                    x: object = env.get(key)
                    return x == c

                return path_equals

            def path_differs(env: Env) -> bool:
                x: object = env.get(key)
                return x != c

            return path_differs
    other = right.evaluate
    if equal:

        def equals(env: Env) -> bool:
            x: object = evaluate(env)
            y: object = other(env)
            return x == y

        return equals

    def differs(env: Env) -> bool:
        x: object = evaluate(env)
        y: object = other(env)
        return x != y

    return differs


def _plain_call(function: Function, args: tuple[Operand, ...]) -> Evaluator:
    """A call of ``function.impl`` that returns ``function.null_result`` on any null argument."""
    impl = function.impl
    on_null = function.null_result
    if len(args) == 1:
        key = args[0].path
        if key is not None:

            def call_on_path(env: Env) -> Any:
                x = env.get(key)
                return on_null if x is None else impl(x)

            return call_on_path
        evaluate = args[0].evaluate

        def call1(env: Env) -> Any:
            x = evaluate(env)
            return on_null if x is None else impl(x)

        return call1
    if len(args) == 2:
        first_path = args[0].path
        evaluate = args[0].evaluate
        if args[1].is_constant:
            c = args[1].value
            if first_path is not None:

                def call_on_path_with_constant(env: Env) -> Any:
                    x = env.get(first_path)
                    return on_null if x is None else impl(x, c)

                return call_on_path_with_constant

            def call_with_constant(env: Env) -> Any:
                x = evaluate(env)
                return on_null if x is None else impl(x, c)

            return call_with_constant
        other = args[1].evaluate

        def call2(env: Env) -> Any:
            x = evaluate(env)
            if x is None:
                return on_null
            y = other(env)
            return on_null if y is None else impl(x, y)

        return call2
    evaluators = tuple(arg.evaluate for arg in args)

    def call_n(env: Env) -> Any:
        values = []
        for evaluate_arg in evaluators:
            value = evaluate_arg(env)
            if value is None:
                return on_null
            values.append(value)
        return impl(*values)

    return call_n
