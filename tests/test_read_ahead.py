"""`read_ahead`: the next page is made on a worker while the caller stores this one."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Generator
from contextlib import closing

import pytest
import requests
from sqlalchemy.engine import Engine

from job.clock import FakeClock
from job.pipeline import Pipeline, read_ahead
from job.sandbox import SandboxServer
from job.storage.store import Store
from tests.factories import make_settings

WHO = contextvars.ContextVar("who", default="nobody")


class TestReadAhead:
    def test_items_come_in_order_and_all_of_them(self) -> None:
        """Nothing is reordered, lost or repeated."""
        assert list(
            read_ahead((item for item in range(50)), threading.Event())
        ) == list(range(50))

    def test_the_next_item_is_made_while_the_caller_holds_this_one(self) -> None:
        """The overlap that the pipeline is for: item 2 is made during item 1."""
        second_made = threading.Event()

        def items() -> Generator[int, None, None]:
            yield 1
            second_made.set()
            yield 2

        got = []
        for item in read_ahead(items(), threading.Event()):
            if item == 1:
                # Serial code would only make item 2 after this returns.
                assert second_made.wait(timeout=10)
            got.append(item)

        assert got == [1, 2]

    def test_an_error_comes_out_after_the_items_before_it(self) -> None:
        """A fetch that fails on page 3 fails the pull after pages 1 and 2."""

        def items() -> Generator[int, None, None]:
            yield 1
            yield 2
            raise ValueError("page 3 broke")

        got = []
        with pytest.raises(ValueError, match="page 3 broke"):
            for item in read_ahead(items(), threading.Event()):
                got.append(item)

        assert got == [1, 2]

    def test_stopping_early_closes_the_source_and_waits_for_it(self) -> None:
        """A caller that stops leaves no worker behind, and the source's cleanup ran."""
        cleaned_up = threading.Event()
        made = []

        def items() -> Generator[int, None, None]:
            try:
                for item in range(100):
                    made.append(item)
                    yield item
            finally:
                cleaned_up.set()

        with closing(read_ahead(items(), threading.Event())) as ahead:
            for item in ahead:
                if item == 3:
                    break

        assert cleaned_up.is_set()
        assert made == [0, 1, 2, 3, 4]
        assert not [t for t in threading.enumerate() if t.name.startswith("read-ahead")]

    def test_items_are_made_in_the_callers_context(self) -> None:
        """Log fields and the run's counters, bound by the caller, reach the worker."""

        def items() -> Generator[str, None, None]:
            yield WHO.get()

        token = WHO.set("the run")
        try:
            assert list(read_ahead(items(), threading.Event())) == ["the run"]
        finally:
            WHO.reset(token)

    def test_once_stopped_no_further_item_is_asked_for(self) -> None:
        """A stop during a slow fetch waits for that fetch only, not the next."""
        stop = threading.Event()
        made = []

        def items() -> Generator[int, None, None]:
            for item in range(100):
                made.append(item)
                if item == 2:
                    stop.set()
                yield item

        got = list(read_ahead(items(), stop))

        assert got == [0, 1, 2]
        assert made == [0, 1, 2]


class TestPipelineReadsAhead:
    @pytest.mark.parametrize("wanted", [True, False])
    def test_only_on_postgresql_and_only_when_wanted(
        self, sandbox: SandboxServer, engine: Engine, clock: FakeClock, wanted: bool
    ) -> None:
        """Pages come from the worker on PostgreSQL; otherwise from the caller."""
        settings = make_settings(sandbox, engine.url.render_as_string(False))
        session = requests.Session()
        fetched_on: set[str] = set()
        session.hooks["response"].append(
            lambda *_, **__: fetched_on.add(threading.current_thread().name)
        )
        pipeline = Pipeline(
            settings,
            store=Store(engine, clock),
            session=session,
            clock=clock,
            read_ahead=wanted,
        )

        assert pipeline.pull("items").succeeded
        on_worker = wanted and engine.dialect.name == "postgresql"
        assert fetched_on == ({"read-ahead_0"} if on_worker else {"MainThread"})
