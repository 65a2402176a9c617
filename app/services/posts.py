"""Posts, their tags and likes: rules, queries and the mapping to the API's shape."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic_core import to_json
from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Select,
    and_,
    bindparam,
    column,
    delete,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from app.core import slugs
from app.core.cursors import BadCursor
from app.core.media import MediaStorage
from app.database.session import read_engine
from app.database.types import utcnow
from app.database.upsert import insert_ignoring_conflicts
from app.errors import EmailNotVerified, InvalidCursor, NotPostAuthor, PostNotFound
from app.models import Image, Post, PostLike, Tag, User, post_tag
from app.models.post import SEARCH_CONFIG
from app.schemas.post import (
    TOTAL_CAP,
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
# SQLite's full-text index of posts (migration 0007): its rowid is the post's id.
_POST_FTS = table("post_fts", column("rowid"))
# The weights of title, summary and content: `ts_rank`'s own for A, B and C (1.0, 0.4, 0.2).
_FTS_WEIGHTS = (10.0, 4.0, 2.0)


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
    from one statement (post, author, tags, images and the viewer's like together)."""
    cache = backends.stores.cache
    lookup = await cache.read(post_slot(post_id, _viewer_key(viewer)))
    if lookup.value is not None:
        return lookup.value
    kind = "anon" if viewer is None else "admin" if viewer.is_admin else "user"
    stmt = _read_statement(kind, sqlite=backends.settings.is_sqlite)
    params = (
        {"post_id": post_id} if viewer is None else {"post_id": post_id, "viewer_id": viewer.id}
    )
    async with read_engine(backends.read_sessions).connect() as connection:
        row = (await connection.execute(stmt, params)).first()
    if row is None:
        raise PostNotFound
    body = to_json(_post_fields(row, backends.media))
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
    body = to_json(page)
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


@dataclass(frozen=True, slots=True)
class _Order:
    """What a list is sorted by: the key (a column or expression the rows are read with), its
    direction, and whether it is a time (carried in a cursor as ISO 8601 text)."""

    key: Any  # a column or expression
    descending: bool
    is_time: bool
    indexed: bool = True  # False for a search's rank, which no index holds


async def list_posts(
    db: AsyncSession, backends: Backends, *, query: PostQuery, viewer: Viewer | None
) -> dict[str, Any]:
    """One page, by `offset` (with a bounded count) or by cursor (no count), as `PostPage` or
    `CursorPage[PostOut]` serialise: the rows with their authors, tags, images and the viewer's
    likes, in one statement (the count folded in) — on PostgreSQL a list narrowed by a search,
    tags or likes counts its matches first (see `_narrowed`)."""
    sqlite = db.get_bind().dialect.name == "sqlite"
    listed = _listed(query, viewer, sqlite=sqlite)
    if listed is None:  # nothing a search can match (only punctuation, say)
        return _empty(query)
    stmt, order = listed
    # Narrowed by a search, a tag or a reader's likes, a list may match few posts, scattered
    # anywhere: walking the sort's index to meet a page of them could read the whole table. So
    # (on PostgreSQL) the matches are counted first, capped, which the planner does through the
    # search's or the tag's index, and when there are few the page is sorted from them alone.
    narrowed = not sqlite and _narrowed(query)
    if query.cursor is None:
        return await _offset_page(
            db, backends, query, viewer, stmt, order, sqlite=sqlite, narrowed=narrowed
        )
    return await _cursor_page(
        db, backends, query, viewer, stmt, order, sqlite=sqlite, narrowed=narrowed
    )


def _listed(
    query: PostQuery, viewer: Viewer | None, *, sqlite: bool
) -> tuple[Select[Any], _Order] | None:
    """The posts of the list `query` as this viewer sees it, and their order; None when its
    search can match nothing."""
    stmt = select(Post).where(*_filters(query, viewer))
    order = _order(query)
    if (search := query.search) is not None:
        found = _search(search, sqlite=sqlite, ranked=query.sort == "relevance")
        if found is None:
            return None
        stmt = found.apply(stmt)
        if found.rank is not None:
            order = _Order(key=found.rank, descending=True, is_time=False, indexed=False)
    return stmt, order


