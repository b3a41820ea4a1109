"""The sandbox's Flask app: the token endpoint and the protected data endpoint."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import orjson
from authlib.oauth2 import OAuth2Error
from flask import Flask, Response, request
from werkzeug.datastructures import MultiDict

from job.sandbox import faults, paging
from job.sandbox.oauth import (
    SandboxAuthorizationServer,
    SandboxProtector,
    bearer_error_response,
)
from job.sandbox.records import Page, decode_cursor, encode_cursor, parse_since
from job.sandbox.state import SandboxState

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a credential
RESOURCE_PATH = "/data/protected-resource"

# Never echoed into state.last_token_form, which tests print freely: a
# client assertion is a bearer credential too until it expires.
_SECRET_FIELDS = frozenset({"client_secret", "client_assertion"})


@dataclass(frozen=True)
class PageQuery:
    """The validated query of one resource request."""

    page_size: int
    since: str | None
    since_s: float | None
    after: int | None
    # A backfill window, half-open on updated_at: [from, to).
    window: tuple[str | None, str | None] = (None, None)
    until_s: float | None = None


def create_app(state: SandboxState, stopping: threading.Event) -> Flask:
    """Build the WSGI app; ``stopping`` is set when the server shuts down."""
    app = Flask(__name__)
    views = _Views(state, stopping)
    app.add_url_rule(TOKEN_PATH, "token", views.token, methods=["POST"])
    app.add_url_rule(RESOURCE_PATH, "resource", views.resource, methods=["GET"])

    return app


class _Views:
    """The two endpoints, bound to one sandbox's state."""

    def __init__(self, state: SandboxState, stopping: threading.Event) -> None:
        self._state = state
        self._stopping = stopping
        self._authorization = SandboxAuthorizationServer(state)
        self._protector = SandboxProtector(state)

    def token(self) -> Response:
        form = {k: v for k, v in request.form.items() if k not in _SECRET_FIELDS}
        self._state.count_token_request(form)
        fault = faults.token_fault(self._state)
        if fault is not None:
            return fault

        return self._authorization.token_response()

    def resource(self) -> Response:
        with self._state.resource_request():
            return self._resource()

    def _resource(self) -> Response:
        fault = faults.resource_fault(self._state, request.environ, self._stopping)
        if fault is not None:
            return fault

        if self._state.revoke_tokens_on_use:
            self._revoke_presented_token()
        try:
            self._protector.check()
        except OAuth2Error as error:
            return bearer_error_response(error)

        if not self._state.spend_page():
            return faults.unavailable(503)

        return self._page_response()

    def _revoke_presented_token(self) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, access_token = header.partition(" ")
        if scheme.lower() == "bearer":
            self._state.revoke_token(access_token.strip())

    def _page_response(self) -> Response:
        state = self._state
        if paging.is_requested(request.args):
            return paging.response(state, request.args, request.path)
        try:
            query = parse_page_query(
                request.args, state.default_page_size, state.max_page_size
            )
        except ValueError as exc:
            return faults.json_error(400, "invalid_request", str(exc))
        page = state.records.page(
            state.epoch,
            since_s=query.since_s,
            after=query.after,
            size=query.page_size,
            until_s=query.until_s,
        )
        body = render_page(page, next_link(query, page, state.repeat_next_link))
        if state.take("truncated_body_count"):
            body = faults.truncate(body)

        return Response(body, 200, content_type="application/json")


def parse_page_query(
    args: MultiDict[str, str], default_size: int, max_size: int
) -> PageQuery:
    """Validate the paging and filter parameters; ValueError says which is bad."""
    page_size = _parse_page_size(args.get("page_size"), default_size, max_size)
    since = args.get("since")
    since_s = _parse_instant("since", since)
    after_text = args.get("after")
    after = None if after_text is None else decode_cursor(after_text)
    start, end = args.get("from"), args.get("to")
    start_s = _parse_instant("from", start)
    if start_s is not None:
        since_s = start_s if since_s is None else max(since_s, start_s)

    return PageQuery(
        page_size,
        since,
        since_s,
        after,
        window=(start, end),
        until_s=_parse_instant("to", end),
    )


def _parse_instant(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError:
        raise ValueError(
            f"{name}={text!r} is not an ISO 8601 date-time, e.g. 2024-01-01T00:00:00Z."
        ) from None


def _parse_page_size(text: str | None, default_size: int, max_size: int) -> int:
    if text is None:
        return default_size
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"page_size={text!r} must be a whole number from 1.")

    # Larger pages than the server allows are cut down, as most APIs do.
    return min(size, max_size)


def next_link(query: PageQuery, page: Page, repeat: bool) -> str | None:
    """The relative URL of the page after this one, or None at the end."""
    if repeat and page.items:
        # A buggy server handing out the link to the page just served.
        after = query.after
    elif page.has_more and page.last_key is not None:
        after = page.last_key
    else:
        return None
    params: list[tuple[str, str]] = [("page_size", str(query.page_size))]
    if query.since is not None:
        params.append(("since", query.since))
    for name, value in zip(("from", "to"), query.window, strict=True):
        if value is not None:
            params.append((name, value))
    if after is not None:
        params.append(("after", encode_cursor(after)))

    return f"{RESOURCE_PATH}?{urlencode(params, quote_via=quote)}"


def render_page(page: Page, next_url: str | None) -> bytes:
    """Assemble the response body from records that are already rendered."""
    items = b",".join(page.items)

    return b'{"items":[' + items + b'],"next":' + orjson.dumps(next_url) + b"}"
