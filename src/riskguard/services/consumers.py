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

import structlog

from riskguard.services.alerts import AlertCandidate, AlertService, candidate_from_message

log = structlog.get_logger("riskguard.consumers")

DECISION_CREATED = "io.riskguard.decision.created"


class AlertsConsumer:
    """Opens or joins alerts for stored decisions whose outcome alerts (review, block).

    The candidate comes from the message itself (its payload carries the outcome, score,
    reasons, entity and times, as every ``decision.created`` message has), so allow traffic
    costs one comparison here and a batch of alerting decisions is absorbed in one transaction.
    A payload that is not a decision's (a bug, never written by riskguard) is logged and
    skipped rather than failing, and so retrying, the whole batch for ever."""

    name = "alerts"

    def __init__(self, alerts: AlertService) -> None:
        self.alerts = alerts

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> None:
        policy = self.alerts.policy
        candidates: list[AlertCandidate] = []
        for event in events:
            if event.get("type") != DECISION_CREATED:
                continue
            try:
                candidate = candidate_from_message(
                    str(event["tenantid"]), event.get("data") or {}, policy
                )
            except ValueError as exc:
                log.error("alert_payload_invalid", message_id=event.get("id"), error=str(exc))
                continue
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