async def count_posts(
    db: AsyncSession, *, query: PostQuery, viewer: Viewer | None, cap: int
) -> int:
    """How many posts the list `query` holds for this viewer, counted up to `cap` at most (the
    cost grows with `cap`, never with the table)."""
    listed = _listed(query, viewer, sqlite=db.get_bind().dialect.name == "sqlite")
    if listed is None:
        return 0
    return min(int(await db.scalar(_counting(listed[0], cap)) or 0), cap)


def _counting(stmt: Select[Any], cap: int) -> Select[Any]:
    """The count of the posts `stmt` lists, stopped at `cap + 1`: its cost does not grow past
    the cap, and a count above it says there are more."""
    counted = stmt.with_only_columns(Post.id).limit(_inline(cap + 1)).subquery()
    return select(func.count()).select_from(counted)


def _narrowed(query: PostQuery) -> bool:
    """Whether the list may hold few posts among many: the filters no index walks in order."""
    return query.search is not None or bool(query.tag) or query.favorited_by is not None


async def _capped_count(
    db: AsyncSession, query: PostQuery, viewer: Viewer | None, stmt: Select[Any], cap: int
) -> int:
    """How many posts `stmt` lists, counted up to `cap + 1` (the cost of counting does not grow
    past it). For anonymous readers of one tag, the count the tag keeps of its published posts
    (one row read): on a cursor page that is more than the posts left after the cursor, which
    only ever makes the page walk the sort's index, as it starts at the cursor."""
    names = {t.strip().lower() for t in query.tag}
    if viewer is None and len(names) == 1 and not _other_filters(query):
        kept = await db.scalar(select(Tag.post_count).where(Tag.name == names.pop()))
        return min(int(kept or 0), cap + 1)
    return int(await db.scalar(_counting(stmt, cap)) or 0)


def _other_filters(query: PostQuery) -> bool:
    return query.search is not None or query.author is not None or query.favorited_by is not None


def _from_matches(stmt: Select[Any], order: _Order, *, limit: int, offset: int) -> Select[Any]:
    """The page of `stmt` as its ids and sort keys (for `_page_rows`), for a list known to be
    short: its matches are found on their own first (a MATERIALIZED CTE, planned for all of
    them, which the planner does through the search's or the tag's index and never by walking
    the sort's index), and the page's ids are sorted from them. Bounded by the matches, not the
    table."""
    matches = (
        stmt.with_only_columns(Post.id.label("id"), order.key.label("key"))
        .cte("matches")
        .prefix_with("MATERIALIZED")
    )
    picked = _sorted(select(matches.c.id, matches.c.key), matches.c.key, matches.c.id, order)
    return picked.limit(_inline(limit)).offset(_inline(offset))


# A cursor page of a narrowed list looks first among the next NEXT_PAGES pages' worth of posts
# of the whole list; when some of them match but not a page's worth, the matches are counted
# only up to NEAR_MATCHES pages (counting costs more rows than walking to the page, the more so
# the more matches there are).
NEXT_PAGES = 10
NEAR_MATCHES = 10


def _within_next(
    stmt: Select[Any],
    order: _Order,
    after: Sequence[ColumnElement[bool]],
    viewer: Viewer | None,
    limit: int,
) -> Select[Any]:
    """The ids of the page of `stmt` among the next NEXT_PAGES * `limit` posts of the whole list
    (down the sort's index, from the cursor): the page when there are `limit` of them, as every
    post not looked at comes after them. Costs at most that many rows, and far fewer for a
    common word or tag, whose matches counted to the cap would cost many more."""
    visible = _visible_to(viewer)
    following = select(Post.id.label("id"), order.key.label("key")).where(
        *after, *([] if visible is None else [visible])
    )
    nearest = _ordered(following, order).limit(NEXT_PAGES * limit).subquery("following")
    ids = stmt.with_only_columns(Post.id).join(nearest, nearest.c.id == Post.id)
    return _sorted(ids, nearest.c.key, nearest.c.id, order).limit(limit)


def _order(query: PostQuery) -> _Order:
    name = query.sort.removeprefix("-")
    if name == "relevance":  # replaced by the search's rank
        return _Order(key=Post.created_at, descending=True, is_time=True)
    return _Order(
        key=_SORT_COLUMNS[name],
        descending=query.sort.startswith("-"),
        is_time=name in ("created_at", "updated_at"),
    )


