"""Background tasks as the API sees them: created with the work they belong to, queued after
the commit, and shown only to the user who queued them."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database.types import utcnow
from app.errors import TaskNotFound
from app.models import Task, TaskState
from app.schemas.task import TaskOut

__all__ = ["TaskNotFound", "counts_by_state", "fail", "get", "new", "record"]


def new(db: AsyncSession, name: str, user_id: int | None) -> Task:
    """A task row in the caller's transaction; queue it with the runner once that commits."""
    task = Task(id=str(uuid.uuid4()), name=name, user_id=user_id)
    db.add(task)
    return task


async def record(
    sessions: async_sessionmaker[AsyncSession],
    task_id: str,
    *,
    state: TaskState,
    result: dict[str, Any] | None = None,
) -> None:
    """Set a task's state and result, in a transaction of its own (the jobs' way)."""
    async with sessions() as db:
        await db.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(state=state, result=result, updated_at=utcnow())
        )
        await db.commit()


async def fail(sessions: async_sessionmaker[AsyncSession], task_id: str, *, error: str) -> None:
    """End a task FAILURE, with what its owner reads about why."""
    await record(sessions, task_id, state=TaskState.FAILURE, result={"error": error})


async def get(db: AsyncSession, *, task_id: str, user_id: int) -> TaskOut:
    """The task, if `user_id` queued it (404 otherwise, whether or not it exists)."""
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
