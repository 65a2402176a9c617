"""Redis going away and coming back, against the run's own redis-server (services mode only).

The database is the source of truth: with Redis killed (SIGKILL, everything in it lost) or
unreachable (SIGSTOP, its data kept but no answers), reads and writes keep working from the
database, authentication asks the database, rate limits fall back to process memory, and when
Redis returns the app uses it again without a restart and without serving anything stale.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.main import create_app
from app.models import AuthSession, Post
from app.stores.link import RedisLink
from tests.conftest import SERVICES, QueryCounter
from tests.factories import Account, bearer, create_post, login, register, session_id
from tests.redis_server import RedisServer

pytestmark = pytest.mark.skipif(not SERVICES, reason="needs the run's own Redis (services mode)")

LINK_LOGGER = "app.stores.link"


@pytest.fixture
def server(redis_server: RedisServer | None) -> RedisServer:
    assert redis_server is not None, "services mode starts a redis-server"
    return redis_server


@pytest.fixture
async def redis(server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's own, to look at what the app stored in Redis."""
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def wait_until_app_uses_redis(app: FastAPI, server: RedisServer) -> None:
    """Redis running and the app's link past any down window, with a live connection."""
    if server.process is None:
        server.start()
    link: RedisLink = app.state.stores.redis
    # Connections from before a restart would each fail once and mark Redis down again.
    await link.client.connection_pool.disconnect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if link.available and await link.call(lambda r: r.ping(), False):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the app did not return to Redis within 10 s")


@pytest.fixture(autouse=True)
async def _redis_in_use(app: FastAPI, server: RedisServer) -> AsyncIterator[None]:
    """Each test starts with the app on Redis, and leaves it so for the tests after it."""
    await wait_until_app_uses_redis(app, server)
    yield
    await wait_until_app_uses_redis(app, server)


async def wait_for_retry(settings: Settings) -> None:
    """Long enough for the app to try Redis again after marking it down."""
    await asyncio.sleep(settings.redis_retry_seconds + 0.3)


async def restart_and_wait(server: RedisServer, settings: Settings) -> None:
    server.start()
    await wait_for_retry(settings)


