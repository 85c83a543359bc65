"""The pure decision: rules and model over one event's fields and features → an explained outcome.

``Engine.plan`` lists the feature-state operations an event needs; the shell runs them against a
state store (one call), then ``Engine.decide`` evaluates the rules indexed for the event's type,
fuses the fired rules and the model into one score, classifies it, applies hard outcomes and
writes the explanation. Shadow rules are evaluated and reported but never change the outcome.

The model, when one is active, is asked only about the event types it scores (``event_types``,
see ``engine.models``), reads the environment itself, and its per-input contributions are read
(and so, for lazy models, computed) only when the outcome is not ``allow``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from riskguard.engine.events import EVENT_TYPES
from riskguard.engine.features import Env, FeatureOp
from riskguard.engine.fusion import fuse
from riskguard.engine.models import Model
from riskguard.engine.policy import Outcome, classify
from riskguard.engine.rules import CompiledRule, Ruleset, format_value

_PHRASES = {
    Outcome.ALLOW: "Allowed",
    Outcome.CHALLENGE: "Step-up verification required",
    Outcome.REVIEW: "Held for review",
    Outcome.BLOCK: "Blocked",
}
MAX_EXPLAINED = 3
MAX_FACTORS = 5  # a model reason lists its strongest inputs' contributions, by magnitude
MAX_DRIVERS = 3  # and names the strongest positive ones in its message
_NOTHING_TO_REPORT = "Allowed: no risk signals."


# Reason and Decision are value objects by convention, not frozen: a frozen dataclass's __init__
# costs about a microsecond per object, which the hot path pays on every decision.
@dataclass(slots=True)
class Reason:
    """Why a decision went the way it did: a stable code, the value behind it, its share."""

    code: str
    source: str  # "rule" | "model"
    message: str
    value: Any = None
    contribution: float = 0.0
    rule_id: str | None = None
    outcome: Outcome | None = None  # a hard outcome this reason imposed
    # A model reason's strongest inputs and their signed contributions to the model's score
    # (score units; they add up, with the other inputs', to score - the model's base score).
    factors: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "source": self.source,
            "message": self.message,
            "value": self.value,
            "contribution": round(self.contribution, 4),
        }
        if self.rule_id is not None:
            out["rule_id"] = self.rule_id
        if self.outcome is not None:
            out["outcome"] = self.outcome.label
        if self.factors is not None:
            out["factors"] = {name: round(v, 4) for name, v in self.factors.items()}
        return out


@dataclass(slots=True)
class Decision:
    """The engine's answer for one event, with everything needed to explain and replay it."""

    event_id: str
    event_type: str
    outcome: Outcome
    score: float
    reasons: tuple[Reason, ...]
    shadow_reasons: tuple[Reason, ...]
    explanation: str
    ruleset_version: str
    model_version: str | None  # the model that was asked (None: no model took part)
    env: Mapping[str, Any]  # the fields and feature values the decision was made on
    model_score: float | None = None  # the model's own score, when it gave one

    def feature_snapshot(self) -> dict[str, Any]:
        """Every feature value the decision saw, by ``features.<name>.<output>`` path."""
        return {k[9:]: v for k, v in self.env.items() if k.startswith("features.")}

    def to_dict(self) -> dict[str, Any]:
        """The decision in the public contract's shape (without service-level fields)."""
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "outcome": self.outcome.label,
            "score": round(self.score, 4),
            "reasons": [r.to_dict() for r in self.reasons],
            "shadow_reasons": [r.to_dict() for r in self.shadow_reasons],
            "explanation": self.explanation,
            "ruleset_version": self.ruleset_version,
            "model_version": self.model_version,
        }


