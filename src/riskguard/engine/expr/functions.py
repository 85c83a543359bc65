"""The function registry and the built-in functions expressions may call.

A plain function is a pure Python callable plus its signature: the compiler checks the argument
types, and calls the implementation only with non-null arguments (a null argument makes the
call return null, or false when the function returns bool), so implementations never see None.
A function that needs compile-time work (a literal argument to validate or pre-compute, a path
instead of a value) also supplies ``specialise``, which builds the evaluator for one call site.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from riskguard.engine.expr.errors import ExprError
from riskguard.engine.expr.lexer import KEYWORDS
from riskguard.engine.expr.parser import Node, Path
from riskguard.engine.expr.typecheck import ExprType

Env = Mapping[str, Any]
Evaluator = Callable[[Env], Any]
NamedLists = Mapping[str, frozenset[str] | frozenset[float]]

_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class Operand:
    """A type-checked, compiled sub-expression (what a specialiser sees of each argument)."""

    node: Node
    type: ExprType
    evaluate: Evaluator
    is_constant: bool = False
    value: Any = None  # the value, when is_constant

    @property
    def position(self) -> int:
        """Where the sub-expression starts in the source."""
        return self.node.position

    @property
    def path(self) -> str | None:
        """The dotted path when the sub-expression is a bare field read, else None."""
        return self.node.path if isinstance(self.node, Path) else None


@dataclass(frozen=True, slots=True)
class CallSite:
    """One call being compiled: the function, where the call is, its arguments, named lists."""

    function: Function
    position: int
    args: tuple[Operand, ...]
    lists: NamedLists


@dataclass(frozen=True, slots=True)
class Function:
    """A function expressions may call.

    ``impl`` receives only non-null arguments of the declared ``params`` types and must be pure
    and must not raise for them. When ``specialise`` is set, the compiler still checks the
    arity and ``params``, then hands the call site to it; it raises ExprError for arguments it
    rejects and returns the evaluator (which handles null arguments itself).
    """

    name: str
    params: tuple[ExprType, ...]
    returns: ExprType
    impl: Callable[..., Any]
    specialise: Callable[[CallSite], Evaluator] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name) or self.name in KEYWORDS:
            raise ValueError(f"function name {self.name!r} is not a valid identifier")
        if self.returns is ExprType.ANY:
            raise ValueError(f"function {self.name!r}: ANY is only a parameter type")

    @property
    def null_result(self) -> bool | None:
        """What a call returns when an argument is null: false for predicates, else null."""
        return False if self.returns is ExprType.BOOL else None


class FunctionRegistry:
    """The functions available to expressions, by name."""

    def __init__(self) -> None:
        self._functions: dict[str, Function] = {}

    def register(self, fn: Function) -> None:
        """Add ``fn``; a name may be registered only once (ValueError otherwise)."""
        if fn.name in self._functions:
            raise ValueError(f"function {fn.name!r} is already registered")
        self._functions[fn.name] = fn

    def get(self, name: str) -> Function | None:
        """The function called ``name``, or None."""
        return self._functions.get(name)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._functions)


def default_functions() -> FunctionRegistry:
    """A new registry holding the built-in functions (callers may register more into it)."""
    registry = FunctionRegistry()
    for fn in _BUILTINS:
        registry.register(fn)
    return registry


def suggestion(name: str, candidates: list[str]) -> str:
    """A did-you-mean hint for ``name`` among ``candidates`` ("" when nothing is close)."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.7)
    return " or ".join(f"'{c}'" for c in close)


# --- plain built-ins --------------------------------------------------------------------------

_EARTH_RADIUS_KM: Final = 6371.0088
_RADIANS_PER_DEGREE: Final = math.pi / 180


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float | None:
    """Great-circle (haversine) distance in km; null if a coordinate is out of range."""
    # Comparisons are exact for any int or float and false for NaN, so this also keeps
    # infinities, NaN and integers too large for a float away from the float arithmetic.
    # (Float bounds: comparing a float with a float is twice as fast as with an int.)
    if not (
        -90.0 <= lat1 <= 90.0
        and -90.0 <= lat2 <= 90.0
        and -180.0 <= lon1 <= 180.0
        and -180.0 <= lon2 <= 180.0
    ):
        return None
    phi1 = lat1 * _RADIANS_PER_DEGREE
    phi2 = lat2 * _RADIANS_PER_DEGREE
    sin_half_dphi = math.sin((phi2 - phi1) / 2)
    sin_half_dlambda = math.sin((lon2 - lon1) * _RADIANS_PER_DEGREE / 2)
    h = sin_half_dphi * sin_half_dphi + math.cos(phi1) * math.cos(phi2) * (
        sin_half_dlambda * sin_half_dlambda
    )
    # Rounding can push h a hair outside [0, 1], where asin(sqrt(h)) is undefined. (Explicit
    # tests rather than min()/max(), which cost more than the whole formula's arithmetic.)
    if h > 1.0:
        h = 1.0
    elif h < 0.0:
        h = 0.0
    return 2 * _EARTH_RADIUS_KM * math.asin(math.sqrt(h))


# min()/max() as plain functions: the builtins' generic argument handling costs twice as much.
# Same result as the builtins, NaN included: the first argument wins unless the second is
# strictly smaller (larger).
def smaller(a: float, b: float) -> float:
    """The smaller of two numbers."""
    return b if b < a else a


def larger(a: float, b: float) -> float:
    """The larger of two numbers."""
    return b if b > a else a


def _contains(haystack: str, needle: str) -> bool:
    return needle in haystack


# --- specialised built-ins --------------------------------------------------------------------


