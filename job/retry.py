"""When to retry a request and how long to wait; pure, with no I/O.

The policy is a frozen value. A plain loop (see `http_client`) asks it whether
to retry and for how long to sleep, and sleeps through the injected clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from job.config import RetrySettings

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Wait:
    """How long to wait before the next attempt, and why that long."""

    seconds: float
    source: str  # "retry_after", "backoff", or "backoff_after_bad_retry_after"
    note: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts, capped exponential backoff with jitter, a deadline."""

    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    retry_after_cap_s: float = 120.0
    deadline_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_cap_s=settings.backoff_cap_s,
            retry_after_cap_s=settings.retry_after_cap_s,
            deadline_s=settings.deadline_s,
        )

    def is_retryable_status(self, status: int) -> bool:
        """408, 429 and the 5xx that mean "try again" are retried; nothing else."""
        return status in RETRYABLE_STATUSES

    def has_attempts_left(self, attempt: int) -> bool:
        """Whether another attempt may follow attempt number `attempt` (from 1)."""
        return attempt < self.max_attempts

    def backoff_s(self, attempt: int) -> float:
        """Backoff after attempt number `attempt`: between half and all of a
        ceiling that doubles from `backoff_base_s` up to `backoff_cap_s`.

        Half of the ceiling at least (equal jitter), so that a retry never
        comes back at once; the random half spreads clients apart.
        """
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 2, ceiling)

    def wait(self, attempt: int, retry_after: str | None, now: datetime) -> Wait:
        """The wait before the next attempt, honouring `Retry-After` up to a cap."""
        if retry_after is None:
            return Wait(self.backoff_s(attempt), "backoff")
        seconds = parse_retry_after(retry_after, now)
        if seconds is None:
            note = f"unparseable Retry-After {retry_after[:40]!r}"
        elif seconds > self.retry_after_cap_s:
            cap = self.retry_after_cap_s
            note = f"Retry-After {seconds:.0f}s is past the cap {cap:.0f}s"
        else:
            return Wait(seconds, "retry_after")

        return Wait(self.backoff_s(attempt), "backoff_after_bad_retry_after", note)

    def fits_deadline(self, elapsed_s: float, wait_s: float) -> bool:
        """Whether waiting `wait_s` more keeps the request within its deadline."""
        return elapsed_s + wait_s <= self.deadline_s


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Seconds from a `Retry-After` value: delta-seconds or an HTTP-date (RFC 9110)."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 HTTP-dates are always GMT; never read them as local time.
        when = when.replace(tzinfo=UTC)

    return max(0.0, (when - now).total_seconds())
