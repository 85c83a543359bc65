"""``/v1/alerts`` and ``/v1/labels``: the analyst's queue, its workflow and labels, over HTTP.

:func:`alerts_router` builds the routes over an :class:`~riskguard.services.alerts.AlertService`;
the application includes the router (``app.include_router(alerts_router(service))``), whose
exception handlers answer authentication (401/403) and database (503) failures. The alert
use cases' own errors are mapped here, each to a problem response.

Roles: ``read`` and ``analyst`` keys read; ``analyst`` keys change alerts, add notes and write
labels; ``admin`` keys may do anything. ``ingest`` keys (machines posting events) do neither.

An event's first label (from any source) is also fed into the tenant's feature state, when the
application is wired with a label feedback (``container.label_feedback``: features with
``when: type == "label"`` learn from it, see ``adapters.ml.feedback``). Later labels of the same
event are stored but not fed again (a window cannot take an event back); a state store that
is down leaves the label stored and the state without it (logged).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import structlog
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from riskguard.adapters.http.deps import Caller
from riskguard.adapters.http.problems import problem_response, responses
from riskguard.engine.events import Id
from riskguard.services.alerts import (
    Alert,
    AlertChange,
    AlertDecision,
    AlertError,
    AlertNotFound,
    AlertQuery,
    AlertService,
    ConcurrentChange,
    InvalidChange,
    InvalidTransition,
    Label,
    LabelQuery,
    Note,
    Resolution,
    Severity,
    Status,
)
from riskguard.services.auth import ForbiddenError, Principal

ANALYST: Final = "analyst"
_ALERT_ID = r"^alr_[0-9A-HJKMNP-TV-Z]{26}$"
_SOURCE = r"^[a-z][a-z0-9_]{0,31}$"
_REASON = r"^[A-Z][A-Z0-9_]{0,79}$"
_TEXT_ID = r"^[^\x00-\x1f\x7f]+$"  # as engine.events.Id: PostgreSQL refuses NUL in text
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)

SeverityName = Literal["low", "medium", "high", "critical"]
log = structlog.get_logger("riskguard.labels")


def _in_range(value: datetime) -> datetime:
    try:
        inside = _EARLIEST <= value.astimezone(UTC) < _LATEST
    except OverflowError:
        inside = False
    if not inside:
        raise ValueError("must be between 1970 and 2200")
    return value


Moment = Annotated[AwareDatetime, AfterValidator(_in_range)]
AlertIdPath = Annotated[str, Path(pattern=_ALERT_ID)]


# -- schemas -----------------------------------------------------------------------------------


class AlertOut(BaseModel):
    """An alert: decisions about one entity for one reason, deduplicated within a window."""

    id: str
    entity: str | None = Field(description="The account, user or service id the alert is about")
    reason: str = Field(description="The primary reason code of its decisions")
    severity: SeverityName
    status: Status
    assignee: str | None
    resolution: Resolution | None
    score: float = Field(ge=0, le=1, description="The highest score among its decisions")
    decision_count: int = Field(ge=1)
    first_decision_id: str
    last_decision_id: str
    first_seen_at: datetime = Field(description="Event time of its oldest decision")
    last_seen_at: datetime = Field(description="Event time of its newest decision")
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="Key id that resolved it")


class AlertDecisionOut(BaseModel):
    decision_id: str
    event_id: str
    outcome: Literal["allow", "challenge", "review", "block"]
    score: float = Field(ge=0, le=1)
    occurred_at: datetime


class AlertDetail(AlertOut):
    recent_decisions: list[AlertDecisionOut] = Field(
        description="Its newest decisions (up to 20), newest first"
    )


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class AlertPatch(BaseModel):
    """Fields a PATCH may change (none: nothing changes); ``assignee: null`` unassigns.
    Resolving needs a resolution."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    status: Status | None = None
    assignee: Id | None = None
    resolution: Resolution | None = Field(
        default=None, description="With status resolved; written as a label for every event"
    )


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    text: str = Field(min_length=1, max_length=4000, pattern=r"^[^\x00]+$")


class NoteOut(BaseModel):
    id: str
    alert_id: str
    author: str = Field(description="Key id of the writer")
    text: str
    created_at: datetime


class NotePage(BaseModel):
    items: list[NoteOut]
    next_cursor: str | None