def _ordered(stmt: Select[Any], order: _Order) -> Select[Any]:
    return _sorted(stmt, order.key, Post.id, order)


def _sorted(stmt: Select[Any], key: Any, post_id: Any, order: _Order) -> Select[Any]:
    if order.descending:
        return stmt.order_by(key.desc(), post_id.desc())
    return stmt.order_by(key.asc(), post_id.asc())


def _empty(query: PostQuery) -> dict[str, Any]:
    if query.cursor is None:
        return _offset_fields([], 0, True, query)
    return {"items": [], "next_cursor": None}


def _offset_fields(
    items: list[dict[str, Any]], total: int, exact: bool, query: PostQuery
) -> dict[str, Any]:
    """What `PostPage` serialises to, in its order."""
    return {
        "items": items,
        "total": total,
        "total_exact": exact,
        "limit": query.limit,
        "offset": query.offset,
    }


async def _offset_page(
    db: AsyncSession,
    backends: Backends,
    query: PostQuery,
    viewer: Viewer | None,
    stmt: Select[Any],
    order: _Order,
    *,
    sqlite: bool,
    narrowed: bool,
) -> dict[str, Any]:
    # Counted up to a cap (and never short of the end of this page): the cost of `total`
    # does not grow with the table. The count rides along with the page's rows, as a scalar
    # subquery (an InitPlan, evaluated once); it is asked for apart only when the page is
    # empty past the first row.
    cap = max(TOTAL_CAP, query.offset + query.limit)
    paged = _ordered(_keyed(stmt, order), order)
    paged = paged.limit(_inline(query.limit)).offset(_inline(query.offset))
    if narrowed:  # counted first: few matches are paged from them alone
        total = await _capped_count(db, query, viewer, stmt, cap)
        if total <= cap:
            paged = _from_matches(stmt, order, limit=query.limit, offset=query.offset)
        rows = (await db.execute(_page_rows(paged, order, viewer, sqlite))).all()
    else:
        counting = _counting(stmt, cap)
        page = _page_rows(paged, order, viewer, sqlite).add_columns(counting.scalar_subquery())
        rows = (await db.execute(page)).all()
        if rows:
            total = int(rows[0][-1])
        else:
            total = int(await db.scalar(counting) or 0) if query.offset else 0
    items = [_post_fields(row, backends.media) for row in rows]
    return _offset_fields(items, min(total, cap), total <= cap, query)


async def _cursor_page(
    db: AsyncSession,
    backends: Backends,
    query: PostQuery,
    viewer: Viewer | None,
    stmt: Select[Any],
    order: _Order,
    *,
    sqlite: bool,
    narrowed: bool,
) -> dict[str, Any]:
    # A cursor belongs to one list: this sort, these filters, this viewer's drafts.
    filters = query.model_dump_json(include={"q", "tag", "author", "favorited_by"})
    digest = hashlib.blake2b(filters.encode(), digest_size=8).hexdigest()
    scope = f"posts:{query.sort}:{digest}:{_viewer_key(viewer)}"
    after: list[ColumnElement[bool]] = []  # past the cursor
    if query.cursor:
        try:
            key, last_id = backends.cursors.decode_key(scope, query.cursor)
        except BadCursor:
            raise InvalidCursor from None
        value: Any = key
        if order.is_time:
            value = _cursor_time(key)
        elif isinstance(key, str) is (query.sort.removeprefix("-") != "title"):
            raise InvalidCursor
        # The bound on the key alone is implied by the other, but it is what starts the
        # index walk at the cursor: an OR is only a filter, read from the top of the index.
        if order.descending:
            after = [
                order.key <= value,
                or_(order.key < value, (order.key == value) & (Post.id < last_id)),
            ]
        else:
            after = [
                order.key >= value,
                or_(order.key > value, (order.key == value) & (Post.id > last_id)),
            ]
        stmt = stmt.where(*after)
    paged: Select[Any] | None = None
    cap = TOTAL_CAP
    if narrowed and order.indexed:  # common matches are met among the next posts at once
        near = (await db.scalars(_within_next(stmt, order, after, viewer, query.limit + 1))).all()
        if len(near) > query.limit:
            paged = _ordered(_keyed(stmt.where(Post.id.in_(near)), order), order)
        elif near:  # some, but not a page: a walk meets a page soon unless they are very few
            cap = min(cap, NEAR_MATCHES * (query.limit + 1))
    if paged is None:
        if narrowed and await _capped_count(db, query, viewer, stmt, cap) <= cap:
            paged = _from_matches(stmt, order, limit=query.limit + 1, offset=0)
        else:
            paged = _ordered(_keyed(stmt, order), order).limit(_inline(query.limit + 1))
    rows = (await db.execute(_page_rows(paged, order, viewer, sqlite))).all()
    shown = rows[: query.limit]
    next_cursor = None
    if len(rows) > query.limit:
        last_row: Any = shown[-1]
        last_id, last_key = last_row[0], last_row[-1]
        if isinstance(last_key, datetime):
            last_key = last_key.isoformat()
        next_cursor = backends.cursors.encode_key(scope, last_key, last_id)
    items = [_post_fields(row, backends.media) for row in shown]
    return {"items": items, "next_cursor": next_cursor}


