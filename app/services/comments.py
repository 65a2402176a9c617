"""Comments and replies on posts; tombstones keep a thread whole when a comment goes."""

from __future__ import annotations

from sqlalchemy import Exists, exists, func, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, joinedload

from app.database.types import utcnow
from app.errors import (
    CannotDeleteComment,
    CommentNotFound,
    InvalidParentComment,
    NotCommentAuthor,
    PostNotFound,
)
from app.models import Comment, Post, User
from app.schemas.comment import CommentAuthor, CommentCreate, CommentOut, CommentUpdate
from app.schemas.common import CursorPage, CursorQuery
from app.services import paging
from app.services.backends import Backends
from app.services.posts import Viewer, _viewer_key, _visible_to
from app.stores.cache import EPOCH, Slot, post_generations

_Child = aliased(Comment)


def to_out(comment: Comment) -> CommentOut:
    author = comment.author if not comment.deleted else None
    return CommentOut(
        id=comment.id,
        post_id=comment.post_id,
        parent_id=comment.parent_id,
        body=None if comment.deleted else comment.body,
        author=CommentAuthor(id=author.id, username=author.username, image=author.image)
        if author is not None
        else None,
        created_at=comment.created_at,
        updated_at=comment.updated_at,
        deleted=comment.deleted,
    )


async def create(
    db: AsyncSession, backends: Backends, *, post: Post, author: User, data: CommentCreate
) -> CommentOut:
    """A comment on a post the author can see (the caller checked), or a reply to one of its
    comments; the post's counter moves in the same transaction."""
    if data.parent_id is not None:
        parent = await db.scalar(
            select(Comment.id).where(
                Comment.id == data.parent_id,
                Comment.post_id == post.id,
                Comment.deleted.is_(False),
            )
        )
        if parent is None:
            raise InvalidParentComment
    now = utcnow()
    comment = Comment(
        post_id=post.id,
        parent_id=data.parent_id,
        author_id=author.id,
        body=data.body,
        deleted=False,
        created_at=now,
        updated_at=now,
    )
    comment.author = author
    db.add(comment)
    await db.execute(
        update(Post)
        .where(Post.id == post.id)
        .values(comments_count=Post.comments_count + 1)
        .execution_options(synchronize_session=False)
    )
    try:
        await db.commit()
    except IntegrityError:  # the parent went (or the post) meanwhile
        await db.rollback()
        raise InvalidParentComment from None
    await backends.stores.cache.bump(*post_generations(post.id))
    return to_out(comment)


async def list_json(
    backends: Backends, *, post_id: int, query: CursorQuery, viewer: Viewer | None
) -> bytes:
    """The post's comments, oldest first, tombstones included, as a cursor page."""
    scope = f"comments:{post_id}"
    at = paging.position(backends.cursors, scope, query.cursor)
    cache = backends.stores.cache
    slot = Slot(
        (EPOCH, f"gen:post:{post_id}"),
        f"comments:{post_id}:{_viewer_key(viewer)}:{paging.cursor_key(query.limit, query.cursor)}",
    )
    lookup = await cache.read(slot)
    if lookup.value is not None:
        return lookup.value
    visible = select(Post.id).where(Post.id == post_id)
    if (condition := _visible_to(viewer)) is not None:
        visible = visible.where(condition)
    stmt = (
        select(Comment)
        .options(joinedload(Comment.author))
        .where(Comment.post_id == post_id)
        .order_by(Comment.created_at, Comment.id)
        .limit(query.limit + 1)
    )
    if (keyset := paging.after(at, Comment.created_at, Comment.id, descending=False)) is not None:
        stmt = stmt.where(keyset)
    async with backends.read_sessions() as db:
        if await db.scalar(visible) is None:
            raise PostNotFound
        rows = list(await db.scalars(stmt))
    members = paging.members(
        backends.cursors, scope, [(c.id, c.created_at) for c in rows], query.limit
    )
    page = CursorPage[CommentOut](
        items=[to_out(c) for c in rows[: query.limit]], next_cursor=members.next_cursor
    )
    body = page.model_dump_json().encode()
    await cache.write(lookup, body)
    return body


