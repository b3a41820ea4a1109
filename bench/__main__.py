"""``python -m bench``: run the benchmarks and print their table.

``make bench`` runs everything at full size (about 20 minutes on two cores);
``make bench BENCH_ARGS=--quick`` runs smaller sizes in a few minutes. The
table goes to stdout as Markdown, and every value to
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import orjson
from sqlalchemy import text

from bench import suites
from bench.databases import KINDS, POSTGRES_URL, postgres_problem
from bench.report import Figure, markdown
from job.storage import engine as db

BENCHMARKS = ("throughput", "peers", "repull", "backfill", "memory", "idle")
RESULTS = Path(__file__).parent / "results" / "latest.json"
README = Path(__file__).parent / "README.md"
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="Smaller sizes, minutes.")
    size.add_argument("--smoke", action="store_true", help="Tiny sizes, one run.")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="Comma list.")
    parser.add_argument("--databases", default=",".join(KINDS), help="Comma list.")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--records", type=int, help="Override the main size.")
    parser.add_argument("--runs", type=int, help="Override the number of runs.")
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="Write the table into bench/README.md (make bench does).",
    )
    args = parser.parse_args(argv)
    sizes = suites.SMOKE if args.smoke else suites.QUICK if args.quick else suites.FULL
    sizes = dataclasses.replace(
        sizes, records=args.records or sizes.records, runs=args.runs or sizes.runs
    )
    kinds = _kinds(args.databases.split(","))
    started = time.perf_counter()
    figures = run(args.only.split(","), kinds, sizes, _log)
    elapsed = time.perf_counter() - started
    facts = machine()
    report = {
        "machine": facts,
        "sizes": sizes.__dict__,
        "seconds": elapsed,
        "figures": [figure.as_dict() for figure in figures],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sizes_text = ", ".join(f"{k} {v}" for k, v in sizes.__dict__.items())
    table = f"{_machine_text(facts)}\n\nsizes: {sizes_text}\n\n{markdown(figures)}"
    print(table)
    if args.update_readme:
        update_readme(README, table, elapsed)
    _log(f"done in {elapsed:.0f} s; values in {args.output}")

    return 0


def run(
    names: list[str],
    kinds: tuple[str, ...],
    sizes: suites.Sizes,
    log: Callable[[str], None],
) -> list[Figure]:
    """Run the named benchmarks on each database; return every figure."""
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(
            f"unknown benchmark {sorted(unknown)}; choose from {BENCHMARKS}"
        )
    figures: list[Figure] = []
    for name in BENCHMARKS:
        if name not in names:
            continue
        if name == "idle":
            figures += suites.idle(kinds, sizes, log)
            continue
        for kind in kinds:
            figures += getattr(suites, name)(kind, sizes, log)

    return figures


def _kinds(requested: list[str]) -> tuple[str, ...]:
    kinds = tuple(kind for kind in KINDS if kind in requested)
    if "postgresql" in kinds:
        problem = postgres_problem()
        if problem:
            _log(f"skipping PostgreSQL: {problem}")
            kinds = tuple(kind for kind in kinds if kind != "postgresql")

    return kinds


def machine() -> dict[str, str]:
    """Where the figures were measured."""
    import os
    import sqlite3

    with open("/proc/meminfo") as meminfo:
        memory_kb = next(
            int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")
        )
    facts = {
        "cpus": str(os.cpu_count()),
        "memory": f"{memory_kb / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres_version(),
    }
    for package in (
        "SQLAlchemy",
        "psycopg",
        "requests",
        "orjson",
        "werkzeug",
        "Authlib",
    ):
        facts[package] = metadata.version(package)
    facts["dlt"] = _dlt_version()

    return facts


def _postgres_version() -> str:
    try:
        engine = db.make_engine(POSTGRES_URL)
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar_one())
    except Exception:
        return "unreachable"


def _dlt_version() -> str:
    found = sorted(
        suites.PEERS_PYTHON.parent.parent.glob(
            "lib/python*/site-packages/dlt-*.dist-info"
        )
    )
    if not found:
        return "not installed"

    return found[-1].name.removesuffix(".dist-info").split("-", 1)[1]


def update_readme(path: Path, table: str, elapsed: float) -> None:
    """Replace what lies between the result markers of the README with `table`."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = f"Measured {stamp} in {elapsed / 60:.0f} minutes.\n\n{table}\n"
    path.write_text(f"{head}{START}\n{body}{END}{tail}", encoding="utf-8")


def _machine_text(facts: dict[str, str]) -> str:
    return "machine: " + ", ".join(f"{name} {value}" for name, value in facts.items())


def _log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
