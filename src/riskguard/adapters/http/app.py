"""The FastAPI application: the v1 contract over the services.

``POST /v1/decisions`` is the hot path: the body is read as bytes and decoded with orjson, the
answer is serialised with orjson, and FastAPI's per-request validation/serialisation layers are
bypassed (the OpenAPI document still describes both shapes exactly). Every other route uses
FastAPI's models. Every error is an RFC 9457 problem (``application/problem+json``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from riskguard.adapters.http.deps import Caller
from riskguard.adapters.http.metrics import Metrics
from riskguard.adapters.http.middleware import ServiceMiddleware
from riskguard.adapters.http.problems import PROBLEM_JSON, TITLES, problem_response, responses
from riskguard.adapters.http.schemas import (
    CheckOut,
    DecisionDetail,
    DecisionOut,
    DecisionPage,
    DraftOut,
    IssueOut,
    PublishIn,
    ReadyOut,
    RuleList,
    RuleOut,
    RulePatch,
    RulesetDetail,
    RulesetOut,
    ValidateIn,
    ValidateOut,
    decision_request_schema,
)
from riskguard.engine.events import InvalidEventError
from riskguard.engine.rules import PackIssue, RulePackError, RuleSpec, pack_version
from riskguard.gc_tuning import tune_gc
from riskguard.ports import DecisionQuery, DecisionRecord, DependencyUnavailable, RulesetVersion
from riskguard.services.auth import AuthError, ForbiddenError
from riskguard.services.decisions import (
    ConflictError,
    PendingError,
    decode_body,
)
from riskguard.services.rules import ConflictError as RuleConflict
from riskguard.services.rules import NotFoundError, rule_document, validate_document

log = structlog.get_logger("riskguard.http")

ORJSON_OPTS = orjson.OPT_NON_STR_KEYS
_JSON = "application/json"
_DECISION_ID = r"^dec_[0-9A-HJKMNP-TV-Z]{26}$"
_RULE_ID = r"^[A-Z][A-Z0-9_]{1,79}$"
_VERSION = r"^rs-[0-9a-f]{16}$"


RuleIdPath = Annotated[str, Path(pattern=_RULE_ID)]
VersionPath = Annotated[str, Path(pattern=_VERSION)]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=ORJSON_OPTS), status_code=status, media_type=_JSON)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decision_out(
    record: DecisionRecord, *, replayed: bool, recorded: bool = True
) -> dict[str, Any]:
    return {
        "decision_id": record.decision_id,
        "event_id": record.event_id,
        "type": record.event_type,
        "outcome": record.outcome,
        "score": record.score,
        "reasons": record.reasons,
        "explanation": record.explanation,
        "ruleset_version": record.ruleset_version,
        "model_version": record.model_version,
        "latency_ms": record.latency_ms,
        "replayed": replayed,
        "degraded": record.degraded,
        "recorded": recorded,
        "occurred_at": _iso(record.occurred_at),
    }


def decision_detail(record: DecisionRecord) -> dict[str, Any]:
    out = decision_out(record, replayed=False)
    del out["replayed"]
    out["replayed"] = False
    out["received_at"] = _iso(record.received_at)
    out["entity"] = record.entity
    out["event"] = record.event
    out["features"] = record.features
    out["shadow_reasons"] = record.shadow_reasons
    return out


def ruleset_out(v: RulesetVersion, *, document: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": v.version,
        "created_at": _iso(v.created_at),
        "created_by": v.created_by,
        "comment": v.comment,
        "active": v.active,
        "rules": len(v.document.get("rules", [])),
    }
    if document:
        out["document"] = v.document
    return out


def _issues(exc: RulePackError) -> list[dict[str, Any]]:
    return [
        {"where": i.where, "message": i.message, "position": i.position, "expected": i.expected}
        for i in exc.issues
    ]


async def handle_decision(
    container: Any, authorization: str | None, body: bytes, request_id: str | None, received: float
) -> Response:
    """``POST /v1/decisions`` from the raw request to the response (the hot path)."""
    metrics: Metrics = container.metrics
    try:
        caller = await container.keys.verify(authorization)
        caller.require("ingest")
        raw = decode_body(body)
        result = await container.decisions.decide(caller.tenant_id, raw, received)
    except AuthError:
        metrics.errors.labels("auth").inc()
        return problem_response(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            request_id=request_id,
            headers={"WWW-Authenticate": 'Bearer realm="riskguard"'},
        )
    except ForbiddenError as exc:
        metrics.errors.labels("forbidden").inc()
        return problem_response(403, str(exc), request_id=request_id)
    except InvalidEventError as exc:
        metrics.errors.labels("validation").inc()
        errors = [{"field": i.field, "message": i.message} for i in exc.issues]
        return problem_response(422, "the event is not valid", errors=errors, request_id=request_id)
    except ConflictError:
        metrics.errors.labels("conflict").inc()
        return problem_response(
            409, "this event_id was already used with a different body", request_id=request_id
        )
    except PendingError:
        metrics.errors.labels("pending").inc()
        return problem_response(
            503,
            "an earlier request with this event_id is still being recorded; retry",
            request_id=request_id,
            headers={"Retry-After": "1"},
        )
    except (DependencyUnavailable, NotFoundError):
        metrics.errors.labels("dependency").inc()
        return problem_response(
            503,
            "a dependency of the service is unavailable; retry later",
            request_id=request_id,
            headers={"Retry-After": "1"},
        )
    except Exception as exc:
        metrics.errors.labels("internal").inc()
        log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        return problem_response(500, "an internal error occurred", request_id=request_id)
    if result.replayed:
        metrics.replays.inc()
    return _json(decision_out(result.record, replayed=result.replayed, recorded=result.recorded))


def create_app(container: Any) -> ServiceMiddleware:
    """The ASGI application over a built container (see riskguard.wiring): the FastAPI app
    (``.app``) inside the service middleware."""
    settings = container.settings
    metrics: Metrics = container.metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await container.start()
        if settings.gc_tuning:
            tune_gc()
        try:
            yield
        finally:
            await container.stop()

    app = FastAPI(
        title="riskguard",
        version="1",
        summary="Real-time, explainable risk decisions.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )

    # -- errors: every one is a problem ------------------------------------------------------

    def rid(request: Request) -> str | None:
        value = request.scope.get("state", {}).get("request_id")
        return value if isinstance(value, str) else None

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            errors.append({"field": ".".join(loc) or "(body)", "message": msg})
        metrics.errors.labels("validation").inc()
        return problem_response(
            422, "the request is not valid", errors=errors, request_id=rid(request)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(
            exc.status_code, str(exc.detail), request_id=rid(request), headers=headers
        )

    @app.exception_handler(AuthError)
    async def _auth(request: Request, _exc: AuthError) -> Response:
        metrics.errors.labels("auth").inc()
        return problem_response(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            request_id=rid(request),
            headers={"WWW-Authenticate": 'Bearer realm="riskguard"'},
        )

    @app.exception_handler(ForbiddenError)
    async def _forbidden(request: Request, exc: ForbiddenError) -> Response:
        metrics.errors.labels("forbidden").inc()
        return problem_response(403, str(exc), request_id=rid(request))

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> Response:
        return problem_response(
            404, str(exc.args[0]) if exc.args else None, request_id=rid(request)
        )

    @app.exception_handler(RuleConflict)
    async def _rule_conflict(request: Request, exc: RuleConflict) -> Response:
        return problem_response(409, str(exc), request_id=rid(request))

    @app.exception_handler(RulePackError)
    async def _pack(request: Request, exc: RulePackError) -> Response:
        metrics.errors.labels("validation").inc()
        errors = [{"field": i.where, "message": str(i)} for i in exc.issues]
        return problem_response(
            422, "the rules do not compile", errors=errors, request_id=rid(request)
        )

    @app.exception_handler(DependencyUnavailable)
    async def _dependency(request: Request, exc: DependencyUnavailable) -> Response:
        metrics.errors.labels("dependency").inc()
        log.warning("dependency_unavailable", error=str(exc))
        return problem_response(
            503,
            "a dependency of the service is unavailable; retry later",
            request_id=rid(request),
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        metrics.errors.labels("internal").inc()
        log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        return problem_response(500, "an internal error occurred", request_id=rid(request))

    # -- auth --------------------------------------------------------------------------------

    app.state.container = container
    auth_errors = responses(401, 403)

    # -- operations --------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: database and state store checked",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "Not ready (with ?strict=true)"}},
    )
    async def readyz(
        strict: Annotated[bool, Query(description="503 while degraded")] = False,
    ) -> Response:
        checks = await container.check_dependencies()
        ok = all(c.ok for c in checks.values())
        body = ReadyOut(
            status="ready" if ok else "degraded",
            checks=checks,
            failure_policy={t: settings.policy(t).on_failure for t in settings.policies},
        )
        status = 503 if strict and not ok else 200
        return Response(body.model_dump_json().encode(), status_code=status, media_type=_JSON)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # -- decisions ---------------------------------------------------------------------------

    request_schema, _defs = decision_request_schema()

    @app.post(
        "/v1/decisions",
        tags=["decisions"],
        summary="Score one event and answer allow, challenge, review or block",
        response_model=DecisionOut,
        responses={**auth_errors, **responses(400, 409, 413, 422, 503)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": request_schema}},
            }
        },
    )
    async def post_decision(request: Request) -> Response:
        # Served by ServiceMiddleware's fast path; this route documents it (and would serve it
        # if the middleware were not installed).
        return await handle_decision(
            container,
            request.headers.get("authorization"),
            await request.body(),
            rid(request),
            time.time(),
        )

    @app.get(
        "/v1/decisions/{decision_id}",
        tags=["decisions"],
        summary="One stored decision with its event and feature snapshot",
        response_model=DecisionDetail,
        responses={**auth_errors, **responses(404, 422, 503)},
    )
    async def get_decision(
        caller: Caller,
        decision_id: Annotated[str, Path(pattern=_DECISION_ID)],
    ) -> Response:
        caller.require("read", "ingest")
        record = await container.store.get(caller.tenant_id, decision_id)
        if record is None:
            raise NotFoundError(f"decision {decision_id} not found")
        return _json(decision_detail(record))

    @app.get(
        "/v1/decisions",
        tags=["decisions"],
        summary="Stored decisions, newest first, filtered, with cursor pagination",
        response_model=DecisionPage,
        responses={**auth_errors, **responses(422, 503)},
    )
    async def list_decisions(
        caller: Caller,
        type: Annotated[  # the query parameter's public name
            str | None, Query(pattern="^(transaction|login|session|api_call)$")
        ] = None,
        outcome: Annotated[str | None, Query(pattern="^(allow|challenge|review|block)$")] = None,
        entity: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
        ] = None,
        since: Annotated[datetime | None, Query(description="occurred_at >= since")] = None,
        until: Annotated[datetime | None, Query(description="occurred_at < until")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> Response:
        caller.require("read", "ingest")
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                return problem_response(
                    422,
                    "the request is not valid",
                    errors=[{"field": name, "message": "must include a time zone offset"}],
                )
        query = DecisionQuery(
            event_type=type,
            outcome=outcome,
            entity=entity,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        try:
            records, next_cursor = await container.store.list(caller.tenant_id, query)
        except ValueError as exc:
            return problem_response(
                422,
                "the request is not valid",
                errors=[{"field": "cursor", "message": str(exc)}],
            )
        return _json({"items": [decision_detail(r) for r in records], "next_cursor": next_cursor})

    # -- rules -------------------------------------------------------------------------------

    rule_errors = {**auth_errors, **responses(404, 409, 422, 503)}

    @app.get(
        "/v1/rules",
        tags=["rules"],
        summary="The rules of the tenant's draft, with the active version",
        response_model=RuleList,
        responses={**auth_errors, **responses(422, 503)},
    )
    async def list_rules(
        caller: Caller,
        include_deleted: bool = False,
        event_type: Annotated[
            str | None, Query(pattern="^(transaction|login|session|api_call)$")
        ] = None,
    ) -> Response:
        caller.require("read")
        body = await container.rules.list_rules(caller.tenant_id, include_deleted=include_deleted)
        if event_type is not None:
            body["rules"] = [r for r in body["rules"] if event_type in r.get("events", ())]
        return _json(body)

    @app.get("/v1/rules/{rule_id}", tags=["rules"], response_model=RuleOut, responses=rule_errors)
    async def get_rule(caller: Caller, rule_id: RuleIdPath) -> Response:
        caller.require("read")
        return _json(await container.rules.get_rule(caller.tenant_id, rule_id))

    @app.post(
        "/v1/rules",
        tags=["rules"],
        status_code=201,
        summary="Add a rule to the draft (publish to enforce it)",
        response_model=RuleOut,
        responses=rule_errors,
    )
    async def create_rule(caller: Caller, rule: RuleSpec) -> Response:
        caller.require("admin")
        body = await container.rules.create_rule(
            caller.tenant_id,
            rule.model_dump(mode="json", exclude_defaults=True),
            actor=caller.key_id,
        )
        return _json(body, 201)

    @app.put(
        "/v1/rules/{rule_id}",
        tags=["rules"],
        summary="Replace a rule of the draft",
        response_model=RuleOut,
        responses=rule_errors,
    )
    async def replace_rule(caller: Caller, rule_id: RuleIdPath, rule: RuleSpec) -> Response:
        caller.require("admin")
        body = await container.rules.replace_rule(
            caller.tenant_id,
            rule_id,
            rule.model_dump(mode="json", exclude_defaults=True),
            actor=caller.key_id,
        )
        return _json(body)

    @app.patch(
        "/v1/rules/{rule_id}",
        tags=["rules"],
        summary="Toggle a rule, change its weight, mode or hard outcome",
        response_model=RuleOut,
        responses=rule_errors,
    )
    async def patch_rule(caller: Caller, rule_id: RuleIdPath, patch: RulePatch) -> Response:
        caller.require("admin")
        changes = patch.model_dump(exclude_unset=True)
        body = await container.rules.patch_rule(
            caller.tenant_id, rule_id, changes, actor=caller.key_id
        )
        return _json(body)

    @app.delete(
        "/v1/rules/{rule_id}",
        tags=["rules"],
        status_code=204,
        summary="Delete a rule from the draft (soft: listed with include_deleted)",
        responses=rule_errors,
    )
    async def delete_rule(caller: Caller, rule_id: RuleIdPath) -> Response:
        caller.require("admin")
        await container.rules.delete_rule(caller.tenant_id, rule_id, actor=caller.key_id)
        return Response(status_code=204)

    @app.post(
        "/v1/rules/validate",
        tags=["rules"],
        summary="Check a rule (against the draft's features) or a whole pack",
        response_model=ValidateOut,
        responses={**auth_errors, **responses(422, 503)},
    )
    async def validate_rules(caller: Caller, body: ValidateIn) -> Response:
        caller.require("read")
        if (body.rule is None) == (body.pack is None):
            return problem_response(
                422,
                "give exactly one of rule or pack",
                errors=[{"field": "(body)", "message": "give exactly one of rule or pack"}],
            )
        try:
            if body.pack is not None:
                document = body.pack
            else:
                assert body.rule is not None
                rule = rule_document(body.rule)
                draft = await container.rules.draft(caller.tenant_id)
                document = dict(draft.document)
                document["rules"] = [
                    r for r in document.get("rules", []) if r.get("id") != rule["id"]
                ] + [rule]
            validate_document(document)
        except RulePackError as exc:
            return _json({"valid": False, "issues": _issues(exc), "version": None})
        except RecursionError:
            issue = PackIssue("pack", "nested too deeply")
            return _json(
                {"valid": False, "issues": _issues(RulePackError([issue])), "version": None}
            )
        return _json({"valid": True, "issues": [], "version": pack_version(document)})

    # -- rulesets (published versions) -------------------------------------------------------

    @app.get(
        "/v1/rulesets",
        tags=["rules"],
        summary="Published versions, newest first",
        response_model=list[RulesetOut],
        responses={**auth_errors, **responses(503)},
    )
    async def list_rulesets(caller: Caller) -> Response:
        caller.require("read")
        versions = await container.rules.versions(caller.tenant_id)
        return _json([ruleset_out(v) for v in versions])

    @app.post(
        "/v1/rulesets",
        tags=["rules"],
        status_code=201,
        summary="Publish the draft as a new immutable version and activate it everywhere",
        response_model=RulesetOut,
        responses={**auth_errors, **responses(422, 503)},
    )
    async def publish(caller: Caller, body: PublishIn | None = None) -> Response:
        caller.require("admin")
        comment = body.comment if body is not None else ""
        version = await container.rules.publish(caller.tenant_id, caller.key_id, comment)
        return _json(ruleset_out(version), 201)

    @app.get(
        "/v1/rulesets/draft",
        tags=["rules"],
        summary="The whole draft pack",
        response_model=DraftOut,
        responses={**auth_errors, **responses(503)},
    )
    async def get_draft(caller: Caller) -> Response:
        caller.require("read")
        draft = await container.rules.draft(caller.tenant_id)
        return _json(
            {
                "draft_version": pack_version(draft.document),
                "revision": draft.revision,
                "document": draft.document,
            }
        )

    @app.put(
        "/v1/rulesets/draft",
        tags=["rules"],
        summary="Replace the whole draft pack (features, lists, thresholds, rules)",
        response_model=DraftOut,
        responses={**auth_errors, **responses(409, 422, 503)},
    )
    async def put_draft(caller: Caller, document: dict[str, Any]) -> Response:
        caller.require("admin")
        draft = await container.rules.replace_draft(caller.tenant_id, document, actor=caller.key_id)
        return _json(
            {
                "draft_version": pack_version(draft.document),
                "revision": draft.revision,
                "document": draft.document,
            }
        )

    @app.get(
        "/v1/rulesets/{version}",
        tags=["rules"],
        summary="One published version with its pack",
        response_model=RulesetDetail,
        responses={**auth_errors, **responses(404, 422, 503)},
    )
    async def get_ruleset(caller: Caller, version: VersionPath) -> Response:
        caller.require("read")
        stored = await container.rules.version(caller.tenant_id, version)
        return _json(ruleset_out(stored, document=True))

    @app.post(
        "/v1/rulesets/{version}/activate",
        tags=["rules"],
        summary="Make an earlier published version active again (rollback)",
        response_model=RulesetOut,
        responses={**auth_errors, **responses(404, 422, 503)},
    )
    async def activate(caller: Caller, version: VersionPath) -> Response:
        caller.require("admin")
        stored = await container.rules.activate(caller.tenant_id, version, caller.key_id)
        return _json(ruleset_out(stored))

    # -- after the decision: alerts and cases, labels, webhooks ------------------------------

    from riskguard.adapters.http import webhooks
    from riskguard.adapters.http.alerts import alerts_router
    from riskguard.adapters.http.audit import audit_router

    app.include_router(alerts_router(container.alerts))
    app.include_router(webhooks.router)
    app.include_router(audit_router())
    from riskguard.adapters.http.authorize import authorize_router
    from riskguard.adapters.http.models import models_router

    app.include_router(authorize_router)

    app.include_router(models_router(settings.model_dir))

    # -- OpenAPI: the decision request's component schemas, a bearer security scheme -------

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(_defs)
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "rg_... API key"}
        }
        problem = {"$ref": "#/components/schemas/Problem"}
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                if path.startswith("/v1/"):
                    operation["security"] = [{"bearer": []}]
                answers = operation.setdefault("responses", {})
                # Any request can meet the host check (400), the body limit (413) and, with
                # parameters or a body, validation (422): all answered as problems.
                for status in ("400", "413", "422"):
                    answers[status] = {
                        "description": TITLES[int(status)],
                        "content": {PROBLEM_JSON: {"schema": problem}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]

    # Outermost, so the decision fast path skips the framework's own middleware layers too.
    return ServiceMiddleware(
        app,
        trusted_hosts=settings.trusted_hosts,
        max_body_bytes=settings.max_body_bytes,
        behind_tls=settings.behind_tls,
        access_log=settings.access_log,
        metrics=metrics,
        decide=lambda authorization, body, request_id, received: handle_decision(
            container, authorization, body, request_id, received
        ),
    )


__all__ = ["CheckOut", "IssueOut", "create_app"]
