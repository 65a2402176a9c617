"""A reader's feed: the published posts of the authors they follow, newest first."""

from __future__ import annotations

import hashlib
import json

from pydantic_core import to_json
from sqlalchemy import ColumnElement, func, select

from app.models import Follow, Post
from app.schemas.common import CursorPage, CursorQuery, PageQuery
from app.schemas.post import PostOut
from app.services import paging, posts
from app.services.backends import Backends
from app.services.posts import Viewer
from app.stores.cache import (
    EPOCH,
    LIST_GENERATIONS,
    Slot,
    author_posts_generation,
    user_generation,
)

# Beyond this many authors followed, a feed page's membership is outdated by any post's change
# (the lists' generation) rather than by one generation per author.
MAX_AUTHOR_GENERATIONS = 200


async def _followed(backends: Backends, viewer: Viewer) -> list[int]:
    """Whom the viewer follows (cached; a follow or unfollow bumps the viewer's generation)."""
    cache = backends.stores.cache
    lookup = await cache.read(Slot((EPOCH, user_generation(viewer.id)), f"followed:{viewer.id}"))
    if lookup.value is not None:
        return [int(i) for i in json.loads(lookup.value)]
    async with backends.read_sessions() as db:
        ids = [
            int(i)
            for i in await db.scalars(
                select(Follow.followee_id).where(Follow.follower_id == viewer.id)
            )
        ]
    await cache.write(lookup, json.dumps(ids).encode())
    return ids


def _membership_generations(authors: list[int]) -> tuple[str, ...]:
    if len(authors) <= MAX_AUTHOR_GENERATIONS:
        return tuple(author_posts_generation(a) for a in authors)
    return LIST_GENERATIONS


def _conditions(viewer: Viewer) -> tuple[ColumnElement[bool], ...]:
    followed = select(Follow.followee_id).where(Follow.follower_id == viewer.id)
    return Post.published.is_(True), Post.author_id.in_(followed)


async def offset_page_json(backends: Backends, *, viewer: Viewer, query: PageQuery) -> bytes:
    """The feed as an offset page with its total (a `Page`), for clients that page by offset
    rather than by cursor (the RealWorld API). Cached in two steps like the cursor pages: which
    posts and how many (outdated by a follow or a followed author's post), then the page
    rendered (outdated by a change to one of its posts)."""
    cache = backends.stores.cache
    authors = await _followed(backends, viewer)
    page_key = f"{query.limit}:{query.offset}"
    membership = Slot(
        (EPOCH, user_generation(viewer.id), *_membership_generations(authors)),
        f"feed-offset:{viewer.id}:{page_key}",
    )
    lookup = await cache.read(membership)
    if lookup.value is not None:
        members = json.loads(lookup.value)
        ids, total = [int(i) for i in members["ids"]], int(members["total"])
    else:
        conditions = _conditions(viewer)
        stmt = (
            select(Post.id)
            .where(*conditions)
            .order_by(Post.created_at.desc(), Post.id.desc())
            .limit(query.limit)
            .offset(query.offset)
        )
        async with backends.read_sessions() as db:
            total = await db.scalar(select(func.count(Post.id)).where(*conditions)) or 0
            ids = [int(i) for i in await db.scalars(stmt)]
        await cache.write(lookup, json.dumps({"ids": ids, "total": total}).encode())
    # The ids are in the name: the generations alone could be equal for other posts.
    digest = hashlib.blake2b(json.dumps(ids).encode(), digest_size=12).hexdigest()
    lookup = await cache.read(
        Slot(
            (EPOCH, *(f"gen:post:{post_id}" for post_id in ids)),
            f"feed-offset-page:{viewer.id}:{page_key}:{total}:{digest}",
        )
    )
    if lookup.value is not None:
        return lookup.value
    async with backends.read_sessions() as db:
        found = await posts.posts_by_ids(db, backends.media, ids, viewer)
    items = [found[i] for i in ids if i in found and found[i]["published"]]
    # As `Page[PostOut]` serialises, in its order.
    body = to_json({"items": items, "total": total, "limit": query.limit, "offset": query.offset})
    await cache.write(lookup, body)
    return body


async def read_json(backends: Backends, *, viewer: Viewer, query: CursorQuery) -> bytes:
    scope = f"feed:{viewer.id}"
    at = paging.position(backends.cursors, scope, query.cursor)
    authors = await _followed(backends, viewer)
    if len(authors) <= MAX_AUTHOR_GENERATIONS:
        membership_generations = tuple(author_posts_generation(a) for a in authors)
    else:
        membership_generations = LIST_GENERATIONS
    page_key = paging.cursor_key(query.limit, query.cursor)

    async def load_members() -> paging.Members:
        stmt = (
            select(Post.id, Post.created_at)
            .where(
                Post.published.is_(True),
                Post.author_id.in_(
                    select(Follow.followee_id).where(Follow.follower_id == viewer.id)
                ),
            )
            .order_by(Post.created_at.desc(), Post.id.desc())
            .limit(query.limit + 1)
        )
        if (keyset := paging.after(at, Post.created_at, Post.id, descending=True)) is not None:
            stmt = stmt.where(keyset)
        async with backends.read_sessions() as db:
            rows = [(int(i), created) for i, created in (await db.execute(stmt)).all()]
        return paging.members(backends.cursors, scope, rows, query.limit)

    def rendered(members: paging.Members) -> Slot:
        # Each post's generation moves with its likes, comments, images and edits.
        generations = (f"gen:post:{post_id}" for post_id in members.ids)
        return Slot((EPOCH, *generations), f"feed-page:{viewer.id}:{page_key}")

    async def render(members: paging.Members) -> bytes:
        async with backends.read_sessions() as db:
            found = await posts.posts_by_ids(db, backends.media, members.ids, viewer)
        items = [found[i] for i in members.ids if i in found and found[i]["published"]]
        # As `CursorPage[PostOut]` serialises, in its order.
        return to_json({"items": items, "next_cursor": members.next_cursor})

    return await paging.cached_page(
        backends.stores.cache,
        Slot(
            (EPOCH, user_generation(viewer.id), *membership_generations),
            f"feed:{viewer.id}:{page_key}",
        ),
        load_members,
        rendered,
        render,
    )


async def read(backends: Backends, *, viewer: Viewer, query: CursorQuery) -> CursorPage[PostOut]:
    """As `read_json`, as a model (for other API shapes built on this one)."""
    return CursorPage[PostOut].model_validate_json(
        await read_json(backends, viewer=viewer, query=query)
    )
