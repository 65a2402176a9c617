from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.database.types import MAX_ID
from app.dependencies import (
    BackendsDep,
    CurrentPrincipal,
    CurrentUser,
    DbSession,
    OptionalPrincipal,
    PostId,
    VisiblePost,
)
from app.schemas.comment import CommentCreate, CommentOut, CommentUpdate
from app.schemas.common import CursorPage, CursorQuery, problem_responses
from app.services import comments

router = APIRouter(tags=["comments"])

CommentId = Annotated[int, Path(ge=1, le=MAX_ID, description="The comment's id")]
CursorParams = Annotated[CursorQuery, Query()]


@router.post(
    "/api/posts/{post_id}/comments",
    operation_id="comments-create",
    summary="Comment on a post",
    description="On a post you can see. `parent_id` makes it a reply to a comment of the same "
    "post (any depth: lists are flat, the client builds the tree).",
    status_code=status.HTTP_201_CREATED,
    response_model=CommentOut,
    responses=problem_responses(401, 404, 413, 422),
)
async def create_comment(
    body: CommentCreate,
    response: Response,
    user: CurrentUser,  # before the post: no token is 401, whatever the post
    post: VisiblePost,
    db: DbSession,
    backends: BackendsDep,
) -> CommentOut:
    comment = await comments.create(db, backends, post=post, author=user, data=body)
    response.headers["Location"] = f"/api/comments/{comment.id}"
    return comment


@router.get(
    "/api/posts/{post_id}/comments",
    operation_id="comments-list",
    summary="List a post's comments",
    description="Oldest first, by cursor: pass `next_cursor` back as `cursor`. Deleted "
    "comments that have replies are listed as tombstones (`deleted: true`, `body: null`).",
    response_model=CursorPage[CommentOut],
    responses=problem_responses(401, 404, 422),
)
async def list_comments(
    post_id: PostId, query: CursorParams, viewer: OptionalPrincipal, backends: BackendsDep
) -> Response:
    body = await comments.list_json(backends, post_id=post_id, query=query, viewer=viewer)
    return Response(body, media_type="application/json")


@router.patch(
    "/api/comments/{comment_id}",
    operation_id="comments-update",
    summary="Edit a comment",
    description="Only its author.",
    response_model=CommentOut,
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def update_comment(
    comment_id: CommentId,
    body: CommentUpdate,
    caller: CurrentPrincipal,
    db: DbSession,
    backends: BackendsDep,
) -> CommentOut:
    return await comments.change(db, backends, comment_id=comment_id, viewer=caller, data=body)


@router.delete(
    "/api/comments/{comment_id}",
    operation_id="comments-delete",
    summary="Delete a comment",
    description="Its author, the post's author or an administrator. A comment with replies "
    "stays as a tombstone so the thread survives; one without disappears.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 422),
)
async def delete_comment(
    comment_id: CommentId, caller: CurrentPrincipal, db: DbSession, backends: BackendsDep
) -> Response:
    await comments.delete(db, backends, comment_id=comment_id, viewer=caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
