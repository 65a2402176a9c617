"""The near cache (services mode): cached reads and session checks answered from process memory,
with no Redis command, yet a write or a revocation made through another process is seen by the
very next request, and nothing is served from memory while the invalidation channel is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.config import Settings
from app.stores.near import NearCache
from tests.conftest import SERVICES, running_app, settings_like
from tests.factories import Account, create_post, login, register
from tests.redis_server import RedisServer

pytestmark = pytest.mark.skipif(not SERVICES, reason="the near cache needs Redis")

ROUNDS = 20
READS = ("evalsha", "mget")


@pytest.fixture
async def redis(redis_server: RedisServer | None) -> AsyncIterator[Redis]:
    assert redis_server is not None
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def reads_sent(redis: Redis) -> int:
    """Cache reads and session checks Redis has carried out so far."""
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "mget")
    )


def near_of(app: FastAPI) -> NearCache:
    near: NearCache | None = app.state.stores.redis.near
    assert near is not None
    return near


async def channel_up(app: FastAPI, client: httpx.AsyncClient, path: str) -> None:
    """Reads until the app's invalidation channel is connected and vouches for memory."""
    near = near_of(app)
    for _ in range(200):
        await client.get(path)
        if near.fresh():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the near cache's channel did not come up")


async def read(client: httpx.AsyncClient, post_id: int, account: Account | None = None) -> Any:
    headers = account.headers if account is not None else {}
    response = await client.get(f"/api/posts/{post_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_repeated_cached_read_sends_nothing_to_redis(
    app: FastAPI, client: httpx.AsyncClient, redis: Redis
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice)
    await channel_up(app, client, f"/api/posts/{post['id']}")
    await read(client, post["id"], alice)
    await read(client, post["id"])

    before = await reads_sent(redis)
    for _ in range(5):
        assert (await read(client, post["id"], alice))["title"] == post["title"]
        assert (await read(client, post["id"]))["title"] == post["title"]
    assert await reads_sent(redis) == before


async def test_a_write_on_one_process_is_read_on_the_other_at_the_next_request(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice, title="Version 0")
    path = f"/api/posts/{post['id']}"
    async with running_app(settings_like(settings)) as (other_app, other):
        await channel_up(app, client, path)
        await channel_up(other_app, other, path)
        for n in range(1, ROUNDS + 1):
            # Both processes hold the post (and the list) in memory...
            assert (await read(client, post["id"], alice))["title"] == f"Version {n - 1}"
            assert (await read(other, post["id"], alice))["title"] == f"Version {n - 1}"
            assert (await other.get("/api/posts")).json()["items"][0]["title"] == f"Version {n - 1}"
            # ... one of them changes it, the other answers the next request.
            writer, reader = (client, other) if n % 2 else (other, client)
            patched = await writer.patch(
                path, json={"title": f"Version {n}"}, headers=alice.headers
            )
            assert patched.status_code == 200, patched.text
            assert (await read(reader, post["id"], alice))["title"] == f"Version {n}"
            assert (await read(reader, post["id"]))["title"] == f"Version {n}"
            listed = (await reader.get("/api/posts")).json()["items"][0]["title"]
            assert listed == f"Version {n}"


async def test_a_session_ended_on_one_process_is_refused_by_the_other_at_the_next_request(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    async with running_app(settings_like(settings)) as (other_app, other):
        for _ in range(ROUNDS // 4):
            alice = await register(client)
            phone = await login(client, alice.username)
            path = f"/api/posts/{(await create_post(client, alice))['id']}"
            await channel_up(app, client, path)
            await channel_up(other_app, other, path)
            for c in (client, other):  # both processes hold the session check in memory
                for _ in range(2):
                    assert (await c.get(path, headers=alice.headers)).status_code == 200
            revoked = await other.post(
                "/api/token/revoke", json={"refresh_token": alice.refresh_token}
            )
            assert revoked.status_code == 204
            assert (await client.get(path, headers=alice.headers)).status_code == 401
            assert (await other.get(path, headers=alice.headers)).status_code == 401
            still = {"Authorization": f"Bearer {phone['access_token']}"}
            assert (await client.get(path, headers=still)).status_code == 200


async def test_nothing_is_served_from_memory_while_the_channel_is_down(
    app: FastAPI, client: httpx.AsyncClient, redis: Redis
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice, title="Before")
    path = f"/api/posts/{post['id']}"
    await channel_up(app, client, path)
    await read(client, post["id"])
    near = near_of(app)

    # The channel is cut (Redis drops the tracking connection): memory is bypassed at once...
    tracking = [c for c in await redis.client_list() if "t" in c.get("flags", "")]
    assert tracking, "no connection has client-side tracking on"
    for connection in tracking:
        await redis.client_kill_filter(_id=connection["id"])
    # ... while the change below is made behind the app's back, straight in Redis: a generation
    # bump the app has not seen itself.
    await redis.incr(f"ink:gen:post:{post['id']}")
    before = await reads_sent(redis)
    assert (await read(client, post["id"]))["title"] == "Before"
    assert await reads_sent(redis) > before, "answered from memory with the channel down"
    assert not near.fresh()

    # Back up by itself, with everything learnt before forgotten.
    await channel_up(app, client, path)
