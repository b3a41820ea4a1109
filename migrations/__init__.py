"""Alembic migrations, installed as `job.migrations` so that they ship with job."""
