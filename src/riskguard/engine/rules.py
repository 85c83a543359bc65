"""Rule packs: parsing, validation, compilation and the immutable, versioned ruleset.

A pack is one YAML (or JSON) document holding the features the rules read, named lists,
per-event-type thresholds, fusion weights and the rules themselves. Its version is a content
hash of its canonical JSON form, so the same rules always carry the same version and any edit
gets a new one. Every problem in a pack is collected and reported with the rule id, the
position in the condition and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from riskguard.engine.events import EVENT_TYPES
from riskguard.engine.expr import (
    ExprError,
    ExprType,
    FunctionRegistry,
    compile_expression,
    default_functions,
)
from riskguard.engine.features import (
    FeatureConfigError,
    FeatureSet,
    FeatureSpec,
    build_features,
    union_schema,
)
from riskguard.engine.fusion import FusionWeights
from riskguard.engine.policy import Outcome, Thresholds

RULE_ID = re.compile(r"^[A-Z][A-Z0-9_]{1,79}$")
REASON_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,79}$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass(frozen=True, slots=True)
class PackIssue:
    """One problem in a pack: where (rule id or section, position in the expression) and what."""

    where: str
    message: str
    position: int | None = None
    expected: str = ""

    def __str__(self) -> str:
        at = f" at position {self.position}" if self.position is not None else ""
        exp = f" (expected {self.expected})" if self.expected else ""
        return f"{self.where}{at}: {self.message}{exp}"


class RulePackError(ValueError):
    """A pack that cannot be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[PackIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class RuleSpec(BaseModel):
    """One rule as written in a pack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    description: str = Field(min_length=1, max_length=500)
    events: tuple[str, ...] = Field(min_length=1)
    when: str = Field(min_length=1, max_length=4096)
    reason: str
    score: float | None = Field(default=None, gt=0.0, le=1.0)
    outcome: Literal["challenge", "review", "block"] | None = None
    mode: Literal["active", "shadow"] = "active"
    enabled: bool = True
    message: str = Field(default="", max_length=500)
    value: str | None = None
    tags: tuple[str, ...] = ()

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not RULE_ID.match(v):
            raise ValueError("must be UPPER_SNAKE_CASE, 2-80 characters")
        return v

    @field_validator("reason")
    @classmethod
    def _reason_shape(cls, v: str) -> str:
        if not REASON_CODE.match(v):
            raise ValueError("must be UPPER_SNAKE_CASE, 2-80 characters")
        return v

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for e in v:
            if e not in EVENT_TYPES:
                raise ValueError(f"unknown event type {e!r}; expected one of {EVENT_TYPES}")
        return v


class ThresholdSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    challenge: float = Field(gt=0, le=1)
    review: float = Field(gt=0, le=1)
    block: float = Field(gt=0, le=1)


class PackSpec(BaseModel):
    """A whole pack as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    thresholds: dict[str, ThresholdSpec] = Field(default_factory=dict)
    fusion: dict[Literal["rules", "model"], Annotated[float, Field(ge=0, allow_inf_nan=False)]] = (
        Field(default_factory=dict)
    )
    lists: dict[str, list[str]] = Field(default_factory=dict)
    features: list[FeatureSpec] = Field(default_factory=list)
    rules: list[RuleSpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready for the hot path."""

    id: str
    reason: str
    description: str
    events: tuple[str, ...]
    enabled: bool
    weight: float
    outcome: Outcome | None
    shadow: bool
    condition: Callable[[Mapping[str, Any]], Any]
    value_path: str | None
    message: Callable[[Mapping[str, Any]], str]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Ruleset:
    """An immutable, versioned, compiled pack; rules indexed by event type."""

    version: str
    name: str
    spec: PackSpec
    features: FeatureSet
    rules: tuple[CompiledRule, ...]
    by_type: Mapping[str, tuple[CompiledRule, ...]]
    active_by_type: Mapping[str, tuple[CompiledRule, ...]]
    shadow_by_type: Mapping[str, tuple[CompiledRule, ...]]
    thresholds: Mapping[str, Thresholds]
    fusion: FusionWeights

    def thresholds_for(self, event_type: str) -> Thresholds:
        return self.thresholds.get(event_type, _DEFAULT_THRESHOLDS)


_DEFAULT_THRESHOLDS = Thresholds()


def canonical_json(document: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) — the form the version hash is taken over."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pack_version(document: Mapping[str, Any]) -> str:
    """Content hash of a pack document."""
    return "rs-" + hashlib.sha256(canonical_json(document).encode()).hexdigest()[:16]


MAX_PACK_NODES = 200_000  # values in one pack document; far above any real pack


def parse_pack_text(text: str, *, source: str = "pack") -> dict[str, Any]:
    """Decode YAML or JSON text into a pack document; raises RulePackError.

    Only JSON-compatible values are accepted (no YAML sets, binary, dates or other tags), so a
    pack always has one canonical JSON form to hash, and a document is bounded in size (YAML
    aliases cannot expand it past ``MAX_PACK_NODES`` values).
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "pack"
        raise RulePackError([PackIssue(where, f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise RulePackError([PackIssue("pack", "nested too deeply")]) from None
    if not isinstance(document, dict):
        raise RulePackError([PackIssue("pack", "a pack must be a mapping")])
    problem = _json_problem(document)
    if problem is not None:
        raise RulePackError([PackIssue("pack", problem)])
    return document


def _json_problem(document: Any) -> str | None:
    """Why ``document`` is not plain JSON data of a sane size, or None."""
    stack = [(document, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_PACK_NODES or depth > 64:
            return "too large or nested too deeply"
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"keys must be strings, found {key!r}"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return "numbers must be finite"
        elif not (value is None or isinstance(value, str | int | bool)):
            return f"only JSON values are allowed, found a {type(value).__name__}"
    return None


def load_ruleset(
    document: Mapping[str, Any], *, functions: FunctionRegistry | None = None
) -> Ruleset:
    """Validate and compile a pack document into a Ruleset; raises RulePackError."""
    functions = functions if functions is not None else default_functions()
    try:
        spec = PackSpec.model_validate(document)
    except ValidationError as exc:
        raise RulePackError([_issue_from_validation(document, e) for e in exc.errors()]) from None

    issues: list[PackIssue] = []
    lists = {name: frozenset(values) for name, values in spec.lists.items()}
    try:
        feature_set = build_features(spec.features, functions, lists)
    except FeatureConfigError as exc:
        raise RulePackError([PackIssue("features", str(exc))]) from None
    feature_types = feature_set.schema()

    thresholds: dict[str, Thresholds] = {}
    for event_type, t in spec.thresholds.items():
        if event_type not in EVENT_TYPES:
            issues.append(PackIssue(f"thresholds.{event_type}", "unknown event type"))
            continue
        try:
            thresholds[event_type] = Thresholds(t.challenge, t.review, t.block)
        except ValueError as exc:
            issues.append(PackIssue(f"thresholds.{event_type}", str(exc)))
    try:
        fusion = FusionWeights(**spec.fusion)
    except ValueError as exc:
        issues.append(PackIssue("fusion", str(exc)))
        fusion = FusionWeights()

    compiled: list[CompiledRule] = []
    seen: set[str] = set()
    for rule in spec.rules:
        if rule.id in seen:
            issues.append(PackIssue(f"rule {rule.id}", "duplicate rule id"))
            continue
        seen.add(rule.id)
        result = _compile_rule(rule, feature_set, feature_types, functions, lists)
        if isinstance(result, PackIssue):
            issues.append(result)
        else:
            compiled.append(result)
    if issues:
        raise RulePackError(issues)

    by_type = {t: tuple(r for r in compiled if r.enabled and t in r.events) for t in EVENT_TYPES}
    active = {t: tuple(r for r in rules if not r.shadow) for t, rules in by_type.items()}
    shadow = {t: tuple(r for r in rules if r.shadow) for t, rules in by_type.items()}
    return Ruleset(
        version=pack_version(document),
        name=spec.name,
        spec=spec,
        features=feature_set,
        rules=tuple(compiled),
        by_type=by_type,
        active_by_type=active,
        shadow_by_type=shadow,
        thresholds=thresholds,
        fusion=fusion,
    )


def load_ruleset_text(
    text: str, *, source: str = "pack", functions: FunctionRegistry | None = None
) -> Ruleset:
    """Parse and compile pack text (YAML or JSON)."""
    return load_ruleset(parse_pack_text(text, source=source), functions=functions)


def _rule_schema(
    rule: RuleSpec, feature_set: FeatureSet, feature_types: Mapping[str, str]
) -> dict[str, str]:
    """Paths a rule may read: fields of any of its event types, and features computed for any
    of them (absent from a given event, either reads as null)."""
    schema = union_schema(rule.events)
    wanted = set(rule.events)
    computed = {f.prefix for f in feature_set.features if wanted & set(f.spec.events)}
    for path, kind in feature_types.items():
        if path[: path.rindex(".") + 1] in computed:
            schema[path] = kind
    return schema


def _compile_rule(
    rule: RuleSpec,
    feature_set: FeatureSet,
    feature_types: Mapping[str, str],
    functions: FunctionRegistry,
    lists: Mapping[str, frozenset[str]],
) -> CompiledRule | PackIssue:
    where = f"rule {rule.id}"
    if rule.score is None and rule.outcome is None:
        return PackIssue(where, "a rule needs a score, an outcome or both")
    schema = _rule_schema(rule, feature_set, feature_types)
    try:
        expr = compile_expression(rule.when, schema=schema, functions=functions, lists=lists)
    except ExprError as exc:
        return PackIssue(where, exc.message, exc.position, exc.expected)
    if expr.type is not ExprType.BOOL:
        return PackIssue(where, "the condition must be true or false", 0, "a boolean expression")
    if rule.value is not None and rule.value not in schema:
        return PackIssue(where, f"value {rule.value!r} is not a field or feature of its events")
    parts = _message_parts(rule.message or rule.description)
    if isinstance(parts, str):
        return PackIssue(where, parts)
    for _, name in parts:
        if name is not None and name not in schema:
            return PackIssue(where, f"message placeholder {{{name}}} is not a field or feature")
    return CompiledRule(
        id=rule.id,
        reason=rule.reason,
        description=rule.description,
        events=rule.events,
        enabled=rule.enabled,
        weight=rule.score or 0.0,
        outcome=Outcome.parse(rule.outcome) if rule.outcome else None,
        shadow=rule.mode == "shadow",
        condition=expr.fn,
        value_path=rule.value,
        message=_message_template(parts),
        tags=rule.tags,
    )


def format_value(value: Any) -> str:
    """A value as a person reads it: 12, 1,250.50, 0.42, yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.2f}" if abs(value) >= 10 else f"{value:.2g}"
    return str(value)


def _message_parts(text: str) -> list[tuple[str, str | None]] | str:
    """A message template as (literal, placeholder) pairs, or why it is not a valid one.

    ``{path}`` is replaced by that field's or feature's value; ``{{`` and ``}}`` are braces.
    """
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"message: {exc} (write {{{{ and }}}} for literal braces)"
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (
            not _PLACEHOLDER.fullmatch("{" + name + "}") or spec or conversion
        ):
            shown = name + (":" + spec if spec else "")
            return f"message placeholder {{{shown}}} must be a field path"
        parts.append((literal, name))
    return parts


def _message_template(parts: list[tuple[str, str | None]]) -> Callable[[Mapping[str, Any]], str]:
    if all(name is None for _, name in parts):
        text = "".join(literal for literal, _ in parts)
        return lambda env: text

    def render(env: Mapping[str, Any]) -> str:
        out = []
        for literal, name in parts:
            out.append(literal)
            if name is not None:
                value = env.get(name)
                out.append(format_value(value) if value is not None else "unknown")
        return "".join(out)

    return render


def _issue_from_validation(document: Mapping[str, Any], err: Mapping[str, Any]) -> PackIssue:
    loc = list(err.get("loc", ()))
    where = ".".join(str(p) for p in loc) or "pack"
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = document.get("rules")
        rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        rule_id = rule.get("id") if isinstance(rule, dict) else None
        rest = ".".join(str(p) for p in loc[2:])
        where = f"rule {rule_id or '#' + str(loc[1] + 1)}" + (f" field {rest}" if rest else "")
    message = str(err.get("msg", "invalid"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        message = "unknown field"
    return PackIssue(where, message)
