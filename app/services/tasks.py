"""Background tasks as the API sees them: created with the work they belong to, queued after
the commit, and shown only to the user who queued them."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import Task
from app.schemas.task import TaskOut


class TaskNotFound(NotFound):
    code = "task_not_found"
    detail = "No such task."


def new(db: AsyncSession, name: str, user_id: int | None) -> Task:
    """A task row in the caller's transaction; queue it with the runner once that commits."""
    task = Task(id=str(uuid.uuid4()), name=name, user_id=user_id)
    db.add(task)
    return task


async def get(db: AsyncSession, task_id: str, user_id: int) -> TaskOut:
    task = await db.get(Task, task_id)
    if task is None or task.user_id != user_id:
        raise TaskNotFound
    result: dict[str, Any] | None = task.result
    return TaskOut(id=task.id, name=task.name, state=task.state, result=result)


async def counts_by_state(db: AsyncSession) -> list[tuple[str, str, int]]:
    """How many tasks of each name are in each state, for the metrics."""
    rows = await db.execute(
        select(Task.name, Task.state, func.count()).group_by(Task.name, Task.state)
    )
    return [(name, state, count) for name, state, count in rows]
