"""How jobs are started: Celery when a broker is configured, in-process otherwise. Services call
`enqueue` after their transaction commits and never ask which runner they have."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import anyio.to_thread

from app.config import Settings
from app.metrics import TASKS_QUEUED
from app.middleware import current_request_id
from app.models import TaskState
from app.tasks.celery_config import create_celery
from app.tasks.context import JobContext
from app.tasks.jobs import JOBS, RetryableError, record_state

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "inkwell_request_id"
EMAIL_RETRY_BASE_SECONDS = 2.0
EMAIL_RETRY_MAX_SECONDS = 300.0
EMAIL_MAX_RETRIES = 8


def retry_delay(retries: int) -> float:
    """Exponential backoff: 2, 4, 8 ... seconds, capped at five minutes."""
    return float(min(EMAIL_RETRY_MAX_SECONDS, EMAIL_RETRY_BASE_SECONDS * 2**retries))


class TaskRunner(Protocol):
    async def enqueue(self, name: str, task_id: str, **kwargs: Any) -> None: ...

    async def drain(self) -> None: ...


class InProcessRunner:
    """The embedded mode: each job runs as an asyncio task of this process, beside the response
    (CPU work goes to a thread). Retries back off like Celery's; a process that dies loses its
    jobs, and the start-up sweep queues pending images again."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._running: set[asyncio.Task[None]] = set()

    async def enqueue(self, name: str, task_id: str, **kwargs: Any) -> None:
        # The task copies this context: its log lines carry the request id that queued it.
        TASKS_QUEUED.labels(name).inc()
        task = asyncio.create_task(self._run(name, task_id, kwargs), name=f"inkwell:{name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def drain(self) -> None:
        """Wait for every job started so far (tests, and a graceful shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def _run(self, name: str, task_id: str, kwargs: dict[str, Any]) -> None:
        logger.info("task started", extra={"task": name, "task_id": task_id})
        started = time.perf_counter()
        state = await self._attempts(name, task_id, kwargs)
        logger.info(
            "task finished",
            extra={
                "task": name,
                "task_id": task_id,
                "state": state,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    async def _attempts(self, name: str, task_id: str, kwargs: dict[str, Any]) -> TaskState:
        job = JOBS[name]
        for attempt in range(EMAIL_MAX_RETRIES + 1):
            try:
                await job(self._ctx, task_id, **kwargs)
                return TaskState.SUCCESS
            except RetryableError as exc:
                if attempt == EMAIL_MAX_RETRIES:
                    await record_state(self._ctx, task_id, TaskState.FAILURE, {"error": str(exc)})
                    logger.error("task failed", extra={"task": name, "task_id": task_id})
                    return TaskState.FAILURE
                await record_state(self._ctx, task_id, TaskState.RETRY, {"error": str(exc)})
                await asyncio.sleep(retry_delay(attempt))
            except Exception as exc:
                logger.exception("task crashed", extra={"task": name, "task_id": task_id})
                await record_state(self._ctx, task_id, TaskState.FAILURE, {"error": repr(exc)})
                return TaskState.FAILURE
        raise AssertionError("unreachable: the last attempt returns")


class CeleryRunner:
    """The services mode: publish to the broker; a Celery worker runs the job."""

    def __init__(self, settings: Settings) -> None:
        self._celery = create_celery(settings)
        self._queue = settings.celery_queue

    async def enqueue(self, name: str, task_id: str, **kwargs: Any) -> None:
        TASKS_QUEUED.labels(name).inc()
        # The worker logs the task with the request id that queued it (a message header).
        headers = {REQUEST_ID_HEADER: current_request_id()}
        # Publishing is blocking I/O (kombu): keep it off the event loop.
        await anyio.to_thread.run_sync(
            lambda: self._celery.send_task(
                f"inkwell.{name}",
                kwargs={"task_id": task_id, **kwargs},
                task_id=task_id,
                queue=self._queue,
                headers=headers,
            )
        )

    async def drain(self) -> None:
        return None


def build_runner(settings: Settings, ctx: JobContext) -> TaskRunner:
    return CeleryRunner(settings) if settings.celery_broker_url else InProcessRunner(ctx)
