"""Incremental pulls: the watermark sent, advanced, and committed with its page.

The sandbox serves records ordered by `updated_at` and filters them with an
inclusive `since`: record i is stamped BASE + i seconds; round 1 restamps
ids 9, 19, ..., 249 to BASE + 310 s.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.pipeline import Pipeline
from job.sandbox import SandboxServer
from job.storage.store import Watermark
from tests.factories import make_pipeline, make_settings

INCREMENTAL = {"cursor": "updated_at", "param": "since"}


def incremental(
    sandbox: SandboxServer, engine: Engine, clock: FakeClock, **source: Any
) -> Pipeline:
    options = {**INCREMENTAL, **source.pop("incremental", {})}
    settings = make_settings(
        sandbox,
        engine.url.render_as_string(hide_password=False),
        source={"incremental": options, **source},
    )
    return make_pipeline(settings, clock)


def stored(pipeline: Pipeline) -> dict[str, Any]:
    return {r["record_key"]: r["payload"] for r in pipeline.store.iter_records("items")}


def truth(sandbox: SandboxServer) -> dict[str, Any]:
    return {str(record["id"]): record for record in sandbox.state.all_records()}


def at(seconds: int) -> Watermark:
    minutes, rest = divmod(seconds, 60)
    return Watermark(f"2024-01-01T00:{minutes:02d}:{rest:02d}Z", "datetime")


class TestWatermark:
    def test_the_first_pull_sends_initial_and_stores_the_largest_cursor(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """`initial` starts at record 120; the watermark ends at record 250's time."""
        pipeline = incremental(
            sandbox, engine, clock, incremental={"initial": "2024-01-01T00:02:00Z"}
        )

        result = pipeline.pull("items")

        assert result.succeeded, result.error
        assert result.stats.records_seen == 131
        assert pipeline.store.watermark("items") == at(250)

    def test_later_pulls_send_the_watermark_and_move_it(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Nothing new: one record (since is inclusive); a round: just the changes."""
        pipeline = incremental(sandbox, engine, clock)
        first = pipeline.pull("items")

        quiet = pipeline.pull("items")
        sandbox.state.epoch = 1
        changed = pipeline.pull("items")

        assert first.stats.records_seen == 250
        assert (quiet.stats.records_seen, quiet.stats.unchanged) == (1, 1)
        assert (changed.stats.records_seen, changed.stats.updated) == (26, 25)
        assert pipeline.store.watermark("items") == at(310)
        assert stored(pipeline) == truth(sandbox)

    def test_lookback_rereads_a_window_behind_the_watermark(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """lookback 60s re-reads records 190..250, harmlessly; the mark stays put."""
        pipeline = incremental(sandbox, engine, clock, incremental={"lookback": "1m"})
        pipeline.pull("items")

        again = pipeline.pull("items")

        assert (again.stats.records_seen, again.stats.unchanged) == (61, 61)
        assert again.stats.inserted + again.stats.updated == 0
        assert pipeline.store.watermark("items") == at(250)

    def test_a_pull_that_dies_midway_keeps_the_watermark_of_its_stored_pages(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Two pages stored, then a failure: the mark is record 100's; the rerun
        starts there and ends with every record exactly once."""
        pipeline = incremental(sandbox, engine, clock, retry={"max_attempts": 1})
        sandbox.state.fail_after_pages = 2
        broken = pipeline.pull("items")
        mark = pipeline.store.watermark("items")
        sandbox.state.fail_after_pages = None

        rerun = pipeline.pull("items")

        assert broken.status == "failed"
        assert mark == at(100)
        assert (rerun.stats.records_seen, rerun.stats.inserted) == (151, 150)
        assert stored(pipeline) == truth(sandbox)

    def test_timestamps_with_offsets_compare_as_utc_instants(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Even ids come as +02:00: as text they would win, as instants they don't."""
        sandbox.state.epoch = 1
        pipeline = incremental(
            sandbox,
            engine,
            clock,
            params={"paging": "next", "offsets": "mixed"},
            records="data.items",
            pagination={"next": "links.next"},
        )
        pipeline.pull("items")
        mark = pipeline.store.watermark("items")

        again = pipeline.pull("items")

        assert mark == at(310)
        assert again.stats.records_seen == 25
        assert stored(pipeline)["248"]["updated_at"] == "2024-01-01T02:04:08+02:00"
