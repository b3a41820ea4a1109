"""config.yaml plus the environment, turned into validated, frozen settings.

The file is read once, `${VAR}` and `${VAR:-default}` are filled in from the
environment passed in, and the result is checked by pydantic. Every problem
becomes a `ConfigError` that names the file, the key and what to write instead.
"""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from job.errors import ConfigError

DEFAULT_CONFIG_PATH = "config.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LONGEST_S = 366 * 86400
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as `90`, `30s`, `15m`, `1h`, `1d`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 15m or 1h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"expected a duration such as 30s, 15m or 1h, got {value!r}"
            )
        seconds = float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite, positive time, got {value!r}")
    if seconds > _LONGEST_S:
        raise ValueError(
            f"a duration of more than 366 days is not useful, got {value!r}"
        )

    return seconds


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {value!r}")
    return seconds


def _as_text(value: object) -> object:
    # YAML reads `page_size: 500` as a number; a query parameter is text anyway.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value


def _readable_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


Duration = Annotated[float, BeforeValidator(parse_duration)]
ReadableFile = Annotated[Path, AfterValidator(_readable_file)]
Timeout = Annotated[float, BeforeValidator(_positive_duration)]
Text = Annotated[str, BeforeValidator(_as_text)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _join_scope(value: object) -> object:
    if isinstance(value, list | tuple):
        return " ".join(str(part) for part in value)
    return value


def _as_paths(value: object) -> object:
    if isinstance(value, str):
        return (value,)
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(_Model):
    """How hard to try one request before the run fails."""

    max_attempts: int = Field(default=5, ge=1)
    backoff_base_s: Duration = 0.5
    backoff_cap_s: Duration = 30.0
    retry_after_cap_s: Duration = 120.0
    deadline_s: Duration = 300.0


class DatabaseSettings(_Model):
    """Where records and runs are kept."""

    url: str = "sqlite:///job.db"
    busy_timeout_s: Duration = 30.0
    # Storing a page again after a lock or a dropped connection.
    retry: RetrySettings = RetrySettings()


class ProviderSettings(_Model):
    """A token endpoint and the client credentials used at it."""

    name: str = ""
    token_url: HttpUrl
    client_id: Text = Field(min_length=1)
    client_secret: SecretStr | None = Field(default=None, min_length=1)
    client_secret_file: ReadableFile | None = None
    auth_method: Literal[
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "tls_client_auth",
    ] = "client_secret_basic"
    scope: Annotated[str | None, BeforeValidator(_join_scope)] = None
    audience: str | None = None
    resource: str | None = None
    extra_params: dict[str, Text] = Field(default_factory=dict)
    private_key_file: ReadableFile | None = None
    key_id: str | None = None
    assertion_audience: str | None = None
    client_cert_file: ReadableFile | None = None
    client_key_file: ReadableFile | None = None
    ca_bundle: ReadableFile | None = None
    connect_timeout_s: Timeout = 5.0
    read_timeout_s: Timeout = 30.0
    leeway_s: Duration | None = None
    default_lifetime_s: Duration = 3600.0
    retry: RetrySettings = RetrySettings()

    @model_validator(mode="after")
    def _credentials_present(self) -> ProviderSettings:
        needs_secret = self.auth_method in ("client_secret_basic", "client_secret_post")
        has_secret = self.client_secret is not None or self.client_secret_file
        if needs_secret and not has_secret:
            raise ValueError(
                f"auth_method {self.auth_method} needs client_secret "
                "(for example ${OAUTH_CLIENT_SECRET}) or client_secret_file"
            )
        if self.auth_method == "private_key_jwt" and self.private_key_file is None:
            raise ValueError("auth_method private_key_jwt needs private_key_file")
        if self.auth_method == "tls_client_auth" and self.client_cert_file is None:
            raise ValueError("auth_method tls_client_auth needs client_cert_file")

        return self

    def secret(self) -> str:
        """The client secret, from the setting or the file it names."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is None:
            raise ConfigError(f"provider {self.name!r} has no client secret")
        try:
            # Only the line end an editor adds; spaces may belong to the secret.
            text = self.client_secret_file.read_text(encoding="utf-8")
            return text.rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"provider {self.name!r}: cannot read client_secret_file "
                f"{self.client_secret_file} ({exc.strerror}); check the path"
            ) from exc


class PaginationSettings(_Model):
    """How to find the next page; exactly one style per source."""

    next: str | None = None
    style: Literal["next", "link_header", "cursor", "page", "offset", "none"] | None = (
        None
    )
    cursor: str | None = None
    param: str | None = None
    page: str | None = None
    start: int = 1
    offset: str | None = None
    limit: str | None = None
    size: int | None = Field(default=None, gt=0)
    size_param: str | None = None

    @model_validator(mode="after")
    def _one_style(self) -> PaginationSettings:
        chosen = [
            name
            for name, value in (
                ("next", self.next),
                ("cursor", self.cursor),
                ("page", self.page),
                ("offset", self.offset),
            )
            if value is not None
        ]
        if self.style in ("link_header", "none"):
            chosen.append(self.style)
        if len(chosen) > 1:
            raise ValueError(f"choose one pagination style, not {' and '.join(chosen)}")
        if self.cursor is not None and self.param is None:
            raise ValueError("cursor pagination needs param: the query parameter")
        if self.offset is not None and (self.limit is None or self.size is None):
            raise ValueError("offset pagination needs limit (a parameter) and size")
        object.__setattr__(self, "style", chosen[0] if chosen else "none")

        return self


class IncrementalSettings(_Model):
    """Pull only what changed since the last stored cursor value."""

    cursor: str
    param: str
    lookback: Duration = 0.0
    initial: str | None = None


class ScheduleSettings(_Model):
    """When the daemon pulls a source: every interval, or a cron expression."""

    every: Duration | None = None
    cron: str | None = None
    timezone: str = "UTC"
    jitter: Duration = 0.0
    misfire_grace: Duration | None = None
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleSettings:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (such as 15m) or cron")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be more than 0")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(
                f"cron {self.cron!r} needs five fields: minute hour day month weekday"
            )
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone {self.timezone!r} is unknown; use an IANA name such as "
                "UTC or Europe/Berlin"
            ) from None

        return self


class BackfillSettings(_Model):
    """The query parameters that carry a backfill window."""

    start_param: str = "from"
    end_param: str = "to"


class SourceSettings(_Model):
    """A protected resource to pull and how to read it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    provider: str
    url: HttpUrl
    params: dict[str, Text] = Field(default_factory=dict)
    records: str | None = "items"
    primary_key: Annotated[tuple[str, ...] | None, BeforeValidator(_as_paths)] = None
    pagination: PaginationSettings = PaginationSettings()
    incremental: IncrementalSettings | None = None
    schedule: ScheduleSettings = ScheduleSettings(every=900.0)
    retry: RetrySettings = RetrySettings()
    backfill: BackfillSettings = BackfillSettings()
    columns: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: Timeout = 5.0
    read_timeout_s: Timeout = 30.0
    max_pages: int | None = Field(default=None, gt=0)
    allow_cross_origin: bool = False
    ca_bundle: ReadableFile | None = None


class Settings(_Model):
    """Everything config.yaml says, validated."""

    path: str = DEFAULT_CONFIG_PATH
    database: DatabaseSettings = DatabaseSettings()
    providers: dict[str, ProviderSettings]
    sources: tuple[SourceSettings, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _sources_resolve(self) -> Settings:
        names = [source.name for source in self.sources]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"source names must be unique: {', '.join(doubled)}")
        for source in self.sources:
            if source.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"source {source.name!r} names provider {source.provider!r}, "
                    f"which is not under providers (known: {known})"
                )

        return self

    def source(self, name: str) -> SourceSettings:
        """The source called `name`, or a ConfigError listing the known ones."""
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(source.name for source in self.sources)
        raise ConfigError(f"no source named {name!r} in {self.path}; known: {known}")

    def provider_for(self, source: SourceSettings) -> ProviderSettings:
        """The provider a source gets its tokens from."""
        return self.providers[source.provider]

    def secrets(self) -> Iterator[str]:
        """Every configured secret, for the log redactor."""
        for provider in self.providers.values():
            if provider.client_secret is not None:
                yield provider.client_secret.get_secret_value()


