"""Per-source SQL views with typed columns pulled out of each record's JSON.

A source's `columns:` map (`column: path` or `column: path::type`) becomes a
view `<source>_records`. Views follow the configuration, not the code, so they
are not Alembic revisions: they are dropped and created again from the
configuration by `job db upgrade` and at every daemon start, which is how a
change of `columns:` reaches the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from job.config import SourceSettings
from job.errors import ConfigError

log = structlog.get_logger("job.storage.views")

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")

# The SQL type each column type becomes, and how to get there from the JSON.
_POSTGRES_TYPES = {
    "integer": "bigint",
    "number": "double precision",
    "boolean": "boolean",
    "timestamp": "timestamptz",
}
_SQLITE_TYPES = {"integer": "INTEGER", "number": "REAL", "boolean": "INTEGER"}
TYPES = ("text", "integer", "number", "boolean", "timestamp", "json")

# The record's own columns every view starts with.
_BASE_COLUMNS = "record_key, first_seen_at, last_seen_at, run_id"


@dataclass(frozen=True)
class ViewColumn:
    """One column of a view: its name, where it is in the record, its type."""

    name: str
    path: tuple[str, ...]
    kind: str


def view_name(source: str) -> str:
    return f"{source}_records"


def parse_columns(source: SourceSettings) -> list[ViewColumn]:
    """The source's `columns:`, checked; a ConfigError names the bad entry."""
    parsed = []
    for name, spec in source.columns.items():
        where = f"sources.{source.name}.columns.{name}"
        path_text, _, kind = spec.partition("::")
        kind = kind.strip() or "text"
        path = tuple(path_text.strip().split("."))
        if not _COLUMN.match(name):
            raise ConfigError(f"{where}: a column name is letters, digits and _")
        if name in _BASE_COLUMNS.split(", "):
            raise ConfigError(f"{where}: every view has already {_BASE_COLUMNS}")
        if kind not in TYPES:
            raise ConfigError(
                f"{where}: type {kind!r} is not one of {', '.join(TYPES)}"
            )
        if not all(_SEGMENT.match(part) for part in path):
            raise ConfigError(
                f"{where}: {path_text!r} is not a path such as owner.id or tags.0"
            )
        parsed.append(ViewColumn(name, path, kind))

    return parsed


def sync_views(engine: Engine, sources: Iterable[SourceSettings]) -> list[str]:
    """Drop and recreate the view of each source with columns; return their names."""
    made = []
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Replicas starting together would race to drop and create.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('job views'))")
            )
        for source in sources:
            columns = parse_columns(source)
            name = view_name(source.name)
            connection.execute(text(f"DROP VIEW IF EXISTS {_quote(name)}"))
            if columns:
                connection.execute(
                    text(create_view_sql(connection, source.name, columns))
                )
                made.append(name)
    if made:
        log.info("views.updated", views=made)

    return made


def create_view_sql(
    connection: Connection, source: str, columns: list[ViewColumn]
) -> str:
    """CREATE VIEW for one source, in the connection's dialect."""
    postgres = connection.dialect.name == "postgresql"
    extract = _postgres_column if postgres else _sqlite_column
    selected = ", ".join(
        [
            _BASE_COLUMNS,
            *(f"{extract(column)} AS {_quote(column.name)}" for column in columns),
        ]
    )
    literal = source.replace("'", "''")

    # Names, paths and types are checked by parse_columns, then quoted.
    return (
        f"CREATE VIEW {_quote(view_name(source))} AS SELECT {selected} "  # noqa: S608
        f"FROM records WHERE source = '{literal}'"
    )


def _postgres_column(column: ViewColumn) -> str:
    path = "{" + ",".join(column.path) + "}"
    if column.kind == "json":
        return f"payload #> '{path}'"
    value = f"(payload #>> '{path}')"
    if column.kind == "integer":
        # 1126.48 as an integer: truncated toward zero, as SQLite's CAST does,
        # where a plain ::bigint would refuse the whole view.
        return f"trunc({value}::numeric)::bigint"
    sql_type = _POSTGRES_TYPES.get(column.kind)

    return f"{value}::{sql_type}" if sql_type else value


def _sqlite_column(column: ViewColumn) -> str:
    path = "$" + "".join(
        f"[{part}]" if part.isdigit() else f'."{part}"' for part in column.path
    )
    if column.kind == "json":
        # `->` gives JSON text for scalars too, as PostgreSQL's `#>` gives jsonb.
        return f"(payload -> '{path}')"
    value = f"json_extract(payload, '{path}')"
    if column.kind == "timestamp":
        # SQLite has no timestamp type: ISO 8601 text, which sorts as time does.
        return value

    return f"CAST({value} AS {_SQLITE_TYPES.get(column.kind, 'TEXT')})"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
