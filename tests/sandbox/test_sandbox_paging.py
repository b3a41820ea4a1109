"""The sandbox's `paging=` styles and quirk switches, asked for over HTTP."""

from __future__ import annotations

import pytest

from job.sandbox.paging import decode_position, encode_position
from job.sandbox.testing import SandboxCaller


class TestPagingStyles:
    def test_body_links_are_relative_to_the_folder(
        self, api: SandboxCaller, token: str
    ) -> None:
        """`links.next` has no leading slash and keeps the other switches."""
        body = api.get(token=token, paging="next", page_size=10, offsets="mixed").json()

        assert len(body["data"]["items"]) == 10
        assert body["links"]["next"].startswith("protected-resource?")
        assert "offsets=mixed" in body["links"]["next"]
        assert body["links"]["next"].endswith("after=10")

    def test_link_header_names_the_next_page(
        self, api: SandboxCaller, token: str
    ) -> None:
        """The next page is in an RFC 8288 Link header, the body has none."""
        response = api.get(token=token, paging="link", page_size=200)
        last = api.get(token=token, paging="link", page_size=200, after=200)

        assert response.links["next"]["url"].startswith("/data/protected-resource?")
        assert "links" not in response.json()
        assert "Link" not in last.headers
        assert len(last.json()["data"]["items"]) == 50

    def test_pages_past_the_end_are_empty(self, api: SandboxCaller, token: str) -> None:
        """Page 4 of 100 a page, and offset 250, hold nothing."""
        page = api.get(token=token, paging="page", page=4, per_page=100).json()
        offset = api.get(token=token, paging="offset", offset=250, limit=10).json()

        assert page["data"]["items"] == []
        assert offset["data"]["items"] == []

    def test_a_snapshot_is_one_object(self, api: SandboxCaller, token: str) -> None:
        """paging=snapshot answers with a single object, no list."""
        body = api.get(token=token, paging="snapshot").json()

        assert body == {
            "data": {"records": 250, "epoch": 0, "latest": "2024-01-01T00:04:10+00:00"}
        }

    def test_mixed_offsets_keep_the_instant(
        self, api: SandboxCaller, token: str
    ) -> None:
        """Even ids come at +02:00, odd ones with Z."""
        items = api.get(token=token, paging="next", page_size=2, offsets="mixed").json()

        stamps = [item["updated_at"] for item in items["data"]["items"]]
        assert stamps == ["2024-01-01T00:00:01Z", "2024-01-01T02:00:02+02:00"]

    def test_missing_key_at_drops_one_id(self, api: SandboxCaller, token: str) -> None:
        """The record at position 3 comes without its id."""
        items = api.get(token=token, paging="next", page_size=5, missing_key_at=3)

        assert ["id" in item for item in items.json()["data"]["items"]] == [
            True,
            True,
            True,
            False,
            True,
        ]

    @pytest.mark.parametrize(
        ("params", "said"),
        [
            ({"paging": "sideways"}, "paging='sideways'"),
            ({"paging": "page", "page": "0"}, "start at 1"),
            ({"paging": "cursor", "cursor": "nope"}, "not a cursor"),
            ({"paging": "next", "next_base": "http://example.com"}, "loopback"),
        ],
    )
    def test_bad_switches_are_400(
        self, api: SandboxCaller, token: str, params: dict[str, str], said: str
    ) -> None:
        """A wrong switch is a 400 whose description names it."""
        response = api.get(token=token, **params)

        assert response.status_code == 400
        assert said in response.json()["error_description"]


class TestCursors:
    def test_positions_round_trip(self) -> None:
        """A cursor made for a position decodes to it."""
        assert decode_position(encode_position(1234)) == 1234
