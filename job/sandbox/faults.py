"""The misbehaviour the sandbox can put on, one `SandboxState` knob at a time.

Faults that replace a whole answer are decided before the token or the
request is even looked at, as a flaky proxy in front of the real service
would. Only ``truncated_body_count`` and ``fail_after_pages`` wait for a
request that would have been served a page, since they are about pages.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import orjson
from flask import Response

from job.sandbox.state import SandboxState

_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service error</title></head>"
    b"<body><h1>Something went wrong</h1><p>Please try again later.</p>"
    b"</body></html>\n"
)


def json_error(
    status: int,
    error: str,
    description: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """An RFC 6749 §5.2 shaped JSON error."""
    body = orjson.dumps({"error": error, "error_description": description})

    return Response(body, status, headers, content_type="application/json")


def html_page(status: int) -> Response:
    """The kind of HTML error page a gateway or a login wall sends."""
    return Response(_HTML_PAGE, status, content_type="text/html; charset=utf-8")


def token_fault(state: SandboxState) -> Response | None:
    """The answer to a token request while a token quirk is on, if any."""
    if state.take("token_429_count"):
        return _too_many_requests(state)
    if state.take("token_503_count"):
        return unavailable(503)
    if state.token_html_error:
        return html_page(state.token_html_error_status)
    if state.token_error_with_200:
        return json_error(
            200, state.token_error_code, "The provider failed to issue a token."
        )

    return None


def resource_fault(
    state: SandboxState, environ: dict[str, Any], stopping: threading.Event
) -> Response | None:
    """Misbehave on a resource request if a knob says so, else return None."""
    if state.take("drop_connection_count"):
        return drop_connection(environ)
    if state.take("stall_count"):
        # Hold the request until the server stops, then hang up unanswered.
        stopping.wait()
        return drop_connection(environ)
    if state.latency_s > 0:
        stopping.wait(state.latency_s)

    return _status_fault(state)


def _status_fault(state: SandboxState) -> Response | None:
    if state.take("fail_503_count"):
        return unavailable(503)
    if state.take("fail_429_count"):
        return _too_many_requests(state)
    status = state.draw_random_fault()
    if status == 429:
        return _too_many_requests(state)
    if status is not None:
        return unavailable(status)
    if state.take("html_200_count"):
        return html_page(200)

    return None


def drop_connection(environ: dict[str, Any]) -> Response:
    """Close the client's socket so it never sees an HTTP response.

    The returned response is never delivered: writing it fails on the closed
    socket, which werkzeug treats as a client that went away.
    """
    connection: socket.socket = environ["werkzeug.socket"]
    # If the client hung up first, the connection is gone either way.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)

    return Response(b"", 500)


def truncate(body: bytes) -> bytes:
    """Cut a JSON body in half, as a proxy that gave up mid-stream would."""
    return body[: len(body) // 2]


def _too_many_requests(state: SandboxState) -> Response:
    headers = {"Retry-After": str(state.retry_after_s)}

    return json_error(429, "rate_limited", "Too many requests; slow down.", headers)


def unavailable(status: int) -> Response:
    """A JSON error with a 5xx status, as an overloaded service sends."""
    return json_error(
        status, "temporarily_unavailable", f"Injected fault: status {status}."
    )
