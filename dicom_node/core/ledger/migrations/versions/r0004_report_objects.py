"""Several objects per report profile, and what each destination answered.

- ``reports.ordinal``: a profile's objects in sending order (the key image
  profile writes a Secondary Capture, ordinal 0, and a Key Object Selection
  document that references it, ordinal 1). The natural key becomes
  ``(analysis_id, profile, ordinal)``; existing reports are ordinal 0.
- ``reports.sop_class_uid``: the object's SOP Class (for the Predecessor
  Documents Sequence and the destination's presentation contexts).
- ``deliveries.status``: the last DIMSE status the destination answered.
- ``deliveries.warning``: the warning a delivered report came with (0xB000 ...).
- Destinations are named (``pacs``, ``outbox``): existing ``AE@host:port``
  destinations keep their text and are reported as unknown destinations if
  they are retried.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def upgrade() -> None:
    """Add the columns and widen the reports' natural key."""
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("sop_class_uid", sa.String(64)))
        batch.add_column(sa.Column("ordinal", sa.Integer, nullable=False, server_default="0"))
        batch.drop_constraint("uq_reports_natural_key", type_="unique")
        batch.create_unique_constraint(
            "uq_reports_natural_key", ["analysis_id", "profile", "ordinal"]
        )
    op.execute(
        sa.text("UPDATE reports SET sop_class_uid = :uid WHERE profile = 'tid1500'").bindparams(
            uid=COMPREHENSIVE_3D_SR
        )
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("status", sa.Integer))
        batch.add_column(sa.Column("warning", sa.Text))


def downgrade() -> None:
    """Drop the columns (reports with ordinal > 0 are deleted with their deliveries)."""
    op.execute(
        sa.text(
            "DELETE FROM deliveries WHERE report_id IN (SELECT id FROM reports WHERE ordinal > 0)"
        )
    )
    op.execute(sa.text("DELETE FROM reports WHERE ordinal > 0"))
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("warning")
        batch.drop_column("status")
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint("uq_reports_natural_key", type_="unique")
        batch.create_unique_constraint("uq_reports_natural_key", ["analysis_id", "profile"])
        batch.drop_column("ordinal")
        batch.drop_column("sop_class_uid")
