"""Posts one at a time: create, read, replace, patch, delete; who may do which; drafts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Post, PostLike, Tag, post_tag
from tests.factories import Account, create_post, make_admin, register
from tests.problems import assert_problem

POST_OUT_FIELDS = {
    "id",
    "slug",
    "title",
    "summary",
    "content",
    "published",
    "tags",
    "author",
    "images",
    "likes",
    "liked_by_me",
    "comments",
    "created_at",
    "updated_at",
}
HUGE_ID = "99999999999999999999"
MISSING_ID = 987_654
FULL_POST = {"title": "Replaced", "content": "Replaced content.", "published": True, "tags": ["x"]}


async def stored_post(db: AsyncSession, post_id: int) -> dict[str, Any] | None:
    """The post as the database holds it now (a fresh transaction, no stale identity map)."""
    await db.rollback()
    post = await db.scalar(
        select(Post).where(Post.id == post_id).execution_options(populate_existing=True)
    )
    if post is None:
        return None
    tags = await db.scalars(
        select(Tag.name)
        .join(post_tag, post_tag.c.tag_id == Tag.id)
        .where(post_tag.c.post_id == post_id)
        .order_by(Tag.name)
    )
    return {
        "author_id": post.author_id,
        "title": post.title,
        "content": post.content,
        "published": post.published,
        "likes": post.likes,
        "tags": list(tags),
        "created_at": post.created_at,
        "updated_at": post.updated_at,
    }


async def post_count(db: AsyncSession) -> int:
    await db.rollback()
    return await db.scalar(select(func.count()).select_from(Post)) or 0


async def rows_of(db: AsyncSession, post_id: int) -> tuple[int, int]:
    """(post_like rows, post_tag rows) that point at the post."""
    await db.rollback()
    likes = await db.scalar(
        select(func.count()).select_from(PostLike).where(PostLike.post_id == post_id)
    )
    tags = await db.scalar(
        select(func.count()).select_from(post_tag).where(post_tag.c.post_id == post_id)
    )
    return likes or 0, tags or 0


async def write(
    client: httpx.AsyncClient, method: str, post_id: int | str, who: Account | None
) -> httpx.Response:
    """One of the write routes on a post, with a valid body where one is needed."""
    headers = who.headers if who else {}
    url = f"/api/posts/{post_id}"
    if method == "PUT":
        return await client.put(url, json=FULL_POST, headers=headers)
    if method == "PATCH":
        return await client.patch(url, json={"title": "Patched"}, headers=headers)
    if method == "DELETE":
        return await client.delete(url, headers=headers)
    if method == "LIKE":
        return await client.put(f"{url}/like", headers=headers)
    assert method == "UNLIKE"
    return await client.delete(f"{url}/like", headers=headers)


EDITS = ["PUT", "PATCH", "DELETE"]
WRITES = [*EDITS, "LIKE", "UNLIKE"]


# --- create -----------------------------------------------------------------------------------
async def test_create_post_returns_201_location_and_post_out(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    response = await client.post(
        "/api/posts",
        json={"title": "Hello", "content": "World *md*", "tags": ["intro"]},
        headers=alice.headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == POST_OUT_FIELDS
    assert response.headers["location"] == f"/api/posts/{body['id']}"
    assert body["title"] == "Hello"
    assert body["content"] == "World *md*"
    assert body["published"] is True
    assert body["tags"] == ["intro"]
    assert body["author"] == {"id": alice.id, "username": alice.username, "image": None}
    assert body["images"] == []
    assert body["likes"] == 0
    assert body["liked_by_me"] is False
    assert body["created_at"] == body["updated_at"]

    stored = await stored_post(db, body["id"])
    assert stored is not None
    assert stored["author_id"] == alice.id
    assert stored["title"] == "Hello"
    assert stored["content"] == "World *md*"
    assert stored["published"] is True
    assert stored["likes"] == 0
    assert stored["tags"] == ["intro"]
    assert stored["created_at"] == datetime.fromisoformat(body["created_at"])


async def test_create_post_trims_title(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="   Spaced out \t")
    assert post["title"] == "Spaced out"
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["title"] == "Spaced out"


async def test_create_post_title_of_200_characters_after_trimming_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="  " + "t" * 200 + "  ")
    assert post["title"] == "t" * 200


async def test_create_post_lowercases_and_deduplicates_tags(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["Python", "python", "FAST-api", "fast-api", "x1"])
    assert sorted(post["tags"]) == ["fast-api", "python", "x1"]
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["tags"] == ["fast-api", "python", "x1"]
    await db.rollback()
    names = list(await db.scalars(select(Tag.name).order_by(Tag.name)))
    assert names == ["fast-api", "python", "x1"]


async def test_create_post_with_ten_tags_is_accepted_but_not_eleven_with_duplicates(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    # At most 10 as sent, as the schema says (`maxItems`), duplicates or not.
    alice = await register(client)
    post = await create_post(client, alice, tags=[f"t{i}" for i in range(9)] + ["T0"])
    assert len(post["tags"]) == 9
    response = await client.post(
        "/api/posts",
        json={"title": "t", "content": "c", "tags": [f"t{i}" for i in range(10)] + ["T0"]},
        headers=alice.headers,
    )
    assert_problem(response, 422, "validation_error")
    assert await post_count(db) == 1


async def test_create_post_with_more_than_ten_tags_is_422(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    response = await client.post(
        "/api/posts",
        json={"title": "t", "content": "c", "tags": [f"t{i}" for i in range(11)]},
        headers=alice.headers,
    )
    assert_problem(response, 422, "validation_error")
    assert response.json()["errors"]
    assert await post_count(db) == 0


@pytest.mark.parametrize(
    "tag",
    ["has space", "a" * 33, "", "dot.ted", "émoji", "slash/tag"],
    ids=["space", "too-long", "empty", "dot", "non-ascii", "slash"],
)
async def test_create_post_with_invalid_tag_is_422(
    client: httpx.AsyncClient, db: AsyncSession, tag: str
) -> None:
    alice = await register(client)
    response = await client.post(
        "/api/posts", json={"title": "t", "content": "c", "tags": [tag]}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")
    assert await post_count(db) == 0


@pytest.mark.parametrize(
    "extra",
    [{"author": {"id": 1, "username": "x"}}, {"author_id": 1}, {"likes": 99}, {"id": 5}],
    ids=["author", "author_id", "likes", "id"],
)
async def test_create_post_rejects_unknown_fields_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, extra: dict[str, Any]
) -> None:
    alice = await register(client)
    response = await client.post(
        "/api/posts", json={"title": "t", "content": "c", **extra}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")
    assert await post_count(db) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "t" * 201},
        {"title": ""},
        {"title": "    "},
        {"content": "c" * 50_001},
        {"content": ""},
        {"content": "  \n "},
        {"title": None},
        {"published": "maybe"},
        {"tags": "not-a-list"},
        {"title": "nul\x00byte"},
        {"content": "nul\x00byte"},
    ],
    ids=[
        "title-201",
        "title-empty",
        "title-blank",
        "content-50001",
        "content-empty",
        "content-blank",
        "title-null",
        "published-not-bool",
        "tags-not-list",
        "title-nul",
        "content-nul",
    ],
)
async def test_create_post_with_invalid_field_is_422_and_stores_nothing(
    client: httpx.AsyncClient, db: AsyncSession, fields: dict[str, Any]
) -> None:
    alice = await register(client)
    response = await client.post(
        "/api/posts", json={"title": "t", "content": "c", **fields}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")
    assert await post_count(db) == 0


@pytest.mark.parametrize("missing", ["title", "content"])
async def test_create_post_without_required_field_is_422(
    client: httpx.AsyncClient, db: AsyncSession, missing: str
) -> None:
    alice = await register(client)
    payload = {"title": "t", "content": "c"}
    del payload[missing]
    response = await client.post("/api/posts", json=payload, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
    assert await post_count(db) == 0


async def test_create_post_content_of_50000_characters_is_accepted(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, content="c" * 50_000)
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert len(stored["content"]) == 50_000


async def test_create_post_unauthenticated_is_401(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post("/api/posts", json={"title": "t", "content": "c"})
    assert_problem(response, 401, "not_authenticated")
    assert await post_count(db) == 0


async def test_create_post_with_invalid_token_is_401(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await client.post(
        "/api/posts",
        json={"title": "t", "content": "c"},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert response.status_code == 401
    assert await post_count(db) == 0


async def test_create_draft_stores_published_false(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, published=False)
    assert post["published"] is False
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["published"] is False


# --- read -------------------------------------------------------------------------------------
async def test_read_post_returns_post_out_with_etag(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["a"])
    response = await client.get(f"/api/posts/{post['id']}")
    assert response.status_code == 200
    assert response.headers["etag"]
    assert response.json() == post


async def test_read_post_with_matching_if_none_match_is_304_with_empty_body(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    etag = (await client.get(f"/api/posts/{post['id']}")).headers["etag"]
    response = await client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag


async def test_read_post_with_old_etag_after_edit_is_200_with_new_etag(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    old = (await client.get(f"/api/posts/{post['id']}")).headers["etag"]
    edited = await client.patch(
        f"/api/posts/{post['id']}", json={"content": "New words."}, headers=alice.headers
    )
    assert edited.status_code == 200
    response = await client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": old})
    assert response.status_code == 200
    assert response.json()["content"] == "New words."
    assert response.headers["etag"] != old


async def test_read_missing_post_is_404_post_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/posts/{MISSING_ID}")
    assert_problem(response, 404, "post_not_found")


@pytest.mark.parametrize("post_id", ["abc", "1.5", "1e3"])
async def test_read_post_with_non_integer_id_is_422(
    client: httpx.AsyncClient, post_id: str
) -> None:
    response = await client.get(f"/api/posts/{post_id}")
    assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("method", ["GET", *WRITES])
@pytest.mark.parametrize("post_id", [HUGE_ID, "0", "-1"])
async def test_out_of_range_post_id_is_422_or_404_never_500(
    client: httpx.AsyncClient, method: str, post_id: str
) -> None:
    alice = await register(client)
    if method == "GET":
        response = await client.get(f"/api/posts/{post_id}", headers=alice.headers)
    else:
        response = await write(client, method, post_id, alice)
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


# --- replace (PUT) ----------------------------------------------------------------------------
async def test_put_replaces_every_field(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["old", "older"])
    response = await client.put(
        f"/api/posts/{post['id']}",
        json={"title": " New title ", "content": "New.", "published": False, "tags": ["New", "b"]},
        headers=alice.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["title"] == "New title"
    assert body["content"] == "New."
    assert body["published"] is False
    assert sorted(body["tags"]) == ["b", "new"]
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["title"] == "New title"
    assert stored["content"] == "New."
    assert stored["published"] is False
    assert stored["tags"] == ["b", "new"]


@pytest.mark.parametrize("missing", ["title", "content", "published", "tags"])
async def test_put_without_every_field_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, missing: str
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["keep"])
    before = await stored_post(db, post["id"])
    payload = {k: v for k, v in FULL_POST.items() if k != missing}
    response = await client.put(f"/api/posts/{post['id']}", json=payload, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
    assert await stored_post(db, post["id"]) == before


@pytest.mark.parametrize("extra", [{"likes": 5}, {"author_id": 1}, {"id": 3}])
async def test_put_rejects_unknown_fields(
    client: httpx.AsyncClient, db: AsyncSession, extra: dict[str, Any]
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    before = await stored_post(db, post["id"])
    response = await client.put(
        f"/api/posts/{post['id']}", json={**FULL_POST, **extra}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")
    assert await stored_post(db, post["id"]) == before


async def test_put_missing_post_is_404(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    response = await client.put(f"/api/posts/{MISSING_ID}", json=FULL_POST, headers=alice.headers)
    assert_problem(response, 404, "post_not_found")


# --- patch ------------------------------------------------------------------------------------
async def test_patch_changes_only_the_given_fields(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="Keep me", content="Old", tags=["a", "b"])
    response = await client.patch(
        f"/api/posts/{post['id']}", json={"content": "New"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["title"] == "Keep me"
    assert body["content"] == "New"
    assert body["published"] is True
    assert sorted(body["tags"]) == ["a", "b"]
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert (stored["title"], stored["content"], stored["published"], stored["tags"]) == (
        "Keep me",
        "New",
        True,
        ["a", "b"],
    )


async def test_patch_replaces_tags(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["a", "b"])
    response = await client.patch(
        f"/api/posts/{post['id']}", json={"tags": ["C", "b"]}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert sorted(response.json()["tags"]) == ["b", "c"]
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["tags"] == ["b", "c"]


async def test_patch_with_empty_tag_list_removes_every_tag(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["a", "b"])
    response = await client.patch(
        f"/api/posts/{post['id']}", json={"tags": []}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == []
    assert await rows_of(db, post["id"]) == (0, 0)


async def test_patch_can_unpublish_and_publish(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    url = f"/api/posts/{post['id']}"
    response = await client.patch(url, json={"published": False}, headers=alice.headers)
    assert response.json()["published"] is False
    assert (await client.get(url)).status_code == 404
    response = await client.patch(url, json={"published": True}, headers=alice.headers)
    assert response.json()["published"] is True
    assert (await client.get(url)).status_code == 200
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["published"] is True


@pytest.mark.parametrize("field", ["title", "content", "published", "tags"])
async def test_patch_with_null_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, field: str
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["a"])
    before = await stored_post(db, post["id"])
    response = await client.patch(
        f"/api/posts/{post['id']}", json={field: None}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")
    assert await stored_post(db, post["id"]) == before


@pytest.mark.parametrize(
    "changes",
    [{"title": "   "}, {"title": "t" * 201}, {"content": ""}, {"tags": ["bad tag"]}, {"x": 1}],
    ids=["blank-title", "long-title", "empty-content", "bad-tag", "unknown-field"],
)
async def test_patch_with_invalid_value_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: AsyncSession, changes: dict[str, Any]
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    before = await stored_post(db, post["id"])
    response = await client.patch(f"/api/posts/{post['id']}", json=changes, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
    assert await stored_post(db, post["id"]) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_edit_moves_updated_at_and_keeps_created_at(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    response = await write(client, method, post["id"], alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created_at"] == post["created_at"]
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(post["updated_at"])
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["created_at"] == datetime.fromisoformat(post["created_at"])
    assert stored["updated_at"] == datetime.fromisoformat(body["updated_at"])


async def test_edit_response_keeps_likes_and_liked_by_me(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    assert (await write(client, "LIKE", post["id"], alice)).status_code == 204
    response = await write(client, "PATCH", post["id"], alice)
    assert response.status_code == 200
    assert response.json()["likes"] == 1
    assert response.json()["liked_by_me"] is True


# --- ownership: every write route ------------------------------------------------------------
@pytest.mark.parametrize("method", EDITS)
async def test_other_user_cannot_change_post(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    alice, mallory = await register(client), await register(client)
    post = await create_post(client, alice, tags=["mine"])
    before = await stored_post(db, post["id"])
    response = await write(client, method, post["id"], mallory)
    assert_problem(response, 403, "not_post_author")
    assert await stored_post(db, post["id"]) == before


@pytest.mark.parametrize("method", EDITS)
async def test_unauthenticated_cannot_change_post(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    before = await stored_post(db, post["id"])
    response = await write(client, method, post["id"], None)
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert await stored_post(db, post["id"]) == before


@pytest.mark.parametrize("method", ["LIKE", "UNLIKE"])
async def test_unauthenticated_cannot_like_or_unlike(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    assert (await write(client, "LIKE", post["id"], alice)).status_code == 204
    response = await write(client, method, post["id"], None)
    assert_problem(response, 401, "not_authenticated")
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["likes"] == 1
    assert await rows_of(db, post["id"]) == (1, 0)


async def test_admin_can_put_someone_elses_post(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice)
    response = await write(client, "PUT", post["id"], admin)
    assert response.status_code == 200, response.text
    assert response.json()["author"]["id"] == alice.id
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["title"] == FULL_POST["title"]
    assert stored["author_id"] == alice.id


async def test_admin_can_patch_someone_elses_post(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice)
    response = await write(client, "PATCH", post["id"], admin)
    assert response.status_code == 200, response.text
    stored = await stored_post(db, post["id"])
    assert stored is not None
    assert stored["title"] == "Patched"
    assert stored["author_id"] == alice.id


async def test_admin_can_delete_someone_elses_post(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice)
    response = await write(client, "DELETE", post["id"], admin)
    assert response.status_code == 204
    assert await stored_post(db, post["id"]) is None


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_admin_can_change_someone_elses_draft(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    alice = await register(client)
    admin = await make_admin(db, await register(client))
    post = await create_post(client, alice, published=False)
    response = await write(client, method, post["id"], admin)
    assert response.status_code in (200, 204), response.text
    stored = await stored_post(db, post["id"])
    if method == "DELETE":
        assert stored is None
    else:
        assert stored is not None
        assert stored["title"] != post["title"]


# --- drafts -----------------------------------------------------------------------------------
async def test_draft_is_404_to_anonymous_reader(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    draft = await create_post(client, alice, published=False)
    assert_problem(await client.get(f"/api/posts/{draft['id']}"), 404, "post_not_found")


@pytest.mark.parametrize("method", WRITES)
async def test_anonymous_write_to_draft_answers_as_for_a_missing_post(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    """Anonymous callers learn nothing about a draft: the answer equals the missing post's."""
    alice = await register(client)
    draft = await create_post(client, alice, published=False)
    before = await stored_post(db, draft["id"])
    response = await write(client, method, draft["id"], None)
    missing = await write(client, method, MISSING_ID, None)
    assert response.status_code in (401, 404)
    assert response.status_code == missing.status_code
    assert response.json()["code"] == missing.json()["code"]
    assert await stored_post(db, draft["id"]) == before