def _literal_string(arg: Operand, function: str, expected: str) -> str:
    """The value of an argument that must be a string literal."""
    if not arg.is_constant or not isinstance(arg.value, str):
        raise ExprError(
            arg.position, f"the second argument of '{function}' must be a literal", expected
        )
    return arg.value


def _list_element_type(members: frozenset[Any]) -> ExprType | None:
    """The type of a named list's members (None for an empty list, which matches anything)."""
    for member in members:  # lists are homogeneous, so the first member tells
        if isinstance(member, str):
            return ExprType.STRING
        if isinstance(member, int | float) and not isinstance(member, bool):
            return ExprType.NUMBER
        raise ValueError(f"named list member {member!r} is neither a number nor a string")
    return None


def _specialise_in_list(site: CallSite) -> Evaluator:
    value, name_arg = site.args
    name = _literal_string(name_arg, "in_list", "a list name in quotes, e.g. 'blocked_countries'")
    if name not in site.lists:
        known = sorted(site.lists)
        hint = suggestion(name, known) or (
            "one of " + ", ".join(f"'{n}'" for n in known[:5]) if known else "a configured list"
        )
        raise ExprError(name_arg.position, f"unknown list '{name}'", hint)
    members = frozenset(site.lists[name])
    element = _list_element_type(members)
    if value.type not in (ExprType.NUMBER, ExprType.STRING, ExprType.NULL):
        raise ExprError(
            value.position,
            f"argument 1 of 'in_list' has type {value.type.value}",
            "number or string",
        )
    if element is not None and value.type not in (element, ExprType.NULL):
        raise ExprError(
            value.position,
            f"list '{name}' holds {element.value}s, the value has type {value.type.value}",
            element.value,
        )
    # null is never a member, so no null check is needed.
    key = value.path
    if key is not None:

        def in_list_path(env: Env) -> bool:
            return env.get(key) in members

        return in_list_path
    evaluate = value.evaluate

    def in_list(env: Env) -> bool:
        return evaluate(env) in members

    return in_list


def _parse_ip(text: str) -> tuple[int, int] | None:
    """(IP version, address as an integer), or None when ``text`` is not an IP address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.version, int(address)


def _specialise_in_cidr(site: CallSite) -> Evaluator:
    value, network_arg = site.args
    example = "a network in quotes, e.g. '10.0.0.0/8'"
    text = _literal_string(network_arg, "in_cidr", example)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ExprError(network_arg.position, f"invalid network '{text}': {exc}", example) from None
    version = network.version
    base = int(network.network_address)
    mask = int(network.netmask)
    # Parsing an address costs a few microseconds and traffic repeats addresses, so each call
    # site remembers its recent ones (bounded, and thread-safe).
    parse = functools.lru_cache(maxsize=4096)(_parse_ip)
    evaluate = value.evaluate

    def in_cidr(env: Env) -> bool:
        ip = evaluate(env)
        if ip is None:
            return False
        parsed = parse(ip)
        return parsed is not None and parsed[0] == version and parsed[1] & mask == base

    return in_cidr


def _specialise_has(site: CallSite) -> Evaluator:
    (arg,) = site.args
    key = arg.path
    if key is None:
        raise ExprError(
            arg.position,
            "the argument of 'has' must be a field path",
            "a field path, e.g. data.channel",
        )

    def has(env: Env) -> bool:
        return env.get(key) is not None

    return has


# The plain semantics of the specialised built-ins, on already resolved arguments; their
# specialisers compile the same thing with the work that only depends on literals done once.


def is_member(value: str | float, members: frozenset[Any]) -> bool:
    """Whether ``value`` is one of ``members``."""
    return value in members


def ip_in_network(ip: str, network: str) -> bool:
    """Whether ``ip`` is an address inside ``network`` (false if ``ip`` is not an address)."""
    parsed = _parse_ip(ip)
    net = ipaddress.ip_network(network, strict=True)
    return (
        parsed is not None
        and parsed[0] == net.version
        and parsed[1] & int(net.netmask) == int(net.network_address)
    )


def is_present(value: object) -> bool:
    """Whether a field's value is present, i.e. not null."""
    return value is not None


_N, _S, _B, _ANY = ExprType.NUMBER, ExprType.STRING, ExprType.BOOL, ExprType.ANY

_BUILTINS: Final[tuple[Function, ...]] = (
    Function("abs", (_N,), _N, abs, doc="The absolute value."),
    Function("min", (_N, _N), _N, smaller, doc="The smaller of two numbers."),
    Function("max", (_N, _N), _N, larger, doc="The larger of two numbers."),
    Function("lower", (_S,), _S, str.lower, doc="The string in lower case."),
    Function("upper", (_S,), _S, str.upper, doc="The string in upper case."),
    Function(
        "starts_with", (_S, _S), _B, str.startswith, doc="Whether the string starts with a prefix."
    ),
    Function("ends_with", (_S, _S), _B, str.endswith, doc="Whether the string ends with a suffix."),
    Function("contains", (_S, _S), _B, _contains, doc="Whether the string contains a substring."),
    Function("len", (_S,), _N, len, doc="The number of characters in the string."),
    Function(
        "distance_km",
        (_N, _N, _N, _N),
        _N,
        distance_km,
        doc="Great-circle distance in km between (lat1, lon1) and (lat2, lon2).",
    ),
    Function(
        "in_list",
        (_ANY, _S),
        _B,
        is_member,
        specialise=_specialise_in_list,
        doc="Whether the value is in the named list.",
    ),
    Function(
        "in_cidr",
        (_S, _S),
        _B,
        ip_in_network,
        specialise=_specialise_in_cidr,
        doc="Whether the IP address is in the network (false if it is not an IP address).",
    ),
    Function(
        "has",
        (_ANY,),
        _B,
        is_present,
        specialise=_specialise_has,
        doc="Whether the field is present (not null).",
    ),
)