def _inline(n: int) -> Any:
    """A LIMIT or OFFSET written into the SQL rather than sent as a parameter: PostgreSQL then
    plans a prepared page once (a generic plan that knows it reads 20 rows) instead of
    planning it again for each execution."""
    return bindparam(None, n, type_=Integer, literal_execute=True)


def _keyed(stmt: Select[Any], order: _Order) -> Select[Any]:
    """The page's posts as their ids and sort keys only."""
    return stmt.with_only_columns(Post.id, order.key.label("sort_key"))


def _page_rows(
    paged: Select[Any], order: _Order, viewer: Viewer | None, sqlite: bool
) -> Select[Any]:
    """The rows of a page (`paged`: the posts' ids and sort keys, its first two columns,
    filtered, ordered and cut) with everything a post's JSON needs, its sort key last: the
    posts are found first, and the tags, images and likes looked up for the page's rows only,
    never for skipped ones."""
    page = paged.subquery("page")
    page_id, page_key = list(page.c)[:2]
    stmt = _as_rows(select(Post).join(page, page_id == Post.id), viewer, sqlite)
    key = (page_key.desc(), page_id.desc()) if order.descending else (page_key, page_id)
    return stmt.add_columns(page_key).order_by(*key)


def _cursor_time(key: Any) -> datetime:
    if not isinstance(key, str):
        raise InvalidCursor
    try:
        when = datetime.fromisoformat(key)
    except ValueError:
        raise InvalidCursor from None
    if when.tzinfo is None:
        raise InvalidCursor
    return when


@dataclass(frozen=True, slots=True)
class _Found:
    """A search as a condition on posts (or a join), and its rank when sorting by it."""

    condition: ColumnElement[bool] | None
    joined: Any
    rank: ColumnElement[Any] | None

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        if self.joined is not None:
            stmt = stmt.join(self.joined, self.joined.c.id == Post.id)
        if self.condition is not None:
            stmt = stmt.where(self.condition)
        return stmt


def _search(text: str, *, sqlite: bool, ranked: bool) -> _Found | None:
    """The posts matching a web-style search, higher rank better; None when the text holds
    nothing that can match. Both databases read the text alike (`websearch_to_tsquery`'s rules,
    see `web_search`), and both rank a post by its own words alone, so a rank never changes
    when other posts come and go (and cursors ordered by it stay exact)."""
    if not sqlite:
        tsquery = func.websearch_to_tsquery(literal(SEARCH_CONFIG, REGCONFIG), text)
        rank = func.ts_rank(Post.search_vector, tsquery) if ranked else None
        return _Found(Post.search_vector.op("@@")(tsquery), None, rank)
    groups = web_search(text)
    if not groups:
        return None
    if all(any(not negated for negated, _ in group) for group in groups):
        # Each alternative has a word to look up: one FTS5 expression for all of it.
        matching = select(_POST_FTS.c.rowid.label("id")).where(_match(fts5_expression(groups)))
        if not ranked:
            return _Found(Post.id.in_(matching), None, None)
        joined = matching.add_columns(_FTS_RANK.label("rank")).subquery("matched")
        return _Found(None, joined, joined.c.rank)
    # An alternative made only of exclusions (`-word`): sets of posts, as PostgreSQL reads it.
    condition = or_(
        *(
            and_(
                *(
                    Post.id.not_in(_matches(phrase)) if negated else Post.id.in_(_matches(phrase))
                    for negated, phrase in group
                )
            )
            for group in groups
        )
    )
    return _Found(condition, None, literal(0.0, Float) if ranked else None)