@pytest.mark.parametrize("method", ["GET", *WRITES])
async def test_draft_is_404_to_other_users(
    client: httpx.AsyncClient, db: AsyncSession, method: str
) -> None:
    alice, bob = await register(client), await register(client)
    draft = await create_post(client, alice, published=False, tags=["secret"])
    before = await stored_post(db, draft["id"])
    if method == "GET":
        response = await client.get(f"/api/posts/{draft['id']}", headers=bob.headers)
    else:
        response = await write(client, method, draft["id"], bob)
    assert_problem(response, 404, "post_not_found")
    assert await stored_post(db, draft["id"]) == before
    assert await rows_of(db, draft["id"]) == (0, 1)


async def test_author_can_read_edit_and_like_own_draft(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    draft = await create_post(client, alice, published=False)
    url = f"/api/posts/{draft['id']}"
    response = await client.get(url, headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["published"] is False
    assert (await write(client, "PATCH", draft["id"], alice)).status_code == 200
    assert (await write(client, "LIKE", draft["id"], alice)).status_code == 204
    stored = await stored_post(db, draft["id"])
    assert stored is not None
    assert stored["title"] == "Patched"
    assert stored["published"] is False
    assert stored["likes"] == 1


async def test_admin_can_read_someone_elses_draft(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    admin = await make_admin(db, await register(client))
    draft = await create_post(client, alice, published=False)
    response = await client.get(f"/api/posts/{draft['id']}", headers=admin.headers)
    assert response.status_code == 200
    assert response.json()["id"] == draft["id"]


# --- delete -----------------------------------------------------------------------------------
async def test_delete_post_is_204_then_404_and_removes_likes_and_tag_links(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice, bob = await register(client), await register(client)
    post = await create_post(client, alice, tags=["a", "b"])
    other = await create_post(client, alice, tags=["a"])
    for who in (alice, bob):
        assert (await write(client, "LIKE", post["id"], who)).status_code == 204
    assert (await write(client, "LIKE", other["id"], bob)).status_code == 204
    assert await rows_of(db, post["id"]) == (2, 2)

    response = await client.delete(f"/api/posts/{post['id']}", headers=alice.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(f"/api/posts/{post['id']}"), 404, "post_not_found")
    assert_problem(
        await client.delete(f"/api/posts/{post['id']}", headers=alice.headers),
        404,
        "post_not_found",
    )
    assert await stored_post(db, post["id"]) is None
    assert await rows_of(db, post["id"]) == (0, 0)
    assert await rows_of(db, other["id"]) == (1, 1)


async def test_empty_patch_changes_nothing_not_even_updated_at(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    writer = await register(client)
    post = await create_post(client, writer)
    response = await client.patch(f"/api/posts/{post['id']}", json={}, headers=writer.headers)
    assert response.status_code == 200
    assert response.json()["updated_at"] == post["updated_at"]
    stored = await db.get(Post, post["id"])
    assert stored is not None
    assert stored.updated_at.isoformat().replace("+00:00", "Z") == post["updated_at"]
