"""How events are rendered, and the redactor that keeps secrets out of them.

Logging is configured once, where the CLI starts. Other modules only call
`structlog.get_logger()`. Records of the libraries underneath (APScheduler,
SQLAlchemy, urllib3) pass through the same processors, the redactor included.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "console", "json"]

MASK = "***"

# Libraries whose records join ours; quiet unless the user asks for DEBUG.
LIBRARY_LOGGERS = (
    "apscheduler",
    "sqlalchemy",
    "urllib3",
    "alembic",
    "werkzeug",
    "authlib",
)

_CREDENTIAL_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        # Authorization headers as they appear in reprs, dumps and library logs.
        r"(?i)(?P<keep>authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic|dpop)\s+)"
        r"[^\s'\",}]+",
        r"(?i)(?P<keep>\b(?:bearer|basic)\s+)[A-Za-z0-9\-._~+/]{8,}=*",
        # Form fields (name=value) and quoted JSON or dict members that carry
        # credentials. A bare "client_secret: text" is left alone: that is how
        # configuration errors name the key, and their text is no credential.
        r"(?i)(?P<keep>\b(?:access_token|refresh_token|client_secret|client_assertion"
        r"|password)=)[^\s&'\",}]+",
        r"(?i)(?P<keep>['\"](?:access_token|refresh_token|client_secret"
        r"|client_assertion|password)['\"]\s*:\s*['\"]?)[^\s&'\",}]+",
        # Credentials written into a URL: scheme://user:password@host
        r"(?i)(?P<keep>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+(?=@)",
    )
)


class SecretRegistry:
    """The exact strings that must never be written: secrets and issued tokens."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        """Remember `value`; strings too short to be secrets are ignored."""
        if not value or len(value) < 4:
            return
        with self._lock:
            if value not in self._values:
                self._values.add(value)
                self._pattern = None

    def add_all(self, values: Iterable[str]) -> None:
        for value in values:
            self.add(value)

    def redact(self, text: str) -> str:
        """`text` with every known secret, token and credential pattern masked."""
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        for credential in _CREDENTIAL_PATTERNS:
            text = credential.sub(rf"\g<keep>{MASK}", text)

        return text

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, ordered)))
            return self._pattern


SECRETS = SecretRegistry()


def redact_value(value: Any) -> Any:
    """`value` with secrets masked in every string it holds."""
    if isinstance(value, str):
        return SECRETS.redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    if isinstance(value, BaseException):
        return SECRETS.redact(str(value))

    return value


def redact_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A structlog processor: the second line of defence against leaks."""
    return {key: redact_value(item) for key, item in event_dict.items()}


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]


def configure_logging(
    fmt: LogFormat = "auto", level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Send structlog events and stdlib log records through one redacting renderer."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), _drop_color_message],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter stays at WARNING unless the user asks for DEBUG.
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(quiet, root.level))
    if quiet != logging.DEBUG:
        # The daemon reports missed and skipped runs as run.missed and
        # run.skipped; APScheduler's own warnings would say it twice.
        logging.getLogger("apscheduler.executors").setLevel(logging.ERROR)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict
