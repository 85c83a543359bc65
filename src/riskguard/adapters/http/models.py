"""``/v1/models``: the model versions of the registry and, per tenant, which one is active.

:func:`models_router` builds the routes over a registry directory (``RISKGUARD_MODEL_DIR``); the
application includes it (``app.include_router(models_router(model_dir))``), whose exception
handlers answer authentication (401) and role (403) failures. Activation is scoped to the
caller's tenant: a tenant's scope follows the deployment-wide ``default`` scope until one of its
admins activates a version, and never affects another tenant. Every activation is verified
(hashes, and that the model builds) before it takes effect, and recorded in the registry's
activation log with the key id that made it, and in the audit log (``model.activated``,
``model.rolled_back``, actor the key id) when it is on. The process that takes the request
serves the new version at once; the others pick it up at their next poll.

``GET /v1/models`` also says which version this process serves the tenant (``serving``) and,
when the active version cannot be loaded (altered on disk, say), which one and why
(``serving_problem``): the tenant keeps being decided with the model it had, or none.

Roles: ``read`` keys (and admin) list; ``admin`` keys activate and roll back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from riskguard.adapters.http.deps import Caller
from riskguard.adapters.http.problems import problem_response, responses
from riskguard.adapters.ml.artifact import (
    VERSION_PATTERN,
    ArtifactError,
    ForeignArtifactError,
)
from riskguard.adapters.ml.registry import (
    DEFAULT_SCOPE,
    Activation,
    ModelRegistry,
    NothingToRollBackError,
    RegistryError,
    UnknownVersionError,
)

VersionPath = Annotated[str, PathParam(pattern=VERSION_PATTERN, description="m-<16 hex>")]


class ModelOut(BaseModel):
    """One model version of the registry."""

    version: str
    usable: bool = Field(description="False when the artifact fails verification")
    problem: str | None = Field(description="Why it is unusable")
    active: bool = Field(description="Active for the caller's tenant")
    kind: Literal["isolation_forest", "gbm", "online"] | None = None
    created_at: str | None = None
    dataset: str | None = None
    event_types: list[str] = Field(default_factory=list)
    inputs: int | None = None
    train_range: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Test metrics (or validation, when no test range)"
    )


class ModelList(BaseModel):
    items: list[ModelOut]
    active: str | None = Field(description="The version active for the caller's tenant")
    active_scope: Literal["tenant", "default"] | None = Field(
        description="Whether the tenant chose it or follows the deployment-wide default"
    )
    serving: str | None = Field(
        default=None, description="The version this service process decides the tenant with"
    )
    serving_problem: str | None = Field(
        default=None,
        description="Why the active version is not served (it fails to load), if it is not",
    )


class ActivationOut(BaseModel):
    version: str
    scope: str
    previous: str | None = Field(description="The tenant's own previous version, if any")
    activated_at: str
    actor: str = Field(description="Key id of the admin who activated it")
    action: Literal["activate", "rollback"] = "activate"


def _rid(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def _listing(registry: ModelRegistry, tenant_id: str) -> ModelList:
    own = registry.own_active(tenant_id)
    active = own if own is not None else registry.own_active(DEFAULT_SCOPE)
    items = []
    for listed in registry.versions():
        manifest = listed.manifest
        if manifest is None:
            items.append(
                ModelOut(
                    version=listed.name,
                    usable=False,
                    problem="the artifact fails verification",
                    active=listed.name == active,
                )
            )
            continue
        summary = manifest.summary()
        items.append(
            ModelOut(
                version=manifest.version,
                usable=True,
                problem=None,
                active=manifest.version == active,
                kind=manifest.kind,
                created_at=manifest.created_at,
                dataset=summary["dataset"],
                event_types=summary["event_types"],
                inputs=summary["inputs"],
                train_range=summary["train_range"],
                metrics=summary["metrics"],
            )
        )
    scope: Literal["tenant", "default"] | None = (
        "tenant" if own is not None else ("default" if active is not None else None)
    )
    return ModelList(items=items, active=active, active_scope=scope)


def models_router(model_dir: str | Path) -> APIRouter:
    """The ``/v1/models`` routes over the registry at ``model_dir``."""
    registry = ModelRegistry(model_dir)
    router = APIRouter()
    auth = responses(401, 403)

    @router.get(
        "/v1/models",
        tags=["models"],
        summary="Model versions, newest first, and the one active for this tenant",
        response_model=ModelList,
        responses={**auth, **responses(503)},
    )
    async def list_models(request: Request, caller: Caller) -> ModelList | Response:
        caller.require("read")
        try:
            listing = await asyncio.to_thread(_listing, registry, caller.tenant_id)
        except (RegistryError, OSError):
            return problem_response(
                503, "the model registry cannot be read", request_id=_rid(request)
            )
        models = getattr(_container(request), "models", None)
        if models is not None:
            status = models.status(caller.tenant_id)
            listing.serving = status.serving
            if status.problem is not None:
                failed = status.failed or "the active version"
                listing.serving_problem = f"{failed} cannot be loaded: {status.problem}"
        return listing

    @router.post(
        "/v1/models/{version}/activate",
        tags=["models"],
        summary="Make a verified model version the active one for this tenant",
        response_model=ActivationOut,
        responses={**auth, **responses(404, 422, 503)},
    )
    async def activate(
        request: Request, caller: Caller, version: VersionPath
    ) -> ActivationOut | Response:
        caller.require("admin")
        rid = _rid(request)
        try:
            record = await asyncio.to_thread(
                registry.activate, version, scope=caller.tenant_id, actor=caller.key_id
            )
        except UnknownVersionError:
            return problem_response(404, f"no model version {version}", request_id=rid)
        except ArtifactError as exc:
            what = (
                "is not a riskguard model"
                if isinstance(exc, ForeignArtifactError)
                else ("was altered after it was written")
            )
            return problem_response(
                422,
                f"model version {version} {what}; it was not activated",
                errors=[{"field": "version", "message": "the artifact fails verification"}],
                request_id=rid,
            )
        except (RegistryError, OSError):
            return problem_response(503, "the model registry cannot be written", request_id=rid)
        return await _changed(request, caller.key_id, record)

    @router.post(
        "/v1/models/rollback",
        tags=["models"],
        summary="Return this tenant to the model version active before the current one",
        response_model=ActivationOut,
        responses={**auth, **responses(409, 422, 503)},
    )
    async def rollback(request: Request, caller: Caller) -> ActivationOut | Response:
        caller.require("admin")
        rid = _rid(request)
        try:
            record = await asyncio.to_thread(
                registry.rollback, scope=caller.tenant_id, actor=caller.key_id
            )
        except ArtifactError:
            return problem_response(
                422,
                "the earlier version fails verification; it was not activated",
                errors=[{"field": "version", "message": "the artifact fails verification"}],
                request_id=rid,
            )
        except UnknownVersionError:
            return problem_response(
                409, "the earlier version is no longer in the registry", request_id=rid
            )
        except NothingToRollBackError:
            return problem_response(
                409,
                "this tenant has no earlier model version of its own to roll back to",
                request_id=rid,
            )
        except (RegistryError, OSError):
            return problem_response(503, "the model registry cannot be written", request_id=rid)
        return await _changed(request, caller.key_id, record)

    return router


def _container(request: Request) -> Any:
    return getattr(request.app.state, "container", None)


async def _changed(request: Request, actor: str, record: Activation) -> ActivationOut:
    """Audit the change and serve it in this process (when the application is wired)."""
    changed = getattr(_container(request), "model_changed", None)
    if changed is not None:
        await changed(actor, record)
    return ActivationOut(
        version=record.version,
        scope=record.scope,
        previous=record.previous,
        activated_at=record.at,
        actor=record.actor,
        action="rollback" if record.action == "rollback" else "activate",
    )
