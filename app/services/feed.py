"""A reader's feed: the published posts of the authors they follow, newest first."""

from __future__ import annotations

import json

from sqlalchemy import select

from app.models import Follow, Post
from app.schemas.common import CursorPage, CursorQuery
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


async def read_json(backends: Backends, viewer: Viewer, query: CursorQuery) -> bytes:
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
        items = [found[i] for i in members.ids if i in found and found[i].published]
        return (
            CursorPage[PostOut](items=items, next_cursor=members.next_cursor)
            .model_dump_json()
            .encode()
        )

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
