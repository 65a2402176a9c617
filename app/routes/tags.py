from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.dependencies import DbSession
from app.schemas.common import problem_responses
from app.schemas.post import TagCount
from app.services import posts

router = APIRouter(prefix="/api/tags", tags=["posts"])


@router.get(
    "",
    operation_id="tags-list",
    summary="Popular tags",
    description="Tags of published posts with their counts, most used first. `q` filters by "
    "name prefix, for autocomplete.",
    response_model=list[TagCount],
    responses=problem_responses(422),
)
async def list_tags(
    db: DbSession,
    q: Annotated[str | None, Query(max_length=32, description="Name prefix")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[TagCount]:
    return await posts.popular_tags(db, prefix=q, limit=limit)
