"""Records written out as JSON lines or CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from job.export import CSV_HEADER, write_csv, write_jsonl

ROW = {
    "record_key": "7",
    "payload": {"id": 7, "name": 'Zoë, "quoted"'},
    "first_seen_at": datetime(2026, 1, 1, tzinfo=UTC),
    "last_seen_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "run_id": 3,
}


class TestExport:
    def test_jsonl_is_the_payload_per_line(self) -> None:
        """Each line is the stored JSON, UTF-8, nothing added."""
        out = io.BytesIO()

        write_jsonl([ROW, ROW], out)

        lines = out.getvalue().decode().splitlines()
        assert lines == ['{"id":7,"name":"Zoë, \\"quoted\\""}'] * 2

    def test_csv_quotes_and_keeps_utc_times(self) -> None:
        """A header, commas and quotes escaped, times in UTC with Z."""
        out = io.StringIO()

        write_csv([ROW], out)

        header, row = list(csv.reader(io.StringIO(out.getvalue())))
        assert tuple(header) == CSV_HEADER
        assert row[:4] == ["7", "2026-01-01T00:00:00Z", "2026-01-02T03:04:05Z", "3"]
        assert row[4] == '{"id":7,"name":"Zoë, \\"quoted\\""}'
