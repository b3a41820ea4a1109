"""Reading a source: every pagination style, record paths and keys, loop guards.

Pulls run end to end against the real sandbox (its `paging=` styles) into a
SQLite database; storage on both databases is covered in tests/storage and
tests/test_pipeline*.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from job.clock import FakeClock
from job.errors import PermanentFetchError
from job.pipeline import Pipeline, RunResult
from job.sandbox import SandboxServer
from job.source import CursorValue, lookup, max_cursor, parse_instant, record_key
from job.storage import engine as db
from tests.factories import make_pipeline, make_settings
from tests.listeners import EMPTY_PAGE, listening

STYLES: dict[str, dict[str, Any]] = {
    "next": {"next": "links.next"},
    "link": {"style": "link_header"},
    "cursor": {"cursor": "meta.next_cursor", "param": "cursor"},
    "page": {"page": "page", "size": 40, "size_param": "per_page"},
    "offset": {"offset": "offset", "limit": "limit", "size": 40},
}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database."""
    url = f"sqlite:///{tmp_path / 'job.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()

    return url


def styled(style: str, **params: str) -> dict[str, Any]:
    """Source settings for one of the sandbox's `paging=` styles."""
    sizes = {} if style in ("page", "offset") else {"page_size": "40"}
    return {
        "params": {"paging": style, **sizes, **params},
        "records": "data.items",
        "pagination": STYLES[style],
    }


def run(
    sandbox: SandboxServer, database_url: str, clock: FakeClock, **source: Any
) -> tuple[RunResult, Pipeline]:
    settings = make_settings(sandbox, database_url, source=source)
    pipeline = make_pipeline(settings, clock)
    return pipeline.pull("items"), pipeline


def stored(pipeline: Pipeline) -> dict[str, Any]:
    return {
        row["record_key"]: row["payload"]
        for row in pipeline.store.iter_records("items")
    }


def truth(sandbox: SandboxServer) -> dict[str, Any]:
    return {str(record["id"]): record for record in sandbox.state.all_records()}


