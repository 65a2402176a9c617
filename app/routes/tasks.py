from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.dependencies import CurrentPrincipal, DbSession
from app.schemas.common import problem_responses
from app.schemas.task import TaskOut
from app.services import tasks

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

TaskId = Annotated[str, Path(max_length=36, description="The task's id")]


@router.get(
    "/{task_id}",
    operation_id="tasks-read",
    summary="Follow a background task",
    description="State (`PENDING`, `STARTED`, `RETRY`, `SUCCESS`, `FAILURE`) and result; "
    "only for the user who queued it.",
    response_model=TaskOut,
    responses=problem_responses(401, 404, 422),
)
async def read_task(task_id: TaskId, caller: CurrentPrincipal, db: DbSession) -> TaskOut:
    return await tasks.get(db, task_id=task_id, user_id=caller.id)
