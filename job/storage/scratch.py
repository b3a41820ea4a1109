"""Throwaway PostgreSQL schemas, for the test suite and the benchmarks.

Each gets a fresh schema in one shared database, reached through a URL whose
`search_path` points at it, and dropped with everything in it afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url

from job.storage.engine import make_engine


def postgres_problem(url: str) -> str | None:
    """Why the PostgreSQL server at `url` cannot be used, or None when it can."""
    engine = make_engine(url)
    try:
        with engine.connect():
            return None
    except Exception as exc:
        return f"PostgreSQL at {url} is not usable: {exc}"
    finally:
        engine.dispose()


@contextmanager
def scratch_schema(url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """A new, empty schema and a URL that works in it; dropped on the way out."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield schema, scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
