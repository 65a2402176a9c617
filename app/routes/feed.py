from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.dependencies import BackendsDep, CurrentPrincipal
from app.schemas.common import CursorPage, CursorQuery, problem_responses
from app.schemas.post import PostOut
from app.services import feed

router = APIRouter(prefix="/api/feed", tags=["feed"])


@router.get(
    "",
    operation_id="feed-read",
    summary="Your feed",
    description="The published posts of the users you follow, newest first, by cursor: pass "
    "`next_cursor` back as `cursor` for the next page. Posts published meanwhile neither "
    "repeat nor push items out of the pages that follow.",
    response_model=CursorPage[PostOut],
    responses=problem_responses(401, 422),
)
async def read_feed(
    query: Annotated[CursorQuery, Query()], caller: CurrentPrincipal, backends: BackendsDep
) -> Response:
    body = await feed.read_json(backends, viewer=caller, query=query)
    return Response(body, media_type="application/json")
