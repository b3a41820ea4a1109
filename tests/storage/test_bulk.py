"""The bulk page upsert behind Store.write_page, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.errors import StorageError
from job.source import content_hash
from job.stats import RunStats
from job.storage.bulk import upsert_page
from job.storage.store import Record, Store
from job.storage.tables import records


def record(key: int | str, **fields: object) -> Record:
    payload = {"id": key, **fields}
    return Record(key=str(key), payload=payload, content_hash=content_hash(payload))


class TestUpsertPage:
    def test_returns_inserted_and_updated(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """The counts come from the database: new rows, then changed ones only."""
        with engine.begin() as connection:
            first = upsert_page(connection, "s", 1, [record(1), record(2)], clock.now())
        with engine.begin() as connection:
            page = [record(1), record(2, v=2), record(3)]
            second = upsert_page(connection, "s", 2, page, clock.now())

        assert first == (2, 0)
        assert second == (1, 1)

    def test_an_empty_page_writes_nothing(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """No rows, no statement, no counts."""
        with engine.begin() as connection:
            assert upsert_page(connection, "s", 1, [], clock.now()) == (0, 0)

    def test_each_page_counts_only_its_own_records(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """Nothing staged for one page is left over for the next."""
        store = Store(engine, clock)
        run = store.start_run("s", "once")
        counts = [
            store.write_page(run, "s", [record(n) for n in keys], RunStats())
            for keys in (range(0, 300), range(300, 400), range(350, 450))
        ]

        assert [(c.inserted, c.unchanged) for c in counts] == [
            (300, 0),
            (100, 0),
            (50, 50),
        ]
        assert store.count_records("s") == 450

    def test_stored_payload_and_times_match_the_core_path(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """Payloads read back as JSON and both times as the aware page time."""
        store = Store(engine, clock)
        run = store.start_run("s", "once")
        store.write_page(run, "s", [record(1, tags=["a", None], n=1.5)], RunStats())

        with engine.connect() as connection:
            row = connection.execute(select(records)).one()

        assert row.payload == {"id": 1, "tags": ["a", None], "n": 1.5}
        assert row.first_seen_at == clock.now() == row.last_seen_at
        assert row.run_id == run

    def test_times_are_stored_as_the_core_path_stores_them(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """The stored timestamps are byte for byte what a Core insert writes."""
        with engine.begin() as connection:
            upsert_page(connection, "bulk", 1, [record(1)], clock.now())
            connection.execute(
                records.insert().values(
                    source="core",
                    record_key="1",
                    payload={},
                    content_hash="x",
                    first_seen_at=clock.now(),
                    last_seen_at=clock.now(),
                    run_id=1,
                )
            )
            stored = connection.execute(
                text("SELECT source, CAST(last_seen_at AS TEXT) FROM records")
            ).all()

        assert len({text_ for _, text_ in stored}) == 1, stored

    def test_a_driver_error_becomes_a_storage_error(
        self, engine: Engine, clock: FakeClock
    ) -> None:
        """A failing page raises StorageError, and the next page still works."""
        store = Store(engine, clock)
        run = store.start_run("s", "once")
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE records RENAME TO records_away"))

        with pytest.raises(StorageError):
            store.write_page(run, "s", [record(1)], RunStats())

        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE records_away RENAME TO records"))
        assert store.write_page(run, "s", [record(1)], RunStats()).inserted == 1
