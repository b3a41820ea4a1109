"""The reads and writes of a pull: runs, record upserts, and watermarks."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from job.clock import Clock
from job.stats import RunStats
from job.storage.bulk import upsert_page, write_page_postgresql
from job.storage.engine import unreachable
from job.storage.tables import records, runs, source_state


@dataclass(slots=True)
class Record:
    """A record ready to store: its key, its content, and a hash of that content.

    The JSON text that gets stored is made with the record, so that on
    PostgreSQL the pipeline's read-ahead thread does it, not the writer.
    Not frozen: a frozen dataclass sets each field through
    `object.__setattr__`, which made building one 2.4 times as slow, and a
    pull builds one per record.
    """

    key: str
    payload: Any
    content_hash: str
    payload_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.payload_json = orjson.dumps(self.payload).decode()


@dataclass(frozen=True)
class Watermark:
    """The largest cursor value stored so far for a source."""

    value: str
    kind: str  # "datetime", "number" or "string"


@dataclass(frozen=True)
class PageCounts:
    inserted: int
    updated: int
    unchanged: int


class Store:
    """Everything a pull writes goes through here, one transaction per page."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self._clock = clock
        is_sqlite = engine.dialect.name == "sqlite"
        self._is_postgresql = not is_sqlite
        self._insert = sqlite.insert if is_sqlite else postgresql.insert
        # SQLite takes one writer at a time. The threads of a backfill queue
        # here and go on the moment the last one commits, instead of meeting
        # the database's lock and sleeping in its busy handler (1, 2, 5, 10 ms
        # and more).
        self._writers: AbstractContextManager[Any] = (
            threading.Lock() if is_sqlite else nullcontext()
        )

    # Runs

    def start_run(
        self,
        source: str,
        trigger: str,
        *,
        window: tuple[datetime, datetime] | None = None,
    ) -> int:
        """Record a run as `running` and return its id."""
        values = {
            "source": source,
            "trigger": trigger,
            "status": "running",
            "started_at": self._clock.now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "window_start": window[0] if window else None,
            "window_end": window[1] if window else None,
        }
        with self._single() as connection:
            result = connection.execute(runs.insert(), values)
            (run_id,) = result.inserted_primary_key or (None,)
        assert run_id is not None, "the database returned no id for the new run"

        return int(run_id)

    def finish_run(
        self, run_id: int, status: str, stats: RunStats, error: str | None = None
    ) -> None:
        """Close a run with its final status, counters and error."""
        values = {
            "new_status": status,
            "new_finished_at": self._clock.now(),
            "new_error": error,
            **_counters(stats),
        }
        with self._single() as connection:
            connection.execute(_FINISH_RUN, {"run": run_id, **values})

    def recent_runs(
        self,
        *,
        source: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """The newest runs first, as plain dictionaries."""
        query = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if source:
            query = query.where(runs.c.source == source)
        if status:
            query = query.where(runs.c.status == status)
        if since:
            query = query.where(runs.c.started_at >= since)
        with self._connect() as connection:
            return [_plain(row._mapping) for row in connection.execute(query)]

    # Records

    def write_page(
        self,
        run_id: int,
        source: str,
        page: Sequence[Record],
        stats: RunStats,
        watermark: Watermark | None = None,
    ) -> PageCounts:
        """Upsert a page, move the watermark and the run's counters, atomically."""
        unique = list({record.key: record for record in page}.values())
        now = self._clock.now()
        if self._is_postgresql:
            with self._single() as connection:
                inserted, updated = write_page_postgresql(
                    connection,
                    source,
                    run_id,
                    unique,
                    now,
                    run_before=stats,
                    seen=len(page),
                    watermark=watermark,
                )
            counts = PageCounts(inserted, updated, len(unique) - inserted - updated)
            after = _counted(stats, counts, len(page))
        else:
            counts, after = self._write_page_sqlite(
                run_id, source, unique, len(page), stats, watermark, now
            )
        # Only a committed page counts: a page rolled back and retried must
        # not be counted twice. Only the page's own counters are copied back:
        # the others (retries, token requests) may move meanwhile on the
        # thread that fetches the next page.
        for name in _PAGE_COUNTERS:
            setattr(stats, name, getattr(after, name))

        return counts

    def _write_page_sqlite(
        self,
        run_id: int,
        source: str,
        unique: list[Record],
        seen: int,
        stats: RunStats,
        watermark: Watermark | None,
        now: datetime,
    ) -> tuple[PageCounts, RunStats]:
        with self._begin() as connection:
            # The bulk path writes only new and changed records, and counts them.
            inserted, updated = upsert_page(connection, source, run_id, unique, now)
            counts = PageCounts(inserted, updated, len(unique) - inserted - updated)
            after = _counted(stats, counts, seen)
            if watermark is not None:
                self._save_watermark(connection, source, run_id, watermark, now)
            connection.execute(_COUNT_RUN, {"run": run_id, **_counters(after)})

        return counts, after

    def count_records(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(records)
        if source:
            query = query.where(records.c.source == source)
        with self._connect() as connection:
            return int(connection.execute(query).scalar_one())

    def iter_records(self, source: str) -> Iterator[dict[str, Any]]:
        """Every stored record of `source`, streamed in key order."""
        query = (
            select(records)
            .where(records.c.source == source)
            .order_by(records.c.record_key)
            .execution_options(yield_per=1000)
        )
        with self._connect() as connection:
            for row in connection.execute(query):
                yield _plain(row._mapping)

    # Watermarks

    def watermark(self, source: str) -> Watermark | None:
        query = select(source_state.c.cursor_value, source_state.c.cursor_kind).where(
            source_state.c.source == source
        )
        with self._connect() as connection:
            row = connection.execute(query).first()
        if row is None or row.cursor_value is None:
            return None

        return Watermark(value=row.cursor_value, kind=row.cursor_kind or "string")

    def _save_watermark(
        self,
        connection: Connection,
        source: str,
        run_id: int,
        watermark: Watermark,
        now: datetime,
    ) -> None:
        statement = self._insert(source_state).values(
            source=source,
            cursor_value=watermark.value,
            cursor_kind=watermark.kind,
            updated_at=now,
            run_id=run_id,
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[source_state.c.source],
                set_={
                    "cursor_value": statement.excluded.cursor_value,
                    "cursor_kind": statement.excluded.cursor_kind,
                    "updated_at": statement.excluded.updated_at,
                    "run_id": statement.excluded.run_id,
                },
            )
        )

    # Connections that turn driver errors into StorageError

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._writers, _Guard(self.engine, begin=True) as connection:
            yield connection

    @contextmanager
    def _single(self) -> Iterator[Connection]:
        """For one statement, which commits itself: no BEGIN and COMMIT trips."""
        with self._writers, _Guard(self.engine, begin=False) as connection:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")

    def _connect(self) -> Any:
        return _Guard(self.engine, begin=False)


_PAGE_COUNTERS = ("pages", "records_seen", "inserted", "updated", "unchanged")

# Statements that run for every page and run, built once. Parameters are
# named new_<column>, as SQLAlchemy keeps plain column names for itself.
_COUNTERS: dict[str, Any] = {
    name: bindparam(f"new_{name}") for name in RunStats().as_dict()
}
_COUNT_RUN = update(runs).where(runs.c.id == bindparam("run")).values(_COUNTERS)
_FINISH_RUN = _COUNT_RUN.values(
    status=bindparam("new_status"),
    finished_at=bindparam("new_finished_at"),
    error=bindparam("new_error"),
)


def _counters(stats: RunStats) -> dict[str, int]:
    return {f"new_{name}": value for name, value in stats.as_dict().items()}


def _counted(stats: RunStats, counts: PageCounts, seen: int) -> RunStats:
    """`stats` with one more page of `counts` added, as a new value."""
    return replace(
        stats,
        pages=stats.pages + 1,
        records_seen=stats.records_seen + seen,
        inserted=stats.inserted + counts.inserted,
        updated=stats.updated + counts.updated,
        unchanged=stats.unchanged + counts.unchanged,
    )


def _plain(mapping: Any) -> dict[str, Any]:
    # Column names come back as quoted_name, a str subclass JSON encoders refuse.
    return {str(key): value for key, value in mapping.items()}


class _Guard:
    """A connection (or transaction) whose driver errors become StorageError."""

    def __init__(self, engine: Engine, *, begin: bool) -> None:
        self._engine = engine
        self._context = engine.begin() if begin else engine.connect()

    def __enter__(self) -> Connection:
        try:
            return self._context.__enter__()
        except (OperationalError, DBAPIError) as exc:
            raise unreachable(self._engine, exc) from None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> Literal[False]:
        try:
            self._context.__exit__(kind, value, traceback)
        except (OperationalError, DBAPIError) as exc:
            raise unreachable(self._engine, exc) from None
        if isinstance(value, OperationalError | DBAPIError):
            raise unreachable(self._engine, value) from None
        return False
