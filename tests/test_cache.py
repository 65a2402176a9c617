"""The response cache: fresh reads come from it, every write is seen at once by every reader,
one viewer's answer never reaches another, ETags survive it, and it can be turned off.

The suite runs against MemoryCache (embedded) or RedisCache (services); the assertions are the
same, except where a test names the mode it is about."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import app.stores.cache as cache_module
from app.config import Settings
from app.models import Post, PostLike, User
from app.stores.cache import MemoryCache, NoCache, RedisCache
from tests.conftest import SERVICES, QueryCounter, running_app, settings_like
from tests.factories import Account, create_post, make_admin, register
from tests.redis_server import RedisServer

# An authenticated request checks its session before the post is read: in the embedded mode
# that is one primary-key join on every request; in the services mode the answer is cached in
# Redis after the first request of the session, so a cached read sends nothing at all.
PRINCIPAL_QUERIES = 0 if SERVICES else 1
POST_TABLES = ('"post"', "post_like", " post ", "post.", '"tag"', "post_tag")


# --- helpers ----------------------------------------------------------------------------------
def headers(who: Account | None) -> dict[str, str]:
    return who.headers if who else {}


async def read(client: httpx.AsyncClient, post_id: int, who: Account | None = None) -> Any:
    response = await client.get(f"/api/posts/{post_id}", headers=headers(who))
    assert response.status_code == 200, response.text
    return response.json()


async def read_status(client: httpx.AsyncClient, post_id: int, who: Account | None = None) -> int:
    return (await client.get(f"/api/posts/{post_id}", headers=headers(who))).status_code


async def page(client: httpx.AsyncClient, who: Account | None = None, **params: Any) -> Any:
    response = await client.get("/api/posts", params=params, headers=headers(who))
    assert response.status_code == 200, response.text
    return response.json()


async def ids_listed(client: httpx.AsyncClient, who: Account | None = None, **params: Any) -> Any:
    return [item["id"] for item in (await page(client, who, **params))["items"]]


async def warm(client: httpx.AsyncClient, post_id: int, *viewers: Account | None) -> None:
    """Read the post and the first page as each viewer, twice, so their answers are cached."""
    for who in viewers:
        for _ in range(2):
            await read(client, post_id, who)
            await page(client, who)


def touches_posts(statements: list[str]) -> list[str]:
    return [s for s in statements if any(t in s.replace("\n", " ") for t in POST_TABLES)]


@asynccontextmanager
async def counting(engine: AsyncEngine) -> AsyncIterator[QueryCounter]:
    counter = QueryCounter()

    def record(*args: object) -> None:
        counter.statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def stored(db: AsyncSession, post_id: int) -> Post | None:
    await db.rollback()
    return await db.scalar(
        select(Post).where(Post.id == post_id).execution_options(populate_existing=True)
    )


# --- the cache is used ------------------------------------------------------------------------
async def test_the_app_uses_the_cache_of_its_mode(app: FastAPI) -> None:
    expected = RedisCache if SERVICES else MemoryCache
    assert isinstance(app.state.stores.cache, expected)


async def test_second_anonymous_read_of_a_post_sends_no_sql(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)

    before = count_queries.count
    first = await read(client, post["id"])
    assert count_queries.count > before  # a miss reads the database

    before = count_queries.count
    second = await read(client, post["id"])
    assert count_queries.statements[before:] == []
    assert second == first


async def test_second_signed_in_read_of_a_post_sends_only_the_session_check(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)  # also puts the session check in Redis (services)

    before = count_queries.count
    first = await read(client, post["id"], alice)
    assert touches_posts(count_queries.statements[before:])

    before = count_queries.count
    second = await read(client, post["id"], alice)
    sent = count_queries.statements[before:]
    assert len(sent) == PRINCIPAL_QUERIES, sent
    assert touches_posts(sent) == []
    assert second == first


async def test_second_identical_list_request_is_served_from_the_cache(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    alice = await register(client)
    for n in range(3):
        await create_post(client, alice, tags=["cached"], title=f"Cached {n}")
    params = {"tag": "cached", "sort": "title", "limit": 2}

    for who, allowed in ((None, 0), (alice, PRINCIPAL_QUERIES)):
        before = count_queries.count
        first = await page(client, who, **params)
        assert touches_posts(count_queries.statements[before:])
        before = count_queries.count
        second = await page(client, who, **params)
        sent = count_queries.statements[before:]
        assert len(sent) == allowed, sent
        assert second == first
        assert [i["title"] for i in second["items"]] == ["Cached 0", "Cached 1"]


async def test_a_different_query_is_not_answered_with_another_querys_page(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    a = await create_post(client, alice, tags=["a"])
    b = await create_post(client, alice, tags=["b"])
    assert await ids_listed(client, tag="a") == [a["id"]]
    assert await ids_listed(client, tag="b") == [b["id"]]
    assert await ids_listed(client, tag="a", limit=1, offset=1) == []
    assert await ids_listed(client, sort="created_at") == [a["id"], b["id"]]
    assert await ids_listed(client, sort="-created_at") == [b["id"], a["id"]]


# --- read your writes -------------------------------------------------------------------------
async def test_patch_is_seen_by_the_next_read_and_list(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice, title="Before")
    await warm(client, post["id"], None, alice, bob)

    response = await client.patch(
        f"/api/posts/{post['id']}", json={"title": "After"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text

    for who in (None, alice, bob):
        assert (await read(client, post["id"], who))["title"] == "After"
        assert [i["title"] for i in (await page(client, who))["items"]] == ["After"]
    row = await stored(db, post["id"])
    assert row is not None
    assert row.title == "After"


async def test_put_is_seen_by_the_next_read_and_list(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="Old", tags=["old"])
    await warm(client, post["id"], None, alice)

    replacement = {"title": "New", "content": "New content.", "published": True, "tags": ["new"]}
    response = await client.put(f"/api/posts/{post['id']}", json=replacement, headers=alice.headers)
    assert response.status_code == 200, response.text

    for who in (None, alice):
        body = await read(client, post["id"], who)
        assert (body["title"], body["content"], body["tags"]) == ("New", "New content.", ["new"])
        assert await ids_listed(client, who, tag="new") == [post["id"]]
        assert await ids_listed(client, who, tag="old") == []
        assert (await page(client, who))["items"][0]["title"] == "New"
    row = await stored(db, post["id"])
    assert row is not None
    assert row.content == "New content."


async def test_deleted_post_is_404_and_leaves_the_lists_at_once(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    keep = await create_post(client, alice)
    gone = await create_post(client, alice)
    await warm(client, gone["id"], None, alice)

    response = await client.delete(f"/api/posts/{gone['id']}", headers=alice.headers)
    assert response.status_code == 204

    for who in (None, alice):
        assert await read_status(client, gone["id"], who) == 404
        listed = await page(client, who)
        assert [i["id"] for i in listed["items"]] == [keep["id"]]
        assert listed["total"] == 1
    assert await stored(db, gone["id"]) is None


async def test_like_and_unlike_are_seen_by_the_next_reads(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    await warm(client, post["id"], None, alice, bob)

    assert (
        await client.put(f"/api/posts/{post['id']}/like", headers=bob.headers)
    ).status_code == 204
    for who, mine in ((bob, True), (alice, False), (None, False)):
        body = await read(client, post["id"], who)
        assert (body["likes"], body["liked_by_me"]) == (1, mine)
        item = (await page(client, who))["items"][0]
        assert (item["likes"], item["liked_by_me"]) == (1, mine)
    assert await db.scalar(select(func.count()).select_from(PostLike)) == 1

    unlike = await client.delete(f"/api/posts/{post['id']}/like", headers=bob.headers)
    assert unlike.status_code == 204
    for who in (bob, alice, None):
        body = await read(client, post["id"], who)
        assert (body["likes"], body["liked_by_me"]) == (0, False)
        item = (await page(client, who))["items"][0]
        assert (item["likes"], item["liked_by_me"]) == (0, False)
    await db.rollback()
    assert await db.scalar(select(func.count()).select_from(PostLike)) == 0


async def test_created_post_appears_in_cached_lists_at_once(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    first = await create_post(client, alice, tags=["news"])
    for who in (None, alice, bob):
        for _ in range(2):
            assert await ids_listed(client, who, tag="news") == [first["id"]]
            assert (await page(client, who))["total"] == 1

    second = await create_post(client, bob, tags=["news"])

    for who in (None, alice, bob):
        assert await ids_listed(client, who, tag="news") == [second["id"], first["id"]]
        assert (await page(client, who))["total"] == 2
        assert await ids_listed(client, who, author=bob.username) == [second["id"]]


async def test_username_change_shows_on_cached_posts_and_lists(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client, username="alice_old"), await register(client)
    post = await create_post(client, alice)
    await warm(client, post["id"], None, alice, bob)
    assert await ids_listed(client, author="alice_old") == [post["id"]]

    response = await client.patch(
        "/api/users/me", json={"username": "alice_new"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text

    for who in (None, alice, bob):
        assert (await read(client, post["id"], who))["author"]["username"] == "alice_new"
        items = (await page(client, who))["items"]
        assert [i["author"]["username"] for i in items] == ["alice_new"]
        assert await ids_listed(client, who, author="alice_new") == [post["id"]]
        assert await ids_listed(client, who, author="alice_old") == []
    await db.rollback()
    assert await db.scalar(select(User.username).where(User.id == alice.id)) == "alice_new"


async def test_deleted_users_posts_vanish_from_cached_reads_and_lists(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    hers = await create_post(client, alice)
    his = await create_post(client, bob)
    await warm(client, hers["id"], None, bob)
    assert await ids_listed(client, bob) == [his["id"], hers["id"]]

    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204

    for who in (None, bob):
        assert await read_status(client, hers["id"], who) == 404
        listed = await page(client, who)
        assert [i["id"] for i in listed["items"]] == [his["id"]]
        assert listed["total"] == 1
    assert await stored(db, hers["id"]) is None


async def test_deleted_users_likes_vanish_from_cached_counts(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    assert (
        await client.put(f"/api/posts/{post['id']}/like", headers=bob.headers)
    ).status_code == 204
    await warm(client, post["id"], None, alice)
    assert (await read(client, post["id"]))["likes"] == 1

    assert (await client.delete("/api/users/me", headers=bob.headers)).status_code == 204

    row = await stored(db, post["id"])
    assert row is not None
    assert await db.scalar(select(func.count()).select_from(PostLike)) == 0  # the like is gone
    assert row.likes == 0  # and the counter kept in step with post_like follows
    for who in (None, alice):
        assert (await read(client, post["id"], who))["likes"] == 0
        assert (await page(client, who))["items"][0]["likes"] == 0


async def test_unpublishing_hides_the_cached_post_from_everyone_but_its_author(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    await warm(client, post["id"], None, alice, bob)

    response = await client.patch(
        f"/api/posts/{post['id']}", json={"published": False}, headers=alice.headers
    )
    assert response.status_code == 200, response.text

    for who in (None, bob):
        assert await read_status(client, post["id"], who) == 404
        listed = await page(client, who)
        assert (listed["items"], listed["total"]) == ([], 0)
    assert (await read(client, post["id"], alice))["published"] is False
    assert await ids_listed(client, alice) == [post["id"]]
    row = await stored(db, post["id"])
    assert row is not None
    assert row.published is False


async def test_publishing_a_draft_shows_it_despite_a_cached_404(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    draft = await create_post(client, alice, published=False)
    for who in (None, bob):
        for _ in range(2):
            assert await read_status(client, draft["id"], who) == 404
            assert await ids_listed(client, who) == []

    response = await client.patch(
        f"/api/posts/{draft['id']}", json={"published": True}, headers=alice.headers
    )
    assert response.status_code == 200, response.text

    for who in (None, bob):
        assert (await read(client, draft["id"], who))["published"] is True
        assert await ids_listed(client, who) == [draft["id"]]


# --- one viewer's answer never reaches another ------------------------------------------------
async def test_liked_by_me_is_not_shared_between_viewers(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, bob)
    assert (
        await client.put(f"/api/posts/{post['id']}/like", headers=alice.headers)
    ).status_code == 204

    for _ in range(2):  # the second round is served from the cache
        for who, mine in ((alice, True), (bob, False), (None, False)):
            body = await read(client, post["id"], who)
            assert (body["likes"], body["liked_by_me"]) == (1, mine), who
            item = (await page(client, who))["items"][0]
            assert (item["likes"], item["liked_by_me"]) == (1, mine), who


async def test_authors_drafts_in_their_cached_list_never_reach_others(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = await register(client), await register(client)
    public = await create_post(client, alice)
    draft = await create_post(client, alice, published=False)

    for _ in range(2):
        assert await ids_listed(client, alice) == [draft["id"], public["id"]]
        assert (await read(client, draft["id"], alice))["published"] is False
        for who in (bob, None):
            listed = await page(client, who)
            assert [i["id"] for i in listed["items"]] == [public["id"]]
            assert listed["total"] == 1
            assert await read_status(client, draft["id"], who) == 404


async def test_admins_cached_list_with_drafts_does_not_leak_to_a_user(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await make_admin(db, await register(client))
    alice, bob = await register(client), await register(client)
    public = await create_post(client, alice)
    draft = await create_post(client, alice, published=False)

    for _ in range(2):
        assert await ids_listed(client, admin) == [draft["id"], public["id"]]
        assert (await read(client, draft["id"], admin))["published"] is False
    for _ in range(2):
        assert await ids_listed(client, bob) == [public["id"]]
        assert await read_status(client, draft["id"], bob) == 404
        assert await ids_listed(client) == [public["id"]]
        assert await read_status(client, draft["id"]) == 404


# --- ETag -------------------------------------------------------------------------------------
async def test_etag_gives_304_from_the_cache_and_changes_after_a_write(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    url = f"/api/posts/{post['id']}"

    first = await client.get(url)
    etag = first.headers["ETag"]
    before = count_queries.count
    again = await client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == etag
    assert count_queries.statements[before:] == []  # answered from the cache

    patched = await client.patch(url, json={"content": "Changed."}, headers=alice.headers)
    assert patched.status_code == 200

    changed = await client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["content"] == "Changed."
    new_etag = changed.headers["ETag"]
    assert new_etag != etag
    assert (await client.get(url, headers={"If-None-Match": new_etag})).status_code == 304


async def test_etag_differs_between_viewers_who_see_different_answers(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    url = f"/api/posts/{post['id']}"
    assert (await client.put(f"{url}/like", headers=alice.headers)).status_code == 204

    mine = await client.get(url, headers=alice.headers)
    anonymous = await client.get(url, headers={"If-None-Match": mine.headers["ETag"]})
    assert anonymous.status_code == 200
    assert anonymous.json()["liked_by_me"] is False
    assert anonymous.headers["ETag"] != mine.headers["ETag"]


# --- two processes ----------------------------------------------------------------------------
@pytest.mark.skipif(not SERVICES, reason="one process in the embedded mode; Redis is shared")
async def test_write_through_one_process_is_seen_by_another_processs_cache(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="Before")
    async with running_app(settings) as (_, other):
        for _ in range(2):
            assert (await read(other, post["id"]))["title"] == "Before"
            assert (await page(other))["items"][0]["title"] == "Before"

        response = await client.patch(
            f"/api/posts/{post['id']}", json={"title": "After"}, headers=alice.headers
        )
        assert response.status_code == 200

        assert (await read(other, post["id"]))["title"] == "After"
        assert (await page(other))["items"][0]["title"] == "After"
        assert (
            await other.put(f"/api/posts/{post['id']}/like", headers=alice.headers)
        ).status_code == 204
        assert (await read(client, post["id"], alice))["liked_by_me"] is True


# --- the cache turned off ---------------------------------------------------------------------
async def test_cache_disabled_by_setting_reads_the_database_every_time(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="Before")
    async with running_app(settings_like(settings, cache_enabled=False)) as (uncached, other):
        assert isinstance(uncached.state.stores.cache, NoCache)
        async with counting(uncached.state.engine) as counter:
            for _ in range(2):
                before = counter.count
                assert (await read(other, post["id"]))["title"] == "Before"
                assert touches_posts(counter.statements[before:])
                before = counter.count
                assert (await page(other))["items"][0]["title"] == "Before"
                assert touches_posts(counter.statements[before:])

        # Written through either app, read through the uncached one: always the current state.
        await client.patch(
            f"/api/posts/{post['id']}", json={"title": "Main"}, headers=alice.headers
        )
        assert (await read(other, post["id"]))["title"] == "Main"
        response = await other.patch(
            f"/api/posts/{post['id']}", json={"title": "Other"}, headers=alice.headers
        )
        assert response.status_code == 200
        assert (await read(other, post["id"]))["title"] == "Other"
        assert (await page(other))["items"][0]["title"] == "Other"
        assert (
            await other.put(f"/api/posts/{post['id']}/like", headers=alice.headers)
        ).status_code == 204
        body = await read(other, post["id"], alice)
        assert (body["likes"], body["liked_by_me"]) == (1, True)
        assert (await read(other, post["id"]))["liked_by_me"] is False
        assert (
            await other.delete(f"/api/posts/{post['id']}", headers=alice.headers)
        ).status_code == 204
        assert await read_status(other, post["id"]) == 404
        assert await ids_listed(other) == []


def test_cache_enabled_and_ttl_are_settings_with_sane_bounds(settings: Settings) -> None:
    assert settings.cache_enabled is True
    assert settings.cache_ttl_seconds >= 1
    with pytest.raises(ValueError, match="cache_ttl_seconds"):
        settings_like(settings, cache_ttl_seconds=0)


# --- TTL --------------------------------------------------------------------------------------
class FakeClock:
    """Stands in for the `time` module inside app.stores.cache only (not the event loop's)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.skipif(SERVICES, reason="MemoryCache keeps the TTL itself in the embedded mode")
async def test_memory_cache_entry_expires_after_the_ttl(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    clock = FakeClock(1_000.0)
    monkeypatch.setattr(cache_module, "time", clock)

    async with running_app(settings_like(settings, cache_ttl_seconds=1)) as (short, other):
        assert isinstance(short.state.stores.cache, MemoryCache)
        engine: AsyncEngine = short.state.engine
        async with counting(engine) as counter:

            async def statements_for_read() -> list[str]:
                before = counter.count
                await read(other, post["id"])
                await page(other)
                return touches_posts(counter.statements[before:])

            assert await statements_for_read()  # the first read fills the cache
            clock.advance(0.5)
            assert await statements_for_read() == []  # still fresh
            clock.advance(1.0)
            assert await statements_for_read()  # 1.5 s after writing: expired, read again
            assert await statements_for_read() == []  # and cached anew


@pytest.mark.skipif(SERVICES, reason="MemoryCache keeps the TTL itself in the embedded mode")
async def test_main_memory_cache_honours_the_configured_ttl(
    client: httpx.AsyncClient,
    settings: Settings,
    count_queries: QueryCounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    clock = FakeClock(5_000.0)
    monkeypatch.setattr(cache_module, "time", clock)

    await read(client, post["id"])
    clock.advance(settings.cache_ttl_seconds - 1)
    before = count_queries.count
    await read(client, post["id"])
    assert count_queries.statements[before:] == []
    clock.advance(2)
    before = count_queries.count
    await read(client, post["id"])
    assert touches_posts(count_queries.statements[before:])


async def redis_ttls(server: RedisServer, pattern: str) -> dict[bytes, int]:
    redis = Redis.from_url(server.url)
    try:
        return {key: await redis.ttl(key) async for key in redis.scan_iter(match=pattern)}
    finally:
        await redis.aclose()


@pytest.mark.skipif(not SERVICES, reason="needs the run's redis-server")
async def test_redis_cache_entries_carry_the_configured_ttl(
    client: httpx.AsyncClient, settings: Settings, redis_server: RedisServer | None
) -> None:
    assert redis_server is not None
    alice = await register(client)
    post = await create_post(client, alice)
    await read(client, post["id"])
    await read(client, post["id"], alice)
    await page(client)

    post_keys = await redis_ttls(redis_server, "ink:post:*")
    list_keys = await redis_ttls(redis_server, "ink:list:*")
    assert len(post_keys) == 2, post_keys  # one per viewer: anonymous and alice
    assert len(list_keys) == 1, list_keys
    for ttl in [*post_keys.values(), *list_keys.values()]:
        assert 0 < ttl <= settings.cache_ttl_seconds


@pytest.mark.skipif(not SERVICES, reason="needs the run's redis-server")
async def test_redis_cache_ttl_follows_the_setting(
    settings: Settings, client: httpx.AsyncClient, redis_server: RedisServer | None
) -> None:
    assert redis_server is not None
    alice = await register(client)
    post = await create_post(client, alice)
    async with running_app(settings_like(settings, cache_ttl_seconds=7)) as (_, other):
        await read(other, post["id"])
    ttls = await redis_ttls(redis_server, "ink:post:*")
    assert len(ttls) == 1, ttls
    assert all(0 < ttl <= 7 for ttl in ttls.values()), ttls
