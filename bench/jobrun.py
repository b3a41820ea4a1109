"""Running `job` as its users do, a separate process, and reading what it recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from bench.databases import Database
from bench.sandbox import BenchSandbox
from job.storage.tables import runs

SOURCE = "items"
_POLL_S = 0.02


@dataclass(frozen=True)
class Outcome:
    """How one `job` process went: its exit code, wall time and peak memory."""

    returncode: int
    wall_s: float
    max_rss_mb: float
    stderr: str


def write_config(
    folder: Path, database: Database, sandbox: BenchSandbox, page_size: int
) -> Path:
    """A config.yaml with one source on the benchmark sandbox."""
    config = {
        "database": {"url": database.url},
        "providers": {
            "sandbox": {
                "token_url": sandbox.token_url,
                "client_id": sandbox.urls["client_id"],
                "client_secret": "${OAUTH_CLIENT_SECRET}",
                "scope": "read:data",
            }
        },
        "sources": [
            {
                "name": SOURCE,
                "provider": "sandbox",
                "url": sandbox.resource_url,
                "params": {"page_size": str(page_size)},
                "primary_key": "id",
                "pagination": {"next": "next"},
                "schedule": {"every": "1h"},
                "backfill": {"start_param": "since", "end_param": "until"},
            }
        ],
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    return path


def job_env(sandbox: BenchSandbox) -> dict[str, str]:
    env = {**os.environ, "OAUTH_CLIENT_SECRET": sandbox.secret}
    env.pop("JOB_DATABASE_URL", None)

    return env


def job_command(config: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "job",
        "--config",
        str(config),
        "--log-format",
        "json",
        "--log-level",
        "WARNING",
        *args,
    ]


def run_job(
    config: Path, sandbox: BenchSandbox, *args: str, timeout_s: float = 900
) -> Outcome:
    """Run `job ARGS` to the end, watching its peak resident memory."""
    log_path = config.parent / "job-stderr.log"
    with log_path.open("w") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(
            job_command(config, *args),
            env=job_env(sandbox),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        status, peak_mb = _wait4(process, timeout_s)
        wall = time.perf_counter() - started

    return Outcome(
        os.waitstatus_to_exitcode(status),
        wall,
        peak_mb,
        log_path.read_text(errors="replace"),
    )


def _wait4(process: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    """Wait for the child; return its exit status and peak RSS in MB.

    Not ru_maxrss: Linux carries the parent's high-water mark into a child
    across fork and exec, so a large benchmark process would inflate it.
    VmHWM in /proc belongs to the child's own address space since exec.
    """
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    peak_kb = 0
    try:
        while True:
            peak_kb = max(peak_kb, _vm_hwm_kb(process.pid))
            pid, status = os.waitpid(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(_POLL_S)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)

    return status, peak_kb / 1024


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass

    return 0


def last_runs(database: Database, count: int = 1) -> list[dict[str, Any]]:
    """The newest runs, newest first, as dictionaries."""
    engine = database.engine()
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(runs).order_by(runs.c.id.desc()).limit(count)
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


def run_seconds(run: dict[str, Any]) -> float:
    elapsed: timedelta = run["finished_at"] - run["started_at"]

    return elapsed.total_seconds()


def require_success(outcome: Outcome, what: str) -> None:
    if outcome.returncode != 0:
        tail = outcome.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"{what} exited {outcome.returncode}: {' | '.join(tail)}")
