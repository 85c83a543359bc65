"""Initial schema: tenants, API keys, decisions, ruleset versions, active rulesets, drafts.

Revision ID: 0001
Revises:
Create Date: 2025-11-22

Written by hand to match ``riskguard.adapters.sql.tables`` (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_api_keys_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])

    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("body_hash", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=True),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("ruleset_version", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("event", Json, nullable=False),
        sa.Column("features", Json, nullable=False),
        sa.Column("reasons", Json, nullable=False),
        sa.Column("shadow_reasons", Json, nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name="pk_decisions"),
        sa.UniqueConstraint("tenant_id", "event_id", name="uq_decisions_tenant_event"),
    )
    for name, column in (
        ("ix_decisions_tenant_time", None),
        ("ix_decisions_tenant_entity", "entity"),
        ("ix_decisions_tenant_type", "event_type"),
        ("ix_decisions_tenant_outcome", "outcome"),
    ):
        columns: list[sa.ColumnElement[Any]] = [sa.column("tenant_id")]
        if column is not None:
            columns.append(sa.column(column))
        columns += [sa.column("occurred_at").desc(), sa.column("decision_id").desc()]
        op.create_index(name, "decisions", columns)

    op.create_table(
        "ruleset_versions",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("document", Json, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "version", name="pk_ruleset_versions"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_ruleset_versions_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_ruleset_versions_tenant_created", "ruleset_versions", ["tenant_id", "created_at"]
    )
    op.create_table(
        "active_rulesets",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("activated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_active_rulesets"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "version"],
            ["ruleset_versions.tenant_id", "ruleset_versions.version"],
            name="fk_active_rulesets_version",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "rule_drafts",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("document", Json, nullable=False),
        sa.Column("deleted_rules", Json, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_rule_drafts"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_rule_drafts_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("rule_drafts")
    op.drop_table("active_rulesets")
    op.drop_table("ruleset_versions")
    op.drop_table("decisions")
    op.drop_table("api_keys")
    op.drop_table("tenants")
