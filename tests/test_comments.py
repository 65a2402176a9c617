"""Comments: replies, editing, deletion with tombstones, cursors, drafts, counters."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import Comment, Post
from tests.conftest import SERVICES, QueryCounter, running_app, settings_like
from tests.factories import Account, create_post, make_admin, register
from tests.problems import assert_problem

COMMENT_FIELDS = {
    "id",
    "post_id",
    "parent_id",
    "body",
    "author",
    "created_at",
    "updated_at",
    "deleted",
}
MISSING_ID = 987_654


async def comment(
    client: httpx.AsyncClient,
    post_id: int,
    who: Account,
    body: str = "Nice post!",
    parent_id: int | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"body": body}
    if parent_id is not None:
        payload["parent_id"] = parent_id
    response = await client.post(
        f"/api/posts/{post_id}/comments", json=payload, headers=who.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def listed(
    client: httpx.AsyncClient, post_id: int, who: Account | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = await client.get(
            f"/api/posts/{post_id}/comments",
            params={"limit": limit, "cursor": cursor},
            headers=who.headers if who else {},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        cursor = body["next_cursor"]


async def count_shown(client: httpx.AsyncClient, post_id: int, who: Account | None = None) -> int:
    response = await client.get(f"/api/posts/{post_id}", headers=who.headers if who else {})
    count: int = response.json()["comments"]
    return count


async def test_comment_reply_and_list_oldest_first(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    response = await client.post(
        f"/api/posts/{post['id']}/comments", json={"body": "First!"}, headers=bob.headers
    )
    assert response.status_code == 201, response.text
    first = response.json()
    assert set(first) == COMMENT_FIELDS
    assert response.headers["location"] == f"/api/comments/{first['id']}"
    assert first["author"] == {"id": bob.id, "username": bob.username, "image": None}
    assert (first["post_id"], first["parent_id"], first["deleted"]) == (post["id"], None, False)
    reply = await comment(client, post["id"], alice, "Thanks", parent_id=first["id"])
    deeper = await comment(client, post["id"], bob, "Welcome", parent_id=reply["id"])
    assert reply["parent_id"] == first["id"]
    assert deeper["parent_id"] == reply["id"]

    items = await listed(client, post["id"])
    assert [c["id"] for c in items] == [first["id"], reply["id"], deeper["id"]]
    assert await count_shown(client, post["id"]) == 3
    page = (await client.get("/api/posts", params={"limit": 1})).json()
    assert page["items"][0]["comments"] == 3


async def test_comments_page_by_cursor_with_no_gaps_as_comments_arrive(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    made = [await comment(client, post["id"], alice, f"c{n}") for n in range(5)]
    url = f"/api/posts/{post['id']}/comments"
    first = (await client.get(url, params={"limit": 2})).json()
    assert [c["id"] for c in first["items"]] == [made[0]["id"], made[1]["id"]]
    late = await comment(client, post["id"], alice, "late")
    rest: list[dict[str, Any]] = []
    cursor = first["next_cursor"]
    while cursor:
        page = (await client.get(url, params={"limit": 2, "cursor": cursor})).json()
        rest += page["items"]
        cursor = page["next_cursor"]
    assert [c["id"] for c in rest] == [c["id"] for c in made[2:]] + [late["id"]]


async def test_bad_cursor_and_limits_are_422(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    other = await create_post(client, alice)
    for _ in range(3):
        await comment(client, post["id"], alice)
    url = f"/api/posts/{post['id']}/comments"
    cursor = (await client.get(url, params={"limit": 1})).json()["next_cursor"]
    assert_problem(await client.get(url, params={"cursor": cursor[:-2]}), 422, "invalid_cursor")
    response = await client.get(f"/api/posts/{other['id']}/comments", params={"cursor": cursor})
    assert_problem(response, 422, "invalid_cursor")
    for limit in (0, 101):
        assert_problem(await client.get(url, params={"limit": limit}), 422, "validation_error")


@pytest.mark.parametrize(
    "payload",
    [
        {"body": ""},
        {"body": "   "},
        {"body": "x" * 10_001},
        {},
        {"body": 5},
        {"body": "ok", "author_id": 1},
        {"body": "ok", "parent_id": "1"},
        {"body": "ok", "parent_id": 0},
        {"body": "a\u0000b"},
    ],
)
async def test_invalid_comment_is_422(client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    response = await client.post(
        f"/api/posts/{post['id']}/comments", json=payload, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")


async def test_longest_comment_is_accepted(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    made = await comment(client, post["id"], alice, "x" * 10_000)
    assert len(made["body"]) == 10_000


async def test_parent_must_be_a_live_comment_of_the_same_post(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post, other = await create_post(client, alice), await create_post(client, alice)
    elsewhere = await comment(client, other["id"], alice)
    for parent in (elsewhere["id"], MISSING_ID):
        response = await client.post(
            f"/api/posts/{post['id']}/comments",
            json={"body": "reply", "parent_id": parent},
            headers=alice.headers,
        )
        assert_problem(response, 422, "invalid_parent_comment")


async def test_comments_need_a_token_and_a_visible_post(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    draft = await create_post(client, alice, published=False)
    url = f"/api/posts/{draft['id']}/comments"
    assert_problem(await client.post(url, json={"body": "hi"}), 401)
    # Someone else's draft: as if it did not exist, for writing and for reading.
    response = await client.post(url, json={"body": "hi"}, headers=bob.headers)
    assert_problem(response, 404, "post_not_found")
    assert_problem(await client.get(url, headers=bob.headers), 404, "post_not_found")
    assert_problem(await client.get(url), 404, "post_not_found")
    missing = f"/api/posts/{MISSING_ID}/comments"
    assert_problem(await client.get(missing), 404, "post_not_found")
    assert_problem(
        await client.post(missing, json={"body": "x"}, headers=bob.headers), 404, "post_not_found"
    )
    # Its author may comment on it and read them.
    await comment(client, draft["id"], alice)
    assert len(await listed(client, draft["id"], alice)) == 1


async def test_comments_of_a_post_turned_draft_are_hidden(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    mine = await comment(client, post["id"], bob)
    assert len(await listed(client, post["id"], bob)) == 1  # cached
    await client.patch(f"/api/posts/{post['id']}", json={"published": False}, headers=alice.headers)
    url = f"/api/posts/{post['id']}/comments"
    assert_problem(await client.get(url, headers=bob.headers), 404, "post_not_found")
    response = await client.patch(
        f"/api/comments/{mine['id']}", json={"body": "edit"}, headers=bob.headers
    )
    assert_problem(response, 404, "comment_not_found")


async def test_author_edits_a_comment_and_no_one_else(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice)
    mine = await comment(client, post["id"], bob, "Original")
    assert (await listed(client, post["id"]))[0]["body"] == "Original"  # cached
    url = f"/api/comments/{mine['id']}"
    for other in (alice, admin):  # not even the post's author or an administrator
        response = await client.patch(url, json={"body": "Hijacked"}, headers=other.headers)
        assert_problem(response, 403, "not_comment_author")
    assert_problem(await client.patch(url, json={"body": "Anonymous"}), 401)
    response = await client.patch(url, json={"body": "Edited"}, headers=bob.headers)
    assert response.status_code == 200, response.text
    assert response.json()["body"] == "Edited"
    assert response.json()["updated_at"] >= mine["updated_at"]
    assert (await listed(client, post["id"]))[0]["body"] == "Edited"
    for payload in ({"body": ""}, {"body": "x" * 10_001}, {"body": "ok", "deleted": True}):
        response = await client.patch(url, json=payload, headers=bob.headers)
        assert_problem(response, 422, "validation_error")
    response = await client.patch(
        f"/api/comments/{MISSING_ID}", json={"body": "x"}, headers=bob.headers
    )
    assert_problem(response, 404, "comment_not_found")


async def test_who_may_delete_a_comment(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice, bob, mallory = [await register(client) for _ in range(3)]
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice)
    made = [await comment(client, post["id"], bob, f"c{n}") for n in range(3)]
    first = f"/api/comments/{made[0]['id']}"
    assert_problem(
        await client.delete(first, headers=mallory.headers), 403, "cannot_delete_comment"
    )
    assert_problem(await client.delete(first), 401)
    for who, item in zip((bob, alice, admin), made, strict=True):
        response = await client.delete(f"/api/comments/{item['id']}", headers=who.headers)
        assert response.status_code == 204, response.text
    assert await listed(client, post["id"]) == []
    assert await count_shown(client, post["id"]) == 0
    assert_problem(await client.delete(first, headers=bob.headers), 404, "comment_not_found")


async def test_deleted_comment_with_replies_stays_as_a_tombstone(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice)
    root = await comment(client, post["id"], alice, "Root")
    reply = await comment(client, post["id"], bob, "Reply", parent_id=root["id"])
    assert await count_shown(client, post["id"]) == 2

    assert (await client.delete(f"/api/comments/{root['id']}", headers=alice.headers)).is_success
    items = await listed(client, post["id"])
    assert [c["id"] for c in items] == [root["id"], reply["id"]]
    tombstone = items[0]
    assert (tombstone["deleted"], tombstone["body"], tombstone["author"]) == (True, None, None)
    assert items[1]["parent_id"] == root["id"]
    assert await count_shown(client, post["id"]) == 1
    # A tombstone is not edited, deleted again, or replied to.
    url = f"/api/comments/{root['id']}"
    response = await client.patch(url, json={"body": "back"}, headers=alice.headers)
    assert_problem(response, 404, "comment_not_found")
    assert_problem(await client.delete(url, headers=alice.headers), 404, "comment_not_found")
    response = await client.post(
        f"/api/posts/{post['id']}/comments",
        json={"body": "x", "parent_id": root["id"]},
        headers=bob.headers,
    )
    assert_problem(response, 422, "invalid_parent_comment")

    # The last reply goes: so does the tombstone it held up.
    assert (await client.delete(f"/api/comments/{reply['id']}", headers=bob.headers)).is_success
    assert await listed(client, post["id"]) == []
    await db.rollback()
    assert await db.scalar(select(func.count()).select_from(Comment)) == 0
    assert await db.scalar(select(Post.comments_count).where(Post.id == post["id"])) == 0


async def test_deactivated_or_deleted_author_leaves_tombstones_or_nothing(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob, carol = [await register(client) for _ in range(3)]
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice)
    answered = await comment(client, post["id"], bob, "Answered")
    await comment(client, post["id"], carol, "Answer", parent_id=answered["id"])
    await comment(client, post["id"], bob, "Alone")
    own_thread = await comment(client, post["id"], bob, "Own thread")
    await comment(client, post["id"], bob, "Own reply", parent_id=own_thread["id"])
    assert await count_shown(client, post["id"]) == 5

    response = await client.patch(
        f"/api/users/{bob.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200
    items = await listed(client, post["id"])
    assert [(c["body"], c["deleted"]) for c in items] == [(None, True), ("Answer", False)]
    assert await count_shown(client, post["id"]) == 1

    answer = await comment(client, post["id"], alice, "Mine", parent_id=items[1]["id"])
    assert (await client.delete("/api/users/me", headers=carol.headers)).status_code == 204
    items = await listed(client, post["id"])
    assert [(c["body"], c["deleted"]) for c in items] == [
        (None, True),
        (None, True),
        ("Mine", False),
    ]
    assert items[2]["id"] == answer["id"]
    assert await count_shown(client, post["id"]) == 1


async def test_deleting_the_post_deletes_its_comments(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    root = await comment(client, post["id"], alice)
    await comment(client, post["id"], alice, parent_id=root["id"])
    assert (await client.delete(f"/api/posts/{post['id']}", headers=alice.headers)).is_success
    await db.rollback()
    assert await db.scalar(select(func.count()).select_from(Comment)) == 0


MAX_PAGE_QUERIES = 6


async def test_comment_pages_take_a_bounded_number_of_statements(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    users = [await register(client) for _ in range(5)]
    post = await create_post(client, users[0])
    for n in range(20):
        await comment(client, post["id"], users[n % 5])
    counts = {}
    for limit in (1, 5, 20):
        before = count_queries.count
        response = await client.get(f"/api/posts/{post['id']}/comments", params={"limit": limit})
        assert len(response.json()["items"]) == limit
        counts[limit] = count_queries.count - before
    assert max(counts.values()) <= MAX_PAGE_QUERIES, counts
    assert len(set(counts.values())) == 1, counts


async def test_concurrent_comments_over_two_apis_count_exactly(
    client: httpx.AsyncClient, settings: Settings, db: AsyncSession
) -> None:
    writers = 20
    other_settings = settings_like(settings, rate_limits_enabled=False)
    async with (
        running_app(other_settings) as (_, api1),
        running_app(other_settings) as (_, api2),
    ):
        apis = (api1, api2)
        author = await register(api1)
        post = await create_post(api1, author)
        assert await count_shown(api1, post["id"]) == 0
        assert await count_shown(api2, post["id"]) == 0
        people = [await register(apis[n % 2]) for n in range(writers)]
        made = await asyncio.gather(
            *(
                apis[n % 2].post(
                    f"/api/posts/{post['id']}/comments", json={"body": "hi"}, headers=p.headers
                )
                for n, p in enumerate(people)
            )
        )
        assert {r.status_code for r in made} == {201}
        deletions = await asyncio.gather(
            *(
                apis[(n + 1) % 2].delete(f"/api/comments/{r.json()['id']}", headers=author.headers)
                for n, r in enumerate(made[:5])
            ),
            *(
                apis[n % 2].delete(f"/api/comments/{r.json()['id']}", headers=author.headers)
                for n, r in enumerate(made[:5])
            ),
        )
        # Each deleted twice at once: once or twice 204 (the second one may find it still
        # there), never a counter moved twice.
        statuses = [r.status_code for r in deletions]
        assert set(statuses) <= {204, 404}, statuses
        assert statuses.count(204) >= 5, statuses
        expected = writers - 5
        if SERVICES:
            for api in apis:
                assert await count_shown(api, post["id"]) == expected
        assert await count_shown(client, post["id"]) == expected
    await db.rollback()
    assert await db.scalar(select(Post.comments_count).where(Post.id == post["id"])) == expected
    stored = select(func.count()).select_from(Comment).where(Comment.post_id == post["id"])
    assert await db.scalar(stored) == expected
