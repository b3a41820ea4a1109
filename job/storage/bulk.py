"""The fast path of storing a page: one bulk upsert per page, counted by the database.

`Store.write_page` hands each page here. Profiling
`job once` showed SQLAlchemy's per-row bind processing (two datetimes and a
JSON value per record) as the largest cost on SQLite, and the lookup of known
hashes (one ``IN (...)`` query per page, which PostgreSQL plans as a scan of
a freshly loaded table) as the largest on PostgreSQL. So:

- values that are the same for the whole page (source, timestamps, run id)
  are rendered once, payloads are serialised with orjson, and rows go to the
  driver as plain tuples;
- on PostgreSQL the page goes to the server as one JSON parameter and is
  merged with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ...
  RETURNING``, whose rows tell inserted from updated (``xmax = 0`` on a
  fresh tuple), so no lookup is needed; the run's counters and the
  watermark move in the same statement, which is the page's whole
  transaction (one round trip per page: each one waits for the GIL on its
  way back, which is what a backfill's threads queue on);
- on SQLite the known hashes are read first (an index lookup there), and
  only new or changed records are written.

Either way an unchanged record is never written, and the ``WHERE`` on the
upsert leaves a row alone that another writer already brought up to date.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.engine import Connection

from job.stats import RunStats
from job.storage.tables import records

if TYPE_CHECKING:
    from job.storage.store import Record, Watermark

# Keys per IN (...) lookup: well under SQLite's variable limit.
_CHUNK = 500

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

# The page travels as one JSON array of {"k": key, "h": hash, "p": payload},
# parsed once as jsonb and unpacked by the server: one parameter, no COPY and
# no staging table. (As json it is parsed twice, about 10 % slower; a text[]
# parameter per column costs more still: psycopg quotes each element with a
# regular expression, which took longer than the whole merge.) A payload
# that is JSON null comes out of the recordset as SQL NULL, hence the
# coalesce. Only module constants are formatted into these statements;
# values are parameters.
_PG_MERGE = (
    "INSERT INTO records (source, record_key, payload, content_hash, "  # noqa: S608
    "first_seen_at, last_seen_at, run_id) "
    "SELECT %(source)s, k, coalesce(p, 'null'), h, %(now)s, %(now)s, "
    "%(run_id)s "
    "FROM jsonb_to_recordset(%(page)s::jsonb) AS page(k text, p jsonb, h text) "
    f"{_UPDATE_CHANGED} RETURNING (xmax = 0) AS fresh"
)
_PG_COUNTED = (
    "SELECT count(*) FILTER (WHERE fresh) AS inserted, "
    "count(*) FILTER (WHERE NOT fresh) AS updated FROM merged"
)
# psycopg sends a small int as smallint, and smallint + smallint overflows
# at 32,767: every count is cast to bigint before it is added.
_PG_COUNT_RUN = (
    "UPDATE runs SET pages = %(run_pages)s::bigint + 1, "
    "records_seen = %(run_records_seen)s::bigint + %(seen)s::bigint, "
    "inserted = %(run_inserted)s::bigint + counted.inserted, "
    "updated = %(run_updated)s::bigint + counted.updated, "
    "unchanged = %(run_unchanged)s::bigint + %(distinct)s::bigint "
    "- counted.inserted - counted.updated, retries = %(run_retries)s, "
    "rate_limit_waits = %(run_rate_limit_waits)s, "
    "token_requests = %(run_token_requests)s "
    "FROM counted WHERE runs.id = %(run_id)s"
)
_PG_SAVE_MARK = (
    "INSERT INTO source_state (source, cursor_value, cursor_kind, updated_at, "
    "run_id) VALUES (%(source)s, %(mark_value)s, %(mark_kind)s, %(now)s, "
    "%(run_id)s) ON CONFLICT (source) DO UPDATE SET "
    "cursor_value = excluded.cursor_value, cursor_kind = excluded.cursor_kind, "
    "updated_at = excluded.updated_at, run_id = excluded.run_id"
)
_PG_PARTS = f"WITH merged AS ({_PG_MERGE}), counted AS ({_PG_COUNTED})"
_PG_COUNTS = " SELECT inserted, updated FROM counted"
_PG_UPSERT = _PG_PARTS + _PG_COUNTS
_PG_WRITE_PAGE = f"{_PG_PARTS}, run AS ({_PG_COUNT_RUN}){_PG_COUNTS}"
_PG_WRITE_PAGE_AND_MARK = (
    f"{_PG_PARTS}, run AS ({_PG_COUNT_RUN}), mark AS ({_PG_SAVE_MARK}){_PG_COUNTS}"
)


def write_page_postgresql(
    connection: Connection,
    source: str,
    run_id: int,
    page: Sequence[Record],
    now: datetime,
    *,
    run_before: RunStats,
    seen: int,
    watermark: Watermark | None = None,
) -> tuple[int, int]:
    """Upsert a page, add it to the run's counters, and move the watermark.

    One statement does all three (the run's row and the watermark as parts
    of the same `WITH`), so on an autocommitted connection it is the page's
    whole transaction: one round trip per page, and all of it or none is
    stored. `run_before` are the run's counters before this page, `seen` the
    page's records before duplicate keys were dropped.
    """
    parameters = _page_parameters(connection, source, run_id, page, now)
    parameters.update(
        {f"run_{name}": value for name, value in run_before.as_dict().items()},
        seen=seen,
        distinct=len(page),
    )
    statement = _PG_WRITE_PAGE
    if watermark is not None:
        statement = _PG_WRITE_PAGE_AND_MARK
        parameters.update(mark_value=watermark.value, mark_kind=watermark.kind)
    inserted, updated = connection.exec_driver_sql(statement, parameters).one()

    return int(inserted), int(updated)


def _upsert_postgresql(
    connection: Connection,
    source: str,
    run_id: int,
    page: Sequence[Record],
    now: datetime,
) -> tuple[int, int]:
    parameters = _page_parameters(connection, source, run_id, page, now)
    inserted, updated = connection.exec_driver_sql(_PG_UPSERT, parameters).one()

    return int(inserted), int(updated)


def _page_parameters(
    connection: Connection,
    source: str,
    run_id: int,
    page: Sequence[Record],
    now: datetime,
) -> dict[str, Any]:
    rows = ",".join(
        f'{{"k":{_json_text(record.key)},"h":"{record.content_hash}",'
        f'"p":{record.payload_json}}}'
        for record in page
    )

    return {
        "source": source,
        "now": _bound_time(connection, now),
        "run_id": run_id,
        "page": f"[{rows}]",
    }


def _json_text(value: str) -> str:
    return orjson.dumps(value).decode()


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
