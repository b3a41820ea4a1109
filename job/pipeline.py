"""What one pull is: fetch page by page, store each page in one transaction.

The daemon, `job once` and the backfill all run pulls through `Pipeline.pull`.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import orjson
import requests
import structlog

from job.auth import TokenManagers
from job.clock import Clock
from job.config import Settings, SourceSettings
from job.errors import (
    JobError,
    PermanentFetchError,
    RunInterrupted,
    StorageError,
    TransientStorageError,
)
from job.http_client import HttpClient
from job.logs import redact_value
from job.retry import RetryPolicy
from job.source import (
    CursorValue,
    Page,
    SourceReader,
    content_hash,
    max_cursor,
    record_key,
)
from job.stats import RunStats, collecting, current_stats
from job.storage.store import Record, Store, Watermark

log = structlog.get_logger("job.pipeline")

T = TypeVar("T")
_END: Any = object()


@dataclass(frozen=True)
class RunResult:
    """How a pull ended."""

    run_id: int
    source: str
    status: str
    stats: RunStats
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class Pipeline:
    """Pulls sources into the store; shared by the daemon and the one-shot commands."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        session: requests.Session,
        clock: Clock,
        stop: threading.Event | None = None,
        read_ahead: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self._session = session
        self._clock = clock
        self.stop = stop or threading.Event()
        self.tokens = TokenManagers(session=session, clock=clock)
        self._storage_policy = RetryPolicy.from_settings(settings.database.retry)
        # Fetch the next page while this one is stored (see read_ahead), on
        # PostgreSQL only. A backfill turns it off: its windows already
        # overlap one another, and a second thread per window only added
        # hand-offs (about 10 % slower at --parallel 8).
        self._read_ahead = read_ahead and store.engine.dialect.name != "sqlite"

    def pull(
        self,
        source_name: str,
        trigger: str = "once",
        *,
        window: tuple[datetime, datetime] | None = None,
    ) -> RunResult:
        """Run one pull of `source_name` and record it.

        Every failure is caught and recorded in the run's row; only a database
        that stays unusable while the run is being started raises StorageError
        (there is no row to record it in).
        """
        source = self.settings.source(source_name)
        run_id = self._stored(
            "start_run",
            lambda: self.store.start_run(source.name, trigger, window=window),
        )
        stats = RunStats()
        started = self._clock.monotonic()
        with (
            structlog.contextvars.bound_contextvars(source=source.name, run_id=run_id),
            collecting(stats),
        ):
            log.info("run.started", trigger=trigger, window=_window_text(window))
            status, error = self._pull_pages(source, run_id, stats, window)
            status, error = self._finish(run_id, status, stats, error)
            summary = {"status": status, **stats.as_dict()}
            duration = round(self._clock.monotonic() - started, 3)
            if status == "failed":
                log.error("run.finished", duration_s=duration, error=error, **summary)
            else:
                log.info("run.finished", duration_s=duration, **summary)

        return RunResult(run_id, source.name, status, stats, error)

    def _finish(
        self, run_id: int, status: str, stats: RunStats, error: str | None
    ) -> tuple[str, str | None]:
        try:
            self._stored(
                "finish_run",
                lambda: self.store.finish_run(run_id, status, stats, error),
            )
        except StorageError as exc:
            # The row stays `running`; the daemon marks it abandoned at start.
            log.error("run.unrecorded", status=status, error=exc.message)
            return "failed", exc.message

        return status, error

    def _stored(self, operation: str, action: Callable[[], T]) -> T:
        """`action()`, retried with backoff while the database is locked or away.

        A failed attempt rolled its transaction back whole, so trying again
        neither loses nor doubles anything.
        """
        policy = self._storage_policy
        attempt = 0
        while True:
            attempt += 1
            try:
                return action()
            except TransientStorageError as exc:
                if not policy.has_attempts_left(attempt):
                    raise
                wait_s = policy.backoff_s(attempt)
                log.warning(
                    "storage.retry_scheduled",
                    operation=operation,
                    attempt=attempt,
                    reason=exc.message,
                    wait_s=round(wait_s, 3),
                )
                current_stats().retries += 1
                self._clock.sleep(wait_s)

    def _pull_pages(
        self,
        source: SourceSettings,
        run_id: int,
        stats: RunStats,
        window: tuple[datetime, datetime] | None,
    ) -> tuple[str, str | None]:
        try:
            self._fetch_and_store(source, run_id, stats, window)
        except RunInterrupted as exc:
            log.warning("run.interrupted", reason=exc.message)
            return "interrupted", exc.message
        except JobError as exc:
            return "failed", str(redact_value(exc.message))
        except Exception as exc:
            # A bug, not a user mistake: keep the traceback in the log, and the
            # run row says what broke.
            log.exception("run.crashed")
            return "failed", str(redact_value(f"{type(exc).__name__}: {exc}"))

        return "succeeded", None

    def _fetch_and_store(
        self,
        source: SourceSettings,
        run_id: int,
        stats: RunStats,
        window: tuple[datetime, datetime] | None,
    ) -> None:
        prepared = self._prepared_pages(source, window)
        # Overlap pays where the database works in a process of its own while
        # this one computes (PostgreSQL). SQLite writes in this process, under
        # the same GIL: a second thread there only adds hand-offs, and made
        # `job once` about 10 % slower.
        if self._read_ahead:
            prepared = read_ahead(prepared, self.stop)
        with closing(prepared) as pages:
            for page, batch, mark in pages:
                self._store_page(source, run_id, stats, page, batch, mark)
        # The read-ahead ends early once asked to stop; that is no success.
        self._check_stop()

    def _store_page(
        self,
        source: SourceSettings,
        run_id: int,
        stats: RunStats,
        page: Page,
        batch: list[Record],
        mark: Watermark | None,
    ) -> None:
        self._check_stop()
        counts = self._stored(
            "write_page",
            partial(self.store.write_page, run_id, source.name, batch, stats, mark),
        )
        log.debug(
            "page.stored",
            page=page.number,
            records=len(page.records),
            inserted=counts.inserted,
            updated=counts.updated,
            unchanged=counts.unchanged,
        )
        self._check_stop()

    def _prepared_pages(
        self, source: SourceSettings, window: tuple[datetime, datetime] | None
    ) -> Generator[tuple[Page, list[Record], Watermark | None], None, None]:
        """Every page fetched, its records keyed and hashed, and the watermark."""
        reader = self._reader(source)
        params, watermark = self._start_params(source, window)
        pulled_at = self._clock.now()
        for page in reader.pages(params):
            batch = self._records(source, page, pulled_at)
            if source.incremental is not None and window is None:
                watermark = _advance(watermark, page, source.incremental.cursor)
            mark = Watermark(watermark.text(), watermark.kind) if watermark else None
            yield page, batch, mark

    def _reader(self, source: SourceSettings) -> SourceReader:
        client = HttpClient(
            self._session,
            clock=self._clock,
            policy=RetryPolicy.from_settings(source.retry),
            connect_timeout_s=source.connect_timeout_s,
            read_timeout_s=source.read_timeout_s,
            allow_cross_origin=source.allow_cross_origin,
            ca_bundle=str(source.ca_bundle) if source.ca_bundle else None,
        )
        auth = self.tokens.for_provider(self.settings.provider_for(source))

        return SourceReader(source, client, auth)

    def _start_params(
        self, source: SourceSettings, window: tuple[datetime, datetime] | None
    ) -> tuple[dict[str, str], CursorValue | None]:
        if window is not None:
            return {
                source.backfill.start_param: _iso(window[0]),
                source.backfill.end_param: _iso(window[1]),
            }, None
        incremental = source.incremental
        if incremental is None:
            return {}, None
        stored = self._stored("watermark", lambda: self.store.watermark(source.name))
        if stored is None:
            initial = (
                {incremental.param: incremental.initial} if incremental.initial else {}
            )
            return initial, None
        watermark = CursorValue.restore(stored.value, stored.kind)
        since = watermark
        if watermark.kind == "datetime" and incremental.lookback:
            since = CursorValue(
                "datetime", watermark.value - timedelta(seconds=incremental.lookback)
            )
        log.info("run.incremental", since=since.text(), watermark=watermark.text())

        return {incremental.param: since.text()}, watermark

    def _records(
        self, source: SourceSettings, page: Page, pulled_at: datetime
    ) -> list[Record]:
        batch = []
        for index, item in enumerate(page.records):
            digest = _hashed(item, page, index)
            if source.primary_key:
                key = record_key(
                    item, source.primary_key, page=page.number, index=index
                )
            elif page.is_snapshot:
                # One object per pull: each pull keeps its own snapshot.
                key = _iso(pulled_at)
            else:
                key = digest
            batch.append(Record(key=key, payload=item, content_hash=digest))

        return batch

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise RunInterrupted("asked to stop; the pages stored so far are kept")


