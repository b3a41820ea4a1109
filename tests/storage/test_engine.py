"""The engine's pool on PostgreSQL: idle connections are checked, busy ones are not."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from job.storage import engine as db


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    pings: list[Any] = []
    real_ping = engine.dialect.do_ping

    def ping(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", ping)

    return pings


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
class TestIdleConnections:
    def test_a_connection_dropped_while_idle_is_replaced_before_use(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A server that dropped a pooled connection costs no failed statement."""
        first = backend_pid(engine)
        admin = db.make_engine(engine.url.render_as_string(hide_password=False))
        with admin.connect() as connection:
            connection.execute(
                text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": first}
            )
        admin.dispose()
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)

        second = backend_pid(engine)

        assert second != first

    def test_a_connection_back_within_a_second_is_not_pinged(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pages written back to back pay no round trip for a check."""
        pings = count_pings(engine, monkeypatch)
        backend_pid(engine)

        backend_pid(engine)
        backend_pid(engine)

        assert pings == []

    def test_a_connection_idle_past_the_limit_is_pinged_once(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The check happens at checkout, after the connection sat unused."""
        pings = count_pings(engine, monkeypatch)
        backend_pid(engine)
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)

        backend_pid(engine)

        assert len(pings) == 1
