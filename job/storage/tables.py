"""The tables as SQLAlchemy Core objects, matching the Alembic head revision.

Alembic owns the schema: these objects are used to read and write, never to
create tables (tests build their databases by running the migrations).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text

from job.storage.types import Payload, UTCDateTime

metadata = MetaData()

RUN_STATUSES = ("running", "succeeded", "failed", "interrupted", "abandoned")
TRIGGERS = ("schedule", "once", "backfill")

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(200), nullable=False),
    Column("trigger", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("pages", Integer, nullable=False, default=0),
    Column("records_seen", Integer, nullable=False, default=0),
    Column("inserted", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("retries", Integer, nullable=False, default=0),
    Column("rate_limit_waits", Integer, nullable=False, default=0),
    Column("token_requests", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("window_start", UTCDateTime()),
    Column("window_end", UTCDateTime()),
    Index("ix_runs_source_started_at", "source", "started_at"),
    Index("ix_runs_status", "status"),
)

records = Table(
    "records",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("record_key", String(512), primary_key=True),
    Column("payload", Payload, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("run_id", Integer, nullable=False),
    Index("ix_records_source_last_seen_at", "source", "last_seen_at"),
)

source_state = Table(
    "source_state",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("cursor_value", Text),
    Column("cursor_kind", String(20)),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("run_id", Integer),
)
