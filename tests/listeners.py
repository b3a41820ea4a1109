"""Bare loopback HTTP listeners that stand in for another origin, or a dead one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# status, headers, body
Answer = tuple[int, dict[str, str], bytes]
EMPTY_PAGE: Answer = (
    200,
    {"Content-Type": "application/json"},
    b'{"data": {"items": []}, "links": {"next": null}}',
)


@dataclass
class Seen:
    """One request a listener received: its path and headers."""

    path: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Listener:
    """A running listener: its base URL and every request it saw."""

    url: str
    seen: list[Seen]


@contextmanager
def listening(
    answer: Callable[[str], Answer] = lambda path: EMPTY_PAGE,
) -> Iterator[Listener]:
    """Serve `answer(path)` to every GET on a free loopback port."""
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(Seen(self.path, dict(self.headers.items())))
            status, headers, body = answer(self.path)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield Listener(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def stalled() -> Iterator[str]:
    """A loopback port that accepts connections and never answers; its URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    # The kernel completes the handshake from the backlog; nobody ever reads.
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@contextmanager
def unreachable() -> Iterator[str]:
    """A loopback port whose accept queue is full: connecting times out; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    # Nobody accepts, so these few fill the queue; later SYNs are dropped.
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
