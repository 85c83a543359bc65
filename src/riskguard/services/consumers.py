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
from riskguard.services.alerts import AlertService

DECISION_CREATED = "io.riskguard.decision.created"


class AlertsConsumer:
    """Opens or joins alerts for stored decisions whose outcome alerts (review, block).

    Only decisions whose published outcome is in the alert policy are loaded (the payload
    carries the outcome), so allow traffic costs one comparison here."""

    name = "alerts"

    def __init__(self, alerts: AlertService, store: DecisionStore) -> None:
        self.alerts = alerts
        self.store = store

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        outcomes = self.alerts.policy.outcomes
        for event in events:
            if event.get("type") != DECISION_CREATED:
                continue
            data = event.get("data") or {}
            if data.get("outcome") not in outcomes:
                continue
            record = await self.store.get(str(event["tenantid"]), str(event["subject"]))
            if record is not None:  # None: deleted by retention before it was consumed
                await self.alerts.on_decision(record)

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