async def list_page(
    backends: Backends, *, post_id: int, query: CursorQuery, viewer: Viewer | None
) -> CursorPage[CommentOut]:
    """As `list_json`, as a model (for other API shapes built on this one)."""
    body = await list_json(backends, post_id=post_id, query=query, viewer=viewer)
    return CursorPage[CommentOut].model_validate_json(body)


async def get_live(db: AsyncSession, comment_id: int, viewer: Viewer) -> Comment:
    """A comment not deleted, on a post the viewer can see, with its author and post."""
    stmt = (
        select(Comment)
        .join(Post, Post.id == Comment.post_id)
        .options(joinedload(Comment.author))
        .where(Comment.id == comment_id, Comment.deleted.is_(False))
    )
    if (visible := _visible_to(viewer)) is not None:
        stmt = stmt.where(visible)
    comment = await db.scalar(stmt)
    if comment is None:
        raise CommentNotFound
    return comment


async def change(
    db: AsyncSession, backends: Backends, *, comment_id: int, viewer: Viewer, data: CommentUpdate
) -> CommentOut:
    comment = await get_live(db, comment_id, viewer)
    if comment.author_id != viewer.id:
        raise NotCommentAuthor
    comment.body = data.body
    comment.updated_at = utcnow()
    await db.commit()
    await backends.stores.cache.bump(*post_generations(comment.post_id))
    return to_out(comment)


async def delete(db: AsyncSession, backends: Backends, *, comment_id: int, viewer: Viewer) -> None:
    """By its author, the post's author or an administrator. With replies it stays as a
    tombstone; without, it goes, and so do the tombstones above it left with no reply."""
    comment = await get_live(db, comment_id, viewer)
    post_author = await db.scalar(select(Post.author_id).where(Post.id == comment.post_id))
    if viewer.id not in (comment.author_id, post_author) and not viewer.is_admin:
        raise CannotDeleteComment
    post_id = comment.post_id
    # Conditional statements, so that two deletions at once count one.
    removed = await db.execute(
        sql_delete(Comment)
        .where(Comment.id == comment_id, Comment.deleted.is_(False), ~_has_replies())
        .execution_options(synchronize_session=False)
    )
    gone = int(removed.rowcount)  # type: ignore[attr-defined]
    if not gone:
        tombstoned = await db.execute(
            update(Comment)
            .where(Comment.id == comment_id, Comment.deleted.is_(False))
            .values(deleted=True, body=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        gone = int(tombstoned.rowcount)  # type: ignore[attr-defined]
    if gone:
        await db.execute(
            update(Post)
            .where(Post.id == post_id)
            .values(comments_count=Post.comments_count - 1)
            .execution_options(synchronize_session=False)
        )
        await _prune_tombstones(db, [post_id])
    await db.commit()
    await backends.stores.cache.bump(*post_generations(post_id))


def _has_replies() -> Exists:
    return exists().where(_Child.parent_id == Comment.id)


async def _prune_tombstones(db: AsyncSession, post_ids: list[int]) -> None:
    """Tombstones of these posts left with no reply go, level by level."""
    if not post_ids:
        return
    while True:
        result = await db.execute(
            sql_delete(Comment)
            .where(Comment.post_id.in_(post_ids), Comment.deleted.is_(True), ~_has_replies())
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return


async def forget_author(db: AsyncSession, user_id: int) -> None:
    """An author deactivated or deleted: each of their comments becomes a tombstone, and those
    with no reply go. In the caller's transaction."""
    mine = (Comment.author_id == user_id) & Comment.deleted.is_(False)
    post_ids = list(await db.scalars(select(Comment.post_id).where(mine).distinct()))
    if not post_ids:
        return
    own = (
        select(func.count())
        .select_from(Comment)
        .where(mine, Comment.post_id == Post.id)
        .scalar_subquery()
    )
    await db.execute(
        update(Post)
        .where(Post.id.in_(post_ids))
        .values(comments_count=Post.comments_count - own)
        .execution_options(synchronize_session=False)
    )
    await db.execute(
        update(Comment)
        .where(mine)
        .values(deleted=True, body=None)
        .execution_options(synchronize_session=False)
    )
    await _prune_tombstones(db, post_ids)
