"""Backfills against the sandbox's [from, to) window, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from rich.console import Console
from sqlalchemy.engine import Engine

from job.backfill import (
    Backfill,
    LogReporter,
    Progress,
    bounded_session,
    rich_reporter,
    split_windows,
)
from job.clock import FakeClock
from job.errors import ConfigError
from job.locks import locks_for
from job.pipeline import Pipeline, RunResult
from job.sandbox import SandboxServer
from job.stats import RunStats
from job.storage.store import Store
from tests.factories import make_pipeline, make_settings

START = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return START + timedelta(seconds=seconds)


def pipeline_for(
    sandbox: SandboxServer, engine: Engine, clock: FakeClock, **source: Any
) -> Pipeline:
    settings = make_settings(
        sandbox, engine.url.render_as_string(False), source=source or None
    )
    return make_pipeline(settings, clock)


def backfill(pipeline: Pipeline, parallel: int = 1) -> Backfill:
    return Backfill(pipeline, locks_for(pipeline.store.engine), "items", parallel)


def stored_ids(pipeline: Pipeline) -> list[int]:
    return sorted(
        int(row["record_key"]) for row in pipeline.store.iter_records("items")
    )


def backfill_runs(pipeline: Pipeline) -> list[dict[str, Any]]:
    runs = pipeline.store.recent_runs(limit=1000)
    return sorted(
        (run for run in runs if run["trigger"] == "backfill"), key=lambda r: r["id"]
    )


class TestSplitWindows:
    def test_half_open_windows_cover_the_range(self) -> None:
        """Each window starts where the last ended; the last is cut at --until."""
        windows = split_windows(at(0), at(70), timedelta(seconds=30))

        assert windows == [(at(0), at(30)), (at(30), at(60)), (at(60), at(70))]

    def test_an_empty_range_is_refused(self) -> None:
        """--until before --since is a ConfigError naming both."""
        with pytest.raises(ConfigError, match=r"--until .* must be after --since"):
            split_windows(at(10), at(10), timedelta(seconds=1))

    def test_a_zero_window_is_refused(self) -> None:
        """--window 0 would never end; it is refused."""
        with pytest.raises(ConfigError, match="--window"):
            split_windows(at(0), at(10), timedelta(0))


class TestBackfill:
    def test_each_window_is_a_run_holding_exactly_its_records(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Four windows, four backfill runs, records 1-119 and nothing else."""
        pipeline = pipeline_for(sandbox, engine, clock)
        windows = split_windows(at(0), at(120), timedelta(seconds=30))

        results = backfill(pipeline).run(windows, Progress(4, clock))

        assert all(result.succeeded for result in results)
        # Windows overlap one another, so their runs start in no fixed order.
        runs = sorted(backfill_runs(pipeline), key=lambda r: r["window_start"])
        assert [(r["window_start"], r["window_end"]) for r in runs] == windows
        assert [r["records_seen"] for r in runs] == [29, 30, 30, 30]
        assert stored_ids(pipeline) == list(range(1, 120))

    def test_windows_that_succeeded_are_skipped(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """After two windows succeeded, a rerun pulls only the other two."""
        pipeline = pipeline_for(sandbox, engine, clock)
        windows = split_windows(at(0), at(120), timedelta(seconds=30))
        job = backfill(pipeline)
        job.run(windows[:2], Progress(2, clock))

        pending = job.pending(windows, redo=False)
        job.run(pending, Progress(len(pending), clock))

        assert pending == windows[2:]
        assert len(backfill_runs(pipeline)) == 4
        assert stored_ids(pipeline) == list(range(1, 120))

    def test_a_failed_window_is_pulled_again(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """A window whose run failed is still pending."""
        pipeline = pipeline_for(sandbox, engine, clock)
        windows = split_windows(at(0), at(60), timedelta(seconds=30))
        run_id = pipeline.store.start_run("items", "backfill", window=windows[0])
        pipeline.store.finish_run(run_id, "failed", RunStats())

        assert backfill(pipeline).pending(windows, redo=False) == windows

    def test_redo_pulls_every_window(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """--redo ignores what succeeded before."""
        pipeline = pipeline_for(sandbox, engine, clock)
        windows = split_windows(at(0), at(60), timedelta(seconds=30))
        job = backfill(pipeline)
        job.run(windows, Progress(2, clock))

        assert job.pending(windows, redo=True) == windows

    def test_parallel_windows_share_one_token(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Four windows on four threads: one token request, every record once."""
        pipeline = pipeline_for(sandbox, engine, clock)
        windows = split_windows(at(0), at(240), timedelta(seconds=30))

        results = backfill(pipeline, parallel=4).run(windows, Progress(8, clock))

        assert all(result.succeeded for result in results), results
        assert sandbox.state.token_requests == 1
        assert stored_ids(pipeline) == list(range(1, 240))

    def test_a_rejected_token_is_renewed_when_every_connection_is_busy(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """The 401's connection goes back to the pool before the token request."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = Pipeline(
            settings,
            store=Store(engine, clock),
            session=bounded_session(requests.Session(), 1),
            clock=clock,
        )
        windows = split_windows(at(0), at(60), timedelta(seconds=30))
        backfill(pipeline).run(windows[:1], Progress(1, clock))
        sandbox.state.revoke_all_tokens()
        results: list[RunResult] = []

        worker = threading.Thread(
            target=lambda: results.extend(
                backfill(pipeline).run(windows[1:], Progress(1, clock))
            ),
            daemon=True,
        )
        worker.start()
        worker.join(timeout=30)

        assert not worker.is_alive(), "the backfill waited for a connection forever"
        assert [result.succeeded for result in results] == [True]
        assert sandbox.state.token_requests == 2

    def test_windows_leave_the_watermark_alone(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """A backfill of old windows does not move an incremental source's cursor."""
        pipeline = pipeline_for(
            sandbox,
            engine,
            clock,
            incremental={"cursor": "updated_at", "param": "since"},
        )
        pipeline.pull("items", "schedule")
        before = pipeline.store.watermark("items")

        backfill(pipeline).run(
            split_windows(at(0), at(60), timedelta(seconds=30)), Progress(2, clock)
        )

        assert before is not None
        assert pipeline.store.watermark("items") == before

    def test_a_stopped_backfill_starts_no_more_windows(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Once stop is set, the windows not started are left for the next run."""
        pipeline = pipeline_for(sandbox, engine, clock)
        pipeline.stop.set()

        results = backfill(pipeline).run(
            split_windows(at(0), at(60), timedelta(seconds=30)), Progress(2, clock)
        )

        assert results == []
        assert backfill_runs(pipeline) == []


class TestProgress:
    def test_log_reporter_throttles_but_reports_the_end(
        self, clock: FakeClock, captured: list[dict[str, Any]]
    ) -> None:
        """One event at the first window, none within 10 s, one at the last."""
        progress = Progress(3, clock, LogReporter(clock))
        result = _result(records=30)

        progress.window_finished(result)
        clock.advance(1)
        progress.window_finished(result)
        clock.advance(1)
        progress.window_finished(result)

        events = [e for e in captured if e["event"] == "backfill.progress"]
        assert [e["windows_done"] for e in events] == [1, 3]
        assert events[-1]["records"] == 90
        assert events[-1]["records_per_s"] == 45.0
        assert events[-1]["eta_s"] == 0.0


def _result(records: int) -> RunResult:
    return RunResult(1, "items", "succeeded", RunStats(records_seen=records))


class TestRichReporter:
    def test_the_bar_shows_windows_and_records(self, clock: FakeClock) -> None:
        """On a terminal: windows done of total, and the records so far."""
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120)

        with rich_reporter(2, console) as report:
            progress = Progress(2, clock, report)
            progress.window_finished(_result(records=30))
            clock.advance(1)
            progress.window_finished(_result(records=30))

        assert "2/2" in out.getvalue()
        assert "60 records" in out.getvalue()
