"""How people and cron start things: parse options, build objects, call the pipeline.

`JobError` is caught only here and turned into a message and an exit code.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
import requests
import structlog
from rich.console import Console
from rich.table import Table

from job import __version__
from job.backfill import (
    Backfill,
    LogReporter,
    Progress,
    bounded_session,
    rich_reporter,
    split_windows,
)
from job.clock import Clock, SystemClock
from job.config import Settings, SourceSettings, config_path, load_settings
from job.errors import ConfigError, JobError
from job.locks import FileLocks, SourceLocks, locks_for
from job.logs import SECRETS, configure_logging, redact_value
from job.pipeline import Pipeline, RunResult
from job.storage import engine as db
from job.storage.history import Window, abandon_runs
from job.storage.store import Store

if TYPE_CHECKING:
    from job.health import HealthServer
    from job.scheduler import Daemon

log = structlog.get_logger("job.cli")


@dataclass
class Context:
    """What every command may need, built on first use."""

    config: str | None
    clock: SystemClock = field(default_factory=SystemClock)
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(config_path(self.config, os.environ))
            SECRETS.add_all(self._settings.secrets())
        return self._settings

    def store(self, *, check: bool = True) -> Store:
        database = self.settings.database
        engine = db.make_engine(database.url, busy_timeout_s=database.busy_timeout_s)
        if check:
            db.check_schema(engine)
        return Store(engine, self.clock)

    def pipeline(
        self,
        stop: threading.Event | None = None,
        *,
        connections: int = 10,
        read_ahead: bool = True,
    ) -> Pipeline:
        session = bounded_session(requests.Session(), connections)
        session.headers["User-Agent"] = f"job/{__version__}"
        return Pipeline(
            self.settings,
            store=self.store(),
            session=session,
            clock=self.clock,
            stop=stop,
            read_ahead=read_ahead,
        )


class JobGroup(click.Group):
    """A group that turns a JobError into a clean message and its exit code.

    `job sandbox` is loaded only when asked for: it brings Flask, Authlib and
    cryptography, about 10 MB and a good part of the start-up time of every
    other command.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobError as exc:
            click.echo(f"job: error: {redact_value(exc.message)}", err=True)
            ctx.exit(exc.exit_code)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "sandbox"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "sandbox":
            from job.sandbox.cli import sandbox_command

            return sandbox_command
        return super().get_command(ctx, name)


pass_context = click.make_pass_decorator(Context)

GIL_SWITCH_INTERVAL_S = 0.0005

# A date, a date and time, or either with a zone (Z or +02:00); no zone is UTC.
MOMENT = click.DateTime(
    formats=[
        "%Y-%m-%d",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%d %H:%M:%S%z",
        "%Y-%m-%dT%H:%M%z",
    ]
)


@click.group(cls=JobGroup)
@click.option(
    "--config",
    "config",
    metavar="PATH",
    help="The configuration file (default: $JOB_CONFIG, then ./config.yaml).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="auto: readable on a terminal, JSON lines otherwise.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.version_option(__version__, prog_name="job")
@click.pass_context
def main(
    ctx: click.Context, config: str | None, log_format: str, log_level: str
) -> None:
    """Pull OAuth 2.0 protected APIs into a SQL database."""
    configure_logging(log_format, log_level)  # type: ignore[arg-type]
    # A pull's threads take turns: one computes (decode, hash) while another
    # waits on the database. After each reply the waiting one needs the GIL
    # back, and by default it waits up to 5 ms for it; a 0.5 ms turn made
    # `job once` about 10 % faster on PostgreSQL (bench/README.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # What is loaded by now (modules, mostly) lives as long as the process.
    # Frozen, the collector stops walking it: a pull allocates dicts by the
    # thousand, and each full collection then walked some 120,000 start-up
    # objects, stopping every thread (180 ms in a pull of 100,000 records).
    gc.freeze()
    ctx.obj = Context(config=config)


@main.command()
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    help="Serve /healthz, /readyz and /metrics on this port (0: any free one).",
)
@click.option(
    "--health-host",
    default="127.0.0.1",
    show_default=True,
    help="The address the health port listens on (0.0.0.0 in a container).",
)
@pass_context
def run(context: Context, health_port: int | None, health_host: str) -> None:
    """Run the daemon: pull every source on its schedule until SIGTERM."""
    from job.health import Metrics
    from job.scheduler import Daemon
    from job.storage.views import sync_views

    stop = threading.Event()
    pipeline = context.pipeline(stop)
    locks = locks_for(pipeline.store.engine)
    # SQLite has one writer at a time: a second daemon would only contend.
    held = locks.daemon_lock() if isinstance(locks, FileLocks) else None
    abandon_dead_runs(pipeline, locks, context.clock, context.settings.sources)
    sync_views(pipeline.store.engine, context.settings.sources)
    metrics = Metrics()
    daemon = Daemon(
        pipeline, context.settings.sources, context.clock, locks=locks, metrics=metrics
    )
    health = None
    if health_port is not None:
        health = _health_server(daemon, health_host, health_port)
    try:
        daemon.run_until_stopped()
    finally:
        if health is not None:
            health.stop()
        if held is not None:
            held.close()


