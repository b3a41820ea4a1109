"""The six benchmarks of issue 6; each returns its figures, measured side by side."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench import ceilings, jobrun
from bench.databases import POSTGRES_URL, Database, fresh_database
from bench.report import Figure, at_least, at_most
from bench.sandbox import BenchSandbox
from job.sandbox.records import BASE_TIME, CHANGE_PERIOD
from job.storage import engine as db

PEERS_PYTHON = Path(__file__).parent / ".venv-peers" / "bin" / "python"
PEERS_REQUIREMENTS = Path(__file__).parent / "peers" / "requirements.txt"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Sizes:
    """How big and how often; `full` is what the README's table comes from."""

    records: int
    peer_records: int
    memory_records: tuple[int, ...]
    runs: int
    idle_s: float
    windows: int
    window_records: int
    latency_s: float = 0.05


FULL = Sizes(100_000, 30_000, (100_000, 1_000_000), 3, 60.0, 32, 400)
QUICK = Sizes(20_000, 5_000, (100_000,), 3, 10.0, 32, 200)
SMOKE = Sizes(600, 300, (600,), 1, 1.0, 4, 100)


class Figures:
    """Figures of one benchmark on one database, created on first use."""

    def __init__(self, benchmark: str, database: str) -> None:
        self.benchmark = benchmark
        self.database = database
        self.found: dict[str, Figure] = {}

    def add(self, name: str, value: float, unit: str, **kwargs: Any) -> None:
        figure = self.found.get(name)
        if figure is None:
            figure = Figure(self.benchmark, self.database, name, unit, **kwargs)
            self.found[name] = figure
        figure.values.append(value)

    def all(self) -> list[Figure]:
        return list(self.found.values())


def _pull(
    database: Database, sandbox: BenchSandbox, page_size: int
) -> tuple[dict[str, Any], jobrun.Outcome]:
    config = jobrun.write_config(database.folder, database, sandbox, page_size)
    outcome = jobrun.run_job(config, sandbox, "once")
    jobrun.require_success(outcome, "job once")

    return jobrun.last_runs(database)[0], outcome


def _rate(run: dict[str, Any]) -> float:
    return float(run["records_seen"]) / jobrun.run_seconds(run)


# 1. Local throughput


def throughput(kind: str, sizes: Sizes, log: Log) -> list[Figure]:
    """`job once` against the HTTP-only, DB-only and serial ceilings."""
    figures = Figures("throughput", kind)
    rows = ceilings.Rows.build(sizes.records)
    with BenchSandbox(sizes.records) as sandbox:
        for page_size in (100, 500):
            sandbox.command(f"warm {page_size}")
            for run in range(sizes.runs):
                log(f"throughput {kind} page {page_size} run {run + 1}")
                _throughput_run(figures, kind, sandbox, rows, page_size)

    return figures.all()


def _throughput_run(
    figures: Figures,
    kind: str,
    sandbox: BenchSandbox,
    rows: ceilings.Rows,
    page_size: int,
) -> None:
    http = ceilings.http_ceiling(sandbox, page_size)
    with fresh_database(kind) as database:
        store = ceilings.db_ceiling(database, rows, page_size)
    with fresh_database(kind) as database:
        run, outcome = _pull(database, sandbox, page_size)
    serial = ceilings.serial_ceiling(http, store)
    job = _rate(run)
    suffix = f" (page {page_size})"
    target = "≥ 0.8" if page_size == 500 else ""
    check = at_least(0.8) if page_size == 500 else None
    figures.add("job once" + suffix, job, "records/s")
    figures.add(
        "job once, process wall" + suffix,
        run["records_seen"] / outcome.wall_s,
        "records/s",
    )
    figures.add("HTTP-only ceiling" + suffix, http, "records/s")
    figures.add("DB-only ceiling" + suffix, store, "records/s")
    figures.add("serial ceiling" + suffix, serial, "records/s")
    figures.add(
        "job / serial ceiling" + suffix,
        job / serial,
        "ratio",
        target=target,
        check=check,
    )
    if page_size == 500:
        fast = ceilings.sandbox_ceiling(sandbox, page_size, flask=False)
        flask = ceilings.sandbox_ceiling(sandbox, page_size, flask=True)
        figures.add("sandbox ceiling, fast server (page 500)", fast, "records/s")
        figures.add("sandbox ceiling, Flask server (page 500)", flask, "records/s")
        figures.add(
            "sandbox ceiling / job (page 500)",
            fast / job,
            "ratio",
            target="≫ 1",
            check=at_least(3),
        )


