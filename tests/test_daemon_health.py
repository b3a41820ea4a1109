"""`job run --health-port`: liveness, readiness and metrics, scraped from a process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from job.health import HealthServer, Metrics, readiness
from job.pipeline import RunResult
from job.sandbox import SandboxServer
from job.stats import RunStats
from job.storage.engine import make_engine
from tests.processes import Job

JOB = [sys.executable, "-m", "job", "--log-format", "json"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def start_daemon(job: Job, port: int) -> subprocess.Popen[str]:
    """`job run --health-port PORT` in the background, its log on a pipe."""
    return subprocess.Popen(
        [*JOB, "run", "--health-port", str(port)],
        cwd=job.folder,
        env=job.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.ConnectionError:
            last = None
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout_s}s")


class TestHealthOfARealDaemon:
    def test_scraped_endpoints_report_the_daemon(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """healthz and readyz answer 200; metrics count runs, records and failures."""
        job.write_config(sandbox)
        job("db", "upgrade")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        sandbox.state.token_503_count = 4
        daemon = start_daemon(job, port)
        try:
            eventually(lambda: requests.get(f"{base}/healthz", timeout=2).ok, "healthz")
            ready = requests.get(f"{base}/readyz", timeout=2)

            def succeeded() -> str | None:
                text = requests.get(f"{base}/metrics", timeout=2).text
                key = ("job_runs_total", (("source", "items"), ("status", "succeeded")))
                return text if samples(text).get(key) else None

            text = eventually(succeeded, "a successful run in the metrics")
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        job.watch.output("daemon stderr", err)

        assert ready.status_code == 200
        assert ready.text == "ready\n"
        found = samples(text)
        items = (("source", "items"),)
        assert (
            found[("job_runs_total", (("source", "items"), ("status", "failed")))] >= 1
        )
        assert found[("job_records_stored_total", items)] == 250
        assert found[("job_token_requests_total", items)] >= 1
        assert found[("job_token_failures_total", (("provider", "sandbox"),))] >= 1
        assert found[("job_request_retries_total", items)] >= 1
        assert found[("job_last_success_timestamp_seconds", items)] > time.time() - 60
        assert found[("job_pull_duration_seconds_count", items)] >= 2
        assert daemon.returncode == 0

    def test_the_health_port_is_on_loopback_by_default(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """The daemon logs health.started on 127.0.0.1."""
        job.write_config(sandbox)
        job("db", "upgrade")
        port = free_port()
        daemon = start_daemon(job, port)
        try:
            eventually(
                lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok,
                "healthz",
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        job.watch.output("daemon stderr", err)

        events = [json.loads(line) for line in err.splitlines()]
        started = next(e for e in events if e["event"] == "health.started")
        assert (started["host"], started["port"]) == ("127.0.0.1", port)


class TestReadiness:
    def test_a_migrated_database_is_ready(self, engine: Engine) -> None:
        """At the head revision: no problem."""
        assert readiness(engine) is None

    def test_an_empty_database_is_not_ready(self, database_url: str) -> None:
        """No schema yet: the reason says to run job db upgrade."""
        empty = make_engine(database_url)

        problem = readiness(empty)

        assert problem is not None
        assert "job db upgrade" in problem

    def test_an_unreachable_database_is_not_ready(self) -> None:
        """Nothing listening on the port: not ready, and why."""
        nowhere = make_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")

        problem = readiness(nowhere)

        assert problem is not None
        assert "not" in problem


@pytest.fixture
def server() -> Any:
    state = {"alive": True, "ready": None}
    metrics = Metrics()
    running = HealthServer(
        "127.0.0.1",
        0,
        is_alive=lambda: state["alive"],
        is_ready=lambda: state["ready"],
        metrics=metrics,
    )
    running.start()
    yield running, state, metrics, f"http://127.0.0.1:{running.address[1]}"
    running.stop()


class TestHealthServer:
    def test_a_stopped_scheduler_is_not_healthy(self, server: Any) -> None:
        """healthz answers 503 once the daemon is stopping."""
        _, state, _, base = server
        state["alive"] = False

        assert requests.get(f"{base}/healthz", timeout=2).status_code == 503

    def test_not_ready_says_why(self, server: Any) -> None:
        """readyz: 503 and the reason in the body."""
        _, state, _, base = server
        state["ready"] = "schema is at 0001; run `job db upgrade`"

        response = requests.get(f"{base}/readyz", timeout=2)

        assert response.status_code == 503
        assert "job db upgrade" in response.text

    def test_a_run_is_counted(self, server: Any) -> None:
        """observe: runs, records, retries and the last success time."""
        _, _, metrics, base = server
        stats = RunStats(inserted=3, updated=2, retries=1, token_requests=1)

        metrics.observe(RunResult(1, "items", "succeeded", stats), 1.5, 1234.0)

        found = samples(requests.get(f"{base}/metrics", timeout=2).text)
        items = (("source", "items"),)
        assert found[("job_records_stored_total", items)] == 5
        assert found[("job_request_retries_total", items)] == 1
        assert found[("job_last_success_timestamp_seconds", items)] == 1234.0

    def test_an_unknown_path_is_404(self, server: Any) -> None:
        """Only the three endpoints exist."""
        _, _, _, base = server

        assert requests.get(f"{base}/", timeout=2).status_code == 404
