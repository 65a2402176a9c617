"""One Redis client per process, and what happens when Redis is away.

Every Redis call goes through `RedisLink.call`: on a connection or timeout error the link
marks Redis down for `redis_retry_seconds`, during which callers get their fallback at once
(no timeout per request), logs one warning per interval, and tries Redis again afterwards, so
the app returns to Redis without a restart.

Load is not an outage: the connections come from a bounded pool, and when all are busy a command
waits for one (up to `REDIS_POOL_WAIT_SECONDS`). A command that still finds none gets its
fallback, but nothing is marked down and, unless it was a write, nothing is counted as missed:
only connection errors and timeouts of Redis itself open the down window. A timeout is Redis's
only if Redis does not answer a ping either: with hundreds of requests in one event loop a
command can wait past `REDIS_TIMEOUT_SECONDS` for its turn to read an answer that came long ago.
So a timed-out command gets its fallback (a write counts as missed), and one ping on a
connection of its own, with `CONFIRM_TIMEOUT_FACTOR` times the timeout, decides whether Redis
is down.

What Redis holds may be stale after an outage: writes (invalidations, revocations) made
meanwhile reached only the database. So the first successful call after a missed write bumps the
global epoch, outdating every cached answer and session check; and a process that missed a
write probes Redis in the background until it can do that, even if it serves no request.

Missed writes are counted, not flagged: an epoch bump covers the misses counted before it was
sent, and only those, so a request that reconnects while another one's write is failing cannot
wipe out that miss. The bump for it is still owed, and made.

A revocation cannot wait for that bump: another process may already be back on Redis, reading
a cached "session live" entry. `call_required` is for such writes: it ignores the down window
and tries again until Redis takes the write or `REDIS_REVOCATION_WAIT_SECONDS` have passed,
when it raises `RedisUnreachable` (the miss stays counted, so the epoch bump still follows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings

if TYPE_CHECKING:
    from app.stores.near import NearCache

logger = logging.getLogger(__name__)

T = TypeVar("T")
PREFIX = "ink:"
# Every cached answer and every cached session check depends on this generation. Bumping it
# outdates them all: done when Redis returns after writes (invalidations, revocations) missed it.
EPOCH_KEY = PREFIX + "gen:epoch"
WARNING_INTERVAL_SECONDS = 30.0
CONFIRM_TIMEOUT_FACTOR = 4
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
# Between two attempts of a required write, doubling from the first to the last: a refused
# connection fails at once, a hung server only after REDIS_TIMEOUT_SECONDS.
REQUIRED_RETRY_PAUSES = (0.02, 0.2)


class RedisUnreachable(Exception):
    """A required write did not reach Redis within its wait."""


class PoolExhausted(MaxConnectionsError):
    """Every connection of the pool stayed busy for the whole wait: load, not an outage."""


class WaitingPool(BlockingConnectionPool):
    """A bounded pool whose commands wait for a free connection; a wait that runs out raises
    `PoolExhausted` instead of the plain connection error redis-py uses (which is also what a
    refused connection raises)."""

    async def get_connection(self, *args: object, **kwargs: object) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError) and not isinstance(
                exc, RedisTimeoutError
            ):
                raise PoolExhausted(str(exc)) from exc
            raise


def connection_pool(settings: Settings) -> WaitingPool:
    assert settings.redis_url, "only built when REDIS_URL is set"
    return WaitingPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        # One immediate retry, for a pooled connection that died with a restarted server;
        # otherwise the link decides when to try again.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


class RedisLink:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url, "only built when REDIS_URL is set"
        self.client: Redis = Redis(connection_pool=connection_pool(settings))
        self.retry_after = settings.redis_retry_seconds
        self.required_wait = settings.redis_revocation_wait_seconds
        self._down_until = 0.0
        self._last_warning = 0.0
        # Writes this process may have missed (every failed or skipped write counts one; a
        # failed read outdates nothing, so it counts none), and how many of them an epoch bump
        # has covered. Only a bump that succeeded moves `_made_up`, and only up to the count it
        # read before it was sent.
        self._missed_writes = 0
        self._made_up = 0
        self._probe: asyncio.Task[None] | None = None
        # Commands that found the pool busy for the whole wait (answered from their fallback).
        self.busy = 0
        self._confirm_timeout = settings.redis_timeout_seconds * CONFIRM_TIMEOUT_FACTOR
        self._confirm_client = Redis.from_url(
            settings.redis_url,
            socket_timeout=self._confirm_timeout,
            socket_connect_timeout=self._confirm_timeout,
            single_connection_client=True,
        )
        self._confirming: asyncio.Task[None] | None = None
        # Set by the stores when the near cache is on; an epoch bump empties it at once.
        self.near: NearCache | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def stale(self) -> bool:
        """Some write may have missed Redis, and no epoch bump sent since has covered it."""
        return self._made_up < self._missed_writes

    async def call(
        self, operation: Callable[[Redis], Awaitable[T]], fallback: T, *, write: bool = False
    ) -> T:
        if not self.available:
            self._missed(write)
            return fallback
        try:
            if self.stale:
                await self._outdate_everything()
            return await operation(self.client)
        except MaxConnectionsError:  # back-pressure: Redis is fine, this process is busy
            self.busy += 1
            self._missed(write)
            return fallback
        except RedisTimeoutError as exc:
            self._missed(write)
            self._confirm_outage(exc)
            return fallback
        except UNAVAILABLE as exc:
            self._mark_down(exc)
            self._missed(write)
            return fallback
        except RedisError as exc:  # a bug or a misconfigured server, not an outage
            logger.error("redis command failed", extra={"error": repr(exc)})
            self._missed(write)
            return fallback

    async def call_required(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """A write that must reach Redis before the request may answer (a revocation).

        Tried at once, down window or not, then again after pauses doubling from 20 ms to
        200 ms (each attempt bounded by REDIS_TIMEOUT_SECONDS) until `required_wait` has passed:
        a hang or restart shorter than that delays the answer, by at most a pause once Redis is
        back, and never loses the write. Past it, `RedisUnreachable`.
        """
        deadline = time.monotonic() + self.required_wait
        pause, longest = REQUIRED_RETRY_PAUSES
        while True:
            try:
                if self.stale:
                    await self._outdate_everything()
                result = await operation(self.client)
            except (*UNAVAILABLE, RedisError) as exc:
                if not isinstance(exc, MaxConnectionsError):
                    self._mark_down(exc)
                if time.monotonic() + pause >= deadline:
                    self._missed(True)
                    raise RedisUnreachable(repr(exc)) from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
                continue
            self._down_until = 0.0  # it answered: no need to keep skipping it
            return result

    def _missed(self, write: bool) -> None:
        if not write:
            return
        self._missed_writes += 1
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Bump the epoch as soon as Redis answers again, request or no request."""
        while self.stale:
            await asyncio.sleep(max(self.retry_after, 0.05))
            if not self.available:
                continue
            try:
                await self._outdate_everything()
            except MaxConnectionsError:
                continue
            except (*UNAVAILABLE, RedisError) as exc:
                self._mark_down(exc)

    async def _outdate_everything(self) -> None:
        # The misses this bump covers are those counted before it is sent: a write that fails
        # while it is in flight may have been meant to outdate an entry written after it.
        covering = self._missed_writes
        await self.client.incr(EPOCH_KEY)
        if self.near is not None:
            self.near.forget((EPOCH_KEY,))
        if covering > self._made_up:  # another bump may have covered more meanwhile
            self._made_up = covering
            logger.warning("redis is reachable again; cached entries were invalidated")

    async def ping(self) -> bool:
        try:
            if self.stale:
                await self._outdate_everything()
            return bool(await self.client.ping())
        except MaxConnectionsError:
            return True  # answering others: busy, not down
        except (*UNAVAILABLE, RedisError) as exc:
            self._mark_down(exc)
            return False

    def _confirm_outage(self, exc: BaseException) -> None:
        """A command timed out: down only if a ping of its own gets no answer either."""
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.get_running_loop().create_task(self._confirm(exc))

    async def _confirm(self, exc: BaseException) -> None:
        try:
            await self._confirm_client.ping()
        except (*UNAVAILABLE, RedisError):
            self._mark_down(exc)
            # The next check opens a new connection.
            await self._confirm_client.connection_pool.disconnect()

    def _mark_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + self.retry_after
        if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
            self._last_warning = now
            logger.warning(
                "redis unavailable; using fallbacks",
                extra={"error": repr(exc), "retry_in_s": self.retry_after},
            )

    async def close(self) -> None:
        for task in (self._probe, self._confirming):
            if task is not None:
                task.cancel()
        if self.near is not None:
            await self.near.close()
        await self._confirm_client.aclose()
        await self.client.aclose()
