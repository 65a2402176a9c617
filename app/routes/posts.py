from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response, status

from app.dependencies import (
    CurrentUser,
    DbSession,
    OptionalUser,
    OwnedPost,
    PostQueryDep,
    VisiblePost,
)
from app.http import conditional_json
from app.schemas.common import Page, problem_responses
from app.schemas.post import PostCreate, PostOut, PostPatch, PostReplace
from app.services import posts

router = APIRouter(prefix="/api/posts", tags=["posts"])


@router.post(
    "",
    summary="Create a post",
    description="Markdown `content`; up to 10 `tags`, lower-cased and de-duplicated. "
    "`published: false` makes a draft only you and administrators can see.",
    status_code=status.HTTP_201_CREATED,
    response_model=PostOut,
    responses=problem_responses(401, 422),
)
async def create_post(
    body: PostCreate, response: Response, user: CurrentUser, db: DbSession
) -> PostOut:
    post = await posts.create(db, user, body)
    response.headers["Location"] = f"/api/posts/{post.id}"
    return post


@router.get(
    "",
    summary="List posts",
    description="Paged, sorted and filtered. Signed-in authors also see their own drafts.",
    response_model=Page[PostOut],
    responses=problem_responses(401, 422),
)
async def list_posts(query: PostQueryDep, viewer: OptionalUser, db: DbSession) -> Page[PostOut]:
    return await posts.list_posts(db, query, viewer)


@router.get(
    "/{post_id}",
    summary="Read a post",
    description="Answers with an `ETag`; send it back in `If-None-Match` to get `304` when "
    "nothing changed.",
    response_model=PostOut,
    responses={304: {"description": "Not modified"}, **problem_responses(401, 404, 422)},
)
async def read_post(
    post: VisiblePost,
    viewer: OptionalUser,
    db: DbSession,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    return conditional_json(await posts.get_out(db, post, viewer), if_none_match)


@router.put(
    "/{post_id}",
    summary="Replace a post",
    description="Every field is required. Only the author or an administrator.",
    response_model=PostOut,
    responses=problem_responses(401, 403, 404, 422),
)
async def replace_post(
    body: PostReplace, post: OwnedPost, user: CurrentUser, db: DbSession
) -> PostOut:
    return await posts.change(db, post, body, user)


@router.patch(
    "/{post_id}",
    summary="Change some fields of a post",
    description="Any subset of the fields. Only the author or an administrator.",
    response_model=PostOut,
    responses=problem_responses(401, 403, 404, 422),
)
async def patch_post(body: PostPatch, post: OwnedPost, user: CurrentUser, db: DbSession) -> PostOut:
    return await posts.change(db, post, body, user)


@router.delete(
    "/{post_id}",
    summary="Delete a post",
    description="Only the author or an administrator.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 422),
)
async def delete_post(post: OwnedPost, db: DbSession) -> Response:
    await posts.delete_post(db, post)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{post_id}/like",
    summary="Like a post",
    description="Idempotent: liking twice counts once.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 422),
)
async def like_post(post: VisiblePost, user: CurrentUser, db: DbSession) -> Response:
    await posts.set_like(db, post, user, liked=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{post_id}/like",
    summary="Unlike a post",
    description="Idempotent: unliking a post you do not like is not an error.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 422),
)
async def unlike_post(post: VisiblePost, user: CurrentUser, db: DbSession) -> Response:
    await posts.set_like(db, post, user, liked=False)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