# 2. Peers


def peers(kind: str, sizes: Sizes, log: Log, *, install: bool = True) -> list[Figure]:
    """The same pull by `job`, by the straightforward script and by dlt.

    dlt lives in bench/.venv-peers, made here on first use unless `install`
    is false (the smoke test never downloads anything).
    """
    figures = Figures("peers", kind)
    dlt_problem = _peers_venv_problem(log, install)
    with BenchSandbox(sizes.peer_records) as sandbox:
        sandbox.command("warm 500")
        for run in range(sizes.runs):
            log(f"peers {kind} run {run + 1}")
            with fresh_database(kind) as database:
                first, _ = _pull(database, sandbox, 500)
                second, _ = _pull(database, sandbox, 500)
            job = _rate(first)
            figures.add("job once", job, "records/s")
            figures.add("job re-sync (unchanged)", _rate(second), "records/s")
            plain = _plain(kind, sandbox)
            figures.add(
                "straightforward", plain["records"] / plain["first_s"], "records/s"
            )
            figures.add(
                "job / straightforward",
                job * plain["first_s"] / plain["records"],
                "ratio",
                target="≥ 2.5",
                check=at_least(2.5),
            )
            if dlt_problem is None:
                dlt = _dlt(kind, sandbox)
                figures.add(
                    "dlt",
                    dlt["records"] / dlt["first_s"],
                    "records/s",
                    note=f"dlt {dlt['version']}",
                )
                figures.add(
                    "dlt re-sync (unchanged)",
                    dlt["records"] / dlt["second_s"],
                    "records/s",
                )
                figures.add(
                    "job / dlt",
                    job * dlt["first_s"] / dlt["records"],
                    "ratio",
                    target="≥ 5",
                    check=at_least(5),
                )
    result = figures.all()
    if dlt_problem is not None:
        result.append(
            Figure("peers", kind, "job / dlt", "ratio", target="≥ 5", note=dlt_problem)
        )

    return result


