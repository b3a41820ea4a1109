"""Runs, upserts and watermarks, on SQLite and on PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError

from job.clock import FakeClock
from job.errors import ConfigError, StorageError
from job.source import content_hash
from job.stats import RunStats
from job.storage import engine as db
from job.storage.history import abandon_runs
from job.storage.store import Record, Store, Watermark
from job.storage.tables import records, source_state


def record(key: int, **fields: object) -> Record:
    payload = {"id": key, "name": f"n{key}", **fields}
    return Record(key=str(key), payload=payload, content_hash=content_hash(payload))


class TestRuns:
    def test_a_run_is_recorded_with_aware_utc_times(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """started_at and finished_at come back timezone-aware, in UTC."""
        store = Store(engine, clock)
        run_id = store.start_run("items", "once")
        clock.advance(5)
        stats = RunStats(pages=2, records_seen=10, inserted=10)
        store.finish_run(run_id, "succeeded", stats)

        (row,) = store.recent_runs()

        assert row["status"] == "succeeded"
        assert row["started_at"] == datetime(2026, 1, 1, tzinfo=UTC)
        assert row["finished_at"].utcoffset().total_seconds() == 0
        assert (row["finished_at"] - row["started_at"]).total_seconds() == 5
        assert (row["pages"], row["records_seen"], row["inserted"]) == (2, 10, 10)

    def test_running_runs_of_one_source_are_marked_abandoned(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """abandon_runs closes that source's `running` runs and no others."""
        store = Store(engine, clock)
        store.start_run("items", "schedule")
        other = store.start_run("other", "schedule")

        assert abandon_runs(engine, clock, "items") == 1
        statuses = {run["id"]: run["status"] for run in store.recent_runs()}
        assert sorted(statuses.values()) == ["abandoned", "running"]
        assert statuses[other] == "running"


