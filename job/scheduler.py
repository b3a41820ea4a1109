"""When pulls happen: the daemon, the only module that imports APScheduler."""

from __future__ import annotations

import copy
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from job.backoff import RunBackoff
from job.clock import Clock
from job.config import ScheduleSettings, SourceSettings
from job.errors import ConfigError, JobError, PermanentAuthError
from job.health import Metrics
from job.locks import NoLocks, SourceLocks
from job.pipeline import Pipeline, RunResult
from job.storage.history import abandon_runs, fail_run

log = structlog.get_logger("job.scheduler")

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def build_trigger(schedule: ScheduleSettings) -> BaseTrigger:
    """An APScheduler trigger for `every:` or `cron:`, in the schedule's timezone."""
    try:
        if schedule.every is not None:
            return IntervalTrigger(
                seconds=schedule.every,
                timezone=schedule.timezone,
                jitter=schedule.jitter or None,
            )
        return _cron_trigger(str(schedule.cron), schedule)
    except (ValueError, LookupError) as exc:
        raise ConfigError(
            f"schedule {schedule.cron or schedule.every!r} with timezone "
            f"{schedule.timezone!r} is not valid: {exc}"
        ) from None


def _cron_trigger(expr: str, schedule: ScheduleSettings) -> CronTrigger:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, day, month, weekdays = fields

    return WallClockCronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekdays),
        timezone=schedule.timezone,
        jitter=int(schedule.jitter) or None,
    )


class WallClockCronTrigger(CronTrigger):  # type: ignore[misc]  # no stubs
    """A cron trigger that runs a fixed local time once when the clocks go back.

    When summer time ends, 02:30 happens twice; APScheduler 3 fires at both.
    Like cron, a job with a fixed hour runs once then, while a job on every
    hour (`*` in the hour field) keeps running each real hour.
    """

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        moment: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if moment is None or previous_fire_time is None or self._every_hour():
            return moment
        if _wall(moment) == _wall(previous_fire_time.astimezone(moment.tzinfo)):
            # In UTC: wall-clock arithmetic would land back before the fold.
            later = moment.astimezone(UTC) + timedelta(microseconds=1)
            moment = super().get_next_fire_time(moment, later)

        return moment

    def _every_hour(self) -> bool:
        return any(f.name == "hour" and str(f) == "*" for f in self.fields)


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None, fold=0)


def crontab_weekdays(field: str) -> str:
    """Crontab day numbers (0 and 7 are Sunday) as names APScheduler 3 reads.

    APScheduler 3 counts 0 as Monday, so `0 9 * * 1` would run on Tuesdays.
    """
    return re.sub(r"\d+", lambda match: _WEEKDAYS[int(match.group()) % 7], field)


def misfire_grace_s(schedule: ScheduleSettings) -> int:
    """How late a run may still start: as configured, else about one interval."""
    if schedule.misfire_grace is not None:
        return max(1, int(schedule.misfire_grace))
    if schedule.every is not None:
        return max(1, int(schedule.every))

    return 60


