"""Alerts, cases and labels: what analysts work after a decision is recorded.

A decision whose outcome is in :attr:`AlertPolicy.outcomes` (``review`` and ``block`` by default)
opens an alert, or joins one: decisions of one tenant about one entity for one reason (the
decision's primary reason code) are *deduplicated* into a single alert while each arrives within
:attr:`AlertPolicy.window` (24 h by default) of the alert's newest decision, by event time.
Joining bumps the alert's decision count, its newest decision and, if higher, its severity and
score. A decision outside the window, or after the alert was resolved, opens a new alert.

Severity comes from the outcome and the score (:func:`severity_for`). The workflow is
``open -> acknowledged -> resolved``, plus ``open -> resolved`` (closing straight away) and
``acknowledged -> open`` (handing it back to the queue). ``resolved`` is final — there is no
reopening: new activity opens a new alert, which keeps each resolution (and the labels it wrote)
tied to the decisions it was made on. Only the resolution of a resolved alert may still change
(a correction), which writes the labels again.

Resolving an alert records a ``fraud`` | ``legitimate`` *label* (source ``analyst``) for the event
of every decision the alert holds; training reads labels (``riskguard model train --dataset
events``). Labels also arrive directly (``POST /v1/labels``, e.g. chargebacks). There is one label
per (tenant, event, source): a later write replaces it (last write wins), so sources never
overwrite each other and a correction is a plain rewrite.

:meth:`AlertService.on_decision` takes a stored :class:`~riskguard.ports.DecisionRecord`; the
outbox dispatcher calls it after the decision is recorded, so alerting never adds latency to
the decision itself. It is idempotent: a decision delivered twice counts once.

Errors (mapped to problem responses by the HTTP adapter)::

    AlertError
    ├── AlertNotFound        404  no such alert for this tenant
    ├── InvalidTransition    409  the status change is not allowed from the current status
    ├── ConcurrentChange     409  the alert kept changing under us (retried first)
    └── InvalidChange        422  the change itself is inconsistent (e.g. resolving without
                                   a resolution)
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

from riskguard.engine.policy import Outcome
from riskguard.ids import time_ordered_id
from riskguard.ports import DecisionRecord

Status = Literal["open", "acknowledged", "resolved"]
Resolution = Literal["fraud", "legitimate"]
STATUSES: Final[tuple[Status, ...]] = ("open", "acknowledged", "resolved")
RESOLUTIONS: Final[tuple[Resolution, ...]] = ("fraud", "legitimate")
ANALYST_SOURCE: Final = "analyst"
NO_REASON: Final = "NO_REASON"  # the reason of a decision that carries none

# status -> the statuses it may move to (staying put is a no-op, not a transition)
TRANSITIONS: Final[Mapping[Status, frozenset[Status]]] = {
    "open": frozenset({"acknowledged", "resolved"}),
    "acknowledged": frozenset({"open", "resolved"}),
    "resolved": frozenset(),
}
# one level up for a decision this sure of itself
ESCALATE_AT_SCORE: Final = 0.9
_RETRIES = 8


class Severity(enum.IntEnum):
    """How urgent an alert is; stored as its number, so queues sort on it."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(
                f"unknown severity {text!r}; expected low, medium, high or critical"
            ) from None


_BASE_SEVERITY: Final[Mapping[Outcome, Severity]] = {
    Outcome.ALLOW: Severity.LOW,
    Outcome.CHALLENGE: Severity.LOW,
    Outcome.REVIEW: Severity.MEDIUM,
    Outcome.BLOCK: Severity.HIGH,
}


def severity_for(outcome: str, score: float) -> Severity:
    """The severity a decision earns: by outcome (challenge low, review medium, block high),
    one level higher when the score is at least :data:`ESCALATE_AT_SCORE`."""
    base = _BASE_SEVERITY[Outcome.parse(outcome)]
    if score >= ESCALATE_AT_SCORE:
        return Severity(min(base + 1, Severity.CRITICAL))
    return base


def primary_reason(reasons: Sequence[Mapping[str, Any]]) -> str:
    """The code an alert is keyed on: the decision's first reason (the engine sorts reasons
    hard outcome first, then by contribution), or :data:`NO_REASON`."""
    for reason in reasons:
        code = reason.get("code")
        if isinstance(code, str) and code:
            return code
    return NO_REASON


def new_id(prefix: str, now: datetime) -> str:
    """``prefix`` + 26 Crockford base32 characters: 48-bit milliseconds then 80 random bits,
    laid out like decision ids, so ids sort by creation time (and the list order with them)."""
    return time_ordered_id(prefix, now.timestamp())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlertError(Exception):
    """Base of the alert use cases' errors (see the module docstring for the tree)."""


