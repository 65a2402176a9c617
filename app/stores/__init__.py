"""Where shared state lives: Redis when `REDIS_URL` is set, process memory otherwise. Each store
is a small interface with both implementations, chosen once at start-up; routes and services
never ask which one they have."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.stores.cache import Cache, MemoryCache, NoCache, RedisCache
from app.stores.link import RedisLink
from app.stores.near import NearCache
from app.stores.rate_limit import RateLimiter
from app.stores.sessions import NoSessionCache, RedisSessionCache, SessionCache

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class Stores:
    cache: Cache
    sessions: SessionCache
    limiter: RateLimiter
    redis: RedisLink | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        link = RedisLink(settings) if settings.redis_url else None
        if link is not None and settings.redis_url and settings.near_cache_enabled:
            near = NearCache(
                settings.redis_url,
                link,
                timeout_seconds=settings.redis_timeout_seconds,
                entry_ttl_seconds=settings.cache_ttl_seconds,
                session_ttl_seconds=settings.auth_cache_ttl_seconds,
                retry_seconds=settings.redis_retry_seconds,
            )
            link.near = near if near.supported else None
        cache: Cache
        sessions: SessionCache
        if link is None:
            cache = MemoryCache(
                settings.cache_ttl_seconds, epoch_file=settings.data_dir / "cache-epoch"
            )
            sessions = NoSessionCache()
        else:
            cache = RedisCache(link, settings.cache_ttl_seconds)
            sessions = RedisSessionCache(
                link,
                settings.auth_cache_ttl_seconds,
                settings.refresh_token_expire_days * SECONDS_PER_DAY,
            )
        if not settings.cache_enabled:
            cache = NoCache()
        return cls(cache, sessions, RateLimiter(settings, link), link)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()
