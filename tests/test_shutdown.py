"""SIGTERM in the middle of a pull: the page commits, the run is recorded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job.clock import SystemClock
from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from job.storage.store import Store
from tests.processes import Job


def wait_for_a_page(store: Store) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = store.recent_runs()
        if runs and runs[0]["status"] == "running" and runs[0]["pages"] >= 1:
            return
        time.sleep(0.05)
    raise AssertionError("no run stored a page within 20 s")


def stopped_mid_pull(
    job: Job, sandbox: SandboxServer, tmp_path: Path, command: str, signum: int
) -> tuple[int, str, Store]:
    """Start `job COMMAND` on a slow API, signal it once a page is stored."""
    job.write_config(sandbox)
    job("db", "upgrade")
    store = Store(make_engine(f"sqlite:///{tmp_path / 'job.db'}"), SystemClock())
    sandbox.state.latency_s = 0.4
    process = subprocess.Popen(
        [sys.executable, "-m", "job", "--log-format", "json", command],
        cwd=tmp_path,
        env=job.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_a_page(store)
        process.send_signal(signum)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    job.watch.output(f"job {command} stderr", err)

    return process.returncode, err, store


class TestShutdownMidPull:
    def test_sigterm_mid_pull_keeps_stored_pages_and_records_the_run(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """Exit 0; the run is `interrupted`; its counters match what is stored."""
        code, err, store = stopped_mid_pull(
            job, sandbox, tmp_path, "run", signal.SIGTERM
        )

        assert code == 0, err
        (run,) = store.recent_runs()
        assert run["status"] == "interrupted"
        assert 1 <= run["pages"] < 5
        assert store.count_records("items") == run["inserted"] == run["pages"] * 50
        assert '"event": "run.interrupted"' in err

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_once_stopped_mid_pull_records_an_interrupted_run(
        self, job: Job, sandbox: SandboxServer, tmp_path: Path, signum: int
    ) -> None:
        """`job once` and SIGTERM or Ctrl-C: exit 130, the run is not left running."""
        code, err, store = stopped_mid_pull(job, sandbox, tmp_path, "once", signum)

        assert code == 130, err
        (run,) = store.recent_runs()
        assert run["status"] == "interrupted"
        assert store.count_records("items") == run["inserted"] == run["pages"] * 50