def config_path(explicit: str | None, env: Mapping[str, str]) -> str:
    """The file to read: `--config`, then `JOB_CONFIG`, then ./config.yaml."""
    return explicit or env.get("JOB_CONFIG") or DEFAULT_CONFIG_PATH


def load_settings(path: str, env: Mapping[str, str] | None = None) -> Settings:
    """Read, fill in and validate the configuration file at `path`."""
    env = os.environ if env is None else env
    raw = _read_yaml(path)
    filled = _substitute(raw, env, path, location=())
    if isinstance(filled, dict):
        filled = _apply_overrides(filled, env)
        for name, provider in (filled.get("providers") or {}).items():
            if isinstance(provider, dict):
                provider.setdefault("name", name)
        filled["path"] = path
    try:
        return Settings.model_validate(filled)
    except ValidationError as exc:
        raise ConfigError(_describe(exc), path=path) from None


def _read_yaml(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text (byte {exc.start}); save the file as UTF-8", path=path
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            "file not found; pass --config PATH or set JOB_CONFIG "
            "(config.yaml in the repository is a working example)",
            path=path,
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=path) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"not valid YAML{where}: {problem}", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError(
            "expected a mapping with providers: and sources: at the top", path=path
        )

    return data


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice, which YAML would let pass."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _substitute(
    value: Any, env: Mapping[str, str], path: str, location: tuple[str, ...]
) -> Any:
    if isinstance(value, dict):
        return {
            key: _substitute(item, env, path, (*location, str(key)))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _substitute(item, env, path, (*location, str(index)))
            for index, item in enumerate(value)
        ]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{'.'.join(location)}: environment variable {name} is not set; "
            f"export it or write ${{{name}:-default}}",
            path=path,
        )

    return _ENV_REF.sub(replace, value)


def _apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    url = env.get("JOB_DATABASE_URL")
    if url:
        database = dict(data.get("database") or {})
        database["url"] = url
        data["database"] = database

    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key; check its spelling in the README")
        elif error["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)

    return "; ".join(lines)
