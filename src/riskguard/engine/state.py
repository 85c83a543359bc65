"""The state store port and its in-memory implementation.

A state store takes the feature operations that one event needs and, in one call, reads every
feature's state, writes the outputs into the evaluation environment and folds the event into the
state. The in-memory store is the embedded default and the reference the shared (Redis) store
must agree with.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol

from riskguard.engine.features import Env, FeatureOp


class StateStore(Protocol):
    """Read and update every feature state one event touches, in one call."""

    def apply(self, ops: Sequence[FeatureOp], ts: float, fields: Env, env: Env) -> None:
        """Write the outputs of ``ops`` into ``env`` and fold the event into their states."""
        ...


class InMemoryStateStore:
    """Feature state in process memory, bounded by ``max_entities``.

    Eviction is least-recently-used in two generations: states live in a young and an old dict
    of at most ``max_entities // 2`` keys each; a state found in the old one moves to the young
    one, and when the young one is full it becomes the old one and the previous old one is
    dropped. An entity therefore keeps its state as long as it is touched at least once while
    ``max_entities // 2`` other entities are; a hit costs one dict lookup, not a re-insertion.
    """

    def __init__(self, *, max_entities: int = 1_000_000) -> None:
        if max_entities < 2:
            raise ValueError("max_entities must be at least 2")
        self.max_entities = max_entities
        self._generation = max_entities // 2
        self._young: dict[str, Any] = {}
        self._old: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def apply(self, ops: Sequence[FeatureOp], ts: float, fields: Env, env: Env) -> None:
        young = self._young
        for key, feature, update in ops:
            state = young.get(key)
            if state is None:
                state = self._old.pop(key, None)
                if state is None:
                    state = feature.kind.new_state()
                if len(young) >= self._generation:
                    self._old, self._young = young, {}
                    young = self._young
                young[key] = state
            feature.kind.step(state, ts, update, fields, env)

    def state(self, key: str) -> Any:
        """The raw state under ``key`` (for inspection and tests), or None."""
        state = self._young.get(key)
        return state if state is not None else self._old.get(key)

    def index_bytes(self) -> int:
        """Bytes of the store's own dicts (keys and states not included)."""
        return sys.getsizeof(self._young) + sys.getsizeof(self._old)

    def items(self) -> list[tuple[str, Any]]:
        """Every (key, state) held (for inspection and benchmarks)."""
        return [*self._old.items(), *self._young.items()]