def _matches(phrase: str) -> Select[Any]:
    return select(_POST_FTS.c.rowid).where(_match(phrase))


def _match(expression: str) -> ColumnElement[bool]:
    return literal_column("post_fts").op("MATCH")(expression)


def _marks(column: int) -> ColumnElement[Any]:
    """How many times the search's words occur in this column of the post: FTS5's `highlight`
    marks each occurrence with a control character, counted here."""
    marked = func.coalesce(func.highlight(literal_column("post_fts"), column, _MARK, ""), "")
    return func.length(marked) - func.length(func.replace(marked, _MARK, ""))


_MARK = "\x01"
# The weighted count of the search's words in the title, summary and content (PostgreSQL's
# `ts_rank` weighs A, B and C the same way): the post's own, whatever else the table holds.
_FTS_RANK: ColumnElement[Any] = sum(
    (weight * _marks(column) for column, weight in enumerate(_FTS_WEIGHTS)),
    start=literal(0.0, Float),
)

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r'\s*(?:(-)|"([^"]*)"?|([^\s"]+))')

# One alternative of a search: its phrases, each required (False) or excluded (True).
Alternative = list[tuple[bool, str]]


def web_search(text: str) -> list[Alternative]:
    """A web search read as PostgreSQL's `websearch_to_tsquery` reads it: words and `"a
    phrase"` are all required, `-` excludes what follows it (`--x` is `x`), and `or` between two
    terms (any case) separates alternatives, which bind less tightly than the words around them
    (`a b or c` is `(a and b) or c`); an `or` with nothing after it is a word. Each phrase comes
    back quoted for FTS5, so the expression cannot be malformed. Empty when nothing can match."""
    tokens = [m.groups() for m in _TOKEN.finditer(text)]
    groups: list[Alternative] = [[]]
    negations = 0
    alternative = False  # an `or` waits for its right-hand term
    for at, (minus, phrase, bare) in enumerate(tokens):
        if minus:
            negations += 1
            continue
        is_or = phrase is None and bare is not None and bare.lower() == "or"
        if is_or and not negations and not alternative and any(groups) and at + 1 < len(tokens):
            alternative = True
            continue
        words = _WORD.findall(phrase if phrase is not None else bare or "")
        if not words:  # punctuation: nothing to look up, and its `-` goes with it
            negations = 0
            continue
        if alternative:
            groups.append([])
            alternative = False
        groups[-1].append((negations % 2 == 1, '"' + " ".join(words) + '"'))
        negations = 0
    return [group for group in groups if group]


def fts5_expression(groups: list[Alternative]) -> str:
    """The alternatives as one FTS5 expression; each one must hold a required phrase."""
    clauses = []
    for group in groups:
        required = " AND ".join(phrase for negated, phrase in group if not negated)
        excluded = "".join(f" NOT {phrase}" for negated, phrase in group if negated)
        clauses.append(f"({required}{excluded})")
    return " OR ".join(clauses)


async def posts_by_ids(
    db: AsyncSession, media: MediaStorage, post_ids: Sequence[int], viewer: Viewer | None
) -> dict[int, dict[str, Any]]:
    """These posts (those the viewer may see), by id, in one statement, as `PostOut`
    serialises them."""
    if not post_ids:
        return {}
    stmt = select(Post).where(Post.id.in_(post_ids))
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    sqlite = db.get_bind().dialect.name == "sqlite"
    rows = await db.execute(_as_rows(stmt, viewer, sqlite))
    return {row[0]: _post_fields(row, media) for row in rows}


async def popular_tags(db: AsyncSession, *, prefix: str | None, limit: int) -> list[TagCount]:
    """Tags with the number of published posts carrying them, most used first: read from the
    count each tag keeps (`tag.post_count`), never by counting posts."""
    stmt = (
        select(Tag.name, Tag.post_count)
        .where(Tag.post_count > 0)
        .order_by(Tag.post_count.desc(), Tag.name)
        .limit(limit)
    )
    if prefix and "\x00" in prefix:
        return []  # no tag has one, and PostgreSQL cannot compare it
    if prefix:
        stmt = stmt.where(Tag.name.startswith(prefix.lower(), autoescape=True))
    return [TagCount(name=name, count=n) for name, n in await db.execute(stmt)]


