"""The schema, as SQLAlchemy Core tables (``migrations/versions`` creates exactly this).

Every row carries its tenant id; every query of the store filters on it first, so each index
below leads with ``tenant_id``. Timestamps are timezone-aware and stored in UTC (SQLite keeps
them as ``YYYY-MM-DD HH:MM:SS.ffffff`` text, which sorts chronologically; the store turns the
naive values SQLite returns back into aware UTC). JSON is JSONB on PostgreSQL, text on SQLite —
except in ``decisions`` (below).

``decisions`` has no foreign key to ``tenants`` on purpose: it is the hot, append-only table and
its tenant id comes from an authenticated key, so the insert path skips a parent-row lookup and
(on PostgreSQL) the ``FOR KEY SHARE`` lock every child insert would take on the tenant's row.
Text columns have no length limit so one odd record can never fail a group-committed batch.

What every decision insert costs the database is kept small (migration 0002):

- Its four JSON columns are ``json``, not ``jsonb``, on PostgreSQL: the record is written once
  and read back whole, never queried inside, and ``json`` only checks the text where ``jsonb``
  parses it into a tree (numbers into ``numeric``) — a fifth of the server's CPU per insert.
  The text is kept as written (key order included); it may hold ``\u0000``, which ``jsonb``
  refuses. Its columns compress with LZ4 where the server supports it (``pglz`` is slower).
- ``ix_decisions_tenant_outcome`` is partial (``outcome <> 'allow'``): most decisions allow,
  so most inserts skip that index; the list query for ``allow`` reads the tenant+time index
  and filters, which finds allowed rows quickly because they are the common case.
- The store inserts a batch as one array of the composite type ``decision_insert_row`` (its
  fields are the columns of ``DECISION_COLUMNS``, in order). Types are not part of this
  metadata; migration 0002 creates it (PostgreSQL only).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

Json = JSON().with_variant(JSONB(), "postgresql")
# the predicate of the partial index ix_decisions_tenant_outcome (the list query repeats it)
OUTCOME_INDEX_WHERE = "outcome <> 'allow'"
Timestamp = DateTime(timezone=True)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String, nullable=False),
    Column("name", String, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("id", name="pk_tenants"),
    UniqueConstraint("name", name="uq_tenants_name"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String, nullable=False),
    Column(
        "tenant_id",
        String,
        ForeignKey("tenants.id", name="fk_api_keys_tenant_id_tenants", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked", Boolean, nullable=False),
    PrimaryKeyConstraint("key_id", name="pk_api_keys"),
    Index("ix_api_keys_tenant_id", "tenant_id"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("event_type", String, nullable=False),
    Column("body_hash", String, nullable=False),
    Column("entity", String, nullable=True),
    Column("occurred_at", Timestamp, nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Column("outcome", String, nullable=False),
    Column("score", Double, nullable=False),
    Column("ruleset_version", String, nullable=False),
    Column("model_version", String, nullable=True),
    Column("latency_ms", Double, nullable=False),
    Column("degraded", Boolean, nullable=False),
    Column("event", JSON, nullable=False),
    Column("features", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("shadow_reasons", JSON, nullable=False),
    Column("explanation", Text, nullable=False),
    PrimaryKeyConstraint("decision_id", name="pk_decisions"),
    UniqueConstraint("tenant_id", "event_id", name="uq_decisions_tenant_event"),
)

# The list query: one tenant, newest first, keyset on (occurred_at, decision_id); each filter
# of DecisionQuery has an index that keeps the same order after its equality (the outcome
# index only for outcomes other than "allow", see above).
Index(
    "ix_decisions_tenant_time",
    decisions.c.tenant_id,
    decisions.c.occurred_at.desc(),
    decisions.c.decision_id.desc(),
)
Index(
    "ix_decisions_tenant_entity",
    decisions.c.tenant_id,
    decisions.c.entity,
    decisions.c.occurred_at.desc(),
    decisions.c.decision_id.desc(),
)
Index(
    "ix_decisions_tenant_type",
    decisions.c.tenant_id,
    decisions.c.event_type,
    decisions.c.occurred_at.desc(),
    decisions.c.decision_id.desc(),
)
Index(
    "ix_decisions_tenant_outcome",
    decisions.c.tenant_id,
    decisions.c.outcome,
    decisions.c.occurred_at.desc(),
    decisions.c.decision_id.desc(),
    postgresql_where=text(OUTCOME_INDEX_WHERE),
    sqlite_where=text(OUTCOME_INDEX_WHERE),
)

ruleset_versions = Table(
    "ruleset_versions",
    metadata,
    Column(
        "tenant_id",
        String,
        ForeignKey("tenants.id", name="fk_ruleset_versions_tenant_id_tenants", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("version", String, nullable=False),
    Column("document", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String, nullable=False),
    Column("comment", Text, nullable=False),
    PrimaryKeyConstraint("tenant_id", "version", name="pk_ruleset_versions"),
    Index("ix_ruleset_versions_tenant_created", "tenant_id", "created_at"),
)

# Which version of each tenant is live: one row per tenant, so ``active_versions()`` (polled
# every second by every replica) reads one small table.
active_rulesets = Table(
    "active_rulesets",
    metadata,
    Column("tenant_id", String, nullable=False),
    Column("version", String, nullable=False),
    Column("activated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant_id", name="pk_active_rulesets"),
    ForeignKeyConstraint(
        ["tenant_id", "version"],
        ["ruleset_versions.tenant_id", "ruleset_versions.version"],
        name="fk_active_rulesets_version",
        ondelete="CASCADE",
    ),
)

rule_drafts = Table(
    "rule_drafts",
    metadata,
    Column(
        "tenant_id",
        String,
        ForeignKey("tenants.id", name="fk_rule_drafts_tenant_id_tenants", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("document", Json, nullable=False),
    Column("deleted_rules", Json, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("revision", Integer, nullable=False),
    PrimaryKeyConstraint("tenant_id", name="pk_rule_drafts"),
)

DECISION_COLUMNS: tuple[str, ...] = tuple(c.name for c in decisions.columns)
JSON_DECISION_COLUMNS = frozenset({"event", "features", "reasons", "shadow_reasons"})
# PostgreSQL: the composite type of one inserted decision (fields: DECISION_COLUMNS, in order)
DECISION_ROW_TYPE = "decision_insert_row"
