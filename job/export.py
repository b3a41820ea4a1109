"""How stored records are written out for other tools: JSON lines or CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import orjson

CSV_HEADER = ("record_key", "first_seen_at", "last_seen_at", "run_id", "payload")


def write_jsonl(rows: Iterable[dict[str, Any]], out: BinaryIO) -> None:
    """One record's payload per line, exactly as stored."""
    for row in rows:
        out.write(orjson.dumps(row["payload"]) + b"\n")


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """A header, then the key, times (UTC), run and payload (as JSON) per record."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow(
            [
                row["record_key"],
                _iso(row["first_seen_at"]),
                _iso(row["last_seen_at"]),
                row["run_id"],
                orjson.dumps(row["payload"]).decode(),
            ]
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