# ------------------------------------------------------------------ reads as rows, not entities
# A read is one Core statement whose rows hold everything a post's JSON needs: the post's
# columns, its author's, its tags (one text, comma-separated: a tag never holds a comma), its
# images (one JSON array of arrays) and whether the viewer likes it. `_post_fields` turns a row
# into exactly what `PostOut` serialises to, and `to_json` writes it once: no ORM identity map,
# no validation of what the database just produced. `PostOut` stays the documented schema;
# tests hold the two byte for byte.

# The author, under a name of its own: filters compare with `"user"` in subqueries of their own,
# which must not be correlated to the author of the row.
_AUTHOR = User.__table__.alias("post_author")
_VIEWER_ID = bindparam("viewer_id", type_=BigInteger)


@dataclass(frozen=True, slots=True)
class _BoundViewer:
    """A viewer whose id is the statement's `viewer_id` parameter, for statements built once."""

    is_admin: bool

    @property
    def id(self) -> Any:
        return _VIEWER_ID


def _tag_names(sqlite: bool) -> ColumnElement[Any]:
    joined = post_tag.join(Tag, Tag.id == post_tag.c.tag_id)
    names = func.group_concat(Tag.name, ",") if sqlite else func.string_agg(Tag.name, ",")
    return select(names).select_from(joined).where(post_tag.c.post_id == Post.id).scalar_subquery()


def _image_list(sqlite: bool) -> ColumnElement[Any]:
    if sqlite:
        fields = [func.json(c) if c is Image.variants else c for c in images.IMAGE_FIELDS]
        listed = func.json_group_array(func.json_array(*fields))
    else:
        listed = func.json_agg(func.json_build_array(*images.IMAGE_FIELDS))
    found = select(listed).where(Image.post_id == Post.id).scalar_subquery()
    return type_coerce(found, JSON)


def _as_rows(stmt: Select[Any], viewer: Viewer | None, sqlite: bool) -> Select[Any]:
    """`stmt` (posts, filtered) reading the columns `_post_fields` takes."""
    liked: ColumnElement[Any] = (
        exists().where(PostLike.post_id == Post.id, PostLike.user_id == viewer.id)
        if viewer is not None
        else false()
    )
    return stmt.with_only_columns(
        Post.id,
        Post.slug,
        Post.title,
        Post.summary,
        Post.content,
        Post.published,
        _tag_names(sqlite),
        _AUTHOR.c.id,
        _AUTHOR.c.username,
        _AUTHOR.c.image,
        _image_list(sqlite),
        Post.likes,
        liked,
        Post.comments_count,
        Post.created_at,
        Post.updated_at,
    ).join(_AUTHOR, _AUTHOR.c.id == Post.author_id)


@functools.cache
def _read_statement(kind: str, *, sqlite: bool) -> Select[Any]:
    """The statement reading one post (`post_id`) for a viewer (`viewer_id`) of this kind
    (`anon`, `user`, `admin`), built once."""
    viewer = None if kind == "anon" else _BoundViewer(is_admin=kind == "admin")
    stmt = select(Post).where(Post.id == bindparam("post_id", type_=BigInteger))
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    return _as_rows(stmt, viewer, sqlite)


def _post_fields(row: Sequence[Any], media: MediaStorage) -> dict[str, Any]:
    """As `to_out` of the row `_as_rows` reads, as plain values in `PostOut`'s order."""
    published = bool(row[5])
    tags, found = row[6], row[10]
    return {
        "id": row[0],
        "slug": row[1],
        "title": row[2],
        "summary": row[3],
        "content": row[4],
        "published": published,
        "tags": sorted(tags.split(",")) if tags else [],
        "author": {"id": row[7], "username": row[8], "image": row[9]},
        "images": [
            images.out_fields(image, media, public=published) for image in sorted(found or ())
        ],
        "likes": row[11],
        "liked_by_me": bool(row[12]),
        "comments": row[13],
        "created_at": row[14],
        "updated_at": row[15],
    }


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
