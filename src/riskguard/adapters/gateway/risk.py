"""Scoring one gateway request: an ``api_call`` event decided in-process and recorded.

Per request (:meth:`GatewayRisk.assess`):

1. The call becomes an ``api_call`` event: ``data.service_id`` is the verified token's subject,
   ``data.target`` the upstream's name, ``data.method``, ``data.path`` the route *template*
   (``/v1/accounts/{id}``, from the target's declared routes or guessed — see ``routes.py``),
   ``data.request_bytes`` the ``Content-Length`` when there is one; ``context.ip`` the calling
   instance, ``context.user_agent`` its ``User-Agent``, and ``context.device_id`` the caller's
   **deployment id** (the token claim ``risk.deployment_claim``, ``deployment`` by default).
   The event is built from values the gateway has already checked, so it satisfies the v1
   contract by construction (no per-request validation pass; a test holds the two together).
2. The tenant's active engine plans the features, the state store (in memory, or Redis with
   ``RISKGUARD_REDIS_URL``) reads and updates them in one call under the ``api_call`` budget,
   and the engine decides with the pack's gateway rules. A store that is down or slow gives the
   ``api_call`` failure policy's decision (fail-open by default), marked degraded.
3. One gateway rule of its own, applied after the engine and only ever raising the outcome: a
   **sensitive path that its target does not declare** (the target has declared routes and none
   matches) is at least ``challenge`` (reason ``GATEWAY_UNDECLARED_SENSITIVE_ROUTE``), unless
   ``risk.undeclared_sensitive`` is ``learn``.
4. The decision is recorded in the same decisions table as ``POST /v1/decisions`` (the SQL
   store's group commit). Denials are recorded before the gateway answers, so the decision id
   in a 403 can be looked up at once; allowed requests are recorded write-behind (``record:
   async``, the default: the commit is not on the request's path) — gathered for up to
   ``record_flush_ms`` and handed to the store together, so one commit carries many of them
   even when requests arrive one at a time (a transaction per request cost more CPU than the
   rest of the gateway), at most ``max_pending_records`` in flight, beyond which requests wait
   for their record — or before forwarding with ``record: sync``.

Route learning and deployments: the default pack's ``svc_deployment`` feature remembers each
service's deployment ids, and ``API_SENSITIVE_NEW_ROUTE`` spares routes that a *new* deployment
of an established service introduces in its first hour (see docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from riskguard.adapters.gateway.config import RiskConfig
from riskguard.engine.decide import Decision, Reason, explain
from riskguard.engine.policy import Outcome
from riskguard.ports import DecisionRecord, DecisionStore, DependencyUnavailable, SharedStateStore
from riskguard.services.decisions import DEPENDENCY_UNAVAILABLE, body_hash, new_decision_id
from riskguard.services.rules import EngineCache
from riskguard.settings import Settings

log = structlog.get_logger("riskguard.gateway")

UNDECLARED_SENSITIVE = "GATEWAY_UNDECLARED_SENSITIVE_ROUTE"
MAX_ID_CHARS = 128
MAX_USER_AGENT_CHARS = 512
_EVENT_TYPE = "api_call"
_FLUSH_RECORDS = 512  # a full buffer is written without waiting for the flush timer


def usable_id(value: Any) -> str | None:
    """``value`` if it can be an id of the v1 contract as it is (1-128 printable characters, no
    surrounding spaces), else None."""
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_CHARS
        and value.isprintable()
        and value == value.strip()
    ):
        return value
    return None


@dataclass(slots=True)
class ApiCall:
    """What the gateway knows about one request, already checked."""

    service_id: str  # the token's subject
    target: str  # the upstream's name
    method: str  # one of routes.HTTP_METHODS
    path: str  # the route template
    declared: bool  # the target declares this route
    catalogued: bool  # the target declares routes at all
    sensitive: bool  # the path is sensitive by the gateway's definition
    request_bytes: int | None = None
    ip: str | None = None
    deployment: str | None = None
    user_agent: str | None = None


@dataclass(slots=True)
class RiskVerdict:
    """The decision on one request, as the proxy acts on it."""

    decision_id: str
    outcome: Outcome
    score: float
    explanation: str
    degraded: bool
    recorded: bool


class GatewayRisk:
    """Decides on gateway requests for one tenant, recording every decision."""

    def __init__(
        self,
        *,
        config: RiskConfig,
        settings: Settings,
        store: DecisionStore,
        state: SharedStateStore,
        engines: EngineCache,
        metrics: Any = None,
    ) -> None:
        self.tenant_id: str | None = None  # config.tenant's id, once resolved
        self._tenant_lock = asyncio.Lock()
        self._secret = settings.secret
        self.config = config
        self._policy = settings.policy(_EVENT_TYPE)
        self._store = store
        self._state = state
        self._engines = engines
        self._metrics = metrics
        self._buffer: list[DecisionRecord] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # write-behind records not yet committed (buffered or writing)
        self._budget_s = self._policy.budget_ms / 1000.0
        self._timed = state.name != "memory"  # in-process state cannot be slow: no timer
        self.state_healthy = True
        self.record_failures = 0

    async def ready(self) -> str:
        """The tenant's id — the tenant created with the default pack when missing — with its
        engine loaded. Raises DependencyUnavailable while the database cannot tell."""
        async with self._tenant_lock:
            if self.tenant_id is None:
                tenant_id = await resolve_tenant(self._store, self.config.tenant, self._secret)
                await self._engines.refresh()
                await self._engines.engine(tenant_id)
                self.tenant_id = tenant_id
        return self.tenant_id

    # -- the decision -----------------------------------------------------------------------

    def event(self, call: ApiCall, event_id: str, received: float) -> dict[str, Any]:
        """The v1 ``api_call`` event of ``call`` (as recorded)."""
        data: dict[str, Any] = {
            "service_id": call.service_id,
            "target": call.target,
            "method": call.method,
            "path": call.path,
        }
        if call.request_bytes is not None:
            data["request_bytes"] = call.request_bytes
        context: dict[str, Any] = {}
        if call.ip is not None:
            context["ip"] = call.ip
        if call.deployment is not None:
            context["device_id"] = call.deployment
        if call.user_agent is not None:
            context["user_agent"] = call.user_agent[:MAX_USER_AGENT_CHARS]
        return {
            "event_id": event_id,
            "type": _EVENT_TYPE,
            "occurred_at": datetime.fromtimestamp(received, UTC).isoformat(),
            "data": data,
            "context": context,
        }

    async def assess(self, call: ApiCall, received: float | None = None) -> RiskVerdict:
        """Decide on ``call`` and record the decision (see the module docstring). ``received``
        is the request's time (default: now); a replay passes the recorded one."""
        started = time.perf_counter()
        if received is None:
            received = time.time()
        tenant_id = self.tenant_id or await self.ready()
        engine = self._engines.get(tenant_id) or await self._engines.engine(tenant_id)
        decision_id = new_decision_id(received)
        event_id = "gw-" + decision_id[4:]
        env: dict[str, Any] = {
            "event_id": event_id,
            "type": _EVENT_TYPE,
            "hour": int(received // 3600) % 24,
            "data.service_id": call.service_id,
            "data.target": call.target,
            "data.method": call.method,
            "data.path": call.path,
        }
        if call.request_bytes is not None:
            env["data.request_bytes"] = call.request_bytes
        if call.ip is not None:
            env["context.ip"] = call.ip
        if call.deployment is not None:
            env["context.device_id"] = call.deployment
        if call.user_agent is not None:
            env["context.user_agent"] = call.user_agent[:MAX_USER_AGENT_CHARS]
        ops = engine.plan(_EVENT_TYPE, env)
        degraded = False
        try:
            if self._timed:
                async with asyncio.timeout(self._budget_s):
                    await self._state.apply(tenant_id, ops, received, env, env, None)
            else:
                await self._state.apply(tenant_id, ops, received, env, env, None)
            if not self.state_healthy:
                log.info("state_store_recovered", store=self._state.name)
                self.state_healthy = True
        except (DependencyUnavailable, TimeoutError) as exc:
            degraded = True
            reason = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
            if self.state_healthy:
                log.warning("state_store_degraded", store=self._state.name, reason=reason)
            self.state_healthy = False
            if self._metrics is not None:
                self._metrics.degraded.labels(dependency="state", reason=reason).inc()

        if degraded:
            outcome = Outcome[self._policy.on_failure.upper()]
            how = "fail-open" if outcome is Outcome.ALLOW else "fail-closed"
            reasons: list[Reason] = [
                Reason(
                    code=DEPENDENCY_UNAVAILABLE,
                    source="policy",
                    message=f"A dependency was unavailable; decided by the {how} policy.",
                    value=self._policy.on_failure,
                    outcome=None if outcome is Outcome.ALLOW else outcome,
                )
            ]
            score = 0.0
            shadow: tuple[Reason, ...] = ()
            features: dict[str, Any] = {}
            decision: Decision | None = None
            explanation = f"Decided by the {how} policy: the risk state store was unavailable."
        else:
            decision = engine.decide(event_id, _EVENT_TYPE, env)
            outcome, score = decision.outcome, decision.score
            reasons, shadow = list(decision.reasons), decision.shadow_reasons
            features = decision.feature_snapshot()
            explanation = decision.explanation
            raised = self._gateway_rules(call, outcome)
            if raised is not None:
                outcome = raised.outcome or outcome
                reasons.insert(0, raised)
                explanation = explain(outcome, score, reasons)

        event = self.event(call, event_id, received)
        record = DecisionRecord(
            decision_id=decision_id,
            tenant_id=tenant_id,
            event_id=event_id,
            event_type=_EVENT_TYPE,
            body_hash=body_hash(event),
            entity=call.service_id,
            occurred_at=datetime.fromtimestamp(received, UTC),
            received_at=datetime.fromtimestamp(received, UTC),
            outcome=outcome.label,
            score=round(score, 6),
            ruleset_version=engine.ruleset.version,
            model_version=decision.model_version if decision is not None else None,
            latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
            degraded=degraded,
            event=event,
            features=features,
            reasons=[r.to_dict() for r in reasons],
            shadow_reasons=[r.to_dict() for r in shadow],
            explanation=explanation,
        )
        if self._metrics is not None and decision is not None:
            self._metrics.observe_decision(record, decision)
        recorded = True
        if outcome is Outcome.ALLOW and self.config.record == "async":
            if self._in_flight < self.config.max_pending_records:
                self._enqueue(record)
            else:  # the database is behind: wait for this one rather than queue without end
                recorded = await self._record(record)
        else:
            recorded = await self._record(record)
        return RiskVerdict(decision_id, outcome, score, explanation, degraded, recorded)

    def _gateway_rules(self, call: ApiCall, outcome: Outcome) -> Reason | None:
        """The gateway's own signal (module docstring, step 3), or None."""
        if (
            outcome < Outcome.CHALLENGE
            and call.sensitive
            and call.catalogued
            and not call.declared
            and self.config.undeclared_sensitive == "challenge"
        ):
            return Reason(
                code=UNDECLARED_SENSITIVE,
                source="gateway",
                message=f"{call.service_id} called sensitive route {call.method} {call.path}, "
                f"which {call.target} does not declare",
                value=call.path,
                outcome=Outcome.CHALLENGE,
            )
        return None

    # -- recording --------------------------------------------------------------------------

    async def _record(self, record: DecisionRecord) -> bool:
        try:
            await self._store.record(record)
        except DependencyUnavailable as exc:
            self.record_failures += 1
            if self.record_failures == 1 or self.record_failures % 1000 == 0:
                log.warning("gateway_decision_not_recorded", error=str(exc))
            if self._metrics is not None:
                self._metrics.degraded.labels(dependency="database", reason="unavailable").inc()
            return False
        return True

    def _enqueue(self, record: DecisionRecord) -> None:
        self._buffer.append(record)
        self._in_flight += 1
        if len(self._buffer) >= _FLUSH_RECORDS:
            self._flush()
        elif self._flush_at is None:
            loop = asyncio.get_running_loop()
            self._flush_at = loop.call_later(self.config.record_flush_ms / 1000.0, self._flush)

    def _flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        batch, self._buffer = self._buffer, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[DecisionRecord]) -> None:
        # every record is handed to the store before any commit is awaited: one group commit
        try:
            results = await asyncio.gather(
                *(self._record(r) for r in batch), return_exceptions=True
            )
        finally:
            self._in_flight -= len(batch)
        for result in results:
            if isinstance(result, BaseException):  # not a database outage: a bug to see
                log.error("gateway_record_failed", error_type=type(result).__name__)

    @property
    def pending_records(self) -> int:
        return self._in_flight

    async def drain(self) -> None:
        """Write every write-behind record now and wait for them (at shutdown, before the
        store closes)."""
        self._flush()
        while self._writes:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._writes))


async def resolve_tenant(store: DecisionStore, name: str, secret: bytes) -> str:
    """The id of the tenant named ``name`` (or with that id), created with the default pack when
    missing — by another replica at the same moment, too."""
    from riskguard.wiring import provision

    found = await store.find_tenant(name)
    if found is not None:
        return found.id
    try:
        tenant_id, _ = await provision(store, secret, name, roles=())
    except ValueError:  # created by another replica meanwhile
        found = await store.find_tenant(name)
        if found is None:
            raise
        return found.id
    log.info("gateway_tenant_created", tenant=tenant_id, name=name)
    return tenant_id


def deployment_of(claims: Mapping[str, Any], claim: str) -> str | None:
    """The caller's deployment id from its token's claims (None when absent or unusable)."""
    return usable_id(claims.get(claim))
