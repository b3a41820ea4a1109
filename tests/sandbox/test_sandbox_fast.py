"""The fast resource server for benchmarks: same pages, same tokens, one write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from job.sandbox import SandboxServer
from job.sandbox.fast import FastResourceServer
from job.sandbox.testing import SandboxCaller


@pytest.fixture
def fast(sandbox: SandboxServer) -> Iterator[FastResourceServer]:
    """A fast server sharing the test sandbox's state (250 records)."""
    server = FastResourceServer(sandbox.state).start()
    yield server
    server.stop()


def pull(
    server: FastResourceServer, token: str, query: str = "page_size=40"
) -> list[dict[str, Any]]:
    origin = server.resource_url.split("/data/", 1)[0]
    url: str | None = f"{server.resource_url}?{query}"
    headers = {"Authorization": f"Bearer {token}"}
    items: list[dict[str, Any]] = []
    with requests.Session() as session:
        while url:
            response = session.get(url, headers=headers, timeout=5)
            response.raise_for_status()
            body = response.json()
            items.extend(body["items"])
            url = origin + body["next"] if body["next"] else None

    return items


class TestFastResourceServer:
    def test_serves_the_same_records_as_the_sandbox(
        self, sandbox: SandboxServer, fast: FastResourceServer
    ) -> None:
        """A full pull gives the Flask endpoint's records, in its order."""
        caller = SandboxCaller(sandbox)
        token = caller.token()

        assert pull(fast, token) == caller.pull(token, page_size=40)

    def test_a_new_epoch_serves_the_changed_records(
        self, sandbox: SandboxServer, fast: FastResourceServer
    ) -> None:
        """After epoch moves and the cache is dropped, changed records come last."""
        token = SandboxCaller(sandbox).token()
        pull(fast, token)
        sandbox.state.epoch = 1
        fast.bodies.forget()

        items = pull(fast, token)

        assert items == sandbox.state.all_records()
        assert {item["version"] for item in items[-25:]} == {2}

    def test_refuses_a_missing_or_unknown_token(self, fast: FastResourceServer) -> None:
        """Without a token the sandbox issued, the answer is 401 with a challenge."""
        for headers in ({}, {"Authorization": "Bearer not-issued"}):
            response = requests.get(fast.resource_url, headers=headers, timeout=5)

            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")

    def test_refuses_a_revoked_token(
        self, sandbox: SandboxServer, fast: FastResourceServer
    ) -> None:
        """A token the sandbox revoked is refused here too."""
        token = SandboxCaller(sandbox).token()
        sandbox.state.revoke_all_tokens()

        response = requests.get(
            fast.resource_url, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )

        assert response.status_code == 401

    def test_until_cuts_a_window(
        self, sandbox: SandboxServer, fast: FastResourceServer
    ) -> None:
        """since= and until= (exclusive) give exactly the window, across pages."""
        token = SandboxCaller(sandbox).token()
        query = "page_size=7&since=2024-01-01T00:00:10Z&until=2024-01-01T00:00:30Z"

        items = pull(fast, token, query)

        assert [item["id"] for item in items] == list(range(10, 30))

    def test_a_bad_query_is_a_400(
        self, sandbox: SandboxServer, fast: FastResourceServer
    ) -> None:
        """A page size that is not a number is refused, not guessed."""
        token = SandboxCaller(sandbox).token()

        response = requests.get(
            f"{fast.resource_url}?page_size=many",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )

        assert response.status_code == 400