class TestWritePage:
    def test_counts_inserted_updated_and_unchanged(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """New rows are inserted, changed ones updated, identical ones left alone."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        first = store.write_page(run, "items", [record(1), record(2)], RunStats())

        second = store.write_page(
            run, "items", [record(1), record(2, name="changed"), record(3)], RunStats()
        )

        assert (first.inserted, first.updated, first.unchanged) == (2, 0, 0)
        assert (second.inserted, second.updated, second.unchanged) == (1, 1, 1)
        assert store.count_records("items") == 3

    def test_unchanged_rows_are_not_written(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """An identical record keeps its run id and last_seen_at."""
        store = Store(engine, clock)
        first_run = store.start_run("items", "once")
        store.write_page(first_run, "items", [record(1)], RunStats())
        clock.advance(60)
        second_run = store.start_run("items", "once")

        store.write_page(second_run, "items", [record(1)], RunStats())

        (row,) = list(store.iter_records("items"))
        assert row["run_id"] == first_run
        assert row["last_seen_at"] == datetime(2026, 1, 1, tzinfo=UTC)

    def test_a_changed_record_keeps_first_seen_and_moves_last_seen(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """An update replaces the payload and run id, not first_seen_at."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        store.write_page(run, "items", [record(1)], RunStats())
        clock.advance(60)

        store.write_page(run + 1, "items", [record(1, name="new")], RunStats())

        (row,) = list(store.iter_records("items"))
        assert row["payload"]["name"] == "new"
        assert row["run_id"] == run + 1
        assert row["first_seen_at"] == datetime(2026, 1, 1, tzinfo=UTC)
        assert (row["last_seen_at"] - row["first_seen_at"]).total_seconds() == 60

    def test_a_key_twice_in_one_page_is_stored_once(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """The last occurrence on a page wins."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")

        store.write_page(run, "items", [record(1), record(1, name="last")], RunStats())

        (row,) = list(store.iter_records("items"))
        assert row["payload"]["name"] == "last"

    def test_sources_do_not_share_keys(self, engine: Engine, clock: FakeClock) -> None:
        """The same key in two sources is two records."""
        store = Store(engine, clock)
        run = store.start_run("a", "once")

        store.write_page(run, "a", [record(1)], RunStats())
        store.write_page(run, "b", [record(1)], RunStats())

        assert store.count_records() == 2

    def test_json_round_trips_nulls_and_nesting(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """JSON null, nesting and unicode come back as they went in."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        payload = {"id": 1, "none": None, "nested": {"list": [1, 2.5, "é"]}}
        rows = [Record("1", payload, content_hash(payload))]

        store.write_page(run, "items", rows, RunStats())

        with engine.connect() as connection:
            stored = connection.execute(select(records.c.payload)).scalar_one()
        assert stored == payload

    def test_large_pages_are_batched(self, engine: Engine, clock: FakeClock) -> None:
        """A page larger than one batch is stored whole."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")

        counts = store.write_page(
            run, "items", [record(i) for i in range(1234)], RunStats()
        )

        assert counts.inserted == 1234
        assert store.count_records("items") == 1234

    def test_the_watermark_moves_with_the_page(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """The watermark is saved in the page's transaction and read back."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        mark = Watermark("2026-01-01T00:00:00Z", "datetime")

        store.write_page(run, "items", [record(1)], RunStats(), mark)
        store.write_page(
            run, "items", [record(2)], RunStats(), Watermark("5", "number")
        )

        assert store.watermark("items") == Watermark("5", "number")
        assert store.watermark("other") is None

    def test_the_run_row_counts_every_page(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """The run's counters are committed with each page."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        stats = RunStats()

        store.write_page(run, "items", [record(1), record(2)], stats)
        store.write_page(run, "items", [record(2), record(3)], stats)

        row = store.recent_runs()[0]
        assert (row["pages"], row["records_seen"]) == (2, 4)
        assert (row["inserted"], row["unchanged"]) == (3, 1)

    def test_counters_go_past_a_smallint(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """A run past 32,767 records counts on (psycopg sends small ints as int2)."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        big = 32_766  # still a smallint, as psycopg sends it; the sums are not
        stats = RunStats(pages=big, records_seen=big, inserted=big, unchanged=big)

        store.write_page(run, "items", [record(1), record(1), record(2)], stats)

        row = store.recent_runs()[0]
        assert (row["pages"], row["records_seen"]) == (big + 1, big + 3)
        assert (row["inserted"], row["unchanged"]) == (big + 2, big)
        assert (stats.pages, stats.records_seen, stats.inserted) == (
            big + 1,
            big + 3,
            big + 2,
        )

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
    def test_sqlite_writers_of_one_process_take_turns(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """Backfill threads queue in the process, never in SQLite's busy handler."""
        store = Store(engine, clock)
        runs = [store.start_run("items", "backfill") for _ in range(8)]
        inside = {"now": 0, "most": 0}

        def began(*_: Any) -> None:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])

        def ended(*_: Any) -> None:
            inside["now"] -= 1

        event.listen(engine, "begin", began)
        event.listen(engine, "commit", ended)

        def write(worker: int) -> None:
            stats = RunStats()
            for page in range(10):
                first = (worker * 10 + page) * 20
                batch = [record(key) for key in range(first, first + 20)]
                store.write_page(runs[worker], "items", batch, stats)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(8)))

        assert inside["most"] == 1
        assert store.count_records("items") == 8 * 10 * 20

    def test_counts_made_elsewhere_during_a_write_are_kept(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """A retry counted by the read-ahead thread mid-write is not overwritten."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        stats = RunStats(retries=1)

        def fetch_retried(*_: Any) -> None:
            stats.retries += 1

        event.listen(engine, "before_cursor_execute", fetch_retried, once=True)
        store.write_page(run, "items", [record(1)], stats)

        assert (stats.pages, stats.inserted, stats.retries) == (1, 1, 2)


class TestSchema:
    def test_an_empty_database_says_to_upgrade(self, database_url: str) -> None:
        """No schema: SchemaError naming `job db upgrade`."""
        engine = db.make_engine(database_url)

        with pytest.raises(db.SchemaError, match="job db upgrade"):
            db.check_schema(engine)

    def test_a_database_behind_says_to_upgrade(self, database_url: str) -> None:
        """An older revision: SchemaError naming both revisions."""
        engine = db.make_engine(database_url)
        db.upgrade(engine, "0001")

        with pytest.raises(db.SchemaError, match=r"0001.*job db upgrade"):
            db.check_schema(engine)

    def test_upgrade_and_downgrade_keep_the_data(
        self, database_url: str, clock: FakeClock
    ) -> None:
        """Rows written at the first revision survive head and back."""
        engine = db.make_engine(database_url)
        db.upgrade(engine, "0001")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO runs (source, trigger, status, started_at) "
                    "VALUES ('items', 'once', 'succeeded', :now)"
                ),
                {"now": datetime(2026, 1, 1)},
            )
            connection.execute(
                text(
                    "INSERT INTO records (source, record_key, payload, content_hash,"
                    " first_seen_at, last_seen_at, run_id) VALUES ('items', '1',"
                    " :payload, 'h', :now, :now, 1)"
                ),
                {"payload": '{"id": 1}', "now": datetime(2026, 1, 1)},
            )

        db.upgrade(engine)
        db.check_schema(engine)
        assert Store(engine, clock).recent_runs()[0]["source"] == "items"
        db.downgrade(engine, "0001")

        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 1
            assert (
                connection.execute(text("SELECT count(*) FROM records")).scalar() == 1
            )

    def test_sqlite_runs_in_wal_mode(self, tmp_path: object) -> None:
        """SQLite files use WAL so readers do not block the writer."""
        engine = db.make_engine(f"sqlite:///{tmp_path}/wal.db")

        with engine.connect() as connection:
            mode = connection.execute(text("PRAGMA journal_mode")).scalar()

        assert mode == "wal"


class TestStorageDetails:
    def test_json_null_is_a_json_value_never_sql_null(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """A record that is JSON null, or holds one, is stored as JSON on both."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        rows = [
            Record("null", None, content_hash(None)),
            Record("inner", {"a": None}, content_hash({"a": None})),
        ]

        store.write_page(run, "items", rows, RunStats())

        with engine.connect() as connection:
            sql_nulls = connection.execute(
                text("SELECT count(*) FROM records WHERE payload IS NULL")
            ).scalar_one()
        payloads = {r["record_key"]: r["payload"] for r in store.iter_records("items")}
        assert sql_nulls == 0
        assert payloads == {"null": None, "inner": {"a": None}}

    def test_every_stored_time_comes_back_aware_in_utc(self, engine: Engine) -> None:
        """Times given at +02:00 are read back as the same instant, in UTC."""
        plus_two = timezone(timedelta(hours=2))
        clock = FakeClock(datetime(2026, 6, 1, 14, 0, tzinfo=plus_two))
        store = Store(engine, clock)
        window = (datetime(2026, 5, 1, 2, 0, tzinfo=plus_two), clock.now())
        run = store.start_run("items", "backfill", window=window)
        store.write_page(
            run, "items", [record(1)], RunStats(), Watermark("1", "number")
        )
        store.finish_run(run, "succeeded", RunStats())

        (row,) = store.recent_runs()
        (stored,) = store.iter_records("items")
        with engine.connect() as connection:
            state_at = connection.execute(
                select(source_state.c.updated_at)
            ).scalar_one()
        times = [
            row["started_at"],
            row["finished_at"],
            row["window_start"],
            row["window_end"],
            stored["first_seen_at"],
            stored["last_seen_at"],
            state_at,
        ]

        assert all(t.utcoffset() == timedelta(0) for t in times)
        assert row["started_at"] == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
        assert row["window_start"] == datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
        assert stored["first_seen_at"] == clock.now()

    def test_naive_times_are_refused(self, engine: Engine, clock: FakeClock) -> None:
        """A naive datetime is a bug: storing it fails instead of guessing a zone."""
        store = Store(engine, clock)

        with pytest.raises(StatementError, match="naive datetimes"):
            store.start_run(
                "items", "backfill", window=(datetime(2026, 1, 1), clock.now())
            )

    def test_upserts_are_batched_not_one_round_trip_per_record(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """1234 records go out in one INSERT ... ON CONFLICT, not 1234."""
        sent = statements_sent(engine)
        store = Store(engine, clock)
        run = store.start_run("items", "once")

        store.write_page(run, "items", [record(i) for i in range(1234)], RunStats())

        # On PostgreSQL each statement shows twice (see statements_sent).
        inserts = sorted({s for s in sent if "INSERT INTO records" in s})
        assert len(inserts) == 1
        assert "ON CONFLICT" in inserts[0]
        assert store.count_records("items") == 1234

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_key_too_long_for_the_table_says_so(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """Not "check database.url": the key and its limit, and nothing stored."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        long_key = Record(key="k" * 600, payload={}, content_hash="h")

        with pytest.raises(StorageError) as caught:
            store.write_page(run, "items", [record(1), long_key], RunStats())

        assert "512 characters" in caught.value.message
        assert "primary_key" in caught.value.message
        assert "database.url" not in caught.value.message
        assert store.count_records("items") == 0

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_page_is_one_statement_on_postgresql(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """Records, run counters and watermark go in one autocommitted statement."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        sent = statements_sent(engine)

        store.write_page(
            run, "items", [record(1), record(2)], RunStats(), Watermark("7", "number")
        )

        (statement,) = set(sent)
        for table in ("INSERT INTO records", "UPDATE runs", "INSERT INTO source_state"):
            assert table in statement
        assert store.watermark("items") == Watermark("7", "number")
        assert store.recent_runs()[0]["inserted"] == 2


def statements_sent(engine: Engine) -> list[str]:
    """Every statement sent from now on, through SQLAlchemy or a raw cursor."""
    sent: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: sent.append(statement),
    )
    if engine.dialect.name == "postgresql":
        import psycopg

        class Counting(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                # Statements SQLAlchemy sends show twice; the bulk path's once.
                sent.append(str(query))
                return super().execute(query, *args, **kwargs)

        def on_connect(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.cursor_factory = Counting

        event.listen(engine, "connect", on_connect)
        engine.dispose()

    return sent


class TestEngineErrors:
    """Database mistakes are errors that say what to do, never tracebacks."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://root@127.0.0.1:abc/x", "is not a database URL"),
            ("not a url", "is not a database URL"),
            ("mysql://root@127.0.0.1/db", "mysql is not supported"),
        ],
    )
    def test_bad_urls_are_config_errors(self, url: str, expected: str) -> None:
        """A malformed or unsupported URL names database.url."""
        with pytest.raises(ConfigError, match=expected):
            db.make_engine(url)

    def test_a_file_that_is_not_sqlite_says_so(self, tmp_path: Path) -> None:
        """Pointing at a text file is a StorageError naming the problem."""
        path = tmp_path / "notes.txt"
        path.write_text("hello, this is not a database" * 100)

        with pytest.raises(StorageError, match="not SQLite"):
            db.check_schema(db.make_engine(f"sqlite:///{path}"))

    def test_a_schema_newer_than_the_code_says_upgrade_job(
        self, database_url: str
    ) -> None:
        """An unknown revision is blamed on an older job, not on the database."""
        engine = db.make_engine(database_url)
        db.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))

        with pytest.raises(db.SchemaError, match="newer job migrated it; upgrade job"):
            db.check_schema(engine)
        with pytest.raises(db.SchemaError, match="upgrade job instead"):
            db.upgrade(engine)

    def test_a_nul_character_is_explained_on_postgresql(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """SQLite keeps a NUL; PostgreSQL cannot, and the error says why."""
        store = Store(engine, clock)
        run = store.start_run("items", "once")
        payload = {"id": 1, "name": "a\x00b"}
        page = [Record("1", payload, content_hash(payload))]

        if engine.dialect.name == "sqlite":
            store.write_page(run, "items", page, RunStats())
            assert next(store.iter_records("items"))["payload"] == payload
            return
        with pytest.raises(StorageError, match="NUL character"):
            store.write_page(run, "items", page, RunStats())
