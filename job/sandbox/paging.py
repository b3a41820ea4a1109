"""Other ways of paging the sandbox's records, chosen per request with `paging=`.

`GET /data/protected-resource?paging=STYLE` serves the same records as the
plain endpoint (same order, same `since` filter, same fault knobs), in the
body `{"data": {"items": [...]}, ...}`, and says where the next page is the
STYLE's way:

- `next`: `{"links": {"next": "protected-resource?..."}}`, a link relative to
  the request's folder (no leading slash), so clients must resolve it;
- `link`: an RFC 8288 `Link: </data/...>; rel="next"` header;
- `cursor`: `{"meta": {"next_cursor": "..."}}`, sent back as `?cursor=`;
- `page`: `?page=1,2,...&per_page=`, past the end an empty page;
- `offset`: `?offset=&limit=`, past the end an empty page;
- `snapshot`: one object, `{"data": {"records": N, ...}}`, no list at all.

Further switches put on a provider's quirks: `offsets=mixed` renders the
`updated_at` of even ids with a `+02:00` offset (the same instant);
`missing_key_at=N` drops `id` from the record at position N;
`next_base=http://127.0.0.1:PORT` makes `next` and `link` URLs absolute on
that (loopback) origin. `state.repeat_next_link` makes every style hand out
the page just served again.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
from flask import Response
from werkzeug.datastructures import MultiDict

from job.sandbox import faults
from job.sandbox.records import BASE_TIME, parse_since
from job.sandbox.state import SandboxState

STYLES = ("next", "link", "cursor", "page", "offset", "snapshot")
_PLUS_TWO = timezone(timedelta(hours=2))
# Where each style keeps its position; dropped when the next URL is built.
_POSITION_PARAMS = ("after", "cursor", "page", "offset")


@dataclass(frozen=True)
class PagingQuery:
    """A validated `paging=` request: the style, where to start and how many."""

    style: str
    start: int
    size: int
    since_s: float | None
    mixed_offsets: bool
    missing_key_at: int | None
    next_base: str | None


def is_requested(args: MultiDict[str, str]) -> bool:
    """Whether this request asks for one of the styles served here."""
    return "paging" in args


def response(state: SandboxState, args: MultiDict[str, str], path: str) -> Response:
    """The page (or snapshot) this request asks for, or a 400 naming the problem."""
    try:
        query = parse_query(args, state)
    except ValueError as exc:
        return faults.json_error(400, "invalid_request", str(exc))
    chosen = _selected(state, query)
    if query.style == "snapshot":
        return _json(_snapshot(state, chosen))
    items = chosen[query.start : query.start + query.size]
    items = [_quirky(record, query, query.start + i) for i, record in enumerate(items)]
    has_more = query.start + len(items) < len(chosen)

    return _page(state, query, args, path, items, has_more)


def parse_query(args: MultiDict[str, str], state: SandboxState) -> PagingQuery:
    """Read the switches; ValueError names the one that is wrong."""
    style = args.get("paging", "")
    if style not in STYLES:
        raise ValueError(f"paging={style!r} must be one of {', '.join(STYLES)}.")
    size_name = {"page": "per_page", "offset": "limit"}.get(style, "page_size")
    size = min(_number(args, size_name, state.default_page_size), state.max_page_size)
    if size < 1:
        raise ValueError(f"{size_name} must be 1 or more.")
    since = args.get("since")

    return PagingQuery(
        style=style,
        start=_start(style, args, size),
        size=size,
        since_s=None if since is None else parse_since(since),
        mixed_offsets=args.get("offsets") == "mixed",
        missing_key_at=_number(args, "missing_key_at", -1),
        next_base=_loopback_base(args.get("next_base")),
    )


def _start(style: str, args: MultiDict[str, str], size: int) -> int:
    if style == "page":
        page = _number(args, "page", 1)
        if page < 1:
            raise ValueError("page numbers start at 1.")
        return (page - 1) * size
    if style == "offset":
        return max(_number(args, "offset", 0), 0)
    if style == "cursor" and "cursor" in args:
        return decode_position(args["cursor"])

    return max(_number(args, "after", 0), 0)


def _number(args: MultiDict[str, str], name: str, default: int) -> int:
    text = args.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be a whole number.") from None


def _loopback_base(base: str | None) -> str | None:
    if base is None:
        return None
    host = urlsplit(base).hostname or ""
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    # The sandbox never points a client at another machine.
    if not is_loopback:
        raise ValueError(f"next_base={base!r} must be a loopback URL.")

    return base.rstrip("/")


def encode_position(position: int) -> str:
    """An opaque cursor for a position in the ordered records."""
    return base64.urlsafe_b64encode(f"pos:{position}".encode()).decode().rstrip("=")


def decode_position(cursor: str) -> int:
    """The position inside a cursor from `encode_position`; ValueError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        label, number = raw.split(":")
        position = int(number)
    except ValueError:
        raise ValueError(
            f"cursor={cursor!r} is not a cursor this server made."
        ) from None
    if label != "pos" or position < 0:
        raise ValueError(f"cursor={cursor!r} is not a cursor this server made.")

    return position


