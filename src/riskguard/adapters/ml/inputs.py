"""Model inputs: each a riskguard expression over the decision environment, compiled once.

An input is a plain path (``features.customer_tx.count_7d``, ``data.amount``) or arithmetic
over paths in the rule language (``features.customer_tx.sum_7d / features.customer_tx.count_7d``),
compiled by the engine's own expression compiler — the same closures in training (over the
environments the engine computed while replaying events) and in serving (over the decision's
environment), so a model can never see a feature computed two ways. Values become floats:
numbers as they are, booleans 1/0, null (a missing field, a division by zero) NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from riskguard.adapters.ml.artifact import InputSpec
from riskguard.engine.expr import ExprError, ExprType, compile_expression, default_functions

Getter = Callable[[Mapping[str, Any]], float]
NAN = math.nan


class InputError(ValueError):
    """An input expression that does not compile against the paths it may read."""


def _as_float(value: Any) -> float:
    if value is None:
        return NAN
    if value is True:
        return 1.0
    if value is False:
        return 0.0
    if value.__class__ is float:
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return NAN


def compile_input(spec: InputSpec, schema: Mapping[str, str]) -> tuple[Getter, frozenset[str]]:
    """A getter for one input and the paths it reads; raises InputError."""
    path = spec.expr.strip()
    if path in schema:
        if schema[path] == "string":
            raise InputError(f"input {spec.name!r}: {path} is a string, not a number")

        def read(env: Mapping[str, Any]) -> float:
            value = env.get(path)
            return value if value.__class__ is float else _as_float(value)

        return read, frozenset({path})
    try:
        compiled = compile_expression(spec.expr, schema=schema, functions=default_functions())
    except ExprError as exc:
        raise InputError(f"input {spec.name!r}: {exc}") from None
    if compiled.type not in (ExprType.NUMBER, ExprType.BOOL, ExprType.NULL):
        raise InputError(f"input {spec.name!r} must give a number or a boolean")
    fn = compiled.fn

    def evaluate(env: Mapping[str, Any]) -> float:
        return _as_float(fn(env))

    return evaluate, compiled.fields


def compile_inputs(
    specs: Sequence[InputSpec], schema: Mapping[str, str]
) -> tuple[tuple[Getter, ...], tuple[str, ...]]:
    """Getters for every input, in order, and the sorted paths they read together."""
    getters = []
    paths: set[str] = set()
    for spec in specs:
        getter, read = compile_input(spec, schema)
        getters.append(getter)
        paths |= read
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError("input names must be unique")
    return tuple(getters), tuple(sorted(paths))


def vector(getters: Sequence[Getter], env: Mapping[str, Any]) -> list[float]:
    """One environment's input values."""
    return [get(env) for get in getters]
