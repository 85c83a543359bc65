"""The in-process :class:`~riskguard.ports.SharedStateStore`: one engine state store per tenant.

Feature state lives in one :class:`~riskguard.engine.state.InMemoryStateStore` per tenant, and the
idempotency claims beside it: per tenant, event id -> body hash, at most ``max_claims`` of them
(the oldest dropped first) and each forgotten ``claim_ttl_s`` after it was taken. Everything runs
synchronously inside the ``async`` methods, so on the event loop's one thread every call is atomic
— which is all the protocol asks of a store shared by one process. State is lost on restart and
not shared between processes; that is what ``adapters.redis`` is for.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from riskguard.engine.features import Env, FeatureOp
from riskguard.engine.state import InMemoryStateStore
from riskguard.ports import Claim


class _Claims:
    """One tenant's claims, oldest first: event id -> (body hash, expiry time)."""

    __slots__ = ("_items", "_max", "_ttl")

    def __init__(self, max_claims: int, ttl_s: float) -> None:
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max = max_claims
        self._ttl = ttl_s

    def __len__(self) -> int:
        return len(self._items)

    def held(self, event_id: str, now: float) -> str | None:
        """The body hash of a live claim on ``event_id``, or None (an expired one is dropped)."""
        entry = self._items.get(event_id)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._items[event_id]
            return None
        return entry[0]

    def take(self, event_id: str, body_hash: str, now: float) -> None:
        items = self._items
        items[event_id] = (body_hash, now + self._ttl)
        items.move_to_end(event_id)
        # Claims are kept in the order they were taken, so expired ones sit at the front.
        while items:
            oldest = next(iter(items.values()))
            if oldest[1] > now and len(items) <= self._max:
                break
            items.popitem(last=False)

    def drop(self, event_id: str) -> None:
        self._items.pop(event_id, None)

    def ttl(self, event_id: str, now: float) -> float | None:
        entry = self._items.get(event_id)
        return None if entry is None else entry[1] - now


class MemoryStateStore:
    """Feature state and idempotency claims of every tenant, in this process's memory."""

    name = "memory"

    def __init__(
        self,
        *,
        max_entities_per_tenant: int = 1_000_000,
        max_claims: int = 200_000,
        claim_ttl_s: float = 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_claims < 1:
            raise ValueError("max_claims must be at least 1")
        if claim_ttl_s <= 0:
            raise ValueError("claim_ttl_s must be positive")
        self.max_entities_per_tenant = max_entities_per_tenant
        self.max_claims = max_claims
        self.claim_ttl_s = claim_ttl_s
        self._clock = clock
        self._states: dict[str, InMemoryStateStore] = {}
        self._claims: dict[str, _Claims] = {}

    def tenant_state(self, tenant_id: str) -> InMemoryStateStore:
        """The engine state store of ``tenant_id`` (created empty on first use)."""
        store = self._states.get(tenant_id)
        if store is None:
            store = self._states[tenant_id] = InMemoryStateStore(
                max_entities=self.max_entities_per_tenant
            )
        return store

    def _tenant_claims(self, tenant_id: str) -> _Claims:
        claims = self._claims.get(tenant_id)
        if claims is None:
            claims = self._claims[tenant_id] = _Claims(self.max_claims, self.claim_ttl_s)
        return claims

    async def apply(
        self,
        tenant_id: str,
        ops: Sequence[FeatureOp],
        ts: float,
        fields: Env,
        env: Env,
        claim: Claim | None,
    ) -> str | None:
        if claim is not None:
            claims = self._tenant_claims(tenant_id)
            now = self._clock()
            held = claims.held(claim.event_id, now)
            if held is not None:
                return held
            claims.take(claim.event_id, claim.body_hash, now)
        self.tenant_state(tenant_id).apply(ops, ts, fields, env)
        return None

    async def release(self, tenant_id: str, event_id: str) -> None:
        claims = self._claims.get(tenant_id)
        if claims is not None:
            claims.drop(event_id)

    def claim_ttl(self, tenant_id: str, event_id: str) -> float | None:
        """Seconds left on the claim of ``event_id``, or None (for tests and inspection)."""
        claims = self._claims.get(tenant_id)
        return None if claims is None else claims.ttl(event_id, self._clock())

    def claim_count(self, tenant_id: str) -> int:
        claims = self._claims.get(tenant_id)
        return 0 if claims is None else len(claims)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
