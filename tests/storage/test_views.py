"""Per-source views from `columns:`, typed alike on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.config import SourceSettings
from job.errors import ConfigError
from job.sandbox import SandboxServer
from job.storage.views import parse_columns, sync_views
from tests.factories import make_pipeline, make_settings

COLUMNS = {
    "id": "id::integer",
    "name": "name",
    "amount": "amount::number",
    "active": "active::boolean",
    "region": "owner.region",
    "owner_id": "owner.id::integer",
    "first_tag": "tags.0",
    "tags": "tags::json",
    "updated": "updated_at::timestamp",
}


def source_with(columns: dict[str, str]) -> SourceSettings:
    return SourceSettings(
        name="items", provider="p", url="http://127.0.0.1/x", columns=columns
    )


def pulled(sandbox: SandboxServer, engine: Engine) -> None:
    settings = make_settings(sandbox, engine.url.render_as_string(False))
    assert make_pipeline(settings, FakeClock()).pull("items").succeeded


def query(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text(sql)))


def view_columns(engine: Engine) -> list[str]:
    return [column["name"] for column in inspect(engine).get_columns("items_records")]


class TestViews:
    def test_columns_are_extracted_and_typed(
        self, sandbox: SandboxServer, engine: Engine
    ) -> None:
        """Each column holds the record's value, with the type asked for."""
        pulled(sandbox, engine)
        sync_views(engine, [source_with(COLUMNS)])
        truth = {item["id"]: item for item in sandbox.state.all_records()}

        rows = query(engine, "SELECT * FROM items_records WHERE id = 12")

        (row,) = rows
        record = truth[12]
        assert row.record_key == "12"
        assert (row.id, row.name, row.region) == (12, record["name"], "eu-west")
        assert row.amount == pytest.approx(record["amount"])
        assert isinstance(row.amount, float)
        assert bool(row.active) is record["active"]
        assert row.owner_id == record["owner"]["id"]
        assert row.first_tag == record["tags"][0]
        assert str(row.updated).startswith("2024-01-01")
        tags = json.loads(row.tags) if isinstance(row.tags, str) else row.tags
        assert tags == record["tags"]

    def test_typed_columns_filter_and_sum_in_sql(
        self, sandbox: SandboxServer, engine: Engine
    ) -> None:
        """WHERE on an integer column and SUM of a number column match the data."""
        pulled(sandbox, engine)
        sync_views(engine, [source_with(COLUMNS)])
        truth = sandbox.state.all_records()

        ((count, total),) = query(
            engine, "SELECT COUNT(*), SUM(amount) FROM items_records WHERE id > 200"
        )

        assert count == 50
        assert total == pytest.approx(sum(r["amount"] for r in truth if r["id"] > 200))

    def test_a_fraction_as_integer_truncates_alike_on_both(
        self, sandbox: SandboxServer, engine: Engine
    ) -> None:
        """amount::integer keeps the whole part on both databases, never an error."""
        pulled(sandbox, engine)
        sync_views(
            engine, [source_with({"id": "id::integer", "whole": "amount::integer"})]
        )
        truth = {r["id"]: r["amount"] for r in sandbox.state.all_records()}

        rows = query(engine, "SELECT id, whole FROM items_records")

        assert len(rows) == len(truth)
        assert all(row.whole == int(truth[row.id]) for row in rows)

    def test_a_change_of_columns_updates_the_view(self, engine: Engine) -> None:
        """A column added shows up; columns emptied drop the view."""
        sync_views(engine, [source_with({"id": "id::integer"})])
        first = view_columns(engine)
        sync_views(engine, [source_with({"id": "id::integer", "name": "name"})])
        second = view_columns(engine)
        sync_views(engine, [source_with({})])

        assert first[-1] == "id"
        assert second[-2:] == ["id", "name"]
        assert "items_records" not in inspect(engine).get_view_names()

    def test_syncing_twice_is_harmless(self, engine: Engine) -> None:
        """The daemon syncs at every start: the second time changes nothing."""
        sync_views(engine, [source_with(COLUMNS)])

        assert sync_views(engine, [source_with(COLUMNS)]) == ["items_records"]


class TestParseColumns:
    @pytest.mark.parametrize(
        ("columns", "problem"),
        [
            ({"bad name": "id"}, "letters, digits and _"),
            ({"id": "id::uuid"}, "type 'uuid' is not one of"),
            ({"id": "owner['id']"}, "is not a path such as owner.id"),
            ({"run_id": "run"}, "every view has already"),
        ],
    )
    def test_a_bad_entry_is_a_config_error(
        self, columns: dict[str, str], problem: str
    ) -> None:
        """The error names the entry and what is wrong."""
        with pytest.raises(ConfigError, match=r"sources\.items\.columns") as caught:
            parse_columns(source_with(columns))

        assert problem in caught.value.message
