"""Backing off between scheduled runs after a provider refused us for good."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.engine import Engine

from job.backoff import RunBackoff
from job.clock import FakeClock
from job.errors import PermanentAuthError
from job.sandbox import SandboxServer
from job.scheduler import Daemon
from tests.factories import make_pipeline, make_settings

EventList = list[structlog.typing.EventDict]
REFUSAL = PermanentAuthError("refused", error="invalid_client")


def pattern(backoff: RunBackoff, runs: int) -> str:
    """Which of the next `runs` runs go ahead (x) or are skipped (.)."""
    return "".join("x" if backoff.allows("s") else "." for _ in range(runs))


class TestRunBackoff:
    def test_skips_one_then_two_then_four_runs(self, clock: FakeClock) -> None:
        """After the k-th refusal in a row, the next 2**(k-1) runs are skipped."""
        backoff = RunBackoff(clock)
        seen = []

        for _ in range(3):
            backoff.record("s", REFUSAL)
            seen.append(pattern(backoff, 5))

        assert seen == [".xxxx", "..xxx", "....x"]

    def test_a_successful_run_resets(
        self, clock: FakeClock, captured: EventList
    ) -> None:
        """One run that gets a token ends the backoff and says so."""
        backoff = RunBackoff(clock)
        backoff.record("s", REFUSAL)
        backoff.record("s", REFUSAL)

        backoff.record("s", None)
        backoff.record("s", REFUSAL)

        assert pattern(backoff, 2) == ".x"
        assert [e["event"] for e in captured] == [
            "source.backing_off",
            "source.backing_off",
            "source.backoff_reset",
            "source.backing_off",
            "run.skipped",
        ]

    def test_never_skips_past_the_cap(self, clock: FakeClock) -> None:
        """Once cap_s has passed since the refusal, the next run goes ahead."""
        backoff = RunBackoff(clock, cap_s=600)
        for _ in range(5):
            backoff.record("s", REFUSAL)

        skipped_first = pattern(backoff, 1)
        clock.advance(600)

        assert skipped_first + pattern(backoff, 1) == ".x"

    def test_sources_back_off_independently(self, clock: FakeClock) -> None:
        """A refusal of one source skips nothing of another."""
        backoff = RunBackoff(clock)

        backoff.record("s", REFUSAL)

        assert backoff.allows("other")
        assert not backoff.allows("s")

    def test_the_event_says_when_and_why(
        self, clock: FakeClock, captured: EventList
    ) -> None:
        """source.backing_off names the error, the runs skipped, the resume time."""
        backoff = RunBackoff(clock, cap_s=3600)

        backoff.record("s", REFUSAL)
        backoff.allows("s")

        backing_off, skipped = captured
        assert backing_off["event"] == "source.backing_off"
        assert {k: backing_off[k] for k in ("failures", "skip_runs", "error")} == {
            "failures": 1,
            "skip_runs": 1,
            "error": "invalid_client",
        }
        assert backing_off["resume_by"] == "2026-01-01T01:00:00+00:00"
        assert skipped["event"] == "run.skipped"
        assert skipped["reason"] == "backing_off"


class TestDaemonBacksOff:
    def test_a_refused_source_is_not_hammered_and_recovers(
        self,
        sandbox: SandboxServer,
        engine: Engine,
        database_url: str,
        clock: FakeClock,
        captured: EventList,
    ) -> None:
        """invalid_client: runs 2, 4 and 5 are skipped; once fixed, runs resume."""
        settings = make_settings(sandbox, database_url)
        daemon = Daemon(make_pipeline(settings, clock), settings.sources, clock)
        sandbox.state.token_error_with_200 = True
        sandbox.state.token_error_code = "invalid_client"

        for _ in range(5):
            daemon._pull("items")
        refused_requests = sandbox.state.token_requests
        sandbox.state.token_error_with_200 = False
        for _ in range(3):
            daemon._pull("items")

        assert refused_requests == 2
        runs = daemon.pipeline.store.recent_runs(limit=10)
        assert [run["status"] for run in reversed(runs)] == [
            "failed",
            "failed",
            "succeeded",
            "succeeded",
            "succeeded",
        ]
        assert _backoff_events(captured) == [
            ("source.backing_off", 1),
            ("run.skipped", 1),
            ("source.backing_off", 2),
            ("run.skipped", 2),
            ("run.skipped", 2),
            ("source.backoff_reset", None),
        ]


def _backoff_events(captured: EventList) -> list[tuple[str, Any]]:
    wanted = ("source.backing_off", "run.skipped", "source.backoff_reset")
    return [(e["event"], e.get("failures")) for e in captured if e["event"] in wanted]
