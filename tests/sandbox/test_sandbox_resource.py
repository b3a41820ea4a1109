"""The sandbox's protected data endpoint: bearer checks, paging, since, mutation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from job.sandbox import SandboxServer, SandboxSettings
from job.sandbox.testing import FakeMonotonic, SandboxCaller

REALM_CHALLENGE = 'Bearer realm="job-sandbox"'
SECRET = "resource-test-secret"


def all_ids(api: SandboxCaller) -> list[int]:
    """Every record id the sandbox serves."""
    return list(range(1, api.server.settings.records + 1))


def one_second_after(instant: str) -> str:
    """The ISO 8601 instant one second later."""
    moment = datetime.fromisoformat(instant) + timedelta(seconds=1)

    return moment.isoformat()


class TestBearerProtection:
    def test_missing_token_gets_a_bare_challenge(self, api: SandboxCaller) -> None:
        """No token: 401 and a Bearer challenge without an error code."""
        response = api.get()

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == REALM_CHALLENGE

    def test_other_scheme_gets_a_bare_challenge(self, server: SandboxServer) -> None:
        """Basic credentials on the API: 401 with a Bearer challenge."""
        response = requests.get(server.resource_url, auth=("a", "b"), timeout=5)

        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == REALM_CHALLENGE

    def test_unknown_token_is_invalid_token(self, api: SandboxCaller) -> None:
        """A token the sandbox never issued: 401 invalid_token."""
        response = api.get(token="made-up")

        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

    def test_revoked_token_is_invalid_token(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """After revoke_all_tokens the old token fails and a new one works."""
        server.state.revoke_all_tokens()

        old = api.get(token=token)
        new = api.get(token=api.token())

        assert old.status_code == 401
        assert 'error="invalid_token"' in old.headers["WWW-Authenticate"]
        assert "revoked" in old.json()["error_description"]
        assert new.status_code == 200

    def test_revoke_tokens_on_use(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """With revoke_tokens_on_use every token is refused at first use."""
        server.state.revoke_tokens_on_use = True
        fresh = api.token()

        responses = [api.get(token=token), api.get(token=fresh)]
        server.state.revoke_tokens_on_use = False

        assert [r.status_code for r in responses] == [401, 401]
        assert api.get(token=fresh).status_code == 401
        assert api.get(token=api.token()).status_code == 200

    def test_expired_token_is_invalid_token(
        self, api: SandboxCaller, token: str, sandbox_clock: FakeMonotonic
    ) -> None:
        """A token past its lifetime on the sandbox's clock fails."""
        before = api.get(token=token)
        sandbox_clock.advance(300)

        after = api.get(token=token)

        assert before.status_code == 200
        assert after.status_code == 401
        assert 'error="invalid_token"' in after.headers["WWW-Authenticate"]
        assert "expired" in after.json()["error_description"]

    def test_expire_all_tokens(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """expire_all_tokens ends every issued token's life at once."""
        server.state.expire_all_tokens()

        response = api.get(token=token)

        assert response.status_code == 401
        assert "expired" in response.json()["error_description"]

    def test_token_without_the_scope_is_forbidden(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """A token lacking read:data gets 403 insufficient_scope."""
        server.state.add_client("other", SECRET, scope="read:other")
        token = api.token(client_id="other", secret=SECRET)

        response = api.get(token=token)

        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]

    def test_every_request_is_counted(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Authorised and refused requests all count."""
        api.get(token=token)
        api.get()

        assert server.state.resource_requests == 2


class TestPaging:
    def test_pages_cover_every_record_once(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Following next links yields exactly the ground truth, in order."""
        items = api.pull(token, page_size=7)

        assert items == server.state.all_records()
        assert [item["id"] for item in items] == all_ids(api)

    def test_next_link_is_relative_and_carries_the_query(
        self, api: SandboxCaller, token: str
    ) -> None:
        """The next link is a relative URL with page_size, since and after."""
        body = api.get(token=token, page_size=5, since="2024-01-01T00:00:00Z").json()
        link = urlsplit(body["next"])
        query = parse_qs(link.query)

        assert not link.scheme and not link.netloc
        assert link.path == "/data/protected-resource"
        assert query["page_size"] == ["5"]
        assert query["since"] == ["2024-01-01T00:00:00Z"]
        assert query["after"]

    def test_default_page_size(self, api: SandboxCaller, token: str) -> None:
        """Without page_size a page holds default_page_size items."""
        body = api.get(token=token).json()

        assert len(body["items"]) == 100

    def test_page_size_is_capped(self, sandbox_clock: FakeMonotonic) -> None:
        """A page_size over the maximum is cut to max_page_size."""
        small = SandboxSettings(
            client_secret=SECRET, port=0, default_page_size=10, max_page_size=20
        )
        with SandboxServer(small, monotonic=sandbox_clock) as server:
            api = SandboxCaller(server)
            body = api.get(token=api.token(), page_size=500).json()

        assert len(body["items"]) == 20
        assert "page_size=20" in body["next"]

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("page_size", "abc"),
            ("page_size", "0"),
            ("page_size", "-1"),
            ("page_size", "1.5"),
            ("since", "yesterday"),
            ("after", "not-a-cursor"),
            ("after", "!!"),
        ],
    )
    def test_bad_query_is_400(
        self, api: SandboxCaller, token: str, name: str, value: str
    ) -> None:
        """A bad page_size, since or after gets a 400 JSON error naming it."""
        query: dict[str, Any] = {name: value}

        response = api.get(token=token, **query)

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert name in response.json()["error_description"]

    def test_last_page_has_no_next(self, api: SandboxCaller, token: str) -> None:
        """The page that reaches the end says next: null."""
        body = api.get(token=token, page_size=len(all_ids(api))).json()

        assert len(body["items"]) == len(all_ids(api))
        assert body["next"] is None

    def test_empty_data_set(self, sandbox_clock: FakeMonotonic) -> None:
        """With no records the only page is empty and final."""
        empty = SandboxSettings(client_secret=SECRET, port=0, records=0)
        with SandboxServer(empty, monotonic=sandbox_clock) as server:
            api = SandboxCaller(server)
            body = api.get(token=api.token()).json()

        assert body == {"items": [], "next": None}

    def test_record_shape(self, api: SandboxCaller, token: str) -> None:
        """Each record has the documented fields and types."""
        item = api.get(token=token, page_size=1).json()["items"][0]

        assert set(item) == {
            "id",
            "updated_at",
            "name",
            "amount",
            "active",
            "tags",
            "owner",
            "version",
        }
        assert item["updated_at"].endswith("Z")
        assert datetime.fromisoformat(item["updated_at"]).utcoffset() is not None
        assert isinstance(item["amount"], float)
        assert isinstance(item["active"], bool)
        assert all(isinstance(tag, str) for tag in item["tags"])
        assert set(item["owner"]) == {"id", "region"}


