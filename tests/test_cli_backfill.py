"""`job backfill` and `job records` as real processes."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time

from job.clock import SystemClock
from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from job.storage.store import Store
from tests.processes import Job

RANGE = ["--since", "2024-01-01T00:00:00", "--until", "2024-01-01T00:04:00"]

JOB = [sys.executable, "-m", "job", "--log-format", "json"]


def ready(job: Job, sandbox: SandboxServer) -> Store:
    """A configured, migrated SQLite database in the job's folder."""
    job.write_config(sandbox)
    job("db", "upgrade")

    return Store(make_engine(f"sqlite:///{job.folder / 'job.db'}"), SystemClock())


def backfill_runs(store: Store) -> list[dict]:
    runs = store.recent_runs(limit=1000)
    return [run for run in runs if run["trigger"] == "backfill"]


def start_backfill(job: Job, *, capture: bool = False) -> subprocess.Popen[str]:
    """`job backfill` of RANGE in 30 s windows, as a background process."""
    return subprocess.Popen(
        [*JOB, "backfill", "--source", "items", *RANGE, "--window", "30s"],
        cwd=job.folder,
        env=job.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
        text=True,
    )


def wait_for_succeeded(store: Store, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [r for r in backfill_runs(store) if r["status"] == "succeeded"]
        if len(done) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} windows succeeded in {timeout_s}s")


def most_at_once(runs: list[dict]) -> int:
    """The most runs that were under way at one moment."""
    # At equal times an end sorts before a start: touching is not overlapping.
    edges = sorted(
        [(run["started_at"], 1) for run in runs]
        + [(run["finished_at"], -1) for run in runs]
    )
    under_way = most = 0
    for _, step in edges:
        under_way += step
        most = max(most, under_way)

    return most


