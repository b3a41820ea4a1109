"""What providers really answer, and what the token manager makes of it."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import structlog

from job.clock import FakeClock
from job.errors import PermanentAuthError, TransientAuthError
from job.http_client import HttpClient
from job.retry import RetryPolicy
from job.sandbox import SandboxServer
from tests.factories import SANDBOX_SECRET
from tests.test_auth import manager_for

EventList = list[structlog.typing.EventDict]


def names(captured: EventList) -> list[str]:
    """The token and retry events, in order."""
    return [
        e["event"] for e in captured if e["event"].startswith(("token.", "request."))
    ]


def only(captured: EventList, name: str) -> structlog.typing.EventDict:
    (event,) = [e for e in captured if e["event"] == name]
    return event


@pytest.fixture
def wall_clock() -> FakeClock:
    """A fake clock starting at the real time, for JWT `exp` claims."""
    return FakeClock(start=datetime.now(UTC))


class TestLifetime:
    def test_a_numeric_string_expires_in(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """expires_in "300" counts as 300 seconds."""
        sandbox.state.expires_in_as_string = True

        token = manager_for(sandbox, clock).token()

        assert token.lifetime_s == 300
        assert token.expires_at == clock.now() + timedelta(seconds=300)

    def test_a_float_expires_in(self, sandbox: SandboxServer, clock: FakeClock) -> None:
        """expires_in 299.5 is kept as it is."""
        sandbox.state.token_body_overrides = {"expires_in": 299.5}

        assert manager_for(sandbox, clock).token().lifetime_s == 299.5

    @pytest.mark.parametrize("name", ["expires_on", "expires_at"])
    def test_an_epoch_expiry_field(
        self, sandbox: SandboxServer, clock: FakeClock, name: str
    ) -> None:
        """Entra ID v1 style: the expiry as epoch seconds (a string, even)."""
        epoch = int(clock.now().timestamp()) + 600
        sandbox.state.token_body_overrides = {"expires_in": None, name: str(epoch)}

        assert manager_for(sandbox, clock).token().lifetime_s == 600

    def test_an_iso_8601_expiry_field(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """expires_at as an ISO 8601 instant with a Z."""
        when = (clock.now() + timedelta(seconds=900)).isoformat()
        sandbox.state.token_body_overrides = {
            "expires_in": None,
            "expires_at": when.replace("+00:00", "Z"),
        }

        assert manager_for(sandbox, clock).token().lifetime_s == 900

    def test_no_expiry_uses_the_default_lifetime_and_warns_once(
        self, sandbox: SandboxServer, clock: FakeClock, captured: EventList
    ) -> None:
        """Missing expires_in: default_lifetime_s, one warning per provider."""
        sandbox.state.omit_expires_in = True
        manager = manager_for(sandbox, clock, default_lifetime_s="2m")

        first = manager.token()
        manager.invalidate()
        second = manager.token()

        assert first.lifetime_s == second.lifetime_s == 120
        warning = only(captured, "token.lifetime_missing")
        assert warning["assumed_lifetime_s"] == 120
        assert warning["log_level"] == "warning"

    def test_a_jwt_exp_counts_only_without_an_explicit_field(
        self, sandbox: SandboxServer, wall_clock: FakeClock
    ) -> None:
        """The JWT says 300 s; an explicit expires_in of 120 wins over it."""
        sandbox.state.jwt_access_tokens = True
        sandbox.state.token_body_overrides = {"expires_in": 120}
        explicit = manager_for(sandbox, wall_clock).token()

        sandbox.state.token_body_overrides = {"expires_in": None}
        from_jwt = manager_for(sandbox, wall_clock).token()

        assert explicit.lifetime_s == 120
        assert 297 <= from_jwt.lifetime_s <= 301


class TestTokenType:
    def test_lower_case_bearer_is_sent_as_bearer(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """token_type "bearer" is accepted and used as `Bearer` on requests."""
        sandbox.state.token_type_lowercase = True
        manager = manager_for(sandbox, clock)

        response = requests.get(sandbox.resource_url, auth=manager, timeout=5)

        assert response.status_code == 200
        assert response.request.headers["Authorization"].startswith("Bearer ")

    def test_an_unsupported_type_is_a_permanent_error(
        self, sandbox: SandboxServer, clock: FakeClock, captured: EventList
    ) -> None:
        """A DPoP token cannot be used as a bearer token: fail once, clearly."""
        sandbox.state.token_body_overrides = {"token_type": "DPoP"}

        with pytest.raises(PermanentAuthError, match="'DPoP' token; only Bearer"):
            manager_for(sandbox, clock).token()

        assert names(captured) == ["token.requested", "token.failed"]
        assert sandbox.state.token_requests == 1


class TestBadAnswers:
    def test_a_200_without_access_token(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """A success status with no token in it is a permanent failure."""
        sandbox.state.token_body_overrides = {"access_token": None}

        with pytest.raises(PermanentAuthError, match="has no access_token"):
            manager_for(sandbox, clock).token()

    def test_an_html_page_with_200_names_the_content_type_not_the_body(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """A login wall's HTML: permanent, and the page itself is not quoted."""
        sandbox.state.token_html_error = True
        sandbox.state.token_html_error_status = 200

        with pytest.raises(PermanentAuthError) as caught:
            manager_for(sandbox, clock).token()

        assert "not JSON (text/html; charset=utf-8); check token_url" in str(
            caught.value
        )
        assert "<html" not in str(caught.value)

    def test_an_html_page_with_500_is_transient(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """A gateway's 500 page is retried, then fails as transient."""
        sandbox.state.token_html_error = True

        with pytest.raises(TransientAuthError, match="answered 500"):
            manager_for(sandbox, clock, retry={"max_attempts": 3}).token()

        assert sandbox.state.token_requests == 3
        assert len(clock.sleeps) == 2

    @pytest.mark.parametrize(
        ("code", "hint"),
        [
            ("invalid_client", "check client_id and client_secret"),
            ("unauthorized_client", "may not use the client_credentials grant"),
            ("invalid_scope", "Entra ID wants api://<app>/.default"),
            ("unsupported_grant_type", "does not offer client_credentials"),
            ("invalid_request", "check audience, resource and extra_params"),
        ],
    )
    def test_permanent_codes_fail_at_once_saying_what_to_check(
        self,
        sandbox: SandboxServer,
        clock: FakeClock,
        captured: EventList,
        code: str,
        hint: str,
    ) -> None:
        """One request, no sleep, the provider's error and description, a hint."""
        sandbox.state.token_error_with_200 = True
        sandbox.state.token_error_code = code

        with pytest.raises(PermanentAuthError) as caught:
            manager_for(sandbox, clock).token()

        assert caught.value.message.startswith(
            f"provider 'sandbox' refused the token request (200): {code} "
            f"(The provider failed to issue a token.); "
        )
        assert hint in caught.value.message
        assert sandbox.state.token_requests == 1
        assert clock.sleeps == []
        assert names(captured) == ["token.requested", "token.failed"]
        failed = only(captured, "token.failed")
        assert {k: failed[k] for k in ("error", "status", "permanent")} == {
            "error": code,
            "status": 200,
            "permanent": True,
        }
        assert failed["error_description"] == "The provider failed to issue a token."

    def test_server_error_in_a_200_is_transient(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """server_error means "not now": retried like a 5xx."""
        sandbox.state.token_error_with_200 = True

        with pytest.raises(TransientAuthError):
            manager_for(sandbox, clock, retry={"max_attempts": 2}).token()

        assert sandbox.state.token_requests == 2


class TestTransientFailures:
    def test_429_waits_as_long_as_retry_after_says(
        self, sandbox: SandboxServer, clock: FakeClock, captured: EventList
    ) -> None:
        """Two 429s with Retry-After: 7, two 7 s sleeps, then a token."""
        sandbox.state.token_429_count = 2
        sandbox.state.retry_after_s = 7

        token = manager_for(sandbox, clock).token()

        assert token.value in sandbox.state.issued_tokens
        assert clock.sleeps == [7, 7]
        assert names(captured) == [
            "token.requested",
            "request.retry_scheduled",
            "token.requested",
            "request.retry_scheduled",
            "token.requested",
            "token.acquired",
        ]
        scheduled = [e for e in captured if e["event"] == "request.retry_scheduled"]
        assert {e["wait_source"] for e in scheduled} == {"retry_after"}
        assert {e["target"] for e in scheduled} == {"token"}

    def test_503_backs_off_with_the_retry_policy(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """temporarily_unavailable in a 503: full-jitter backoff, then a token."""
        sandbox.state.token_503_count = 1

        manager_for(sandbox, clock, retry={"backoff_base_s": 4}).token()

        assert len(clock.sleeps) == 1
        assert 2 <= clock.sleeps[0] <= 4

    def test_retries_stop_at_max_attempts(
        self, sandbox: SandboxServer, clock: FakeClock, captured: EventList
    ) -> None:
        """Still 429 after max_attempts: a transient token.failed, no more tries."""
        sandbox.state.token_429_count = 10

        with pytest.raises(TransientAuthError):
            manager_for(sandbox, clock, retry={"max_attempts": 3}).token()

        assert sandbox.state.token_requests == 3
        failed = only(captured, "token.failed")
        assert (failed["status"], failed["permanent"]) == (429, False)

    def test_a_provider_that_never_answers_times_out_transiently(
        self, sandbox: SandboxServer, clock: FakeClock, captured: EventList
    ) -> None:
        """A read timeout is retried like a 5xx, then fails as transient."""
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            manager = manager_for(
                sandbox,
                clock,
                token_url=f"http://127.0.0.1:{port}/token",
                read_timeout_s=0.05,
                retry={"max_attempts": 2},
            )

            with pytest.raises(TransientAuthError, match="no answer within"):
                manager.token()

        assert len(clock.sleeps) == 1
        assert only(captured, "token.failed")["permanent"] is False


class TestRequestParameters:
    def test_the_same_form_on_the_first_request_and_every_renewal(
        self, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """A scope list is joined; audience, resource and extras never drift."""
        sandbox.state.add_client("job-demo", SANDBOX_SECRET, scope="read:data profile")
        manager = manager_for(
            sandbox,
            clock,
            scope=["read:data", "profile"],
            audience="https://api.example",
            resource="https://api.example/data",
            extra_params={"tenant": "t-1"},
        )
        manager.token()
        first = sandbox.state.last_token_form

        clock.advance(290)
        renewed = manager.token()

        assert first == {
            "grant_type": "client_credentials",
            "scope": "read:data profile",
            "audience": "https://api.example",
            "resource": "https://api.example/data",
            "tenant": "t-1",
        }
        assert sandbox.state.token_requests == 2
        assert sandbox.state.last_token_form == first
        assert renewed.scope == "read:data profile"


class SleepHookClock(FakeClock):
    """A fake clock that runs a callback whenever someone sleeps on it."""

    def __init__(self, on_sleep: Any) -> None:
        super().__init__()
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.on_sleep()
        super().sleep(seconds)


class TestRetriedRequests:
    def test_a_retry_carries_the_token_renewed_while_waiting(
        self, sandbox: SandboxServer, captured: EventList
    ) -> None:
        """503, a wait past the leeway, the old token revoked: the retry is fresh."""

        def expire_while_waiting() -> None:
            sandbox.state.revoke_all_tokens()
            clock.advance(280)

        clock = SleepHookClock(expire_while_waiting)
        manager = manager_for(sandbox, clock)
        client = HttpClient(requests.Session(), clock=clock, policy=RetryPolicy())
        first = manager.token()
        sandbox.state.fail_503_count = 1

        response = client.get(sandbox.resource_url, auth=manager)

        second = sandbox.state.issued_tokens[-1]
        assert response.status_code == 200
        assert second != first.value
        assert response.request.headers["Authorization"] == f"Bearer {second}"
        assert "token.rejected" not in names(captured)
        assert only(captured, "token.renewed")["reason"] == "expiring"


class TestLifecycleEvents:
    def test_the_whole_life_of_a_token(
        self, sandbox: SandboxServer, clock: FakeClock, captured: EventList
    ) -> None:
        """Acquired, reused, expiring, renewed, rejected, renewed: each logged."""
        manager = manager_for(sandbox, clock)
        session = requests.Session()

        manager.token()
        manager.token()
        clock.advance(275)
        manager.token()
        sandbox.state.revoke_all_tokens()
        session.get(sandbox.resource_url, auth=manager, timeout=5)

        assert names(captured) == [
            "token.requested",
            "token.acquired",
            "token.reused",
            "token.expiring",
            "token.requested",
            "token.renewed",
            "token.reused",
            "token.rejected",
            "token.requested",
            "token.renewed",
        ]
        acquired = only(captured, "token.acquired")
        assert set(acquired) >= {
            "provider",
            "fingerprint",
            "expires_in",
            "expires_at",
            "scope",
            "reason",
        }
        assert [e["reason"] for e in captured if e["event"] == "token.renewed"] == [
            "expiring",
            "rejected",
        ]
        assert only(captured, "token.expiring")["remaining_s"] == 25
        assert only(captured, "token.rejected")["attempt"] == 1
        reused = [e for e in captured if e["event"] == "token.reused"]
        assert {e["log_level"] for e in reused} == {"debug"}