class TestSince:
    def test_since_is_inclusive(self, api: SandboxCaller, token: str) -> None:
        """Records updated at or after since come back, older ones do not."""
        items = api.pull(token, since="2024-01-01T00:03:20Z", page_size=30)

        assert [item["id"] for item in items] == all_ids(api)[199:]

    def test_since_with_an_offset(self, api: SandboxCaller, token: str) -> None:
        """An instant with a UTC offset is compared as the same instant."""
        items = api.pull(token, since="2024-01-01T01:03:20+01:00")

        assert items[0]["id"] == 200

    def test_since_in_the_future_is_empty(self, api: SandboxCaller, token: str) -> None:
        """A since after every record returns one empty final page."""
        body = api.get(token=token, since="2030-01-01T00:00:00Z").json()

        assert body == {"items": [], "next": None}


class TestMutation:
    def test_epoch_zero_is_all_first_versions(self, server: SandboxServer) -> None:
        """Before any round every record is at version 1."""
        versions = {record["version"] for record in server.state.all_records()}

        assert versions == {1}

    def test_a_round_changes_one_record_in_ten(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Epoch 1 changes the ids with (1 + id) % 10 == 0, and only those."""
        before = {item["id"]: item for item in api.pull(token)}
        server.state.epoch = 1
        after = {item["id"]: item for item in api.pull(token)}

        changed = sorted(i for i in before if before[i] != after[i])
        latest_before = max(item["updated_at"] for item in before.values())

        assert changed == [i for i in all_ids(api) if (1 + i) % 10 == 0]
        assert len(changed) == len(all_ids(api)) // 10
        for record_id in changed:
            assert after[record_id]["version"] == 2
            assert after[record_id]["amount"] != before[record_id]["amount"]
            assert after[record_id]["updated_at"] > latest_before

    def test_incremental_pull_sees_exactly_the_changes(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """A pull with since just past the last watermark gets only the new round."""
        server.state.epoch = 1
        watermark = max(item["updated_at"] for item in api.pull(token))
        server.state.epoch = 2
        after_watermark = one_second_after(watermark)

        inclusive = api.pull(token, since=watermark)
        exclusive = api.pull(token, since=after_watermark)

        round_1 = [i for i in all_ids(api) if (1 + i) % 10 == 0]
        round_2 = [i for i in all_ids(api) if (2 + i) % 10 == 0]
        assert [item["id"] for item in exclusive] == round_2
        assert [item["id"] for item in inclusive] == round_1 + round_2

    def test_ordering_is_by_updated_at_then_id(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Pages come in (updated_at, id) order, whatever the epoch."""
        server.state.epoch = 13
        items = api.pull(token, page_size=17)
        keys = [(item["updated_at"], item["id"]) for item in items]

        assert keys == sorted(keys)
        assert items == server.state.all_records()

    def test_epoch_follows_the_clock(self, sandbox_clock: FakeMonotonic) -> None:
        """With mutate_every_s set, the epoch advances with time from start."""
        moving = SandboxSettings(client_secret=SECRET, port=0, mutate_every_s=30)
        server = SandboxServer(moving, monotonic=sandbox_clock)
        sandbox_clock.advance(95)
        after_95_s = server.state.epoch
        server.state.epoch = 10
        sandbox_clock.advance(29)
        after_reset = server.state.epoch
        sandbox_clock.advance(1)

        assert after_95_s == 3
        assert after_reset == 10
        assert server.state.epoch == 11

    def test_epoch_is_still_without_mutation(
        self, server: SandboxServer, sandbox_clock: FakeMonotonic
    ) -> None:
        """Without mutate_every_s the data never changes on its own."""
        sandbox_clock.advance(10_000)

        assert server.state.epoch == 0

    def test_records_depend_only_on_the_epoch(self, server: SandboxServer) -> None:
        """Jumping to an epoch gives the same data as stepping through it."""
        for epoch in range(1, 26):
            server.state.epoch = epoch
        stepped = server.state.all_records()
        server.state.epoch = 0
        server.state.epoch = 25

        assert server.state.all_records() == stepped
        assert max(record["version"] for record in stepped) == 4
