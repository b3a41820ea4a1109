"""What the remote API looks like: where records sit, their keys, the next page."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import orjson
import requests
import structlog

from job.config import SourceSettings
from job.errors import PermanentFetchError
from job.http_client import HttpClient, decode_json, mask_url, origin

log = structlog.get_logger("job.source")

_MISSING = object()


@dataclass(frozen=True)
class Page:
    """One decoded page: where it came from and the records it holds."""

    number: int
    url: str
    records: list[Any]
    is_snapshot: bool = False


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted `path` (`data.items`, `owner.id`), or `_MISSING`."""
    value = document
    for part in path.split("."):
        # dict before the ABC: the usual case, and far cheaper to test.
        if isinstance(value, (dict, Mapping)) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            if -len(value) <= index < len(value):
                value = value[index]
            else:
                return _MISSING
        else:
            return _MISSING

    return value


def canonical_json(record: Any) -> bytes:
    """The same bytes for the same content, whatever the order of its keys."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def content_hash(record: Any) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def record_key(
    record: Any, primary_key: tuple[str, ...], *, page: int, index: int
) -> str:
    """The record's key: the value at its primary key path, or a JSON list of them."""
    values = []
    for path in primary_key:
        value = lookup(record, path)
        if value is _MISSING or value is None or isinstance(value, dict | list):
            raise PermanentFetchError(
                f"record {index} on page {page} has no usable primary key at "
                f"{path!r}; check primary_key in the source's configuration"
            )
        values.append(value)
    if len(values) == 1:
        return str(values[0])

    return orjson.dumps(values).decode()


