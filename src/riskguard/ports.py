"""The ports the service shell needs, as Protocols, and the records that cross them.

The engine (``riskguard.engine``) is pure; everything with I/O sits behind one of these:

- :class:`SharedStateStore` — feature state for many tenants, with the idempotency claim of an
  event taken in the same atomic call as the state update (in-memory: ``adapters.memory``;
  Redis: ``adapters.redis``).
- :class:`DecisionStore` — durable decision records, tenants, API keys and rulesets
  (SQLite or PostgreSQL: ``adapters.sql``).

Implementations are built from settings in ``riskguard.wiring`` only.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from riskguard.engine.features import Env, FeatureOp

Role = Literal["ingest", "admin", "read", "analyst"]
ROLES: tuple[Role, ...] = ("ingest", "admin", "read", "analyst")


class DependencyUnavailable(Exception):
    """A store could not answer (down, refused, timed out). The message names the dependency."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The idempotency claim one request makes on its event id before touching state.

    ``body_hash`` identifies the request body; a second request with the same id and the same
    hash is a replay, with another hash a conflict.
    """

    event_id: str
    body_hash: str


class SharedStateStore(Protocol):
    """Feature state of every tenant; one atomic call per event."""

    name: str  # "memory" | "redis" (for metrics and /readyz)

    async def apply(
        self,
        tenant_id: str,
        ops: Sequence[FeatureOp],
        ts: float,
        fields: Env,
        env: Env,
        claim: Claim | None,
    ) -> str | None:
        """Claim the event id and, if the claim is new, step every op writing outputs into env.

        Returns None when the claim was taken by this call (state updated, outputs written),
        or the body hash held by an earlier claim of the same event id — in which case nothing
        was read or written and ``env`` is unchanged. Raises :class:`DependencyUnavailable`.
        Claims expire after the store's idempotency window (24 h by default).
        """
        ...

    async def release(self, tenant_id: str, event_id: str) -> None:
        """Drop a claim whose decision could not be recorded, so a retry is scored afresh."""
        ...

    async def ping(self) -> None:
        """Raise :class:`DependencyUnavailable` unless the store answers."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class DecisionRecord:
    """One stored decision: the event, what the engine saw and said, and how long it took."""

    decision_id: str
    tenant_id: str
    event_id: str
    event_type: str
    body_hash: str
    entity: str | None  # the event's primary entity (account/user/service id), for filtering
    occurred_at: datetime
    received_at: datetime
    outcome: str  # allow | challenge | review | block
    score: float
    ruleset_version: str
    model_version: str | None
    latency_ms: float
    degraded: bool  # decided under a dependency failure (reason DEPENDENCY_UNAVAILABLE)
    event: dict[str, Any]  # the request body as received (occurred_at filled in)
    features: dict[str, Any]  # feature snapshot, "<feature>.<output>" -> value
    reasons: list[dict[str, Any]]
    shadow_reasons: list[dict[str, Any]]
    explanation: str


@dataclass(frozen=True, slots=True)
class DecisionQuery:
    """Filters of ``GET /v1/decisions``; every one optional, combined with AND."""

    event_type: str | None = None
    outcome: str | None = None
    entity: str | None = None
    since: datetime | None = None  # occurred_at >= since
    until: datetime | None = None  # occurred_at < until
    limit: int = 50
    cursor: str | None = None  # opaque, from a previous page


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: the secret only as its argon2 hash."""

    key_id: str
    tenant_id: str
    role: Role
    secret_hash: str
    created_at: datetime
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class RulesetVersion:
    """An immutable published pack of one tenant."""

    tenant_id: str
    version: str  # rs-<16 hex>, the pack's content hash
    document: Mapping[str, Any]
    created_at: datetime
    created_by: str  # key id of the publisher, or "system"
    comment: str = ""
    active: bool = False


@dataclass(slots=True)
class Draft:
    """The editable pack of a tenant: rules change here, then a publish freezes a version."""

    tenant_id: str
    document: dict[str, Any]
    deleted_rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> rule
    updated_at: datetime | None = None
    revision: int = 0  # bumped on every write; writes with a stale revision are refused


class DecisionStore(Protocol):
    """Durable records. Writes of decisions are group-committed."""

    dialect: str  # "sqlite" | "postgresql"

    async def start(self) -> None:
        """Connect and start the group-commit writer."""
        ...

    async def record(self, record: DecisionRecord) -> bool:
        """Store durably (returns after the commit). False if the tenant already has this
        event id (nothing written). Raises :class:`DependencyUnavailable`."""
        ...

    async def get(self, tenant_id: str, decision_id: str) -> DecisionRecord | None: ...

    async def get_by_event(self, tenant_id: str, event_id: str) -> DecisionRecord | None: ...

    async def list(
        self, tenant_id: str, query: DecisionQuery
    ) -> tuple[builtins.list[DecisionRecord], str | None]:
        """A page, newest first (occurred_at, then decision id), and the next page's cursor."""
        ...

    async def count(self, tenant_id: str | None = None) -> int: ...

    # tenants and keys
    async def create_tenant(self, name: str) -> Tenant: ...

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def find_tenant(self, id_or_name: str) -> Tenant | None: ...

    async def create_key(self, key: ApiKey) -> None: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    # rulesets
    async def get_draft(self, tenant_id: str) -> Draft | None: ...

    async def save_draft(self, draft: Draft) -> bool:
        """Write if ``draft.revision`` is still the stored one (then bump it); False if stale."""
        ...

    async def publish(self, version: RulesetVersion) -> None:
        """Store the version (idempotent on its content hash) and make it the active one."""
        ...

    async def get_version(self, tenant_id: str, version: str) -> RulesetVersion | None: ...

    async def list_versions(self, tenant_id: str) -> builtins.list[RulesetVersion]: ...

    async def active_versions(self) -> dict[str, str]:
        """tenant id -> active ruleset version, for every tenant (replicas poll this)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
