"""Whole pulls against the sandbox, stored on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.errors import PermanentFetchError
from job.sandbox import SandboxServer
from job.source import Page
from tests.factories import SANDBOX_SECRET, make_pipeline, make_settings
from tests.leaks import LeakWatch


def stored(pipeline: Any) -> dict[str, dict[str, Any]]:
    return {
        row["record_key"]: row["payload"]
        for row in pipeline.store.iter_records("items")
    }


def truth(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    return {str(item["id"]): item for item in sandbox.state.all_records()}


class TestPull:
    def test_stores_exactly_the_providers_records(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Every page is followed; the database holds each record once."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = make_pipeline(settings, clock)

        result = pipeline.pull("items")

        assert result.succeeded, result.error
        assert stored(pipeline) == truth(sandbox)
        assert result.stats.pages == 5
        assert result.stats.inserted == 250
        assert result.stats.token_requests == 1

    def test_a_rerun_duplicates_nothing_and_counts_changes(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Unchanged records are left alone; changed ones are updated."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = make_pipeline(settings, clock)
        pipeline.pull("items")

        again = pipeline.pull("items")
        sandbox.state.epoch = 1
        changed = pipeline.pull("items")

        assert (again.stats.inserted, again.stats.updated) == (0, 0)
        assert again.stats.unchanged == 250
        assert changed.stats.updated == 25
        assert changed.stats.inserted == 0
        assert stored(pipeline) == truth(sandbox)

    def test_the_run_row_says_what_happened(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """The runs table has the status, counters and times of the pull."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = make_pipeline(settings, clock)

        result = pipeline.pull("items", "schedule")

        (row,) = pipeline.store.recent_runs()
        assert row["id"] == result.run_id
        assert row["trigger"] == "schedule"
        assert row["status"] == "succeeded"
        assert (row["pages"], row["records_seen"], row["inserted"]) == (5, 250, 250)
        assert row["finished_at"] is not None
        assert row["error"] is None

    def test_a_failed_pull_is_recorded_with_its_error(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """A wrong secret fails the run; the row names the provider's error."""
        settings = make_settings(
            sandbox,
            engine.url.render_as_string(False),
            provider={"client_secret": "not-the-secret"},
        )
        pipeline = make_pipeline(settings, clock)

        result = pipeline.pull("items")

        assert result.status == "failed"
        (row,) = pipeline.store.recent_runs()
        assert row["status"] == "failed"
        assert "invalid_client" in row["error"]

    def test_a_failure_midway_keeps_the_pages_stored(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Pages committed before an error stay; the run says failed."""
        settings = make_settings(
            sandbox,
            engine.url.render_as_string(False),
            source={"retry": {"max_attempts": 1}},
        )
        pipeline = make_pipeline(settings, clock)
        pipeline.pull("items")
        sandbox.state.epoch = 1
        sandbox.state.fail_after_pages = 2

        result = pipeline.pull("items")

        assert result.status == "failed"
        assert result.stats.pages == 2
        assert len(stored(pipeline)) == 250

    def test_a_stop_request_ends_the_run_as_interrupted(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Asked to stop, the pull keeps the page it stored and says interrupted."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = make_pipeline(settings, clock)
        pipeline.stop.set()

        result = pipeline.pull("items")

        assert result.status == "interrupted"
        assert pipeline.store.recent_runs()[0]["status"] == "interrupted"

    def test_nothing_secret_reaches_the_database(
        self,
        sandbox: SandboxServer,
        engine: Engine,
        clock: FakeClock,
        leak_watch: LeakWatch,
    ) -> None:
        """After good and failed pulls, no table holds the secret or a token."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = make_pipeline(settings, clock)
        pipeline.pull("items")
        sandbox.state.revoke_all_tokens()
        pipeline.pull("items")
        bad = make_settings(
            sandbox,
            engine.url.render_as_string(False),
            provider={"client_secret": SANDBOX_SECRET + "x"},
        )
        make_pipeline(bad, clock).pull("items")

        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                rows = connection.execute(select(table)).all()
                leak_watch.output(f"table {table.name}", repr(rows))

        assert leak_watch.leaks() == []
        assert len(leak_watch.needles()) >= 3


class TestRecords:
    def test_a_record_nested_too_deep_to_store_is_a_clear_error(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """orjson writes 255 levels at most: the error names the record, no crash."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        pipeline = make_pipeline(settings, clock)
        deep: Any = 1
        for _ in range(300):
            deep = [deep]
        page = Page(3, sandbox.resource_url, [{"id": 1}, {"id": 2, "v": deep}])

        with pytest.raises(PermanentFetchError, match=r"record 1 on page 3 .* 255"):
            pipeline._records(settings.source("items"), page, clock.now())
