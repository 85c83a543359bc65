"""The records of webhooks: subscriptions, their secrets, deliveries; and event filters.

Event filters are topic patterns: an exact topic (``decision.created``), a family
(``alert.*``) or everything (``*``). A subscription may also name decision outcomes
(``["review", "block"]``); then a ``decision.*`` message reaches it only for those outcomes
(alert messages are not filtered by outcome).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from riskguard.adapters.sql.outbox import TOPICS

DeliveryState = Literal["pending", "delivered", "dead"]
DELIVERY_STATES: tuple[DeliveryState, ...] = ("pending", "delivered", "dead")
OUTCOMES = ("allow", "challenge", "review", "block")
FAMILIES = tuple(sorted({topic.split(".", 1)[0] for topic in TOPICS}))


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid event filter, or None."""
    if pattern == "*" or pattern in TOPICS:
        return None
    if pattern.endswith(".*") and pattern[:-2] in FAMILIES:
        return None
    choices = ", ".join(("*", *(f"{f}.*" for f in FAMILIES), *TOPICS))
    return f"unknown event type {pattern!r}; expected one of {choices}"


def topic_matches(pattern: str, topic: str) -> bool:
    if pattern == "*" or pattern == topic:
        return True
    return pattern.endswith(".*") and topic.startswith(pattern[:-1])


def delivery_id(message_id: str, subscription_id: str) -> str:
    """The ``webhook-id`` of one message to one subscription: derived, not drawn, so a
    message fanned out again after a crash makes the very same delivery."""
    digest = hashlib.sha256(f"{message_id}\x00{subscription_id}".encode()).hexdigest()
    return "msg_" + digest[:32]


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """One signing secret of a subscription, sealed (see ``sealing``); ``expires_at`` is set
    on the old secret by a rotation (it keeps signing until then)."""

    id: str
    sealed: str
    created_at: datetime
    expires_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    tenant_id: str
    url: str
    description: str
    events: tuple[str, ...]
    outcomes: tuple[str, ...] | None
    secrets: tuple[SecretRecord, ...]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    revision: int = 1  # bumped by every change; a change made from a stale copy is refused
    disabled_reason: str | None = None

    def wants(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Whether a message of ``topic`` with ``payload`` passes this subscription's filters."""
        if not any(topic_matches(p, topic) for p in self.events):
            return False
        if self.outcomes is not None and topic.startswith("decision."):
            return payload.get("outcome") in self.outcomes
        return True

    def active_secrets(self, now: datetime) -> list[SecretRecord]:
        return [s for s in self.secrets if s.active(now)]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one subscription, as the API lists it."""

    id: str
    tenant_id: str
    subscription_id: str
    message_id: str
    topic: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


class ClaimedMessage(NamedTuple):
    """An outbox message a dispatcher holds (locked or leased) for fan-out: an immutable named
    tuple, not a frozen dataclass, because one is made per message on the worker's hot path
    and a frozen dataclass's ``__init__`` costs several times a tuple's."""

    id: str
    tenant_id: str
    topic: str
    subject: str
    payload: Mapping[str, Any]
    created_at: datetime
    attempts: int  # including this claim
    sinks_done: frozenset[str]
    # the payload's JSON text as stored (PostgreSQL), which the event streams' JSON is built
    # around; None where the store did not read it as text
    payload_json: str | None = None


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What one fan-out did: the sinks now done, and the error if one still failed.
    ``attempt`` is the message's claim count, this one included (1: its first)."""

    id: str
    sinks_done: frozenset[str]
    attempt: int
    error: str | None = None
    retry_at: datetime | None = None  # None: dispatched


@dataclass(frozen=True, slots=True)
class MessageBatch:
    """Messages claimed together, and how to record their outcomes (``finish(outcomes,
    deliveries, now)``: create the deliveries, mark each message dispatched or due again)."""

    messages: list[ClaimedMessage]
    finish: Callable[[Sequence[MessageOutcome], Sequence[NewDelivery], datetime], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    tenant_id: str
    subscription_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery a dispatcher holds (leased) for one attempt, with what it needs to send."""

    id: str
    attempts: int  # including this attempt
    subscription_id: str
    tenant_id: str
    url: str
    secrets: tuple[SecretRecord, ...]
    message_id: str
    topic: str
    payload: Mapping[str, Any]
    message_created_at: datetime


def filters_problems(
    events: Sequence[str], outcomes: Sequence[str] | None
) -> list[tuple[str, str]]:
    """(field, message) for every invalid event pattern or outcome."""
    problems = []
    if not events:
        problems.append(("events", "give at least one event type (or '*')"))
    for i, pattern in enumerate(events):
        problem = pattern_problem(pattern)
        if problem:
            problems.append((f"events.{i}", problem))
    for i, outcome in enumerate(outcomes or ()):
        if outcome not in OUTCOMES:
            problems.append((f"outcomes.{i}", f"expected one of {', '.join(OUTCOMES)}"))
    return problems


def secret_context(subscription_id: str, secret_id: str) -> str:
    """What a sealed secret is bound to (see ``sealing``): its subscription and its own id."""
    return f"webhook-secret/{subscription_id}/{secret_id}"