def _health_server(daemon: Daemon, host: str, port: int) -> HealthServer:
    from job.health import HealthServer, readiness

    metrics = daemon.metrics
    assert metrics is not None
    metrics.watch_logs()
    engine = daemon.pipeline.store.engine
    try:
        server = HealthServer(
            host,
            port,
            is_alive=daemon.is_alive,
            is_ready=lambda: readiness(engine),
            metrics=metrics,
        )
    except OSError as exc:
        raise ConfigError(
            f"--health-port {port} on {host}: {exc.strerror}; choose a free port"
        ) from None
    server.start()

    return server


def abandon_dead_runs(
    pipeline: Pipeline,
    locks: SourceLocks,
    clock: Clock,
    sources: Iterable[SourceSettings],
) -> None:
    """Mark `abandoned` the runs left `running` of each source nobody holds now.

    A run is only ever `running` under its source's lock, and a dead process
    holds no lock; so a source whose lock we get has no live run, on any host.
    """

    for source in sources:
        with locks.exclusive(source.name, wait=False) as held:
            if held:
                abandon_runs(pipeline.store.engine, clock, source.name)


@main.command()
@click.option("--source", "source_name", help="Only this source (default: all).")
@pass_context
def once(context: Context, source_name: str | None) -> None:
    """Pull now, once; exit non-zero if a pull failed."""
    stop = threading.Event()
    pipeline = context.pipeline(stop)
    names = [source_name] if source_name else [s.name for s in context.settings.sources]
    for name in names:
        context.settings.source(name)
    locks = locks_for(pipeline.store.engine)
    # SIGTERM or Ctrl-C: the page being stored commits, the run says interrupted.
    _stop_on_signals(stop, "once.stopping")
    results = []
    for name in names:
        if stop.is_set():
            break
        # Waits for a scheduled pull or a backfill of the same source to end;
        # once it holds the lock, a run still `running` has lost its process.
        with locks.exclusive(name, wait=True):
            abandon_runs(pipeline.store.engine, context.clock, name)
            results.append(pipeline.pull(name, "once"))
    failed = [result for result in results if result.status == "failed"]
    for result in failed:
        click.echo(
            f"job: run {result.run_id} of {result.source} failed: {result.error}",
            err=True,
        )
    if stop.is_set():
        sys.exit(130)
    if failed:
        sys.exit(1)


@main.command()
@click.option("--source", "source_name", required=True, help="The source to pull.")
@click.option("--since", type=MOMENT, required=True, help="Start (UTC, inclusive).")
@click.option("--until", type=MOMENT, required=True, help="End (UTC, exclusive).")
@click.option("--window", default="1d", show_default=True, help="Window length.")
@click.option(
    "--parallel",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Requests to the API at once; a few more windows than that are under "
    "way, so that one window's writes overlap another's requests.",
)
@click.option("--redo", is_flag=True, help="Pull windows that already succeeded too.")
@click.option("--dry-run", is_flag=True, help="Print the windows, pull nothing.")
@pass_context
def backfill(
    context: Context,
    source_name: str,
    since: datetime,
    until: datetime,
    window: str,
    parallel: int,
    redo: bool,
    dry_run: bool,
) -> None:
    """Pull a past range window by window; rerun it to resume."""
    context.settings.source(source_name)
    windows = split_windows(_utc(since), _utc(until), _window_step(window))
    stop = threading.Event()
    pipeline = context.pipeline(stop, connections=parallel, read_ahead=False)
    locks = locks_for(pipeline.store.engine)
    job = Backfill(pipeline, locks, source_name, parallel)
    pending = job.pending(windows, redo=redo)
    if dry_run:
        for start, end in pending:
            click.echo(f"{_iso(start)}  {_iso(end)}")
        click.echo(
            f"{len(pending)} windows to pull, {len(windows) - len(pending)} done",
            err=True,
        )
        return
    abandon_dead_runs(
        pipeline, locks, context.clock, [context.settings.source(source_name)]
    )
    _stop_on_signals(stop, "backfill.stopping")
    results = _run_backfill(job, pending, context.clock)
    if stop.is_set():
        sys.exit(130)
    if any(not result.succeeded for result in results):
        sys.exit(1)


def _run_backfill(
    job: Backfill, pending: list[Window], clock: Clock
) -> list[RunResult]:
    if sys.stderr.isatty():
        with rich_reporter(len(pending)) as report:
            return job.run(pending, Progress(len(pending), clock, report))

    return job.run(pending, Progress(len(pending), clock, LogReporter(clock)))


