"""`job run` as a real process: scheduled pulls, then SIGTERM and a clean exit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from job.clock import SystemClock
from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from job.storage.store import Store
from tests.processes import Job


def wait_for_runs(store: Store, count: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        finished = [r for r in store.recent_runs() if r["status"] != "running"]
        if len(finished) >= count:
            return finished
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} runs finished in {timeout_s}s")


class TestDaemon:
    def test_runs_on_schedule_and_stops_cleanly_on_sigterm(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """Every second a pull; SIGTERM: exit 0 and no run left running."""
        job.write_config(sandbox)
        assert job("db", "upgrade").returncode == 0
        store = Store(make_engine(f"sqlite:///{tmp_path / 'job.db'}"), SystemClock())
        daemon = subprocess.Popen(
            [sys.executable, "-m", "job", "--log-format", "json", "run"],
            cwd=tmp_path,
            env=job.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_runs(store, 3, timeout_s=20)
            sandbox.state.latency_s = 0.2
            daemon.send_signal(signal.SIGTERM)
            out, err = daemon.communicate(timeout=20)
        finally:
            if daemon.poll() is None:
                daemon.kill()
        job.watch.output("daemon stdout", out)
        job.watch.output("daemon stderr", err)

        assert daemon.returncode == 0, err
        runs = store.recent_runs(limit=100)
        assert len(runs) >= 3
        assert all(run["status"] in ("succeeded", "interrupted") for run in runs)
        assert all(run["trigger"] == "schedule" for run in runs)
        assert store.count_records("items") == 250
        events = [json.loads(line)["event"] for line in err.splitlines()]
        assert events[0] == "daemon.started"
        assert "daemon.stopping" in events
        assert events[-1] == "daemon.stopped"

    def test_a_run_left_running_is_marked_abandoned_at_start(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """A crashed process's run becomes `abandoned` when the daemon starts."""
        job.write_config(sandbox)
        job("db", "upgrade")
        store = Store(make_engine(f"sqlite:///{tmp_path / 'job.db'}"), SystemClock())
        crashed = store.start_run("items", "schedule")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "job", "--log-format", "json", "run"],
            cwd=tmp_path,
            env=job.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_runs(store, 2, timeout_s=20)
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=20)
        job.watch.output("daemon stderr", err)

        statuses = {run["id"]: run["status"] for run in store.recent_runs()}
        assert statuses[crashed] == "abandoned"
        assert daemon.returncode == 0
