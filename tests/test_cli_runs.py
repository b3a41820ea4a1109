"""`job runs` filters, and `job records` streaming from a server-side cursor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.sandbox import SandboxServer
from job.stats import RunStats
from job.storage.engine import make_engine
from job.storage.history import stream_records
from job.storage.store import Store
from tests.factories import make_pipeline, make_settings
from tests.processes import Job


def seed_runs(folder: Path) -> Store:
    """Three runs: items ok (2026-01-01), items failed and other ok (2026-02-01)."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = Store(make_engine(f"sqlite:///{folder / 'job.db'}"), clock)
    first = store.start_run("items", "schedule")
    store.finish_run(first, "succeeded", RunStats(inserted=5))
    clock.advance(timedelta(days=31).total_seconds())
    failed = store.start_run("items", "once")
    store.finish_run(failed, "failed", RunStats(), "provider said no")
    other = store.start_run("other", "schedule")
    store.finish_run(other, "succeeded", RunStats())

    return store


def ids(result: Any) -> list[int]:
    return [json.loads(line)["id"] for line in result.stdout.splitlines()]


class TestRunsCommand:
    def test_filters_by_source_status_and_since(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """Each filter narrows the rows; newest first."""
        job.write_config(sandbox)
        job("db", "upgrade")
        seed_runs(tmp_path)

        every = job("runs", "--json")
        items = job("runs", "--json", "--source", "items")
        failed = job("runs", "--json", "--status", "failed")
        recent = job("runs", "--json", "--since", "2026-01-15")
        last = job("runs", "--json", "--limit", "1")

        assert ids(every) == [3, 2, 1]
        assert ids(items) == [2, 1]
        assert ids(failed) == [2]
        assert json.loads(failed.stdout)["error"] == "provider said no"
        assert ids(recent) == [3, 2]
        assert ids(last) == [3]

    def test_the_table_shows_each_run(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """Without --json: a table with the error cut to fit."""
        job.write_config(sandbox)
        job("db", "upgrade")
        seed_runs(tmp_path)

        result = job("runs", "--status", "failed")

        assert result.returncode == 0, result.stderr
        assert "provider said no" in result.stdout
        assert "failed" in result.stdout


class TestStreamRecords:
    def test_postgres_reads_through_a_server_side_cursor(
        self, sandbox: SandboxServer, engine: Engine
    ) -> None:
        """PostgreSQL gets a named (server-side) cursor; SQLite steps lazily."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        make_pipeline(settings, FakeClock()).pull("items")
        cursors: list[str] = []

        def seen(connection: Any, cursor: Any, *args: Any) -> None:
            cursors.append(type(cursor).__name__)

        event.listen(engine, "before_cursor_execute", seen)
        try:
            rows = stream_records(engine, "items")
            first = next(rows)
            rest = list(rows)
        finally:
            event.remove(engine, "before_cursor_execute", seen)

        assert first["record_key"] == "1"
        assert len(rest) == 249
        if engine.dialect.name == "postgresql":
            assert cursors == ["ServerCursor"]
