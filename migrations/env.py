"""Alembic environment: job hands over an open connection (see job.storage.engine)."""

from __future__ import annotations

from alembic import context

from job.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit(
        "run migrations with `job db upgrade`, which knows the database URL"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
