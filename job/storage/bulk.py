"""The fast path of storing a page: one bulk upsert per page, counted by the database.

`Store.write_page` hands each page here, inside its transaction. Profiling
`job once` showed SQLAlchemy's per-row bind processing (two datetimes and a
JSON value per record) as the largest cost on SQLite, and the lookup of known
hashes (one ``IN (...)`` query per page, which PostgreSQL plans as a scan of
a freshly loaded table) as the largest on PostgreSQL. So:

- values that are the same for the whole page (source, timestamps, run id)
  are rendered once, payloads are serialised with orjson, and rows go to the
  driver as plain tuples;
- on PostgreSQL the page is ``COPY``-ed into a temporary table and merged
  with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... RETURNING``,
  whose rows tell inserted from updated (``xmax = 0`` on a fresh tuple), so
  no lookup is needed;
- on SQLite the known hashes are read first (an index lookup there), and
  only new or changed records are written.

Either way an unchanged record is never written, and the ``WHERE`` on the
upsert leaves a row alone that another writer already brought up to date.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from job.storage.tables import records

if TYPE_CHECKING:
    from job.storage.store import Record

# Keys per IN (...) lookup: well under SQLite's variable limit.
_CHUNK = 500

_STAGE = "job_page_stage"
_STAGE_COLUMNS = "record_key, payload, content_hash"
_UPDATE_CHANGED = (
    "ON CONFLICT (source, record_key) DO UPDATE SET "
    "payload = excluded.payload, content_hash = excluded.content_hash, "
    "last_seen_at = excluded.last_seen_at, run_id = excluded.run_id "
    "WHERE records.content_hash <> excluded.content_hash"
)


def upsert_page(
    connection: Connection,
    source: str,
    run_id: int,
    page: Sequence[Record],
    now: datetime,
) -> tuple[int, int]:
    """Write the new and changed records of a page; return (inserted, updated).

    The keys in `page` must be unique (the caller keeps the last of each).
    """
    if not page:
        return 0, 0
    if connection.dialect.name == "postgresql":
        return _upsert_postgresql(connection, source, run_id, page, now)

    return _upsert_sqlite(connection, source, run_id, page, now)


def _bound_time(connection: Connection, now: datetime) -> Any:
    # The same text (SQLite) or value (PostgreSQL) SQLAlchemy would bind for
    # the column, worked out once per page instead of twice per row.
    column_type = records.c.last_seen_at.type.dialect_impl(connection.dialect)
    process = column_type.bind_processor(connection.dialect)

    return process(now) if process else now


# PostgreSQL


def create_stage(cursor: Any) -> None:
    """Make the session's stage table; `make_engine` does it on each new connection.

    Temporary, so it lives as long as the database session and no longer;
    its rows never outlive the page's transaction (deleted at commit, or
    gone with the rollback of a failed page). Made once per session rather
    than per page: it costs a round trip and a catalog lookup every time.
    """
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (record_key text NOT NULL, "
        "payload jsonb NOT NULL, content_hash text NOT NULL) ON COMMIT DELETE ROWS"
    )


def _upsert_postgresql(
    connection: Connection,
    source: str,
    run_id: int,
    page: Sequence[Record],
    now: datetime,
) -> tuple[int, int]:
    dbapi_error = connection.dialect.loaded_dbapi.Error
    raw = connection.connection.driver_connection
    assert raw is not None
    try:
        with raw.cursor() as cursor:
            fresh = _merge_staged(
                cursor, source, run_id, page, _bound_time(connection, now)
            )
    except dbapi_error as exc:
        # Driver errors raised outside SQLAlchemy, wrapped as it would, so the
        # Store turns them into a StorageError like any other.
        raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
    inserted = sum(fresh)

    return inserted, len(fresh) - inserted


def _merge_staged(
    cursor: Any, source: str, run_id: int, page: Sequence[Record], stamp: Any
) -> list[bool]:
    with cursor.copy(f"COPY {_STAGE} ({_STAGE_COLUMNS}) FROM STDIN") as copy:
        for record in page:
            copy.write_row((record.key, record.payload_json, record.content_hash))
    cursor.execute(
        # Only module constants are formatted in; values are parameters.
        "INSERT INTO records (source, record_key, payload, content_hash, "  # noqa: S608
        "first_seen_at, last_seen_at, run_id) "
        "SELECT %(source)s, record_key, payload, content_hash, %(now)s, %(now)s, "
        f"%(run_id)s FROM {_STAGE} {_UPDATE_CHANGED} RETURNING (xmax = 0)",
        {"source": source, "now": stamp, "run_id": run_id},
    )

    return [bool(row[0]) for row in cursor.fetchall()]


# SQLite


def _upsert_sqlite(
    connection: Connection,
    source: str,
    run_id: int,
    page: Sequence[Record],
    now: datetime,
) -> tuple[int, int]:
    known = _known_hashes(connection, source, [record.key for record in page])
    written = [
        record for record in page if known.get(record.key) != record.content_hash
    ]
    if written:
        stamp = _bound_time(connection, now)
        connection.exec_driver_sql(
            "INSERT INTO records (source, record_key, payload, content_hash, "  # noqa: S608
            "first_seen_at, last_seen_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?) "
            + _UPDATE_CHANGED,
            [
                (
                    source,
                    record.key,
                    record.payload_json,
                    record.content_hash,
                    stamp,
                    stamp,
                    run_id,
                )
                for record in written
            ],
        )
    inserted = sum(1 for record in written if record.key not in known)

    return inserted, len(written) - inserted


def _known_hashes(
    connection: Connection, source: str, keys: list[str]
) -> dict[str, str]:
    known: dict[str, str] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = connection.exec_driver_sql(
            "SELECT record_key, content_hash FROM records "  # noqa: S608
            f"WHERE source = ? AND record_key IN ({marks})",
            (source, *chunk),
        )
        known.update((key, digest) for key, digest in rows)

    return known
