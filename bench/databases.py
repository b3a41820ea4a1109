"""A fresh, migrated database for each measurement: a SQLite file or a PG schema."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from job.storage import engine as db
from job.storage import scratch

POSTGRES_URL = os.environ.get(
    "JOB_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test"
)
KINDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Database:
    """Where one measurement writes: its URL, and the PG schema if any."""

    kind: str
    url: str
    folder: Path
    schema: str | None = None

    def engine(self) -> Engine:
        return db.make_engine(self.url)

    def records_written_by(self, run_id: int) -> int:
        """Rows of `records` whose last write was by this run, as the DB sees it."""
        engine = self.engine()
        try:
            with engine.connect() as connection:
                query = text("SELECT count(*) FROM records WHERE run_id = :run")
                return int(connection.execute(query, {"run": run_id}).scalar_one())
        finally:
            engine.dispose()

    def tuple_writes(self) -> int | None:
        """PostgreSQL's own count of rows inserted and updated in `records`."""
        if self.schema is None:
            return None
        engine = db.make_engine(POSTGRES_URL)
        query = text(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
            "WHERE schemaname = :schema AND relname = 'records'"
        )
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(query, {"schema": self.schema}).scalar_one()
                )
        finally:
            engine.dispose()


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used for benchmarks, or None when it can."""
    return scratch.postgres_problem(POSTGRES_URL)


@contextmanager
def fresh_database(kind: str, *, migrate: bool = True) -> Iterator[Database]:
    """An empty database of `kind` at the head revision, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"job-bench-{kind}-"))
    try:
        if kind == "sqlite":
            database = Database(kind, f"sqlite:///{folder / 'job.db'}", folder)
            _migrate(database, migrate)
            yield database
        else:
            with scratch.scratch_schema(POSTGRES_URL, "bench") as (schema, url):
                database = Database(kind, url, folder, schema)
                _migrate(database, migrate)
                yield database
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _migrate(database: Database, migrate: bool) -> None:
    if not migrate:
        return
    engine = database.engine()
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
