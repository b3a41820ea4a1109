"""The demo behind `make demo`: sandbox, daemon, a few pulls, a summary.

It starts `job sandbox` with a short token lifetime and changing data, runs
`job run` long enough for several scheduled pulls and a token renewal, stops
both with SIGTERM, and reads the result back from the database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import requests

# The demo runs job's own command line, built from sys.executable: no outside input.
# ruff: noqa: S603

DEMO_DIR = Path(".demo")
RECORDS = 2000
RUN_FOR_S = 16.0
INTERVAL_S = 3
TOKEN_LIFETIME_S = 10

CONFIG = """\
database:
  url: sqlite:///{db}
providers:
  sandbox:
    token_url: {base}/oauth/token
    client_id: job-demo
    client_secret_file: {secret}
    auth_method: client_secret_basic
    scope: read:data
sources:
  - name: demo-items
    provider: sandbox
    url: {base}/data/protected-resource
    params: {{page_size: "250"}}
    records: items
    primary_key: id
    pagination: {{next: next}}
    schedule: {{every: {interval}s}}
"""

SHOWN = {
    "token.requested": ("reason",),
    "token.acquired": ("fingerprint", "expires_in", "scope"),
    "token.renewed": ("fingerprint", "expires_in", "reason"),
    "token.expiring": ("remaining_s",),
    "run.started": ("source", "run_id", "trigger"),
    "run.finished": (
        "source",
        "run_id",
        "status",
        "pages",
        "inserted",
        "updated",
        "unchanged",
    ),
    "daemon.started": ("sources",),
    "daemon.stopping": ("signal",),
    "daemon.stopped": (),
}


JOB = [sys.executable, "-m", "job"]


def main() -> int:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = _prepare(base)

    _say(
        f"1. starting the sandbox provider on {base} (tokens live {TOKEN_LIFETIME_S}s)"
    )
    with _sandbox(port, base):
        _say("2. creating the database schema: job db upgrade")
        subprocess.run([*JOB, "--config", str(config), "db", "upgrade"], check=True)
        _say(
            f"3. running the daemon (every {INTERVAL_S}s) for {RUN_FOR_S:.0f}s: job run"
        )
        events = _run_daemon(config)

    _say("4. what the database holds: job runs")
    subprocess.run([*JOB, "--config", str(config), "runs"], check=True)

    return _summary(events, DEMO_DIR / "job.db")


def _prepare(base: str) -> Path:
    """A fresh .demo/ folder with the demo's configuration."""
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir()
    config = DEMO_DIR / "config.yaml"
    config.write_text(
        CONFIG.format(
            db=DEMO_DIR / "job.db",
            base=base,
            secret=DEMO_DIR / "client_secret",
            interval=INTERVAL_S,
        )
    )

    return config


@contextmanager
def _sandbox(port: int, base: str) -> Iterator[None]:
    """`job sandbox` in the background, its output kept in .demo/sandbox.log."""
    options = {
        "--port": port,
        "--secret-file": DEMO_DIR / "client_secret",
        "--token-lifetime": TOKEN_LIFETIME_S,
        "--records": RECORDS,
        "--mutate-every": 5,
    }
    arguments = [str(part) for pair in options.items() for part in pair]
    with (DEMO_DIR / "sandbox.log").open("w") as log:
        process = subprocess.Popen(
            [*JOB, "sandbox", *arguments], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_for(base, process)
            yield
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


def _run_daemon(config: Path) -> Counter[str]:
    daemon = subprocess.Popen(
        [*JOB, "--config", str(config), "--log-format", "json", "run"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert daemon.stderr is not None
    deadline = time.monotonic() + RUN_FOR_S
    seen: Counter[str] = Counter()
    os.set_blocking(daemon.stderr.fileno(), False)
    stopping = False
    while daemon.poll() is None or not stopping:
        if not stopping and time.monotonic() > deadline:
            daemon.send_signal(signal.SIGTERM)
            stopping = True
        for line in iter(daemon.stderr.readline, ""):
            _show(line, seen)
        time.sleep(0.1)
        if daemon.poll() is not None:
            break
    for line in daemon.stderr:
        _show(line, seen)
    seen["exit_code"] = daemon.wait()

    return seen


def _show(line: str, seen: Counter[str]) -> None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        print("   ", line.rstrip())
        return
    name = event.get("event", "")
    seen[name] += 1
    if event.get("level") in ("warning", "error") or name in SHOWN:
        fields = SHOWN.get(name) or tuple(
            k for k in event if k not in ("event", "timestamp", "level", "logger")
        )
        text = " ".join(f"{key}={event[key]}" for key in fields if key in event)
        stamp = str(event.get("timestamp", ""))[11:19]
        print(f"   {stamp} {name:<16} {text}")


def _summary(events: Counter[str], db_path: Path) -> int:
    import sqlite3

    with sqlite3.connect(db_path) as connection:
        statuses = dict(
            connection.execute("SELECT status, count(*) FROM runs GROUP BY status")
        )
        stored = connection.execute("SELECT count(*) FROM records").fetchone()[0]
    checks = [
        (
            f"the daemon exited cleanly (exit code {events['exit_code']})",
            events["exit_code"] == 0,
        ),
        (
            f"{sum(statuses.values())} runs, all succeeded ({statuses})",
            set(statuses) == {"succeeded"} and sum(statuses.values()) >= 3,
        ),
        (f"{stored} records stored, the sandbox serves {RECORDS}", stored == RECORDS),
        (
            f"token acquired {events['token.acquired']}x, "
            f"renewed {events['token.renewed']}x",
            events["token.acquired"] >= 1 and events["token.renewed"] >= 1,
        ),
    ]
    _say("5. summary")
    for text, ok in checks:
        print(f"   [{'ok' if ok else 'FAILED'}] {text}")
    print(f"\n   Query it yourself: sqlite3 {db_path} 'SELECT * FROM runs'")  # noqa: S608

    return 0 if all(ok for _, ok in checks) else 1


def _wait_for(base: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if process.poll() is not None:
            log = (DEMO_DIR / "sandbox.log").read_text()
            raise SystemExit(f"the sandbox exited early:\n{log}")
        try:
            requests.get(f"{base}/data/protected-resource", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("the sandbox did not start within 10 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
