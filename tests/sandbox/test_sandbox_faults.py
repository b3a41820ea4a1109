"""The sandbox's fault knobs on the data endpoint, each against the real server."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import requests

from job.sandbox import SandboxServer
from job.sandbox.testing import SandboxCaller


def statuses(api: SandboxCaller, token: str, count: int) -> list[int]:
    """Status codes of ``count`` consecutive first-page requests."""
    return [api.get(token=token).status_code for _ in range(count)]


class TestStatusFaults:
    def test_503_for_the_next_requests(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """fail_503_count answers 503 that many times, then recovers."""
        server.state.fail_503_count = 2

        assert statuses(api, token, 3) == [503, 503, 200]

    def test_429_carries_retry_after(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """fail_429_count answers 429 with Retry-After: retry_after_s."""
        server.state.fail_429_count = 2
        server.state.retry_after_s = 7

        first = api.get(token=token)
        server.state.retry_after_s = 1
        second = api.get(token=token)

        assert first.status_code == 429
        assert first.headers["Retry-After"] == "7"
        assert second.headers["Retry-After"] == "1"
        assert api.get(token=token).status_code == 200

    def test_faults_come_before_the_token_check(
        self, api: SandboxCaller, server: SandboxServer
    ) -> None:
        """A fault answers even a request without a token, like a proxy would."""
        server.state.fail_503_count = 1

        assert api.get().status_code == 503
        assert api.get().status_code == 401


class TestFailAfterPages:
    def test_serves_that_many_pages_then_fails(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """fail_after_pages = 2 serves two pages, then 503 until it is cleared."""
        server.state.fail_after_pages = 2

        failing = statuses(api, token, 4)
        server.state.fail_after_pages = None

        assert failing == [200, 200, 503, 503]
        assert api.get(token=token).status_code == 200

    def test_refused_requests_do_not_count(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Only pages actually served spend the budget."""
        server.state.fail_after_pages = 1
        api.get()

        assert statuses(api, token, 2) == [200, 503]


class TestRandomFaults:
    def test_certain_5xx(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """error_rate_5xx = 1 makes every request a 502, 503 or 504."""
        server.state.error_rate_5xx = 1.0

        assert set(statuses(api, token, 10)) <= {502, 503, 504}

    def test_certain_429(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """error_rate_429 = 1 makes every request a 429 with Retry-After."""
        server.state.error_rate_429 = 1.0

        response = api.get(token=token)

        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"

    def test_a_seed_replays_the_same_faults(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Re-seeding gives the same sequence of outcomes, at about the rates."""
        server.state.error_rate_5xx = 0.2
        server.state.error_rate_429 = 0.2
        server.state.seed = 42
        first = statuses(api, token, 40)
        server.state.seed = 42

        second = statuses(api, token, 40)

        assert first == second
        assert 8 <= sum(status != 200 for status in first) <= 24


class TestBodyFaults:
    def test_truncated_body(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """truncated_body_count sends a well-framed 200 whose JSON is cut off."""
        server.state.truncated_body_count = 1

        cut = api.get(token=token)
        whole = api.get(token=token)

        assert cut.status_code == 200
        assert int(cut.headers["Content-Length"]) == len(cut.content)
        assert whole.content.startswith(cut.content)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(cut.content)

    def test_html_with_200(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """html_200_count answers an HTML page with status 200."""
        server.state.html_200_count = 1

        response = api.get(token=token)

        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.text.lstrip().startswith("<!DOCTYPE html>")

    def test_latency(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """latency_s delays each data response by at least that long."""
        server.state.latency_s = 0.2

        started = time.monotonic()
        api.get(token=token)

        assert time.monotonic() - started >= 0.2


class TestConnectionFaults:
    def test_dropped_connection(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """drop_connection_count closes the socket with no HTTP response."""
        server.state.drop_connection_count = 1

        with pytest.raises(requests.ConnectionError):
            api.get(token=token)
        assert api.get(token=token).status_code == 200

    def test_stall_times_out_and_the_next_request_is_served(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """stall_count never answers; the client times out, others still work."""
        server.state.stall_count = 1

        with pytest.raises(requests.ReadTimeout):
            api.get(token=token, timeout=0.3)
        assert api.get(token=token).status_code == 200

    def test_stall_does_not_block_stop(self, server: SandboxServer, token: str) -> None:
        """stop() returns promptly while a stalled request is still open."""
        server.state.stall_count = 1
        headers = {"Authorization": f"Bearer {token}"}
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                requests.get(server.resource_url, headers=headers, timeout=10)
            except requests.RequestException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        while server.state.resource_requests == 0:
            time.sleep(0.01)
        started = time.monotonic()
        server.stop()
        caller.join(5)

        assert time.monotonic() - started < 2
        assert not caller.is_alive()
        assert isinstance(outcome[0], requests.ConnectionError)


class TestRepeatNextLink:
    def test_next_link_points_at_the_same_page(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """repeat_next_link hands out the link to the page just served."""
        server.state.repeat_next_link = True
        first = api.get(token=token, page_size=10).json()
        again = api.get(first["next"], token=token).json()
        third = api.get(again["next"], token=token).json()

        assert again["items"] == first["items"]
        assert third["next"] == again["next"]