class TestBackfillCommand:
    def test_dry_run_prints_the_windows(self, job: Job, sandbox: SandboxServer) -> None:
        """Eight 30 s windows, one per line, and nothing pulled."""
        job.write_config(sandbox)
        job("db", "upgrade")

        result = job(
            "backfill", "--source", "items", *RANGE, "--window", "30s", "--dry-run"
        )

        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 8
        assert lines[0] == "2024-01-01T00:00:00Z  2024-01-01T00:00:30Z"
        assert lines[-1] == "2024-01-01T00:03:30Z  2024-01-01T00:04:00Z"
        assert "8 windows to pull, 0 done" in result.stderr
        assert sandbox.state.token_requests == 0

    def test_dates_with_a_zone_are_converted_to_utc(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """--since with Z or +02:00 is read as that instant, shown in UTC."""
        job.write_config(sandbox)
        job("db", "upgrade")

        result = job(
            "backfill",
            "--source",
            "items",
            "--since",
            "2024-01-01T02:00:00+02:00",
            "--until",
            "2024-01-01T00:01:00Z",
            "--window",
            "30s",
            "--dry-run",
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "2024-01-01T00:00:00Z  2024-01-01T00:00:30Z",
            "2024-01-01T00:00:30Z  2024-01-01T00:01:00Z",
        ]

    def test_killed_then_rerun_pulls_only_the_missing_windows(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """kill -9 mid-backfill; the rerun redoes only what had not succeeded."""
        store = ready(job, sandbox)
        sandbox.state.latency_s = 0.3
        first = start_backfill(job)
        try:
            wait_for_succeeded(store, 3, timeout_s=30)
        finally:
            first.kill()
            first.wait(timeout=10)
        before = {r["id"]: r["status"] for r in backfill_runs(store)}
        done_before = sum(1 for s in before.values() if s == "succeeded")
        sandbox.state.latency_s = 0.0

        again = job("backfill", "--source", "items", *RANGE, "--window", "30s")

        assert again.returncode == 0, again.stderr
        assert done_before < 8
        runs = backfill_runs(store)
        new = [r for r in runs if r["id"] not in before]
        assert len(new) == 8 - done_before
        assert all(r["status"] == "succeeded" for r in new)
        succeeded = [r for r in runs if r["status"] == "succeeded"]
        windows = {(r["window_start"], r["window_end"]) for r in succeeded}
        assert len(succeeded) == len(windows) == 8
        # The run killed mid-window is no longer `running`.
        assert "running" not in {r["status"] for r in runs}
        ids = sorted(int(r["record_key"]) for r in store.iter_records("items"))
        assert ids == list(range(1, 240))

    def test_sigterm_stops_after_the_current_windows(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """SIGTERM: exit 130, nothing left running, the rest left for later."""
        store = ready(job, sandbox)
        sandbox.state.latency_s = 0.3
        process = start_backfill(job, capture=True)
        try:
            wait_for_succeeded(store, 1, timeout_s=30)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        job.watch.output("backfill stderr", err)

        assert process.returncode == 130
        statuses = [r["status"] for r in backfill_runs(store)]
        assert "running" not in statuses
        assert len(statuses) < 8
        events = [json.loads(line)["event"] for line in err.splitlines()]
        assert "backfill.stopping" in events
        assert events[-1] == "backfill.finished"

    def test_parallel_bounds_the_requests_and_keeps_spare_windows(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """--parallel 2: two requests at the API at most, four windows under way."""
        store = ready(job, sandbox)
        sandbox.state.latency_s = 0.05

        options = ["--window", "30s", "--parallel", "2"]
        result = job("backfill", "--source", "items", *RANGE, *options)

        assert result.returncode == 0, result.stderr
        assert sandbox.state.resource_in_flight_peak == 2
        assert most_at_once(backfill_runs(store)) == 4
        ids = sorted(int(r["record_key"]) for r in store.iter_records("items"))
        assert ids == list(range(1, 240))

    def test_off_a_terminal_progress_is_logged(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """Without a terminal: backfill.progress events, the last one complete."""
        job.write_config(sandbox)
        job("db", "upgrade")

        result = job(
            "backfill", "--source", "items", *RANGE, "--window", "1m", "--parallel", "2"
        )

        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stderr.splitlines()]
        progress = [e for e in events if e["event"] == "backfill.progress"]
        assert progress[-1]["windows_done"] == progress[-1]["windows_total"] == 4
        assert progress[-1]["records"] == 239
        assert sandbox.state.token_requests == 1


class TestRecordsCommand:
    def test_jsonl_streams_each_payload(self, job: Job, sandbox: SandboxServer) -> None:
        """One JSON object per line, each exactly the stored record."""
        job.write_config(sandbox)
        job("db", "upgrade")
        job("once")

        result = job("records", "--source", "items")

        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert sorted(lines, key=lambda r: r["id"]) == sandbox.state.all_records()

    def test_csv_has_a_header_and_a_row_per_record(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """CSV: key, times, run and the payload as JSON."""
        job.write_config(sandbox)
        job("db", "upgrade")
        job("once")

        result = job("records", "--source", "items", "--format", "csv")

        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert len(rows) == 250
        assert set(rows[0]) == {
            "record_key",
            "first_seen_at",
            "last_seen_at",
            "run_id",
            "payload",
        }
        assert json.loads(rows[0]["payload"])["id"] == int(rows[0]["record_key"])

    def test_since_keeps_only_records_stored_later(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """--since in the future: no records."""
        job.write_config(sandbox)
        job("db", "upgrade")
        job("once")

        result = job("records", "--source", "items", "--since", "2999-01-01")

        assert result.returncode == 0, result.stderr
        assert result.stdout == ""

    def test_an_unknown_source_is_a_config_error(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """A misspelt source: exit 2 and the known names."""
        job.write_config(sandbox)
        job("db", "upgrade")

        result = job("records", "--source", "itemz")

        assert result.returncode == 2
        assert "known: items" in result.stderr


class TestBesideTheDaemon:
    def test_backfill_and_scheduled_pulls_never_write_at_once(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """Daemon and backfill on one source: no overlap, the watermark intact."""
        store = ready(job, sandbox)
        with open(job.folder / "config.yaml", "a") as config:
            config.write("    incremental: {cursor: updated_at, param: since}\n")
        sandbox.state.latency_s = 0.1
        daemon = subprocess.Popen(
            [*JOB, "run"],
            cwd=job.folder,
            env=job.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_runs(store, "schedule", 1)
            backfill = job(
                "backfill",
                "--source",
                "items",
                *RANGE,
                "--window",
                "30s",
                "--parallel",
                "2",
            )
            wait_for_runs(store, "schedule", 2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        job.watch.output("daemon stderr", err)

        assert backfill.returncode == 0, backfill.stderr
        runs = store.recent_runs(limit=1000)
        pulls = [r for r in runs if r["trigger"] == "schedule"]
        windows = [r for r in runs if r["trigger"] == "backfill"]
        assert len(windows) == 8
        for pull in pulls:
            for window in windows:
                assert (
                    pull["finished_at"] <= window["started_at"]
                    or window["finished_at"] <= pull["started_at"]
                ), "a scheduled pull overlapped a backfill window"
        newest = max(item["updated_at"] for item in sandbox.state.all_records())
        watermark = store.watermark("items")
        assert watermark is not None
        assert watermark.value.replace("+00:00", "Z") == newest


def wait_for_runs(store: Store, trigger: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = [
            r
            for r in store.recent_runs(limit=1000)
            if r["trigger"] == trigger and r["status"] == "succeeded"
        ]
        if len(done) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {trigger} runs succeeded in 30s")


class TestRecordsInAPipe:
    def test_a_reader_that_stops_early_is_no_error(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """`job records | head`: exit 0 and no traceback when the reader goes."""
        ready(job, sandbox)
        job("once")

        reader = subprocess.Popen(
            [*JOB, "records", "--source", "items"],
            cwd=job.folder,
            env=job.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Closed before the child writes anything: its first write finds no reader.
        assert reader.stdout is not None
        reader.stdout.close()
        _, err = reader.communicate(timeout=60)
        job.watch.output("records stderr", err)

        assert reader.returncode == 0, err
        assert "Traceback" not in err
