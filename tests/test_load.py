"""Load is not an outage: hundreds of concurrent clients on the cached read are all answered,
from the cache, without the Redis link logging an outage or bumping the epoch (both modes;
the Redis checks in services mode).

A process of its own with a pool of 8 Redis connections meets 256 and 1,024 concurrent requests
whose cache entries and session checks are in Redis but not yet in its near cache: every request
needs Redis at the same moment, so most of them wait for a connection. Waiting is back-pressure;
it used to count as Redis being down, sending reads to the database and, when Redis "returned",
throwing the whole cache away.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.stores.link import EPOCH_KEY, RedisLink
from tests.conftest import running_app, settings_like
from tests.factories import Account, create_post, register

LINK_LOGGER = "app.stores.link"
POOL = 8


async def epoch(settings: Settings) -> int:
    if settings.redis_url is None:
        return 0
    redis = Redis.from_url(settings.redis_url)
    try:
        return int(await redis.get(EPOCH_KEY) or 0)
    finally:
        await redis.aclose()


async def storm(
    client: httpx.AsyncClient, readers: list[Account], posts: list[dict[str, Any]], n: int
) -> list[httpx.Response]:
    """`n` concurrent cached reads, spread over the readers (and anonymous) and the posts."""

    def one(i: int) -> Any:
        post = posts[i % len(posts)]
        reader = readers[i % (len(readers) + 1)] if i % (len(readers) + 1) < len(readers) else None
        headers = reader.headers if reader is not None else {}
        return client.get(f"/api/posts/{post['id']}", headers=headers)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.parametrize("clients", [256, 1024])
async def test_concurrent_cached_reads_are_answered_without_an_outage(
    settings: Settings,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    clients: int,
) -> None:
    readers = [await register(client) for _ in range(3)]
    posts = [await create_post(client, readers[0]) for _ in range(4)]
    # The suite's app puts every answer and session check into the shared cache.
    for response in await storm(client, readers, posts, 4 * (len(readers) + 1)):
        assert response.status_code == 200, response.text
    before = await epoch(settings)

    own = settings_like(settings, redis_max_connections=POOL, redis_pool_wait_seconds=5.0)
    async with running_app(own) as (app, other):
        caplog.set_level(logging.INFO, logger=LINK_LOGGER)
        responses = await storm(other, readers, posts, clients)
        link: RedisLink | None = app.state.stores.redis
        if link is not None:
            assert link.available, "load was taken for an outage"
            assert not link.stale, "load was counted as a missed write"
        again = await storm(other, readers, posts, clients)  # and once more, warm

    assert [r.status_code for r in responses + again] == [200] * (2 * clients)
    by_id = {post["id"]: post["title"] for post in posts}
    for response in responses + again:
        assert response.json()["title"] == by_id[response.json()["id"]]
    link_records = [
        (r.getMessage(), getattr(r, "error", None)) for r in caplog.records if r.name == LINK_LOGGER
    ]
    assert link_records == []  # no "redis unavailable", no "cached entries were invalidated"
    assert await epoch(settings) == before
