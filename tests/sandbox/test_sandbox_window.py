"""The sandbox's backfill window: `from` and `to`, half-open on updated_at."""

from __future__ import annotations

from job.sandbox.testing import SandboxCaller


class TestWindow:
    def test_from_is_inclusive_and_to_exclusive(
        self, api: SandboxCaller, token: str
    ) -> None:
        """[00:00:10, 00:00:20) holds records 10 to 19, across pages."""
        items = api.pull(
            token,
            page_size=3,
            **{"from": "2024-01-01T00:00:10Z"},
            to="2024-01-01T00:00:20Z",
        )

        assert [item["id"] for item in items] == list(range(10, 20))

    def test_next_links_keep_the_window(self, api: SandboxCaller, token: str) -> None:
        """A next link carries from and to, so later pages stay inside."""
        body = api.get(
            token=token,
            page_size=2,
            **{"from": "2024-01-01T00:00:10Z"},
            to="2024-01-01T00:00:20Z",
        ).json()

        assert "from=2024-01-01T00%3A00%3A10Z" in body["next"]
        assert "to=2024-01-01T00%3A00%3A20Z" in body["next"]

    def test_adjacent_windows_share_no_record(
        self, api: SandboxCaller, token: str
    ) -> None:
        """Two windows that touch split the records with no overlap and no gap."""
        first = api.pull(token, to="2024-01-01T00:01:00Z")
        second = api.pull(token, **{"from": "2024-01-01T00:01:00Z"})

        ids = [item["id"] for item in first + second]
        assert sorted(ids) == list(range(1, 251))

    def test_an_empty_window_has_no_next(self, api: SandboxCaller, token: str) -> None:
        """A window before any record: no items and no next link."""
        body = api.get(
            token=token, **{"from": "2023-01-01T00:00:00Z"}, to="2023-01-02T00:00:00Z"
        ).json()

        assert body == {"items": [], "next": None}

    def test_a_bad_bound_is_a_400(self, api: SandboxCaller, token: str) -> None:
        """to=yesterday is refused, naming the parameter."""
        response = api.get(token=token, to="yesterday")

        assert response.status_code == 400
        assert "to='yesterday'" in response.json()["error_description"]
