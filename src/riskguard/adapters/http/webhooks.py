"""``/v1/webhooks``: a tenant's webhook subscriptions and their deliveries.

Included in the app with one line, ``app.include_router(webhooks.router)``. Reads need the
``read`` role, changes ``admin``; everything is scoped to the key's tenant (another tenant's
subscription is a 404, never a 403). The router's lifespan (merged into the app's, inside the
container's) uses ``container.webhooks`` when the wiring built one, else builds a
:class:`~riskguard.adapters.webhooks.service.WebhookService` on the settings' database and
closes it at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from riskguard.adapters.http.deps import Caller
from riskguard.adapters.http.problems import problem_response, responses
from riskguard.adapters.webhooks.models import Delivery, Subscription
from riskguard.adapters.webhooks.service import (
    DEFAULT_KEEP_PREVIOUS_S,
    Change,
    ConflictError,
    InvalidWebhookError,
    WebhookNotFoundError,
    WebhookService,
)
from riskguard.adapters.webhooks.signing import WebhookSecret

_JSON = "application/json"
_WEBHOOK_ID = r"^wh_[0-9a-f]{16}$"
_DELIVERY_ID = r"^msg_[0-9a-f]{32}$"
_EVENT = r"^[a-z*][a-z.*]{0,63}$"
Outcome = Literal["allow", "challenge", "review", "block"]


# -- shapes -------------------------------------------------------------------------------------


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="https URL of the receiver")
    events: list[Annotated[str, Field(pattern=_EVENT)]] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=16,
        description="decision.created, alert.opened, alert.updated, a family (alert.*) or *",
    )
    outcomes: list[Outcome] | None = Field(
        default=None, max_length=4, description="Only decisions with these outcomes"
    )
    description: str = Field(default="", max_length=500)
    enabled: bool = True
    secret: str | None = Field(
        default=None,
        max_length=200,
        description="Your own whsec_ secret (24-64 bytes); generated when absent",
    )


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[Annotated[str, Field(pattern=_EVENT)]] | None = Field(
        default=None, min_length=1, max_length=16
    )
    outcomes: list[Outcome] | None = Field(
        default=None, max_length=4, description="null removes the outcome filter"
    )
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None
    rotate_secret: bool = Field(
        default=False, description="Add a new secret; the current ones expire after the overlap"
    )
    secret: str | None = Field(
        default=None, max_length=200, description="The new secret of a rotation (else generated)"
    )
    keep_previous_s: int = Field(
        default=DEFAULT_KEEP_PREVIOUS_S,
        ge=0,
        le=7 * 86_400,
        description="How long the current secrets keep signing after a rotation",
    )
    remove_secrets: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=8, description="Secret ids to retire at once"
    )


class SecretOut(BaseModel):
    id: str
    created_at: datetime
    expires_at: datetime | None


class WebhookOut(BaseModel):
    id: str
    url: str
    description: str
    events: list[str]
    outcomes: list[Outcome] | None
    enabled: bool
    disabled_reason: str | None
    secrets: list[SecretOut]
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut):
    secret: str | None = Field(description="The new secret, shown this once (whsec_...)")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header: the receiver's idempotency key")
    message_id: str
    topic: str
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


# -- plumbing ----------------------------------------------------------------------------------


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    container = app.state.container
    service = getattr(container, "webhooks", None)
    if service is not None:
        app.state.webhooks = service
        yield
        return
    service = WebhookService.for_settings(container.settings)
    app.state.webhooks = service
    try:
        yield
    finally:
        await service.close()


router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], lifespan=_lifespan)


def _service(request: Request) -> WebhookService:
    return request.app.state.webhooks  # type: ignore[no-any-return]


Service = Annotated[WebhookService, Depends(_service)]
WebhookIdPath = Annotated[str, Path(pattern=_WEBHOOK_ID)]
DeliveryIdPath = Annotated[str, Path(pattern=_DELIVERY_ID)]
_ERRORS = responses(401, 403, 404, 409, 422, 503)


def _rid(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def webhook_out(
    sub: Subscription, secret: WebhookSecret | None = None, *, with_secret: bool = False
) -> dict[str, Any]:
    now = datetime.now(UTC)
    out: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "description": sub.description,
        "events": list(sub.events),
        "outcomes": None if sub.outcomes is None else list(sub.outcomes),
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason,
        "secrets": [
            {"id": s.id, "created_at": _iso(s.created_at), "expires_at": _iso(s.expires_at)}
            for s in sub.active_secrets(now)
        ],
        "created_at": _iso(sub.created_at),
        "updated_at": _iso(sub.updated_at),
    }
    if with_secret:
        out["secret"] = None if secret is None else str(secret)
    return out


def delivery_out(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "message_id": d.message_id,
        "topic": d.topic,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": _iso(d.next_attempt_at),
        "created_at": _iso(d.created_at),
        "last_attempt_at": _iso(d.last_attempt_at),
        "delivered_at": _iso(d.delivered_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
    }


def _problem(request: Request, exc: Exception) -> Response:
    if isinstance(exc, InvalidWebhookError):
        errors = [{"field": f, "message": m} for f, m in exc.errors]
        return problem_response(
            422, "the webhook is not valid", errors=errors, request_id=_rid(request)
        )
    if isinstance(exc, WebhookNotFoundError):
        return problem_response(404, str(exc), request_id=_rid(request))
    return problem_response(409, str(exc), request_id=_rid(request))


_HANDLED = (InvalidWebhookError, WebhookNotFoundError, ConflictError)


# -- routes ------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    summary="Subscribe a URL to events (the secret is in this answer only)",
    response_model=WebhookWithSecret,
    responses=_ERRORS,
)
async def create_webhook(
    request: Request, caller: Caller, service: Service, body: WebhookIn
) -> Response:
    caller.require("admin")
    try:
        sub, secret = await service.create(
            caller.tenant_id,
            url=body.url,
            events=body.events,
            outcomes=body.outcomes,
            description=body.description,
            enabled=body.enabled,
            secret=body.secret,
        )
    except _HANDLED as exc:
        return _problem(request, exc)
    return _json(webhook_out(sub, secret, with_secret=True), 201)


@router.get("", summary="The tenant's webhooks", response_model=WebhookList, responses=_ERRORS)
async def list_webhooks(caller: Caller, service: Service) -> Response:
    caller.require("read")
    return _json({"items": [webhook_out(s) for s in await service.subscriptions(caller.tenant_id)]})


@router.get("/{webhook_id}", summary="One webhook", response_model=WebhookOut, responses=_ERRORS)
async def get_webhook(
    request: Request, caller: Caller, service: Service, webhook_id: WebhookIdPath
) -> Response:
    caller.require("read")
    try:
        return _json(webhook_out(await service.get(caller.tenant_id, webhook_id)))
    except _HANDLED as exc:
        return _problem(request, exc)


@router.patch(
    "/{webhook_id}",
    summary="Change the URL, filters or state; rotate or retire secrets",
    response_model=WebhookWithSecret,
    responses=_ERRORS,
)
async def patch_webhook(
    request: Request,
    caller: Caller,
    service: Service,
    webhook_id: WebhookIdPath,
    body: WebhookPatch,
) -> Response:
    caller.require("admin")
    given = body.model_fields_set
    change = Change(
        url=body.url,
        events=body.events,
        outcomes=body.outcomes,
        outcomes_set="outcomes" in given,
        description=body.description,
        enabled=body.enabled,
        rotate_secret=body.rotate_secret,
        secret=body.secret,
        keep_previous_s=body.keep_previous_s,
        remove_secrets=body.remove_secrets,
    )
    try:
        sub, secret = await service.update(caller.tenant_id, webhook_id, change)
    except _HANDLED as exc:
        return _problem(request, exc)
    return _json(webhook_out(sub, secret, with_secret=True))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Delete a webhook and its deliveries",
    responses=_ERRORS,
)
async def delete_webhook(
    request: Request, caller: Caller, service: Service, webhook_id: WebhookIdPath
) -> Response:
    caller.require("admin")
    try:
        await service.delete(caller.tenant_id, webhook_id)
    except _HANDLED as exc:
        return _problem(request, exc)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    summary="Deliveries of a webhook, newest first, with cursor pagination",
    response_model=DeliveryPage,
    responses=_ERRORS,
)
async def list_deliveries(
    request: Request,
    caller: Caller,
    service: Service,
    webhook_id: WebhookIdPath,
    state: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    caller.require("read")
    try:
        items, next_cursor = await service.deliveries(
            caller.tenant_id, webhook_id, state=state, limit=limit, cursor=cursor
        )
    except _HANDLED as exc:
        return _problem(request, exc)
    return _json({"items": [delivery_out(d) for d in items], "next_cursor": next_cursor})


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    summary="One delivery",
    response_model=DeliveryOut,
    responses=_ERRORS,
)
async def get_delivery(
    request: Request,
    caller: Caller,
    service: Service,
    webhook_id: WebhookIdPath,
    delivery_id: DeliveryIdPath,
) -> Response:
    caller.require("read")
    try:
        return _json(
            delivery_out(await service.delivery(caller.tenant_id, webhook_id, delivery_id))
        )
    except _HANDLED as exc:
        return _problem(request, exc)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a delivered or dead delivery again (same webhook-id, fresh attempts)",
    response_model=DeliveryOut,
    responses=_ERRORS,
)
async def redeliver(
    request: Request,
    caller: Caller,
    service: Service,
    webhook_id: WebhookIdPath,
    delivery_id: DeliveryIdPath,
) -> Response:
    caller.require("admin")
    try:
        delivery = await service.redeliver(caller.tenant_id, webhook_id, delivery_id)
    except _HANDLED as exc:
        return _problem(request, exc)
    return _json(delivery_out(delivery), 202)
