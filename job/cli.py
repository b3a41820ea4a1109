"""How people and cron start things: parse options, build objects, call the pipeline.

`JobError` is caught only here and turned into a message and an exit code.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
import requests
import structlog
from rich.console import Console
from rich.table import Table

from job import __version__
from job.clock import SystemClock
from job.config import Settings, config_path, load_settings
from job.errors import JobError
from job.logs import SECRETS, configure_logging, redact_value
from job.pipeline import Pipeline
from job.storage import engine as db
from job.storage.store import Store

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

    def pipeline(self, stop: threading.Event | None = None) -> Pipeline:
        session = requests.Session()
        session.headers["User-Agent"] = f"job/{__version__}"
        return Pipeline(
            self.settings,
            store=self.store(),
            session=session,
            clock=self.clock,
            stop=stop,
        )


class JobGroup(click.Group):
    """A group that turns a JobError into a clean message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobError as exc:
            click.echo(f"job: error: {redact_value(exc.message)}", err=True)
            ctx.exit(exc.exit_code)


pass_context = click.make_pass_decorator(Context)


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
    ctx.obj = Context(config=config)


@main.command()
@pass_context
def run(context: Context) -> None:
    """Run the daemon: pull every source on its schedule until SIGTERM."""
    from job.scheduler import Daemon

    stop = threading.Event()
    pipeline = context.pipeline(stop)
    abandoned = pipeline.store.mark_abandoned()
    if abandoned:
        log.warning("runs.abandoned", count=abandoned)
    Daemon(pipeline, context.settings.sources, context.clock).run_until_stopped()


@main.command()
@click.option("--source", "source_name", help="Only this source (default: all).")
@pass_context
def once(context: Context, source_name: str | None) -> None:
    """Pull now, once; exit non-zero if a pull failed."""
    pipeline = context.pipeline()
    names = [source_name] if source_name else [s.name for s in context.settings.sources]
    for name in names:
        context.settings.source(name)
    results = [pipeline.pull(name, "once") for name in names]
    failed = [result for result in results if not result.succeeded]
    for result in failed:
        click.echo(
            f"job: run {result.run_id} of {result.source} failed: {result.error}",
            err=True,
        )
    if failed:
        sys.exit(1)


@main.command()
@click.option("--source", "source_name", help="Only runs of this source.")
@click.option(
    "--status",
    type=click.Choice(["running", "succeeded", "failed", "interrupted", "abandoned"]),
)
@click.option(
    "--since", type=click.DateTime(), help="Only runs started at or after (UTC)."
)
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
    from datetime import UTC

    import orjson

    rows = context.store().recent_runs(
        source=source_name,
        status=status,
        since=since.replace(tzinfo=UTC) if since else None,
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
        ("error", lambda r: (r["error"] or "")[:80]),
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
    issued = manager.token()
    facts = {
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
    if verbose:
        headers, data = manager.describe_request()
        facts["request headers"] = str(headers)
        facts["request body"] = str(data)
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
    store = context.store(check=False)
    db.upgrade(store.engine)
    click.echo(f"database is at revision {db.current_revision(store.engine)}")


@db_group.command()
@pass_context
def current(context: Context) -> None:
    """Show the database's revision and the newest one this job knows."""
    store = context.store(check=False)
    found = db.current_revision(store.engine) or "(none: run `job db upgrade`)"
    click.echo(f"current: {found}\nhead:    {db.head_revision()}")


def _add_sandbox() -> None:
    from job.sandbox import sandbox_command

    main.add_command(sandbox_command)


_add_sandbox()
