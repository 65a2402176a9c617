"""The feed: published posts of the authors followed, newest first, by cursor."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from app.schemas.common import CursorQuery
from app.services import comments, feed, profiles
from tests.conftest import QueryCounter
from tests.factories import Account, create_post, make_admin, register
from tests.problems import assert_problem


async def follow(client: httpx.AsyncClient, who: Account, whom: Account) -> None:
    response = await client.put(f"/api/profiles/{whom.username}/follow", headers=who.headers)
    assert response.status_code == 200, response.text


async def feed_page(
    client: httpx.AsyncClient, who: Account, limit: int = 20, cursor: str = ""
) -> dict[str, Any]:
    response = await client.get(
        "/api/feed", params={"limit": limit, "cursor": cursor}, headers=who.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"items", "next_cursor"}
    return body


async def feed_ids(client: httpx.AsyncClient, who: Account, limit: int = 100) -> list[int]:
    ids: list[int] = []
    cursor = ""
    while True:
        page = await feed_page(client, who, limit, cursor)
        ids += [p["id"] for p in page["items"]]
        if page["next_cursor"] is None:
            return ids
        cursor = page["next_cursor"]


async def test_feed_needs_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/feed"), 401)
    bad = await client.get("/api/feed", headers={"Authorization": "Bearer nope"})
    assert_problem(bad, 401)


async def test_feed_shows_published_posts_of_followed_authors_newest_first(
    client: httpx.AsyncClient,
) -> None:
    reader, alice, bob, stranger = [await register(client) for _ in range(4)]
    await follow(client, reader, alice)
    await follow(client, reader, bob)
    a1 = await create_post(client, alice)
    b1 = await create_post(client, bob)
    await create_post(client, alice, published=False)  # a draft never shows
    await create_post(client, stranger)  # not followed
    await create_post(client, reader)  # one's own posts are not one's feed
    a2 = await create_post(client, alice)
    page = await feed_page(client, reader)
    assert [p["id"] for p in page["items"]] == [a2["id"], b1["id"], a1["id"]]
    assert page["next_cursor"] is None
    item = page["items"][0]
    assert item["author"]["username"] == alice.username
    assert {"slug", "summary", "comments", "likes", "liked_by_me"} <= item.keys()
    assert await feed_ids(client, stranger) == []


async def test_feed_pages_have_no_duplicates_or_gaps_as_posts_arrive(
    client: httpx.AsyncClient,
) -> None:
    reader, alice = await register(client), await register(client)
    await follow(client, reader, alice)
    older = [await create_post(client, alice) for _ in range(5)]
    first = await feed_page(client, reader, limit=2)
    assert [p["id"] for p in first["items"]] == [older[4]["id"], older[3]["id"]]
    newer = await create_post(client, alice)  # arrives between pages
    rest: list[int] = []
    cursor = first["next_cursor"]
    while cursor:
        page = await feed_page(client, reader, 2, cursor)
        rest += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert rest == [older[2]["id"], older[1]["id"], older[0]["id"]]
    assert (await feed_page(client, reader, 1))["items"][0]["id"] == newer["id"]


async def test_feed_follows_the_graph_and_posts_on_the_next_request(
    client: httpx.AsyncClient,
) -> None:
    reader, alice = await register(client), await register(client)
    post = await create_post(client, alice)
    assert await feed_ids(client, reader) == []  # cached empty
    await follow(client, reader, alice)
    assert await feed_ids(client, reader) == [post["id"]]
    newer = await create_post(client, alice)
    assert await feed_ids(client, reader) == [newer["id"], post["id"]]
    liked = await client.put(f"/api/posts/{post['id']}/like", headers=reader.headers)
    assert liked.status_code == 204
    items = (await feed_page(client, reader))["items"]
    assert (items[1]["likes"], items[1]["liked_by_me"]) == (1, True)
    commented = await client.post(
        f"/api/posts/{post['id']}/comments", json={"body": "hi"}, headers=reader.headers
    )
    assert commented.status_code == 201
    assert (await feed_page(client, reader))["items"][1]["comments"] == 1
    hidden = await client.patch(
        f"/api/posts/{newer['id']}", json={"published": False}, headers=alice.headers
    )
    assert hidden.status_code == 200
    assert await feed_ids(client, reader) == [post["id"]]
    await client.delete(f"/api/profiles/{alice.username}/follow", headers=reader.headers)
    assert await feed_ids(client, reader) == []


async def test_a_deactivated_author_leaves_the_feed(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await make_admin(db, await register(client))
    reader, alice = await register(client), await register(client)
    await follow(client, reader, alice)
    await create_post(client, alice)
    assert len(await feed_ids(client, reader)) == 1
    response = await client.patch(
        f"/api/users/{alice.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200
    assert await feed_ids(client, reader) == []


async def test_bad_cursor_and_limit_are_422(client: httpx.AsyncClient) -> None:
    reader, other, alice = [await register(client) for _ in range(3)]
    await follow(client, reader, alice)
    await follow(client, other, alice)
    for _ in range(3):
        await create_post(client, alice)
    cursor = (await feed_page(client, reader, 1))["next_cursor"]
    for bad in (cursor[:-1] + ("A" if cursor[-1] != "A" else "B"), "x", "x.y"):
        response = await client.get("/api/feed", params={"cursor": bad}, headers=reader.headers)
        assert_problem(response, 422, "invalid_cursor")
    # Another reader's cursor is not theirs to use.
    response = await client.get("/api/feed", params={"cursor": cursor}, headers=other.headers)
    assert_problem(response, 422, "invalid_cursor")
    for limit in (0, 101, "x"):
        response = await client.get("/api/feed", params={"limit": limit}, headers=reader.headers)
        assert_problem(response, 422, "validation_error")


MAX_FEED_QUERIES = 8


async def test_feed_pages_take_a_bounded_number_of_statements(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    reader = await register(client)
    authors = [await register(client) for _ in range(4)]
    for author in authors:
        await follow(client, reader, author)
    for n in range(24):
        await create_post(client, authors[n % 4], tags=["a", f"t{n % 3}"])
    await feed_page(client, reader, 1, "")  # the token and the authors followed, cached
    counts = {}
    for limit in (2, 10, 24):
        before = count_queries.count
        page = await feed_page(client, reader, limit)
        assert len(page["items"]) == limit
        counts[limit] = count_queries.count - before
    assert max(counts.values()) <= MAX_FEED_QUERIES, counts
    assert len(set(counts.values())) == 1, counts


async def test_a_post_by_someone_not_followed_keeps_the_feed_cached(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    """Feeds depend on the authors followed: a post elsewhere outdates no one else's feed."""
    reader, alice, stranger = [await register(client) for _ in range(3)]
    await follow(client, reader, alice)
    await create_post(client, alice)
    await feed_page(client, reader)
    before = count_queries.count
    await feed_page(client, reader)
    cached = count_queries.count - before

    await create_post(client, stranger)
    before = count_queries.count
    await feed_page(client, reader)
    assert count_queries.count - before == cached

    await create_post(client, alice)
    before = count_queries.count
    assert len((await feed_page(client, reader))["items"]) == 2
    assert count_queries.count - before > cached


