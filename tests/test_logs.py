"""The redacting log pipeline: secrets and tokens never reach the output."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import structlog
from _pytest.logging import LogCaptureHandler

from job.auth import basic_credentials
from job.clock import FakeClock
from job.errors import AuthError
from job.logs import LIBRARY_LOGGERS, SECRETS, configure_logging
from job.sandbox import SandboxServer
from tests.factories import SANDBOX_SECRET, make_settings
from tests.leaks import LeakWatch
from tests.test_auth import manager_for

# Registered with the redactor only, so a failure here shows the value.
PLANTED = "planted-Secret-0123456789"


@pytest.fixture
def rendered(leak_watch: LeakWatch) -> Iterator[io.StringIO]:
    """Logging configured as the CLI does (JSON, DEBUG) into a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream)
    # The in-process sandbox's Authlib logs each token it issues at DEBUG; that
    # is the provider's log, not ours, and pytest would keep it unredacted.
    logging.getLogger("authlib").setLevel(logging.INFO)
    SECRETS.add(PLANTED)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    structlog.reset_defaults()
    leak_watch.output("the rendered log", stream.getvalue())


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


log = structlog.get_logger("tests.logs")


@contextlib.contextmanager
def past_pytest_capture() -> Iterator[None]:
    """Only the CLI's handler sees records: for tests that log real secrets.

    pytest's capture handlers keep the raw records, before any redaction,
    and the leak check reads them; a real secret logged on purpose to prove
    the redactor must not reach them.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if not isinstance(h, LogCaptureHandler)]
    own = logging.getLogger("tests.logs")
    own.handlers, own.propagate = ours, False
    try:
        yield
    finally:
        own.handlers, own.propagate = [], True


class TestRedaction:
    def test_a_registered_secret_in_any_field(self, rendered: io.StringIO) -> None:
        """A known secret is masked in the event, in nested values and in lists."""
        log.info("thing.happened", detail=f"x {PLANTED} y", nested={"a": [PLANTED]})

        (line,) = lines(rendered)
        assert line["detail"] == "x *** y"
        assert line["nested"] == {"a": ["***"]}

    def test_an_exception_message_and_its_traceback(
        self, rendered: io.StringIO
    ) -> None:
        """log.exception renders the traceback; the secret in it is masked."""
        try:
            raise RuntimeError(f"provider echoed {PLANTED}")
        except RuntimeError:
            log.exception("run.crashed")

        text = rendered.getvalue()
        assert "provider echoed ***" in text
        assert PLANTED not in text

    def test_a_url_with_credentials(self, rendered: io.StringIO) -> None:
        """user:password@ in a URL loses the password, whatever it is."""
        log.warning("x.failed", url="https://svc:hunter2-unknown@api.example/v1")

        (line,) = lines(rendered)
        assert line["url"] == "https://svc:***@api.example/v1"

    @pytest.mark.parametrize(
        "header",
        [
            "Authorization: Bearer eyJhbGciOi.unknown-token.value",
            "{'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}",
            "authorization=DPoP some-dpop-token-value",
        ],
    )
    def test_authorization_headers_in_a_library_record(
        self, rendered: io.StringIO, header: str
    ) -> None:
        """A stdlib record (args and all) loses the credential of the header."""
        logging.getLogger("urllib3.connectionpool").debug("send: %s", header)

        (line,) = lines(rendered)
        event = str(line["event"])
        assert event.startswith("send: ")
        assert "***" in event
        assert header.split()[-1].strip("'}") not in event

    def test_a_credential_form_field(self, rendered: io.StringIO) -> None:
        """client_secret= and client_assertion= in a dumped body are masked."""
        body = (
            "grant_type=client_credentials&client_secret=abc123&client_assertion=e.y.J"
        )

        log.debug("body.dumped", body=body)

        (line,) = lines(rendered)
        assert line["body"] == (
            "grant_type=client_credentials&client_secret=***&client_assertion=***"
        )

    def test_urllib3_debug_log_of_a_real_request(
        self, rendered: io.StringIO, sandbox: SandboxServer
    ) -> None:
        """urllib3 at DEBUG logs the request line; a token in the query is masked."""
        requests.get(sandbox.resource_url, params={"token": PLANTED}, timeout=5)

        text = rendered.getvalue()
        assert "urllib3.connectionpool" in text
        assert "token=***" in text
        assert PLANTED not in text

    def test_the_configured_secret_and_its_basic_header(
        self, rendered: io.StringIO, sandbox: SandboxServer
    ) -> None:
        """The CLI registers every configured secret; it and the Basic header go."""
        SECRETS.add_all(make_settings(sandbox).secrets())
        header = basic_credentials("job-demo", SANDBOX_SECRET)

        with past_pytest_capture():
            log.error("oops", message=f"secret {SANDBOX_SECRET}", header=header)

        (line,) = lines(rendered)
        assert line["message"] == "secret ***"
        assert line["header"] == "Basic ***"

    def test_every_issued_token(
        self, rendered: io.StringIO, sandbox: SandboxServer, clock: FakeClock
    ) -> None:
        """A token the manager received is masked wherever it turns up."""
        token = manager_for(sandbox, clock).token()

        with past_pytest_capture():
            log.error("oops", message=f"the API echoed {token.value} back")

        assert lines(rendered)[-1]["message"] == "the API echoed *** back"


def _wrong_secret(sandbox: SandboxServer) -> dict[str, object]:
    return {"client_secret": "wrong-secret-but-still-secret"}


FAILURE_PATHS = {
    "invalid_client": lambda s: {"client_secret": "wrong-but-still-a-secret"},
    "html_error_page": lambda s: setattr(s.state, "token_html_error", True),
    "error_in_a_200": lambda s: setattr(s.state, "token_error_with_200", True),
    "rate_limited": lambda s: setattr(s.state, "token_429_count", 10),
    "dpop_token": lambda s: setattr(
        s.state, "token_body_overrides", {"token_type": "DPoP"}
    ),
    "no_access_token": lambda s: setattr(
        s.state, "token_body_overrides", {"access_token": None}
    ),
    "connection_refused": lambda s: {"token_url": "http://127.0.0.1:9/token"},
}


class TestEveryFailurePath:
    @pytest.mark.parametrize("path", sorted(FAILURE_PATHS))
    def test_nothing_secret_reaches_the_log_or_the_error(
        self,
        rendered: io.StringIO,
        sandbox: SandboxServer,
        clock: FakeClock,
        leak_watch: LeakWatch,
        path: str,
    ) -> None:
        """Each way a token request fails, logged at DEBUG with its traceback."""
        overrides = FAILURE_PATHS[path](sandbox) or {}
        if "client_secret" in overrides:
            leak_watch.secret(str(overrides["client_secret"]), "job-demo")
        manager = manager_for(sandbox, clock, retry={"max_attempts": 2}, **overrides)

        with pytest.raises(AuthError) as caught:
            manager.token()
        log.exception("run.crashed", error=str(caught.value))

        leak_watch.output("the error message", str(caught.value))
        assert "token.failed" in rendered.getvalue()

    def test_a_second_401_leaks_neither_token(
        self,
        rendered: io.StringIO,
        sandbox: SandboxServer,
        clock: FakeClock,
    ) -> None:
        """Both rejected tokens stay out of the log, requests' DEBUG lines included."""
        sandbox.state.revoke_tokens_on_use = True
        manager = manager_for(sandbox, clock)

        response = requests.get(sandbox.resource_url, auth=manager, timeout=5)
        with past_pytest_capture():
            log.warning("resource.refused", headers=dict(response.request.headers))

        assert response.status_code == 401
        assert lines(rendered)[-1]["headers"]["Authorization"] == "Bearer ***"
