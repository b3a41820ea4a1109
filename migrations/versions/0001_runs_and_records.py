"""Runs and records.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from job.storage.types import Payload, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    counters = [
        sa.Column(name, sa.Integer, nullable=False, server_default="0")
        for name in (
            "pages",
            "records_seen",
            "inserted",
            "updated",
            "unchanged",
            "retries",
            "rate_limit_waits",
            "token_requests",
        )
    ]
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        *counters,
        sa.Column("error", sa.Text),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
    )
    op.create_index("ix_runs_source_started_at", "runs", ["source", "started_at"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "records",
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("record_key", sa.String(512), primary_key=True),
        sa.Column("payload", Payload, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_records_source_last_seen_at", "records", ["source", "last_seen_at"]
    )


def downgrade() -> None:
    op.drop_table("records")
    op.drop_table("runs")
