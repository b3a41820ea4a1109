"""Several `job run` processes on one database: PostgreSQL shares, SQLite refuses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from job.clock import SystemClock
from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from job.storage.store import Store
from tests.processes import Job

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


class Replica:
    """One `job run` process, its log kept in a file."""

    def __init__(self, job: Job, name: str) -> None:
        self.job = job
        self.log_path = job.folder / f"{name}.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "job", "--log-format", "json", "run"],
                cwd=job.folder,
                env=job.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def has_logged(self, name: str) -> bool:
        return any(event["event"] == name for event in self.events())

    def events(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text()
        self.job.watch.output(f"replica {self.log_path.name}", text)
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def replicas(job: Job) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(name: str) -> Replica:
        replica = Replica(job, name)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if replica.process.poll() is None:
            replica.kill()


@pytest.fixture
def shared_store(job: Job, sandbox: SandboxServer, database_url: str) -> Store:
    """The replicas' database, configured and migrated, read from the test."""
    job.write_config(sandbox, database_url=database_url)
    assert job("db", "upgrade").returncode == 0

    return Store(make_engine(database_url), SystemClock())


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen in {timeout_s}s")


def runs_of(store: Store) -> list[dict[str, Any]]:
    return sorted(store.recent_runs(limit=1000), key=lambda run: run["id"])


class TestPostgresReplicas:
    @on_postgres
    def test_three_replicas_never_pull_a_source_at_once(
        self,
        sandbox: SandboxServer,
        shared_store: Store,
        replicas: Callable[[str], Replica],
    ) -> None:
        """Each tick one replica pulls; the others log run.skipped; no overlap."""
        store = shared_store
        sandbox.state.latency_s = 0.1
        started = [replicas(f"r{n}") for n in range(3)]

        wait_until(lambda: len(finished(store)) >= 6, "six pulls")
        codes = [replica.stop() for replica in started]

        assert codes == [0, 0, 0]
        runs = runs_of(store)
        spans = sorted((run["started_at"], run["finished_at"]) for run in runs)
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, "two pulls of one source overlapped"
        skipped = [
            event
            for replica in started
            for event in replica.events()
            if event["event"] == "run.skipped"
        ]
        assert skipped, "no replica logged a skipped pull"
        assert store.count_records("items") == 250

    @on_postgres
    def test_a_killed_replica_frees_the_source_for_another(
        self,
        sandbox: SandboxServer,
        shared_store: Store,
        replicas: Callable[[str], Replica],
    ) -> None:
        """kill -9 mid-run: the next replica marks it abandoned and pulls."""
        store = shared_store
        sandbox.state.latency_s = 1.0
        first = replicas("first")
        crashed = wait_until(lambda: running(store), "a running pull")
        first.kill()
        sandbox.state.latency_s = 0.0

        second = replicas("second")
        wait_until(lambda: succeeded_by(store, second), "a pull by the second")
        assert second.stop() == 0

        status = {run["id"]: run["status"] for run in runs_of(store)}
        assert status[crashed["id"]] == "abandoned"
        assert second.has_logged("runs.abandoned")

    @on_postgres
    def test_a_surviving_replica_closes_the_dead_run_without_a_restart(
        self,
        sandbox: SandboxServer,
        shared_store: Store,
        replicas: Callable[[str], Replica],
    ) -> None:
        """Two replicas up; the one pulling is killed; the other marks it abandoned."""
        store = shared_store
        sandbox.state.latency_s = 1.0
        pair = [replicas("one"), replicas("two")]
        crashed = wait_until(lambda: running(store), "a running pull")
        owner = next(r for r in pair if r.process.pid == crashed["pid"])
        survivor = next(r for r in pair if r is not owner)
        owner.kill()
        sandbox.state.latency_s = 0.0

        wait_until(lambda: succeeded_by(store, survivor), "a pull by the survivor")
        assert survivor.stop() == 0

        assert status_of(store, crashed["id"]) == "abandoned"
        assert survivor.has_logged("runs.abandoned")

    @on_postgres
    def test_a_starting_replica_leaves_a_live_run_alone(
        self,
        sandbox: SandboxServer,
        shared_store: Store,
        replicas: Callable[[str], Replica],
    ) -> None:
        """A run another live replica holds is not marked abandoned."""
        store = shared_store
        sandbox.state.latency_s = 0.5
        first = replicas("first")
        live = wait_until(lambda: running(store), "a running pull")

        second = replicas("second")
        wait_until(
            lambda: second.has_logged("daemon.started"), "the second replica's start"
        )
        status_while_live = status_of(store, live["id"])
        sandbox.state.latency_s = 0.0
        codes = [first.stop(), second.stop()]

        assert status_while_live == "running"
        assert status_of(store, live["id"]) in ("succeeded", "interrupted")
        assert codes == [0, 0]


class TestSqliteSingleDaemon:
    def test_a_second_daemon_on_the_same_file_refuses_to_start(
        self, job: Job, sandbox: SandboxServer, replicas: Callable[[str], Replica]
    ) -> None:
        """The second `job run` exits 1 and says another daemon holds the file."""
        first = start_on_sqlite(job, sandbox, replicas)

        second = job("run")

        assert second.returncode == 1
        assert "another `job run` already uses the SQLite database" in second.stderr
        assert "use PostgreSQL" in second.stderr
        assert first.process.poll() is None
        assert first.stop() == 0

    def test_after_the_first_stops_a_daemon_starts(
        self, job: Job, sandbox: SandboxServer, replicas: Callable[[str], Replica]
    ) -> None:
        """The lock dies with its process: kill -9, and a new daemon starts."""
        first = start_on_sqlite(job, sandbox, replicas)
        first.kill()

        second = replicas("second")
        wait_until(
            lambda: second.has_logged("run.finished"), "a pull by the second daemon"
        )

        assert second.stop() == 0


def start_on_sqlite(
    job: Job, sandbox: SandboxServer, replicas: Callable[[str], Replica]
) -> Replica:
    """A daemon on a fresh SQLite file, once it has started."""
    job.write_config(sandbox)
    job("db", "upgrade")
    first = replicas("first")
    wait_until(lambda: first.has_logged("daemon.started"), "the first daemon's start")

    return first


def finished(store: Store) -> list[dict[str, Any]]:
    return [run for run in runs_of(store) if run["status"] != "running"]


def running(store: Store) -> dict[str, Any] | None:
    return next((run for run in runs_of(store) if run["status"] == "running"), None)


def succeeded_by(store: Store, replica: Replica) -> bool:
    return any(
        run["status"] == "succeeded" and run["pid"] == replica.process.pid
        for run in runs_of(store)
    )


def status_of(store: Store, run_id: int) -> str:
    return next(run["status"] for run in runs_of(store) if run["id"] == run_id)
