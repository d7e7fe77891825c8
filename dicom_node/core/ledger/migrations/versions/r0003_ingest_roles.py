"""Instance roles, skipped images, and what is needed to re-publish a stalled analysis.

- ``instances.role``: ``image`` (may start an analysis), ``non_image`` (SR, KOS,
  PR, SEG …: stored, never analysed) or ``own_output`` (an object this node
  produced, forwarded back to it: stored, never analysed, never reopens a study).
  Existing rows are images, as release 0.2 treated them.
- ``analyses.payload``: the ``analyze`` message as published (JSON), so a
  stalled analysis can be published again unchanged.
- ``analyses.requeues``: how many times it was published again.
- ``analyses.skipped``: JSON list of ``{"sop_instance_uid", "reason"}`` for
  images the analysis could not use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the columns; existing instances become ``image``."""
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="image"))
    with op.batch_alter_table("analyses") as batch:
        batch.add_column(sa.Column("payload", sa.Text))
        batch.add_column(sa.Column("requeues", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("skipped", sa.Text))


def downgrade() -> None:
    """Drop the columns again (roles, payloads and skipped lists are lost)."""
    with op.batch_alter_table("analyses") as batch:
        batch.drop_column("skipped")
        batch.drop_column("requeues")
        batch.drop_column("payload")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("role")
