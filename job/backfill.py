"""A past range pulled window by window, each window its own resumable run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from threading import Lock

import requests
import structlog
from requests.adapters import HTTPAdapter
from rich.console import Console

from job.clock import Clock
from job.errors import ConfigError
from job.locks import SourceLocks
from job.pipeline import Pipeline, RunResult
from job.storage.history import Window, succeeded_windows

log = structlog.get_logger("job.backfill")

# Between two `backfill.progress` events when no terminal shows a bar.
PROGRESS_EVERY_S = 10.0
# Windows under way beyond --parallel, at most (see windows_under_way).
MAX_SPARE_WINDOWS = 8


def split_windows(since: datetime, until: datetime, step: timedelta) -> list[Window]:
    """Half-open windows `[start, end)` from `since` to `until`, the last cut short."""
    if until <= since:
        raise ConfigError(
            f"--until {until.isoformat()} must be after --since {since.isoformat()}"
        )
    if step <= timedelta(0):
        raise ConfigError("--window must be longer than 0, such as 1h or 1d")
    windows = []
    start = since
    while start < until:
        end = min(start + step, until)
        windows.append((start, end))
        start = end

    return windows


def windows_under_way(parallel: int) -> int:
    """How many windows to pull at once when `parallel` requests may be in flight.

    Between its requests a window starts its run, stores its last page and
    records how it ended; spare windows use those moments to send their own
    requests, so the connections are not left idle. At --parallel 8 on this
    project's benchmark machine, 2 spare windows gained nothing, 4 took the
    backfill from about 1.35 to 1.15-1.45 times the ideal time and 8 to
    1.1-1.4 (the machine is noisy). Capped, as each window under way on
    PostgreSQL holds a connection for its lock.
    """
    return parallel + min(MAX_SPARE_WINDOWS, parallel)


def bounded_session(session: requests.Session, connections: int) -> requests.Session:
    """Let `connections` threads share the session, and never open more than that."""
    adapter = HTTPAdapter(
        pool_connections=connections, pool_maxsize=connections, pool_block=True
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    return session


@dataclass
class Progress:
    """What the backfill has done so far; `report` is told after each window."""

    total: int
    clock: Clock
    report: Callable[[Progress], None] = lambda _: None
    done: int = 0
    failed: int = 0
    records: int = 0
    started: float = field(init=False)
    _lock: Lock = field(default_factory=Lock, init=False)

    def __post_init__(self) -> None:
        self.started = self.clock.monotonic()

    def window_finished(self, result: RunResult) -> None:
        with self._lock:
            self.done += 1
            self.failed += 0 if result.succeeded else 1
            self.records += result.stats.records_seen
        self.report(self)

    @property
    def rate(self) -> float:
        """Records per second since the start."""
        elapsed = self.clock.monotonic() - self.started
        return self.records / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far, once a window has finished."""
        if not self.done:
            return None
        elapsed = self.clock.monotonic() - self.started

        return elapsed / self.done * (self.total - self.done)


class LogReporter:
    """Plain `backfill.progress` events, at most one per interval, and the last."""

    def __init__(self, clock: Clock, every_s: float = PROGRESS_EVERY_S) -> None:
        self._clock = clock
        self._every_s = every_s
        self._last: float | None = None

    def __call__(self, progress: Progress) -> None:
        now = self._clock.monotonic()
        final = progress.done == progress.total
        if not final and self._last is not None and now - self._last < self._every_s:
            return
        self._last = now
        eta = progress.eta_s
        log.info(
            "backfill.progress",
            windows_done=progress.done,
            windows_total=progress.total,
            windows_failed=progress.failed,
            records=progress.records,
            records_per_s=round(progress.rate, 1),
            eta_s=None if eta is None else round(eta, 1),
        )


@dataclass(frozen=True)
class Backfill:
    """Pull the windows of one source that have not succeeded yet."""

    pipeline: Pipeline
    locks: SourceLocks
    source: str
    parallel: int = 1

    def pending(self, windows: list[Window], *, redo: bool) -> list[Window]:
        """The windows still to pull: all with `redo`, else those not yet done."""
        if redo:
            return list(windows)
        done = succeeded_windows(self.pipeline.store.engine, self.source)

        return [window for window in windows if window not in done]

    def run(self, windows: list[Window], progress: Progress) -> list[RunResult]:
        """Pull each window as its own run, in order, `parallel` requests at a time.

        The pipeline's session must hold at most `parallel` connections and
        make further requests wait (`bounded_session`): that is what bounds
        the requests; a few more windows than that are kept under way.
        """
        log.info(
            "backfill.started",
            source=self.source,
            windows=len(windows),
            parallel=self.parallel,
        )
        with ThreadPoolExecutor(windows_under_way(self.parallel), "backfill") as pool:
            results = [
                result
                for result in pool.map(lambda w: self._pull(w, progress), windows)
                if result is not None
            ]
        failed = sum(1 for result in results if not result.succeeded)
        log.info(
            "backfill.finished",
            source=self.source,
            windows=len(results),
            failed=failed,
            skipped=len(windows) - len(results),
        )

        return results

    def _pull(self, window: Window, progress: Progress) -> RunResult | None:
        # Once asked to stop, windows not started yet stay for the next run.
        if self.pipeline.stop.is_set():
            return None
        with self.locks.shared(self.source):
            result = self.pipeline.pull(self.source, "backfill", window=window)
        progress.window_finished(result)

        return result


@contextmanager
def rich_reporter(
    total: int, console: Console | None = None
) -> Iterator[Callable[[Progress], None]]:
    """A progress bar on the terminal: windows done, records, rate and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("backfill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[records]} records, {task.fields[rate]}/s"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("windows", total=total, records=0, rate="0")

        def report(progress: Progress) -> None:
            bar.update(
                task,
                completed=progress.done,
                records=progress.records,
                rate=f"{progress.rate:.0f}",
            )

        yield report
