"""The synthetic records the sandbox serves, and how each epoch changes them.

Every value is a pure function of a record's id and the current epoch, so
no history is kept (rendered bodies are only cached) and any epoch can be
served at once.

Of ``N`` records, record ``i`` is created at ``BASE_TIME + i`` seconds.
Round ``k`` (1, 2, ...) changes the records with ``(k + i) % 10 == 0``, one
in ten, stamping them ``BASE_TIME + N`` seconds ``+ k`` minutes: later than
anything before. The epoch is the number of rounds that have happened.
"""

from __future__ import annotations

import base64
import binascii
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil, lcm
from typing import Any

import orjson

BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
CHANGE_PERIOD = 10
ROUND_STEP_S = 60

# A sort key packs (seconds after BASE_TIME, id) into one int, so a plain
# sorted list of ints can be bisected.
_ID_BITS = 32
_ID_MASK = (1 << _ID_BITS) - 1

_NAIVE_BASE_TIME = BASE_TIME.replace(tzinfo=None)
_NAMES = ("Ada", "Zoë", "Ångström", "naïve café", "O'Brien", "Łukasz", "🚀 rocket")
_TAGS = ("red", "green", "blue", "urgent", "archived")
_REGIONS = ("eu-west", "us-east", "ap-south", "sa-east")

# Record i carries the tags whose position p has i % (p + 2) == 0; that
# repeats every lcm(2..6) ids, so the lists are worked out once.
_TAG_CYCLE = lcm(*range(2, len(_TAGS) + 2))
_TAG_LISTS = tuple(
    tuple(tag for position, tag in enumerate(_TAGS) if i % (position + 2) == 0)
    for i in range(_TAG_CYCLE)
)


@dataclass(frozen=True)
class Page:
    """One slice of the ordered records, rendered, and where it stopped."""

    items: list[bytes]
    last_key: int | None
    has_more: bool


def last_change(record_id: int, epoch: int) -> tuple[int, int]:
    """Return (latest round in 1..epoch that changed the record, or 0; change count)."""
    first = -record_id % CHANGE_PERIOD or CHANGE_PERIOD
    if first > epoch:
        return 0, 0
    count = (epoch - first) // CHANGE_PERIOD + 1

    return first + (count - 1) * CHANGE_PERIOD, count


def format_time(offset_s: int) -> str:
    """Render seconds after BASE_TIME as ISO 8601 UTC with a ``Z``."""
    # isoformat on a naive datetime is several times faster than strftime,
    # and this runs once per record rendered.
    moment = _NAIVE_BASE_TIME + timedelta(seconds=offset_s)

    return moment.isoformat() + "Z"


def parse_since(text: str) -> float:
    """Turn an ISO 8601 instant into seconds after BASE_TIME; naive means UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)

    return (moment - BASE_TIME).total_seconds()


def encode_cursor(key: int) -> str:
    """Make an opaque ``after`` value from a sort key."""
    raw = f"{key >> _ID_BITS}.{key & _ID_MASK}".encode()

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    """Return the sort key inside an ``after`` value; ValueError if it is not ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        data = base64.b64decode(padded.encode("ascii"), b"-_", validate=True)
        raw = data.decode("ascii")
        offset, record_id = (int(part) for part in raw.split("."))
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise ValueError(f"after={cursor!r} is not a cursor this server made") from exc
    if offset < 0 or not 0 <= record_id <= _ID_MASK:
        raise ValueError(f"after={cursor!r} is not a cursor this server made")

    return (offset << _ID_BITS) | record_id


class RecordSet:
    """The records 1..count at any epoch, with rendered bodies cached."""

    def __init__(self, count: int) -> None:
        if count > _ID_MASK:
            raise ValueError(f"records={count} is more than ids can hold")
        self.count = count
        self._rendered: dict[int, tuple[int, bytes]] = {}
        self._orderings: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def offset_s(self, record_id: int, round_: int) -> int:
        """Seconds after BASE_TIME at which the record was last written."""
        if round_ == 0:
            return record_id

        return self.count + round_ * ROUND_STEP_S

    def record(self, record_id: int, epoch: int) -> dict[str, Any]:
        """Build the record as the API serves it at this epoch."""
        round_, changes = last_change(record_id, epoch)
        version = changes + 1

        return {
            "id": record_id,
            "updated_at": format_time(self.offset_s(record_id, round_)),
            "name": f"{_NAMES[record_id % len(_NAMES)]} {record_id}",
            "amount": (record_id * 7919 + version * 104729) % 1_000_000 / 100,
            "active": (record_id + version) % 7 != 0,
            "tags": list(_TAG_LISTS[record_id % _TAG_CYCLE]),
            "owner": {"id": 1 + record_id % 37, "region": _REGIONS[record_id % 4]},
            "version": version,
        }

    def all_records(self, epoch: int) -> list[dict[str, Any]]:
        """Every record at this epoch, in the order the API pages them."""
        keys = self.ordering(epoch)

        return [self.record(key & _ID_MASK, epoch) for key in keys]

    def page(
        self,
        epoch: int,
        *,
        since_s: float | None,
        after: int | None,
        size: int,
        until_s: float | None = None,
    ) -> Page:
        """Return up to ``size`` rendered records from the ordered set.

        ``since_s`` is inclusive and ``until_s`` exclusive, both on updated_at.
        """
        keys = self.ordering(epoch)
        start, end = 0, len(keys)
        if since_s is not None:
            start = bisect_left(keys, max(ceil(since_s), 0) << _ID_BITS)
        if until_s is not None:
            end = bisect_left(keys, max(ceil(until_s), 0) << _ID_BITS)
        if after is not None:
            start = max(start, bisect_right(keys, after))
        chosen = keys[start : min(start + size, end)] if start < end else []
        items = [self._render(key & _ID_MASK, epoch) for key in chosen]
        last_key = chosen[-1] if chosen else None

        return Page(items, last_key, start + len(chosen) < end)

    def ordering(self, epoch: int) -> list[int]:
        """Sort keys by (updated_at, id) at this epoch, built once per epoch."""
        with self._lock:
            keys = self._orderings.get(epoch)
            if keys is None:
                keys = self._build_ordering(epoch)
                # Only the latest epochs are ever asked for again.
                if len(self._orderings) >= 2:
                    self._orderings.clear()
                self._orderings[epoch] = keys

        return keys

    def _build_ordering(self, epoch: int) -> list[int]:
        keys = []
        for record_id in range(1, self.count + 1):
            round_, _ = last_change(record_id, epoch)
            keys.append((self.offset_s(record_id, round_) << _ID_BITS) | record_id)
        keys.sort()

        return keys

    def _render(self, record_id: int, epoch: int) -> bytes:
        round_, _ = last_change(record_id, epoch)
        cached = self._rendered.get(record_id)
        if cached is not None and cached[0] == round_:
            return cached[1]
        body = orjson.dumps(self.record(record_id, epoch))
        self._rendered[record_id] = (round_, body)

        return body
