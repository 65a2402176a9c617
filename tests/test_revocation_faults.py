"""A revocation survives Redis failing at the worst moment.

The first tests drive `RedisLink` against a scripted stand-in for Redis, so that two requests
interleave exactly where a missed write used to be forgotten (both modes). The others pause
the run's own redis-server (SIGSTOP) around a logout (services mode).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings
from app.errors import RevocationPending
from app.stores.link import EPOCH_KEY, REQUIRED_RETRY_PAUSES, RedisLink, RedisUnreachable
from app.stores.sessions import RedisSessionCache
from tests.conftest import SERVICES, running_app, settings_like
from tests.factories import bearer, login, register, session_id
from tests.redis_server import RedisServer

RETRY_S = 0.05
SETTLE_S = 2.0


class ScriptedRedis:
    """Stands in for the Redis client: INCR of the epoch, whose next call can be held until the
    test lets it answer; `events` tells in which order things reached it."""

    def __init__(self) -> None:
        self.epoch = 0
        self.events: list[str] = []
        self.hold_next_incr: asyncio.Event | None = None
        self.hung = False  # every command times out

    async def incr(self, key: str) -> int:
        if self.hung:
            raise RedisTimeoutError("Timeout reading from socket")
        assert key == EPOCH_KEY
        self.events.append("incr sent")
        hold, self.hold_next_incr = self.hold_next_incr, None
        if hold is not None:
            await hold.wait()
        self.epoch += 1
        self.events.append("incr done")
        return self.epoch

    def pipeline(self, transaction: bool = True) -> HungPipeline:
        assert self.hung, "only a hung Redis is scripted for pipelines"
        return HungPipeline()

    async def aclose(self) -> None:
        return None

    def bumps_sent_after(self, event: str) -> int:
        """Epoch bumps sent after `event` that Redis carried out."""
        later = self.events[self.events.index(event) + 1 :]
        sent = [i for i, e in enumerate(later) if e == "incr sent"]
        return sum(1 for i in sent if "incr done" in later[i + 1 :])


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[RedisLink, ScriptedRedis]]:
    settings = Settings.model_validate(
        {
            "environment": "test",
            "jwt_secret_key": "test-secret-test-secret-test-secret-0123456789",
            "redis_url": "redis://127.0.0.1:9/0",  # never dialled: the client is replaced
            "redis_retry_seconds": RETRY_S,
            "redis_revocation_wait_seconds": 0.3,
        }
    )
    link = RedisLink(settings)
    await link.client.aclose()
    fake = ScriptedRedis()
    link.client = fake  # type: ignore[assignment]
    try:
        yield link, fake
    finally:
        await link.close()


def timing_out(fake: ScriptedRedis, name: str, then: Callable[[], None] | None = None) -> Any:
    """A command that times out (Redis hung), recorded as `name`; `then` runs just before."""

    async def run(_: Redis) -> None:
        if then is not None:
            then()
        fake.events.append(name)
        raise RedisTimeoutError("Timeout reading from socket")

    return run


async def answering(_: Redis) -> str:
    return "ok"


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {SETTLE_S} s: {what}"
        await asyncio.sleep(0.01)


async def made_up(fake: ScriptedRedis, miss: str) -> None:
    """The epoch is bumped, by a bump sent after `miss`: every process's cached session checks
    and answers from before it are outdated. The link's probe does it with no request."""
    await until(lambda: fake.bumps_sent_after(miss) >= 1, f"an epoch bump after {miss!r}")


# --- the missed-write record ----------------------------------------------------------------------


async def test_a_write_missed_while_a_request_reconnects_is_still_made_up(
    scripted: tuple[RedisLink, ScriptedRedis],
) -> None:
    link, fake = scripted
    # An outage, found by a write it made miss: Redis is skipped for RETRY_S, the epoch owes a
    # bump (a failed read alone would owe none: it outdates nothing). The background probe's
    # bump is held on its way.
    probing = asyncio.Event()
    fake.hold_next_incr = probing
    assert await link.call(timing_out(fake, "write missed"), None, write=True) is None
    await until(lambda: fake.events.count("incr sent") == 1, "the probe's bump")

    # A request reconnects: its own epoch bump is on its way when...
    reconnected = asyncio.Event()
    fake.hold_next_incr = reconnected
    reconnecting = asyncio.create_task(link.call(answering, "fallback"))
    await until(lambda: fake.events.count("incr sent") == 2, "the reconnecting bump")
    # ... another request's revocation write fails (Redis hangs again), while the first one's
    # bump is answered: both finish in the same turn of the event loop.
    revoking = link.call(
        timing_out(fake, "revocation missed", then=reconnected.set), None, write=True
    )
    assert await revoking is None
    assert await reconnecting == "ok"
    probing.set()

    # The bump that answered was sent before the revocation was missed: it does not cover it.
    await made_up(fake, "revocation missed")


