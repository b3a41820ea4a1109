"""What the parts alone can do: the HTTP-only, DB-only and sandbox ceilings."""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from sqlalchemy.dialects import postgresql, sqlite

from bench.databases import Database
from bench.sandbox import BenchSandbox
from job.sandbox.records import RecordSet
from job.source import content_hash
from job.storage.tables import records


@dataclass(frozen=True)
class Rows:
    """Records ready to upsert, built before any clock starts."""

    rows: list[dict[str, Any]]

    @classmethod
    def build(cls, count: int, epoch: int = 0) -> Rows:
        now = datetime.now(UTC)
        rows = [
            {
                "source": "items",
                "record_key": str(record["id"]),
                "payload": record,
                "content_hash": content_hash(record),
                "first_seen_at": now,
                "last_seen_at": now,
                "run_id": 1,
            }
            for record in RecordSet(count).all_records(epoch)
        ]
        return cls(rows)


def http_ceiling(sandbox: BenchSandbox, page_size: int) -> float:
    """Records per second fetched and decoded with a Session, nothing stored."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {sandbox.token()}"
    base = _origin(sandbox.resource_url)
    url: str | None = f"{sandbox.resource_url}?page_size={page_size}"
    count = 0
    started = time.perf_counter()
    while url:
        response = session.get(url, timeout=30)
        response.raise_for_status()
        body = orjson.loads(response.content)
        count += len(body["items"])
        url = base + body["next"] if body["next"] else None

    return count / (time.perf_counter() - started)


def sandbox_ceiling(sandbox: BenchSandbox, page_size: int, *, flask: bool) -> float:
    """Records per second the server hands out to a bare keep-alive client."""
    resource = sandbox.urls["flask_resource_url" if flask else "resource_url"]
    parts = urlsplit(resource)
    headers = {"Authorization": f"Bearer {sandbox.token()}"}
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port)
    target: str | None = f"{parts.path}?page_size={page_size}"
    count = 0
    started = time.perf_counter()
    while target:
        connection.request("GET", target, headers=headers)
        body = connection.getresponse().read()
        # Counting records without decoding: each one starts with {"id":.
        count += body.count(b'{"id":')
        target = _next_target(body)
    elapsed = time.perf_counter() - started
    connection.close()

    return count / elapsed


def db_ceiling(database: Database, rows: Rows, page_size: int) -> float:
    """Records per second upserted per page with Core INSERT ... ON CONFLICT."""
    engine = database.engine()
    insert = postgresql.insert if database.kind == "postgresql" else sqlite.insert
    statement = insert(records)
    statement = statement.on_conflict_do_update(
        index_elements=[records.c.source, records.c.record_key],
        set_={
            "payload": statement.excluded.payload,
            "content_hash": statement.excluded.content_hash,
            "last_seen_at": statement.excluded.last_seen_at,
            "run_id": statement.excluded.run_id,
        },
        where=records.c.content_hash != statement.excluded.content_hash,
    )
    data = rows.rows
    started = time.perf_counter()
    for start in range(0, len(data), page_size):
        with engine.begin() as connection:
            connection.execute(statement, data[start : start + page_size])
    elapsed = time.perf_counter() - started
    engine.dispose()

    return len(data) / elapsed


def serial_ceiling(http_rate: float, db_rate: float) -> float:
    """The rate of fetching then storing each page, one after the other."""
    return 1 / (1 / http_rate + 1 / db_rate)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _next_target(body: bytes) -> str | None:
    tail = body[body.rfind(b'"next":') + 7 : -1]
    if tail == b"null":
        return None

    return tail.strip(b'"').decode()
