"""Fixtures shared by the suite: databases built by migrations, the sandbox, logs."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.sandbox import SandboxServer, SandboxSettings
from job.storage import engine as db
from job.storage.scratch import postgres_problem, scratch_schema
from tests.factories import SANDBOX_SECRET
from tests.leaks import LeakWatch
from tests.processes import Job

POSTGRES_URL = os.environ.get(
    "JOB_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test"
)
# .ci/run sets JOB_REQUIRE_POSTGRES=1: there, a missing server fails the suite.
REQUIRE_POSTGRES = os.environ.get("JOB_REQUIRE_POSTGRES") == "1"


@functools.cache
def _postgres_problem() -> str | None:
    return postgres_problem(POSTGRES_URL)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on SQLite and on PostgreSQL (its own schema each time)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'job.db'}"
        return
    problem = _postgres_problem()
    if problem and REQUIRE_POSTGRES:
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)
    with scratch_schema(POSTGRES_URL, "t") as (_, url):
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database at the head revision, built by running the migrations."""
    built = db.make_engine(database_url)
    db.upgrade(built)
    yield built
    built.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(leak_watch: LeakWatch) -> Iterator[SandboxServer]:
    """The real sandbox provider on a free loopback port."""
    settings = SandboxSettings(
        port=0, client_secret=SANDBOX_SECRET, records=250, default_page_size=50
    )
    with SandboxServer(settings) as server:
        leak_watch.watch_tokens(server.state)
        yield server


@pytest.fixture
def captured() -> Iterator[list[structlog.typing.EventDict]]:
    """Every structlog event emitted during the test."""
    with structlog.testing.capture_logs() as events:
        yield events


@pytest.fixture(autouse=True)
def leak_watch(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[LeakWatch]:
    """After every test: no watched secret or token in anything it printed or logged."""
    watch = LeakWatch()
    watch.secret(SANDBOX_SECRET, "job-demo")
    yield watch
    out, err = capfd.readouterr()
    watch.output("stdout", out)
    watch.output("stderr", err)
    # caplog.text and caplog.records hold the current phase only (teardown
    # by now); read the setup and call phases too, where the test ran.
    for when in ("setup", "call", "teardown"):
        for record in caplog.get_records(when):
            watch.output(f"a log record ({when})", str(record.msg))
            watch.output(f"a log record's arguments ({when})", repr(record.args))
    leaks = watch.leaks()
    assert not leaks, "; ".join(sorted(set(leaks)))
    # Show what was captured, as pytest would have, now that it is checked.
    sys.stdout.write(out)
    sys.stderr.write(err)


@pytest.fixture
def job(tmp_path: Path, leak_watch: LeakWatch) -> Iterator[Job]:
    """`python -m job` in a temporary folder, its output leak-checked."""
    yield Job(tmp_path, leak_watch)
