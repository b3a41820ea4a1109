"""Reads and fixes on the run history and the records, for operators.

Kept apart from `Store` (the write path of a pull): these serve the backfill,
the daemon's start-up checks and the commands that read data back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from job.clock import Clock
from job.storage.tables import records, runs

log = structlog.get_logger("job.storage")

Window = tuple[datetime, datetime]


def succeeded_windows(engine: Engine, source: str) -> set[Window]:
    """The backfill windows of `source` that some run already pulled in full."""
    query = select(runs.c.window_start, runs.c.window_end).where(
        runs.c.source == source,
        runs.c.status == "succeeded",
        runs.c.window_start.is_not(None),
    )
    with engine.connect() as connection:
        return {(start, end) for start, end in connection.execute(query)}


def abandon_runs(engine: Engine, clock: Clock, source: str) -> int:
    """Mark the runs of `source` left `running` as `abandoned`.

    Call it only while holding the source's exclusive lock: then no live
    process can be running that source, whatever host it is on.
    """
    statement = (
        update(runs)
        .where(runs.c.source == source, runs.c.status == "running")
        .values(
            status="abandoned",
            finished_at=clock.now(),
            error="the process running it stopped before it finished",
        )
    )
    with engine.begin() as connection:
        count = connection.execute(statement).rowcount or 0
    if count:
        log.warning("runs.abandoned", source=source, count=count)

    return count


def fail_run(engine: Engine, run_id: int, error: str) -> None:
    """Turn a finished run into a failed one, saying why (a timeout)."""
    with engine.begin() as connection:
        connection.execute(
            update(runs).where(runs.c.id == run_id).values(status="failed", error=error)
        )


def stream_records(
    engine: Engine, source: str, since: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """The stored records of `source`, in key order, a batch at a time.

    `stream_results` asks PostgreSQL for a server-side cursor, so the rows
    are not all loaded into memory first; SQLite steps through them anyway.
    """
    query = (
        select(
            records.c.record_key,
            records.c.payload,
            records.c.first_seen_at,
            records.c.last_seen_at,
            records.c.run_id,
        )
        .where(records.c.source == source)
        .order_by(records.c.record_key)
    )
    if since is not None:
        query = query.where(records.c.last_seen_at >= since)
    with engine.connect() as connection:
        result = connection.execution_options(
            stream_results=True, yield_per=1000
        ).execute(query)
        for row in result:
            yield {str(key): value for key, value in row._mapping.items()}
