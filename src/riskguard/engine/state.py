"""The state store port and its in-memory implementation.

A state store takes the feature operations that one event needs and, in one call, reads every
feature's state, writes the outputs into the evaluation environment and folds the event into the
state. The in-memory store is the embedded default and the reference the shared (Redis) store
must agree with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from riskguard.engine.features import Env, FeatureOp


class StateStore(Protocol):
    """Read and update every feature state one event touches, in one call."""

    def apply(self, ops: Sequence[FeatureOp], ts: float, fields: Env, env: Env) -> None:
        """Write the outputs of ``ops`` into ``env`` and fold the event into their states."""
        ...


class InMemoryStateStore:
    """Feature state in a dict, bounded by ``max_entities`` (least recently used evicted first)."""

    def __init__(self, *, max_entities: int = 1_000_000) -> None:
        if max_entities < 1:
            raise ValueError("max_entities must be at least 1")
        self.max_entities = max_entities
        self._states: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, ops: Sequence[FeatureOp], ts: float, fields: Env, env: Env) -> None:
        states = self._states
        for key, feature, update in ops:
            state = states.pop(key, None)  # re-inserted below: dict order is recency order
            kind = feature.kind
            if state is None:
                state = kind.new_state()
            kind.step(state, ts, update, fields, env)
            states[key] = state
        while len(states) > self.max_entities:
            del states[next(iter(states))]

    def state(self, key: str) -> Any:
        """The raw state under ``key`` (for inspection and tests), or None."""
        return self._states.get(key)
