"""Release 0.1.0: one row per study (with its one model, report and delivery) and its instances.

A ledger that release wrote has these tables but no ``alembic_version``;
:func:`dicom_node.core.ledger.migrate.upgrade_ledger` stamps it ``0001`` first.
This revision is frozen: it must keep building exactly that schema.

Revision ID: 0001
Revises: -
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``studies`` and ``instances`` as release 0.1.0 did."""
    op.create_table(
        "studies",
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("first_received_at", sa.Float, nullable=False),
        sa.Column("last_received_at", sa.Float, nullable=False),
        sa.Column("queued_at", sa.Float),
        sa.Column("inferring_at", sa.Float),
        sa.Column("reported_at", sa.Float),
        sa.Column("delivered_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("task_id", sa.String(160)),
        sa.Column("model_id", sa.String(64)),
        sa.Column("weights_kind", sa.String(16)),
        sa.Column("report_uid", sa.String(64)),
        sa.Column("report_path", sa.Text),
        sa.Column("destination", sa.Text),
        sa.Column("delivery_attempts", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("study_uid"),
    )
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
    )
    op.create_index("ix_studies_state", "studies", ["state"])
    op.create_index("ix_studies_last_received_at", "studies", ["last_received_at"])
    op.create_index("ix_instances_study_uid", "instances", ["study_uid"])


def downgrade() -> None:
    """Drop everything."""
    op.drop_table("instances")
    op.drop_table("studies")
