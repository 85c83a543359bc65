"""``GET /v1/audit``: the caller's tenant's audit records, the newest signed checkpoint, and
proofs (admin keys only).

The log is one hash chain and one Merkle tree for the whole service (docs/audit.md); a tenant
sees its own records and, for any of them, an inclusion proof against a signed checkpoint, plus
consistency proofs between checkpoints, so it can check what it was shown without trusting the
server. Records of other tenants are never returned (a proof for one is a 404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from riskguard.adapters.http.deps import Caller
from riskguard.adapters.http.problems import problem_response, responses

_ACTION = r"^[a-z][a-z0-9_.-]{0,63}$"


class AuditRecordOut(BaseModel):
    seq: int = Field(ge=1, description="Position in the log (gapless from 1)")
    at: str
    tenant_id: str | None
    actor: str
    action: str
    body: Any = Field(description="The record's canonical JSON body, parsed")
    prev_hash: str
    hash: str


class CheckpointOut(BaseModel):
    tree_size: int
    root_hash: str = Field(description="base64 RFC 6962 root of the first tree_size records")
    created_at: str
    note: str = Field(description="The C2SP signed checkpoint note")


class AuditPage(BaseModel):
    records: list[AuditRecordOut]
    next_after: int | None = Field(description="Pass as `after` for the next page")
    checkpoint: CheckpointOut | None = Field(description="The newest signed checkpoint")


class InclusionOut(BaseModel):
    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    proof: list[str]
    root_hash: str
    checkpoint: str | None


class ConsistencyOut(BaseModel):
    size1: int
    size2: int
    proof: list[str]
    root1: str
    root2: str


def _not_found(detail: str, request: Request) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    return problem_response(404, detail, request_id=request_id)


def _json(data: Any) -> Response:
    import orjson

    return Response(orjson.dumps(data), media_type="application/json")


def audit_router() -> APIRouter:
    router = APIRouter(tags=["audit"])
    errors = responses(401, 403, 404, 422, 503)

    def log_of(request: Request) -> Any:
        return request.app.state.container.audit

    def unavailable(request: Request) -> Response:
        return _not_found("the audit log is turned off on this service", request)

    @router.get(
        "/v1/audit",
        summary="This tenant's audit records and the newest signed checkpoint",
        response_model=AuditPage,
        responses=errors,
    )
    async def list_audit(
        request: Request,
        caller: Caller,
        after: Annotated[int, Query(ge=0, le=2**53)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        action: Annotated[str | None, Query(pattern=_ACTION)] = None,
    ) -> Response:
        caller.require("admin")
        log = log_of(request)
        if log is None:
            return unavailable(request)
        records = await log.list_records(
            tenant_id=caller.tenant_id, action=action, after=after, limit=limit
        )
        checkpoint = await log.latest_checkpoint()
        return _json(
            {
                "records": [r.to_dict() for r in records],
                "next_after": records[-1].seq if len(records) == limit else None,
                "checkpoint": None if checkpoint is None else checkpoint.to_dict(),
            }
        )

    @router.get(
        "/v1/audit/{seq}/proof",
        summary="Prove that one of this tenant's records is in the signed log",
        response_model=InclusionOut,
        responses=errors,
    )
    async def prove(
        request: Request,
        caller: Caller,
        seq: Annotated[int, Path(ge=1, le=2**53)],
        tree_size: Annotated[int | None, Query(ge=1, le=2**53)] = None,
    ) -> Response:
        caller.require("admin")
        log = log_of(request)
        if log is None:
            return unavailable(request)
        record = await log.get(seq)
        if record is None or record.tenant_id != caller.tenant_id:
            return _not_found(f"no audit record {seq} for this tenant", request)
        try:
            proof = await log.inclusion_proof(seq, tree_size)
        except (LookupError, ValueError) as exc:
            return _not_found(str(exc) or "no such tree size", request)
        return _json(proof.to_dict())

    @router.get(
        "/v1/audit/consistency",
        summary="Prove that a later checkpoint's tree extends an earlier one",
        response_model=ConsistencyOut,
        responses=errors,
    )
    async def consistency(
        request: Request,
        caller: Caller,
        size1: Annotated[int, Query(ge=1, le=2**53)],
        size2: Annotated[int | None, Query(ge=1, le=2**53)] = None,
    ) -> Response:
        caller.require("admin")
        log = log_of(request)
        if log is None:
            return unavailable(request)
        try:
            proof = await log.consistency_proof(size1, size2)
        except (LookupError, ValueError) as exc:
            return _not_found(str(exc) or "no such tree size", request)
        return _json(proof.to_dict())

    return router
