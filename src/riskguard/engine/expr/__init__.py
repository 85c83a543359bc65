"""A small, safe, CEL-like expression language for rule conditions.

Source is parsed once, type-checked against a schema of field types, and compiled to plain
Python closures (never ``eval``/``exec``). See docs/expressions.md for the language.
"""

from riskguard.engine.expr.compiler import CompiledExpr, compile_expression
from riskguard.engine.expr.errors import ExprError
from riskguard.engine.expr.functions import (
    CallSite,
    Evaluator,
    Function,
    FunctionRegistry,
    Operand,
    default_functions,
)
from riskguard.engine.expr.parser import MAX_DEPTH, MAX_SOURCE_LENGTH, parse
from riskguard.engine.expr.typecheck import ExprType

__all__ = [
    "MAX_DEPTH",
    "MAX_SOURCE_LENGTH",
    "CallSite",
    "CompiledExpr",
    "Evaluator",
    "ExprError",
    "ExprType",
    "Function",
    "FunctionRegistry",
    "Operand",
    "compile_expression",
    "default_functions",
    "parse",
]
