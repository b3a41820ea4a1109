"""Migrations with data in place: first revision, up to head, back, and up again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.stats import RunStats
from job.storage import engine as db
from job.storage.store import Record, Store, Watermark

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PAYLOADS: list[Any] = [
    {"id": 1, "name": "Zoë", "none": None, "nested": {"list": [1, 2.5, "🚀"]}},
    {"id": 2, "amount": 12.5, "active": False, "tags": []},
    None,
]


def fill_first_revision(engine: Engine) -> None:
    """Runs and records written with plain SQL, as revision 0001 had them."""
    with engine.begin() as connection:
        for number, status in enumerate(("succeeded", "failed", "running"), 1):
            connection.execute(
                text(
                    "INSERT INTO runs (source, trigger, status, started_at, pages,"
                    " inserted, error) VALUES ('items', 'once', :status, :at,"
                    " :pages, :pages, :error)"
                ),
                {
                    "status": status,
                    "at": _stored_time(engine, START + timedelta(minutes=number)),
                    "pages": number,
                    "error": "boom" if status == "failed" else None,
                },
            )
        for key, payload in enumerate(PAYLOADS, 1):
            connection.execute(
                text(
                    "INSERT INTO records (source, record_key, payload, content_hash,"
                    " first_seen_at, last_seen_at, run_id) VALUES ('items', :key,"
                    " :payload, :hash, :at, :at, 1)"
                ),
                {
                    "key": str(key),
                    "payload": orjson.dumps(payload).decode(),
                    "hash": f"h{key}",
                    "at": _stored_time(engine, START),
                },
            )


def _stored_time(engine: Engine, moment: datetime) -> Any:
    # SQLite keeps UTC wall time without an offset, as UTCDateTime writes it.
    return moment.replace(tzinfo=None) if engine.dialect.name == "sqlite" else moment


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything revision 0001 knows, read back through the Store."""
    store = Store(engine, FakeClock())
    runs = [
        {k: r[k] for k in ("id", "status", "started_at", "pages", "inserted", "error")}
        for r in store.recent_runs()
    ]
    records = {
        r["record_key"]: (r["payload"], r["content_hash"], r["first_seen_at"])
        for r in store.iter_records("items")
    }

    return {"runs": runs, "records": records}


class TestMigrations:
    def test_data_survives_upgrade_downgrade_and_upgrade_again(
        self, database_url: str
    ) -> None:
        """Runs and records filled at 0001 are intact at head, back at 0001, and up."""
        engine = db.make_engine(database_url)
        db.upgrade(engine, "0001")
        fill_first_revision(engine)
        db.upgrade(engine)
        at_head = snapshot(engine)
        db.downgrade(engine, "0001")
        back = snapshot_at_first(engine)
        db.upgrade(engine)

        assert len(at_head["runs"]) == 3
        assert at_head["runs"][0]["started_at"] == START + timedelta(minutes=3)
        assert at_head["runs"][1]["error"] == "boom"
        assert [at_head["records"][k][0] for k in ("1", "2", "3")] == PAYLOADS
        assert all(r[2] == START for r in at_head["records"].values())
        assert back == {"runs": 3, "records": 3, "payload_nulls": 0}
        assert snapshot(engine) == at_head
        engine.dispose()

    def test_head_columns_come_and_go_and_indexes_stay(self, database_url: str) -> None:
        """Windows and watermarks exist at head only; the runs indexes survive batch
        mode's table copy on SQLite."""
        engine = db.make_engine(database_url)
        db.upgrade(engine, "0001")
        fill_first_revision(engine)
        db.upgrade(engine)
        store = Store(engine, FakeClock())
        window = (START, START + timedelta(days=1))
        run = store.start_run("items", "backfill", window=window)
        store.write_page(
            run,
            "items",
            [Record("9", {"id": 9}, "h9")],
            RunStats(),
            Watermark("9", "number"),
        )

        db.downgrade(engine, "0001")
        first = inspect(engine)
        columns_at_first = {c["name"] for c in first.get_columns("runs")}
        tables_at_first = set(first.get_table_names())
        db.upgrade(engine)
        head = inspect(engine)

        assert "window_start" not in columns_at_first
        assert "source_state" not in tables_at_first
        assert {"ix_runs_status", "ix_runs_source_started_at"} <= {
            index["name"] for index in head.get_indexes("runs")
        }
        assert store.count_records("items") == 4
        assert store.watermark("items") is None
        assert store.recent_runs()[0]["window_start"] is None
        engine.dispose()

    def test_times_keep_their_instant_across_revisions(self, database_url: str) -> None:
        """A time written at +02:00 is the same instant at 0001 and at head."""
        engine = db.make_engine(database_url)
        db.upgrade(engine)
        clock = FakeClock(START.astimezone(timezone(timedelta(hours=2))))
        run = Store(engine, clock).start_run("items", "once")
        db.downgrade(engine, "0001")
        db.upgrade(engine)

        (row,) = Store(engine, clock).recent_runs()

        assert row["id"] == run
        assert row["started_at"] == START
        assert row["started_at"].utcoffset() == timedelta(0)
        engine.dispose()


def snapshot_at_first(engine: Engine) -> dict[str, int]:
    """Counts at revision 0001, where the Store's head tables do not fit."""
    with engine.connect() as connection:
        count = connection.execute
        return {
            "runs": count(text("SELECT count(*) FROM runs")).scalar_one(),
            "records": count(text("SELECT count(*) FROM records")).scalar_one(),
            "payload_nulls": count(
                text("SELECT count(*) FROM records WHERE payload IS NULL")
            ).scalar_one(),
        }
