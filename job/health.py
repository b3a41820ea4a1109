"""What a daemon tells its supervisor: liveness, readiness and Prometheus metrics.

Metrics are per process, as Prometheus expects: with several replicas, sum
them in the query (`sum by (source) (job_runs_total)`). They are fed by the
daemon with each run's result, and by a structlog processor that counts the
token failures the token manager logs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from sqlalchemy.engine import Engine
from structlog.typing import EventDict, WrappedLogger

from job.errors import JobError
from job.pipeline import RunResult
from job.storage import engine as db

log = structlog.get_logger("job.health")

DEFAULT_HOST = "127.0.0.1"


class Metrics:
    """The daemon's counters, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "job_runs",
            "Runs finished, by source and status.",
            ["source", "status"],
            registry=self.registry,
        )
        self.records = Counter(
            "job_records_stored",
            "Records inserted or changed.",
            ["source"],
            registry=self.registry,
        )
        self.token_requests = Counter(
            "job_token_requests",
            "Token requests made by runs.",
            ["source"],
            registry=self.registry,
        )
        self.token_failures = Counter(
            "job_token_failures",
            "Token requests that failed.",
            ["provider"],
            registry=self.registry,
        )
        self.retries = Counter(
            "job_request_retries",
            "Requests retried.",
            ["source"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "job_last_success_timestamp_seconds",
            "When the last successful run of a source finished (Unix time).",
            ["source"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "job_pull_duration_seconds",
            "How long pulls take.",
            ["source"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )

    def observe(self, result: RunResult, duration_s: float, finished_at: float) -> None:
        """Count one finished run."""
        source, stats = result.source, result.stats
        self.runs.labels(source, result.status).inc()
        self.records.labels(source).inc(stats.inserted + stats.updated)
        self.token_requests.labels(source).inc(stats.token_requests)
        self.retries.labels(source).inc(stats.retries)
        self.duration.labels(source).observe(duration_s)
        if result.succeeded:
            self.last_success.labels(source).set(finished_at)

    def count_token_failures(
        self, _: WrappedLogger, __: str, event: EventDict
    ) -> EventDict:
        """A structlog processor: count `token.failed` events, pass every event on."""
        if event.get("event") == "token.failed":
            self.token_failures.labels(str(event.get("provider", ""))).inc()
        return event

    def watch_logs(self) -> None:
        """Put `count_token_failures` first in structlog's chain, before any filter."""
        processors = list(structlog.get_config()["processors"])
        structlog.configure(processors=[self.count_token_failures, *processors])


def readiness(engine: Engine) -> str | None:
    """None if the database answers and is at the head revision, else why not."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        db.check_schema(engine)
    except JobError as exc:
        return exc.message
    except Exception as exc:  # the driver's own errors, whatever they are
        return f"database not reachable: {type(exc).__name__}"

    return None


class HealthServer:
    """`/healthz`, `/readyz` and `/metrics` on a port of their own, in a thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        is_alive: Callable[[], bool],
        is_ready: Callable[[], str | None],
        metrics: Metrics,
    ) -> None:
        handler = _handler(is_alive, is_ready, metrics)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.address = self._server.server_address
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        host, port = self.address[:2]
        log.info("health.started", host=host, port=port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    is_alive: Callable[[], bool],
    is_ready: Callable[[], str | None],
    metrics: Metrics,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = is_alive()
                self._send(200 if alive else 503, b"ok\n" if alive else b"stopped\n")
            elif path == "/readyz":
                problem = is_ready()
                body = b"ready\n" if problem is None else f"{problem}\n".encode()
                self._send(200 if problem is None else 503, body)
            elif path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"try /healthz, /readyz or /metrics\n")

        def _send(
            self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Scrapes every few seconds would drown the daemon's own events.
            return

    return Handler