def read_ahead(
    items: Generator[T, None, None], stop: threading.Event
) -> Generator[T, None, None]:
    """`items`, the next one made on a worker thread while the caller uses this one.

    A pull alternates Python work (fetch, decode, key and hash a page) with
    waiting for the database to merge the previous page. Each page is made
    in a copy of the caller's context, so log fields and the run's counters
    carry over; pages still come in order, one at a time, and an error
    raised while making one comes out in its place. Once `stop` is set no
    further page is asked for, so a stop waits for one fetch at most; when
    the caller stops early, the page being made is finished and dropped.
    """
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, "read-ahead") as worker:
        try:
            upcoming = worker.submit(context.run, _step, items)
            while (item := upcoming.result()) is not _END:
                if stop.is_set():
                    # The caller sees the stop and ends the run at this item.
                    yield item
                    return
                upcoming = worker.submit(context.run, _step, items)
                yield item
        finally:
            # After the last page this is a no-op; after an early stop it lets
            # the generator's own cleanup run, on the thread that ran it.
            worker.submit(context.run, items.close)


def _step(items: Iterator[T]) -> T:
    return next(items, _END)


def _hashed(item: Any, page: Page, index: int) -> str:
    try:
        return content_hash(item)
    except orjson.JSONEncodeError as exc:
        # Decoding took it, but orjson writes at most 255 levels of nesting.
        raise PermanentFetchError(
            f"record {index} on page {page.number} cannot be stored ({exc}: it "
            "is nested deeper than 255 levels); fix the data at the source"
        ) from None


def _advance(
    watermark: CursorValue | None, page: Page, cursor: str
) -> CursorValue | None:
    largest = max_cursor(page.records, cursor, page=page.number)
    if largest is None:
        return watermark
    if watermark is None or (
        largest.kind == watermark.kind and largest.value > watermark.value
    ):
        return largest

    return watermark


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _window_text(window: tuple[datetime, datetime] | None) -> Any:
    return [_iso(window[0]), _iso(window[1])] if window else None
