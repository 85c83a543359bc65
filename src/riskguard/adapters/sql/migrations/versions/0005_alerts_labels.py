"""Alerts and labels: ``alerts``, ``alert_decisions``, ``alert_notes``, ``labels``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-05-12

Written by hand to match ``riskguard.adapters.sql.alerts`` (a test compares the schema with the
metadata; importing that module here puts its tables on the metadata whenever Alembic loads the
migrations). ``uq_alerts_tenant_dedup`` is a partial unique index (``WHERE dedup_key IS NOT
NULL``): one absorbing alert per tenant and key, the target of the open-or-join upsert.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import riskguard.adapters.sql.alerts  # noqa: F401  (registers the alert tables on the metadata)

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
DEDUP_WHERE = "dedup_key IS NOT NULL"


def _queue_columns(*leading: str) -> list[sa.ColumnElement[object]]:
    return [
        *(sa.column(name) for name in leading),
        sa.column("severity").desc(),
        sa.column("updated_at").desc(),
        sa.column("id").desc(),
    ]


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("entity", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("assignee", sa.String(), nullable=True),
        sa.Column("resolution", sa.String(), nullable=True),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("decision_count", sa.Integer(), nullable=False),
        sa.Column("first_decision_id", sa.String(), nullable=False),
        sa.Column("last_decision_id", sa.String(), nullable=False),
        sa.Column("first_seen_at", Timestamp, nullable=False),
        sa.Column("last_seen_at", Timestamp, nullable=False),
        sa.Column("opened_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("resolved_at", Timestamp, nullable=True),
        sa.Column("resolved_by", sa.String(), nullable=True),
        sa.Column("dedup_key", sa.String(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index(
        "uq_alerts_tenant_dedup",
        "alerts",
        ["tenant_id", "dedup_key"],
        unique=True,
        postgresql_where=sa.text(DEDUP_WHERE),
        sqlite_where=sa.text(DEDUP_WHERE),
    )
    op.create_index("ix_alerts_tenant_queue", "alerts", _queue_columns("tenant_id"))
    op.create_index(
        "ix_alerts_tenant_status_queue", "alerts", _queue_columns("tenant_id", "status")
    )
    op.create_index("ix_alerts_tenant_entity", "alerts", ["tenant_id", "entity", "opened_at"])
    op.create_index("ix_alerts_tenant_assignee", "alerts", ["tenant_id", "assignee", "status"])

    op.create_table(
        "alert_decisions",
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("decision_id", sa.String(), nullable=False),
        sa.Column("alert_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "decision_id", name="pk_alert_decisions"),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alerts.id"],
            name="fk_alert_decisions_alert_id_alerts",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_alert_decisions_alert_time", "alert_decisions", ["alert_id", "occurred_at"])

    op.create_table(
        "alert_notes",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("alert_id", sa.String(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notes"),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alerts.id"],
            name="fk_alert_notes_alert_id_alerts",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_alert_notes_alert_id", "alert_notes", ["alert_id", "id"])

    op.create_table(
        "labels",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("labelled_at", Timestamp, nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("recorded_at", Timestamp, nullable=False),
        sa.Column("alert_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_labels"),
        sa.UniqueConstraint(
            "tenant_id", "event_id", "source", name="uq_labels_tenant_event_source"
        ),
    )
    op.create_index("ix_labels_tenant_id", "labels", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("alert_notes")
    op.drop_table("alert_decisions")
    op.drop_table("alerts")
