"""Posts, their tags and likes: rules, queries and the mapping to the API's shape."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Select, delete, exists, false, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from app.core import slugs
from app.core.media import MediaStorage
from app.database.types import utcnow
from app.database.upsert import insert_ignoring_conflicts
from app.errors import EmailNotVerified, NotPostAuthor, PostNotFound
from app.models import Post, PostLike, Tag, User, post_tag
from app.schemas.common import Page
from app.schemas.post import (
    AuthorOut,
    PostCreate,
    PostOut,
    PostPatch,
    PostQuery,
    PostReplace,
    TagCount,
)
from app.services import images
from app.services.backends import Backends
from app.stores.cache import (
    LIST_GENERATIONS,
    author_generations,
    list_slot,
    post_generations,
    post_slot,
    slug_generation,
    slug_slot,
)

_SORT_COLUMNS: dict[str, Any] = {
    "created_at": Post.created_at,
    "updated_at": Post.updated_at,
    "title": func.lower(Post.title),
    "likes": Post.likes,
}
LIKE_ESCAPE = "\\"


def _with_relations(stmt: Select[Post]) -> Select[Post]:
    return stmt.options(joinedload(Post.author), selectinload(Post.tags), selectinload(Post.images))


class Viewer(Protocol):
    """Who is reading: a signed-in principal or a loaded user (`None` for anonymous)."""

    @property
    def id(self) -> int: ...

    @property
    def is_admin(self) -> bool: ...


def _viewer_key(viewer: Viewer | None) -> str:
    # Answers differ per viewer (drafts, `liked_by_me`): each viewer has their own entries.
    if viewer is None:
        return "anon"
    return f"{viewer.id}.{'admin' if viewer.is_admin else 'user'}"


def _visible_to(viewer: Viewer | None) -> ColumnElement[bool] | None:
    """Drafts are seen by their author and administrators only."""
    if viewer is None:
        return Post.published.is_(True)
    if viewer.is_admin:
        return None
    return or_(Post.published.is_(True), Post.author_id == viewer.id)


async def get_visible(db: AsyncSession, *, post_id: int, viewer: Viewer | None) -> Post:
    stmt = _with_relations(select(Post).where(Post.id == post_id))
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    post = await db.scalar(stmt)
    if post is None:
        raise PostNotFound
    return post


async def get_visible_by_slug(db: AsyncSession, *, slug: str, viewer: Viewer | None) -> Post:
    """As `get_visible`, the post found by its slug."""
    stmt = _with_relations(select(Post).where(Post.slug == slug))
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    post = await db.scalar(stmt)
    if post is None:
        raise PostNotFound
    return post


def ensure_can_edit(post: Post, user: Viewer) -> Post:
    if post.author_id != user.id and not user.is_admin:
        raise NotPostAuthor
    return post


async def read_json(backends: Backends, *, post_id: int, viewer: Viewer | None) -> bytes:
    """The post as this viewer sees it, as JSON: from the cache when it is fresh, otherwise
    from one query (post, author, tags, images and the viewer's like together)."""
    cache = backends.stores.cache
    lookup = await cache.read(post_slot(post_id, _viewer_key(viewer)))
    if lookup.value is not None:
        return lookup.value
    liked = (
        exists().where(PostLike.post_id == Post.id, PostLike.user_id == viewer.id)
        if viewer is not None
        else false()
    )
    stmt = (
        select(Post, liked)
        .options(joinedload(Post.author), joinedload(Post.tags), joinedload(Post.images))
        .where(Post.id == post_id)
    )
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    async with backends.read_sessions() as db:
        row = (await db.execute(stmt)).unique().first()
    if row is None:
        raise PostNotFound
    body = to_out(row[0], backends.media, liked=bool(row[1])).model_dump_json().encode()
    await cache.write(lookup, body)
    return body


async def read_json_by_slug(backends: Backends, *, slug: str, viewer: Viewer | None) -> bytes:
    """As `read_json`, the post found by its slug (which never changes, so it is cached)."""
    return await read_json(backends, post_id=await id_by_slug(backends, slug), viewer=viewer)


async def id_by_slug(backends: Backends, slug: str) -> int:
    """The id of the post with this slug (cached: a slug never moves to another post), whoever
    may see it; `PostNotFound` when there is none."""
    cache = backends.stores.cache
    lookup = await cache.read(slug_slot(slug))
    if lookup.value is not None:
        return int(lookup.value)
    async with backends.read_sessions() as db:
        post_id = await db.scalar(select(Post.id).where(Post.slug == slug))
    if post_id is None:
        raise PostNotFound
    await cache.write(lookup, str(post_id).encode())
    return post_id


async def list_json(backends: Backends, *, query: PostQuery, viewer: Viewer | None) -> bytes:
    """One page of posts as JSON, from the cache when it is fresh."""
    cache = backends.stores.cache
    query_key = hashlib.blake2b(query.model_dump_json().encode(), digest_size=12).hexdigest()
    lookup = await cache.read(list_slot(query_key, _viewer_key(viewer)))
    if lookup.value is not None:
        return lookup.value
    async with backends.read_sessions() as db:
        page = await list_posts(db, backends, query=query, viewer=viewer)
    body = page.model_dump_json().encode()
    await cache.write(lookup, body)
    return body


async def create(
    db: AsyncSession, backends: Backends, *, author: User, data: PostCreate, retried: bool = False
) -> PostOut:
    if data.published and backends.settings.require_email_verification and not author.is_verified:
        raise EmailNotVerified
    now = utcnow()
    post = Post(
        author_id=author.id,
        title=data.title,
        slug=await _free_slug(db, data.title),
        summary=data.summary,
        content=data.content,
        published=data.published,
        likes=0,
        comments_count=0,
        created_at=now,
        updated_at=now,
    )
    post.author = author
    post.images = []
    post.tags = await _tags_named(db, data.tags)
    db.add(post)
    try:
        await db.commit()
    except IntegrityError:  # another post took the slug meanwhile: a random suffix then
        await db.rollback()
        if retried:
            raise
        await db.refresh(author)
        return await create(db, backends, author=author, data=data, retried=True)
    await backends.stores.cache.bump(*LIST_GENERATIONS, *author_generations(author.id))
    return to_out(post, backends.media, liked=False)


async def _free_slug(db: AsyncSession, title: str) -> str:
    """The title's slug, or with the first free numeric suffix when it is taken."""
    base = slugs.slug_base(title)
    taken = set(
        await db.scalars(
            select(Post.slug).where(
                or_(Post.slug == base, Post.slug.startswith(base + "-", autoescape=True))
            )
        )
    )
    if base not in taken and base not in slugs.RESERVED:
        return base
    n = 2
    while slugs.with_suffix(base, n) in taken:
        n += 1
    return slugs.with_suffix(base, n)


async def change(
    db: AsyncSession,
    backends: Backends,
    *,
    post: Post,
    changes: PostReplace | PostPatch,
    viewer: Viewer,
) -> PostOut:
    values = changes.model_dump(exclude_unset=not isinstance(changes, PostReplace))
    if not values:  # an empty PATCH changes nothing, not even updated_at
        return await get_out(db, backends, post=post, viewer=viewer)
    verify = backends.settings.require_email_verification
    if values.get("published") and not post.published and verify:
        verified = await db.scalar(select(User.is_verified).where(User.id == post.author_id))
        if not verified:
            raise EmailNotVerified
    tags = values.pop("tags", None)
    was_published = post.published
    for field, value in values.items():
        setattr(post, field, value)
    if tags is not None:
        post.tags = await _tags_named(db, tags)
    post.updated_at = utcnow()
    await db.commit()
    if post.published != was_published:
        keys = [image.storage_key for image in post.images]
        await images.set_visibility(backends.media, keys, post.published)
    await backends.stores.cache.bump(
        *post_generations(post.id), *author_generations(post.author_id)
    )
    liked = await _liked(db, viewer, [post.id]) == {post.id}
    return to_out(post, backends.media, liked=liked)


async def delete_post(db: AsyncSession, backends: Backends, *, post: Post) -> None:
    """Delete the post with its likes, tags links and images (files included)."""
    image_keys = [image.storage_key for image in post.images]
    slug = post.slug
    await db.delete(post)
    await db.commit()
    await images.remove_files(db, backends.media, image_keys)
    await backends.stores.cache.bump(
        *post_generations(post.id), *author_generations(post.author_id), slug_generation(slug)
    )


async def set_like(
    db: AsyncSession, backends: Backends, *, post: Post, user: Viewer, liked: bool
) -> None:
    """Like or unlike, idempotently; the counter moves only when the like row changes."""
    if liked:
        changed = await insert_ignoring_conflicts(
            db, PostLike, [{"post_id": post.id, "user_id": user.id, "created_at": utcnow()}]
        )
    else:
        result = await db.execute(
            delete(PostLike).where(PostLike.post_id == post.id, PostLike.user_id == user.id)
        )
        changed = int(result.rowcount)  # type: ignore[attr-defined]
    if changed:
        await db.execute(
            update(Post)
            .where(Post.id == post.id)
            .values(likes=Post.likes + (1 if liked else -1))
            .execution_options(synchronize_session=False)
        )
    await db.commit()
    if changed:
        await backends.stores.cache.bump(*post_generations(post.id))


async def get_out(
    db: AsyncSession, backends: Backends, *, post: Post, viewer: Viewer | None
) -> PostOut:
    liked = post.id in await _liked(db, viewer, [post.id])
    return to_out(post, backends.media, liked=liked)


async def list_posts(
    db: AsyncSession, backends: Backends, *, query: PostQuery, viewer: Viewer | None
) -> Page[PostOut]:
    """One page: a count, the rows with their authors, their tags, and the viewer's likes."""
    conditions = list(_filters(query, viewer))
    total = await db.scalar(select(func.count(Post.id)).where(*conditions)) or 0
    column = _SORT_COLUMNS[query.sort.removeprefix("-")]
    descending = query.sort.startswith("-")
    order = (column.desc(), Post.id.desc()) if descending else (column.asc(), Post.id.asc())
    stmt = _with_relations(select(Post).where(*conditions).order_by(*order))
    posts = (await db.scalars(stmt.limit(query.limit).offset(query.offset))).unique().all()
    liked = await _liked(db, viewer, [p.id for p in posts])
    return Page(
        items=[to_out(p, backends.media, liked=p.id in liked) for p in posts],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


async def posts_by_ids(
    db: AsyncSession, media: MediaStorage, post_ids: Sequence[int], viewer: Viewer | None
) -> dict[int, PostOut]:
    """These posts (those the viewer may see), by id, in a fixed number of statements."""
    if not post_ids:
        return {}
    stmt = _with_relations(select(Post).where(Post.id.in_(post_ids)))
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    found = (await db.scalars(stmt)).unique().all()
    liked = await _liked(db, viewer, [p.id for p in found])
    return {p.id: to_out(p, media, liked=p.id in liked) for p in found}


async def popular_tags(db: AsyncSession, *, prefix: str | None, limit: int) -> list[TagCount]:
    """Tags with the number of published posts carrying them, most used first."""
    count = func.count(post_tag.c.post_id)
    stmt = (
        select(Tag.name, count)
        .join(post_tag, post_tag.c.tag_id == Tag.id)
        .join(Post, Post.id == post_tag.c.post_id)
        .where(Post.published.is_(True))
        .group_by(Tag.id, Tag.name)
        .order_by(count.desc(), Tag.name)
        .limit(limit)
    )
    if prefix and "\x00" in prefix:
        return []  # no tag has one, and PostgreSQL cannot compare it
    if prefix:
        stmt = stmt.where(Tag.name.startswith(prefix.lower(), autoescape=True))
    return [TagCount(name=name, count=n) for name, n in await db.execute(stmt)]


def to_out(post: Post, media: MediaStorage, liked: bool) -> PostOut:
    return PostOut(
        id=post.id,
        slug=post.slug,
        title=post.title,
        summary=post.summary,
        content=post.content,
        published=post.published,
        tags=sorted(tag.name for tag in post.tags),
        author=AuthorOut(id=post.author.id, username=post.author.username, image=post.author.image),
        images=[images.to_out(image, media, public=post.published) for image in post.images],
        likes=post.likes,
        liked_by_me=liked,
        comments=post.comments_count,
        created_at=post.created_at,
        updated_at=post.updated_at,
    )


def _filters(query: PostQuery, viewer: Viewer | None) -> Iterable[ColumnElement[bool]]:
    if (visible := _visible_to(viewer)) is not None:
        yield visible
    if query.q:
        pattern = f"%{_escape_like(query.q)}%"
        yield or_(
            Post.title.ilike(pattern, escape=LIKE_ESCAPE),
            Post.content.ilike(pattern, escape=LIKE_ESCAPE),
        )
    for name in dict.fromkeys(t.strip().lower() for t in query.tag):
        yield exists().where(
            post_tag.c.post_id == Post.id,
            post_tag.c.tag_id == select(Tag.id).where(Tag.name == name).scalar_subquery(),
        )
    if query.author:
        yield Post.author_id == (
            select(User.id).where(User.username == query.author.lower()).scalar_subquery()
        )
    if query.favorited_by:
        yield exists().where(
            PostLike.post_id == Post.id,
            PostLike.user_id
            == select(User.id).where(User.username == query.favorited_by.lower()).scalar_subquery(),
        )


def _escape_like(text: str) -> str:
    return (
        text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )


async def _tags_named(db: AsyncSession, names: Sequence[str]) -> list[Tag]:
    if not names:
        return []
    await insert_ignoring_conflicts(db, Tag, [{"name": n} for n in names])
    return list(await db.scalars(select(Tag).where(Tag.name.in_(names))))


async def _liked(db: AsyncSession, viewer: Viewer | None, post_ids: Sequence[int]) -> set[int]:
    if viewer is None or not post_ids:
        return set()
    rows = await db.scalars(
        select(PostLike.post_id).where(
            PostLike.user_id == viewer.id, PostLike.post_id.in_(post_ids)
        )
    )
    return set(rows)
