"""The retry policy as a value: no HTTP, no sleeping."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from job.retry import RetryPolicy, parse_retry_after

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def policy(**overrides: float) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(7), **overrides)  # type: ignore[arg-type]


class TestRetryPolicy:
    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_retries_transient_statuses(self, status: int) -> None:
        """408, 429 and the transient 5xx are retried."""
        assert policy().is_retryable_status(status)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501])
    def test_does_not_retry_other_statuses(self, status: int) -> None:
        """Other 4xx (and 501) are final."""
        assert not policy().is_retryable_status(status)

    def test_backoff_grows_and_is_capped(self) -> None:
        """Each wait is within [ceiling/2, ceiling]; the ceiling doubles to the cap."""
        retry = policy(backoff_base_s=1.0, backoff_cap_s=8.0)

        waits = [retry.backoff_s(attempt) for attempt in range(1, 8)]

        ceilings = [1, 2, 4, 8, 8, 8, 8]
        for wait, ceiling in zip(waits, ceilings, strict=True):
            assert ceiling / 2 <= wait <= ceiling

    def test_backoff_is_jittered(self) -> None:
        """Clients that failed together do not all come back at the same moment."""
        retry = policy(backoff_base_s=1.0)

        waits = {retry.backoff_s(3) for _ in range(20)}

        assert len(waits) > 10

    def test_attempts_are_bounded(self) -> None:
        """Attempt max_attempts is the last."""
        retry = policy(max_attempts=3)

        assert retry.has_attempts_left(2)
        assert not retry.has_attempts_left(3)

    def test_honours_retry_after_seconds(self) -> None:
        """Retry-After in seconds is the wait."""
        wait = policy().wait(1, "7", NOW)

        assert (wait.seconds, wait.source) == (7.0, "retry_after")

    def test_honours_retry_after_http_date_in_utc(self) -> None:
        """An HTTP-date is compared with now in UTC, never local time."""
        wait = policy().wait(1, "Sun, 29 Mar 2026 01:30:45 GMT", NOW)

        assert wait.seconds == 45.0

    def test_retry_after_past_the_cap_falls_back_to_backoff(self) -> None:
        """A Retry-After beyond the cap is not obeyed, and the note says so."""
        wait = policy(retry_after_cap_s=60, backoff_cap_s=2).wait(1, "3600", NOW)

        assert wait.source == "backoff_after_bad_retry_after"
        assert wait.seconds <= 2
        assert "past the cap" in str(wait.note)

    def test_unparseable_retry_after_falls_back_to_backoff(self) -> None:
        """Garbage in Retry-After means ordinary backoff, with a note."""
        wait = policy().wait(1, "soon-ish", NOW)

        assert wait.source == "backoff_after_bad_retry_after"
        assert "unparseable" in str(wait.note)

    def test_deadline_bounds_the_total_wait(self) -> None:
        """A wait that would pass the deadline is refused."""
        retry = policy(deadline_s=10)

        assert retry.fits_deadline(4, 6)
        assert not retry.fits_deadline(4, 6.5)


class TestParseRetryAfter:
    def test_a_date_in_the_past_means_now(self) -> None:
        """A date already gone is a zero wait, not a negative one."""
        assert parse_retry_after("Sun, 29 Mar 2026 00:00:00 GMT", NOW) == 0.0

    def test_negative_or_fractional_numbers_are_not_seconds(self) -> None:
        """delta-seconds is a non-negative integer; anything else is unparseable."""
        assert parse_retry_after("-5", NOW) is None
        assert parse_retry_after("1.5", NOW) is None

    def test_an_http_date_ignores_the_local_time_zone(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With TZ set far from UTC, a GMT date still means the same instant."""
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        try:
            seconds = parse_retry_after("Sun, 29 Mar 2026 01:30:45 GMT", NOW)
        finally:
            monkeypatch.undo()
            time.tzset()

        assert seconds == 45.0

    def test_a_date_without_a_zone_is_read_as_gmt(self) -> None:
        """RFC 9110 dates are GMT; a "-0000" (unknown zone) date is too."""
        assert parse_retry_after("Sun, 29 Mar 2026 01:31:00 -0000", NOW) == 60.0