class AlertNotFound(AlertError):
    """No such alert for this tenant (404)."""


class InvalidTransition(AlertError):
    """The requested status cannot follow the current one (409)."""


class ConcurrentChange(AlertError):
    """The alert changed concurrently on every attempt (409; the client may retry)."""


class InvalidChange(AlertError):
    """A change that is inconsistent in itself (422); ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Which decisions alert and how long an alert keeps absorbing similar ones."""

    outcomes: frozenset[str] = frozenset({"review", "block"})
    window: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        for outcome in self.outcomes:
            Outcome.parse(outcome)
        if self.window <= timedelta(0):
            raise ValueError("the deduplication window must be positive")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. ``dedup_key`` is set while the alert absorbs new decisions (open or
    acknowledged, and not yet superseded after its window)."""

    id: str
    tenant_id: str
    entity: str | None
    reason: str
    severity: Severity
    status: Status
    assignee: str | None
    resolution: Resolution | None
    score: float
    decision_count: int
    first_decision_id: str
    last_decision_id: str
    first_seen_at: datetime  # event time of the oldest decision
    last_seen_at: datetime  # event time of the newest decision
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    dedup_key: str | None
    revision: int

    def to_dict(self) -> dict[str, Any]:
        """The public shape (API answers and published events); times as RFC 3339 text."""
        return {
            "id": self.id,
            "entity": self.entity,
            "reason": self.reason,
            "severity": self.severity.label,
            "status": self.status,
            "assignee": self.assignee,
            "resolution": self.resolution,
            "score": self.score,
            "decision_count": self.decision_count,
            "first_decision_id": self.first_decision_id,
            "last_decision_id": self.last_decision_id,
            "first_seen_at": iso(self.first_seen_at),
            "last_seen_at": iso(self.last_seen_at),
            "opened_at": iso(self.opened_at),
            "updated_at": iso(self.updated_at),
            "resolved_at": iso(self.resolved_at) if self.resolved_at is not None else None,
            "resolved_by": self.resolved_by,
        }


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AlertCandidate:
    """What one decision brings to the alert table; ``alert_id`` is used if it opens one."""

    alert_id: str
    tenant_id: str
    entity: str | None
    reason: str
    severity: Severity
    score: float
    decision_id: str
    event_id: str
    outcome: str
    occurred_at: datetime

    @property
    def dedup_key(self) -> str | None:
        """``REASON:entity`` (reason codes have no colon, so the split is unambiguous); None
        without an entity: such decisions are never merged."""
        return None if self.entity is None else f"{self.reason}:{self.entity}"


@dataclass(frozen=True, slots=True)
class Absorbed:
    """Where a decision went: the alert as it is now, and whether this call opened it or
    found the decision already counted (a redelivery)."""

    alert: Alert
    opened: bool
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """One decision an alert holds."""

    decision_id: str
    event_id: str
    outcome: str
    score: float
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class AlertDetail:
    alert: Alert
    recent_decisions: list[AlertDecision]


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A PATCH: each field None when not given; ``set_assignee`` says whether ``assignee`` was
    given (None then unassigns)."""

    status: Status | None = None
    resolution: Resolution | None = None
    assignee: str | None = None
    set_assignee: bool = False


