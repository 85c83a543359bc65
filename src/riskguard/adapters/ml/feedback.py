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
and applies only the opted-in operations to the same state store. The decision service can call
it when ``POST /v1/labels`` records a label (with the labelled decision's stored event); the
model trainer calls it while replaying history.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from riskguard.engine.features import FeatureOp, FeatureSet
from riskguard.engine.state import StateStore

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