def _peers_venv_problem(log: Log, install: bool) -> str | None:
    """Make bench/.venv-peers (dlt, py-spy) if missing; say why it cannot be."""
    if PEERS_PYTHON.exists():
        return None
    if not install:
        return "bench/.venv-peers is missing; `python -m bench` makes it"
    log("creating bench/.venv-peers (dlt); this takes a minute")
    folder = PEERS_PYTHON.parent.parent
    steps = [
        [sys.executable, "-m", "venv", str(folder)],
        [
            str(PEERS_PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-r",
            str(PEERS_REQUIREMENTS),
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"cannot install dlt: {done.stderr.strip().splitlines()[-1:]}"

    return None


def _peer_env(sandbox: BenchSandbox) -> dict[str, str]:
    return {**os.environ, "BENCH_CLIENT_SECRET": sandbox.secret}


def _peer_args(sandbox: BenchSandbox) -> list[str]:
    return [
        "--resource-url",
        sandbox.resource_url,
        "--token-url",
        sandbox.token_url,
        "--client-id",
        sandbox.urls["client_id"],
        "--page-size",
        "500",
    ]


def _run_peer(command: list[str], sandbox: BenchSandbox) -> dict[str, Any]:
    done = subprocess.run(
        command,
        env=_peer_env(sandbox),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{command[1]} exited {done.returncode}: {tail}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])

    return result


def _plain(kind: str, sandbox: BenchSandbox) -> dict[str, Any]:
    with fresh_database(kind, migrate=False) as database:
        command = [
            sys.executable,
            "-m",
            "bench.peers.plain",
            *_peer_args(sandbox),
            "--database-url",
            database.url,
        ]
        return _run_peer(command, sandbox)


def _dlt(kind: str, sandbox: BenchSandbox) -> dict[str, Any]:
    script = str(Path(__file__).parent / "peers" / "dlt_pull.py")
    with fresh_database(kind, migrate=False) as database:
        dataset = f"dlt_{uuid.uuid4().hex[:10]}"
        url = (
            _dlt_postgres_url()
            if kind == "postgresql"
            else f"sqlite:///{database.folder / 'dlt.db'}"
        )
        command = [
            str(PEERS_PYTHON),
            script,
            *_peer_args(sandbox),
            "--destination",
            kind,
            "--database-url",
            url,
            "--dataset",
            dataset,
            "--work",
            str(database.folder / "dlt"),
        ]
        try:
            return _run_peer(command, sandbox)
        finally:
            if kind == "postgresql":
                # dlt merges through a staging dataset beside the real one.
                _drop_schema(dataset)
                _drop_schema(f"{dataset}_staging")


def _dlt_postgres_url() -> str:
    # dlt insists on a password even where the server trusts loopback.
    url = make_url(POSTGRES_URL)
    if url.password is None:
        url = url.set(password="unused")  # noqa: S106 - ignored by trust auth

    return url.render_as_string(hide_password=False)


def _drop_schema(schema: str) -> None:
    admin = db.make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


# 3. Re-pull into loaded data


def repull(kind: str, sizes: Sizes, log: Log) -> list[Figure]:
    """A second and third `job once`: unchanged, then with 10 % changed."""
    figures = Figures("re-pull", kind)
    changed = sum(
        1 for i in range(1, sizes.records + 1) if (1 + i) % CHANGE_PERIOD == 0
    )
    with BenchSandbox(sizes.records) as sandbox:
        for run in range(sizes.runs):
            log(f"re-pull {kind} run {run + 1}")
            sandbox.command("epoch 0")
            sandbox.command("warm 500")
            with fresh_database(kind) as database:
                first, _ = _pull(database, sandbox, 500)
                _repull_step(figures, database, sandbox, first, "unchanged", 0)
                sandbox.command("epoch 1")
                sandbox.command("warm 500")
                _repull_step(figures, database, sandbox, first, "10 % changed", changed)
            figures.add("first pull", _rate(first), "records/s")

    return figures.all()


def _repull_step(
    figures: Figures,
    database: Database,
    sandbox: BenchSandbox,
    first: dict[str, Any],
    label: str,
    expected: int,
) -> None:
    before = _settled_tuple_writes(database)
    run, _ = _pull(database, sandbox, 500)
    after = _settled_tuple_writes(database)
    rate = _rate(run)
    figures.add(f"{label}: rate", rate, "records/s")
    figures.add(
        f"{label}: rate / first pull",
        rate / _rate(first),
        "ratio",
        target="≥ 0.8",
        check=at_least(0.8),
    )
    written = run["inserted"] + run["updated"]
    figures.add(
        f"{label}: rows written (runs row)",
        written,
        "rows",
        target=f"= {expected}",
        check=lambda v: v == expected,
    )
    figures.add(
        f"{label}: rows carrying the run's id (DB)",
        database.records_written_by(run["id"]),
        "rows",
        target=f"= {expected}",
        check=lambda v: v == expected,
    )
    if before is not None and after is not None:
        figures.add(
            f"{label}: tuples inserted+updated (pg_stat)",
            after - before,
            "rows",
            target=f"= {expected}",
            check=lambda v: v == expected,
        )


def _settled_tuple_writes(database: Database) -> int | None:
    # A backend reports its counters when it exits; give that a moment.
    if database.schema is not None:
        time.sleep(1.0)
    return database.tuple_writes()


# 4. Latency-bound backfill


def backfill(kind: str, sizes: Sizes, log: Log) -> list[Figure]:
    """`job backfill` over 32 windows with 50 ms per page, against the ideal."""
    problem = _backfill_problem()
    if problem is not None:
        return [
            Figure(
                "backfill",
                kind,
                "wall / ideal (parallel 8)",
                "ratio",
                target="≤ 1.3",
                note=problem,
            )
        ]
    figures = Figures("backfill", kind)
    total = sizes.windows * sizes.window_records
    with BenchSandbox(total + 1) as sandbox:
        sandbox.command(f"latency {sizes.latency_s}")
        for parallel in (1, 4, 8):
            for run in range(sizes.runs):
                log(f"backfill {kind} parallel {parallel} run {run + 1}")
                _backfill_run(figures, kind, sandbox, sizes, parallel)

    return figures.all()


def _backfill_problem() -> str | None:
    done = subprocess.run(
        [sys.executable, "-m", "job", "backfill", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return "`job backfill` is not on this branch (issue 5 builds it)"

    return None


def _backfill_run(
    figures: Figures, kind: str, sandbox: BenchSandbox, sizes: Sizes, parallel: int
) -> None:
    since = BASE_TIME + timedelta(seconds=1)
    until = since + timedelta(seconds=sizes.windows * sizes.window_records)
    with fresh_database(kind) as database:
        config = jobrun.write_config(database.folder, database, sandbox, 100)
        outcome = jobrun.run_job(
            config,
            sandbox,
            "backfill",
            "--source",
            jobrun.SOURCE,
            "--since",
            since.strftime("%Y-%m-%dT%H:%M:%S"),
            "--until",
            until.strftime("%Y-%m-%dT%H:%M:%S"),
            "--window",
            f"{sizes.window_records}s",
            "--parallel",
            str(parallel),
        )
        jobrun.require_success(outcome, "job backfill")
        runs = jobrun.last_runs(database, 10_000)
    pages = sum(run["pages"] for run in runs)
    span = (
        max(r["finished_at"] for r in runs) - min(r["started_at"] for r in runs)
    ).total_seconds()
    ideal = pages * sizes.latency_s / parallel
    check = at_most(1.3) if parallel == 8 else None
    figures.add(
        f"wall / ideal (parallel {parallel})",
        span / ideal,
        "ratio",
        target="≤ 1.3" if check else "",
        check=check,
    )
    figures.add(
        f"wall (parallel {parallel})",
        span,
        "s",
        note=f"{len(runs)} runs, {pages} pages",
    )
    figures.add(f"process wall (parallel {parallel})", outcome.wall_s, "s")


# 5. Memory


def memory(kind: str, sizes: Sizes, log: Log) -> list[Figure]:
    """Peak RSS of `job once` at each size."""
    figures = Figures("memory", kind)
    for records in sizes.memory_records:
        with BenchSandbox(records) as sandbox:
            sandbox.command("warm 500")
            for run in range(sizes.runs):
                log(f"memory {kind} {records:,} records run {run + 1}")
                with fresh_database(kind) as database:
                    _, outcome = _pull(database, sandbox, 500)
                figures.add(
                    f"peak RSS, {records:,} records",
                    outcome.max_rss_mb,
                    "MB",
                    target="< 100",
                    check=lambda v: v < 100,
                )

    return figures.all()


# 6. Idle daemon


def idle(kinds: tuple[str, ...], sizes: Sizes, log: Log) -> list[Figure]:
    """CPU of `job run` between runs, one daemon per database, side by side."""
    figures = {kind: Figures("idle daemon", kind) for kind in kinds}
    with BenchSandbox(1000) as sandbox, _daemons(kinds, sandbox) as daemons:
        for window in range(sizes.runs):
            log(f"idle daemon window {window + 1} ({sizes.idle_s:.0f} s)")
            start = {kind: _cpu_s(pid) for kind, pid in daemons.items()}
            time.sleep(sizes.idle_s)
            for kind, pid in daemons.items():
                share = (_cpu_s(pid) - start[kind]) / sizes.idle_s * 100
                figures[kind].add(
                    f"CPU over {sizes.idle_s:g} s",
                    share,
                    "% of a core",
                    target="< 1",
                    check=lambda v: v < 1,
                )

    return [figure for group in figures.values() for figure in group.all()]


class _daemons:
    """`job run` per database, each returned once its first run succeeded."""

    def __init__(self, kinds: tuple[str, ...], sandbox: BenchSandbox) -> None:
        self.kinds = kinds
        self.sandbox = sandbox
        self.stack: list[Any] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> dict[str, int]:
        for kind in self.kinds:
            context = fresh_database(kind)
            database = context.__enter__()
            self.stack.append(context)
            config = jobrun.write_config(database.folder, database, self.sandbox, 500)
            self.processes[kind] = subprocess.Popen(
                jobrun.job_command(config, "run"),
                env=jobrun.job_env(self.sandbox),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_first_run(database)

        return {kind: process.pid for kind, process in self.processes.items()}

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            process.terminate()
            process.wait(timeout=60)
        for context in reversed(self.stack):
            context.__exit__(None, None, None)


def _wait_first_run(database: Database, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            runs = jobrun.last_runs(database)
        except Exception:
            runs = []
        if runs and runs[0]["status"] == "succeeded":
            return
        time.sleep(0.2)
    raise RuntimeError("the daemon did not finish its first run within a minute")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of proc(5), counted after the ")".
    ticks = int(fields[11]) + int(fields[12])

    return ticks / os.sysconf("SC_CLK_TCK")
