"""The queueing interface services depend on, without knowing which runner (Celery or
in-process) does the work: the job names, a job as a runner receives it, the runner's Protocol
and the outbox's. The runners and the outbox live in `app.tasks`; the jobs there call services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the queue knows no tables
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.models import OutboxJob, Task

PROCESS_IMAGE = "process_image"
SEND_EMAIL = "send_email"
JOB_NAMES = (PROCESS_IMAGE, SEND_EMAIL)


@dataclass(frozen=True, slots=True)
class Job:
    """One job of the outbox, as a runner receives it."""

    id: int
    name: str
    task_id: str
    args: dict[str, Any]
    request_id: str | None = None


class TaskRunner(Protocol):
    async def send(self, job: Job) -> None:
        """Hand the job over (raises when it cannot: the outbox sends it again later)."""

    async def drain(self) -> None: ...


class JobOutbox(Protocol):
    """Where a service records a job, in the transaction of the data it is about, and hands it
    over once that commits (`app.tasks.outbox.Outbox`)."""

    def record(self, db: AsyncSession, task: Task, name: str, **args: Any) -> OutboxJob: ...

    async def dispatch(self, row: OutboxJob) -> None: ...
