"""Backing off, between scheduled runs, from a provider that refused us for good.

A permanent token error (invalid_client, invalid_scope, ...) fails the run at
once, and every following run would fail the same way until someone fixes the
configuration. The daemon keeps its schedule, but after the k-th such failure
in a row it skips the next 2**(k-1) runs of that source (1, 2, 4, ...), and
never skips for longer than `cap_s` after the failure, so a fixed credential
is picked up within that time. One run that obtains a token resets it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from job.clock import Clock
from job.errors import PermanentAuthError

log = structlog.get_logger("job.backoff")

DEFAULT_CAP_S = 3600.0


@dataclass
class _Refusals:
    """Consecutive permanent failures of one source and the runs left to skip."""

    failures: int
    skip_left: int
    resume_by: datetime


class RunBackoff:
    """Which scheduled runs to skip after permanent auth failures, per source."""

    def __init__(self, clock: Clock, *, cap_s: float = DEFAULT_CAP_S) -> None:
        self._clock = clock
        self._cap = timedelta(seconds=cap_s)
        self._sources: dict[str, _Refusals] = {}
        self._lock = threading.Lock()

    def allows(self, source: str) -> bool:
        """Whether this scheduled run of `source` may go ahead; says so if not."""
        with self._lock:
            refusals = self._sources.get(source)
            if refusals is None or refusals.skip_left <= 0:
                return True
            if self._clock.now() >= refusals.resume_by:
                return True
            refusals.skip_left -= 1
            skipped = refusals.skip_left
        log.warning(
            "run.skipped",
            source=source,
            reason="backing_off",
            failures=refusals.failures,
            runs_left_to_skip=skipped,
            resume_by=refusals.resume_by.isoformat(),
        )

        return False

    def record(self, source: str, refusal: PermanentAuthError | None) -> None:
        """After a run: back off further on a permanent refusal, else reset."""
        with self._lock:
            previous = self._sources.pop(source, None)
            if refusal is None:
                if previous is not None:
                    log.info("source.backoff_reset", source=source)
                return
            failures = (previous.failures if previous else 0) + 1
            refusals = _Refusals(
                failures, 2 ** min(failures - 1, 16), self._clock.now() + self._cap
            )
            self._sources[source] = refusals
        log.warning(
            "source.backing_off",
            source=source,
            failures=failures,
            skip_runs=refusals.skip_left,
            resume_by=refusals.resume_by.isoformat(),
            error=refusal.error,
            hint="fix the provider settings; the next allowed run will try again",
        )
