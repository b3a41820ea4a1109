"""Backfill windows on runs, and a watermark per source.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from job.storage.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("window_start", UTCDateTime()))
        batch.add_column(sa.Column("window_end", UTCDateTime()))
    op.create_table(
        "source_state",
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("cursor_value", sa.Text),
        sa.Column("cursor_kind", sa.String(20)),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer),
    )


def downgrade() -> None:
    op.drop_table("source_state")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("window_end")
        batch.drop_column("window_start")
