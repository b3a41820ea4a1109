"""Counters for the run under way, reachable from any layer without passing them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields


@dataclass
class RunStats:
    """What one run did; the pipeline copies it into the run's row."""

    pages: int = 0
    records_seen: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    token_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


_current: ContextVar[RunStats | None] = ContextVar("job_run_stats", default=None)


def current_stats() -> RunStats:
    """The counters of the run in this context, or a throwaway set outside a run."""
    stats = _current.get()
    return stats if stats is not None else RunStats()


@contextmanager
def collecting(stats: RunStats) -> Iterator[RunStats]:
    """Count into `stats` for the duration of the block."""
    token = _current.set(stats)
    try:
        yield stats
    finally:
        _current.reset(token)
