"""The pure record generator behind the sandbox, tested without HTTP."""

from __future__ import annotations

import pytest

from job.sandbox.records import (
    RecordSet,
    decode_cursor,
    encode_cursor,
    format_time,
    last_change,
    parse_since,
)


class TestLastChange:
    @pytest.mark.parametrize(
        ("record_id", "epoch", "expected"),
        [
            (1, 0, (0, 0)),
            (1, 8, (0, 0)),
            (1, 9, (9, 1)),
            (1, 18, (9, 1)),
            (1, 19, (19, 2)),
            (10, 9, (0, 0)),
            (10, 10, (10, 1)),
            (25, 30, (25, 3)),
        ],
    )
    def test_latest_round_and_count(
        self, record_id: int, epoch: int, expected: tuple[int, int]
    ) -> None:
        """A record changes at each round k with (k + id) % 10 == 0."""
        assert last_change(record_id, epoch) == expected

    def test_a_tenth_change_per_round(self) -> None:
        """Each round changes exactly one id in ten."""
        for epoch in range(1, 31):
            changed = [i for i in range(1, 1001) if last_change(i, epoch)[0] == epoch]

            assert len(changed) == 100


class TestRecordSet:
    def test_changed_records_sort_after_everything_older(self) -> None:
        """A change stamps a time later than any earlier updated_at."""
        records = RecordSet(5000)
        newest_unchanged = records.offset_s(5000, 0)

        assert records.offset_s(1, 1) > newest_unchanged
        assert records.offset_s(1, 2) > records.offset_s(1, 1)

    def test_a_page_stops_where_asked(self) -> None:
        """page() returns the slice after a key and says whether more follow."""
        records = RecordSet(10)
        first = records.page(0, since_s=None, after=None, size=4)
        rest = records.page(0, since_s=None, after=first.last_key, size=10)

        assert len(first.items) == 4
        assert first.has_more
        assert len(rest.items) == 6
        assert not rest.has_more

    def test_rendering_is_cached_per_version(self) -> None:
        """The same record at the same version renders to the same bytes object."""
        records = RecordSet(20)
        once = records.page(0, since_s=None, after=None, size=20).items
        twice = records.page(5, since_s=None, after=None, size=20).items

        assert once[0] is twice[0]


class TestTimesAndCursors:
    def test_time_round_trip(self) -> None:
        """format_time and parse_since agree on seconds after the base time."""
        assert format_time(61) == "2024-01-01T00:01:01Z"
        assert parse_since(format_time(61)) == 61

    def test_naive_since_is_utc(self) -> None:
        """A since without an offset is taken as UTC."""
        assert parse_since("2024-01-01T00:00:10") == 10

    def test_cursor_round_trip(self) -> None:
        """decode_cursor undoes encode_cursor."""
        key = (12345 << 32) | 678

        assert decode_cursor(encode_cursor(key)) == key

    @pytest.mark.parametrize("cursor", ["", "x", "MS4y.", "LTEuMQ", "é"])
    def test_foreign_cursor_is_refused(self, cursor: str) -> None:
        """Anything that is not a cursor this server made raises ValueError."""
        with pytest.raises(ValueError, match="after="):
            decode_cursor(cursor)
