"""Labels fed back into feature state, as events of their own, when they become known.

Some features depend on outcomes learnt later — a terminal's fraud rate needs chargebacks that
arrive days after the payment. The engine's feature kinds already count events over windows;
what they need is the label *as an event*, at the time it becomes known. A label event carries
the labelled event's fields (so every entity key it had: account, counterparty, device, IP ...)
with ``type`` set to ``"label"`` and ``data.amount`` set to the label (1 fraud, 0 legitimate).
A feature learns from label events only if its ``when`` filter accepts them
(``when: type == "label"``); features without a filter never see one, and ``type`` is set by the
service from the event's kind, so no client can forge a label event. See
``packs/fdh.yaml``'s ``terminal_labels``.

Nothing here changes the engine: :func:`apply_label` plans the label event like a transaction
and applies only the opted-in operations to the same state store; the model trainer calls it
while replaying history. In the service, :class:`LabelFeedback` does the same on the shared
state store when ``POST /v1/labels`` records an event's first label: the labelled decision's
stored event, planned with the tenant's active pack, at the label's ``labelled_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from riskguard.engine.features import FeatureOp, FeatureSet
from riskguard.engine.state import StateStore

if TYPE_CHECKING:
    from riskguard.ports import DecisionStore, SharedStateStore
    from riskguard.services.rules import EngineCache

LABEL_TYPE: Final = "label"


def label_fields(event_fields: Mapping[str, Any], *, fraud: bool, hour: int) -> dict[str, Any]:
    """The fields of the label event for one labelled event (``hour``: UTC hour of the label)."""
    fields = dict(event_fields)
    fields["type"] = LABEL_TYPE
    fields["hour"] = hour
    fields["data.amount"] = 1.0 if fraud else 0.0
    return fields


def label_ops(features: FeatureSet, event_type: str, fields: Mapping[str, Any]) -> list[FeatureOp]:
    """The operations of a label event: features of the labelled event's type whose ``when``
    accepts it."""
    return [op for op in features.plan(event_type, fields) if op[2] and op[1].when is not None]


def apply_label(
    store: StateStore,
    features: FeatureSet,
    event_type: str,
    fields: Mapping[str, Any],
    ts: float,
) -> None:
    """Fold one label event (see :func:`label_fields`) of a labelled ``event_type`` event into
    ``store`` at time ``ts``."""
    ops = label_ops(features, event_type, fields)
    if ops:
        env = dict(fields)
        store.apply(ops, ts, env, env)


class LabelFeedback:
    """Labels recorded by the service, folded into the tenant's shared feature state."""

    def __init__(
        self, decisions: DecisionStore, engines: EngineCache, state: SharedStateStore
    ) -> None:
        self._decisions = decisions
        self._engines = engines
        self._state = state

    async def __call__(self, tenant_id: str, event_id: str, *, fraud: bool, at: datetime) -> int:
        """Apply the label of one decided event at time ``at``; the number of feature
        operations applied (0: no decision for the event, or no feature learns from labels).
        Raises ``DependencyUnavailable`` when the state store is down."""
        from riskguard.engine.events import InvalidEventError, parse_event

        record = await self._decisions.get_by_event(tenant_id, event_id)
        if record is None:
            return 0
        try:
            event = parse_event(record.event)
        except InvalidEventError:  # recorded under an older contract: nothing to learn from
            return 0
        ts = at.timestamp()
        fields = label_fields(event.fields(), fraud=fraud, hour=int(ts // 3600) % 24)
        engine = await self._engines.engine(tenant_id)
        ops = label_ops(engine.ruleset.features, record.event_type, fields)
        if ops:
            env = dict(fields)
            await self._state.apply(tenant_id, ops, ts, env, env, None)
        return len(ops)
