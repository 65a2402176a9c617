"""A response cache with generation keys, so a write never has to find the entries it outdates.

Every entry is stored under the current values of the generations it depends on (a post's own
generation, the generation of all lists, the global epoch). A write bumps the generations it
touches, after its transaction commits; from then on every process computes a new key and
misses, and the old entries simply expire. A reader takes the generations *before* it reads the
database, so an entry built from data older than a concurrent write lands under the old key.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis

from app.stores.link import EPOCH_KEY, PREFIX, RedisLink

EPOCH = EPOCH_KEY.removeprefix(PREFIX)
MEMORY_MAX_ENTRIES = 10_000
EPOCH_FILE_CHECK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one cached answer lives: the generations it depends on and its own name."""

    generations: tuple[str, ...]
    name: str


@dataclass(frozen=True, slots=True)
class Lookup:
    slot: Slot
    version: str
    value: bytes | None


class Cache(Protocol):
    async def read(self, slot: Slot) -> Lookup: ...

    async def write(self, lookup: Lookup, value: bytes) -> None: ...

    async def bump(self, *generations: str) -> None: ...

    async def clear(self) -> None: ...


def post_slot(post_id: int, viewer_key: str) -> Slot:
    return Slot((EPOCH, f"gen:post:{post_id}"), f"post:{post_id}:{viewer_key}")


def list_slot(query_key: str, viewer_key: str) -> Slot:
    return Slot((EPOCH, "gen:lists"), f"list:{viewer_key}:{query_key}")


def image_post_slot(storage_key: str) -> Slot:
    """Which post an image's files belong to: an image never moves, so only the epoch (and
    the entry's age) outdates it."""
    return Slot((EPOCH,), f"image-post:{storage_key}")


def post_public_slot(post_id: int) -> Slot:
    """Whether a post is published, for serving its media: outdated by every write to it."""
    return Slot((EPOCH, f"gen:post:{post_id}"), f"post-public:{post_id}")


def post_generations(post_id: int) -> tuple[str, ...]:
    return (f"gen:post:{post_id}", "gen:lists")


def slug_slot(slug: str) -> Slot:
    """Which post a slug names: a slug never moves to another post, but is free again once its
    post is deleted (which bumps `slug_generation`)."""
    return Slot((EPOCH, slug_generation(slug)), f"slug:{slug}")


def slug_generation(slug: str) -> str:
    return f"gen:slug:{slug}"


# The social graph's generations. A user's generation moves with whatever their profile shows
# (who follows them, whom they follow, their published posts, their name and picture); an
# author's posts generation with the set of their posts (a new one, a change, a deletion). A
# feed depends on its reader's generation and on the posts generations of the authors followed,
# so one write outdates only the feeds (and profiles) it touches.
def user_generation(user_id: int) -> str:
    return f"gen:user:{user_id}"


def author_posts_generation(author_id: int) -> str:
    return f"gen:posts:{author_id}"


def author_generations(author_id: int) -> tuple[str, ...]:
    """What a write to one of the author's posts outdates beside the post itself."""
    return (author_posts_generation(author_id), user_generation(author_id))


def user_slot(username: str) -> Slot:
    """Which active user has this username: renames and (de)activations bump every
    generation (`ALL_GENERATIONS`)."""
    return Slot((EPOCH,), f"username:{username}")


LIST_GENERATIONS = ("gen:lists",)
ALL_GENERATIONS = (EPOCH,)


class NoCache:
    """The cache turned off (`CACHE_ENABLED=false`): every read misses."""

    async def read(self, slot: Slot) -> Lookup:
        return Lookup(slot, "", None)

    async def write(self, lookup: Lookup, value: bytes) -> None:
        return None

    async def bump(self, *generations: str) -> None:
        return None

    async def clear(self) -> None:
        return None


class MemoryCache:
    """The embedded mode's cache: one process, a bounded LRU with TTLs.

    Commands run beside the API (`python -m app seed`) write to the same database: their
    `clear()` touches `epoch_file`, and the API, which looks at that file at most once a
    second, then drops everything it holds."""

    def __init__(
        self,
        ttl_seconds: int,
        max_entries: int = MEMORY_MAX_ENTRIES,
        epoch_file: Path | None = None,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._generations: dict[str, int] = {}
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._epoch_file = epoch_file
        self._epoch_seen = self._epoch_mtime()
        self._epoch_checked_at = time.monotonic()

    def _epoch_mtime(self) -> float:
        try:
            return self._epoch_file.stat().st_mtime if self._epoch_file else 0.0
        except FileNotFoundError:
            return 0.0

    def _follow_other_processes(self) -> None:
        now = time.monotonic()
        if self._epoch_file is None or 0 <= now - self._epoch_checked_at < EPOCH_FILE_CHECK_SECONDS:
            return
        self._epoch_checked_at = now
        mtime = self._epoch_mtime()
        if mtime != self._epoch_seen:
            self._epoch_seen = mtime
            self._forget()

    def _forget(self) -> None:
        self._generations.clear()
        self._entries.clear()

    async def read(self, slot: Slot) -> Lookup:
        self._follow_other_processes()
        version = ".".join(str(self._generations.get(g, 0)) for g in slot.generations)
        key = f"{slot.name}:{version}"
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return Lookup(slot, version, None)
        self._entries.move_to_end(key)
        return Lookup(slot, version, entry[1])

    async def write(self, lookup: Lookup, value: bytes) -> None:
        key = f"{lookup.slot.name}:{lookup.version}"
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def bump(self, *generations: str) -> None:
        for generation in generations:
            self._generations[generation] = self._generations.get(generation, 0) + 1

    async def clear(self) -> None:
        self._forget()
        if self._epoch_file is not None:
            self._epoch_file.parent.mkdir(parents=True, exist_ok=True)
            self._epoch_file.write_bytes(os.urandom(8).hex().encode())  # a new mtime
            self._epoch_seen = self._epoch_mtime()


# Reads the generations and the entry in one round trip. Keys are built inside the script, so
# this needs a single Redis (or one cluster slot), which is what Inkwell deploys.
_READ = """
local parts = {}
for i, key in ipairs(KEYS) do parts[i] = redis.call('GET', key) or '0' end
local version = table.concat(parts, '.')
return {version, redis.call('GET', ARGV[1] .. ':' .. version)}
"""


class RedisCache:
    """The services mode's cache, shared by every API process."""

    def __init__(self, link: RedisLink, ttl_seconds: int) -> None:
        self._link = link
        self._ttl = ttl_seconds
        self._read = link.client.register_script(_READ)

    async def read(self, slot: Slot) -> Lookup:
        keys = [PREFIX + g for g in slot.generations]

        async def run(_: Redis) -> Lookup:
            version, value = await self._read(keys=keys, args=[PREFIX + slot.name])
            return Lookup(slot, version.decode(), value)

        # On an outage the lookup has no version: `write` then stores nothing.
        return await self._link.call(run, Lookup(slot, "", None))

    async def write(self, lookup: Lookup, value: bytes) -> None:
        if not lookup.version:
            return
        key = f"{PREFIX}{lookup.slot.name}:{lookup.version}"
        await self._link.call(lambda r: r.set(key, value, ex=self._ttl), None)

    async def bump(self, *generations: str) -> None:
        async def run(redis: Redis) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for generation in generations:
                    pipe.incr(PREFIX + generation)
                await pipe.execute()

        await self._link.call(run, None, write=True)

    async def clear(self) -> None:
        await self.bump(EPOCH)
