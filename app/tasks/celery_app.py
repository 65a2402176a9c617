"""The Celery application: `celery -A app.tasks worker` or `python -m app worker`.

Tasks are acknowledged late and rejected when their worker dies, so a worker killed mid-task
loses nothing: the broker delivers the task again (RabbitMQ at once; the Redis broker after
CELERY_VISIBILITY_TIMEOUT_SECONDS). The jobs are idempotent (keyed by their task id) and count
their attempts. Each has a soft and a hard time limit. A job that fails for a passing reason
(the database restarting) is retried with backoff and jitter, without counting an attempt; one
that fails for a reason of its own is recorded as failed: an exception is never acknowledged as
done. A job whose message the broker lost is sent again by the outbox's sweep.
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
from celery.signals import task_postrun, task_prerun, worker_process_shutdown

from app.config import get_settings
from app.core import s3
from app.core.context import RequestContext, request_context
from app.tasks import jobs
from app.tasks.celery_config import create_celery
from app.tasks.context import JobContext
from app.tasks.runner import CELERY_REQUEST_ID_HEADER, after_failure, record_failure

logger = logging.getLogger(__name__)
T = TypeVar("T")

settings = get_settings()
celery_app = create_celery(settings)
if settings.s3_bucket:
    s3.preload()  # before the pool forks: no job spends its time limit reading the S3 model

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
    request_id = task.request.get(CELERY_REQUEST_ID_HEADER) or task_id
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


def _run_job(task: Task[Any, Any], name: str, task_id: str, kwargs: dict[str, Any]) -> Any:
    """Run one job; a failure goes through the rule both runners share (`after_failure`): a
    passing fault is retried as a new message (published before this one is acknowledged), a
    failure of the job's own is recorded as such. No exception leaves an image `pending`."""
    if task.request.delivery_info and task.request.delivery_info.get("redelivered"):
        # Delivered again after its worker died mid-try: that try counts, whatever came before,
        # and its hold on the image is taken over (its holder is dead).
        kwargs = {k: v for k, v in kwargs.items() if k not in ("reuse_attempt", "delivered")}
        if name == jobs.PROCESS_IMAGE:
            kwargs["redelivered"] = True
    try:
        return _run(lambda ctx: jobs.JOBS[name](ctx, task_id, **kwargs))
    except SoftTimeLimitExceeded:
        _stopped_at_soft_limit(name, task_id, kwargs)
        raise
    except Exception as exc:
        step = after_failure(settings, name, kwargs, exc, task.request.retries)
        if step.give_up:
            logger.error("task crashed", extra={"task": name, "task_id": task_id}, exc_info=exc)
        failure = exc
        _run(lambda ctx: record_failure(ctx, name, task_id, step, failure))
        if step.retry_in is None:
            raise
        raise task.retry(
            exc=exc,
            kwargs={"task_id": task_id, **step.kwargs},
            countdown=step.retry_in,
            max_retries=None,  # after_failure counts the tries
        ) from exc


@celery_app.task(name="inkwell.process_image", bind=True, max_retries=None)
def process_image(
    self: Task[Any, Any], /, task_id: str, image_id: int, **extra: Any
) -> dict[str, Any]:
    result: dict[str, Any] = _run_job(
        self, jobs.PROCESS_IMAGE, task_id, {"image_id": image_id, **extra}
    )
    return result


@celery_app.task(name="inkwell.send_email", bind=True, max_retries=None)
def send_email(self: Task[Any, Any], /, task_id: str, **message: Any) -> dict[str, Any]:
    result: dict[str, Any] = _run_job(self, jobs.SEND_EMAIL, task_id, message)
    return result
