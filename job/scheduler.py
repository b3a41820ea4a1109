"""When pulls happen: the daemon, the only module that imports APScheduler."""

from __future__ import annotations

import signal
import threading
from datetime import UTC
from types import FrameType

import structlog
from apscheduler.events import EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from job.backoff import RunBackoff
from job.clock import Clock
from job.config import ScheduleSettings, SourceSettings
from job.errors import ConfigError, PermanentAuthError
from job.pipeline import Pipeline

log = structlog.get_logger("job.scheduler")


def build_trigger(schedule: ScheduleSettings) -> BaseTrigger:
    """An APScheduler trigger for `every:` or `cron:`, in the schedule's timezone."""
    try:
        if schedule.every is not None:
            return IntervalTrigger(
                seconds=schedule.every,
                timezone=schedule.timezone,
                jitter=schedule.jitter or None,
            )
        return CronTrigger.from_crontab(str(schedule.cron), timezone=schedule.timezone)
    except (ValueError, LookupError) as exc:
        raise ConfigError(
            f"schedule {schedule.cron or schedule.every!r} with timezone "
            f"{schedule.timezone!r} is not valid: {exc}"
        ) from None


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
        self, pipeline: Pipeline, sources: tuple[SourceSettings, ...], clock: Clock
    ) -> None:
        self.pipeline = pipeline
        self._clock = clock
        self.sources = sources
        self.stopped = threading.Event()
        self.backoff = RunBackoff(clock)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)

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
        self.scheduler.start()
        log.info("daemon.started", sources=[source.name for source in self.sources])

    def run_until_stopped(self) -> None:
        """Start, wait for a signal, then let the current page commit and stop."""
        self._install_signal_handlers()
        self.start()
        while not self.stopped.wait(timeout=1.0):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        self.pipeline.stop.set()
        self.scheduler.shutdown(wait=True)
        log.info("daemon.stopped")

    def _pull(self, source_name: str) -> None:
        if not self.backoff.allows(source_name):
            return
        result = self.pipeline.pull(source_name, "schedule")
        self.backoff.record(
            source_name, None if result.succeeded else self._refusal(source_name)
        )

    def _refusal(self, source_name: str) -> PermanentAuthError | None:
        """The provider's permanent refusal that failed this source's run, if any."""
        settings = self.pipeline.settings
        provider = settings.provider_for(settings.source(source_name))

        return self.pipeline.tokens.for_provider(provider).permanent_failure

    def _on_missed(self, event: JobEvent) -> None:
        log.warning(
            "run.missed",
            source=event.job_id,
            scheduled_for=str(getattr(event, "scheduled_run_time", "")),
        )

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _: FrameType | None) -> None:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.pipeline.stop.set()
            self.stopped.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
