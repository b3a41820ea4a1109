"""Each benchmark runs at a tiny size and yields its figures; no time is asserted."""

from __future__ import annotations

import dataclasses
import os

import pytest

from bench import suites
from bench.databases import postgres_problem
from bench.report import Figure, markdown

pytestmark = pytest.mark.slow

TINY = dataclasses.replace(suites.SMOKE, records=300, peer_records=200, idle_s=0.5)


def _log(message: str) -> None:
    pass


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def kind(request: pytest.FixtureRequest) -> str:
    """Each database kind the benchmarks measure."""
    if request.param == "postgresql":
        problem = postgres_problem()
        if problem and os.environ.get("JOB_REQUIRE_POSTGRES") == "1":
            pytest.fail(problem)
        if problem:
            pytest.skip(problem)
    return str(request.param)


def _named(figures: list[Figure]) -> dict[str, Figure]:
    return {figure.name: figure for figure in figures}


def _measured(figures: list[Figure], *names: str) -> None:
    found = _named(figures)
    for name in names:
        assert name in found, f"no figure {name!r}"
        assert found[name].values, f"figure {name!r} has no value"
        assert all(value >= 0 for value in found[name].values)


class TestThroughput:
    def test_gives_job_rate_ceilings_and_ratio(self, kind: str) -> None:
        """Throughput gives the job's rate, its three ceilings and the ratio."""
        figures = suites.throughput(kind, TINY, _log)

        _measured(
            figures,
            "job once (page 500)",
            "HTTP-only ceiling (page 500)",
            "DB-only ceiling (page 500)",
            "serial ceiling (page 500)",
            "job / serial ceiling (page 500)",
            "job / serial ceiling (page 100)",
            "sandbox ceiling, fast server (page 500)",
        )


class TestPeers:
    def test_compares_with_the_straightforward_script(self, kind: str) -> None:
        """Peers compares job with the plain script, and with dlt or says why not."""
        figures = suites.peers(kind, TINY, _log, install=False)

        _measured(figures, "job once", "straightforward", "job / straightforward")
        assert "job / dlt" in _named(figures)


class TestRepull:
    def test_counts_rows_written_on_both_repulls(self, kind: str) -> None:
        """Unchanged data writes no row; a new epoch writes exactly the changed."""
        figures = _named(suites.repull(kind, TINY, _log))

        assert figures["unchanged: rows written (runs row)"].values == [0]
        assert figures["unchanged: rows carrying the run's id (DB)"].values == [0]
        changed = figures["10 % changed: rows written (runs row)"].values
        assert changed == [30]
        assert (
            figures["10 % changed: rows carrying the run's id (DB)"].values == changed
        )


class TestBackfill:
    def test_measures_or_says_why_not(self, kind: str) -> None:
        """The backfill benchmark gives the ratio to the ideal, or a reason to skip."""
        figures = _named(suites.backfill(kind, TINY, _log))

        ratio = figures["wall / ideal (parallel 8)"]
        assert ratio.values or ratio.note


class TestMemory:
    def test_reports_peak_rss(self, kind: str) -> None:
        """The memory benchmark reports the peak RSS of `job once`."""
        figures = suites.memory(kind, TINY, _log)

        _measured(figures, "peak RSS, 600 records")


class TestIdle:
    def test_reports_cpu_share(self) -> None:
        """The idle benchmark reports the daemon's CPU share between runs."""
        figures = suites.idle(("sqlite",), TINY, _log)

        _measured(figures, "CPU over 0.5 s")


class TestReport:
    def test_table_lists_every_figure(self) -> None:
        """The Markdown table has a row per figure, skipped ones with their reason."""
        figures = [
            Figure("b", "sqlite", "rate", "records/s", [1.0, 2.0, 3.0]),
            Figure("b", "sqlite", "ratio", "ratio", target="≥ 5", note="no dlt"),
        ]

        table = markdown(figures).splitlines()

        assert len(table) == 4
        assert "| 1.00 | 2.00 | 3.00 |" in table[2]
        assert "skipped: no dlt" in table[3]