class Engine:
    """A ruleset and an optional model, ready to plan and decide; immutable once built."""

    __slots__ = ("_model_for", "model", "ruleset")

    def __init__(self, ruleset: Ruleset, model: Model | None = None) -> None:
        self.ruleset = ruleset
        self.model = model
        # The model by event type, for the types it scores only (one dict lookup per event).
        self._model_for: dict[str, Model] = {}
        if model is not None:
            scored = getattr(model, "event_types", None)
            types = EVENT_TYPES if scored is None else tuple(scored)
            self._model_for = dict.fromkeys(types, model)

    def scores(self, event_type: str) -> bool:
        """Whether the model (if any) is asked about events of this type."""
        return event_type in self._model_for

    def plan(self, event_type: str, fields: Mapping[str, Any]) -> list[FeatureOp]:
        """The feature-state operations this event needs."""
        return self.ruleset.features.plan(event_type, fields)

    def decide(self, event_id: str, event_type: str, env: Env) -> Decision:
        """Decide on one event whose fields and feature values are in ``env``."""
        ruleset = self.ruleset
        fired = [rule for rule in ruleset.active_by_type[event_type] if rule.condition(env)]
        shadow_rules = ruleset.shadow_by_type[event_type]
        shadow = (
            tuple(_reason(r, env, 0.0) for r in shadow_rules if r.condition(env))
            if shadow_rules
            else ()
        )
        model = self._model_for.get(event_type)
        model_score = None
        model_contributions: Mapping[str, float] | None = None
        if model is not None:
            result = model.score(env)
            score = result.score
            # A model that cannot say (NaN) is treated as absent, never as "no risk".
            if score == score:
                model_score = min(max(score, 0.0), 1.0)
                model_contributions = result.contributions
        if not fired and model_score is None:
            # The common case — nothing to report — costs one rule pass and one object.
            return Decision(
                event_id,
                event_type,
                Outcome.ALLOW,
                0.0,
                (),
                shadow,
                _NOTHING_TO_REPORT,
                ruleset.version,
                None if model is None else model.version,
                env,
            )

        weighted = [r for r in fired if r.weight > 0.0]
        fused = fuse([r.weight for r in weighted], model_score, ruleset.fusion)
        contributions = dict(zip((r.id for r in weighted), fused.rule_contributions, strict=True))

        outcome = classify(fused.score, ruleset.thresholds_for(event_type))
        reasons = []
        for rule in fired:
            if rule.outcome is not None and rule.outcome > outcome:
                outcome = rule.outcome
            reasons.append(_reason(rule, env, contributions.get(rule.id, 0.0)))
        if model_score is not None:
            # Explaining the model costs more than scoring; an allowed event needs no breakdown.
            factors = model_contributions if outcome is not Outcome.ALLOW else None
            reasons.append(_model_reason(model_score, fused.model_contribution, factors))
        reasons.sort(key=lambda r: (-(r.outcome or 0), -r.contribution))

        return Decision(
            event_id=event_id,
            event_type=event_type,
            outcome=outcome,
            score=fused.score,
            reasons=tuple(reasons),
            shadow_reasons=shadow,
            explanation=explain(outcome, fused.score, reasons),
            ruleset_version=ruleset.version,
            model_version=None if model is None else model.version,
            env=env,
            model_score=model_score,
        )


def _reason(rule: CompiledRule, env: Mapping[str, Any], contribution: float) -> Reason:
    value = env.get(rule.value_path) if rule.value_path is not None else None
    if value.__class__ is float and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # counts are kept as floats in feature state; report 8, not 8.0
    return Reason(
        code=rule.reason,
        source="rule",
        message=rule.message(env),
        value=value,
        contribution=contribution,
        rule_id=rule.id,
        outcome=rule.outcome,
    )


def _model_reason(score: float, contribution: float, factors: Mapping[str, float] | None) -> Reason:
    top: dict[str, float] | None = None
    named = ""
    if factors:
        ranked = sorted(factors.items(), key=lambda kv: -abs(kv[1]))
        top = {name: float(v) for name, v in ranked[:MAX_FACTORS] if v != 0.0} or None
        drivers = sorted((kv for kv in ranked if kv[1] > 0.0), key=lambda kv: -kv[1])
        named = ", ".join(_input_name(name) for name, _ in drivers[:MAX_DRIVERS])
    message = f"model risk score {format_value(score)}" + (f" (driven by {named})" if named else "")
    return Reason(
        code="MODEL_SCORE",
        source="model",
        message=message,
        value=score,
        contribution=contribution,
        factors=top,
    )


def _input_name(name: str) -> str:
    return name.replace("features.", "").replace("_", " ")


def explain(outcome: Outcome, score: float, reasons: list[Reason]) -> str:
    """One plain-language sentence from the outcome and its strongest reasons."""
    phrase = _PHRASES[outcome]
    if not reasons:
        return f"{phrase}: no risk signals."
    shown = [r.message for r in reasons[:MAX_EXPLAINED]]
    rest = len(reasons) - len(shown)
    if rest:
        shown.append(f"{rest} more signal{'s' if rest > 1 else ''}")
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    if outcome is Outcome.ALLOW:
        return f"{phrase} (risk {score:.2f} below the challenge threshold) despite: {listed}."
    return f"{phrase}: {listed}."
