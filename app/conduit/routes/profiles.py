from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.conduit import mapping
from app.conduit.dependencies import CurrentPrincipal, OptionalPrincipal
from app.conduit.schemas import ProfileResponse
from app.conduit.util import error_responses
from app.dependencies import BackendsDep, DbSession
from app.schemas.common import NUL_FREE_PATTERN
from app.services import profiles

router = APIRouter(prefix="/api/profiles", tags=["Profile"])

Username = Annotated[
    str, Path(max_length=64, pattern=NUL_FREE_PATTERN, description="The user's username")
]


@router.get(
    "/{username}",
    operation_id="GetProfileByUsername",
    summary="Get a profile",
    description="`following`: whether you follow them. Deactivated users have no profile.",
    response_model=ProfileResponse,
    responses=error_responses(401, 404, 422),
)
async def read_profile(
    username: Username, viewer: OptionalPrincipal, backends: BackendsDep
) -> ProfileResponse:
    found = await profiles.read(backends, username=username, viewer=viewer)
    return ProfileResponse(profile=mapping.profile(found))


@router.post(
    "/{username}/follow",
    operation_id="FollowUserByUsername",
    summary="Follow a user",
    description="Idempotent. Their articles then appear in your feed. You cannot follow "
    "yourself (422).",
    response_model=ProfileResponse,
    responses=error_responses(401, 404, 422),
)
async def follow(
    caller: CurrentPrincipal, username: Username, db: DbSession, backends: BackendsDep
) -> ProfileResponse:
    found = await profiles.set_following(
        db, backends, viewer=caller, username=username, follow=True
    )
    return ProfileResponse(profile=mapping.profile(found))


@router.delete(
    "/{username}/follow",
    operation_id="UnfollowUserByUsername",
    summary="Unfollow a user",
    description="Idempotent.",
    response_model=ProfileResponse,
    responses=error_responses(401, 404, 422),
)
async def unfollow(
    caller: CurrentPrincipal, username: Username, db: DbSession, backends: BackendsDep
) -> ProfileResponse:
    found = await profiles.set_following(
        db, backends, viewer=caller, username=username, follow=False
    )
    return ProfileResponse(profile=mapping.profile(found))
