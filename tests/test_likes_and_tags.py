"""Likes (idempotent, per user) and the popular-tags endpoint."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Post, PostLike
from tests.factories import Account, create_post, register

MISSING_ID = 987_654


async def like(client: httpx.AsyncClient, post_id: int, who: Account) -> httpx.Response:
    return await client.put(f"/api/posts/{post_id}/like", headers=who.headers)


async def unlike(client: httpx.AsyncClient, post_id: int, who: Account) -> httpx.Response:
    return await client.delete(f"/api/posts/{post_id}/like", headers=who.headers)


async def stored_likes(db: AsyncSession, post_id: int) -> tuple[int | None, set[int]]:
    """(post.likes counter, ids of the users with a post_like row), read afresh."""
    await db.rollback()
    counter = await db.scalar(select(Post.likes).where(Post.id == post_id))
    users = set(await db.scalars(select(PostLike.user_id).where(PostLike.post_id == post_id)))
    return counter, users


async def read(client: httpx.AsyncClient, post_id: int, who: Account | None) -> dict[str, Any]:
    response = await client.get(f"/api/posts/{post_id}", headers=who.headers if who else {})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def tags(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/tags", params=params)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


# --- likes ------------------------------------------------------------------------------------
async def test_like_twice_counts_once_and_only_the_liker_sees_liked_by_me(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    for _ in range(2):
        response = await like(client, post["id"], bob)
        assert response.status_code == 204
        assert response.content == b""
    assert await stored_likes(db, post["id"]) == (1, {bob.id})

    as_bob = await read(client, post["id"], bob)
    assert (as_bob["likes"], as_bob["liked_by_me"]) == (1, True)
    as_alice = await read(client, post["id"], alice)
    assert (as_alice["likes"], as_alice["liked_by_me"]) == (1, False)
    anonymous = await read(client, post["id"], None)
    assert (anonymous["likes"], anonymous["liked_by_me"]) == (1, False)


async def test_liked_by_me_is_per_viewer_in_lists(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    liked = await create_post(client, alice)
    not_liked = await create_post(client, alice)
    assert (await like(client, liked["id"], bob)).status_code == 204

    async def flags(who: Account | None) -> dict[int, bool]:
        response = await client.get("/api/posts", headers=who.headers if who else {})
        assert response.status_code == 200
        return {i["id"]: i["liked_by_me"] for i in response.json()["items"]}

    assert await flags(bob) == {liked["id"]: True, not_liked["id"]: False}
    assert await flags(alice) == {liked["id"]: False, not_liked["id"]: False}
    assert await flags(None) == {liked["id"]: False, not_liked["id"]: False}


async def test_unlike_twice_leaves_zero_likes(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    assert (await like(client, post["id"], bob)).status_code == 204
    for _ in range(2):
        response = await unlike(client, post["id"], bob)
        assert response.status_code == 204
    assert await stored_likes(db, post["id"]) == (0, set())
    body = await read(client, post["id"], bob)
    assert (body["likes"], body["liked_by_me"]) == (0, False)


async def test_unlike_without_a_like_is_204_and_never_goes_negative(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    assert (await unlike(client, post["id"], bob)).status_code == 204
    assert await stored_likes(db, post["id"]) == (0, set())


async def test_one_users_like_and_unlike_do_not_affect_anothers(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob, carol = [await register(client) for _ in range(3)]
    post = await create_post(client, alice)
    assert (await like(client, post["id"], bob)).status_code == 204
    assert (await unlike(client, post["id"], carol)).status_code == 204
    assert await stored_likes(db, post["id"]) == (1, {bob.id})

    assert (await like(client, post["id"], carol)).status_code == 204
    assert await stored_likes(db, post["id"]) == (2, {bob.id, carol.id})
    assert (await unlike(client, post["id"], bob)).status_code == 204
    assert await stored_likes(db, post["id"]) == (1, {carol.id})
    assert (await read(client, post["id"], carol))["liked_by_me"] is True
    assert (await read(client, post["id"], bob))["liked_by_me"] is False


async def test_likes_of_one_post_do_not_touch_another(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    liked = await create_post(client, alice)
    other = await create_post(client, alice)
    assert (await like(client, liked["id"], bob)).status_code == 204
    assert await stored_likes(db, other["id"]) == (0, set())


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_like_or_unlike_missing_post_is_404(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    bob = await register(client)
    response = await client.request(method, f"/api/posts/{MISSING_ID}/like", headers=bob.headers)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "post_not_found"
    await db.rollback()
    assert await db.scalar(select(func.count()).select_from(PostLike)) == 0


async def test_likes_sort_follows_real_likes(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    fans = [await register(client) for _ in range(3)]
    one, three, none, two = [await create_post(client, alice) for _ in range(4)]
    for post, n in ((one, 1), (three, 3), (two, 2)):
        for fan in fans[:n]:
            assert (await like(client, post["id"], fan)).status_code == 204
    response = await client.get("/api/posts", params={"sort": "-likes"})
    items = response.json()["items"]
    assert [i["id"] for i in items] == [three["id"], two["id"], one["id"], none["id"]]
    assert [i["likes"] for i in items] == [3, 2, 1, 0]
    response = await client.get("/api/posts", params={"sort": "likes"})
    assert [i["likes"] for i in response.json()["items"]] == [0, 1, 2, 3]


async def test_likes_counter_matches_like_rows_after_many_changes(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    fans = [await register(client) for _ in range(4)]
    post = await create_post(client, alice)
    for fan in fans:
        await like(client, post["id"], fan)
        await like(client, post["id"], fan)
    for fan in fans[:3]:
        await unlike(client, post["id"], fan)
    await unlike(client, post["id"], fans[0])
    counter, users = await stored_likes(db, post["id"])
    assert counter == len(users) == 1
    assert users == {fans[3].id}


# --- tags -------------------------------------------------------------------------------------
async def test_tags_list_most_used_first_ties_by_name(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    await create_post(client, alice, tags=["python", "web", "zeta"])
    await create_post(client, alice, tags=["python", "web", "alpha"])
    await create_post(client, alice, tags=["python", "beta"])
    assert await tags(client) == [
        {"name": "python", "count": 3},
        {"name": "web", "count": 2},
        {"name": "alpha", "count": 1},
        {"name": "beta", "count": 1},
        {"name": "zeta", "count": 1},
    ]


async def test_tags_count_only_published_posts(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    await create_post(client, alice, tags=["shared", "public"])
    await create_post(client, alice, tags=["shared", "secret"], published=False)
    assert await tags(client) == [
        {"name": "public", "count": 1},
        {"name": "shared", "count": 1},
    ]
    response = await client.get("/api/tags", headers=alice.headers)
    assert {t["name"] for t in response.json()} == {"public", "shared"}


async def test_tags_follow_edits_and_deletes(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    first = await create_post(client, alice, tags=["a", "b"])
    second = await create_post(client, alice, tags=["a"])
    patched = await client.patch(
        f"/api/posts/{first['id']}", json={"tags": ["c"]}, headers=alice.headers
    )
    assert patched.status_code == 200
    assert await tags(client) == [{"name": "a", "count": 1}, {"name": "c", "count": 1}]
    deleted = await client.delete(f"/api/posts/{second['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    assert await tags(client) == [{"name": "c", "count": 1}]


async def test_tags_q_filters_by_name_prefix(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    await create_post(client, alice, tags=["python", "pytest", "numpy", "py"])
    await create_post(client, alice, tags=["python"])
    assert await tags(client, q="py") == [
        {"name": "python", "count": 2},
        {"name": "py", "count": 1},
        {"name": "pytest", "count": 1},
    ]
    assert await tags(client, q="pyt") == [
        {"name": "python", "count": 2},
        {"name": "pytest", "count": 1},
    ]
    assert await tags(client, q="thon") == []


@pytest.mark.parametrize("q", ["a_", "a%", "%"])
async def test_tags_q_treats_like_wildcards_literally(client: httpx.AsyncClient, q: str) -> None:
    alice = await register(client)
    await create_post(client, alice, tags=["ab", "a-b", "abc"])
    assert await tags(client, q=q) == []


async def test_tags_limit_caps_the_list(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    names = [f"tag{i:02d}" for i in range(25)]
    for start in range(0, 25, 10):
        await create_post(client, alice, tags=names[start : start + 10])
    assert len(await tags(client)) == 20
    assert await tags(client, limit=1) == [{"name": "tag00", "count": 1}]
    assert len(await tags(client, limit=100)) == 25


@pytest.mark.parametrize("limit", ["0", "101", "-1", "many"])
async def test_tags_with_invalid_limit_is_422(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/api/tags", params={"limit": limit})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "validation_error"


async def test_tags_list_is_empty_without_posts(client: httpx.AsyncClient) -> None:
    assert await tags(client) == []
