"""Who may write a source right now, across threads, processes and replicas.

Each source has one lock. A scheduled pull (or `job once`) takes it
exclusively; backfill windows take it shared, because two windows never
overlap but any window overlaps the open-ended incremental pull. So a backfill
and a scheduled pull never write the same records at the same time.

On PostgreSQL the lock is a session-level advisory lock held on a connection
of its own: if the process dies, the server ends the session and the lock
goes with it, so a killed replica never blocks the others. The key is hashed
from the schema and the source name, so two deployments in different schemas
of one database do not collide. On SQLite it is an `flock` on a file in a
folder next to the database, which the kernel releases when the process dies;
the daemon also takes one there so that a second daemon on the same file
refuses to start.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from job.errors import StorageError
from job.storage.engine import ping_when_idle

_KEY = "hashtextextended(current_schema() || '/job/' || :name, 0)"


class SourceLocks(Protocol):
    """Exclusive and shared locks per source name."""

    def exclusive(self, name: str, *, wait: bool) -> Any:
        """A context manager yielding True if the lock is held inside it."""

    def shared(self, name: str) -> Any:
        """A context manager that waits for the lock, shared with other holders."""


def locks_for(engine: Engine) -> SourceLocks:
    """The lock kind that fits the engine's database."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLocks(engine)
    database = engine.url.database
    if not database or database == ":memory:":
        # Only this process can see an in-memory database.
        return NoLocks()

    return FileLocks(Path(database))


class AdvisoryLocks:
    """PostgreSQL session-level advisory locks, one connection per held lock."""

    def __init__(self, engine: Engine) -> None:
        # Its own pool, apart from the one the pulls write through, so N held
        # locks never starve N writers. Connections are reused (a backfill
        # takes a lock per window), and each one gives up every advisory lock
        # it holds when it goes back to the pool: that is how a lock is
        # released. Session locks need no transaction, so the connections
        # run in autocommit: one round trip to take a lock, one to give it up,
        # and no session left idle in a transaction between windows.
        self._engine = create_engine(
            engine.url, pool_size=2, max_overflow=-1, isolation_level="AUTOCOMMIT"
        )
        ping_when_idle(self._engine)
        event.listen(self._engine, "reset", _unlock_all)

    @contextmanager
    def exclusive(self, name: str, *, wait: bool) -> Iterator[bool]:
        function = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        with self._held(name, function) as held:
            yield held

    @contextmanager
    def shared(self, name: str) -> Iterator[bool]:
        with self._held(name, "pg_advisory_lock_shared") as held:
            yield held

    @contextmanager
    def _held(self, name: str, function: str) -> Iterator[bool]:
        with self._engine.connect() as connection:
            result = connection.execute(
                text(f"SELECT {function}({_KEY})"), {"name": name}
            )
            value = result.scalar()
            # Only the try_ functions answer; the others return once held.
            yield bool(value) if function.startswith("pg_try_") else True


def _unlock_all(dbapi_connection: Any, _: Any, __: Any = None) -> None:
    # Every return to the pool: no lock travels with a pooled connection.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT pg_advisory_unlock_all()")
    finally:
        cursor.close()


class FileLocks:
    """`flock` on one file per source in `<database>-locks/`."""

    def __init__(self, database: Path) -> None:
        self.folder = database.with_name(database.name + "-locks")

    @contextmanager
    def exclusive(self, name: str, *, wait: bool) -> Iterator[bool]:
        mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        with self._held(f"source-{name}", mode) as held:
            yield held

    @contextmanager
    def shared(self, name: str) -> Iterator[bool]:
        with self._held(f"source-{name}", fcntl.LOCK_SH) as held:
            yield held

    @contextmanager
    def _held(self, name: str, mode: int) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        # flock belongs to the open file, so each holder opens its own.
        with open(self.folder / f"{name}.lock", "a+b") as handle:
            held = _flock(handle, mode)
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def daemon_lock(self) -> IO[bytes]:
        """Hold the daemon's lock for the life of the process, or refuse."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "daemon.lock"
        handle = open(path, "a+b")  # noqa: SIM115 - kept open while the daemon runs
        if not _flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB):
            handle.close()
            raise StorageError(
                f"another `job run` already uses the SQLite database "
                f"{self.folder.with_name(self.folder.name.removesuffix('-locks'))} "
                f"(it holds {path}); stop it first, or use PostgreSQL to run "
                "several replicas"
            )
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()

        return handle


def _flock(handle: IO[bytes], mode: int) -> bool:
    try:
        fcntl.flock(handle, mode)
    except BlockingIOError:
        return False

    return True


class NoLocks:
    """For an in-memory database, which no other process can reach."""

    def exclusive(self, name: str, *, wait: bool) -> Any:
        return nullcontext(True)

    def shared(self, name: str) -> Any:
        return nullcontext(True)
