"""Deciding on one event: validate, claim, read+update state, decide, record, answer.

The unit of work of ``POST /v1/decisions``:

1. The body is decoded and validated (``occurred_at`` defaults to the time received; an event
   dated more than ``max_future_skew_s`` ahead is refused — it would poison the windows).
2. The event id is *claimed* in the same atomic state-store call that reads and updates every
   feature the event touches. A claim that already exists means a retry: nothing is touched and
   the stored decision is returned (``replayed: true``), or 409 if the body differs. Duplicates
   arriving at the same moment in this process wait for the first one's answer; in other
   processes they wait for its record to appear in the database.
3. The pure engine decides.
4. The decision is stored durably (group commit) before the answer is sent. It records the
   ruleset version and the version of the model that was asked (None for event types the
   tenant's active model does not score, with no model active, and for degraded decisions);
   a model's score is then passed to ``observe_model`` (the PSI monitors).

**Latency budget and degraded mode.** The state-store call runs under the event type's budget.
If the store is down, refuses, or exceeds the budget, the event is decided by the declared
policy instead — ``allow`` (fail-open) or ``review``/``block`` (fail-closed) — with the reason
``DEPENDENCY_UNAVAILABLE``, and that decision is recorded like any other (``degraded: true``). If
the database cannot record a decision, the answer is the policy decision, marked as not recorded,
and the claim is released so a retry is decided afresh. Both dependencies are retried on the next
request: the service recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from riskguard.engine.decide import Decision
from riskguard.engine.events import FieldIssue, InvalidEventError, parse_event
from riskguard.engine.policy import Outcome
from riskguard.ids import time_ordered_id
from riskguard.ports import (
    Claim,
    DecisionRecord,
    DecisionStore,
    DependencyUnavailable,
    SharedStateStore,
)
from riskguard.services.rules import EngineCache
from riskguard.settings import Settings

log = structlog.get_logger("riskguard.decisions")

DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
_ENTITY = {
    "transaction": "data.account_id",
    "login": "data.user_id",
    "session": "data.user_id",
    "api_call": "data.service_id",
}
_REPLAY_WAIT_S = 5.0


class ConflictError(Exception):
    """The event id was used before with a different body (409)."""


class PendingError(Exception):
    """A duplicate of an event whose first request has not finished recording (503, retry)."""


def new_decision_id(now: float | None = None) -> str:
    """``dec_`` + 26 Crockford base32 characters, time-ordered (riskguard.ids)."""
    return time_ordered_id("dec_", now)


def body_hash(raw: Mapping[str, Any]) -> str:
    """Identity of a request body: SHA-256 of its canonical JSON (keys sorted)."""
    return hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class DecisionResult:
    """What the HTTP layer answers."""

    record: DecisionRecord
    replayed: bool
    recorded: bool = True


def decode_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidEventError."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidEventError([FieldIssue(field="(body)", message="not valid JSON")]) from None
    if not isinstance(raw, dict):
        raise InvalidEventError([FieldIssue(field="(body)", message="must be a JSON object")])
    return raw


class DecisionService:
    """Decides on events for every tenant (one instance per process)."""

    def __init__(
        self,
        settings: Settings,
        store: DecisionStore,
        state: SharedStateStore,
        engines: EngineCache,
        metrics: Any = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._state = state
        self._engines = engines
        self._metrics = metrics
        self._inflight: dict[tuple[str, str], asyncio.Future[DecisionResult]] = {}
        self.state_healthy = True
        self.db_healthy = True
        # (model version, environment, model score) of each recorded decision a model scored
        self.observe_model: Callable[[str, Mapping[str, Any], float], None] | None = None

    async def decide(self, tenant_id: str, raw: dict[str, Any], received: float) -> DecisionResult:
        """Decide on one decoded request body (see the module docstring)."""
        event_id = raw.get("event_id")
        if isinstance(event_id, str):
            key = (tenant_id, event_id)
            running = self._inflight.get(key)
            if running is not None:
                first = await asyncio.shield(running)
                if first.record.body_hash != body_hash(raw):
                    raise ConflictError
                return DecisionResult(first.record, replayed=True, recorded=first.recorded)
            future: asyncio.Future[DecisionResult] = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            try:
                result = await self._decide(tenant_id, raw, received)
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: waiters re-raise it, no "never retrieved"
                raise
            else:
                future.set_result(result)
                return result
            finally:
                del self._inflight[key]
        return await self._decide(tenant_id, raw, received)

    async def _decide(self, tenant_id: str, raw: dict[str, Any], received: float) -> DecisionResult:
        settings = self._settings
        digest = body_hash(raw)
        if "occurred_at" not in raw or raw["occurred_at"] is None:
            stamped = dict(raw)
            stamped["occurred_at"] = datetime.fromtimestamp(received, UTC).isoformat()
        else:
            stamped = raw
        event = parse_event(stamped)
        ts = event.occurred_at.timestamp()
        if ts > received + settings.max_future_skew_s:
            raise InvalidEventError(
                [
                    FieldIssue(
                        field="occurred_at",
                        message=f"more than {settings.max_future_skew_s:g} s in the future",
                    )
                ]
            )
        engine = await self._engines.engine(tenant_id)
        env = event.fields(ts)
        event_type: str = env["type"]
        policy = settings.policy(event_type)
        ops = engine.plan(event_type, env)
        claim = Claim(event.event_id, digest)
        started = time.perf_counter()
        degraded = False
        try:
            # asyncio.timeout, unlike wait_for, runs the call in this task (no task per call).
            async with asyncio.timeout(policy.budget_ms / 1000.0):
                held = await self._state.apply(tenant_id, ops, ts, env, env, claim)
            if not self.state_healthy:
                log.info("state_store_recovered", store=self._state.name)
                self.state_healthy = True
        except (DependencyUnavailable, TimeoutError) as exc:
            held = None
            degraded = True
            reason = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
            if self.state_healthy:  # log the change of state, not every degraded decision
                log.warning("state_store_degraded", store=self._state.name, reason=reason)
            self.state_healthy = False
            if self._metrics is not None:
                self._metrics.degraded.labels(dependency="state", reason=reason).inc()
        if self._metrics is not None:
            self._metrics.state_latency.labels(store=self._state.name).observe(
                time.perf_counter() - started
            )
        if held is not None:
            return await self._replay(tenant_id, event.event_id, digest, held)

        if degraded:
            decision = _policy_decision(event.event_id, event_type, policy.on_failure, engine)
        else:
            decision = engine.decide(event.event_id, event_type, env)
        latency_ms = (time.time() - received) * 1000.0
        record = DecisionRecord(
            decision_id=new_decision_id(received),
            tenant_id=tenant_id,
            event_id=event.event_id,
            event_type=event_type,
            body_hash=digest,
            entity=_entity(env, event_type),
            occurred_at=event.occurred_at.astimezone(UTC),
            received_at=datetime.fromtimestamp(received, UTC),
            outcome=decision.outcome.label,
            score=round(decision.score, 6),
            ruleset_version=decision.ruleset_version,
            model_version=decision.model_version,
            latency_ms=round(latency_ms, 3),
            degraded=degraded,
            event=stamped,
            features=decision.feature_snapshot() if not degraded else {},
            reasons=[r.to_dict() for r in decision.reasons],
            shadow_reasons=[r.to_dict() for r in decision.shadow_reasons],
            explanation=decision.explanation,
        )
        try:
            inserted = await self._store.record(record)
            if not self.db_healthy:
                log.info("database_recovered")
                self.db_healthy = True
        except DependencyUnavailable:
            if self.db_healthy:
                log.warning("decisions_not_recorded", dependency="database")
            self.db_healthy = False
            if self._metrics is not None:
                self._metrics.degraded.labels(dependency="database", reason="unavailable").inc()
            if not degraded:
                with contextlib.suppress(DependencyUnavailable):
                    await self._state.release(tenant_id, event.event_id)
            fallback = _policy_decision(event.event_id, event_type, policy.on_failure, engine)
            record.outcome = fallback.outcome.label
            record.score = fallback.score
            record.reasons = [r.to_dict() for r in fallback.reasons]
            record.shadow_reasons = []
            record.explanation = fallback.explanation
            record.model_version = None
            record.degraded = True
            return DecisionResult(record, replayed=False, recorded=False)
        if not inserted:
            # The database already holds this event id (a claim that expired or was lost with
            # an in-memory store's restart): the stored decision stands.
            return await self._replay(tenant_id, event.event_id, digest, None)
        if self._metrics is not None:
            self._metrics.observe_decision(record, decision)
        model_score, model_version = decision.model_score, decision.model_version
        if model_score is not None and model_version is not None and self.observe_model:
            self.observe_model(model_version, env, model_score)
        return DecisionResult(record, replayed=False)

    async def _replay(
        self, tenant_id: str, event_id: str, digest: str, held: str | None
    ) -> DecisionResult:
        if held is not None and held != digest:
            raise ConflictError
        deadline = time.monotonic() + _REPLAY_WAIT_S
        delay = 0.002
        while True:
            stored = await self._store.get_by_event(tenant_id, event_id)
            if stored is not None:
                if stored.body_hash != digest:
                    raise ConflictError
                return DecisionResult(stored, replayed=True)
            if time.monotonic() >= deadline:
                raise PendingError
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


def _entity(env: Mapping[str, Any], event_type: str) -> str | None:
    value = env.get(_ENTITY.get(event_type, ""))
    return None if value is None else str(value)


def _policy_decision(event_id: str, event_type: str, on_failure: str, engine: Any) -> Decision:
    from riskguard.engine.decide import Reason

    outcome = Outcome[on_failure.upper()]
    how = "fail-open" if outcome is Outcome.ALLOW else "fail-closed"
    message = f"A dependency was unavailable; decided by the {how} policy for {event_type}."
    reason = Reason(
        code=DEPENDENCY_UNAVAILABLE,
        source="policy",
        message=message,
        value=on_failure,
        contribution=0.0,
        outcome=None if outcome is Outcome.ALLOW else outcome,
    )
    phrase = {
        Outcome.ALLOW: "Allowed",
        Outcome.REVIEW: "Held for review",
        Outcome.BLOCK: "Blocked",
    }.get(outcome, outcome.label)
    return Decision(
        event_id=event_id,
        event_type=event_type,
        outcome=outcome,
        score=0.0,
        reasons=(reason,),
        shadow_reasons=(),
        explanation=f"{phrase}: the risk state store or database was unavailable ({how}).",
        ruleset_version=engine.ruleset.version,
        model_version=None,
        env={},
    )
