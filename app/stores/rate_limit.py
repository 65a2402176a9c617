"""Rate limits with the `limits` library: counters in Redis shared by every API process, or in
process memory in the embedded mode.

When Redis is unreachable the limiter falls back to per-process memory counters instead of
failing open (no limit at all) or closed (every login refused): logins stay limited, only less
precisely, and the site stays usable.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, RateLimitItemPerDay, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.config import Settings
from app.errors import LoginLocked, LoginThrottled, RateLimited
from app.stores.link import PREFIX, RedisLink

# One IPv6 host is usually given a whole /64: counting its addresses apart would let it try
# from 2**64 "clients".
IPV6_CLIENT_PREFIX = 64


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    item: RateLimitItem
    # What the 429 says is limited ("...; try again in 3 minutes"), and its problem type.
    what: str = "Too many requests"
    error: type[RateLimited] = RateLimited

    def refusal(self, retry_after: int) -> RateLimited:
        return self.error(retry_after, self.what)


def client_network(ip: str) -> str:
    """The key a client address is counted under: the address itself for IPv4, its /64 for
    IPv6 (an IPv4-mapped IPv6 address counts as the IPv4 one)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def _one_per_window(item: RateLimitItem) -> RateLimitItem:
    return type(item)(1, item.multiples)


class RateLimiter:
    def __init__(self, settings: Settings, link: RedisLink | None) -> None:
        self.enabled = settings.rate_limits_enabled
        self.login_ip = Limit(
            "login-ip",
            parse(settings.rate_limit_login_ip),
            "Too many login attempts from your address",
        )
        # Failed logins of one account from one client: the lock-out its owner could meet.
        self.login_account = Limit(
            "login-account-client",
            parse(settings.rate_limit_login_account),
            "Too many failed logins for this account from your address",
            LoginLocked,
        )
        # Failed logins of one account from every client together: over it, a client that
        # already failed for the account within the window waits (see services/auth.py).
        ceiling = parse(settings.rate_limit_login_account_ceiling)
        self.login_account_ceiling = Limit(
            "login-account-all",
            ceiling,
            "Too many failed logins for this account from many addresses, yours among them",
            LoginThrottled,
        )
        self.login_failed_recently = Limit("login-account-client-failed", _one_per_window(ceiling))
        # Clients the account logged in from lately: the ceiling does not stop them.
        days = settings.login_known_address_days
        self.remembers_addresses = days > 0
        self.login_known_address = Limit(
            "login-account-client-known", RateLimitItemPerDay(1, max(days, 1))
        )
        self.register_ip = Limit(
            "register-ip",
            parse(settings.rate_limit_register_ip),
            "Too many registrations from your address",
        )
        self.password_reset_ip = Limit(
            "password-reset-ip",
            parse(settings.rate_limit_password_reset_ip),
            "Too many password reset requests from your address",
        )
        self.verify_resend = Limit(
            "verify-resend",
            parse(settings.rate_limit_verify_resend),
            "Too many verification e-mails requested for this account",
        )
        self.email_change = Limit(
            "email-change",
            parse(settings.rate_limit_email_change),
            "Too many e-mail address changes for this account",
        )
        self.sensitive_account = Limit(
            "sensitive-account",
            parse(settings.rate_limit_sensitive_account),
            "Too many wrong current passwords for this account",
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

    async def hit(self, limit: Limit, *key: str) -> None:
        """Count one event; 429 if it is over the limit (and then it is not counted)."""
        if self.enabled and not await self._call("hit", limit, key):
            raise limit.refusal(await self.retry_after(limit, *key))

    async def check(self, limit: Limit, *key: str) -> None:
        """429 if the limit is already used up, without counting anything."""
        if await self.used_up(limit, *key):
            raise limit.refusal(await self.retry_after(limit, *key))

    async def record(self, limit: Limit, *key: str) -> None:
        """Count one event that has happened anyway; a full window stays full."""
        if self.enabled:
            await self._call("hit", limit, key)

    async def used_up(self, limit: Limit, *key: str) -> bool:
        """Whether one more event would be over the limit (never, with the limits off)."""
        return self.enabled and not await self._call("test", limit, key)

    async def retry_after(self, limit: Limit, *key: str) -> int:
        """Whole seconds until the window of a used-up limit has room again: its oldest
        counted event leaves the moving window then."""
        reset_time: float = (await self._ask("get_window_stats", limit, key)).reset_time
        return max(1, math.ceil(reset_time - time.time()))

    async def reset(self) -> None:
        await self._memory.storage.reset()
        if self._shared is not None and self._link is not None:
            await self._link.call(lambda _: self._shared.storage.reset(), None)  # type: ignore[union-attr]

    async def _call(self, method: str, limit: Limit, key: tuple[str, ...]) -> bool:
        return bool(await self._ask(method, limit, key))

    async def _ask(self, method: str, limit: Limit, key: tuple[str, ...]) -> Any:
        """One limiter call, in Redis when it answers, else in this process's memory."""
        ids = (limit.name, *key)
        if self._shared is not None and self._link is not None:
            shared = self._shared
            result = await self._link.call(
                lambda _: getattr(shared, method)(limit.item, *ids), None
            )
            if result is not None:
                return result
        return await getattr(self._memory, method)(limit.item, *ids)
