"""The token manager against the real sandbox provider."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests
import structlog

from job.auth import TokenManager, TokenManagers, basic_credentials, fingerprint
from job.clock import FakeClock
from job.config import ProviderSettings
from job.errors import PermanentAuthError, TransientAuthError
from job.sandbox import SandboxServer
from tests.factories import SANDBOX_SECRET, make_settings


def provider_for(sandbox: SandboxServer, **overrides: Any) -> ProviderSettings:
    return make_settings(sandbox, provider=overrides).providers["sandbox"]


def manager_for(
    sandbox: SandboxServer, clock: FakeClock, **overrides: Any
) -> TokenManager:
    return TokenManager(
        provider_for(sandbox, **overrides), session=requests.Session(), clock=clock
    )


def events(captured: list[structlog.typing.EventDict], prefix: str) -> list[str]:
    return [e["event"] for e in captured if e["event"].startswith(prefix)]


class TestClientAuthentication:
    def test_basic_encodes_id_and_secret_before_base64(self) -> None:
        """RFC 6749 2.3.1: each part is form-urlencoded, then joined and encoded."""
        header = basic_credentials("a b", "x:y+z/%é")

        assert header == "Basic YSUyMGI6eCUzQXklMkJ6JTJGJTI1JUMzJUE5"

    @pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
    def test_a_secret_full_of_specials_is_accepted(
        self, sandbox: SandboxServer, clock: FakeClock, method: str
    ) -> None:
        """`: + / %`, spaces and non-ASCII reach the strict sandbox intact."""
        token = manager_for(sandbox, clock, auth_method=method).token()

        assert token.value in sandbox.state.issued_tokens
        assert token.scope == "read:data"

    def test_post_sends_credentials_only_in_the_body(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """client_secret_post never also sends an Authorization header."""
        manager = manager_for(sandbox, clock, auth_method="client_secret_post")

        headers, form = manager.describe_request()

        assert "Authorization" not in headers
        assert form["client_id"] == "job-demo"
        assert form["client_secret"] == "***"

    def test_wrong_secret_is_permanent_and_says_what_to_check(
        self, sandbox: SandboxServer, clock: FakeClock, captured: list[Any]
    ) -> None:
        """invalid_client fails at once, without retries, naming the fix."""
        manager = manager_for(sandbox, clock, client_secret="wrong-secret-value")

        with pytest.raises(PermanentAuthError) as caught:
            manager.token()

        assert caught.value.error == "invalid_client"
        assert "check client_id and client_secret" in str(caught.value)
        assert sandbox.state.token_requests == 1
        assert events(captured, "token.") == ["token.requested", "token.failed"]
        assert captured[-1]["permanent"] is True

    def test_unreachable_token_url_is_transient_and_retried(
        self, clock: FakeClock, sandbox: SandboxServer
    ) -> None:
        """A refused connection is retried, then fails with a clear message."""
        manager = manager_for(
            sandbox, clock, token_url="http://127.0.0.1:9/oauth/token"
        )

        with pytest.raises(TransientAuthError, match="cannot connect"):
            manager.token()

        assert len(clock.sleeps) == 4


class TestTokenReuseAndRenewal:
    def test_reuses_a_valid_token(
        self, sandbox: SandboxServer, clock: FakeClock, captured: list[Any]
    ) -> None:
        """A second request within the lifetime asks the provider nothing."""
        manager = manager_for(sandbox, clock)

        first, second = manager.token(), manager.token()

        assert first is second
        assert sandbox.state.token_requests == 1
        assert events(captured, "token.") == [
            "token.requested",
            "token.acquired",
            "token.reused",
        ]

    def test_renews_when_the_leeway_is_reached(
        self, sandbox: SandboxServer, clock: FakeClock, captured: list[Any]
    ) -> None:
        """Default leeway: min(60 s, a tenth of 300 s) = 30 s before expiry."""
        manager = manager_for(sandbox, clock)
        first = manager.token()

        clock.advance(269)
        kept = manager.token()
        clock.advance(2)
        renewed = manager.token()

        assert kept is first
        assert renewed.value != first.value
        assert sandbox.state.token_requests == 2
        assert "token.expiring" in events(captured, "token.")
        acquired = [e for e in captured if e["event"] == "token.renewed"]
        assert acquired[0]["fingerprint"] == fingerprint(renewed.value)
        assert acquired[0]["expires_in"] == 300

    def test_wall_clock_jumps_do_not_matter(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """Expiry is on the monotonic clock: a wall jump of a day renews nothing."""
        manager = manager_for(sandbox, clock)
        first = manager.token()

        clock.jump_wall(86400)

        assert manager.token() is first

    def test_configured_leeway_wins(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """leeway_s overrides the default of 30 s for 300 s tokens."""
        manager = manager_for(sandbox, clock, leeway_s=100)
        first = manager.token()

        clock.advance(199)
        kept = manager.token()
        clock.advance(2)

        assert kept is first
        assert manager.token() is not first

    def test_single_flight(self, sandbox: SandboxServer, clock: FakeClock) -> None:
        """Twenty threads asking at once cause one token request."""
        manager = manager_for(sandbox, clock)
        sandbox.state.latency_s = 0.0
        barrier = threading.Barrier(20)
        got: list[str] = []

        def ask() -> None:
            barrier.wait()
            got.append(manager.token().value)

        threads = [threading.Thread(target=ask) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sandbox.state.token_requests == 1
        assert len(set(got)) == 1


class TestRejection:
    def test_a_401_renews_once_and_resends(
        self, sandbox: SandboxServer, clock: FakeClock, captured: list[Any]
    ) -> None:
        """A revoked token: one token.rejected, a new token, the request succeeds."""
        manager = manager_for(sandbox, clock)
        session = requests.Session()
        assert session.get(sandbox.resource_url, auth=manager).ok
        sandbox.state.revoke_all_tokens()

        response = session.get(sandbox.resource_url, auth=manager)

        assert response.status_code == 200
        assert sandbox.state.token_requests == 2
        assert events(captured, "token.rejected") == ["token.rejected"]

    def test_a_second_401_is_returned_with_two_rejections_logged(
        self, sandbox: SandboxServer, clock: FakeClock, captured: list[Any]
    ) -> None:
        """If the fresh token is refused too, the 401 comes back; no loop."""
        manager = manager_for(sandbox, clock)
        session = requests.Session()
        sandbox.state.revoke_tokens_on_use = True

        response = session.get(sandbox.resource_url, auth=manager)

        assert response.status_code == 401
        assert sandbox.state.token_requests == 2
        assert events(captured, "token.rejected") == ["token.rejected"] * 2


class TestTokenCache:
    def test_sources_with_the_same_request_share_a_token(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """Two providers with identical token requests share one manager."""
        managers = TokenManagers(session=requests.Session(), clock=clock)
        one = provider_for(sandbox)
        two = provider_for(sandbox).model_copy(update={"name": "alias"})

        assert managers.for_provider(one) is managers.for_provider(two)

    def test_a_different_scope_gets_its_own_token(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """A different scope (or audience) never shares a token."""
        managers = TokenManagers(session=requests.Session(), clock=clock)
        one = provider_for(sandbox)
        two = provider_for(sandbox, audience="https://api.example")

        assert managers.for_provider(one) is not managers.for_provider(two)

    @pytest.mark.parametrize(
        "difference",
        [
            {"resource": "https://api.example"},
            {"extra_params": {"tenant": "t-2"}},
            {"auth_method": "client_secret_post"},
        ],
    )
    def test_any_other_difference_in_the_request_gets_its_own_token(
        self, sandbox: SandboxServer, clock: FakeClock, difference: dict[str, Any]
    ) -> None:
        """Resource, extra_params or auth method: never the same cached token."""
        managers = TokenManagers(session=requests.Session(), clock=clock)
        one = provider_for(sandbox, extra_params={"tenant": "t-1"})
        two = provider_for(sandbox, **{"extra_params": {"tenant": "t-1"}, **difference})

        assert managers.for_provider(one) is not managers.for_provider(two)


class TestNoLeaks:
    def test_the_token_repr_hides_the_value(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """repr(Token) shows the fingerprint, never the token."""
        token = manager_for(sandbox, clock).token()

        assert token.value not in repr(token)
        assert token.fingerprint in repr(token)

    def test_fingerprint_is_not_a_prefix(self) -> None:
        """The fingerprint is a hash: it shares no prefix with the token."""
        value = "abcdefghijklmnopqrstuvwxyz"

        assert not value.startswith(fingerprint(value)[:4])
        assert fingerprint(value) == fingerprint(value)

    def test_the_secret_is_masked_in_describe_request(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """The request shown by `job token --verbose` has no credentials."""
        headers, form = manager_for(sandbox, clock).describe_request()

        assert SANDBOX_SECRET not in str((headers, form))
        assert headers["Authorization"] == "Basic ***"


class TestLeewayBounds:
    def test_a_leeway_longer_than_the_lifetime_is_halved(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """leeway_s of an hour on 300 s tokens still reuses a token for 150 s."""
        manager = manager_for(sandbox, clock, leeway_s=3600)
        first = manager.token()

        clock.advance(149)
        kept = manager.token()
        clock.advance(2)

        assert kept is first
        assert manager.token() is not first
        assert sandbox.state.token_requests == 2
