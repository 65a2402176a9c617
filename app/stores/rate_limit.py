"""Rate limits with the `limits` library: counters in Redis shared by every API process, or in
process memory in the embedded mode.

When Redis is unreachable the limiter falls back to per-process memory counters instead of
failing open (no limit at all) or closed (every login refused): logins stay limited, only less
precisely, and the site stays usable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.config import Settings
from app.errors import RateLimited
from app.stores.link import PREFIX, RedisLink


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    item: RateLimitItem


class RateLimiter:
    def __init__(self, settings: Settings, link: RedisLink | None) -> None:
        self.enabled = settings.rate_limits_enabled
        self.login_ip = Limit("login-ip", parse(settings.rate_limit_login_ip))
        self.login_account = Limit("login-account", parse(settings.rate_limit_login_account))
        self.register_ip = Limit("register-ip", parse(settings.rate_limit_register_ip))
        self.password_reset_ip = Limit(
            "password-reset-ip", parse(settings.rate_limit_password_reset_ip)
        )
        self.verify_resend = Limit("verify-resend", parse(settings.rate_limit_verify_resend))
        self.email_change = Limit("email-change", parse(settings.rate_limit_email_change))
        self.sensitive_account = Limit(
            "sensitive-account", parse(settings.rate_limit_sensitive_account)
        )
        self._link = link
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        if link is not None:
            storage: Storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=PREFIX + "limits",
                connection_pool=link.client.connection_pool,  # type: ignore[arg-type]
            )
            self._shared = MovingWindowRateLimiter(storage)

    async def hit(self, limit: Limit, key: str) -> None:
        """Count one event; 429 if it is over the limit."""
        if self.enabled and not await self._call("hit", limit, key):
            raise RateLimited(retry_after=await self._retry_after(limit, key))

    async def check(self, limit: Limit, key: str) -> None:
        """429 if the limit is already used up, without counting anything."""
        if self.enabled and not await self._call("test", limit, key):
            raise RateLimited(retry_after=await self._retry_after(limit, key))

    async def reset(self) -> None:
        await self._memory.storage.reset()
        if self._shared is not None and self._link is not None:
            await self._link.call(lambda _: self._shared.storage.reset(), None)  # type: ignore[union-attr]

    async def _call(self, method: str, limit: Limit, key: str) -> bool:
        ids = (limit.name, key)
        if self._shared is not None and self._link is not None:
            shared = self._shared
            result = await self._link.call(
                lambda _: getattr(shared, method)(limit.item, *ids), None
            )
            if result is not None:
                return bool(result)
        return bool(await getattr(self._memory, method)(limit.item, *ids))

    async def _retry_after(self, limit: Limit, key: str) -> int:
        ids = (limit.name, key)
        stats = None
        if self._shared is not None and self._link is not None:
            shared = self._shared
            stats = await self._link.call(lambda _: shared.get_window_stats(limit.item, *ids), None)
        if stats is None:
            stats = await self._memory.get_window_stats(limit.item, *ids)
        return max(1, math.ceil(stats.reset_time - time.time()))
