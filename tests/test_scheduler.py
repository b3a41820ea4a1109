"""Triggers across DST, crontab weekdays, misfires, locks and per-run timeouts."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from job.clock import FakeClock, SystemClock
from job.config import ScheduleSettings
from job.errors import ConfigError
from job.locks import locks_for
from job.sandbox import SandboxServer
from job.scheduler import Daemon, build_trigger, misfire_grace_s
from tests.factories import make_pipeline, make_settings

BERLIN = "Europe/Berlin"
# 2026 in Berlin: clocks go forward on 29 March, back on 25 October.
SPRING = datetime(2026, 3, 28, 12, tzinfo=UTC)
AUTUMN = datetime(2026, 10, 24, 12, tzinfo=UTC)
# Due once a year: the only due run in a test is the first one, set by hand.
YEARLY = "0 0 1 1 *"


def fire_times(schedule: ScheduleSettings, start: datetime, count: int) -> list[Any]:
    """The next `count` fire times, as the scheduler would ask for them."""
    trigger = build_trigger(schedule)
    times: list[datetime] = []
    previous, now = None, start
    for _ in range(count):
        moment = trigger.get_next_fire_time(previous, now)
        times.append(moment.astimezone(UTC))
        previous, now = moment, moment

    return times


def gaps(times: list[datetime]) -> set[timedelta]:
    return {later - earlier for earlier, later in pairwise(times)}


def local_days(times: list[datetime]) -> list[str]:
    from zoneinfo import ZoneInfo

    return [t.astimezone(ZoneInfo(BERLIN)).date().isoformat() for t in times]


class TestTriggersAcrossDst:
    @pytest.mark.parametrize("start", [SPRING, AUTUMN], ids=["spring", "autumn"])
    def test_an_interval_runs_every_real_hour(self, start: datetime) -> None:
        """every: 1h in Berlin: exactly one hour apart through the change."""
        times = fire_times(ScheduleSettings(every=3600, timezone=BERLIN), start, 48)

        assert gaps(times) == {timedelta(hours=1)}

    @pytest.mark.parametrize("start", [SPRING, AUTUMN], ids=["spring", "autumn"])
    def test_a_daily_cron_runs_once_each_day(self, start: datetime) -> None:
        """30 2 * * *: one run per local day, none skipped, none doubled."""
        schedule = ScheduleSettings(cron="30 2 * * *", timezone=BERLIN)

        times = fire_times(schedule, start, 4)

        days = local_days(times)
        assert len(set(days)) == 4
        first = datetime.fromisoformat(days[0])
        assert days == [
            (first + timedelta(days=n)).date().isoformat() for n in range(4)
        ]

    def test_an_hourly_cron_keeps_every_real_hour_in_autumn(self) -> None:
        """0 * * * *: the repeated 02:00 runs too, so no hour goes unpulled."""
        schedule = ScheduleSettings(cron="0 * * * *", timezone=BERLIN)

        times = fire_times(schedule, AUTUMN, 30)

        assert gaps(times) == {timedelta(hours=1)}

    def test_an_hourly_cron_has_no_gap_bigger_than_the_lost_hour_in_spring(
        self,
    ) -> None:
        """0 * * * * in spring: one hour apart; 02:00 simply does not exist."""
        schedule = ScheduleSettings(cron="0 * * * *", timezone=BERLIN)

        times = fire_times(schedule, SPRING, 30)

        assert gaps(times) == {timedelta(hours=1)}


class TestCron:
    @pytest.mark.parametrize(
        ("weekday", "name"), [("0", "Sunday"), ("1", "Monday"), ("7", "Sunday")]
    )
    def test_weekdays_count_as_crontab_does(self, weekday: str, name: str) -> None:
        """0 and 7 are Sunday, 1 is Monday (APScheduler 3 alone says Tuesday)."""
        times = fire_times(ScheduleSettings(cron=f"0 9 * * {weekday}"), SPRING, 2)

        assert {t.strftime("%A") for t in times} == {name}

    def test_a_weekday_range_is_translated(self) -> None:
        """1-5 is Monday to Friday."""
        times = fire_times(ScheduleSettings(cron="0 9 * * 1-5"), SPRING, 5)

        assert [t.strftime("%a") for t in times] == ["Mon", "Tue", "Wed", "Thu", "Fri"]

    def test_jitter_applies_to_cron(self) -> None:
        """jitter: 30s delays each cron run by up to 30 s."""
        schedule = ScheduleSettings(cron="0 * * * *", jitter=30)

        times = fire_times(schedule, SPRING, 20)

        assert all(0 <= t.minute * 60 + t.second <= 30 for t in times)

    def test_four_fields_are_refused_with_the_settings(self) -> None:
        """Four fields: refused when the configuration loads, quoting it."""
        with pytest.raises(ValidationError, match="'0 9 \\* \\*' needs five"):
            ScheduleSettings(cron="0 9 * *")

    def test_a_bad_field_is_a_config_error(self) -> None:
        """Five fields, one out of range: a ConfigError quoting the expression."""
        with pytest.raises(ConfigError, match="'61 9 \\* \\* \\*'"):
            build_trigger(ScheduleSettings(cron="61 9 * * *"))

    def test_an_unknown_timezone_is_refused_with_the_settings(self) -> None:
        """A misspelt zone is named in the error."""
        with pytest.raises(ValidationError, match="Europe/Berln"):
            ScheduleSettings(every=60, timezone="Europe/Berln")


class TestMisfireGrace:
    def test_defaults_to_one_interval(self) -> None:
        """every: 15m may start up to 15 minutes late."""
        assert misfire_grace_s(ScheduleSettings(every=900)) == 900

    def test_a_configured_grace_wins(self) -> None:
        """misfire_grace: 5m is used as given."""
        assert misfire_grace_s(ScheduleSettings(every=900, misfire_grace=300)) == 300

    def test_cron_defaults_to_a_minute(self) -> None:
        """A cron schedule has no interval; a minute of grace."""
        assert misfire_grace_s(ScheduleSettings(cron="0 * * * *")) == 60


def daemon_for(
    sandbox: SandboxServer, engine: Engine, clock: Any, **schedule: Any
) -> Daemon:
    schedule = schedule or {"every": 3600}
    settings = make_settings(
        sandbox,
        engine.url.render_as_string(False),
        source={"schedule": schedule},
    )
    pipeline = make_pipeline(settings, clock)
    return Daemon(
        pipeline, settings.sources, clock, locks=locks_for(pipeline.store.engine)
    )


def wait_for(events: list[Any], name: str, timeout_s: float = 20) -> None:
    done = threading.Event()
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    while datetime.now(UTC) < deadline and not done.wait(0.05):
        if any(event["event"] == name for event in events):
            return
    raise AssertionError(f"no {name} event in {timeout_s}s")


class TestDaemon:
    def test_a_late_start_within_grace_still_runs(
        self, sandbox: SandboxServer, engine: Engine, captured: list[Any]
    ) -> None:
        """First run due 30 s ago with an hour of grace: it runs now."""
        clock = FakeClock(datetime.now(UTC) - timedelta(seconds=30))
        daemon = daemon_for(sandbox, engine, clock, cron=YEARLY, misfire_grace=3600)

        daemon.start()
        try:
            wait_for(captured, "run.finished")
        finally:
            daemon.shutdown()

        assert [e["event"] for e in captured if e["event"] == "run.missed"] == []

    def test_a_run_past_its_grace_is_logged_as_missed(
        self, sandbox: SandboxServer, engine: Engine, captured: list[Any]
    ) -> None:
        """First run due an hour ago with 1 s of grace: run.missed, never silent."""
        clock = FakeClock(datetime.now(UTC) - timedelta(hours=1))
        daemon = daemon_for(sandbox, engine, clock, cron=YEARLY, misfire_grace=1)

        daemon.start()
        try:
            wait_for(captured, "run.missed")
        finally:
            daemon.shutdown()

        missed = next(e for e in captured if e["event"] == "run.missed")
        assert missed["source"] == "items"
        assert daemon.pipeline.store.recent_runs() == []

    def test_a_held_source_is_skipped_and_logged(
        self, sandbox: SandboxServer, engine: Engine, captured: list[Any]
    ) -> None:
        """While a backfill holds the source, the scheduled pull is skipped."""
        daemon = daemon_for(sandbox, engine, FakeClock())

        with daemon.locks.shared("items"):
            daemon._pull("items")

        skipped = [e for e in captured if e["event"] == "run.skipped"]
        assert len(skipped) == 1
        assert skipped[0]["source"] == "items"
        assert "backfill" in skipped[0]["reason"]
        assert daemon.pipeline.store.recent_runs() == []

    def test_a_pull_due_while_the_last_still_runs_is_logged(
        self, sandbox: SandboxServer, engine: Engine, captured: list[Any]
    ) -> None:
        """APScheduler's max-instances event becomes run.skipped, never silence."""
        daemon = daemon_for(sandbox, engine, FakeClock())

        daemon._on_busy(JobEvent(EVENT_JOB_MAX_INSTANCES, "items", "default"))

        (skipped,) = [e for e in captured if e["event"] == "run.skipped"]
        assert skipped["source"] == "items"
        assert "still running" in skipped["reason"]

    def test_a_run_past_its_timeout_fails_and_frees_the_source(
        self, sandbox: SandboxServer, engine: Engine, captured: list[Any]
    ) -> None:
        """timeout: 0.2s with slow pages: failed, timed out; the next pull runs."""
        daemon = daemon_for(sandbox, engine, SystemClock(), every=3600, timeout=0.2)
        sandbox.state.latency_s = 0.5

        late = daemon.pull_once("items")
        sandbox.state.latency_s = 0.0
        daemon._pull("items")

        assert late.status == "failed"
        assert "timed out after 0.2 s" in (late.error or "")
        runs = daemon.pipeline.store.recent_runs()
        assert [run["status"] for run in runs] == ["succeeded", "failed"], runs
        assert "timed out" in runs[1]["error"]
        assert [e["source"] for e in captured if e["event"] == "run.timed_out"] == [
            "items"
        ]
        assert not daemon.pipeline.stop.is_set()