class TestPaginationStyles:
    @pytest.mark.parametrize(
        ("style", "pages"),
        [("next", 7), ("link", 7), ("cursor", 7), ("page", 8), ("offset", 8)],
    )
    def test_every_style_pulls_every_record_once(
        self,
        sandbox: SandboxServer,
        sqlite_url: str,
        clock: FakeClock,
        style: str,
        pages: int,
    ) -> None:
        """Each style walks all 250 records in pages of 40; page/offset end empty."""
        result, pipeline = run(sandbox, sqlite_url, clock, **styled(style))

        assert result.succeeded, result.error
        assert stored(pipeline) == truth(sandbox)
        assert result.stats.pages == pages
        assert (result.stats.records_seen, result.stats.inserted) == (250, 250)

    def test_relative_next_links_resolve_against_the_request(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """`protected-resource?...` (no leading slash) resolves in /data/."""
        caller = make_pipeline(make_settings(sandbox, sqlite_url), clock)
        auth = caller.tokens.for_provider(caller.settings.providers["sandbox"])
        body = caller._session.get(
            sandbox.resource_url, params={"paging": "next"}, auth=auth, timeout=5
        ).json()

        result, _ = run(sandbox, sqlite_url, clock, **styled("next"))

        assert body["links"]["next"].startswith("protected-resource?")
        assert result.succeeded, result.error

    def test_offset_steps_by_what_came_when_the_server_caps_the_size(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """Asking 40 a page from a server that gives 30 still gets every record."""
        sandbox.state.max_page_size = 30

        result, pipeline = run(sandbox, sqlite_url, clock, **styled("offset"))

        assert result.succeeded, result.error
        assert stored(pipeline) == truth(sandbox)
        assert result.stats.pages == 10

    def test_a_page_past_the_end_is_empty_and_ends_the_pull(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """With nothing to serve, the first (empty) page is the last."""
        since = {"since": "2030-01-01T00:00:00Z"}

        result, pipeline = run(sandbox, sqlite_url, clock, **styled("page", **since))

        assert result.succeeded, result.error
        assert (result.stats.pages, result.stats.records_seen) == (1, 0)
        assert stored(pipeline) == {}


class TestLoopGuards:
    @pytest.mark.parametrize("style", ["next", "link", "cursor"])
    def test_a_repeated_link_or_cursor_stops_the_pull(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock, style: str
    ) -> None:
        """The page served again is an error, not a loop; what came stays stored."""
        sandbox.state.repeat_next_link = True

        result, pipeline = run(sandbox, sqlite_url, clock, **styled(style))

        # Page 1 has no position in its URL; page 2 names position 0, and
        # asking for that a second time is the loop.
        assert result.status == "failed"
        assert "again (page 3)" in str(result.error)
        assert len(stored(pipeline)) == 40
        assert sandbox.state.resource_requests == 2

    def test_max_pages_is_a_backstop(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """More pages than max_pages fails the run, keeping what was stored."""
        result, pipeline = run(
            sandbox, sqlite_url, clock, max_pages=3, **styled("page")
        )

        assert result.status == "failed"
        assert "max_pages=3" in str(result.error)
        assert len(stored(pipeline)) == 120


class TestOrigins:
    def test_a_next_link_to_another_origin_is_refused(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """The token goes nowhere else: the run fails before asking the other host."""
        with listening() as other:
            source = styled("next", next_base=other.url)
            result, pipeline = run(sandbox, sqlite_url, clock, **source)

        assert result.status == "failed"
        assert "allow_cross_origin" in str(result.error)
        assert other.seen == []
        assert len(stored(pipeline)) == 40

    def test_another_origin_is_followed_when_the_source_allows_it(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """allow_cross_origin: true follows the link, bearer token included."""
        with listening() as other:
            source = styled("link", next_base=other.url)
            result, _ = run(
                sandbox, sqlite_url, clock, allow_cross_origin=True, **source
            )

        assert result.succeeded, result.error
        (request,) = other.seen
        assert request.headers["Authorization"].startswith("Bearer ")

    def test_a_redirect_to_another_origin_is_refused(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """A 302 from the resource to another host is not followed with the token."""
        with listening() as target:
            moved = (302, {"Location": target.url + "/elsewhere"}, b"")
            with listening(lambda path: moved) as resource:
                result, _ = run(
                    sandbox,
                    sqlite_url,
                    clock,
                    url=resource.url + "/data",
                    **styled("next"),
                )

        assert result.status == "failed"
        assert "redirected to" in str(result.error)
        assert target.seen == []

    def test_a_redirect_within_the_origin_is_followed(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """A same-origin redirect is followed and carries the token."""

        def answer(path: str) -> tuple[int, dict[str, str], bytes]:
            if path.startswith("/old"):
                return 301, {"Location": "/new"}, b""
            return EMPTY_PAGE

        with listening(answer) as resource:
            result, _ = run(
                sandbox, sqlite_url, clock, url=resource.url + "/old", **styled("next")
            )

        assert result.succeeded, result.error
        assert [seen.path.split("?")[0] for seen in resource.seen] == ["/old", "/new"]
        assert resource.seen[1].headers["Authorization"].startswith("Bearer ")


class TestRecords:
    def test_a_single_object_is_one_snapshot_per_pull(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """`records` leading to an object: one row per pull, keyed by its time."""
        source = {
            "params": {"paging": "snapshot"},
            "records": "data",
            "primary_key": None,
        }
        first, pipeline = run(sandbox, sqlite_url, clock, **source)
        clock.advance(60)
        second = pipeline.pull("items")

        rows = list(pipeline.store.iter_records("items"))

        assert first.succeeded and second.succeeded
        assert [row["record_key"] for row in rows] == [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:01:00Z",
        ]
        assert rows[0]["payload"]["records"] == 250

    def test_composite_keys_are_a_json_list(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """primary_key [owner.id, id] stores each record under both values."""
        result, pipeline = run(
            sandbox, sqlite_url, clock, primary_key=["owner.id", "id"]
        )

        keys = set(stored(pipeline))

        assert result.succeeded, result.error
        assert len(keys) == 250
        assert "[2,1]" in keys

    def test_without_a_key_changed_records_are_new_rows(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """Content-hash keys: identical records once; a change adds a row."""
        first, pipeline = run(sandbox, sqlite_url, clock, primary_key=None)
        again = pipeline.pull("items")
        sandbox.state.epoch = 1
        changed = pipeline.pull("items")

        assert first.stats.inserted == 250
        assert (again.stats.inserted, again.stats.unchanged) == (0, 250)
        assert (changed.stats.inserted, changed.stats.updated) == (25, 0)
        assert pipeline.store.count_records("items") == 275

    def test_a_record_without_its_key_names_path_and_position(
        self, sandbox: SandboxServer, sqlite_url: str, clock: FakeClock
    ) -> None:
        """Record 20 of page 3 lacks `id`: the error says so, not what it holds."""
        source = styled("next", missing_key_at="100")

        result, pipeline = run(sandbox, sqlite_url, clock, **source)

        assert result.status == "failed"
        assert "record 20 on page 3" in str(result.error)
        assert "'id'" in str(result.error)
        assert "updated_at" not in str(result.error)
        assert "Ada" not in str(result.error)
        assert len(stored(pipeline)) == 80

    @pytest.mark.parametrize(
        ("records", "said"),
        [("data.rows", "no 'data.rows'"), ("data.items.0.name", "is a JSON str")],
    )
    def test_a_body_of_the_wrong_shape_leaves_the_data_alone(
        self,
        sandbox: SandboxServer,
        sqlite_url: str,
        clock: FakeClock,
        records: str,
        said: str,
    ) -> None:
        """A records path that misses fails on page 1; earlier records stay."""
        _, good = run(sandbox, sqlite_url, clock, **styled("next"))
        before = stored(good)
        sandbox.state.epoch = 1

        result, pipeline = run(
            sandbox, sqlite_url, clock, **{**styled("next"), "records": records}
        )

        assert result.status == "failed"
        assert said in str(result.error)
        assert "page 1" in str(result.error)
        assert stored(pipeline) == before


class TestLookup:
    def test_dotted_paths_reach_into_objects_and_lists(self) -> None:
        """`a.b.1` walks keys, then a list index."""
        assert lookup({"a": {"b": [10, 20]}}, "a.b.1") == 20

    def test_record_key_refuses_objects_and_nulls(self) -> None:
        """A key that is null or an object is not usable, and the error says where."""
        with pytest.raises(PermanentFetchError, match=r"record 4 on page 2.*'owner'"):
            record_key({"owner": {"id": 1}}, ("owner",), page=2, index=4)
        with pytest.raises(PermanentFetchError, match="'id'"):
            record_key({"id": None}, ("id",), page=1, index=0)


class TestCursorValue:
    def test_timestamps_with_offsets_compare_as_instants(self) -> None:
        """02:00+02:00 is midnight UTC: earlier than 00:30Z, whatever the text says."""
        records = [
            {"t": "2026-01-01T00:30:00Z"},
            {"t": "2026-01-01T02:00:00+02:00"},
        ]

        largest = max_cursor(records, "t")

        assert largest is not None
        assert largest.text() == "2026-01-01T00:30:00Z"

    def test_numbers_compare_as_numbers_even_as_text(self) -> None:
        """ "100" > "99" > 9: numeric strings are numbers."""
        largest = max_cursor([{"n": 9}, {"n": "99"}, {"n": "100"}], "n")

        assert largest == CursorValue("number", 100)

    def test_big_integers_keep_every_digit(self) -> None:
        """A 19-digit sequence number survives the round trip through text."""
        value = CursorValue.parse("1700000000123456789")

        assert value is not None
        assert CursorValue.restore(value.text(), value.kind) == value
        assert value.text() == "1700000000123456789"

    def test_naive_timestamps_are_read_as_utc(self) -> None:
        """No offset means UTC, and the value comes back aware."""
        instant = parse_instant("2026-01-01T12:00:00")

        assert instant is not None
        assert instant.utcoffset() is not None
        assert instant.isoformat() == "2026-01-01T12:00:00+00:00"

    def test_mixed_kinds_are_a_configuration_error(self) -> None:
        """A timestamp next to a number names the record and page."""
        with pytest.raises(PermanentFetchError, match="record 1 on page 3"):
            max_cursor([{"c": "2026-01-01T00:00:00Z"}, {"c": 5}], "c", page=3)
