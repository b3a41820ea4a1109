"""A fast resource endpoint for benchmarks: cached page bodies, keep-alive, one write.

The Flask sandbox builds every answer through werkzeug's development server,
which is fine for tests and far too slow to stand in for a real API when we
measure how fast `job` stores records. This server answers the same
``GET /data/protected-resource`` with the same pages (built by the same code
and cached per epoch and query), over HTTP/1.1 keep-alive with
``TCP_NODELAY`` and each response written at once. It checks bearer tokens
against the `SandboxState` it shares with a running `SandboxServer`, so tokens
still come from the real Authlib provider.

It also understands ``until=`` (an ISO 8601 instant, exclusive), so a
backfill's windows each get only their own records.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left, bisect_right
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import ceil
from urllib.parse import parse_qsl, quote, urlsplit

from werkzeug.datastructures import MultiDict

from job.sandbox.app import RESOURCE_PATH, next_link, parse_page_query, render_page
from job.sandbox.oauth import REALM, REQUIRED_SCOPE
from job.sandbox.records import Page, parse_since
from job.sandbox.state import SandboxState

# records.py packs (seconds after BASE_TIME, id) into one sort key this way.
_ID_BITS = 32


class PageBodies:
    """Response bodies by epoch and query, rendered once and then reused."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._cache: dict[tuple[int, str], bytes] = {}
        self._lock = threading.Lock()

    def body(self, query_string: str) -> bytes:
        """The body for this query at the current epoch; ValueError if it is bad."""
        key = (self._state.epoch, query_string)
        body = self._cache.get(key)
        if body is None:
            body = self._render(key[0], query_string)
            with self._lock:
                self._cache[key] = body

        return body

    def warm(self, page_size: int) -> int:
        """Render every page of a full pull at this page size; return the count."""
        query = f"page_size={page_size}"
        pages = 0
        while query:
            body = self.body(query)
            pages += 1
            query = _next_query(body)

        return pages

    def forget(self) -> None:
        """Drop every cached body (after the data moved to a new epoch)."""
        with self._lock:
            self._cache.clear()

    def _render(self, epoch: int, query_string: str) -> bytes:
        state = self._state
        args = MultiDict(parse_qsl(query_string, keep_blank_values=True))
        query = parse_page_query(args, state.default_page_size, state.max_page_size)
        until = args.get("until")
        size = query.page_size
        if until is None:
            page = state.records.page(
                epoch, since_s=query.since_s, after=query.after, size=size
            )
            return render_page(page, next_link(query, page, False))
        page = _window_page(state, epoch, query.since_s, query.after, until, size)
        link = next_link(query, page, False)
        if link is not None:
            link += "&until=" + quote(until, safe="")

        return render_page(page, link)


def _window_page(
    state: SandboxState,
    epoch: int,
    since_s: float | None,
    after: int | None,
    until: str,
    size: int,
) -> Page:
    """A page cut at ``until`` (exclusive), as an API with a date range would."""
    keys = state.records.ordering(epoch)
    start = 0
    if since_s is not None:
        start = bisect_left(keys, max(ceil(since_s), 0) << _ID_BITS)
    if after is not None:
        start = max(start, bisect_right(keys, after))
    stop = bisect_left(keys, max(ceil(parse_since(until)), 0) << _ID_BITS)
    size = max(0, min(size, stop - start))
    page = state.records.page(epoch, since_s=since_s, after=after, size=size)

    return Page(page.items, page.last_key, start + size < stop)


def _next_query(body: bytes) -> str:
    # The next link is the last field render_page writes: `"next":"/path?q"}`.
    tail = body[body.rfind(b'"next":') + 7 : -1]
    if tail == b"null":
        return ""

    return urlsplit(tail.strip(b'"').decode()).query


class _Handler(BaseHTTPRequestHandler):
    """One keep-alive connection; every answer goes out in a single write."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FastResourceServer

    def do_GET(self) -> None:
        path, _, query_string = self.path.partition("?")
        if path != RESOURCE_PATH:
            self._send(404, b'{"error":"not_found"}')
            return
        problem = self.server.token_problem(self.headers.get("Authorization"))
        if problem is not None:
            challenge = f'Bearer realm="{REALM}", error="invalid_token"'
            self._send(401, problem, {"WWW-Authenticate": challenge})
            return
        try:
            body = self.server.bodies.body(query_string)
        except ValueError:
            self._send(400, b'{"error":"invalid_request"}')
            return
        latency = self.server.state.latency_s
        if latency > 0:
            time.sleep(latency)
        self._send(200, body)

    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {self.responses[status][0]}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)

    def log_message(self, format: str, *args: object) -> None:
        # A line per request would cost more than the request itself.
        pass


class FastResourceServer(ThreadingHTTPServer):
    """The resource endpoint alone, on a loopback port, for one sandbox's state."""

    daemon_threads = True

    def __init__(self, state: SandboxState, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.state = state
        self.bodies = PageBodies(state)
        self._thread: threading.Thread | None = None

    def token_problem(self, header: str | None) -> bytes | None:
        """Why the bearer token in ``header`` is refused, or None if it is good."""
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            return b'{"error":"invalid_request"}'
        token = self.state.find_token(value.strip())
        if token is None or token.revoked or self.state.is_expired(token):
            return b'{"error":"invalid_token"}'
        if REQUIRED_SCOPE not in token.scope.split():
            return b'{"error":"insufficient_scope"}'

        return None

    @property
    def resource_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{RESOURCE_PATH}"

    def start(self) -> FastResourceServer:
        """Serve from a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()
