"""The ``sandbox`` command: run the local provider and API for demos."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import click

from job.sandbox.server import SandboxServer
from job.sandbox.settings import SandboxSettings

SECRET_ENV = "JOB_SANDBOX_CLIENT_SECRET"  # noqa: S105 - an env var name
DEFAULT_SECRET_FILE = Path(".sandbox/client_secret")


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback only.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="0 picks a free port.",
)
@click.option("--client-id", default="job-demo", show_default=True)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SECRET_FILE,
    show_default=True,
    help=f"Read the client secret here, or create it; ${SECRET_ENV} wins.",
)
@click.option(
    "--token-lifetime",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Seconds an access token lasts.",
)
@click.option("--records", type=click.IntRange(min=0), default=3000, show_default=True)
@click.option(
    "--mutate-every",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between data changes (about 10% of records each); off if unset.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds added to every data response.",
)
def sandbox_command(
    host: str,
    port: int,
    client_id: str,
    secret_file: Path,
    token_lifetime: int,
    records: int,
    mutate_every: float | None,
    latency: float,
) -> None:
    """Run a local OAuth 2.0 provider and protected API until Ctrl+C."""
    secret, origin = resolve_secret(secret_file, os.environ)
    try:
        settings = SandboxSettings(
            client_secret=secret,
            host=host,
            port=port,
            client_id=client_id,
            token_lifetime_s=token_lifetime,
            records=records,
            mutate_every_s=mutate_every,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    server = _start(settings)
    server.state.latency_s = latency
    _announce(server, origin)
    server.serve_forever()


def resolve_secret(path: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """Return the client secret and, for display, where it came from."""
    from_env = environ.get(SECRET_ENV)
    if from_env:
        return from_env, f"${SECRET_ENV}"

    return load_or_create_secret(path), str(path.resolve())


def load_or_create_secret(path: Path) -> str:
    """Read the secret from ``path``, or make a new one there (mode 0600)."""
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        return _create_secret(path)
    if not secret:
        raise click.ClickException(
            f"The secret file {path} is empty; write a secret in it or delete it "
            "to have a new one generated."
        )

    return secret


def _create_secret(path: Path) -> str:
    secret = secrets.token_urlsafe(24)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created with 0600 from the start, so the secret is never readable by
    # others, not even for a moment.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret + "\n")

    return secret


def _start(settings: SandboxSettings) -> SandboxServer:
    try:
        return SandboxServer(settings).start()
    except OSError as exc:
        raise click.ClickException(
            f"Cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
            "pick another --port, or 0 for any free one."
        ) from exc


def _announce(server: SandboxServer, origin: str) -> None:
    # Where the secret lives, never the secret itself, nor any token.
    click.echo("Sandbox OAuth 2.0 provider and API running; stop with Ctrl+C.")
    click.echo(f"  token URL:     {server.token_url}")
    click.echo(f"  resource URL:  {server.resource_url}")
    click.echo(f"  client id:     {server.settings.client_id}")
    click.echo(f"  client secret: {origin}")