@dataclass(frozen=True, slots=True)
class ResolutionLabel:
    """The label a resolution writes for every event of the alert."""

    label: Resolution
    author: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Note:
    id: str
    tenant_id: str
    alert_id: str
    author: str
    text: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Label:
    """The label of one event from one source (last write wins per tenant, event, source)."""

    id: str
    tenant_id: str
    event_id: str
    label: Resolution
    source: str
    labelled_at: datetime  # when the label became true or known (e.g. the chargeback date)
    author: str  # key id of the writer
    recorded_at: datetime
    alert_id: str | None = None  # the alert whose resolution wrote it


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters of ``GET /v1/alerts`` (AND); ``since``/``until`` bound ``opened_at``."""

    status: Status | None = None
    severity: Severity | None = None
    entity: str | None = None
    assignee: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class LabelQuery:
    """Filters of ``GET /v1/labels`` (AND); ``since``/``until`` bound ``labelled_at``."""

    event_id: str | None = None
    label: Resolution | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None


class AlertStore(Protocol):
    """Where alerts, notes and labels live (SQL: ``adapters.sql.alerts.SqlAlertStore``).

    Each method is one transaction. Reads of a page raise ValueError("invalid cursor") for a
    cursor they did not make.
    """

    async def absorb(
        self, candidate: AlertCandidate, *, window: timedelta, now: datetime
    ) -> Absorbed:
        """Join the candidate to the tenant's absorbing alert with its dedup key when that
        alert's newest decision is less than ``window`` older than the candidate's, or open
        a new alert (releasing a stale one) — atomically, so concurrent candidates with one
        key open one alert. A decision already counted changes nothing (``duplicate``)."""
        ...

    async def absorb_many(
        self, candidates: Sequence[AlertCandidate], *, window: timedelta, now: datetime
    ) -> builtins.list[Absorbed]:
        """:meth:`absorb` each candidate in order, with the same guarantees (the dispatcher's
        batches)."""
        ...

    async def get(self, tenant_id: str, alert_id: str) -> Alert | None: ...

    async def list(
        self, tenant_id: str, query: AlertQuery
    ) -> tuple[builtins.list[Alert], str | None]:
        """A page, most severe first, then most recently updated, and the next cursor."""
        ...

    async def decisions(
        self, tenant_id: str, alert_id: str, *, limit: int
    ) -> builtins.list[AlertDecision]:
        """The alert's newest decisions (by event time)."""
        ...

    async def save(self, before: Alert, after: Alert, *, label: ResolutionLabel | None) -> bool:
        """Write ``after`` if the stored alert is still at ``before.revision`` (False if not),
        with ``label`` for each of its events when given."""
        ...

    async def add_note(self, note: Note) -> None: ...

    async def notes(
        self, tenant_id: str, alert_id: str, *, limit: int, cursor: str | None
    ) -> tuple[builtins.list[Note], str | None]:
        """A page, oldest first."""
        ...

    async def put_label(self, label: Label) -> tuple[Label, bool]:
        """Insert or replace the (tenant, event, source) label: (stored, created)."""
        ...

    async def labels(
        self, tenant_id: str, query: LabelQuery
    ) -> tuple[builtins.list[Label], str | None]:
        """A page, newest label first."""
        ...

    async def close(self) -> None: ...


def candidate_for(record: DecisionRecord, policy: AlertPolicy) -> AlertCandidate | None:
    """What ``record`` contributes to alerts, or None when its outcome does not alert."""
    if record.outcome not in policy.outcomes:
        return None
    return _candidate(
        record.tenant_id,
        record.decision_id,
        record.event_id,
        record.entity,
        record.outcome,
        record.score,
        record.reasons,
        record.occurred_at,
        record.received_at,
    )


