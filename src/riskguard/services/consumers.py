"""In-process consumers of the outbox: what happens after a decision is stored.

The dispatcher (adapters/webhooks/dispatcher.py) hands every outbox message, as a CloudEvent,
to each publisher it was given and records per publisher that the message was taken, retrying
on failure: delivery is at least once, so every consumer here is idempotent. Keeping this work
behind the outbox keeps it off the decision's hot path, and a crash between the answer and the
work loses nothing (the message was committed with the decision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from riskguard.ports import DecisionStore
from riskguard.services.alerts import (
    AlertCandidate,
    AlertService,
    candidate_for,
    candidate_from_message,
)

DECISION_CREATED = "io.riskguard.decision.created"


class AlertsConsumer:
    """Opens or joins alerts for stored decisions whose outcome alerts (review, block).

    The candidate comes from the message itself (its payload carries the outcome, score,
    reasons, entity and times), so allow traffic costs one comparison here and a batch of
    alerting decisions is absorbed in one transaction. A payload without those fields (never
    written by this version) falls back to reading the stored decision."""

    name = "alerts"

    def __init__(self, alerts: AlertService, store: DecisionStore) -> None:
        self.alerts = alerts
        self.store = store

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        policy = self.alerts.policy
        candidates: list[AlertCandidate] = []
        for event in events:
            if event.get("type") != DECISION_CREATED:
                continue
            data = event.get("data") or {}
            if data.get("outcome") not in policy.outcomes:
                continue
            tenant_id = str(event["tenantid"])
            try:
                candidate = candidate_from_message(tenant_id, data, policy)
            except ValueError:
                record = await self.store.get(tenant_id, str(event["subject"]))
                # None: deleted by retention before it was consumed
                candidate = None if record is None else candidate_for(record, policy)
            if candidate is not None:
                candidates.append(candidate)
        if candidates:
            await self.alerts.on_candidates(candidates)

    async def close(self) -> None:
        return None


class AuditConsumer:
    """Appends every decision and alert change to the audit log, one batch per call.

    At least once: a batch the dispatcher offers again after a crash between the append and
    its bookkeeping is appended again, so a message can appear twice in the log (its outbox
    id, ``message_id`` in the body, tells the copies apart); it is never missing."""

    name = "audit"

    def __init__(self, audit: Any) -> None:
        self.audit = audit

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        from riskguard.adapters.audit.chain import new_entry

        entries = []
        for event in events:
            kind = str(event.get("type", "")).removeprefix("io.riskguard.")
            data = event.get("data") or {}
            entries.append(
                new_entry(
                    action=kind,
                    actor=str(data.get("actor") or "riskguard"),
                    body={"message_id": event.get("id"), "subject": event.get("subject"), **data},
                    tenant_id=event.get("tenantid"),
                    body_from_json=True,  # the payload was read back from the outbox's JSON
                )
            )
        if entries:
            await self.audit.append(entries)

    async def close(self) -> None:
        return None