class LabelIn(BaseModel):
    """A label for one event; one per (event, source), a later one replaces it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: Id
    label: Resolution
    source: str = Field(default="analyst", pattern=_SOURCE, description="e.g. analyst, chargeback")
    labelled_at: Moment | None = Field(
        default=None,
        description="When the label became known, 1970-2200 (default: now)",
    )


class LabelOut(BaseModel):
    id: str
    event_id: str
    label: Resolution
    source: str
    labelled_at: datetime
    author: str = Field(description="Key id of the writer")
    recorded_at: datetime
    alert_id: str | None = Field(description="The alert whose resolution wrote it")


class LabelPage(BaseModel):
    items: list[LabelOut]
    next_cursor: str | None


def alert_out(alert: Alert) -> AlertOut:
    return AlertOut.model_validate(alert.to_dict())


def _decision_out(d: AlertDecision) -> AlertDecisionOut:
    return AlertDecisionOut.model_validate(
        {
            "decision_id": d.decision_id,
            "event_id": d.event_id,
            "outcome": d.outcome,
            "score": d.score,
            "occurred_at": d.occurred_at,
        }
    )


def _note_out(note: Note) -> NoteOut:
    return NoteOut(
        id=note.id,
        alert_id=note.alert_id,
        author=note.author,
        text=note.text,
        created_at=note.created_at,
    )


def _label_out(label: Label) -> LabelOut:
    return LabelOut(
        id=label.id,
        event_id=label.event_id,
        label=label.label,
        source=label.source,
        labelled_at=label.labelled_at,
        author=label.author,
        recorded_at=label.recorded_at,
        alert_id=label.alert_id,
    )


# -- auth --------------------------------------------------------------------------------------


def _require(caller: Principal, *roles: str) -> None:
    """Like ``Principal.require`` but for role names ``ports.Role`` may not list yet
    (``analyst``): admin may do anything, others need one of ``roles``."""
    if caller.role != "admin" and caller.role not in roles:
        raise ForbiddenError(f"this operation needs a key with role {' or '.join(roles)}")


def _rid(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def _problem(request: Request, exc: Exception) -> Response:
    """The problem response of an alert use case's error or a bad cursor (ValueError)."""
    rid = _rid(request)
    if isinstance(exc, AlertNotFound):
        return problem_response(404, str(exc), request_id=rid)
    if isinstance(exc, InvalidTransition | ConcurrentChange):
        return problem_response(409, str(exc), request_id=rid)
    if isinstance(exc, InvalidChange):
        errors = [{"field": exc.field, "message": exc.message}]
        return problem_response(422, exc.message, errors=errors, request_id=rid)
    errors = [{"field": "cursor", "message": str(exc)}]
    return problem_response(422, "the request is not valid", errors=errors, request_id=rid)


async def _feed(feedback: Any, label: Label) -> None:
    """Fold an event's first label into feature state; the label stands if this fails."""
    try:
        await feedback(
            label.tenant_id, label.event_id, fraud=label.label == "fraud", at=label.labelled_at
        )
    except Exception as exc:
        log.warning("label_feedback_failed", event_id=label.event_id, error_type=type(exc).__name__)


# -- routes ------------------------------------------------------------------------------------


