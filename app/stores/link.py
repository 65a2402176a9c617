"""One Redis client per process, and what happens when Redis is away.

Every Redis call goes through `RedisLink.call`: on a connection or timeout error the link
marks Redis down for `redis_retry_seconds`, during which callers get their fallback at once
(no timeout per request), logs one warning per interval, and tries Redis again afterwards, so
the app returns to Redis without a restart.

What Redis holds may be stale after an outage: writes (invalidations, revocations) made
meanwhile reached only the database. So the first successful call after an outage bumps the
global epoch, outdating every cached answer and session check; and a process that missed a
write probes Redis in the background until it can do that, even if it serves no request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
PREFIX = "ink:"
# Every cached answer and every cached session check depends on this generation. Bumping it
# outdates them all: done when Redis returns after writes (invalidations, revocations) missed it.
EPOCH_KEY = PREFIX + "gen:epoch"
WARNING_INTERVAL_SECONDS = 30.0
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisLink:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url, "only built when REDIS_URL is set"
        self.client: Redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
            # One immediate retry, for a pooled connection that died with a restarted server;
            # otherwise the link decides when to try again.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._retry_after = settings.redis_retry_seconds
        self._down_until = 0.0
        self._last_warning = 0.0
        # Set by an outage; cleared once the epoch has been bumped after it.
        self._stale = False
        self._probe: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def call(
        self, operation: Callable[[Redis], Awaitable[T]], fallback: T, *, write: bool = False
    ) -> T:
        if not self.available:
            self._missed(write)
            return fallback
        try:
            if self._stale:
                await self._outdate_everything()
            return await operation(self.client)
        except UNAVAILABLE as exc:
            self._mark_down(exc)
            self._missed(write)
            return fallback
        except RedisError as exc:  # a bug or a misconfigured server, not an outage
            logger.error("redis command failed", extra={"error": repr(exc)})
            self._stale = True
            self._missed(write)
            return fallback

    def _missed(self, write: bool) -> None:
        if write and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Bump the epoch as soon as Redis answers again, request or no request."""
        while self._stale:
            await asyncio.sleep(max(self._retry_after, 0.05))
            if not self.available:
                continue
            try:
                await self._outdate_everything()
            except (*UNAVAILABLE, RedisError) as exc:
                self._mark_down(exc)

    async def _outdate_everything(self) -> None:
        await self.client.incr(EPOCH_KEY)
        self._stale = False
        logger.warning("redis is reachable again; cached entries were invalidated")

    async def ping(self) -> bool:
        try:
            if self._stale:
                await self._outdate_everything()
            return bool(await self.client.ping())
        except (*UNAVAILABLE, RedisError) as exc:
            self._mark_down(exc)
            return False

    def _mark_down(self, exc: BaseException) -> None:
        self._stale = True
        now = time.monotonic()
        self._down_until = now + self._retry_after
        if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
            self._last_warning = now
            logger.warning(
                "redis unavailable; using fallbacks",
                extra={"error": repr(exc), "retry_in_s": self._retry_after},
            )

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()
