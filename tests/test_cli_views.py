"""`job db upgrade` keeps the `<source>_records` views in step with `columns:`."""

from __future__ import annotations

from sqlalchemy import inspect, text

from job.sandbox import SandboxServer
from job.storage.engine import make_engine
from tests.processes import Job


def set_columns(job: Job, columns: str) -> None:
    """Rewrite the config with `columns:` on the items source (its last key)."""
    path = job.folder / "config.yaml"
    lines = [line for line in path.read_text().splitlines() if "columns:" not in line]
    lines.append(f"    columns: {columns}")
    path.write_text("\n".join(lines) + "\n")


class TestViewsCommand:
    def test_upgrade_creates_and_then_updates_the_view(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """A column added to columns: appears after the next db upgrade."""
        job.write_config(sandbox)
        set_columns(job, "{id: id::integer}")
        created = job("db", "upgrade")
        job("once")
        set_columns(job, "{id: id::integer, region: owner.region}")
        updated = job("db", "upgrade")

        assert created.returncode == 0, created.stderr
        assert "view items_records matches the columns:" in created.stdout
        assert updated.returncode == 0, updated.stderr
        engine = make_engine(f"sqlite:///{job.folder / 'job.db'}")
        columns = [c["name"] for c in inspect(engine).get_columns("items_records")]
        assert columns[-2:] == ["id", "region"]
        with engine.connect() as connection:
            found = connection.execute(
                text("SELECT COUNT(*) FROM items_records WHERE region = 'eu-west'")
            ).scalar_one()
        assert found == 62

    def test_a_bad_column_is_a_config_error(
        self, job: Job, sandbox: SandboxServer
    ) -> None:
        """An unknown type stops db upgrade with exit 2, naming the entry."""
        job.write_config(sandbox)
        set_columns(job, "{id: id::uuid}")

        result = job("db", "upgrade")

        assert result.returncode == 2
        assert "sources.items.columns.id" in result.stderr
