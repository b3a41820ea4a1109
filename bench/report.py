"""Figures measured over several runs, summarised as min, median and max."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Figure:
    """One measured quantity, every run's value, and its target if it has one."""

    benchmark: str
    database: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    # Given the median, whether the target is met.
    check: Callable[[float], bool] | None = field(default=None, repr=False)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def verdict(self) -> str:
        if self.check is None or not self.values:
            return ""
        return "met" if self.check(self.median) else "NOT met"

    def as_dict(self) -> dict[str, object]:
        return {
            "benchmark": self.benchmark,
            "database": self.database,
            "name": self.name,
            "unit": self.unit,
            "values": self.values,
            "min": min(self.values) if self.values else None,
            "median": self.median if self.values else None,
            "max": max(self.values) if self.values else None,
            "target": self.target,
            "verdict": self.verdict(),
            "note": self.note,
        }


def at_least(bound: float) -> Callable[[float], bool]:
    return lambda value: value >= bound


def at_most(bound: float) -> Callable[[float], bool]:
    return lambda value: value <= bound


def number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(figures: list[Figure]) -> str:
    """The table for bench/README.md."""
    lines = [
        "| benchmark | db | figure | min | median | max | unit | target | verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for figure in figures:
        if not figure.values:
            lines.append(
                f"| {figure.benchmark} | {figure.database} | {figure.name} | | | | "
                f"| {figure.target} | skipped: {figure.note} |"
            )
            continue
        low, mid, high = min(figure.values), figure.median, max(figure.values)
        lines.append(
            f"| {figure.benchmark} | {figure.database} | {figure.name} | "
            f"{number(low)} | {number(mid)} | {number(high)} | {figure.unit} | "
            f"{figure.target} | {figure.verdict()} |"
        )

    return "\n".join(lines)