def candidate_from_message(
    tenant_id: str, payload: Mapping[str, Any], policy: AlertPolicy
) -> AlertCandidate | None:
    """What a ``decision.created`` message's payload (``decision_payload``: outcome, score,
    reasons, entity, ids and times) contributes to alerts — the same candidate as
    :func:`candidate_for` of the stored record, without reading it back. None when the outcome
    does not alert; ValueError when the payload lacks what a candidate needs."""
    outcome = payload.get("outcome")
    if outcome not in policy.outcomes:
        return None
    try:
        entity = payload["entity"]
        reasons = payload["reasons"]
        score = float(payload["score"])
        decision_id, event_id = str(payload["decision_id"]), str(payload["event_id"])
        occurred_at = _aware(datetime.fromisoformat(payload["occurred_at"]))
        received_at = _aware(datetime.fromisoformat(payload["received_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a decision payload: {exc}") from None
    if not isinstance(reasons, list) or not (entity is None or isinstance(entity, str)):
        raise ValueError("not a decision payload: reasons or entity of the wrong type")
    return _candidate(
        tenant_id,
        decision_id,
        event_id,
        entity,
        str(outcome),
        score,
        reasons,
        occurred_at,
        received_at,
    )


def _candidate(
    tenant_id: str,
    decision_id: str,
    event_id: str,
    entity: str | None,
    outcome: str,
    score: float,
    reasons: Sequence[Mapping[str, Any]],
    occurred_at: datetime,
    received_at: datetime,
) -> AlertCandidate:
    return AlertCandidate(
        alert_id=new_id("alr_", received_at),
        tenant_id=tenant_id,
        entity=entity,
        reason=primary_reason(reasons),
        severity=severity_for(outcome, score),
        score=score,
        decision_id=decision_id,
        event_id=event_id,
        outcome=outcome,
        occurred_at=occurred_at,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def apply_change(alert: Alert, change: AlertChange, *, actor: str, now: datetime) -> Alert:
    """``alert`` after ``change`` by ``actor`` (the same object when nothing changes).

    Raises InvalidChange for an inconsistent change and InvalidTransition for a status the
    current one cannot move to; a resolved alert only takes a new resolution. An empty change
    changes nothing.
    """
    target: Status = change.status or alert.status
    if target != alert.status and target not in TRANSITIONS[alert.status]:
        raise InvalidTransition(f"an alert that is {alert.status} cannot become {target}")
    if alert.status == "resolved" and change.set_assignee and change.assignee != alert.assignee:
        raise InvalidTransition("a resolved alert cannot be reassigned")
    resolution = change.resolution or alert.resolution
    if target == "resolved" and resolution is None:
        raise InvalidChange("resolution", "resolving needs a resolution: fraud or legitimate")
    if target != "resolved" and change.resolution is not None:
        raise InvalidChange("resolution", "a resolution is only given with status resolved")

    after = replace(
        alert,
        status=target,
        resolution=resolution,
        assignee=change.assignee if change.set_assignee else alert.assignee,
    )
    if target == "resolved" and alert.status != "resolved":
        after = replace(after, resolved_at=now, resolved_by=actor, dedup_key=None)
    if after == alert:
        return alert
    return replace(after, updated_at=now, revision=alert.revision + 1)


@dataclass(slots=True)
class AlertService:
    """The alert and label use cases of every tenant (one instance per process)."""

    store: AlertStore
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    clock: Callable[[], datetime] = _utcnow
    recent_decisions: int = 20  # how many of its decisions an alert's detail shows

    async def on_decision(self, record: DecisionRecord) -> Absorbed | None:
        """Open or join an alert for a recorded decision (None when its outcome does not
        alert). Safe to call again for the same decision."""
        candidate = candidate_for(record, self.policy)
        if candidate is None:
            return None
        return await self.store.absorb(candidate, window=self.policy.window, now=self.clock())

    async def on_candidates(self, candidates: Sequence[AlertCandidate]) -> list[Absorbed]:
        """:meth:`on_decision` for a batch (in order, one transaction): the outbox consumer's
        path. Safe to call again for the same decisions."""
        return await self.store.absorb_many(candidates, window=self.policy.window, now=self.clock())

    async def list_alerts(
        self, *, tenant_id: str, query: AlertQuery
    ) -> tuple[list[Alert], str | None]:
        """A page of the tenant's alerts; ValueError for a bad cursor."""
        return await self.store.list(tenant_id, query)

    async def get_alert(self, *, tenant_id: str, alert_id: str) -> AlertDetail:
        """One alert with its newest decisions."""
        alert = await self._alert(tenant_id, alert_id)
        recent = await self.store.decisions(tenant_id, alert_id, limit=self.recent_decisions)
        return AlertDetail(alert, recent)

    async def change_alert(
        self, *, tenant_id: str, alert_id: str, change: AlertChange, actor: str
    ) -> Alert:
        """Apply a PATCH (status, assignee, resolution), retried on concurrent changes; a
        resolution labels every event of the alert in the same transaction."""
        for _ in range(_RETRIES):
            before = await self._alert(tenant_id, alert_id)
            now = self.clock()
            after = apply_change(before, change, actor=actor, now=now)
            if after is before:
                return before
            label = None
            if after.status == "resolved" and after.resolution != before.resolution:
                assert after.resolution is not None
                label = ResolutionLabel(after.resolution, actor, now)
            if await self.store.save(before, after, label=label):
                return after
        raise ConcurrentChange("the alert kept changing; retry")

    async def add_note(self, *, tenant_id: str, alert_id: str, author: str, text: str) -> Note:
        """Append a note (resolved alerts take notes too: post-mortems)."""
        await self._alert(tenant_id, alert_id)
        now = self.clock()
        note = Note(new_id("note_", now), tenant_id, alert_id, author, text, now)
        await self.store.add_note(note)
        return note

    async def list_notes(
        self, *, tenant_id: str, alert_id: str, limit: int, cursor: str | None
    ) -> tuple[list[Note], str | None]:
        await self._alert(tenant_id, alert_id)
        return await self.store.notes(tenant_id, alert_id, limit=limit, cursor=cursor)

    async def put_label(
        self,
        *,
        tenant_id: str,
        event_id: str,
        label: Resolution,
        source: str,
        author: str,
        labelled_at: datetime | None = None,
    ) -> tuple[Label, bool]:
        """Write the (event, source) label, replacing an earlier one: (stored, created)."""
        now = self.clock()
        row = Label(
            id=new_id("lbl_", now),
            tenant_id=tenant_id,
            event_id=event_id,
            label=label,
            source=source,
            labelled_at=labelled_at or now,
            author=author,
            recorded_at=now,
        )
        return await self.store.put_label(row)

    async def list_labels(
        self, *, tenant_id: str, query: LabelQuery
    ) -> tuple[list[Label], str | None]:
        return await self.store.labels(tenant_id, query)

    async def close(self) -> None:
        await self.store.close()

    async def _alert(self, tenant_id: str, alert_id: str) -> Alert:
        alert = await self.store.get(tenant_id, alert_id)
        if alert is None:
            raise AlertNotFound(f"alert {alert_id} not found")
        return alert
