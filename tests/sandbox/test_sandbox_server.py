"""Starting and stopping the sandbox, and what its settings accept."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from job.sandbox import SandboxServer, SandboxSettings
from job.sandbox.testing import SandboxCaller

SECRET = "server-test-secret"


class TestSandboxServer:
    def test_port_zero_picks_a_free_port(self, server: SandboxServer) -> None:
        """The URLs carry the port the server really bound."""
        port = int(server.url.rsplit(":", 1)[1])

        assert server.url.startswith("http://127.0.0.1:")
        assert port > 0
        assert server.token_url == server.url + "/oauth/token"
        assert server.resource_url == server.url + "/data/protected-resource"

    def test_context_manager_stops_serving(self, settings: SandboxSettings) -> None:
        """Leaving the with block closes the port."""
        with SandboxServer(settings) as server:
            url = server.token_url

        with pytest.raises(requests.ConnectionError):
            requests.post(url, timeout=2)

    def test_start_returns_the_server(self, settings: SandboxSettings) -> None:
        """start() returns self, so it chains; a second start is refused."""
        server = SandboxServer(settings)
        try:
            assert server.start() is server
            with pytest.raises(RuntimeError):
                server.start()
        finally:
            server.stop()

    def test_url_needs_a_started_server(self, settings: SandboxSettings) -> None:
        """Before start() the port is not known, so url raises."""
        with pytest.raises(RuntimeError, match="Start"):
            _ = SandboxServer(settings).url

    def test_stop_before_start_does_nothing(self, settings: SandboxSettings) -> None:
        """stop() on a server that never started is harmless."""
        SandboxServer(settings).stop()

    def test_busy_port_is_an_oserror(self) -> None:
        """A port already in use raises OSError instead of exiting."""
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            busy = SandboxSettings(client_secret=SECRET, port=port)

            with pytest.raises(OSError):
                SandboxServer(busy).start()

    def test_requests_are_served_in_parallel(
        self, api: SandboxCaller, server: SandboxServer, token: str
    ) -> None:
        """Slow responses overlap instead of queueing behind each other."""
        server.state.latency_s = 0.3
        callers = [
            threading.Thread(target=api.get, kwargs={"token": token}) for _ in range(4)
        ]

        started = time.monotonic()
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()

        assert time.monotonic() - started < 0.9
        assert server.state.resource_requests == 4


class TestSandboxSettings:
    def test_defaults(self) -> None:
        """The documented defaults."""
        settings = SandboxSettings(client_secret=SECRET)

        assert (settings.host, settings.port) == ("127.0.0.1", 8765)
        assert settings.client_id == "job-demo"
        assert settings.scope == "read:data"
        assert settings.token_lifetime_s == 300
        assert settings.records == 3000
        assert (settings.default_page_size, settings.max_page_size) == (100, 1000)
        assert settings.mutate_every_s is None
        assert settings.auth_methods == ("client_secret_basic", "client_secret_post")

    def test_repr_hides_the_secret(self) -> None:
        """Printing the settings never shows the client secret."""
        assert SECRET not in repr(SandboxSettings(client_secret=SECRET))

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
    def test_loopback_hosts_are_accepted(self, host: str) -> None:
        """Any loopback address may be used."""
        assert SandboxSettings(client_secret=SECRET, host=host).host == host

    @pytest.mark.parametrize(
        "host",
        ["0.0.0.0", "::", "192.0.2.1", "example.com"],  # noqa: S104 - refused
    )
    def test_other_hosts_are_refused(self, host: str) -> None:
        """The sandbox refuses to listen anywhere but loopback."""
        with pytest.raises(ValueError, match="loopback"):
            SandboxSettings(client_secret=SECRET, host=host)

    @pytest.mark.parametrize(
        "overrides",
        [
            {"client_secret": ""},
            {"port": 70000},
            {"token_lifetime_s": 0},
            {"records": -1},
            {"default_page_size": 0},
            {"default_page_size": 50, "max_page_size": 10},
            {"mutate_every_s": 0},
            {"auth_methods": ("private_key_jwt",)},
            {"auth_methods": ()},
        ],
    )
    def test_bad_values_are_refused(self, overrides: dict[str, object]) -> None:
        """Values that cannot work raise ValueError naming the field."""
        values: dict[str, object] = {"client_secret": SECRET, **overrides}

        with pytest.raises(ValueError, match=next(iter(overrides))):
            SandboxSettings(**values)  # type: ignore[arg-type]


class TestSandboxState:
    def test_misspelt_knob_is_an_error(self, server: SandboxServer) -> None:
        """Setting a knob that does not exist raises instead of doing nothing."""
        with pytest.raises(AttributeError):
            server.state.fail_503_cuont = 1  # type: ignore[attr-defined]

    def test_issued_tokens_is_a_copy(self, server: SandboxServer, token: str) -> None:
        """Changing the returned list does not change the record of tokens."""
        server.state.issued_tokens.clear()

        assert server.state.issued_tokens == [token]

    def test_add_client_checks_methods(self, server: SandboxServer) -> None:
        """Registering a client with an unknown auth method fails."""
        with pytest.raises(ValueError, match="auth_methods"):
            server.state.add_client("x", "y", auth_methods=("none",))