async def test_a_write_missed_while_the_probe_reconnects_is_still_made_up(
    scripted: tuple[RedisLink, ScriptedRedis],
) -> None:
    link, fake = scripted
    # A missed write starts the background probe, which bumps the epoch once Redis answers.
    assert await link.call(timing_out(fake, "first write missed"), None, write=True) is None
    held = asyncio.Event()
    fake.hold_next_incr = held
    await until(lambda: "incr sent" in fake.events, "the probe's bump")  # on its way

    # Meanwhile a revocation write is missed, then the probe's bump is answered.
    await link.call(timing_out(fake, "revocation missed"), None, write=True)
    held.set()

    await made_up(fake, "revocation missed")


async def test_required_write_rides_out_a_short_hang(
    scripted: tuple[RedisLink, ScriptedRedis],
) -> None:
    link, _ = scripted
    attempts: list[float] = []

    async def hangs_twice(_: Redis) -> str:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise RedisTimeoutError("Timeout reading from socket")
        return "stored"

    # The down window opened by the first failure does not stop the retries.
    assert await link.call_required(hangs_twice) == "stored"
    assert len(attempts) == 3
    assert link.available


async def test_required_write_gives_up_after_its_wait_and_leaves_the_epoch_bump_owed(
    scripted: tuple[RedisLink, ScriptedRedis],
) -> None:
    link, fake = scripted
    started = time.monotonic()
    with pytest.raises(RedisUnreachable):
        await link.call_required(timing_out(fake, "marker missed"))
    elapsed = time.monotonic() - started
    longest_pause = REQUIRED_RETRY_PAUSES[1]
    assert link.required_wait - longest_pause <= elapsed < link.required_wait + 0.5, elapsed
    assert fake.events.count("marker missed") >= 3  # tried again and again meanwhile

    await made_up(fake, "marker missed")


async def test_session_cache_refuses_to_acknowledge_a_revocation_redis_did_not_take(
    scripted: tuple[RedisLink, ScriptedRedis],
) -> None:
    link, fake = scripted
    fake.hung = True
    sessions = RedisSessionCache(link, ttl_seconds=60, revoked_ttl_seconds=60)
    with pytest.raises(RevocationPending) as refused:
        await sessions.revoke([uuid.uuid4()])
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    with pytest.raises(RevocationPending):
        await sessions.user_changed(7)


class HungPipeline:
    async def __aenter__(self) -> HungPipeline:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def set(self, *_: object, **__: object) -> None:
        return None

    def delete(self, *_: object) -> None:
        return None

    async def execute(self) -> None:
        raise RedisTimeoutError("Timeout reading from socket")


# --- real Redis, paused ---------------------------------------------------------------------------

services_only = pytest.mark.skipif(not SERVICES, reason="needs the run's own Redis")


@services_only
async def test_logout_through_a_redis_hang_past_the_wait_is_503_then_made_up(
    settings: Settings, redis_server: RedisServer | None, client: httpx.AsyncClient
) -> None:
    assert redis_server is not None
    assert redis_server.process is not None
    wait = 0.6
    own = settings_like(settings, redis_revocation_wait_seconds=wait, redis_retry_seconds=0.2)
    alice = await register(client, "alice")
    async with running_app(own) as (_, other):
        assert (await other.get("/api/users/me", headers=alice.headers)).status_code == 200
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused = await other.post(
                "/api/token/revoke", json={"refresh_token": alice.refresh_token}
            )
            elapsed = time.monotonic() - started
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "revocation_pending"
        assert int(refused.headers["retry-after"]) >= 1
        # Bounded: the wait, plus the attempt in flight when it ran out (REDIS_TIMEOUT_SECONDS).
        assert elapsed < wait + 2 * settings.redis_timeout_seconds + 0.5, elapsed

        # Not acknowledged, yet the database has it and the other app bumps the epoch as soon
        # as Redis answers: the suite's app, which cached the session as live, refuses it.
        await asyncio.sleep(1.0)
        assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 401

        # Asking again is safe and answered once Redis has the marker.
        again = await other.post("/api/token/revoke", json={"refresh_token": alice.refresh_token})
        assert again.status_code == 204, again.text
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.exists(f"ink:revoked:{session_id(alice.access_token)}")
    finally:
        await redis.aclose()


@services_only
async def test_ending_a_session_through_a_long_hang_is_503_and_asking_again_makes_it_up(
    settings: Settings, redis_server: RedisServer | None, client: httpx.AsyncClient
) -> None:
    assert redis_server is not None
    assert redis_server.process is not None
    # Probing for the epoch bump only after the test has asked again.
    own = settings_like(settings, redis_revocation_wait_seconds=0.3, redis_retry_seconds=5)
    alice = await register(client, "alice")
    phone = await login(client, "alice")
    phone_sid = session_id(phone["access_token"])
    async with running_app(own) as (_, other):
        assert (await client.get("/api/users/me", headers=bearer(phone["access_token"]))).is_success
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            refused = await other.delete(
                f"/api/users/me/sessions/{phone_sid}", headers=alice.headers
            )
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "revocation_pending"

        again = await other.delete(f"/api/users/me/sessions/{phone_sid}", headers=alice.headers)
        assert again.status_code == 404, again.text  # already ended; now Redis knows it too
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.exists(f"ink:revoked:{phone_sid}")
    finally:
        await redis.aclose()
    response = await client.get("/api/users/me", headers=bearer(phone["access_token"]))
    assert response.status_code == 401, response.text
