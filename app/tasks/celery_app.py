"""The Celery application: `celery -A app.tasks.celery_app worker` or `python -m app worker`.

Tasks are acknowledged late and rejected when their worker dies, so a worker killed mid-task
loses nothing: the broker delivers the task again (RabbitMQ at once; the Redis broker after
CELERY_VISIBILITY_TIMEOUT_SECONDS). The jobs are idempotent (keyed by their task id) and count
their attempts. Each has a soft and a hard time limit, and retries wait with jitter.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun, worker_process_shutdown, worker_ready

from app.config import get_settings
from app.middleware import RequestContext, request_context
from app.models import TaskState
from app.tasks import jobs
from app.tasks.celery_config import create_celery
from app.tasks.context import JobContext
from app.tasks.runner import EMAIL_MAX_RETRIES, REQUEST_ID_HEADER, retry_delay, with_jitter

logger = logging.getLogger(__name__)
T = TypeVar("T")

settings = get_settings()
celery_app = create_celery(settings)

# One event loop and one JobContext (engine, Redis pool) per worker process, made on first use
# so that nothing is shared across the fork.
_loop: asyncio.Runner | None = None
_started: dict[str, float] = {}
_ctx: JobContext | None = None


def _run(make: Any) -> Any:
    global _loop, _ctx
    if _loop is None:
        _loop = asyncio.Runner()
    if _ctx is None:
        _ctx = JobContext.for_worker(settings)
    coroutine: Coroutine[Any, Any, Any] = make(_ctx)
    # The current context (the task's request id): the Runner would otherwise run every job
    # in the context it captured when it was made.
    return _loop.run(coroutine, context=contextvars.copy_context())


def _forget_parent_state() -> None:
    # A pool child forked after the main process used its loop (the start-up sweep) must not
    # share that loop's sockets: it builds its own on first use.
    global _loop, _ctx
    _loop, _ctx = None, None


os.register_at_fork(after_in_child=_forget_parent_state)


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _loop is not None and _ctx is not None:
        _loop.run(_ctx.close())
        _loop.close()


def _job_name(task: Task[Any, Any]) -> str:
    """`process_image`, as the in-process runner names it too."""
    return str(task.name).removeprefix("inkwell.")


@task_prerun.connect
def _task_started(task: Task[Any, Any], task_id: str, **_: Any) -> None:
    """The task's log lines carry the id of the request that queued it."""
    request_id = task.request.get(REQUEST_ID_HEADER) or task_id
    request_context.set(RequestContext(request_id=str(request_id)))
    _started[task_id] = time.perf_counter()
    logger.info("task started", extra={"task": _job_name(task), "task_id": task_id})


@task_postrun.connect
def _task_finished(task: Task[Any, Any], task_id: str, state: str | None = None, **_: Any) -> None:
    seconds = time.perf_counter() - _started.pop(task_id, time.perf_counter())
    logger.info(
        "task finished",
        extra={
            "task": _job_name(task),
            "task_id": task_id,
            "state": state,
            "duration_ms": round(seconds * 1000, 2),
        },
    )
    request_context.set(None)


def _stopped_at_soft_limit(name: str, task_id: str, kwargs: dict[str, Any]) -> None:
    """The job was interrupted wherever it was (its event loop included): leave that loop and
    its connections behind, and record the failure with fresh ones."""
    global _loop, _ctx
    logger.error("task over its time limit", extra={"task": name, "task_id": task_id})
    _loop, _ctx = None, None
    _run(lambda ctx: jobs.give_up(ctx, name, task_id, kwargs))


@celery_app.task(name="inkwell.process_image", bind=True)
def process_image(self: Task[Any, Any], /, task_id: str, image_id: int) -> dict[str, Any]:
    try:
        result: dict[str, Any] = _run(lambda ctx: jobs.process_image(ctx, task_id, image_id))
    except SoftTimeLimitExceeded:
        _stopped_at_soft_limit(jobs.PROCESS_IMAGE, task_id, {"image_id": image_id})
        raise
    return result


@celery_app.task(name="inkwell.send_email", bind=True, max_retries=EMAIL_MAX_RETRIES)
def send_email(self: Task[Any, Any], /, task_id: str, **message: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = _run(lambda ctx: jobs.send_email(ctx, task_id, **message))
    except jobs.JobBusy as exc:  # a copy of this task is being sent: look again when it is done
        countdown = with_jitter(settings.task_time_limit_seconds)
        raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    except SoftTimeLimitExceeded:
        _stopped_at_soft_limit(jobs.SEND_EMAIL, task_id, message)
        raise
    except Exception as exc:  # SMTP down, or anything else: a message is worth another try
        retries = self.request.retries
        state = TaskState.RETRY if retries < EMAIL_MAX_RETRIES else TaskState.FAILURE
        error = {"error": str(exc)}
        _run(lambda ctx: jobs.record_state(ctx, task_id, state, error))
        if state is TaskState.FAILURE:
            raise
        countdown = with_jitter(retry_delay(retries))
        raise self.retry(exc=exc, countdown=countdown) from exc
    return result


@worker_ready.connect
def _sweep(**_: Any) -> None:
    """Queue again the images left pending by a worker that died: a bounded recovery even when
    the broker forgot the task."""
    stuck = _run(lambda ctx: jobs.pending_images(ctx, settings.image_stuck_after_seconds))
    for task_id, image_id in stuck:
        process_image.apply_async(
            kwargs={"task_id": task_id, "image_id": image_id}, queue=settings.celery_queue
        )
    if stuck:
        logger.warning("queued stuck images again", extra={"count": len(stuck)})
