"""Per-source locks: exclusive for pulls, shared for backfill windows."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from job.locks import AdvisoryLocks, FileLocks, NoLocks, locks_for
from job.storage.engine import make_engine


class TestSourceLocks:
    def test_an_exclusive_lock_keeps_out_another(self, engine: Engine) -> None:
        """While one pull holds a source, a second cannot take it; after, it can."""
        locks = locks_for(engine)

        with (
            locks.exclusive("items", wait=False) as first,
            locks.exclusive("items", wait=False) as second,
        ):
            during = second
        with locks.exclusive("items", wait=False) as after:
            released = after

        assert (first, during, released) == (True, False, True)

    def test_shared_holders_go_together_and_keep_out_an_exclusive(
        self, engine: Engine
    ) -> None:
        """Two backfill windows at once; the scheduled pull is kept out."""
        locks = locks_for(engine)

        with (
            locks.shared("items") as one,
            locks.shared("items") as two,
            locks.exclusive("items", wait=False) as pull,
        ):
            blocked = pull

        assert (one, two, blocked) == (True, True, False)

    def test_sources_do_not_block_each_other(self, engine: Engine) -> None:
        """A lock on one source leaves the others free."""
        locks = locks_for(engine)

        with (
            locks.exclusive("items", wait=False),
            locks.exclusive("other", wait=False) as other,
        ):
            free = other

        assert free is True


class TestLockKinds:
    def test_sqlite_files_sit_next_to_the_database(self, tmp_path: Path) -> None:
        """A file database gets flock files in <file>-locks/."""
        locks = locks_for(make_engine(f"sqlite:///{tmp_path / 'job.db'}"))

        with locks.exclusive("items", wait=False):
            pass

        assert isinstance(locks, FileLocks)
        assert (tmp_path / "job.db-locks" / "source-items.lock").exists()

    def test_an_in_memory_database_needs_no_lock(self) -> None:
        """Nobody else can see an in-memory database."""
        assert isinstance(locks_for(make_engine("sqlite://")), NoLocks)


class TestAdvisoryLockConnections:
    def test_window_after_window_reuses_connections_and_leaves_no_lock(
        self, engine: Engine
    ) -> None:
        """Fifty windows in turn: a couple of sessions, and no advisory lock left."""
        if engine.dialect.name != "postgresql":
            pytest.skip("advisory locks are PostgreSQL's")
        locks = locks_for(engine)
        backends: set[int] = set()
        probe = "SELECT pid FROM pg_locks WHERE locktype = 'advisory'"

        for _ in range(50):
            with locks.shared("items"), engine.connect() as connection:
                backends.update(connection.execute(text(probe)).scalars())
        with engine.connect() as connection:
            left = connection.execute(text(probe)).all()

        assert 1 <= len(backends) <= 2
        assert left == []

    def test_a_lock_whose_unlock_was_lost_goes_with_the_pooled_connection(
        self, engine: Engine
    ) -> None:
        """A connection going back to the pool gives up every advisory lock."""
        if engine.dialect.name != "postgresql":
            pytest.skip("advisory locks are PostgreSQL's")
        locks = locks_for(engine)
        assert isinstance(locks, AdvisoryLocks)
        with locks._engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(42)"))
            connection.commit()

        with engine.connect() as other:
            free = other.execute(text("SELECT pg_try_advisory_lock(42)")).scalar()
            other.execute(text("SELECT pg_advisory_unlock(42)"))

        assert free is True
