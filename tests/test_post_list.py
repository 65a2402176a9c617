"""GET /api/posts: sorting, paging, filtering, drafts in lists, and a bounded number of queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Post
from tests.conftest import QueryCounter
from tests.factories import Account, create_post, make_admin, register

BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
SORT_KEYS = ["created_at", "updated_at", "title", "likes"]
# Sort values given to four posts, by rank: post i gets the RANKS[i]-th value of its key.
RANKS = [2, 0, 3, 1]
TITLES_BY_RANK = ["apple", "Banana", "cherry", "Date"]
MAX_LIST_QUERIES = 6


async def list_posts(
    client: httpx.AsyncClient, who: Account | None = None, **params: Any
) -> dict[str, Any]:
    response = await client.get("/api/posts", params=params, headers=who.headers if who else {})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


async def set_columns(db: AsyncSession, post_id: int, **values: Any) -> None:
    """Give a post exact sort values (timestamps a test cannot wait for)."""
    await db.execute(update(Post).where(Post.id == post_id).values(**values))
    await db.commit()


def value_of_rank(key: str, rank: int) -> Any:
    if key == "title":
        return TITLES_BY_RANK[rank]
    if key == "likes":
        return rank
    return BASE_TIME + timedelta(minutes=rank)


# --- sorting ----------------------------------------------------------------------------------
async def test_list_defaults_to_newest_first(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice = await register(client)
    posts = [await create_post(client, alice) for _ in range(4)]
    for post, rank in zip(posts, RANKS, strict=True):
        await set_columns(db, post["id"], created_at=BASE_TIME + timedelta(minutes=rank))
    page = await list_posts(client)
    expected = [p["id"] for p, _ in sorted(zip(posts, RANKS, strict=True), key=lambda x: -x[1])]
    assert ids(page) == expected
    assert page["limit"] == 20
    assert page["offset"] == 0
    assert page["total"] == 4


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("key", SORT_KEYS)
async def test_list_sorts_by_key(
    client: httpx.AsyncClient, db: AsyncSession, key: str, descending: bool
) -> None:
    alice = await register(client)
    posts = [await create_post(client, alice) for _ in range(4)]
    for post, rank in zip(posts, RANKS, strict=True):
        await set_columns(db, post["id"], **{key: value_of_rank(key, rank)})
    by_rank = [p["id"] for p, _ in sorted(zip(posts, RANKS, strict=True), key=lambda x: x[1])]
    page = await list_posts(client, sort=f"-{key}" if descending else key)
    assert ids(page) == (by_rank[::-1] if descending else by_rank)


async def test_list_sorts_titles_case_insensitively(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    cherry = await create_post(client, alice, title="cherry")
    banana = await create_post(client, alice, title="Banana")
    apple = await create_post(client, alice, title="apple")
    page = await list_posts(client, sort="title")
    assert [i["title"] for i in page["items"]] == ["apple", "Banana", "cherry"]
    assert ids(page) == [apple["id"], banana["id"], cherry["id"]]
    page = await list_posts(client, sort="-title")
    assert [i["title"] for i in page["items"]] == ["cherry", "Banana", "apple"]


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("key", SORT_KEYS)
async def test_list_breaks_ties_by_id_in_the_same_direction(
    client: httpx.AsyncClient, db: AsyncSession, key: str, descending: bool
) -> None:
    alice = await register(client)
    titles = ["Same", "same", "SAME", "sAmE"]
    posts = [await create_post(client, alice, title=t) for t in titles]
    same = {"created_at": BASE_TIME, "updated_at": BASE_TIME, "likes": 3}
    for post in posts:
        await set_columns(db, post["id"], **same)
    # One post that is not tied, so the key itself still counts.
    odd = await create_post(client, alice, title="zzz")
    await set_columns(
        db,
        odd["id"],
        created_at=BASE_TIME + timedelta(days=1),
        updated_at=BASE_TIME + timedelta(days=1),
        likes=9,
    )
    tied = sorted(p["id"] for p in posts)
    page = await list_posts(client, sort=f"-{key}" if descending else key)
    expected = [odd["id"], *tied[::-1]] if descending else [*tied, odd["id"]]
    assert ids(page) == expected


async def test_list_ties_stay_ordered_across_pages(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    posts = [await create_post(client, alice) for _ in range(7)]
    for post in posts:
        await set_columns(db, post["id"], likes=1)
    seen: list[int] = []
    for offset in range(0, 7, 3):
        seen += ids(await list_posts(client, sort="-likes", limit=3, offset=offset))
    assert seen == sorted((p["id"] for p in posts), reverse=True)


# --- paging -----------------------------------------------------------------------------------
async def test_list_pages_with_limit_offset_and_total(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    posts = [await create_post(client, alice) for _ in range(5)]
    everything = ids(await list_posts(client, sort="created_at"))
    assert everything == [p["id"] for p in posts]
    pages = [await list_posts(client, sort="created_at", limit=2, offset=o) for o in (0, 2, 4)]
    assert [ids(p) for p in pages] == [everything[0:2], everything[2:4], everything[4:]]
    assert all(p["total"] == 5 and p["limit"] == 2 for p in pages)
    assert [p["offset"] for p in pages] == [0, 2, 4]
    beyond = await list_posts(client, limit=2, offset=10)
    assert beyond["items"] == []
    assert beyond["total"] == 5


async def test_list_accepts_limit_bounds(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    for _ in range(2):
        await create_post(client, alice)
    assert len((await list_posts(client, limit=1))["items"]) == 1
    assert len((await list_posts(client, limit=100))["items"]) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"offset": -1},
        {"sort": "bogus"},
        {"sort": "--likes"},
        {"sort": "author"},
    ],
    ids=[
        "limit-0",
        "limit-101",
        "limit-text",
        "offset-neg",
        "sort-bogus",
        "sort-double-dash",
        "sort-unknown-column",
    ],
)
async def test_list_with_invalid_query_is_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await client.get("/api/posts", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "validation_error"


# --- filters ----------------------------------------------------------------------------------
async def test_list_q_searches_title_and_content_case_insensitively(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    in_title = await create_post(client, alice, title="Hello World", content="nothing here")
    in_content = await create_post(client, alice, title="Greeting", content="I say HELLO.")
    await create_post(client, alice, title="Other", content="Unrelated")
    page = await list_posts(client, q="hElLo", sort="created_at")
    assert ids(page) == [in_title["id"], in_content["id"]]
    assert page["total"] == 2
    assert ids(await list_posts(client, q="WORLD")) == [in_title["id"]]
    assert ids(await list_posts(client, q="absent")) == []


@pytest.mark.parametrize(
    ("q", "match"),
    [("100%", "100% sure"), ("e_c", None), ("\\", None), ("%", None), ("snake_case", "snake_case")],
    ids=["percent", "underscore", "backslash", "bare-percent", "joined-words"],
)
async def test_list_q_has_no_wildcards(
    client: httpx.AsyncClient, q: str, match: str | None
) -> None:
    """`q` finds whole words: LIKE's wildcards are punctuation, never patterns."""
    alice = await register(client)
    titles = ["100% sure", "1000 sure", "snake_case", "snakeXcase", "back\\slash", "plain"]
    posts = {t: await create_post(client, alice, title=t, content="x") for t in titles}
    page = await list_posts(client, q=q)
    assert ids(page) == ([] if match is None else [posts[match]["id"]])
    assert page["total"] == len(ids(page))


