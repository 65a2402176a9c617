"""Keyset pagination by signed cursor, and the two-step caching of cursor pages.

A page is the `limit` items after the cursor's position in `(sort key, id)` order; one more is
read to know whether another page follows. Items inserted meanwhile land before the position
or after it, never shift it: no duplicates, no gaps.

A cached page is read in two steps: which items it holds (outdated by the generations of what
decides membership), then the page rendered (outdated by the generations of the items shown),
so that one write outdates only the pages that show what it changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from app.core.cursors import BadCursor, Cursors, Position
from app.errors import InvalidCursor
from app.stores.cache import Cache, Slot


def position(cursors: Cursors, scope: str, cursor: str | None) -> Position | None:
    """Where the page starts: None for the first page (no cursor, or an empty one)."""
    if not cursor:
        return None
    try:
        return cursors.decode(scope, cursor)
    except BadCursor:
        raise InvalidCursor from None


def after(
    at: Position | None, sort: Any, item_id: Any, *, descending: bool
) -> ColumnElement[bool] | None:
    """The keyset condition: items strictly after `at` in `(sort, id)` order."""
    if at is None:
        return None
    value, last_id = at
    if descending:
        return or_(sort < value, and_(sort == value, item_id < last_id))
    return or_(sort > value, and_(sort == value, item_id > last_id))


@dataclass(frozen=True, slots=True)
class Members:
    """Which items a page holds, in order, and the cursor of the next page."""

    ids: list[int]
    next_cursor: str | None

    def dump(self) -> bytes:
        return json.dumps({"ids": self.ids, "next_cursor": self.next_cursor}).encode()

    @classmethod
    def load(cls, raw: bytes) -> Members:
        data = json.loads(raw)
        return cls(ids=[int(i) for i in data["ids"]], next_cursor=data["next_cursor"])


def members(
    cursors: Cursors, scope: str, rows: Sequence[tuple[int, datetime]], limit: int
) -> Members:
    """`rows` (id, sort key), `limit + 1` of them at most, as a page and the next cursor."""
    page = list(rows[:limit])
    more = len(rows) > limit
    next_cursor = cursors.encode(scope, (page[-1][1], page[-1][0])) if more and page else None
    return Members(ids=[item_id for item_id, _ in page], next_cursor=next_cursor)


def cursor_key(limit: int, cursor: str | None) -> str:
    """A short, fixed-length cache key part for a page's limit and cursor."""
    digest = hashlib.blake2b((cursor or "").encode(), digest_size=12).hexdigest()
    return f"{limit}:{digest}"


async def cached_page(
    cache: Cache,
    membership: Slot,
    load_members: Callable[[], Awaitable[Members]],
    rendered: Callable[[Members], Slot],
    render: Callable[[Members], Awaitable[bytes]],
) -> bytes:
    """The page as JSON, each of its two steps from the cache when fresh."""
    lookup = await cache.read(membership)
    if lookup.value is not None:
        page = Members.load(lookup.value)
    else:
        page = await load_members()
        await cache.write(lookup, page.dump())
    # Which items (and the next cursor) are in the name: their generations alone can be equal
    # for other items (a new post shifts a full page; every generation is still 0).
    slot = rendered(page)
    digest = hashlib.blake2b(page.dump(), digest_size=12).hexdigest()
    lookup = await cache.read(Slot(slot.generations, f"{slot.name}:{digest}"))
    if lookup.value is not None:
        return lookup.value
    body = await render(page)
    await cache.write(lookup, body)
    return body
