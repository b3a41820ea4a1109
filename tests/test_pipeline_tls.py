"""Pulling an API whose certificate comes from a private CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from job.clock import FakeClock
from job.pipeline import RunResult
from job.sandbox import SandboxServer, SandboxSettings
from job.sandbox.tls import TestAuthority
from job.storage.engine import make_engine, upgrade
from tests.factories import SANDBOX_SECRET, make_pipeline, make_settings
from tests.leaks import LeakWatch


@pytest.fixture
def https_sandbox(tmp_path: Path, leak_watch: LeakWatch) -> Iterator[SandboxServer]:
    """The sandbox over HTTPS with a certificate from a throwaway CA."""
    authority = TestAuthority(tmp_path)
    settings = SandboxSettings(
        port=0, client_secret=SANDBOX_SECRET, records=120, default_page_size=50
    )
    context = authority.server_context(require_client_cert=False)
    with SandboxServer(settings, ssl_context=context) as server:
        server.ca_file = authority.ca_file  # type: ignore[attr-defined]
        leak_watch.watch_tokens(server.state)
        yield server


def pull(
    sandbox: SandboxServer, tmp_path: Path, clock: FakeClock, *, source_ca: bool
) -> RunResult:
    """One pull with the CA given to the provider, and to the source if asked."""
    ca = str(sandbox.ca_file)  # type: ignore[attr-defined]
    settings = make_settings(
        sandbox,
        f"sqlite:///{tmp_path / 'job.db'}",
        provider={"ca_bundle": ca},
        source={"ca_bundle": ca} if source_ca else {},
    )
    upgrade(make_engine(settings.database.url))

    return make_pipeline(settings, clock).pull("items")


class TestPrivateCertificateAuthority:
    def test_ca_bundle_on_the_source_lets_the_pull_through(
        self, https_sandbox: SandboxServer, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Provider and source each name the CA; every record arrives."""
        result = pull(https_sandbox, tmp_path, clock, source_ca=True)

        assert result.succeeded, result.error
        assert result.stats.inserted == 120

    def test_an_untrusted_api_certificate_fails_at_once_naming_the_fix(
        self, https_sandbox: SandboxServer, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Without ca_bundle on the source: no retries, and the message says so."""
        result = pull(https_sandbox, tmp_path, clock, source_ca=False)

        assert result.status == "failed"
        assert "set ca_bundle on the source" in str(result.error)
        assert result.stats.retries == 0
        assert https_sandbox.state.resource_requests == 0
