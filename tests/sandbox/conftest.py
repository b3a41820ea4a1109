"""Fixtures that run a real sandbox on a free loopback port and talk to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from job.sandbox import SandboxServer, SandboxSettings
from job.sandbox.testing import FakeMonotonic, SandboxCaller

SECRET = "test-secret"


@pytest.fixture
def sandbox_clock() -> FakeMonotonic:
    """The sandbox's clock, moved by hand."""
    return FakeMonotonic()


@pytest.fixture
def settings() -> SandboxSettings:
    """A small sandbox on a free port."""
    return SandboxSettings(client_secret=SECRET, port=0, records=250)


@pytest.fixture
def server(
    settings: SandboxSettings, sandbox_clock: FakeMonotonic
) -> Iterator[SandboxServer]:
    """A running sandbox, stopped after the test."""
    with SandboxServer(settings, monotonic=sandbox_clock) as running:
        yield running


@pytest.fixture
def api(server: SandboxServer) -> Iterator[SandboxCaller]:
    """An HTTP client for the running sandbox."""
    client = SandboxCaller(server)
    yield client
    client.session.close()


@pytest.fixture
def token(api: SandboxCaller) -> str:
    """A valid access token for the default client."""
    return api.token()
