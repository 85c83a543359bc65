"""Request and response shapes of the v1 API (documented in OpenAPI at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from riskguard.engine.events import Event


class ReasonOut(BaseModel):
    code: str = Field(description="Stable reason code (docs/reason-codes.md)")
    source: Literal["rule", "model", "policy"]
    message: str
    value: Any = None
    contribution: float = Field(description="Share of the score this reason accounts for")
    rule_id: str | None = None
    outcome: Literal["challenge", "review", "block"] | None = Field(
        default=None, description="A hard outcome this reason imposed"
    )
    factors: dict[str, float] | None = Field(
        default=None,
        description="Model reasons of outcomes other than allow: the model's top input "
        "contributions to its score, by feature (signed, 4 places); absent otherwise",
    )


class DecisionOut(BaseModel):
    """The answer of ``POST /v1/decisions``."""

    decision_id: str
    event_id: str
    type: Literal["transaction", "login", "session", "api_call"]
    outcome: Literal["allow", "challenge", "review", "block"]
    score: float = Field(ge=0, le=1)
    reasons: list[ReasonOut]
    explanation: str
    ruleset_version: str
    model_version: str | None
    latency_ms: float = Field(ge=0, description="Receipt to decision, before the durable write")
    replayed: bool = Field(description="True when this is the stored answer to an earlier request")
    degraded: bool = Field(description="Decided by the failure policy (DEPENDENCY_UNAVAILABLE)")
    recorded: bool = Field(description="False only when the database could not store it")
    occurred_at: datetime


class DecisionDetail(DecisionOut):
    """A stored decision with everything it was made on."""

    received_at: datetime
    entity: str | None
    event: dict[str, Any]
    features: dict[str, Any] = Field(description="Feature values the decision saw")
    shadow_reasons: list[ReasonOut] = Field(description="Shadow rules that fired (not enforced)")


class DecisionPage(BaseModel):
    items: list[DecisionDetail]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class RuleOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    description: str
    events: list[str]
    when: str
    reason: str
    deleted: bool = False


class RuleList(BaseModel):
    draft_version: str = Field(description="Content hash the draft would publish as")
    active_version: str | None
    unpublished_changes: bool
    revision: int
    rules: list[RuleOut]


class RulePatch(BaseModel):
    """Fields a PATCH may change: toggle, weight, mode, hard outcome (null removes it)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    score: float | None = Field(default=None, gt=0, le=1)
    mode: Literal["active", "shadow"] | None = None
    outcome: Literal["challenge", "review", "block"] | None = None


class ValidateIn(BaseModel):
    """A single rule (checked against the tenant's draft pack) or a whole pack."""

    model_config = ConfigDict(extra="forbid")

    rule: dict[str, Any] | None = None
    pack: dict[str, Any] | None = None


class IssueOut(BaseModel):
    where: str
    message: str
    position: int | None = None
    expected: str = ""


class ValidateOut(BaseModel):
    valid: bool
    issues: list[IssueOut]
    version: str | None = Field(description="The pack's content hash when valid")


class PublishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=500)


class RulesetOut(BaseModel):
    version: str
    created_at: datetime
    created_by: str
    comment: str
    active: bool
    rules: int


class RulesetDetail(RulesetOut):
    document: dict[str, Any]


class DraftOut(BaseModel):
    draft_version: str
    revision: int
    document: dict[str, Any]


class CheckOut(BaseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class ReadyOut(BaseModel):
    status: Literal["ready", "degraded"]
    checks: dict[str, CheckOut]
    failure_policy: dict[str, str] = Field(description="Answer per event type while degraded")


def decision_request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON schema of the request body (the engine's event models with ``occurred_at``
    optional) and the component schemas it refers to."""
    schema = TypeAdapter(Event).json_schema(ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = schema.pop("$defs", {})
    for name, definition in defs.items():
        if name.endswith("Event") and "occurred_at" in definition.get("properties", {}):
            required = [r for r in definition.get("required", []) if r != "occurred_at"]
            definition["required"] = required
            definition["properties"]["occurred_at"]["description"] = (
                "RFC 3339 date-time; defaults to the time received"
            )
            definition["properties"]["event_id"]["description"] = (
                "Idempotency key within the tenant (1-128 characters)"
            )
    return schema, defs