def _stop_on_signals(stop: threading.Event, event: str) -> None:
    def request_stop(signum: int, _: Any) -> None:
        log.info(event, signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _utc(moment: datetime) -> datetime:
    return (
        moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _window_step(text: str) -> timedelta:
    from job.config import parse_duration

    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise ConfigError(f"--window {text!r}: {exc}") from None


@main.command()
@click.option("--source", "source_name", required=True, help="The source to read.")
@click.option(
    "--since",
    type=MOMENT,
    help="Only records stored or changed at or after (UTC).",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
)
@pass_context
def records(
    context: Context, source_name: str, since: datetime | None, output: str
) -> None:
    """Stream the stored records of a source to stdout, for other tools."""
    from job.export import write_csv, write_jsonl
    from job.storage.history import stream_records

    context.settings.source(source_name)
    rows = stream_records(
        context.store().engine, source_name, _utc(since) if since else None
    )
    try:
        if output == "jsonl":
            write_jsonl(rows, sys.stdout.buffer)
        else:
            write_csv(rows, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # `job records ... | head`: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@main.command()
@click.option("--source", "source_name", help="Only runs of this source.")
@click.option(
    "--status",
    type=click.Choice(["running", "succeeded", "failed", "interrupted", "abandoned"]),
)
@click.option("--since", type=MOMENT, help="Only runs started at or after (UTC).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def runs(
    context: Context,
    source_name: str | None,
    status: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show recent runs, newest first."""
    import orjson

    rows = context.store().recent_runs(
        source=source_name,
        status=status,
        since=_utc(since) if since else None,
        limit=limit,
    )
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row, default=str).decode())
        return
    _print_runs(rows)


def _print_runs(rows: list[dict[str, Any]]) -> None:
    table = Table(title="runs, newest first")
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("id", lambda r: str(r["id"])),
        ("source", lambda r: r["source"]),
        ("trigger", lambda r: r["trigger"]),
        ("status", lambda r: r["status"]),
        ("started (UTC)", lambda r: r["started_at"].strftime("%Y-%m-%d %H:%M:%S")),
        ("seconds", _duration),
        ("pages", lambda r: str(r["pages"])),
        ("seen", lambda r: str(r["records_seen"])),
        ("new", lambda r: str(r["inserted"])),
        ("changed", lambda r: str(r["updated"])),
        ("error", lambda r: r["error"] or ""),
    ]
    for name, _ in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(render(row) for _, render in columns))
    # Off a terminal rich would wrap at 80 columns; a pipe or a file gets it whole.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _duration(row: dict[str, Any]) -> str:
    if row["finished_at"] is None:
        return ""
    return f"{(row['finished_at'] - row['started_at']).total_seconds():.1f}"


@main.command()
@click.option(
    "--source",
    "source_name",
    help="The source whose provider to ask (default: the first).",
)
@click.option(
    "--verbose", is_flag=True, help="Also show the request sent, secret masked."
)
@pass_context
def token(context: Context, source_name: str | None, verbose: bool) -> None:
    """Obtain a token and show its metadata (never the token itself)."""
    from job.auth import TokenManager

    settings = context.settings
    source = settings.source(source_name) if source_name else settings.sources[0]
    provider = settings.provider_for(source)
    manager = TokenManager(provider, session=requests.Session(), clock=context.clock)
    if verbose:
        # Shown before the request, so that a refused request can be debugged.
        headers, data = manager.describe_request()
        _print_facts({"request headers": str(headers), "request body": str(data)})
    issued = manager.token()
    _print_facts(
        {
            "provider": provider.name,
            "token_url": provider.token_url,
            "auth_method": provider.auth_method,
            "client_id": provider.client_id,
            "requested scope": provider.scope or "(none)",
            "granted scope": issued.scope or "(not stated)",
            "lifetime": f"{issued.lifetime_s:.0f} s",
            "expires at": issued.expires_at.isoformat(),
            "fingerprint": issued.fingerprint,
            **manager.describe_credentials(),
        }
    )


def _print_facts(facts: dict[str, str]) -> None:
    width = max(len(name) for name in facts)
    for name, value in facts.items():
        click.echo(f"{name:<{width}}  {redact_value(value)}")


@main.group()
def db_group() -> None:
    """Create or inspect the database schema."""


main.add_command(db_group, name="db")


@db_group.command()
@pass_context
def upgrade(context: Context) -> None:
    """Apply the migrations up to the newest revision."""
    from job.storage.views import sync_views

    store = context.store(check=False)
    db.upgrade(store.engine)
    click.echo(f"database is at revision {db.current_revision(store.engine)}")
    for name in sync_views(store.engine, context.settings.sources):
        click.echo(f"view {name} matches the columns: in the configuration")


@db_group.command()
@pass_context
def current(context: Context) -> None:
    """Show the database's revision and the newest one this job knows."""
    store = context.store(check=False)
    found = db.current_revision(store.engine) or "(none: run `job db upgrade`)"
    click.echo(f"current: {found}\nhead:    {db.head_revision()}")