class SourceReader:
    """Walks the pages of one source, following its pagination style."""

    def __init__(
        self,
        settings: SourceSettings,
        client: HttpClient,
        auth: requests.auth.AuthBase | None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._auth = auth
        self._origin = origin(settings.url)

    def pages(self, params: dict[str, str] | None = None) -> Iterator[Page]:
        """Every page, first to last; stops on an empty page or no next link."""
        settings = self.settings
        pagination = settings.pagination
        query = {**settings.params, **(params or {})}
        self._start_query(query)
        url = settings.url
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        number = 0
        while True:
            number += 1
            self._guard(url, query, seen, number)
            response = self._client.get(url, params=query or None, auth=self._auth)
            body = decode_json(response)
            page = self._page(body, number, response.url)
            yield page
            if not page.records or page.is_snapshot:
                return
            step = self._next(pagination.style or "none", body, response, query, page)
            if step is None:
                return
            url, query = step

    def _start_query(self, query: dict[str, str]) -> None:
        pagination = self.settings.pagination
        if pagination.style == "page":
            query[str(pagination.page)] = str(pagination.start)
        elif pagination.style == "offset":
            query[str(pagination.offset)] = "0"
        if pagination.size is not None:
            size_param = pagination.size_param or pagination.limit
            if size_param:
                query[size_param] = str(pagination.size)

    def _guard(
        self,
        url: str,
        query: dict[str, str],
        seen: set[tuple[str, tuple[tuple[str, str], ...]]],
        number: int,
    ) -> None:
        max_pages = self.settings.max_pages
        if max_pages is not None and number > max_pages:
            raise PermanentFetchError(
                f"source {self.settings.name!r} still had pages after max_pages="
                f"{max_pages}; raise max_pages if the API really is that large",
                url=mask_url(url),
            )
        if origin(url) != self._origin and not self.settings.allow_cross_origin:
            raise PermanentFetchError(
                f"the next page {mask_url(url)} is on another origin than "
                f"{mask_url(self.settings.url)}; the bearer token is not sent there "
                "unless the source sets allow_cross_origin: true",
                url=mask_url(url),
            )
        marker = (url, tuple(sorted(query.items())))
        if marker in seen:
            raise PermanentFetchError(
                f"the API sent page {mask_url(url)} again (page {number}); stopping "
                "instead of looping. Check the pagination settings",
                url=mask_url(url),
            )
        seen.add(marker)

    def _page(self, body: Any, number: int, url: str) -> Page:
        path = self.settings.records
        found = body if not path else lookup(body, path)
        if found is _MISSING:
            kind = type(body).__name__
            raise PermanentFetchError(
                f"page {number} from {mask_url(url)} has no {path!r} (the body is a "
                f"JSON {kind}); check records: in the source's configuration",
                url=mask_url(url),
            )
        if isinstance(found, list):
            return Page(number=number, url=url, records=found)
        if isinstance(found, dict):
            return Page(number=number, url=url, records=[found], is_snapshot=True)
        raise PermanentFetchError(
            f"page {number} from {mask_url(url)}: {path or 'the body'!s} is a JSON "
            f"{type(found).__name__}, expected a list of records or one object",
            url=mask_url(url),
        )

    def _next(
        self,
        style: str,
        body: Any,
        response: requests.Response,
        query: dict[str, str],
        page: Page,
    ) -> tuple[str, dict[str, str]] | None:
        pagination = self.settings.pagination
        if style == "next":
            link = lookup(body, str(pagination.next))
            if link is _MISSING or not link:
                return None
            return urljoin(response.url, str(link)), {}
        if style == "link_header":
            link = response.links.get("next", {}).get("url")
            return (urljoin(response.url, link), {}) if link else None
        if style == "cursor":
            cursor = lookup(body, str(pagination.cursor))
            if cursor is _MISSING or cursor in (None, ""):
                return None
            return self.settings.url, {**query, str(pagination.param): str(cursor)}
        if style == "page":
            name = str(pagination.page)
            return self.settings.url, {**query, name: str(int(query[name]) + 1)}
        if style == "offset":
            # Step by what came, not by the size asked for: a server that caps
            # the page size lower would otherwise make the pull skip records.
            name = str(pagination.offset)
            step = len(page.records)
            return self.settings.url, {**query, name: str(int(query[name]) + step)}

        return None


# Incremental cursors


@dataclass(frozen=True, order=True)
class CursorValue:
    """A cursor value that compares as what it is: a UTC instant, number or text."""

    kind: str
    value: Any

    @classmethod
    def parse(cls, raw: Any) -> CursorValue | None:
        if raw is None or isinstance(raw, bool | dict | list):
            return None
        if isinstance(raw, int | float):
            return cls("number", raw)
        number = _parse_number(str(raw))
        if number is not None:
            # "99" < "100" as numbers; as text it would sort after.
            return cls("number", number)
        instant = parse_instant(str(raw))
        if instant is not None:
            return cls("datetime", instant)

        return cls("string", str(raw))

    @classmethod
    def restore(cls, value: str, kind: str) -> CursorValue:
        if kind == "datetime":
            instant = parse_instant(value)
            assert instant is not None
            return cls(kind, instant)
        if kind == "number":
            number = _parse_number(value)
            # A stored "number" that no longer parses compares as text.
            return cls(kind, number) if number is not None else cls("string", value)

        return cls(kind, value)

    def text(self) -> str:
        if self.kind == "datetime":
            return str(self.value.isoformat()).replace("+00:00", "Z")
        return str(self.value)


def parse_instant(text: str) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text, or None if it is not one."""
    if len(text) < 10 or not text[:4].isdigit() or text[4] != "-":
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)

    return parsed.astimezone(UTC)


def _parse_number(text: str) -> int | float | None:
    """An int or a finite float from text, or None; big ints keep every digit."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None

    return number if math.isfinite(number) else None


def max_cursor(records: list[Any], path: str, *, page: int = 1) -> CursorValue | None:
    """The largest cursor value on a page; mixed kinds are a configuration error."""
    best: CursorValue | None = None
    for index, record in enumerate(records):
        parsed = CursorValue.parse(lookup(record, path))
        if parsed is None:
            continue
        if best is not None and parsed.kind != best.kind:
            raise PermanentFetchError(
                f"record {index} on page {page}: cursor {path!r} is a {parsed.kind} "
                f"where earlier records had a {best.kind}; check incremental.cursor"
            )
        if best is None or parsed.value > best.value:
            best = parsed

    return best
