"""One Redis client per process, and what happens when Redis is away.

Every Redis call goes through `RedisLink.call`: on a connection or timeout error the link
marks Redis down for `redis_retry_seconds`, during which callers get their fallback at once
(no timeout per request), logs one warning per interval, and tries Redis again afterwards, so
the app returns to Redis without a restart.
"""

from __future__ import annotations

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
            retry=Retry(NoBackoff(), 0),  # the link decides when to try again
            health_check_interval=30,
        )
        self._retry_after = settings.redis_retry_seconds
        self._down_until = 0.0
        self._last_warning = 0.0
        # Set when a write (an invalidation, a revocation) could not reach Redis; see `call`.
        self._missed_writes = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def call(
        self, operation: Callable[[Redis], Awaitable[T]], fallback: T, *, write: bool = False
    ) -> T:
        if not self.available:
            self._missed_writes |= write
            return fallback
        try:
            if self._missed_writes:
                await self.client.incr(EPOCH_KEY)
                self._missed_writes = False
                logger.warning("redis is reachable again; cached entries were invalidated")
            return await operation(self.client)
        except UNAVAILABLE as exc:
            self._mark_down(exc)
            self._missed_writes |= write
            return fallback
        except RedisError as exc:  # a bug or a misconfigured server, not an outage
            logger.error("redis command failed", extra={"error": repr(exc)})
            self._missed_writes |= write
            return fallback

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (*UNAVAILABLE, RedisError) as exc:
            self._mark_down(exc)
            return False

    def _mark_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + self._retry_after
        if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
            self._last_warning = now
            logger.warning(
                "redis unavailable; using fallbacks",
                extra={"error": repr(exc), "retry_in_s": self._retry_after},
            )

    async def close(self) -> None:
        await self.client.aclose()
