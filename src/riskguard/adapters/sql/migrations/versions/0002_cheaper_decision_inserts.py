"""Cheaper decision inserts: ``json`` columns, LZ4, a partial outcome index, a batch row type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-09

Written by hand to match ``riskguard.adapters.sql.tables`` (a test compares the two); why each
change pays is told there. PostgreSQL:

- ``decisions``' four JSON columns become ``json`` (they were ``jsonb``), compressed with LZ4
  when the server supports it (PostgreSQL 14+ built with lz4). Changing the type rewrites the
  table: on a large table this takes a while and holds an exclusive lock. Replicas of the
  previous release keep working against the new schema (``jsonb`` -> ``json`` is an
  assignment cast).
- the composite type ``decision_insert_row`` (the columns of ``decisions``, in order): the store
  sends a batch as one array of it.

Both dialects: ``ix_decisions_tenant_outcome`` only indexes decisions that do not allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_COLUMNS = ("event", "features", "reasons", "shadow_reasons")
ROW_TYPE = (
    "CREATE TYPE decision_insert_row AS ("
    "decision_id varchar, tenant_id varchar, event_id varchar, event_type varchar, "
    "body_hash varchar, entity varchar, occurred_at timestamptz, received_at timestamptz, "
    "outcome varchar, score float8, ruleset_version varchar, model_version varchar, "
    "latency_ms float8, degraded boolean, event json, features json, reasons json, "
    "shadow_reasons json, explanation text)"
)
OUTCOME_INDEX = "ix_decisions_tenant_outcome"
OUTCOME_WHERE = "outcome <> 'allow'"


def _outcome_index(where: str | None) -> None:
    kwargs: dict[str, Any] = (
        {}
        if where is None
        else {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}
    )
    op.create_index(
        OUTCOME_INDEX,
        "decisions",
        [
            sa.column("tenant_id"),
            sa.column("outcome"),
            sa.column("occurred_at").desc(),
            sa.column("decision_id").desc(),
        ],
        **kwargs,
    )


def _has_lz4() -> bool:
    found = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        .scalar()
    )
    return bool(found)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        lz4 = _has_lz4()
        changes = []
        for column in JSON_COLUMNS:
            changes.append(f"ALTER COLUMN {column} TYPE json USING {column}::json")
            if lz4:
                changes.append(f"ALTER COLUMN {column} SET COMPRESSION lz4")
        op.execute("ALTER TABLE decisions " + ", ".join(changes))
        op.execute(ROW_TYPE)
    op.drop_index(OUTCOME_INDEX, table_name="decisions")
    _outcome_index(OUTCOME_WHERE)


def downgrade() -> None:
    op.drop_index(OUTCOME_INDEX, table_name="decisions")
    _outcome_index(None)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TYPE decision_insert_row")
        lz4 = _has_lz4()
        changes = []
        for column in JSON_COLUMNS:
            changes.append(f"ALTER COLUMN {column} TYPE jsonb USING {column}::jsonb")
            if lz4:
                changes.append(f"ALTER COLUMN {column} SET COMPRESSION default")
        op.execute("ALTER TABLE decisions " + ", ".join(changes))