def _selected(state: SandboxState, query: PagingQuery) -> list[dict[str, Any]]:
    records = state.all_records()
    if query.since_s is None:
        return records
    since_s = query.since_s

    return [r for r in records if parse_since(r["updated_at"]) >= since_s]


def _quirky(
    record: dict[str, Any], query: PagingQuery, position: int
) -> dict[str, Any]:
    record = dict(record)
    if query.mixed_offsets and record["id"] % 2 == 0:
        moment = datetime.fromisoformat(record["updated_at"]).astimezone(_PLUS_TWO)
        record["updated_at"] = moment.isoformat()
    if position == query.missing_key_at:
        del record["id"]

    return record


def _snapshot(state: SandboxState, records: list[dict[str, Any]]) -> dict[str, Any]:
    latest = max((parse_since(r["updated_at"]) for r in records), default=None)
    as_of = None
    if latest is not None:
        as_of = (BASE_TIME + timedelta(seconds=latest)).isoformat()

    return {"data": {"records": len(records), "epoch": state.epoch, "latest": as_of}}


def _page(
    state: SandboxState,
    query: PagingQuery,
    args: MultiDict[str, str],
    path: str,
    items: list[dict[str, Any]],
    has_more: bool,
) -> Response:
    following = _following(state, query, items, has_more)
    body: dict[str, Any] = {"data": {"items": items}}
    headers: dict[str, str] = {}
    if query.style == "next":
        link = None if following is None else _url(query, args, path, following, True)
        body["links"] = {"next": link}
    elif query.style == "link" and following is not None:
        headers["Link"] = f'<{_url(query, args, path, following, False)}>; rel="next"'
    elif query.style == "cursor":
        cursor = None if following is None else encode_position(following)
        body["meta"] = {"next_cursor": cursor}

    return _json(body, headers)


def _following(
    state: SandboxState, query: PagingQuery, items: list[Any], has_more: bool
) -> int | None:
    """The position the next page starts at, or None when this is the last."""
    if state.repeat_next_link and items:
        # A buggy server handing out the page just served.
        return query.start
    if not has_more:
        return None

    return query.start + len(items)


def _url(
    query: PagingQuery,
    args: MultiDict[str, str],
    path: str,
    position: int,
    relative: bool,
) -> str:
    params = [(k, v) for k, v in args.items(multi=True) if k not in _POSITION_PARAMS]
    params.append(("after", str(position)))
    encoded = urlencode(params, quote_via=quote)
    if query.next_base is not None:
        return f"{query.next_base}{path}?{encoded}"
    if relative:
        # "protected-resource?..." resolves against the request's folder.
        return f"{path.rsplit('/', 1)[-1]}?{encoded}"

    return f"{path}?{encoded}"


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), 200, headers, content_type="application/json")
