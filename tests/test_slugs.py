"""Posts' slugs and summaries, the `favorited_by` filter, tags with `_`, and users' pictures."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.factories import create_post, make_admin, register
from tests.problems import assert_problem


async def test_slug_from_title_with_suffix_on_collision_and_kept_on_edit(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    first = await create_post(client, alice, title="Hello, Wörld!")
    second = await create_post(client, alice, title="hello world")
    third = await create_post(client, alice, title="?!")
    assert (first["slug"], second["slug"], third["slug"]) == (
        "hello-world",
        "hello-world-2",
        "post",
    )
    changed = await client.patch(
        f"/api/posts/{first['id']}", json={"title": "Another title"}, headers=alice.headers
    )
    assert changed.status_code == 200
    assert changed.json()["slug"] == "hello-world"
    by_slug = await client.get("/api/posts/by-slug/hello-world")
    assert by_slug.status_code == 200
    assert by_slug.json()["title"] == "Another title"
    assert by_slug.headers["etag"]
    again = await client.get(
        "/api/posts/by-slug/hello-world", headers={"If-None-Match": by_slug.headers["etag"]}
    )
    assert again.status_code == 304


async def test_a_slug_not_taken_by_a_prefix(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    await create_post(client, alice, title="Hello world again")
    post = await create_post(client, alice, title="Hello world")
    assert post["slug"] == "hello-world"


async def test_by_slug_of_a_draft_or_nothing_is_404(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    draft = await create_post(client, alice, title="Secret plans", published=False)
    for who in (None, bob):
        response = await client.get(
            f"/api/posts/by-slug/{draft['slug']}", headers=who.headers if who else {}
        )
        assert_problem(response, 404, "post_not_found")
    mine = await client.get(f"/api/posts/by-slug/{draft['slug']}", headers=alice.headers)
    assert mine.status_code == 200
    assert_problem(await client.get("/api/posts/by-slug/no-such-slug"), 404, "post_not_found")
    assert_problem(await client.get("/api/posts/by-slug/" + "a" * 101), 422, "validation_error")


async def test_deleted_post_slug_is_404(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="Short lived")
    assert (await client.get("/api/posts/by-slug/short-lived")).status_code == 200
    deleted = await client.delete(f"/api/posts/{post['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    assert_problem(await client.get("/api/posts/by-slug/short-lived"), 404, "post_not_found")
    # The slug is free again, and names the new post at once.
    again = await create_post(client, alice, title="Short lived")
    assert again["slug"] == "short-lived"
    found = await client.get("/api/posts/by-slug/short-lived")
    assert found.status_code == 200
    assert found.json()["id"] == again["id"]


async def test_summary_is_optional_bounded_and_editable(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice)
    assert post["summary"] is None
    post = await create_post(client, alice, summary="In short.")
    assert post["summary"] == "In short."
    too_long = await client.post(
        "/api/posts",
        json={"title": "t", "content": "c", "summary": "s" * 301},
        headers=alice.headers,
    )
    assert_problem(too_long, 422, "validation_error")
    changed = await client.patch(
        f"/api/posts/{post['id']}", json={"summary": "Shorter."}, headers=alice.headers
    )
    assert changed.json()["summary"] == "Shorter."
    read = await client.get(f"/api/posts/{post['id']}")
    assert read.json()["summary"] == "Shorter."
    # null clears it, as a post made without one has none
    cleared = await client.patch(
        f"/api/posts/{post['id']}", json={"summary": None}, headers=alice.headers
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["summary"] is None
    assert (await client.get(f"/api/posts/{post['id']}")).json()["summary"] is None
    still_no_null_title = await client.patch(
        f"/api/posts/{post['id']}", json={"title": None}, headers=alice.headers
    )
    assert_problem(still_no_null_title, 422, "validation_error")


async def test_tags_may_hold_underscores(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["Snake_Case", "kebab-case"])
    assert post["tags"] == ["kebab-case", "snake_case"]


async def test_favorited_by_lists_the_posts_a_user_liked(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    liked = await create_post(client, alice)
    await create_post(client, alice)
    draft = await create_post(client, bob, published=False)
    for post in (liked, draft):
        assert (await client.put(f"/api/posts/{post['id']}/like", headers=bob.headers)).is_success
    page = (await client.get("/api/posts", params={"favorited_by": bob.username})).json()
    assert [p["id"] for p in page["items"]] == [liked["id"]]  # never someone's draft
    assert page["total"] == 1
    unknown = await client.get("/api/posts", params={"favorited_by": "nobody_here"})
    assert unknown.json()["total"] == 0
    too_long = await client.get("/api/posts", params={"favorited_by": "x" * 33})
    assert_problem(too_long, 422, "validation_error")


async def test_user_sets_and_clears_an_https_picture(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    assert alice.body["user"]["image"] is None
    url = "https://images.example.com/alice.jpg"
    response = await client.patch("/api/users/me", json={"image": url}, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json()["image"] == url
    post = await create_post(client, alice)
    assert post["author"]["image"] == url
    profile = (await client.get(f"/api/profiles/{alice.username}")).json()
    assert profile["image"] == url
    cleared = await client.patch("/api/users/me", json={"image": None}, headers=alice.headers)
    assert cleared.json()["image"] is None
    assert (await client.get(f"/api/posts/{post['id']}")).json()["author"]["image"] is None
    assert (await client.get(f"/api/profiles/{alice.username}")).json()["image"] is None


@pytest.mark.parametrize(
    "image",
    [
        "http://images.example.com/a.jpg",
        "javascript:alert(1)",
        "https://",
        "https://user@evil.example/a.jpg",
        "https://a.example/" + "x" * 2048,
        "not a url",
        42,
    ],
)
async def test_picture_must_be_an_https_url(client: httpx.AsyncClient, image: object) -> None:
    alice = await register(client)
    response = await client.patch("/api/users/me", json={"image": image}, headers=alice.headers)
    assert_problem(response, 422, "validation_error")


async def test_null_still_refused_for_other_profile_fields(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    response = await client.patch("/api/users/me", json={"bio": None}, headers=alice.headers)
    assert_problem(response, 422, "validation_error")


async def test_admin_may_set_a_users_picture(client: httpx.AsyncClient, db: AsyncSession) -> None:
    admin = await make_admin(db, await register(client))
    bob = await register(client)
    url = "https://images.example.com/bob.png"
    response = await client.patch(
        f"/api/users/{bob.id}", json={"image": url}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["image"] == url
