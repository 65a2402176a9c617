from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Response, status

from app.dependencies import (
    BackendsDep,
    CurrentPrincipal,
    CurrentUser,
    DbSession,
    OwnedPost,
    PostId,
    PostQueryDep,
    PublicReader,
    VisiblePost,
)
from app.schemas.common import NUL_FREE_PATTERN, CursorPage, problem_responses
from app.schemas.post import (
    MAX_OFFSET,
    TOTAL_CAP,
    PostCreate,
    PostOut,
    PostPage,
    PostPatch,
    PostReplace,
)
from app.services import posts
from app.web.http import conditional_json

router = APIRouter(prefix="/api/posts", tags=["posts"])

Edit = Callable[[PostReplace | PostPatch], Awaitable[PostOut]]


async def post_edit(
    post: OwnedPost, caller: CurrentPrincipal, db: DbSession, backends: BackendsDep
) -> Edit:
    """Applies a replacement or a patch to the post the caller may change."""

    async def edit(changes: PostReplace | PostPatch) -> PostOut:
        return await posts.change(db, backends, post=post, changes=changes, viewer=caller)

    return edit


PostEdit = Annotated[Edit, Depends(post_edit)]


@router.post(
    "",
    operation_id="posts-create",
    summary="Create a post",
    description="Markdown `content`; up to 10 `tags`, lower-cased and de-duplicated. "
    "`published: false` makes a draft only you and administrators can see.",
    status_code=status.HTTP_201_CREATED,
    response_model=PostOut,
    responses=problem_responses(401, 413, 422),
)
async def create_post(
    body: PostCreate,
    response: Response,
    user: CurrentUser,
    db: DbSession,
    backends: BackendsDep,
) -> PostOut:
    post = await posts.create(db, backends, author=user, data=body)
    response.headers["Location"] = f"/api/posts/{post.id}"
    return post


@router.get(
    "",
    operation_id="posts-list",
    summary="List posts",
    description="Paged, sorted and filtered. Signed-in authors also see their own drafts.\n\n"
    "Two ways to page. By `offset` (up to "
    f"{MAX_OFFSET:,}): the answer is a `PostPage` whose `total` is exact up to {TOTAL_CAP:,} "
    "matching posts; beyond that the count stops (it is not an estimate) and `total_exact` is "
    "false. By `cursor` (send it empty for the first page, then each page's `next_cursor`): "
    "the answer is a `CursorPage`, each page costs the same at any depth, and posts written "
    "meanwhile cause neither duplicates nor gaps. A cursor works only with the sort and "
    "filters it was given for; any other is a 422.\n\n"
    "`q` is a full-text search; `sort=relevance` orders by it.",
    response_model=PostPage | CursorPage[PostOut],
    responses=problem_responses(401, 422),
)
async def list_posts(query: PostQueryDep, reader: PublicReader) -> Response:
    viewer, backends = reader
    body = await posts.list_json(backends, query=query, viewer=viewer)
    return Response(body, media_type="application/json")


@router.get(
    "/by-slug/{slug}",
    operation_id="posts-read-by-slug",
    summary="Read a post by its slug",
    description="As `GET /api/posts/{post_id}`, the post found by its `slug`.",
    response_model=PostOut,
    responses={304: {"description": "Not modified"}, **problem_responses(401, 404, 422)},
)
async def read_post_by_slug(
    slug: Annotated[str, Path(max_length=100, pattern=NUL_FREE_PATTERN)],
    reader: PublicReader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    viewer, backends = reader
    body = await posts.read_json_by_slug(backends, slug=slug, viewer=viewer)
    return conditional_json(body, if_none_match)


@router.get(
    "/{post_id}",
    operation_id="posts-read",
    summary="Read a post",
    description="Answers with an `ETag`; send it back in `If-None-Match` to get `304` when "
    "nothing changed.",
    response_model=PostOut,
    responses={304: {"description": "Not modified"}, **problem_responses(401, 404, 422)},
)
async def read_post(
    post_id: PostId,
    reader: PublicReader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    viewer, backends = reader
    body = await posts.read_json(backends, post_id=post_id, viewer=viewer)
    return conditional_json(body, if_none_match)


@router.put(
    "/{post_id}",
    operation_id="posts-replace",
    summary="Replace a post",
    description="Every field is required. Only the author or an administrator.",
    response_model=PostOut,
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def replace_post(body: PostReplace, edit: PostEdit) -> PostOut:
    return await edit(body)


@router.patch(
    "/{post_id}",
    operation_id="posts-update",
    summary="Change some fields of a post",
    description="Any subset of the fields. Only the author or an administrator.",
    response_model=PostOut,
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def patch_post(body: PostPatch, edit: PostEdit) -> PostOut:
    return await edit(body)


@router.delete(
    "/{post_id}",
    operation_id="posts-delete",
    summary="Delete a post",
    description="Only the author or an administrator.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 422),
)
async def delete_post(post: OwnedPost, db: DbSession, backends: BackendsDep) -> Response:
    await posts.delete_post(db, backends, post=post)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{post_id}/like",
    operation_id="posts-like",
    summary="Like a post",
    description="Idempotent: liking twice counts once.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 422),
)
async def like_post(
    caller: CurrentPrincipal, post: VisiblePost, db: DbSession, backends: BackendsDep
) -> Response:
    await posts.set_like(db, backends, post=post, user=caller, liked=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{post_id}/like",
    operation_id="posts-unlike",
    summary="Unlike a post",
    description="Idempotent: unliking a post you do not like is not an error.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 422),
)
async def unlike_post(
    caller: CurrentPrincipal, post: VisiblePost, db: DbSession, backends: BackendsDep
) -> Response:
    await posts.set_like(db, backends, post=post, user=caller, liked=False)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
