"""Running the sandbox: a threaded werkzeug server on a loopback port."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from job.sandbox.app import RESOURCE_PATH, TOKEN_PATH, create_app
from job.sandbox.settings import SandboxSettings
from job.sandbox.state import Monotonic, SandboxState

# How often the serving loop looks for a stop request; it bounds stop().
_POLL_INTERVAL_S = 0.05
_JOIN_STEP_S = 0.5


class _RequestHandler(WSGIRequestHandler):
    """werkzeug's handler, tuned for small fast JSON answers and quiet."""

    def setup(self) -> None:
        # Responses go out as headers then one body write; without this,
        # Nagle's algorithm would hold the body back for the client's ACK.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One line per request would swamp the demo, the tests and benchmarks.
        pass


class SandboxServer:
    """A local OAuth 2.0 provider and protected API, served from a thread."""

    def __init__(
        self,
        settings: SandboxSettings,
        *,
        monotonic: Monotonic | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.state = SandboxState(settings, monotonic=monotonic)
        # HTTPS when given (see job.sandbox.tls); werkzeug then puts a verified
        # client certificate into the environ as SSL_CLIENT_CERT.
        self.ssl_context = ssl_context
        self._stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SandboxServer:
        """Bind the port and serve in a daemon thread; return self."""
        if self._server is not None:
            raise RuntimeError("This sandbox server was already started.")
        app = create_app(self.state, self._stopping)
        self._server = _bind(self.settings, app, self.ssl_context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"sandbox-{self._server.port}",
            daemon=True,
        )
        self._thread.start()

        return self

    def stop(self) -> None:
        """Release stalled requests, stop serving and wait for the thread."""
        if self._server is None or self._thread is None:
            return
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._thread.join()

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop; for the command line."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        restore = _interrupt_on_signals()
        try:
            while self._thread.is_alive():
                self._thread.join(_JOIN_STEP_S)
        except KeyboardInterrupt:
            pass
        finally:
            restore()
            self.stop()

    @property
    def url(self) -> str:
        """Base URL with the real bound port, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("Start the sandbox server before asking its URL.")
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"

        scheme = "http" if self.ssl_context is None else "https"

        return f"{scheme}://{host}:{self._server.port}"

    @property
    def token_url(self) -> str:
        """Where clients POST client-credentials token requests."""
        return self.url + TOKEN_PATH

    @property
    def resource_url(self) -> str:
        """The bearer-protected, paged data endpoint."""
        return self.url + RESOURCE_PATH

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(
    settings: SandboxSettings, app: Any, ssl_context: ssl.SSLContext | None
) -> BaseWSGIServer:
    # Binding here rather than inside werkzeug turns a busy port into an
    # OSError for the caller; werkzeug would print and call sys.exit.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.create_server(
        (settings.host, settings.port), family=family, backlog=128
    )
    with listener:
        return make_server(
            settings.host,
            settings.port,
            app,
            threaded=True,
            request_handler=_RequestHandler,
            ssl_context=ssl_context,
            fd=listener.fileno(),
        )


def _interrupt_on_signals() -> Callable[[], None]:
    """Make SIGINT and SIGTERM stop serve_forever; return the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    # SIGINT too: a shell may start background jobs with SIGINT ignored.
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in watched}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