async def test_list_filters_by_every_repeated_tag(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    ab = await create_post(client, alice, tags=["a", "b"])
    await create_post(client, alice, tags=["a"])
    await create_post(client, alice, tags=["b"])
    abc = await create_post(client, alice, tags=["a", "b", "c"])
    page = await list_posts(client, tag=["a", "b"], sort="created_at")
    assert ids(page) == [ab["id"], abc["id"]]
    assert page["total"] == 2
    assert ids(await list_posts(client, tag=["A", "c"])) == [abc["id"]]
    assert len((await list_posts(client, tag="a"))["items"]) == 3
    assert ids(await list_posts(client, tag=["a", "nope"])) == []


async def test_list_filters_by_author_username(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    mine = [await create_post(client, alice) for _ in range(2)]
    await create_post(client, bob)
    page = await list_posts(client, author=alice.username, sort="created_at")
    assert ids(page) == [p["id"] for p in mine]
    assert page["total"] == 2
    assert all(i["author"]["username"] == alice.username for i in page["items"])
    empty = await list_posts(client, author="nobody_here")
    assert empty["items"] == []
    assert empty["total"] == 0


async def test_list_combines_filters(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    hit = await create_post(client, alice, title="FastAPI tips", tags=["python", "web"])
    await create_post(client, alice, title="FastAPI tips", tags=["python"])  # missing a tag
    await create_post(client, alice, title="Django tips", tags=["python", "web"])  # wrong q
    await create_post(client, bob, title="FastAPI tips", tags=["python", "web"])  # wrong author
    page = await list_posts(client, author=alice.username, tag=["python", "web"], q="fastapi")
    assert ids(page) == [hit["id"]]
    assert page["total"] == 1


async def test_list_items_have_post_out_shape(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice, tags=["b", "a"])
    page = await list_posts(client)
    assert set(page) == {"items", "total", "total_exact", "limit", "offset"}
    assert page["items"] == [post]


# --- drafts in lists --------------------------------------------------------------------------
async def test_anonymous_list_excludes_drafts(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    public = await create_post(client, alice)
    await create_post(client, alice, published=False)
    page = await list_posts(client)
    assert ids(page) == [public["id"]]
    assert page["total"] == 1


async def test_author_list_includes_own_drafts_but_not_others(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    public = await create_post(client, alice)
    alice_draft = await create_post(client, alice, published=False)
    await create_post(client, bob, published=False)
    page = await list_posts(client, alice, sort="created_at")
    assert ids(page) == [public["id"], alice_draft["id"]]
    assert page["total"] == 2
    assert [i["published"] for i in page["items"]] == [True, False]
    by_bob = await list_posts(client, alice, author=bob.username)
    assert by_bob["items"] == []
    assert by_bob["total"] == 0


async def test_admin_list_includes_every_draft(client: httpx.AsyncClient, db: AsyncSession) -> None:
    alice, bob = await register(client), await register(client)
    admin = await make_admin(db, await register(client))
    posts = [
        await create_post(client, alice),
        await create_post(client, alice, published=False),
        await create_post(client, bob, published=False),
    ]
    page = await list_posts(client, admin, sort="created_at")
    assert ids(page) == [p["id"] for p in posts]
    assert page["total"] == 3


async def test_drafts_are_not_found_by_search_or_tag_for_others(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = await register(client), await register(client)
    await create_post(client, alice, title="secret plan", tags=["hidden"], published=False)
    for who in (None, bob):
        assert (await list_posts(client, who, q="secret"))["total"] == 0
        assert (await list_posts(client, who, tag="hidden"))["total"] == 0
    assert (await list_posts(client, alice, q="secret"))["total"] == 1


# --- query count ------------------------------------------------------------------------------
async def test_list_sends_a_bounded_number_of_statements_whatever_the_page_size(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    authors = [await register(client) for _ in range(3)]
    viewer = await register(client)
    for n in range(30):
        author = authors[n % 3]
        post = await create_post(
            client, author, tags=[f"t{n % 4}", f"t{n % 5}", "all"], published=n % 7 != 0
        )
        if n % 2 == 0 and post["published"]:
            for liker in (viewer, authors[(n + 1) % 3]):
                like = await client.put(f"/api/posts/{post['id']}/like", headers=liker.headers)
                assert like.status_code == 204

    counts: dict[int, int] = {}
    for limit in (5, 30, 100):
        before = count_queries.count
        page = await list_posts(client, viewer, limit=limit, sort="-likes")
        counts[limit] = count_queries.count - before
        assert len(page["items"]) == min(limit, page["total"])
        assert any(i["liked_by_me"] for i in page["items"])
        assert all(i["tags"] and i["author"]["username"] for i in page["items"])
    assert max(counts.values()) <= MAX_LIST_QUERIES, counts
    assert len(set(counts.values())) == 1, counts


async def test_empty_search_is_no_filter(client: httpx.AsyncClient) -> None:
    writer = await register(client)
    await create_post(client, writer)
    response = await client.get("/api/posts", params={"q": ""})
    assert response.status_code == 200
    assert response.json()["total"] == 1
