"""Post reads build their JSON from plain rows, in one statement: the bytes must be exactly what
the `PostOut` / `PostPage` / `CursorPage` models serialise the same posts to, for every kind of
post (drafts, tags, images in each state, likes) and every kind of viewer."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic_core import to_json
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Image, Post, PostLike, Tag, User
from app.models.user import Role
from app.schemas.common import CursorPage
from app.schemas.post import PostOut, PostPage, PostQuery
from app.services import posts
from app.services.backends import Backends
from tests.conftest import QueryCounter

BASE = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Reader:
    id: int
    is_admin: bool = False


class FixedMedia:
    """URLs that do not depend on the time: the two renderings of one post must agree."""

    def url(self, key: str, filename: str) -> str:
        return f"https://cdn.test/images/{key}/{filename}"

    def signed_url(self, key: str, filename: str, *, now: float | None = None) -> str:
        return f"https://cdn.test/images/{key}/{filename}?expires=1&sig=private"


def _variants(key: str) -> dict[str, Any]:
    names = (
        ("original", "jpg", 4000, 3000),
        ("large", "webp", 1280, 960),
        ("thumb", "webp", 200, 200),
    )
    return {
        name: {"url": f"/media/images/{key}/{name}.{ext}", "width": w, "height": h, "bytes": w * 7}
        for name, ext, w, h in names
    }


def _image(post: Post, state: str, n: int) -> Image:
    key = secrets.token_hex(16)
    return Image(
        post_id=post.id,
        storage_key=key,
        status=state,
        alt="" if n % 2 else 'A "quoted" alt — ünïcode',
        format="JPEG" if n % 2 else "png",
        width=4000,
        height=3000,
        bytes=123_456 + n,
        variants=_variants(key) if state == "ready" else {},
        failure_reason="The image could not be processed." if state == "failed" else None,
        task_id=f"00000000-0000-4000-8000-{n:012d}",
        created_at=BASE + timedelta(seconds=n, microseconds=n * 1000),
        updated_at=BASE,
    )


async def _seed(db: AsyncSession) -> dict[str, User]:
    """Three users and eleven posts of every shape; the admin and bob like some."""
    people = {
        name: User(
            email=f"{name}@example.com",
            username=name,
            password_hash="x",
            role=Role.ADMIN if name == "root" else Role.USER,
            image="https://img.test/alice.png" if name == "alice" else None,
            is_verified=True,
        )
        for name in ("alice", "bob", "root")
    }
    db.add_all(people.values())
    tags = {name: Tag(name=name) for name in ("zeta", "alpha", "b-2", "b_1", "0day")}
    db.add_all(tags.values())
    await db.flush()
    shapes = []
    for n in range(11):
        author = people["alice"] if n % 3 else people["bob"]
        post = Post(
            author_id=author.id,
            title=f'Post {n} <&> "quoted" ✓',
            slug=f"post-{n}",
            summary=None if n % 4 == 0 else f"Summary {n}\twith\ncontrol \x01 and é",
            content=f"Content {n} " * (n + 1),
            published=n % 3 != 1,  # drafts: 1, 4, 7, 10
            likes=n,
            comments_count=n * 2,
            # Whole seconds for some, microseconds for others: both formats are rendered.
            created_at=BASE + timedelta(minutes=n, microseconds=0 if n % 2 else 1000 * n + 7),
            updated_at=BASE + timedelta(hours=n, microseconds=n),
        )
        post.tags = [list(tags.values())[i] for i in range(n % 5)]
        post.images = []
        db.add(post)
        shapes.append(post)
    await db.flush()
    for n, post in enumerate(shapes):
        for i, state in enumerate(("pending", "ready", "failed")[: n % 4]):
            db.add(_image(post, state, n * 10 + i))
        if n % 2:
            db.add(PostLike(post_id=post.id, user_id=people["bob"].id, created_at=BASE))
        if n % 3 == 0:
            db.add(PostLike(post_id=post.id, user_id=people["root"].id, created_at=BASE))
    await db.commit()
    return people


async def _expected(
    db: AsyncSession, viewer: Reader | None, media: FixedMedia
) -> dict[int, PostOut]:
    """What the models make of the posts this viewer may see, loaded as ORM entities."""
    stmt = posts._with_relations(select(Post)).execution_options(populate_existing=True)
    if (visible := posts._visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    found = (await db.scalars(stmt)).unique().all()
    liked = await posts._liked(db, viewer, [p.id for p in found])
    return {p.id: posts.to_out(p, media, liked=p.id in liked) for p in found}  # type: ignore[arg-type]


def _backends(app: FastAPI) -> Backends:
    backends: Backends = app.state.backends
    return dataclasses.replace(backends, media=FixedMedia())  # type: ignore[arg-type]


def _viewers(people: dict[str, User]) -> list[Reader | None]:
    return [
        None,
        Reader(people["alice"].id),
        Reader(people["bob"].id),
        Reader(people["root"].id, is_admin=True),
    ]


async def test_reads_and_pages_are_the_models_json_byte_for_byte(
    app: FastAPI, db: AsyncSession
) -> None:
    people = await _seed(db)
    backends = _backends(app)
    media = FixedMedia()
    for viewer in _viewers(people):
        expected = await _expected(db, viewer, media)
        assert len(expected) >= 7  # the published ones, at least
        # One post at a time.
        for post_id, out in expected.items():
            body = await posts.read_json(backends, post_id=post_id, viewer=viewer)
            assert body == out.model_dump_json().encode()
        # A batch by ids (the feed's), with ids the viewer may not see.
        every = list(range(1, 13))
        by_ids = await posts.posts_by_ids(db, media, every, viewer)  # type: ignore[arg-type]
        assert sorted(by_ids) == sorted(expected)
        for post_id, fields in by_ids.items():
            assert to_json(fields) == expected[post_id].model_dump_json().encode()
        newest = sorted(expected.values(), key=lambda p: (p.created_at, p.id), reverse=True)
        # An offset page: all of them, then a short page further in.
        for limit, offset in ((100, 0), (3, 2)):
            query = PostQuery(limit=limit, offset=offset)
            page = await posts.list_posts(db, backends, query=query, viewer=viewer)
            model = PostPage(
                items=newest[offset : offset + limit],
                total=len(newest),
                total_exact=True,
                limit=limit,
                offset=offset,
            )
            assert to_json(page) == model.model_dump_json().encode()
            listed = await posts.list_json(backends, query=query, viewer=viewer)
            assert listed == model.model_dump_json().encode()
        # Cursor pages, walked to the end, sorted by something else.
        by_likes = sorted(expected.values(), key=lambda p: (p.likes, p.id))
        cursor: str | None = ""
        seen: list[dict[str, Any]] = []
        while cursor is not None:
            query = PostQuery(limit=4, cursor=cursor, sort="likes")
            page = await posts.list_posts(db, backends, query=query, viewer=viewer)
            cursor_page = CursorPage[PostOut](
                items=by_likes[len(seen) : len(seen) + 4], next_cursor=page["next_cursor"]
            )
            assert to_json(page) == cursor_page.model_dump_json().encode()
            seen += page["items"]
            cursor = page["next_cursor"]
        assert len(seen) == len(by_likes)


async def test_a_tag_filter_and_an_empty_page_render_like_the_models(
    app: FastAPI, db: AsyncSession
) -> None:
    people = await _seed(db)
    backends = _backends(app)
    viewer = Reader(people["alice"].id)
    expected = await _expected(db, viewer, FixedMedia())
    tagged = sorted(
        (p for p in expected.values() if "alpha" in p.tags),
        key=lambda p: (p.title.lower(), p.id),
    )
    query = PostQuery(tag=["ALPHA"], sort="title")
    page = await posts.list_posts(db, backends, query=query, viewer=viewer)
    model = PostPage(items=tagged, total=len(tagged), total_exact=True, limit=20, offset=0)
    assert to_json(page) == model.model_dump_json().encode()
    # Past the end: no rows, yet the total is counted.
    query = PostQuery(offset=50)
    page = await posts.list_posts(db, backends, query=query, viewer=viewer)
    model = PostPage(items=[], total=len(expected), total_exact=True, limit=20, offset=50)
    assert to_json(page) == model.model_dump_json().encode()


@pytest.mark.parametrize("who", ["anon", "bob", "root"])
async def test_one_statement_per_read_and_per_page(
    app: FastAPI, db: AsyncSession, count_queries: QueryCounter, who: str
) -> None:
    people = await _seed(db)
    backends = _backends(app)
    viewer = None if who == "anon" else Reader(people[who].id, is_admin=who == "root")
    queries = [
        PostQuery(),
        PostQuery(limit=3, offset=3, sort="-likes"),
        PostQuery(tag=["alpha", "zeta"], author="alice"),
        PostQuery(q="content", sort="relevance"),
        PostQuery(cursor="", limit=2),
    ]
    before = count_queries.count
    await posts.read_json(backends, post_id=1, viewer=viewer)
    assert count_queries.count - before == 1
    postgres = db.get_bind().dialect.name == "postgresql"
    for query in queries:
        before = count_queries.count
        await posts.list_json(backends, query=query, viewer=viewer)
        # On PostgreSQL a list narrowed by tags or a search counts its matches first, to page
        # few of them from the matches alone (posts._narrowed).
        narrowed = postgres and (bool(query.tag) or query.search is not None)
        assert count_queries.count - before == (2 if narrowed else 1), query
    async with backends.read_sessions() as session:
        before = count_queries.count
        await posts.posts_by_ids(session, backends.media, [1, 2, 3, 5, 8], viewer)
        assert count_queries.count - before == 1
