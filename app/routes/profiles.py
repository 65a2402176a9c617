from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.dependencies import BackendsDep, CurrentPrincipal, DbSession, OptionalPrincipal
from app.schemas.common import NUL_FREE_PATTERN, CursorPage, CursorQuery, problem_responses
from app.schemas.profile import Profile
from app.services import profiles

router = APIRouter(prefix="/api/profiles", tags=["profiles"])

UsernamePath = Annotated[
    str, Path(max_length=64, pattern=NUL_FREE_PATTERN, description="The user's username")
]
CursorParams = Annotated[CursorQuery, Query()]


@router.get(
    "/{username}",
    operation_id="profiles-read",
    summary="Read a profile",
    description="A user as others see them, with their counts of followers, users followed "
    "and published posts; `following` says whether you follow them. Deactivated users have "
    "no profile.",
    response_model=Profile,
    responses=problem_responses(401, 404, 422),
)
async def read_profile(
    username: UsernamePath, viewer: OptionalPrincipal, backends: BackendsDep
) -> Response:
    body = await profiles.read_json(backends, username=username, viewer=viewer)
    return Response(body, media_type="application/json")


@router.put(
    "/{username}/follow",
    operation_id="profiles-follow",
    summary="Follow a user",
    description="Idempotent: following twice follows once. Their posts then appear in your "
    "feed (`GET /api/feed`). You cannot follow yourself (422).",
    response_model=Profile,
    responses=problem_responses(401, 404, 422),
)
async def follow(
    username: UsernamePath, caller: CurrentPrincipal, db: DbSession, backends: BackendsDep
) -> Profile:
    return await profiles.set_following(db, backends, viewer=caller, username=username, follow=True)


@router.delete(
    "/{username}/follow",
    operation_id="profiles-unfollow",
    summary="Unfollow a user",
    description="Idempotent: unfollowing someone you do not follow is not an error.",
    response_model=Profile,
    responses=problem_responses(401, 404, 422),
)
async def unfollow(
    username: UsernamePath, caller: CurrentPrincipal, db: DbSession, backends: BackendsDep
) -> Profile:
    return await profiles.set_following(
        db, backends, viewer=caller, username=username, follow=False
    )


@router.get(
    "/{username}/followers",
    operation_id="profiles-followers",
    summary="List a user's followers",
    description="Newest follow first, by cursor: pass `next_cursor` back as `cursor` for the "
    "next page (`null` on the last one). A cursor that was tampered with is 422.",
    response_model=CursorPage[Profile],
    responses=problem_responses(401, 404, 422),
)
async def followers(
    username: UsernamePath, query: CursorParams, viewer: OptionalPrincipal, backends: BackendsDep
) -> Response:
    body = await profiles.list_json(
        backends, username=username, direction="followers", query=query, viewer=viewer
    )
    return Response(body, media_type="application/json")


@router.get(
    "/{username}/following",
    operation_id="profiles-following",
    summary="List whom a user follows",
    description="Newest follow first, by cursor, as `/followers`.",
    response_model=CursorPage[Profile],
    responses=problem_responses(401, 404, 422),
)
async def following(
    username: UsernamePath, query: CursorParams, viewer: OptionalPrincipal, backends: BackendsDep
) -> Response:
    body = await profiles.list_json(
        backends, username=username, direction="following", query=query, viewer=viewer
    )
    return Response(body, media_type="application/json")
