from __future__ import annotations

from fastapi import APIRouter

from app.conduit.schemas import TagsResponse
from app.conduit.util import error_responses
from app.dependencies import DbSession
from app.services import posts

router = APIRouter(prefix="/api", tags=["Tags"])

# RealWorld lists every tag; the most used ones, up to this many, are enough for a tag cloud.
MAX_TAGS = 500


@router.get(
    "/tags",
    operation_id="GetTags",
    summary="Get tags",
    description=f"Tags of published articles, most used first (at most {MAX_TAGS}).",
    response_model=TagsResponse,
    responses=error_responses(),
)
async def list_tags(db: DbSession) -> TagsResponse:
    return TagsResponse(tags=[tag.name for tag in await posts.popular_tags(db, None, MAX_TAGS)])