async def test_services_answer_models_too(client: httpx.AsyncClient, app: FastAPI) -> None:
    """Other API shapes (the RealWorld one) translate the same answers as models."""
    reader, alice = await register(client), await register(client)
    await follow(client, reader, alice)
    post = await create_post(client, alice)
    made = await client.post(
        f"/api/posts/{post['id']}/comments", json={"body": "hi"}, headers=reader.headers
    )
    assert made.status_code == 201
    backends = app.state.backends
    principal = SimpleNamespace(id=reader.id, is_admin=False)
    query = CursorQuery(limit=10)
    page = await feed.read(backends, viewer=principal, query=query)
    assert [p.id for p in page.items] == [post["id"]]
    found = await profiles.read(backends, username=alice.username, viewer=principal)
    assert (found.following, found.followers, found.posts) == (True, 1, 1)
    listed = await comments.list_page(backends, post_id=post["id"], query=query, viewer=None)
    assert [c.body for c in listed.items] == ["hi"]
    assert listed.next_cursor is None


async def test_a_full_page_shows_the_new_post_that_shifted_it(client: httpx.AsyncClient) -> None:
    """The page's items change while every generation it depends on stays 0."""
    anna = await register(client, "anna")
    jake = await register(client, "jake")
    await client.put("/api/profiles/anna/follow", headers=jake.headers)
    first = await create_post(client, anna, title="One")
    page = (await client.get("/api/feed", params={"limit": 1}, headers=jake.headers)).json()
    assert [p["id"] for p in page["items"]] == [first["id"]]
    second = await create_post(client, anna, title="Two")
    page = (await client.get("/api/feed", params={"limit": 1}, headers=jake.headers)).json()
    assert [p["id"] for p in page["items"]] == [second["id"]]
