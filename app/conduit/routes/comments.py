from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.conduit import lookups, mapping
from app.conduit.dependencies import CurrentPrincipal, CurrentUser, OptionalPrincipal
from app.conduit.routes.articles import Slug
from app.conduit.schemas import CommentResponse, CommentsResponse, NewCommentBody
from app.conduit.util import error_responses
from app.database.types import MAX_ID
from app.dependencies import BackendsDep, DbSession
from app.errors import CommentNotFound
from app.schemas.comment import CommentOut
from app.schemas.common import CursorQuery
from app.services import comments, posts

router = APIRouter(prefix="/api/articles/{slug}/comments", tags=["Comments"])

# `{id}` as RealWorld names it.
CommentId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="The comment's id")]
# RealWorld lists every comment at once: the oldest this many (pages of the cursor list).
PAGE_SIZE = 100
MAX_PAGES = 10


@router.get(
    "",
    operation_id="GetArticleComments",
    summary="Get comments for an article",
    description=f"Oldest first, at most {PAGE_SIZE * MAX_PAGES}; replies made on `/api` are "
    "listed among them, deleted comments not.",
    response_model=CommentsResponse,
    responses=error_responses(401, 404, 422),
)
async def list_comments(
    slug: Slug, viewer: OptionalPrincipal, backends: BackendsDep, db: DbSession
) -> CommentsResponse:
    post_id = await posts.id_by_slug(backends, slug)
    found: list[CommentOut] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        query = CursorQuery(limit=PAGE_SIZE, cursor=cursor)
        page = await comments.list_page(backends, post_id=post_id, query=query, viewer=viewer)
        found.extend(comment for comment in page.items if not comment.deleted)
        if (cursor := page.next_cursor) is None:
            break
    authors = await lookups.authors(db, [c.author for c in found if c.author is not None], viewer)
    return CommentsResponse(
        comments=[
            mapping.comment(comment, authors[comment.author.id])
            for comment in found
            if comment.author is not None
        ]
    )


@router.post(
    "",
    operation_id="CreateArticleComment",
    summary="Create a comment for an article",
    status_code=status.HTTP_201_CREATED,
    response_model=CommentResponse,
    responses=error_responses(401, 404, 422),
)
async def create_comment(
    user: CurrentUser, slug: Slug, body: NewCommentBody, db: DbSession, backends: BackendsDep
) -> CommentResponse:
    post = await posts.get_visible_by_slug(db, slug=slug, viewer=user)
    created = await comments.create(
        db, backends, post=post, author=user, data=mapping.new_comment(body.comment)
    )
    assert created.author is not None, "a new comment has its author"
    authors = await lookups.authors(db, [created.author], user)
    return CommentResponse(comment=mapping.comment(created, authors[user.id]))


@router.delete(
    "/{id}",
    operation_id="DeleteArticleComment",
    summary="Delete a comment for an article",
    description="Its author, the article's author or an administrator. A comment that has "
    "replies (made on `/api`) stays there as a deleted one.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_comment(
    caller: CurrentPrincipal,
    slug: Slug,
    comment_id: CommentId,
    db: DbSession,
    backends: BackendsDep,
) -> Response:
    post = await posts.get_visible_by_slug(db, slug=slug, viewer=caller)
    comment = await comments.get_live(db, comment_id, caller)
    if comment.post_id != post.id:
        raise CommentNotFound
    await comments.delete(db, backends, comment_id=comment_id, viewer=caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
