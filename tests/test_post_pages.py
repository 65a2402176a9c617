"""GET /api/posts at any size: cursor pages, the offset cap, full-text search, the bounded
`total`, and the tag counts kept by the database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.models import Post, Tag
from app.models.post import post_tag
from app.schemas.post import MAX_OFFSET, SEARCH_MAX_LENGTH, PostQuery
from app.services import posts as post_service
from tests.conftest import QueryCounter
from tests.factories import Account, create_post, register

BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
SORTS = [
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "title",
    "-title",
    "likes",
    "-likes",
]
MAX_PAGE_QUERIES = 6


async def get_page(
    client: httpx.AsyncClient, who: Account | None = None, /, **params: Any
) -> dict[str, Any]:
    response = await client.get("/api/posts", params=params, headers=who.headers if who else {})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


async def walk(
    client: httpx.AsyncClient, who: Account | None = None, /, **params: Any
) -> list[list[int]]:
    """Every cursor page of a list, as its ids."""
    pages: list[list[int]] = []
    cursor = ""
    while True:
        page = await get_page(client, who, cursor=cursor, **params)
        assert set(page) == {"items", "next_cursor"}
        pages.append(ids(page))
        if page["next_cursor"] is None:
            return pages
        cursor = page["next_cursor"]
        assert len(pages) < 100


async def problem(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/posts", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


# --- cursor pages -----------------------------------------------------------------------------
@pytest.mark.parametrize("sort", SORTS)
async def test_cursor_pages_walk_every_sort_in_order(
    client: httpx.AsyncClient, db: AsyncSession, sort: str
) -> None:
    alice = await register(client)
    posts = [await create_post(client, alice) for _ in range(7)]
    # Ties on purpose (pairs share a key) so that the id tie-breaker is crossed between pages.
    for n, post in enumerate(posts):
        await db.execute(
            update(Post)
            .where(Post.id == post["id"])
            .values(
                created_at=BASE_TIME + timedelta(minutes=n // 2),
                updated_at=BASE_TIME - timedelta(minutes=n // 2),
                title=["b", "A", "c", "a", "B", "d", "C"][n],
                likes=n % 3,
            )
        )
    await db.commit()
    everything = ids(await get_page(client, sort=sort, limit=100))
    pages = await walk(client, sort=sort, limit=2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [i for p in pages for i in p] == everything


async def test_cursor_pages_have_no_duplicates_or_gaps_while_posts_are_written(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    before = [(await create_post(client, alice))["id"] for _ in range(6)]
    for sort in ("-created_at", "created_at"):
        seen: list[int] = []
        written: list[int] = []
        cursor = ""
        while cursor is not None:
            page = await get_page(client, sort=sort, limit=2, cursor=cursor)
            seen += ids(page)
            written.append((await create_post(client, alice))["id"])
            cursor = page["next_cursor"]
        assert len(seen) == len(set(seen))
        assert set(before) <= set(seen)
        if sort == "-created_at":  # newer posts land before the position: not on later pages
            assert set(seen).isdisjoint(written)
        before = [*before, *written]


async def test_a_changed_cursor_is_422(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    for _ in range(3):
        await create_post(client, alice)
    cursor = (await get_page(client, limit=1, cursor=""))["next_cursor"]
    assert cursor
    payload, signature = cursor.split(".")
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    for bad in (
        f"{flipped}.{signature}",
        f"{payload}.{signature[::-1]}",
        "not-a-cursor",
        "a.b.c",
        "é.é",
    ):
        body = await problem(client, limit=1, cursor=bad)
        assert body["code"] == "invalid_cursor"
    # A cursor belongs to its list: another sort or other filters cannot use it.
    assert (await problem(client, limit=1, cursor=cursor, sort="likes"))["code"] == (
        "invalid_cursor"
    )
    assert (await problem(client, limit=1, cursor=cursor, tag="x"))["code"] == "invalid_cursor"
    # Nor can another viewer (whose list holds other drafts).
    response = await client.get(
        "/api/posts", params={"limit": 1, "cursor": cursor}, headers=alice.headers
    )
    assert response.status_code == 422


async def test_cursor_and_offset_together_is_422(client: httpx.AsyncClient) -> None:
    await problem(client, cursor="", offset=5)


async def test_offset_is_capped(client: httpx.AsyncClient) -> None:
    assert (await get_page(client, offset=MAX_OFFSET))["items"] == []
    body = await problem(client, offset=MAX_OFFSET + 1)
    assert body["code"] == "validation_error"


async def test_cursor_pages_hide_others_drafts(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    draft = await create_post(client, alice, published=False, title="secret plan")
    shown = await create_post(client, alice, title="open plan")
    for who in (None, bob):
        pages = await walk(client, who, limit=1)
        assert draft["id"] not in [i for p in pages for i in p]
        assert ids(await get_page(client, who, q="plan", cursor="")) == [shown["id"]]
    assert set(ids(await get_page(client, alice, q="plan", cursor=""))) == {
        draft["id"],
        shown["id"],
    }


# --- search -----------------------------------------------------------------------------------
async def test_search_finds_words_in_title_summary_and_content(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    title = await create_post(client, alice, title="Walrus facts", content="x")
    summary = await create_post(client, alice, title="a", summary="all about WALRUS", content="x")
    content = await create_post(client, alice, title="b", content="The walrus is large.")
    await create_post(client, alice, title="c", content="walruses are not a walrus-free zone")
    await create_post(client, alice, title="d", content="nothing here")
    found = ids(await get_page(client, q="walrus", sort="created_at"))
    assert found[:3] == [title["id"], summary["id"], content["id"]]
    assert len(found) == 4  # "walrus-free" holds the word too; "walruses" alone would not


async def test_search_follows_edits_and_deletes(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    post = await create_post(client, alice, title="before", content="x")
    assert ids(await get_page(client, q="before")) == [post["id"]]
    response = await client.patch(
        f"/api/posts/{post['id']}", json={"title": "after"}, headers=alice.headers
    )
    assert response.status_code == 200
    assert ids(await get_page(client, q="before")) == []
    assert ids(await get_page(client, q="after")) == [post["id"]]
    await client.delete(f"/api/posts/{post['id']}", headers=alice.headers)
    assert ids(await get_page(client, q="after")) == []


async def test_relevance_puts_title_matches_first(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    in_content = await create_post(client, alice, title="one", content="a narwhal swims")
    in_title = await create_post(client, alice, title="Narwhal", content="x")
    in_summary = await create_post(client, alice, title="two", summary="narwhal", content="x")
    expected = [in_title["id"], in_summary["id"], in_content["id"]]
    assert ids(await get_page(client, q="narwhal", sort="relevance")) == expected
    assert [i for p in await walk(client, q="narwhal", sort="relevance", limit=1) for i in p] == (
        expected
    )


async def test_relevance_needs_a_search(client: httpx.AsyncClient) -> None:
    await problem(client, sort="relevance")
    await problem(client, sort="relevance", q="  ")


async def test_web_search_syntax(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    cats = await create_post(client, alice, title="cats and dogs", content="x")
    cats_only = await create_post(client, alice, title="dogs and cats only", content="x")
    birds = await create_post(client, alice, title="birds", content="x")
    assert set(ids(await get_page(client, q="cats dogs"))) == {cats["id"], cats_only["id"]}
    assert ids(await get_page(client, q='"cats and dogs"')) == [cats["id"]]
    assert ids(await get_page(client, q="cats -only")) == [cats["id"]]
    assert set(ids(await get_page(client, q="birds OR only"))) == {birds["id"], cats_only["id"]}


# PostgreSQL's `websearch_to_tsquery` reading of each text (printed beside it), which the
# embedded mode's FTS5 search follows: the same posts in both modes.
WEB_SEARCHES = [
    ("cats or dogs", "'cats' | 'dogs'", {"cats", "dogs", "both"}),
    ("cats OR dogs", "'cats' | 'dogs'", {"cats", "dogs", "both"}),
    ("cats dogs OR birds", "'cats' & 'dogs' | 'birds'", {"both", "birds"}),
    ("-cats", "!'cats'", {"dogs", "birds", "either"}),
    ("dogs -cats", "'dogs' & !'cats'", {"dogs"}),
    ("dogs - cats", "'dogs' & !'cats'", {"dogs"}),
    ("--cats", "!!'cats'", {"cats", "both"}),
    ("birds OR -dogs", "'birds' | !'dogs'", {"cats", "birds", "either"}),
    ('-"cats and dogs" cats', "!( 'cats' <-> 'and' <-> 'dogs' ) & 'cats'", {"cats"}),
    ("either or", "'either' & 'or'", {"either"}),
    ("or either", "'or' & 'either'", {"either"}),
    ("cats or or either", "'cats' | 'or' & 'either'", {"cats", "both", "either"}),
    ("cats OR * birds", "'cats' | 'birds'", {"cats", "both", "birds"}),
    ("cats OR -", "'cats'", {"cats", "both"}),
]


@pytest.mark.parametrize(("q", "tsquery", "expected"), WEB_SEARCHES)
async def test_both_modes_read_a_web_search_as_postgresql_does(
    client: httpx.AsyncClient, q: str, tsquery: str, expected: set[str]
) -> None:
    alice = await register(client)
    titles = {
        "cats": "cats purr",
        "dogs": "dogs bark",
        "both": "cats and dogs",
        "birds": "birds sing",
        "either": "either this or that",
    }
    names = {
        (await create_post(client, alice, title=t, content="x"))["id"]: n for n, t in titles.items()
    }
    for params in ({}, {"sort": "relevance"}, {"cursor": ""}):
        found = {names[i] for i in ids(await get_page(client, q=q, **params))}
        assert found == expected, f"{q!r} is {tsquery} on PostgreSQL"


async def test_a_relevance_cursor_walk_survives_posts_added_between_pages(
    client: httpx.AsyncClient,
) -> None:
    """A post's rank depends on its own words only (not on how many posts hold them), so
    posts written between two pages neither repeat nor hide those already there."""
    alice = await register(client)
    present = [
        (await create_post(client, alice, title=f"otter {n}", content="otter " * n))["id"]
        for n in range(1, 9)
    ]
    seen: list[int] = []
    cursor = ""
    for n in range(20):
        page = await get_page(client, q="otter", sort="relevance", limit=2, cursor=cursor)
        seen += ids(page)
        # New posts, some ranked above the cursor and some below, and some that change the
        # word's frequency in the whole table.
        await create_post(client, alice, title="otter otter", content="otter " * (n % 5) + "x")
        await create_post(client, alice, title=f"unrelated {n}", content="words")
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), "a post came twice"
    assert set(present) <= set(seen), "a post was skipped"


@pytest.mark.parametrize(
    "q",
    [
        '"',
        '"unbalanced',
        "'",
        "-",
        "--x",
        "OR",
        "OR OR",
        "a OR",
        "*",
        "a*",
        "(",
        "(a OR b",
        ")",
        "NOT",
        "a AND NOT b",
        "NEAR(a b)",
        "title:x",
        "^a",
        "a & b | !c <-> d",
        ":*",
        "\\",
        "😀 emoji",
        "😀",
        "ünïcödé",
        "x" * SEARCH_MAX_LENGTH,
        "a " * (SEARCH_MAX_LENGTH // 2),
        "%_%",
        "' OR 1=1 --",
    ],
)
async def test_any_search_text_is_a_valid_query(client: httpx.AsyncClient, q: str) -> None:
    alice = await register(client)
    await create_post(client, alice, title="a b c x", content="d")
    for params in ({}, {"sort": "relevance"}, {"cursor": ""}):
        await get_page(client, q=q, **params)


async def test_search_text_is_bounded(client: httpx.AsyncClient) -> None:
    await problem(client, q="x" * (SEARCH_MAX_LENGTH + 1))
    await problem(client, q="a\x00b")


# --- total ------------------------------------------------------------------------------------
async def test_total_is_exact_up_to_the_cap(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(post_service, "TOTAL_CAP", 3)
    alice = await register(client)
    for _ in range(5):
        await create_post(client, alice)
    page = await get_page(client, limit=2)
    assert (page["total"], page["total_exact"]) == (3, False)
    # Never short of the page shown: a page reaching past the cap counts up to its end.
    page = await get_page(client, limit=2, offset=2)
    assert (page["total"], page["total_exact"]) == (4, False)
    page = await get_page(client, limit=10)
    assert (page["total"], page["total_exact"]) == (5, True)
    page = await get_page(client, limit=2, author=alice.username, q="absent")
    assert (page["total"], page["total_exact"]) == (0, True)


# --- tag counts -------------------------------------------------------------------------------
async def tag_counts(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/api/tags", params={"limit": 100})
    assert response.status_code == 200
    return {t["name"]: t["count"] for t in response.json()}


async def test_tag_counts_follow_every_change(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    one = await create_post(client, alice, tags=["a", "b"])
    two = await create_post(client, bob, tags=["a"])
    draft = await create_post(client, alice, tags=["a", "c"], published=False)
    assert await tag_counts(client) == {"a": 2, "b": 1}

    async def patch(post: dict[str, Any], who: Account, **changes: Any) -> None:
        response = await client.patch(f"/api/posts/{post['id']}", json=changes, headers=who.headers)
        assert response.status_code == 200, response.text

    await patch(draft, alice, published=True)
    assert await tag_counts(client) == {"a": 3, "b": 1, "c": 1}
    await patch(one, alice, tags=["b", "c", "d"])
    assert await tag_counts(client) == {"a": 2, "b": 1, "c": 2, "d": 1}
    await patch(one, alice, published=False)
    assert await tag_counts(client) == {"a": 2, "c": 1}
    await patch(one, alice, published=True, tags=["d"])
    assert await tag_counts(client) == {"a": 2, "c": 1, "d": 1}
    response = await client.put(
        f"/api/posts/{two['id']}",
        json={"title": "t", "content": "c", "published": True, "tags": ["e"]},
        headers=bob.headers,
    )
    assert response.status_code == 200
    assert await tag_counts(client) == {"a": 1, "c": 1, "d": 1, "e": 1}
    assert (
        await client.delete(f"/api/posts/{draft['id']}", headers=alice.headers)
    ).status_code == (204)
    assert await tag_counts(client) == {"d": 1, "e": 1}
    # A deleted account takes its posts, and their counts, with it.
    assert (await client.delete("/api/users/me", headers=alice.headers)).status_code == 204
    assert await tag_counts(client) == {"e": 1}


# --- cost -------------------------------------------------------------------------------------
async def test_cursor_pages_send_a_bounded_number_of_statements(
    client: httpx.AsyncClient, count_queries: QueryCounter
) -> None:
    viewer = await register(client)
    for n in range(30):
        post = await create_post(client, viewer, tags=[f"t{n % 4}", "all"], content="needle")
        if n % 2 == 0:
            await client.put(f"/api/posts/{post['id']}/like", headers=viewer.headers)
    counts: set[int] = set()
    for limit in (5, 30, 100):
        variants: list[dict[str, Any]] = [
            {"cursor": ""},
            {"q": "needle"},
            {"q": "needle", "sort": "relevance"},
        ]
        for params in variants:
            before = count_queries.count
            page = await get_page(client, viewer, limit=limit, **params)
            counts.add(count_queries.count - before)
            assert all(i["tags"] for i in page["items"])
            assert any(i["liked_by_me"] for i in page["items"])
    assert max(counts) <= MAX_PAGE_QUERIES, counts


async def test_tag_counts_stay_exact_under_concurrent_edits(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    alice = await register(client)
    posts = [await create_post(client, alice, tags=["x", "y"]) for _ in range(4)]
    changes: list[dict[str, Any]] = [
        {"published": False},
        {"tags": ["x"]},
        {"published": True, "tags": ["y", "z"]},
        {"tags": ["x", "y", "z"]},
        {"published": False, "tags": []},
        {"published": True},
    ]

    async def edit(post: dict[str, Any], change: dict[str, Any]) -> None:
        response = await client.patch(
            f"/api/posts/{post['id']}", json=change, headers=alice.headers
        )
        assert response.status_code == 200, response.text

    for change in changes:
        await asyncio.gather(*(edit(post, change) for post in posts))
        await asyncio.gather(*(edit(post, changes[(i * 2) % 6]) for i, post in enumerate(posts)))
    counted = await db.execute(
        select(Tag.name, func.count(post_tag.c.post_id))
        .join(post_tag, post_tag.c.tag_id == Tag.id)
        .join(Post, Post.id == post_tag.c.post_id)
        .where(Post.published.is_(True))
        .group_by(Tag.name)
    )
    assert await tag_counts(client) == dict(counted.tuples().all())


# --- lists narrowed to few posts ----------------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    id: int
    is_admin: bool = False


async def list_ids(app: FastAPI, viewer: Reader | None, **params: Any) -> list[list[int]]:
    """The pages of a list as the service gives them (no response cache): by cursor when
    `cursor` is given, else by offset until a page is short."""
    pages: list[list[int]] = []
    backends = app.state.backends
    offset, cursor = 0, params.pop("cursor", None)
    while len(pages) < 50:
        paging = {"cursor": cursor} if cursor is not None else {"offset": offset}
        query = PostQuery.model_validate(params | paging)
        async with backends.read_sessions() as session:
            page = await post_service.list_posts(session, backends, query=query, viewer=viewer)
        pages.append([item["id"] for item in page["items"]])
        if "total" in page:
            offset += query.limit
            if len(page["items"]) < query.limit:
                return pages
        elif (cursor := page["next_cursor"]) is None:
            return pages
    raise AssertionError("endless list")


async def test_narrowed_lists_page_alike_from_few_matches_or_down_the_index(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A search, a tag or a reader's likes matching no more than TOTAL_CAP posts is paged from
    # its matches; more, and down the sort's index; a cursor page first looks among the next
    # NEXT_PAGES pages' worth of posts. All give the same pages.
    alice, bob = await register(client), await register(client)
    posts = []
    for n in range(9):
        post = await create_post(
            client,
            alice if n % 3 else bob,
            title=["b", "A", "c", "a", "B", "d", "C", "e", "f"][n] + " needle" * (n % 2),
            content="needle" if n % 3 != 1 else "hay",
            tags=["x"] if n % 4 else ["x", "y"],
            published=n != 4,
        )
        posts.append(post)
        if n % 2:
            response = await client.put(f"/api/posts/{post['id']}/like", headers=bob.headers)
            assert response.status_code in (200, 204), response.text
    for n, post in enumerate(posts):  # ties, so that the id tie-breaker is crossed
        await db.execute(
            update(Post)
            .where(Post.id == post["id"])
            .values(created_at=BASE_TIME + timedelta(minutes=n // 2), likes=n % 3)
        )
    await db.commit()
    viewers = [None, Reader(alice.id), Reader(bob.id, is_admin=True)]
    lists: list[dict[str, Any]] = [
        {"tag": ["x"]},
        {"tag": ["X ", "x"]},
        {"tag": ["x", "y"]},
        {"q": "needle"},
        {"q": "needle", "sort": "relevance"},
        {"q": "needle", "tag": ["x"], "sort": "title"},
        {"favorited_by": bob.username, "sort": "-likes"},
        {"tag": ["x"], "sort": "-updated_at"},
    ]
    for viewer in viewers:
        for narrowed in lists:
            for paging in ({}, {"cursor": ""}):
                params = {"limit": 2, **narrowed, **paging}
                ways = []
                # Cursor pages look among the next posts first, then count up to the cap.
                for cap, next_pages in ((1000, 10), (1, 10), (1000, 0), (1, 0)):
                    monkeypatch.setattr(post_service, "TOTAL_CAP", cap)
                    monkeypatch.setattr(post_service, "NEXT_PAGES", next_pages)
                    ways.append(await list_ids(app, viewer, **params))
                assert ways[0] == ways[1] == ways[2] == ways[3], (viewer, params)
                flat = [i for p in ways[0] for i in p]
                assert len(flat) == len(set(flat)) > 1, (viewer, params)
    # An anonymous reader of one tag is told the count the tag keeps: published posts only.
    monkeypatch.setattr(post_service, "TOTAL_CAP", 1000)
    page = await get_page(client, tag="y", limit=1)
    assert (page["total"], page["total_exact"]) == (2, True)  # posts 0 and 8; 4 is a draft
    monkeypatch.setattr(post_service, "TOTAL_CAP", 1)
    page = await get_page(client, tag="x", limit=1, offset=0)
    assert (page["total"], page["total_exact"]) == (1, False)


async def explained(db: AsyncSession, statement: str, parameters: Any) -> str:
    """PostgreSQL's plan for a statement as the app sent it, with every index preferred to a
    scan of the table (as it would be at a million rows, not the few of a test)."""
    await db.execute(text("SET LOCAL enable_seqscan = off"))
    await db.execute(text("SET LOCAL enable_sort = off"))
    connection = await db.connection()
    result = await connection.exec_driver_sql("EXPLAIN " + statement, parameters)
    plan = "\n".join(row[0] for row in result)
    await db.rollback()
    return plan


async def test_postgres_pages_few_matches_from_their_index_and_starts_a_cursor_at_it(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession, engine: AsyncEngine
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plans")
    alice = await register(client)
    for n in range(30):
        await create_post(client, alice, content=f"needle {n}", tags=["x"])
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await list_ids(app, None, limit=5, q="zqxjvwk")
        absent = [s for s in sent if "websearch_to_tsquery" in s[0]]
        sent.clear()
        await list_ids(app, None, limit=5, cursor="")
        cursor_pages = [s for s in sent if "ORDER BY post.created_at DESC" in s[0]]
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    # A word no post has: the page is sorted from the matches, found through the GIN index,
    # never by walking the newest-first index (which reads every row for a word that is
    # nowhere).
    page = absent[-1]
    assert "AS MATERIALIZED" in page[0]
    plan = await explained(db, *page)
    assert "ix_post_search_vector" in plan, plan
    assert "ix_post_created_at_id" not in plan, plan
    # A cursor page starts its walk of the index at the cursor, not from the top.
    plan = await explained(db, *cursor_pages[-1])
    assert "Index Cond: (created_at <=" in plan.replace("post.created_at", "created_at"), plan
