"""Faults on the way from the API to the database, each injected for real.

The sandbox's knobs break the API; another connection locks SQLite or kills
PostgreSQL's backend; `python -m job` is killed with SIGKILL; a listener
that never answers stalls the token request. After each: exact records,
and a run row that says what happened.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from job.clock import FakeClock, SystemClock
from job.config import DatabaseSettings
from job.pipeline import Pipeline
from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from job.storage.store import Store
from tests.factories import make_pipeline, make_settings
from tests.listeners import stalled, unreachable
from tests.processes import Job


def stored(pipeline: Pipeline) -> dict[str, Any]:
    return {r["record_key"]: r["payload"] for r in pipeline.store.iter_records("items")}


def truth(sandbox: SandboxServer) -> dict[str, Any]:
    return {str(record["id"]): record for record in sandbox.state.all_records()}


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


class HookedClock(FakeClock):
    """A fake clock that calls `on_sleep(n)` at its n-th sleep (from 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_sleep: Callable[[int], None] = lambda n: None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.on_sleep(len(self.sleeps))


class Saboteur:
    """Breaks the pipeline's database while it stores a page, for real.

    SQLite: another connection takes the write lock (BEGIN IMMEDIATE).
    PostgreSQL: another connection terminates the pipeline's backend.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._locker: sqlite3.Connection | None = None
        self._admin = None if self.sqlite else make_engine(url_of(engine))

    def strike(self, dbapi_connection: Any) -> None:
        if self.sqlite:
            if self._locker is None:
                path = self.engine.url.database
                self._locker = sqlite3.connect(str(path), isolation_level=None)
            if not self._locker.in_transaction:
                self._locker.execute("BEGIN IMMEDIATE")
            return
        assert self._admin is not None
        pid = dbapi_connection.info.backend_pid
        with self._admin.connect() as admin:
            # The timeout makes it wait until the backend is really gone.
            admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})

    def release(self) -> None:
        if self._locker is not None and self._locker.in_transaction:
            self._locker.execute("ROLLBACK")

    def close(self) -> None:
        self.release()
        if self._locker is not None:
            self._locker.close()
        if self._admin is not None:
            self._admin.dispose()


@pytest.fixture
def hooked_clock() -> HookedClock:
    return HookedClock()


@pytest.fixture
def saboteur(engine: Engine) -> Iterator[Saboteur]:
    broken = Saboteur(engine)
    yield broken
    broken.close()


def faulty_pipeline(
    sandbox: SandboxServer,
    engine: Engine,
    clock: FakeClock,
    saboteur: Saboteur,
    pages: set[int],
) -> Pipeline:
    """A pipeline whose database breaks as it stores each page in `pages`."""
    settings = make_settings(sandbox, url_of(engine))
    database = DatabaseSettings(
        url=url_of(engine),
        busy_timeout_s=0.05,
        retry={"max_attempts": 3, "backoff_base_s": 0.5, "backoff_cap_s": 2},
    )
    settings = settings.model_copy(update={"database": database})
    pipeline = Pipeline(
        settings,
        store=Store(make_engine(url_of(engine), busy_timeout_s=0.05), clock),
        session=requests.Session(),
        clock=clock,
    )
    seen = {"pages": 0}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Once per page: looking up the stored hashes (SQLite, the first
        # statement of the page's transaction), or the page's one statement
        # (PostgreSQL: records, run counters and watermark together).
        if statement.startswith(_ONCE_A_PAGE[engine.dialect.name]):
            seen["pages"] += 1
            if seen["pages"] in pages:
                saboteur.strike(conn.connection.dbapi_connection)

    event.listen(pipeline.store.engine, "before_cursor_execute", before)

    return pipeline


_ONCE_A_PAGE = {
    "sqlite": "SELECT record_key, content_hash FROM records",
    "postgresql": "WITH merged AS (INSERT INTO records",
}


class TestDatabaseFaults:
    def test_a_page_that_meets_a_lock_or_a_dropped_connection_is_retried(
        self,
        sandbox: SandboxServer,
        engine: Engine,
        hooked_clock: HookedClock,
        saboteur: Saboteur,
    ) -> None:
        """Page 2 fails once, is stored again after a backoff; nothing doubles."""
        pipeline = faulty_pipeline(sandbox, engine, hooked_clock, saboteur, {2})
        hooked_clock.on_sleep = lambda n: saboteur.release()

        with structlog.testing.capture_logs() as events:
            result = pipeline.pull("items")

        retried = [e for e in events if e["event"] == "storage.retry_scheduled"]
        assert result.succeeded, result.error
        assert stored(pipeline) == truth(sandbox)
        assert [e["operation"] for e in retried] == ["write_page"]
        assert hooked_clock.sleeps == [pytest.approx(retried[0]["wait_s"], abs=1e-3)]
        row = pipeline.store.recent_runs()[0]
        assert (row["pages"], row["records_seen"], row["inserted"]) == (5, 250, 250)
        assert row["retries"] == 1

    def test_a_fault_that_outlasts_the_retries_fails_the_run_cleanly(
        self,
        sandbox: SandboxServer,
        engine: Engine,
        hooked_clock: HookedClock,
        saboteur: Saboteur,
    ) -> None:
        """Page 2 never stores: the run fails, page 1 stays, no part of page 2."""
        pipeline = faulty_pipeline(
            sandbox, engine, hooked_clock, saboteur, {2, 3, 4, 5}
        )
        # Free SQLite only once page 2 gave up, so that the run can be closed.
        hooked_clock.on_sleep = lambda n: saboteur.release() if n >= 3 else None

        result = pipeline.pull("items")

        row = pipeline.store.recent_runs()[0]
        assert result.status == "failed"
        assert row["status"] == "failed"
        assert ("locked" if saboteur.sqlite else "dropped the connection") in str(
            row["error"]
        )
        assert (row["pages"], row["inserted"]) == (1, 50)
        assert stored(pipeline) == {
            k: v for k, v in truth(sandbox).items() if int(k) <= 50
        }


class TestBodyFaults:
    @pytest.mark.parametrize(
        ("knob", "said"),
        [
            ("truncated_body_count", "not valid JSON (application/json"),
            ("html_200_count", "not valid JSON (text/html"),
        ],
    )
    def test_a_bad_body_fails_the_run_and_touches_nothing(
        self,
        sandbox: SandboxServer,
        engine: Engine,
        clock: FakeClock,
        knob: str,
        said: str,
    ) -> None:
        """Malformed JSON, or an HTML page with 200: a clear error, data as it was."""
        pipeline = make_pipeline(make_settings(sandbox, url_of(engine)), clock)
        pipeline.pull("items")
        before = stored(pipeline)
        sandbox.state.epoch = 1
        setattr(sandbox.state, knob, 1)

        result = pipeline.pull("items")

        assert result.status == "failed"
        assert said in str(result.error)
        assert "answered 200" in str(result.error)
        assert stored(pipeline) == before
        assert pipeline.store.recent_runs()[0]["pages"] == 0


class TestHttpFaults:
    def test_retries_and_rate_limit_waits_are_in_the_run_row(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """Two 503s, two 429s and a dropped connection: retried, counted, exact."""
        sandbox.state.fail_503_count = 2
        sandbox.state.fail_429_count = 2
        sandbox.state.drop_connection_count = 1
        sandbox.state.retry_after_s = 3
        settings = make_settings(
            sandbox, url_of(engine), source={"retry": {"max_attempts": 6}}
        )
        pipeline = make_pipeline(settings, clock)

        with structlog.testing.capture_logs() as events:
            result = pipeline.pull("items")

        retried = [e for e in events if e["event"] == "request.retry_scheduled"]
        row = pipeline.store.recent_runs()[0]
        assert result.succeeded, result.error
        assert stored(pipeline) == truth(sandbox)
        assert (row["retries"], row["rate_limit_waits"]) == (5, 2)
        assert [e["status"] for e in retried] == [None, 503, 503, 429, 429]
        assert [e["wait_s"] for e in retried if e["status"] == 429] == [3.0, 3.0]
        assert row["token_requests"] == 1

    def test_a_revoked_token_is_renewed_once(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """The 401 after revocation costs one token request; the run succeeds."""
        pipeline = make_pipeline(make_settings(sandbox, url_of(engine)), clock)
        pipeline.pull("items")
        sandbox.state.revoke_all_tokens()

        result = pipeline.pull("items")

        assert result.succeeded, result.error
        assert pipeline.store.recent_runs()[0]["token_requests"] == 1

    def test_a_stalled_api_trips_the_read_timeout(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """A request that is never answered fails by its read timeout."""
        sandbox.state.stall_count = 1
        settings = make_settings(
            sandbox,
            url_of(engine),
            source={"read_timeout_s": 0.3, "retry": {"max_attempts": 1}},
        )

        result = make_pipeline(settings, clock).pull("items")

        assert result.status == "failed"
        assert "timed out (ReadTimeout)" in str(result.error)

    def test_a_stalled_token_endpoint_trips_the_read_timeout(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """The token request has its own timeouts: a silent provider fails the run."""
        with stalled() as silent:
            provider = {
                "token_url": silent + "/oauth/token",
                "read_timeout_s": 0.3,
                "retry": {"max_attempts": 2, "backoff_base_s": 0.01},
            }
            settings = make_settings(sandbox, url_of(engine), provider=provider)
            result = make_pipeline(settings, clock).pull("items")

        row = make_pipeline(settings, clock).store.recent_runs()[0]
        assert result.status == "failed"
        assert "no answer within the timeout (ReadTimeout)" in str(row["error"])
        assert (row["token_requests"], row["retries"]) == (2, 1)

    def test_token_and_resource_requests_have_a_connect_timeout(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock
    ) -> None:
        """A host that never completes the handshake fails by connect_timeout_s."""
        with unreachable() as silent:
            provider = {
                "token_url": silent + "/oauth/token",
                "connect_timeout_s": 0.3,
                "retry": {"max_attempts": 1},
            }
            token_side = make_settings(sandbox, url_of(engine), provider=provider)
            source = {"url": silent + "/data", "connect_timeout_s": 0.3}
            source["retry"] = {"max_attempts": 1}
            resource_side = make_settings(sandbox, url_of(engine), source=source)
            token_result = make_pipeline(token_side, clock).pull("items")
            resource_result = make_pipeline(resource_side, clock).pull("items")

        assert "(ConnectTimeout)" in str(token_result.error)
        assert "timed out (ConnectTimeout)" in str(resource_result.error)


CONFIG = """\
providers:
  sandbox:
    token_url: {token_url}
    client_id: job-demo
    client_secret: ${{OAUTH_CLIENT_SECRET}}
sources:
  - name: items
    provider: sandbox
    url: {resource_url}
    params: {{page_size: "10"}}
    primary_key: id
    pagination: {{next: next}}
    schedule: {{every: 1s}}
    read_timeout_s: 1
    retry: {{max_attempts: 1}}
"""


def configure(job: Job, sandbox: SandboxServer, database_url: str) -> None:
    config = CONFIG.format(
        token_url=sandbox.token_url, resource_url=sandbox.resource_url
    )
    (job.folder / "config.yaml").write_text(config)
    job.env["JOB_DATABASE_URL"] = database_url


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


def start(job: Job, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "job", "--log-format", "json", *args],
        cwd=job.folder,
        env=job.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class TestProcessFaults:
    def test_sigkill_mid_pull_then_a_rerun_leaves_exactly_the_providers_records(
        self, job: Job, sandbox: SandboxServer, engine: Engine
    ) -> None:
        """Killed after a few pages, pulled again: each record once, latest content."""
        configure(job, sandbox, url_of(engine))
        store = Store(engine, SystemClock())
        sandbox.state.latency_s = 0.1
        killed = start(job, "once")
        try:
            wait_until(
                lambda: any(r["pages"] >= 4 for r in store.recent_runs()),
                timeout_s=30,
                what="four pages stored",
            )
            killed.send_signal(signal.SIGKILL)
            out, err = killed.communicate(timeout=10)
        finally:
            if killed.poll() is None:
                killed.kill()
        job.watch.output("killed stdout", out)
        job.watch.output("killed stderr", err)
        partial = store.count_records("items")
        sandbox.state.latency_s = 0
        sandbox.state.epoch = 1

        again = job("once")

        rows = {r["record_key"]: r["payload"] for r in store.iter_records("items")}
        assert killed.returncode == -signal.SIGKILL
        assert 40 <= partial < 250
        assert again.returncode == 0, again.stderr
        assert rows == truth(sandbox)
        assert store.count_records("items") == 250
        statuses = [r["status"] for r in store.recent_runs()]
        # The rerun, holding the source's lock, closed the killed run.
        assert statuses == ["succeeded", "abandoned"]

    def test_a_stalled_api_does_not_wedge_the_daemon(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """The stalled run times out and fails; the next scheduled run succeeds."""
        url = f"sqlite:///{tmp_path / 'job.db'}"
        configure(job, sandbox, url)
        assert job("db", "upgrade").returncode == 0
        store = Store(make_engine(url), SystemClock())
        sandbox.state.stall_count = 1
        daemon = start(job, "run")
        try:
            wait_until(
                lambda: any(r["status"] == "succeeded" for r in store.recent_runs()),
                timeout_s=30,
                what="a successful run after the stall",
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            out, err = daemon.communicate(timeout=20)
        job.watch.output("daemon stdout", out)
        job.watch.output("daemon stderr", err)

        runs = list(reversed(store.recent_runs()))
        assert daemon.returncode == 0, err
        assert runs[0]["status"] == "failed"
        assert "timed out (ReadTimeout)" in runs[0]["error"]
        assert any(run["status"] == "succeeded" for run in runs[1:])
        assert store.count_records("items") == 250