@asynccontextmanager
async def paused(server: RedisServer, client: httpx.AsyncClient) -> AsyncIterator[None]:
    """Redis unreachable but not lost: the process is stopped (SIGSTOP), its data kept.

    A readiness check first lets the app find Redis gone (its ping times out), so the writes
    inside the block are not even sent: nothing queued reaches Redis when it resumes."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        ready = await client.get("/health/ready")
        assert ready.json()["checks"]["redis"] == "unavailable"
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


async def keys(redis: Redis, pattern: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=pattern)]


# --- reads, writes and authentication while Redis is down ---------------------------------------


async def test_reads_answer_from_the_database_while_redis_is_down(
    client: httpx.AsyncClient, server: RedisServer
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice, title="Still here", tags=["redis"])
    assert (await client.get(f"/api/posts/{post['id']}")).status_code == 200  # cached

    server.stop()

    for _ in range(3):
        response = await client.get(f"/api/posts/{post['id']}")
        assert response.status_code == 200, response.text
        assert response.json()["title"] == "Still here"
        assert response.json()["tags"] == ["redis"]
    listing = await client.get("/api/posts")
    assert listing.status_code == 200, listing.text
    assert [p["id"] for p in listing.json()["items"]] == [post["id"]]
    assert listing.json()["total"] == 1
    me = await client.get("/api/users/me", headers=alice.headers)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"


async def test_writes_succeed_and_are_visible_while_redis_is_down(
    client: httpx.AsyncClient, server: RedisServer, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    old = await create_post(client, alice, title="Before the outage")
    assert (await client.get(f"/api/posts/{old['id']}")).json()["likes"] == 0  # cached, 0 likes
    assert (await client.get("/api/posts")).json()["total"] == 1  # list cached

    server.stop()

    created = await client.post(
        "/api/posts", json={"title": "During the outage", "content": "x"}, headers=alice.headers
    )
    assert created.status_code == 201, created.text
    patched = await client.patch(
        f"/api/posts/{old['id']}", json={"title": "Edited in the outage"}, headers=alice.headers
    )
    assert patched.status_code == 200, patched.text
    liked = await client.put(f"/api/posts/{old['id']}/like", headers=bob.headers)
    assert liked.status_code == 204, liked.text

    seen = (await client.get(f"/api/posts/{old['id']}", headers=bob.headers)).json()
    assert (seen["title"], seen["likes"], seen["liked_by_me"]) == ("Edited in the outage", 1, True)
    listing = (await client.get("/api/posts")).json()
    assert listing["total"] == 2
    assert {p["title"] for p in listing["items"]} == {"Edited in the outage", "During the outage"}

    stored = (await db.scalars(select(Post).order_by(Post.id))).all()
    assert [(p.title, p.likes) for p in stored] == [
        ("Edited in the outage", 1),
        ("During the outage", 0),
    ]


async def test_mixed_traffic_survives_redis_killed_and_restarted_midway(
    client: httpx.AsyncClient,
    server: RedisServer,
    settings: Settings,
    db: AsyncSession,
    redis: Redis,
) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    first = await create_post(client, alice, title="title 0")
    created: list[int] = [first["id"]]
    titles: dict[int, str] = {first["id"]: "title 0"}
    statuses: list[tuple[int, str, int]] = []
    rounds, kill_at, restart_at = 200, 60, 140

    for i in range(rounds):
        if i == kill_at:
            server.stop()
        if i == restart_at:
            server.start()
        target = created[i % len(created)]
        step = i % 6
        if step == 0:
            response = await client.post(
                "/api/posts",
                json={"title": f"title {i}", "content": f"content {i}"},
                headers=alice.headers,
            )
            if response.status_code == 201:
                created.append(response.json()["id"])
                titles[response.json()["id"]] = f"title {i}"
        elif step == 1:
            response = await client.patch(
                f"/api/posts/{target}", json={"title": f"edit {i}"}, headers=alice.headers
            )
            if response.status_code == 200:
                titles[target] = f"edit {i}"
        elif step == 2:
            response = await client.put(f"/api/posts/{target}/like", headers=bob.headers)
        elif step == 3:
            response = await client.get(f"/api/posts/{target}", headers=bob.headers)
            if response.status_code == 200:
                assert response.json()["title"] == titles[target], f"stale read at round {i}"
        elif step == 4:
            response = await client.get("/api/posts", params={"limit": 100})
            if response.status_code == 200:
                assert response.json()["total"] == len(created), f"stale list at round {i}"
        else:
            response = await client.get("/api/users/me", headers=alice.headers)
        statuses.append((i, response.request.method, response.status_code))
        if i >= restart_at:  # spread the rounds after the restart past the app's retry window
            await asyncio.sleep(settings.redis_retry_seconds / 30)

    errors = [s for s in statuses if s[2] >= 500]
    assert errors == []
    assert all(200 <= code < 300 for _, _, code in statuses), statuses

    stored = {p.id: p for p in (await db.scalars(select(Post))).all()}
    assert set(stored) == set(created)
    assert {post_id: p.title for post_id, p in stored.items()} == titles

    # Back on Redis (the last rounds cached again): every post reads as its latest version.
    assert await keys(redis, "ink:*"), "the app did not return to Redis during the loop"
    for post_id, title in titles.items():
        response = await client.get(f"/api/posts/{post_id}")
        assert response.status_code == 200
        assert response.json()["title"] == title
    assert (await client.get("/api/posts", params={"limit": 100})).json()["total"] == len(created)


# --- coming back ------------------------------------------------------------------------------


async def test_app_uses_redis_again_after_it_restarts(
    client: httpx.AsyncClient,
    server: RedisServer,
    settings: Settings,
    redis: Redis,
    count_queries: QueryCounter,
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice)
    server.stop()
    assert (await client.get(f"/api/posts/{post['id']}", headers=alice.headers)).status_code == 200

    await restart_and_wait(server, settings)

    first = await client.get(f"/api/posts/{post['id']}", headers=alice.headers)
    assert first.status_code == 200
    assert await keys(redis, "ink:post:*"), "the post was not cached in Redis again"
    assert await keys(redis, "ink:session:*"), "the session check was not cached in Redis again"
    count_queries.statements.clear()
    second = await client.get(f"/api/posts/{post['id']}", headers=alice.headers)
    assert second.status_code == 200
    assert second.json() == first.json()
    assert count_queries.statements == []


async def test_readiness_is_503_naming_redis_while_it_is_down_and_200_after(
    client: httpx.AsyncClient, server: RedisServer, settings: Settings
) -> None:
    # The suite's Celery broker has a Redis of its own: it stays up.
    broker = {"broker": "ok"} if settings.celery_broker_url else {}
    up = {"database": "ok", "redis": "ok"} | broker
    assert (await client.get("/health/ready")).json()["checks"] == up
    server.stop()

    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    down = up | {"redis": "unavailable"}
    assert body["checks"] == down
    assert "redis" in body["detail"]

    server.start()
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == up


async def test_redis_outage_is_logged_once_per_interval_not_per_request(
    settings: Settings,
    server: RedisServer,
    db: AsyncSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An app of its own, so no earlier test's warning counts against the interval; it retries
    # Redis every 50 ms, so the outage below spans many failed retries.
    fresh = create_app(
        settings.model_copy(update={"redis_retry_seconds": 0.05}), configure_logs=False
    )
    async with (
        LifespanManager(fresh),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fresh), base_url="http://t") as client,
    ):
        alice = await register(client, "alice")
        post = await create_post(client, alice)
        caplog.set_level(logging.WARNING, logger=LINK_LOGGER)
        server.stop()
        for _ in range(30):
            response = await client.get(f"/api/posts/{post['id']}", headers=alice.headers)
            assert response.status_code == 200
            await asyncio.sleep(0.02)

    outage = [
        r
        for r in caplog.records
        if r.name == LINK_LOGGER and r.levelno == logging.WARNING and "unavailable" in r.message
    ]
    assert len(outage) == 1, [r.message for r in outage]


async def test_login_is_still_rate_limited_in_process_memory_while_redis_is_down(
    client: httpx.AsyncClient, server: RedisServer
) -> None:
    await register(client, "alice")
    server.stop()

    for attempt in range(10):
        response = await client.post(
            "/api/token", json={"username": "alice", "password": "correct horse battery"}
        )
        assert response.status_code == 200, (attempt, response.text)
    response = await client.post(
        "/api/token", json={"username": "alice", "password": "correct horse battery"}
    )
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["status"] == 429


# --- revocation, with Redis down, paused or emptied ----------------------------------------


async def test_session_revoked_while_redis_was_killed_stays_revoked_after_restart(
    client: httpx.AsyncClient, server: RedisServer, settings: Settings, db: AsyncSession
) -> None:
    alice = await register(client, "alice")
    assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 200
    server.stop()

    # Ended in the database at once; answered once Redis, back, has the revocation too.
    revoking = asyncio.create_task(
        client.post("/api/token/revoke", json={"refresh_token": alice.refresh_token})
    )
    await asyncio.sleep(0.3)
    assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 401
    server.start()
    revoked = await revoking
    assert revoked.status_code == 204, revoked.text

    await wait_for_retry(settings)
    for _ in range(2):  # the second one would come from the fast path if the first cached it
        response = await client.get("/api/users/me", headers=alice.headers)
        assert response.status_code == 401, response.text
    stored = await db.get(AuthSession, session_id(alice.access_token))
    assert stored is not None
    assert stored.revoked_at is not None


async def test_session_revoked_while_redis_was_unreachable_stays_revoked_when_it_returns(
    client: httpx.AsyncClient, server: RedisServer, settings: Settings, redis: Redis
) -> None:
    # Paused, not killed: Redis comes back with the session's cached "live" entry still in it.
    alice = await register(client, "alice")
    assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 200
    sid = session_id(alice.access_token)
    assert await redis.exists(f"ink:session:{sid}")

    async with paused(server, client):
        revoking = asyncio.create_task(
            client.post("/api/token/revoke", json={"refresh_token": alice.refresh_token})
        )
        await asyncio.sleep(0.3)
        assert not revoking.done(), "a logout was answered before Redis had it"
        assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 401
    revoked = await revoking
    assert revoked.status_code == 204, revoked.text
    assert await redis.exists(f"ink:revoked:{sid}")

    for _ in range(2):
        response = await client.get("/api/users/me", headers=alice.headers)
        assert response.status_code == 401, response.text
    await wait_for_retry(settings)
    for _ in range(2):
        response = await client.get("/api/users/me", headers=alice.headers)
        assert response.status_code == 401, response.text


async def test_edit_made_while_redis_was_unreachable_is_served_when_it_returns(
    client: httpx.AsyncClient, server: RedisServer, settings: Settings, redis: Redis
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice, title="Old title")
    assert (await client.get(f"/api/posts/{post['id']}")).json()["title"] == "Old title"
    assert (await client.get("/api/posts")).json()["items"][0]["title"] == "Old title"
    assert await keys(redis, f"ink:post:{post['id']}:*")

    async with paused(server, client):
        patched = await client.patch(
            f"/api/posts/{post['id']}", json={"title": "New title"}, headers=alice.headers
        )
        assert patched.status_code == 200

    await wait_for_retry(settings)
    assert (await client.get(f"/api/posts/{post['id']}")).json()["title"] == "New title"
    assert (await client.get("/api/posts")).json()["items"][0]["title"] == "New title"


async def test_revoked_token_stays_revoked_after_redis_restart_loses_everything(
    client: httpx.AsyncClient, server: RedisServer, settings: Settings, redis: Redis
) -> None:
    alice = await register(client, "alice")
    assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 200
    revoked = await client.post("/api/token/revoke", json={"refresh_token": alice.refresh_token})
    assert revoked.status_code == 204
    assert await redis.exists(f"ink:revoked:{session_id(alice.access_token)}")

    server.restart()  # the marker is gone with everything else
    await redis.connection_pool.disconnect()
    assert await keys(redis, "ink:*") == []
    await wait_for_retry(settings)

    for _ in range(3):
        assert (await client.get("/api/users/me", headers=alice.headers)).status_code == 401
    refreshed = await client.post("/api/token/refresh", json={"refresh_token": alice.refresh_token})
    assert refreshed.status_code == 401


# --- the fast path ------------------------------------------------------------------------


async def read_twice(
    client: httpx.AsyncClient, account: Account, post: dict[str, Any], counter: QueryCounter
) -> list[str]:
    """The statements the second of two identical authenticated reads sends."""
    assert (
        await client.get(f"/api/posts/{post['id']}", headers=account.headers)
    ).status_code == 200
    counter.statements.clear()
    response = await client.get(f"/api/posts/{post['id']}", headers=account.headers)
    assert response.status_code == 200
    assert response.json()["title"] == post["title"]
    return list(counter.statements)


async def test_authenticated_cached_read_sends_no_sql_while_redis_is_up(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice)
    assert await read_twice(client, alice, post, count_queries) == []


async def test_authenticated_read_asks_the_database_while_redis_is_down(
    client: httpx.AsyncClient, server: RedisServer, count_queries: QueryCounter
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice)
    server.stop()
    statements = await read_twice(client, alice, post, count_queries)
    assert any("auth_session" in s for s in statements), statements


async def test_fast_path_session_is_rejected_on_the_next_request_after_logout(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    alice = await register(client, "alice")
    post = await create_post(client, alice)
    assert await read_twice(client, alice, post, count_queries) == []  # the check is cached

    other = await login(client, "alice")
    revoked = await client.post("/api/token/revoke", json={"refresh_token": alice.refresh_token})
    assert revoked.status_code == 204

    response = await client.get(f"/api/posts/{post['id']}", headers=alice.headers)
    assert response.status_code == 401
    still = await client.get(f"/api/posts/{post['id']}", headers=bearer(other["access_token"]))
    assert still.status_code == 200
