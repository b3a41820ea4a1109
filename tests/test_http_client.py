"""One HTTP round trip: which answers are retried, how long it waits, what it logs."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import requests
import structlog

from job.clock import FakeClock
from job.errors import PermanentFetchError, TransientFetchError
from job.http_client import HttpClient, mask_url
from job.retry import RetryPolicy
from tests.listeners import EMPTY_PAGE, Answer, listening


def client(clock: FakeClock, **policy: float) -> HttpClient:
    return HttpClient(
        requests.Session(),
        clock=clock,
        policy=RetryPolicy(rng=random.Random(1), **policy),  # type: ignore[arg-type]
        read_timeout_s=2,
    )


def answers(*first: Answer) -> Callable[[str], Answer]:
    """Answer with `first` in turn, then with an empty page for ever."""
    queue = list(first)
    return lambda path: queue.pop(0) if queue else EMPTY_PAGE


def failing(status: int, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, b"{}"


class TestRetries:
    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_transient_statuses_are_retried(
        self, clock: FakeClock, status: int
    ) -> None:
        """Each retryable status is tried again, and the second answer counts."""
        with listening(answers(failing(status))) as api:
            response = client(clock).get(api.url + "/data")

        assert response.status_code == 200
        assert len(api.seen) == 2
        assert len(clock.sleeps) == 1

    @pytest.mark.parametrize("status", [400, 404, 409, 422])
    def test_other_client_errors_are_final(self, clock: FakeClock, status: int) -> None:
        """Another 4xx fails at once, with the status on the error."""
        with (
            listening(answers(failing(status))) as api,
            pytest.raises(PermanentFetchError) as raised,
        ):
            client(clock).get(api.url + "/data")

        assert raised.value.status == status
        assert len(api.seen) == 1
        assert clock.sleeps == []

    def test_retry_after_as_an_http_date_is_read_in_utc(self, clock: FakeClock) -> None:
        """The fake now is 2026-01-01 00:00 UTC; a date 30 s later waits 30 s."""
        date = "Thu, 01 Jan 2026 00:00:30 GMT"
        with (
            listening(answers(failing(503, **{"Retry-After": date}))) as api,
            structlog.testing.capture_logs() as events,
        ):
            client(clock).get(api.url + "/data")

        (retry,) = events
        assert clock.sleeps == [30.0]
        assert retry["event"] == "request.retry_scheduled"
        assert (retry["wait_s"], retry["wait_source"]) == (30.0, "retry_after")
        assert (retry["status"], retry["reason"]) == (503, "status 503")

    def test_a_retry_after_past_the_cap_falls_back_to_backoff_and_says_so(
        self, clock: FakeClock
    ) -> None:
        """Retry-After 3600 with a 60 s cap: backoff instead, and a note in the log."""
        with (
            listening(answers(failing(429, **{"Retry-After": "3600"}))) as api,
            structlog.testing.capture_logs() as events,
        ):
            client(clock, retry_after_cap_s=60, backoff_cap_s=4).get(api.url)

        (retry,) = events
        assert retry["wait_source"] == "backoff_after_bad_retry_after"
        assert "past the cap" in retry["note"]
        assert clock.sleeps[0] <= 4

    def test_the_deadline_stops_a_wait_that_would_pass_it(
        self, clock: FakeClock
    ) -> None:
        """A wait past deadline_s fails now, without sleeping."""
        with (
            listening(answers(failing(503, **{"Retry-After": "100"}))) as api,
            pytest.raises(TransientFetchError, match="after 1 attempts"),
        ):
            client(clock, deadline_s=50).get(api.url)

        assert clock.sleeps == []

    def test_attempts_are_bounded(self, clock: FakeClock) -> None:
        """max_attempts=3: three requests, two waits, then a transient error."""
        with (
            listening(lambda path: failing(502)) as api,
            pytest.raises(TransientFetchError) as raised,
        ):
            client(clock, max_attempts=3).get(api.url)

        assert len(api.seen) == 3
        assert len(clock.sleeps) == 2
        assert raised.value.attempt == 3

    def test_a_refused_connection_is_retried_and_then_fails(
        self, clock: FakeClock
    ) -> None:
        """Nobody listening: connection errors are retried, then reported."""
        with listening() as api:
            url = api.url
        # The listener is closed now: its port refuses connections.

        with pytest.raises(TransientFetchError, match="connection failed"):
            client(clock, max_attempts=2).get(url)

        assert len(clock.sleeps) == 1


class TestErrorMessages:
    def test_a_client_error_quotes_the_apis_explanation(self, clock: FakeClock) -> None:
        """A 400 with a JSON error body says what the API objected to."""
        body = b'{"error": "invalid_request", "error_description": "page_size=0"}'
        answer = (400, {"Content-Type": "application/json"}, body)
        with (
            listening(answers(answer)) as api,
            pytest.raises(PermanentFetchError) as raised,
        ):
            client(clock).get(api.url + "/data")

        assert "The API says: invalid_request: page_size=0" in str(raised.value)

    def test_a_body_that_is_not_json_is_not_quoted(self, clock: FakeClock) -> None:
        """An HTML error page is never copied into the message."""
        answer = (404, {"Content-Type": "text/html"}, b"<html>secret stuff</html>")
        with (
            listening(answers(answer)) as api,
            pytest.raises(PermanentFetchError) as raised,
        ):
            client(clock).get(api.url + "/data")

        assert "html" not in str(raised.value).lower()


class TestMasking:
    def test_credentials_in_urls_are_masked(self) -> None:
        """User info and secret-looking parameters are masked; the rest stays."""
        masked = mask_url("https://user:pw@api.example/x?api_key=k1&page=2&token=t")

        assert masked == "https://***@api.example/x?api_key=***&page=2&token=***"

    def test_errors_carry_the_masked_url(self, clock: FakeClock) -> None:
        """A 404 on a URL with an access_token names the URL without it."""
        with (
            listening(answers(failing(404))) as api,
            pytest.raises(PermanentFetchError) as raised,
        ):
            client(clock).get(api.url + "/data?access_token=abc123&page=1")

        assert "abc123" not in raised.value.message
        assert "access_token=***" in raised.value.message


class TestEnvironment:
    def test_a_proxy_from_the_environment_is_used(
        self, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTP_PROXY is honoured (here a closed port, so the request fails)."""
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        with (
            listening(answers()) as api,
            pytest.raises(TransientFetchError, match="connection failed"),
        ):
            client(clock, max_attempts=1).get(api.url + "/data")

        assert api.seen == []

    def test_no_proxy_sends_the_request_straight_to_the_api(
        self, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """NO_PROXY, read once per origin, still applies to every page."""
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        api_client = client(clock)

        with listening(answers()) as api:
            for page in range(3):
                api_client.get(api.url + "/data", params={"page": str(page)})

        assert len(api.seen) == 3
