"""Profiles and follows: counts, idempotent follow and unfollow, cursor lists, deactivation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import Follow
from tests.conftest import SERVICES, QueryCounter, running_app, settings_like
from tests.factories import Account, create_post, make_admin, register
from tests.problems import assert_problem

PROFILE_FIELDS = {
    "id",
    "username",
    "full_name",
    "bio",
    "image",
    "followers",
    "following_count",
    "posts",
    "following",
}


async def profile(
    client: httpx.AsyncClient, username: str, who: Account | None = None
) -> dict[str, Any]:
    response = await client.get(f"/api/profiles/{username}", headers=who.headers if who else {})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def follow(client: httpx.AsyncClient, who: Account, username: str) -> httpx.Response:
    return await client.put(f"/api/profiles/{username}/follow", headers=who.headers)


async def unfollow(client: httpx.AsyncClient, who: Account, username: str) -> httpx.Response:
    return await client.delete(f"/api/profiles/{username}/follow", headers=who.headers)


async def pages(
    client: httpx.AsyncClient, url: str, limit: int, who: Account | None = None
) -> list[list[dict[str, Any]]]:
    """Every page of a cursor list, following `next_cursor` to the end."""
    found: list[list[dict[str, Any]]] = []
    cursor = ""
    while True:
        response = await client.get(
            url, params={"limit": limit, "cursor": cursor}, headers=who.headers if who else {}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        found.append(body["items"])
        if body["next_cursor"] is None:
            return found
        cursor = body["next_cursor"]


async def test_profile_shows_counts_of_published_posts_and_follows(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client, full_name="Alice L")
    bob, carol = await register(client), await register(client)
    await create_post(client, alice)
    await create_post(client, alice, published=False)  # drafts are not counted
    assert (await follow(client, bob, alice.username)).status_code == 200
    assert (await follow(client, carol, alice.username)).status_code == 200
    assert (await follow(client, alice, bob.username)).status_code == 200

    body = await profile(client, alice.username)
    assert set(body) == PROFILE_FIELDS
    assert body["id"] == alice.id
    assert body["full_name"] == "Alice L"
    assert (body["followers"], body["following_count"], body["posts"]) == (2, 1, 1)
    assert body["following"] is False  # anonymous
    assert (await profile(client, alice.username, bob))["following"] is True
    assert (await profile(client, alice.username, alice))["following"] is False
    # Usernames are case-insensitive, and the e-mail is never shown.
    assert (await profile(client, alice.username.upper()))["id"] == alice.id
    assert "email" not in body


async def test_unknown_profile_is_404(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    assert_problem(await client.get("/api/profiles/nobody"), 404, "profile_not_found")
    assert_problem(await follow(client, alice, "nobody"), 404, "profile_not_found")
    assert_problem(await unfollow(client, alice, "nobody"), 404, "profile_not_found")
    for path in ("followers", "following"):
        response = await client.get(f"/api/profiles/nobody/{path}")
        assert_problem(response, 404, "profile_not_found")
    assert_problem(await client.get("/api/profiles/" + "a" * 65), 422, "validation_error")


async def test_follow_and_unfollow_are_idempotent(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    for _ in range(2):
        response = await follow(client, bob, alice.username)
        assert response.status_code == 200, response.text
        assert set(response.json()) == PROFILE_FIELDS
        assert response.json()["following"] is True
        assert response.json()["followers"] == 1
    assert await db.scalar(select(func.count()).select_from(Follow)) == 1
    for _ in range(2):
        response = await unfollow(client, bob, alice.username)
        assert response.status_code == 200
        assert (response.json()["following"], response.json()["followers"]) == (False, 0)
    assert (await profile(client, alice.username))["followers"] == 0


async def test_following_yourself_is_422(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    assert_problem(await follow(client, alice, alice.username), 422, "cannot_follow_yourself")
    assert_problem(await unfollow(client, alice, alice.username), 422, "cannot_follow_yourself")


async def test_follow_needs_a_token(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    for method in ("PUT", "DELETE"):
        response = await client.request(method, f"/api/profiles/{alice.username}/follow")
        assert_problem(response, 401)
        bad = await client.request(
            method,
            f"/api/profiles/{alice.username}/follow",
            headers={"Authorization": "Bearer not-a-token"},
        )
        assert_problem(bad, 401)


async def test_one_user_cannot_unfollow_for_another(client: httpx.AsyncClient) -> None:
    """A follow is the caller's own: unfollowing acts on the caller's follow only."""
    alice, bob, mallory = [await register(client) for _ in range(3)]
    assert (await follow(client, bob, alice.username)).status_code == 200
    response = await unfollow(client, mallory, alice.username)
    assert response.status_code == 200
    assert response.json()["followers"] == 1  # bob still follows
    assert (await profile(client, alice.username, bob))["following"] is True


async def test_followers_and_following_page_newest_follow_first(
    client: httpx.AsyncClient,
) -> None:
    star = await register(client)
    fans = [await register(client) for _ in range(5)]
    for fan in fans:
        assert (await follow(client, fan, star.username)).status_code == 200
        assert (await follow(client, star, fan.username)).status_code == 200

    followers = await pages(client, f"/api/profiles/{star.username}/followers", 2)
    assert [len(p) for p in followers] == [2, 2, 1]
    ids = [item["id"] for page in followers for item in page]
    assert ids == [fan.id for fan in reversed(fans)]
    assert all(set(item) == PROFILE_FIELDS for page in followers for item in page)
    first = followers[0][0]
    assert (first["followers"], first["following_count"]) == (1, 1)

    following = await pages(client, f"/api/profiles/{star.username}/following", 3, star)
    assert [item["id"] for page in following for item in page] == [f.id for f in reversed(fans)]
    assert all(item["following"] for page in following for item in page)


async def test_follower_list_survives_new_follows_between_pages(
    client: httpx.AsyncClient,
) -> None:
    star = await register(client)
    fans = [await register(client) for _ in range(4)]
    for fan in fans:
        await follow(client, fan, star.username)
    url = f"/api/profiles/{star.username}/followers"
    first = (await client.get(url, params={"limit": 2})).json()
    late = await register(client)
    await follow(client, late, star.username)  # newest: before the cursor, not in what follows
    second = (await client.get(url, params={"limit": 2, "cursor": first["next_cursor"]})).json()
    seen = [i["id"] for i in first["items"] + second["items"]]
    assert seen == [f.id for f in reversed(fans)]


async def test_tampered_or_foreign_cursor_is_422(client: httpx.AsyncClient) -> None:
    star, other = await register(client), await register(client)
    for _ in range(3):
        fan = await register(client)
        await follow(client, fan, star.username)
        await follow(client, fan, other.username)
    url = f"/api/profiles/{star.username}/followers"
    cursor = (await client.get(url, params={"limit": 1})).json()["next_cursor"]
    payload, signature = cursor.split(".")
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    for bad in (
        f"{flipped}.{signature}",
        "garbage",
        "a.b.c",
        "!!!.***",
        cursor + "x",
        "é.é",
    ):
        assert_problem(await client.get(url, params={"cursor": bad}), 422, "invalid_cursor")
    # A cursor of one list is no cursor of another.
    for foreign in (
        f"/api/profiles/{other.username}/followers",
        f"/api/profiles/{star.username}/following",
    ):
        response = await client.get(foreign, params={"cursor": cursor})
        assert_problem(response, 422, "invalid_cursor")
    assert_problem(await client.get(url, params={"cursor": "x" * 513}), 422, "validation_error")
    for limit in (0, 101, "many"):
        response = await client.get(url, params={"limit": limit})
        assert_problem(response, 422, "validation_error")


async def test_deactivated_user_has_no_profile_and_leaves_every_count(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    admin = await make_admin(db, await register(client))
    alice, bob, carol = [await register(client) for _ in range(3)]
    await follow(client, bob, alice.username)
    await follow(client, alice, bob.username)
    await follow(client, carol, bob.username)
    assert (await profile(client, bob.username))["followers"] == 2  # cached now

    response = await client.patch(
        f"/api/users/{alice.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert_problem(await client.get(f"/api/profiles/{alice.username}"), 404, "profile_not_found")
    assert_problem(await follow(client, carol, alice.username), 404, "profile_not_found")
    bob_now = await profile(client, bob.username)
    assert (bob_now["followers"], bob_now["following_count"]) == (1, 0)
    followers = (await client.get(f"/api/profiles/{bob.username}/followers")).json()
    assert [i["id"] for i in followers["items"]] == [carol.id]
    await db.rollback()
    assert await db.scalar(select(func.count()).select_from(Follow)) == 1

    # Back again: a profile, without the follows it had.
    await client.patch(f"/api/users/{alice.id}", json={"is_active": True}, headers=admin.headers)
    back = await profile(client, alice.username)
    assert (back["followers"], back["following_count"]) == (0, 0)


async def test_deleted_user_leaves_every_count(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    await follow(client, alice, bob.username)
    assert (await profile(client, bob.username))["followers"] == 1
    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204
    assert (await profile(client, bob.username))["followers"] == 0
    assert_problem(await client.get(f"/api/profiles/{alice.username}"), 404, "profile_not_found")


async def test_counts_move_on_the_very_next_request(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    assert (await profile(client, alice.username, bob))["followers"] == 0  # cached
    assert (await profile(client, bob.username, bob))["following_count"] == 0
    await follow(client, bob, alice.username)
    assert (await profile(client, alice.username, bob))["followers"] == 1
    assert (await profile(client, alice.username))["followers"] == 1
    assert (await profile(client, bob.username, bob))["following_count"] == 1
    await create_post(client, alice)
    assert (await profile(client, alice.username))["posts"] == 1
    changed = await client.patch("/api/users/me", json={"bio": "New bio"}, headers=alice.headers)
    assert changed.status_code == 200
    assert (await profile(client, alice.username))["bio"] == "New bio"
    listed = (await client.get(f"/api/profiles/{bob.username}/following")).json()
    assert listed["items"][0]["bio"] == "New bio"


async def test_a_publish_counts_and_a_draft_does_not(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    draft = await create_post(client, alice, published=False)
    assert (await profile(client, alice.username))["posts"] == 0
    await client.patch(f"/api/posts/{draft['id']}", json={"published": True}, headers=alice.headers)
    assert (await profile(client, alice.username))["posts"] == 1
    await client.delete(f"/api/posts/{draft['id']}", headers=alice.headers)
    assert (await profile(client, alice.username))["posts"] == 0


MAX_PAGE_QUERIES = 8


async def test_follower_pages_take_a_bounded_number_of_statements(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    star = await register(client)
    for _ in range(9):
        fan = await register(client)
        await follow(client, fan, star.username)
        await create_post(client, fan)
    await profile(client, star.username, star)  # the username's id and the token, cached
    counts = {}
    for limit in (1, 4, 9):
        before = count_queries.count
        response = await client.get(
            f"/api/profiles/{star.username}/followers",
            params={"limit": limit},
            headers=star.headers,
        )
        assert len(response.json()["items"]) == limit
        counts[limit] = count_queries.count - before
    assert max(counts.values()) <= MAX_PAGE_QUERIES, counts
    assert len(set(counts.values())) == 1, counts


async def test_concurrent_follows_over_two_apis_count_exactly(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Followers registered and following at once through two API processes: the count is
    exact, and both processes see it on the next request."""
    fans_count = 24
    other_settings = settings_like(settings, rate_limits_enabled=False)
    async with (
        running_app(other_settings) as (_, api1),
        running_app(other_settings) as (_, api2),
    ):
        apis = (api1, api2)
        star = await register(api1)
        assert (await profile(api1, star.username))["followers"] == 0
        assert (await profile(api2, star.username))["followers"] == 0
        fans = [await register(apis[n % 2]) for n in range(fans_count)]
        twice = [follow(apis[n % 2], fan, star.username) for n, fan in enumerate(fans)]
        twice += [follow(apis[(n + 1) % 2], fan, star.username) for n, fan in enumerate(fans)]
        responses = await asyncio.gather(*twice)
        assert {r.status_code for r in responses} == {200}
        if SERVICES:  # one shared cache: both see the count at once
            for api in apis:
                assert (await profile(api, star.username))["followers"] == fans_count
        assert (await profile(client, star.username))["followers"] == fans_count
        gone = await asyncio.gather(
            *(unfollow(apis[n % 2], fan, star.username) for n, fan in enumerate(fans[:10]))
        )
        assert {r.status_code for r in gone} == {200}
        if SERVICES:
            for api in apis:
                assert (await profile(api, star.username))["followers"] == fans_count - 10


@pytest.mark.parametrize("path", ["followers", "following"])
async def test_lists_of_a_deactivated_user_are_404(
    client: httpx.AsyncClient, db: AsyncSession, path: str
) -> None:
    admin = await make_admin(db, await register(client))
    alice = await register(client)
    assert (await client.get(f"/api/profiles/{alice.username}/{path}")).status_code == 200
    await client.patch(f"/api/users/{alice.id}", json={"is_active": False}, headers=admin.headers)
    response = await client.get(f"/api/profiles/{alice.username}/{path}")
    assert_problem(response, 404, "profile_not_found")
