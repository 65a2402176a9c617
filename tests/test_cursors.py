"""Cursors: opaque positions, signed, bound to their list."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.cursors import BadCursor, Cursors

AT = datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC)


def test_round_trip_keeps_the_position_to_the_microsecond() -> None:
    cursors = Cursors(b"k" * 32)
    cursor = cursors.encode("feed:1", (AT, 42))
    assert cursors.decode("feed:1", cursor) == (AT, 42)
    assert "feed" not in cursor  # opaque enough: base64, not a readable query


@pytest.mark.parametrize(
    "cursor",
    ["", ".", "abc", "a.b.c", "é.é", "=.=", "YQ.YQ", "e30.AAAAAAAAAAAAAAAAAAAAAA"],
)
def test_garbage_is_refused(cursor: str) -> None:
    with pytest.raises(BadCursor):
        Cursors(b"k" * 32).decode("feed:1", cursor)


def test_every_one_character_change_is_refused() -> None:
    cursors = Cursors(b"k" * 32)
    cursor = cursors.encode("feed:1", (AT, 42))
    for i, char in enumerate(cursor):
        if char == ".":
            continue
        for other in ("A", "B", "-"):
            if other != char:
                with pytest.raises(BadCursor):
                    cursors.decode("feed:1", cursor[:i] + other + cursor[i + 1 :])


def test_a_cursor_belongs_to_its_list_and_its_key() -> None:
    cursor = Cursors(b"k" * 32).encode("feed:1", (AT, 42))
    with pytest.raises(BadCursor):
        Cursors(b"k" * 32).decode("feed:2", cursor)
    with pytest.raises(BadCursor):
        Cursors(b"j" * 32).decode("feed:1", cursor)
