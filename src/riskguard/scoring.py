"""The imperative shell around the pure engine: one event in, one decision out.

It owns the only I/O of a decision in the embedded default — the state store call — and takes
the engine from a provider so a hot-reloaded ruleset is picked up on the next event.
"""

from __future__ import annotations

from collections.abc import Callable

from riskguard.engine.decide import Decision, Engine
from riskguard.engine.events import Event
from riskguard.engine.state import StateStore


class Scorer:
    """Scores events with the current engine against one state store."""

    def __init__(self, engine: Engine | Callable[[], Engine], store: StateStore) -> None:
        self._engine = engine if callable(engine) else (lambda: engine)
        self.store = store

    @property
    def engine(self) -> Engine:
        return self._engine()

    def score(self, event: Event) -> Decision:
        """Read and update the event's feature state, then decide on it."""
        engine = self._engine()
        ts = event.occurred_at.timestamp()
        env = event.fields(ts)
        event_type = env["type"]
        ops = engine.plan(event_type, env)
        self.store.apply(ops, ts, env, env)
        return engine.decide(event.event_id, event_type, env)
