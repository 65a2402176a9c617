"""The revocation fast path: remembers, per session, that the database found it live, so an
authenticated request needs no database query while Redis is up.

The database stays the source of truth. An entry is used only if, in the same round trip,
  - the session has no revocation marker (set when a session ends, before its entry is dropped,
    so a request that checked the database just before the revocation cannot bring it back),
  - the user's generation is unchanged (bumped when a user is deactivated, deleted, demoted or
    ends all their sessions), and
  - the global epoch is unchanged (bumped when Redis returns after missing such writes).
Entries live `AUTH_CACHE_TTL_SECONDS` at most. A Redis restart empties everything, which sends
every check back to the database: a revoked token never becomes valid again.

Markers and generation bumps are written after the database commit and *before* the request
answers (`RedisLink.call_required`): another process may be reading its cached entry from a
Redis this process cannot reach. Through a hang or restart shorter than
`REDIS_REVOCATION_WAIT_SECONDS` the answer waits; past it the revocation is not acknowledged
(`RevocationPending`, 503) and this process bumps the global epoch as soon as Redis answers it.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, cast

from redis.asyncio import Redis

from app.errors import RevocationPending
from app.stores.link import EPOCH_KEY, PREFIX, RedisLink, RedisUnreachable


@dataclass(frozen=True, slots=True)
class CachedSession:
    user_id: int
    role: str


@dataclass(frozen=True, slots=True)
class SessionLookup:
    """What the fast path knows: a live session, a revoked one, or nothing (ask the database).
    `version` is what an entry written after the database check must be stored with."""

    hit: CachedSession | None
    revoked: bool
    version: str


class SessionCache(Protocol):
    async def lookup(self, session_id: uuid.UUID, user_id: int) -> SessionLookup: ...

    async def remember(
        self, session_id: uuid.UUID, cached: CachedSession, lookup: SessionLookup
    ) -> None: ...

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> None:
        """Called after the database commit; returns once every process will see it, or raises
        `RevocationPending`."""

    async def user_changed(self, user_id: int) -> None:
        """Like `revoke`, for every session of the user."""


class NoSessionCache:
    """Without Redis every authenticated request asks the database, which is always right and,
    in one process, cheap (a primary-key join)."""

    async def lookup(self, session_id: uuid.UUID, user_id: int) -> SessionLookup:
        return SessionLookup(None, False, "")

    async def remember(
        self, session_id: uuid.UUID, cached: CachedSession, lookup: SessionLookup
    ) -> None:
        return None

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> None:
        return None

    async def user_changed(self, user_id: int) -> None:
        return None


def _keys(session_id: uuid.UUID | str, user_id: int) -> tuple[str, str, str]:
    return (
        f"{PREFIX}session:{session_id}",
        f"{PREFIX}revoked:{session_id}",
        f"{PREFIX}gen:user:{user_id}",
    )


class RedisSessionCache:
    def __init__(self, link: RedisLink, ttl_seconds: int, revoked_ttl_seconds: int) -> None:
        self._link = link
        self._ttl = ttl_seconds
        # A marker must outlive every cached entry written before it; the entries' TTL is enough,
        # but keeping it for a session's whole life makes the marker a record worth reading.
        self._revoked_ttl = max(ttl_seconds, revoked_ttl_seconds)

    async def lookup(self, session_id: uuid.UUID, user_id: int) -> SessionLookup:
        sid = str(session_id)
        entry_key, revoked_key, user_key = _keys(sid, user_id)
        near = self._link.near
        seq = -1
        if near is not None and near.fresh():
            seq = near.seq
            known = near.keys
            if revoked_key in known and user_key in known and EPOCH_KEY in known:
                user_gen, epoch = known[user_key], known[EPOCH_KEY]
                version = f"{int(user_gen or 0)}.{int(epoch or 0)}"
                if known[revoked_key] is not None:
                    return SessionLookup(None, True, version)
                role = near.session(sid, user_id, version)
                if role is not None:
                    return SessionLookup(CachedSession(user_id, role), False, version)

        async def run(redis: Redis) -> SessionLookup:
            values = cast(
                "list[bytes | None]", await redis.mget(entry_key, revoked_key, user_key, EPOCH_KEY)
            )
            entry, revoked, user_gen, epoch = values
            if near is not None and near.fresh_since(seq):
                near.learn(zip((revoked_key, user_key, EPOCH_KEY), values[1:], strict=True))
            version = f"{int(user_gen or 0)}.{int(epoch or 0)}"
            if revoked is not None:
                return SessionLookup(None, True, version)
            if entry is None:
                return SessionLookup(None, False, version)
            data = json.loads(entry)
            if data["v"] != version or data["u"] != user_id:
                return SessionLookup(None, False, version)
            if near is not None:
                near.keep_session(sid, user_id, data["r"], version)
            return SessionLookup(CachedSession(data["u"], data["r"]), False, version)

        return await self._link.call(run, SessionLookup(None, False, ""))

    async def remember(
        self, session_id: uuid.UUID, cached: CachedSession, lookup: SessionLookup
    ) -> None:
        if not lookup.version:
            return
        entry_key = _keys(session_id, cached.user_id)[0]
        value = json.dumps({"u": cached.user_id, "r": cached.role, "v": lookup.version})
        # A revocation racing with this write is caught by its marker, which lookup reads too.
        await self._link.call(lambda r: r.set(entry_key, value, ex=self._ttl), None)
        if self._link.near is not None:
            # Used only while the user's generation and the epoch are still `lookup.version`
            # and the marker is known absent: a racing revocation's marker is tracked too.
            self._link.near.keep_session(
                str(session_id), cached.user_id, cached.role, lookup.version
            )

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> None:
        ids = list(session_ids)
        if not ids:
            return

        async def run(redis: Redis) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.set(f"{PREFIX}revoked:{session_id}", b"1", ex=self._revoked_ttl)
                    pipe.delete(f"{PREFIX}session:{session_id}")
                await pipe.execute()

        try:
            await self._required(run)
        finally:
            if (near := self._link.near) is not None:
                near.forget(f"{PREFIX}revoked:{session_id}" for session_id in ids)
                for session_id in ids:
                    near.forget_session(str(session_id))

    async def user_changed(self, user_id: int) -> None:
        key = f"{PREFIX}gen:user:{user_id}"

        async def run(redis: Redis) -> None:
            await redis.incr(key)

        try:
            await self._required(run)
        finally:
            if self._link.near is not None:
                self._link.near.forget((key,))

    async def _required(self, operation: Callable[[Redis], Awaitable[None]]) -> None:
        try:
            await self._link.call_required(operation)
        except RedisUnreachable as exc:
            retry_after = max(1, math.ceil(self._link.retry_after))
            raise RevocationPending(retry_after, cached_for=self._ttl) from exc
