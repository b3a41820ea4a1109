"""The engine for a database URL, and the Alembic migrations that shape it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    NoSuchModuleError,
    OperationalError,
)

import job.migrations
from job.errors import ConfigError, SchemaError, StorageError, TransientStorageError
from job.logs import redact_value

MIGRATIONS_DIR = Path(job.migrations.__file__).parent


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# A pooled connection unused for longer than this is checked before use.
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "job_idle_since"


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for `url`: SQLite in WAL mode with a busy timeout, or PostgreSQL."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"database.url {redact_value(url)!r} is not a database URL; write "
            "sqlite:///job.db or postgresql://user@host/dbname"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"database.url: {parsed.get_backend_name()} is not supported; job "
            "stores into SQLite (sqlite:///job.db) or PostgreSQL "
            "(postgresql://user@host/dbname)"
        )
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    options: dict[str, Any] = {
        "json_serializer": _dumps,
        "json_deserializer": orjson.loads,
    }
    if parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": busy_timeout_s}
    try:
        engine = create_engine(parsed, **options)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"no driver for {parsed.drivername}: {exc}; for PostgreSQL install "
            "job[postgres]"
        ) from None
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, busy_timeout_s)
    else:
        _tune_postgresql(engine, busy_timeout_s)

    return engine


def _tune_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers (people running SQL) work while a pull writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def _tune_postgresql(engine: Engine, busy_timeout_s: float) -> None:
    ping_when_idle(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Like SQLite's busy timeout: a lock held elsewhere fails the statement
        # after a while (and the page is retried) instead of hanging the run.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET lock_timeout = {int(busy_timeout_s * 1000)}")
        cursor.close()
        dbapi_connection.commit()


def ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before handing it out, if it sat unused a while.

    SQLAlchemy's `pool_pre_ping` checks on every checkout, which costs
    every page a round trip and a transaction of its own, each waiting for
    the GIL on its way back. A connection handed back and forth
    between the pages of a pull is known good; one that sat idle may have
    been dropped by a server restart or a proxy, and is replaced here. A
    connection lost mid-pull fails its statement, and the page is retried
    on a fresh one (`database.retry`).
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool throws this connection away and checks out another.
            raise DisconnectionError(f"an idle connection was dropped: {exc}") from exc


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The connection is handed over in config.attributes; no URL (and so no
    # password) goes through Alembic's ini parser.
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None

    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except DBAPIError as exc:
        raise unreachable(engine, exc) from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision`."""
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to `revision`."""
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, action: Any, revision: str) -> None:
    config = alembic_config(engine)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config, revision)
    except DBAPIError as exc:
        raise unreachable(engine, exc) from None
    except CommandError as exc:
        raise SchemaError(
            f"cannot migrate {_where(engine)} to {revision}: {exc}; if the "
            "database was migrated by a newer job, upgrade job instead"
        ) from None


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database is at the head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = _where(engine)
    if current is None:
        raise SchemaError(
            f"the database {where} has no job schema yet; run `job db upgrade`"
        )
    if current not in known_revisions():
        raise SchemaError(
            f"the database {where} is at schema revision {current}, which this "
            f"job does not know (its newest is {head}): a newer job migrated it; "
            "upgrade job"
        )
    raise SchemaError(
        f"the database {where} is at schema revision {current}, this job needs "
        f"{head}; run `job db upgrade`"
    )


def known_revisions() -> set[str]:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return {revision.revision for revision in script.walk_revisions()}


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# What a driver's message means for the user, when the usual advice is wrong.
_NUL = (
    "a record holds a NUL character (\\u0000), which PostgreSQL cannot store in "
    "JSON; fix the data at the source or store this source in SQLite"
)
_TOO_LONG = (
    "a record key is longer than the 512 characters the records table holds "
    "(or a source name longer than 200); check the source's primary_key"
)
_ADVICE = (
    ("readonly database", "the file or its folder is not writable; check permissions"),
    ("value too long for type character varying", _TOO_LONG),
    ("file is not a database", "database.url points at a file that is not SQLite"),
    ("cannot contain nul", _NUL),
    ("unsupported unicode escape", _NUL),
)


def unreachable(engine: Engine, exc: Exception) -> StorageError:
    """A StorageError for a database that refused or could not be reached.

    Locks and broken connections are a TransientStorageError: the pipeline
    retries the page with backoff, since its transaction was rolled back whole.
    """
    where = engine.url.render_as_string(hide_password=True)
    lines = str(getattr(exc, "orig", exc)).strip().splitlines() or ["no detail"]
    detail = redact_value(lines[0][:300])
    if is_locked(exc):
        return TransientStorageError(
            f"database {where} is locked by another writer ({detail}); if this "
            "lasts, find the process holding it or raise database.busy_timeout_s"
        )
    if is_disconnect(engine, exc):
        return TransientStorageError(
            f"database {where} dropped the connection ({detail}); check that the "
            "server is up"
        )

    for clue, advice in _ADVICE:
        if clue in detail.lower():
            return StorageError(f"database {where}: {detail}; {advice}")

    return StorageError(
        f"database {where} is not usable: {detail}; check "
        "database.url (or JOB_DATABASE_URL) and that the server is up"
    )


def is_locked(exc: Exception) -> bool:
    """A lock held elsewhere (SQLite busy, PostgreSQL lock_timeout): it passes."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(
        clue in text
        for clue in ("database is locked", "database table is locked", "lock timeout")
    )


def is_disconnect(engine: Engine, exc: Exception) -> bool:
    """A connection the server closed or never opened (a restart, a kill)."""
    if getattr(exc, "connection_invalidated", False):
        return True
    # psycopg reports a server that is down or restarting as OperationalError.
    return engine.dialect.name == "postgresql" and isinstance(exc, OperationalError)
