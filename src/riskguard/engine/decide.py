"""The pure decision: rules and model over one event's fields and features → an explained outcome.

``Engine.plan`` lists the feature-state operations an event needs; the shell runs them against a
state store (one call), then ``Engine.decide`` evaluates the rules indexed for the event's type,
fuses the fired rules and the model into one score, classifies it, applies hard outcomes and
writes the explanation. Shadow rules are evaluated and reported but never change the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    model_version: str | None
    env: Mapping[str, Any]  # the fields and feature values the decision was made on

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

    __slots__ = ("model", "ruleset")

    def __init__(self, ruleset: Ruleset, model: Model | None = None) -> None:
        self.ruleset = ruleset
        self.model = model

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
        model = self.model
        if not fired and model is None:
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
                None,
                env,
            )

        model_score = None
        model_contributions: Mapping[str, float] = {}
        if model is not None:
            result = model.score({path: env.get(path) for path in model.features})
            # A model that cannot say (NaN) is treated as absent, never as "no risk".
            if result.score == result.score:
                model_score = min(max(result.score, 0.0), 1.0)
                model_contributions = result.contributions

        weighted = [r for r in fired if r.weight > 0.0]
        fused = fuse([r.weight for r in weighted], model_score, ruleset.fusion)
        contributions = dict(zip((r.id for r in weighted), fused.rule_contributions, strict=True))

        outcome = classify(fused.score, ruleset.thresholds_for(event_type))
        reasons = []
        for rule in fired:
            if rule.outcome is not None and rule.outcome > outcome:
                outcome = rule.outcome
            reasons.append(_reason(rule, env, contributions.get(rule.id, 0.0)))
        if model_score is not None and model is not None:
            reasons.append(
                _model_reason(model_score, fused.model_contribution, model_contributions)
            )
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
            model_version=model.version if model is not None else None,
            env=env,
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


def _model_reason(score: float, contribution: float, factors: Mapping[str, float]) -> Reason:
    top = sorted(factors.items(), key=lambda kv: -kv[1])[:3]
    named = ", ".join(name.replace("features.", "").replace("_", " ") for name, v in top if v > 0)
    message = f"model risk score {format_value(score)}" + (f" (driven by {named})" if named else "")
    return Reason(
        code="MODEL_SCORE", source="model", message=message, value=score, contribution=contribution
    )


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