def alerts_router(service: AlertService) -> APIRouter:
    """The ``/v1/alerts`` and ``/v1/labels`` routes over ``service``."""
    router = APIRouter()
    auth = responses(401, 403)

    @router.get(
        "/v1/alerts",
        tags=["alerts"],
        summary="The alert queue: most severe first, then most recently updated",
        response_model=AlertPage,
        responses={**auth, **responses(422, 503)},
    )
    async def list_alerts(
        request: Request,
        caller: Caller,
        status: Status | None = None,
        severity: SeverityName | None = None,
        entity: Annotated[str | None, Query(min_length=1, max_length=128, pattern=_TEXT_ID)] = None,
        assignee: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=_TEXT_ID)
        ] = None,
        reason: Annotated[str | None, Query(pattern=_REASON)] = None,
        since: Annotated[Moment | None, Query(description="opened_at >= since")] = None,
        until: Annotated[Moment | None, Query(description="opened_at < until")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> AlertPage | Response:
        _require(caller, "read", ANALYST)
        query = AlertQuery(
            status=status,
            severity=Severity.parse(severity) if severity is not None else None,
            entity=entity,
            assignee=assignee,
            reason=reason,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        try:
            found, next_cursor = await service.list_alerts(tenant_id=caller.tenant_id, query=query)
        except ValueError as exc:
            return _problem(request, exc)
        return AlertPage(items=[alert_out(a) for a in found], next_cursor=next_cursor)

    @router.get(
        "/v1/alerts/{alert_id}",
        tags=["alerts"],
        summary="One alert with its newest decisions",
        response_model=AlertDetail,
        responses={**auth, **responses(404, 422, 503)},
    )
    async def get_alert(
        request: Request, caller: Caller, alert_id: AlertIdPath
    ) -> AlertDetail | Response:
        _require(caller, "read", ANALYST)
        try:
            detail = await service.get_alert(tenant_id=caller.tenant_id, alert_id=alert_id)
        except AlertError as exc:
            return _problem(request, exc)
        return AlertDetail(
            **alert_out(detail.alert).model_dump(),
            recent_decisions=[_decision_out(d) for d in detail.recent_decisions],
        )

    @router.patch(
        "/v1/alerts/{alert_id}",
        tags=["alerts"],
        summary="Acknowledge, assign, hand back or resolve an alert",
        response_model=AlertOut,
        responses={**auth, **responses(404, 409, 422, 503)},
    )
    async def patch_alert(
        request: Request, caller: Caller, alert_id: AlertIdPath, patch: AlertPatch
    ) -> AlertOut | Response:
        _require(caller, ANALYST)
        change = AlertChange(
            status=patch.status,
            resolution=patch.resolution,
            assignee=patch.assignee,
            set_assignee="assignee" in patch.model_fields_set,
        )
        try:
            alert = await service.change_alert(
                tenant_id=caller.tenant_id, alert_id=alert_id, change=change, actor=caller.key_id
            )
        except AlertError as exc:
            return _problem(request, exc)
        return alert_out(alert)

    @router.post(
        "/v1/alerts/{alert_id}/notes",
        tags=["alerts"],
        status_code=201,
        summary="Add a note to an alert",
        response_model=NoteOut,
        responses={**auth, **responses(404, 422, 503)},
    )
    async def add_note(
        request: Request, caller: Caller, alert_id: AlertIdPath, note: NoteIn
    ) -> NoteOut | Response:
        _require(caller, ANALYST)
        try:
            stored = await service.add_note(
                tenant_id=caller.tenant_id, alert_id=alert_id, author=caller.key_id, text=note.text
            )
        except AlertError as exc:
            return _problem(request, exc)
        return _note_out(stored)

    @router.get(
        "/v1/alerts/{alert_id}/notes",
        tags=["alerts"],
        summary="An alert's notes, oldest first",
        response_model=NotePage,
        responses={**auth, **responses(404, 422, 503)},
    )
    async def list_notes(
        request: Request,
        caller: Caller,
        alert_id: AlertIdPath,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> NotePage | Response:
        _require(caller, "read", ANALYST)
        try:
            notes, next_cursor = await service.list_notes(
                tenant_id=caller.tenant_id, alert_id=alert_id, limit=limit, cursor=cursor
            )
        except (AlertError, ValueError) as exc:
            return _problem(request, exc)
        return NotePage(items=[_note_out(n) for n in notes], next_cursor=next_cursor)

    @router.post(
        "/v1/labels",
        tags=["labels"],
        status_code=201,
        summary="Label an event fraud or legitimate (replaces this source's earlier label)",
        response_model=LabelOut,
        responses={
            200: {"model": LabelOut, "description": "An earlier label of this source replaced"},
            **auth,
            **responses(422, 503),
        },
    )
    async def post_label(request: Request, caller: Caller, body: LabelIn) -> Any:
        _require(caller, ANALYST)
        feedback = getattr(getattr(request.app.state, "container", None), "label_feedback", None)
        earlier: list[Label] = []
        if feedback is not None:
            earlier, _ = await service.list_labels(
                tenant_id=caller.tenant_id, query=LabelQuery(event_id=body.event_id, limit=1)
            )
        stored, created = await service.put_label(
            tenant_id=caller.tenant_id,
            event_id=body.event_id,
            label=body.label,
            source=body.source,
            author=caller.key_id,
            labelled_at=body.labelled_at,
        )
        if feedback is not None and created and not earlier:
            await _feed(feedback, stored)
        out = _label_out(stored)
        if created:
            return out
        return Response(out.model_dump_json().encode(), media_type="application/json")

    @router.get(
        "/v1/labels",
        tags=["labels"],
        summary="Labels, newest first, filtered, with cursor pagination",
        response_model=LabelPage,
        responses={**auth, **responses(422, 503)},
    )
    async def list_labels(
        request: Request,
        caller: Caller,
        event_id: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=_TEXT_ID)
        ] = None,
        label: Resolution | None = None,
        source: Annotated[str | None, Query(pattern=_SOURCE)] = None,
        since: Annotated[Moment | None, Query(description="labelled_at >= since")] = None,
        until: Annotated[Moment | None, Query(description="labelled_at < until")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> LabelPage | Response:
        _require(caller, "read", ANALYST)
        query = LabelQuery(
            event_id=event_id,
            label=label,
            source=source,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        try:
            found, next_cursor = await service.list_labels(tenant_id=caller.tenant_id, query=query)
        except ValueError as exc:
            return _problem(request, exc)
        return LabelPage(items=[_label_out(x) for x in found], next_cursor=next_cursor)

    return router