class Daemon:
    """Runs each source on its schedule until SIGTERM or Ctrl-C."""

    def __init__(
        self,
        pipeline: Pipeline,
        sources: tuple[SourceSettings, ...],
        clock: Clock,
        *,
        locks: SourceLocks | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._clock = clock
        self.sources = sources
        self.locks = locks or NoLocks()
        self.metrics = metrics
        self.stopped = threading.Event()
        self.backoff = RunBackoff(clock)
        self._runs: set[threading.Event] = set()
        self._runs_lock = threading.Lock()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.scheduler.add_listener(self._on_busy, EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        """Add one job per source, the first due now, and start the scheduler."""
        for source in self.sources:
            self.scheduler.add_job(
                self._pull,
                build_trigger(source.schedule),
                args=[source.name],
                id=source.name,
                name=f"pull {source.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=misfire_grace_s(source.schedule),
                next_run_time=self._clock.now(),
            )
        # Said before starting: the first pulls begin at once, on other threads.
        log.info("daemon.started", sources=[source.name for source in self.sources])
        self.scheduler.start()

    def run_until_stopped(self) -> None:
        """Start, wait for a signal, then let the current page commit and stop."""
        self._install_signal_handlers()
        self.start()
        while not self.stopped.wait(timeout=1.0):
            pass
        self.shutdown()

    def is_alive(self) -> bool:
        """The scheduler runs and no stop was asked for."""
        return bool(self.scheduler.running) and not self.stopped.is_set()

    def shutdown(self) -> None:
        self._stop_all()
        self.scheduler.shutdown(wait=True)
        log.info("daemon.stopped")

    def _pull(self, source_name: str) -> None:
        if not self.backoff.allows(source_name):
            return
        # Held for the whole pull, so one replica pulls a source at a time and
        # no backfill window of it is written meanwhile.
        with self.locks.exclusive(source_name, wait=False) as held:
            if not held:
                log.info(
                    "run.skipped",
                    source=source_name,
                    reason="another replica or a backfill is writing this source",
                )
                return
            try:
                # Holding the lock, a run of this source still `running` lost
                # its process (a replica killed mid-run): close it now.
                abandon_runs(self.pipeline.store.engine, self._clock, source_name)
                result = self.pull_once(source_name)
            except JobError as exc:
                # The run could not even be recorded (the database is down):
                # say so plainly and let the next scheduled pull try again.
                log.error("run.not_recorded", source=source_name, error=exc.message)
                return
        self.backoff.record(
            source_name, None if result.succeeded else self._refusal(source_name)
        )

    def _refusal(self, source_name: str) -> PermanentAuthError | None:
        """The provider's permanent refusal that failed this source's run, if any."""
        settings = self.pipeline.settings
        provider = settings.provider_for(settings.source(source_name))

        return self.pipeline.tokens.for_provider(provider).permanent_failure

    def pull_once(self, source_name: str) -> RunResult:
        """One scheduled pull, stopped and marked failed past the source's timeout."""
        timeout_s = self.source(source_name).schedule.timeout
        stop = threading.Event()
        # Each run gets its own stop, so a timeout ends this run and no other.
        pipeline = copy.copy(self.pipeline)
        pipeline.stop = stop
        timer = threading.Timer(timeout_s, stop.set) if timeout_s else None
        started = self._clock.monotonic()
        with self._running(stop), _started(timer):
            result = pipeline.pull(source_name, "schedule")
        # Stopped, yet not by the daemon: the deadline passed.
        timed_out = stop.is_set() and not self.pipeline.stop.is_set()
        if timed_out and not result.succeeded:
            result = self._timed_out(result, timeout_s or 0)
        if self.metrics is not None:
            duration_s = self._clock.monotonic() - started
            self.metrics.observe(result, duration_s, self._clock.now().timestamp())

        return result

    def source(self, name: str) -> SourceSettings:
        return next(source for source in self.sources if source.name == name)

    def _timed_out(self, result: RunResult, timeout_s: float) -> RunResult:
        error = (
            f"timed out after {timeout_s:g} s (schedule.timeout); the pages stored "
            "before are kept and the next pull starts from there"
        )
        fail_run(self.pipeline.store.engine, result.run_id, error)
        log.error("run.timed_out", source=result.source, run_id=result.run_id)

        return replace(result, status="failed", error=error)

    @contextmanager
    def _running(self, stop: threading.Event) -> Iterator[None]:
        with self._runs_lock:
            self._runs.add(stop)
            if self.pipeline.stop.is_set():
                stop.set()
        try:
            yield
        finally:
            with self._runs_lock:
                self._runs.discard(stop)

    def _stop_all(self) -> None:
        with self._runs_lock:
            self.pipeline.stop.set()
            for stop in self._runs:
                stop.set()

    def _on_missed(self, event: JobEvent) -> None:
        log.warning(
            "run.missed",
            source=event.job_id,
            scheduled_for=str(getattr(event, "scheduled_run_time", "")),
        )

    def _on_busy(self, event: JobEvent) -> None:
        log.warning(
            "run.skipped",
            source=event.job_id,
            reason="the previous pull of this source is still running",
        )

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _: FrameType | None) -> None:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stopped.set()
            self._stop_all()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)


@contextmanager
def _started(timer: threading.Timer | None) -> Iterator[None]:
    if timer is None:
        yield
        return
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
