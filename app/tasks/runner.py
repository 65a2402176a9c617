"""How jobs are started: Celery when a broker is configured, in-process otherwise, both
`app.core.queue.TaskRunner`s. Services record a job in the outbox with their data and hand it
over after the commit (`app.tasks.outbox`); they never ask which runner they have."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from app.config import Settings
from app.core.faults import Delivered, Interrupted, JobBusy, RetryableError, is_transient
from app.core.metrics import TASKS_QUEUED
from app.core.queue import PROCESS_IMAGE, Job, TaskRunner
from app.models import TaskState
from app.services import tasks
from app.tasks.celery_config import create_celery
from app.tasks.context import JobContext
from app.tasks.jobs import JOBS, give_up
from app.web.middleware import RequestContext, request_context

__all__ = ["CeleryRunner", "InProcessRunner", "Job", "TaskRunner", "build_runner"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "inkwell_request_id"
EMAIL_RETRY_BASE_SECONDS = 2.0
EMAIL_RETRY_MAX_SECONDS = 300.0
EMAIL_MAX_RETRIES = 8
# Tries of a job after passing faults (a database restarting, an SMTP server down), backing off
# from two seconds to five minutes. An e-mail then fails; an image is left to the outbox's sweep,
# which sends it again (a new delivery, a new attempt) after IMAGE_STUCK_AFTER_SECONDS.
TRANSIENT_MAX_RETRIES = EMAIL_MAX_RETRIES
JOB_CRASHED = "The task could not be completed."
# What a task shows while a service it needs is away (the driver's message, with its SQL, is
# logged and never shown).
SERVICE_AWAY = "A service the task needs did not answer; it will be tried again."


def retry_delay(retries: int) -> float:
    """Exponential backoff: 2, 4, 8 ... seconds, capped at five minutes."""
    return float(min(EMAIL_RETRY_MAX_SECONDS, EMAIL_RETRY_BASE_SECONDS * 2**retries))


def with_jitter(seconds: float) -> float:
    """Between half and all of `seconds`, so that jobs that failed together (an SMTP server or
    a broker that was down) do not all come back at the same moment."""
    return seconds * random.uniform(0.5, 1.0)  # noqa: S311 - spreading retries, not a secret


@dataclass(frozen=True, slots=True)
class NextStep:
    """What follows a job's failure, in either runner."""

    retry_in: float | None  # seconds until the next try; None: no more tries now
    kwargs: dict[str, Any]  # the next try's arguments
    state: TaskState | None = None  # recorded on the task before the next try (or the end)
    error: str = ""
    give_up: bool = False  # failed for a reason of its own: recorded as failed for good


def after_failure(
    settings: Settings, name: str, kwargs: dict[str, Any], exc: BaseException, retries: int
) -> NextStep:
    """The one rule both runners follow when a job raises `exc` on its `retries`-th retry.

    A passing fault (`faults.is_transient`) is tried again with backoff and jitter, and does not
    count against the job's input: an image interrupted after counting its attempt reuses that
    attempt. Anything else is a failure of the job's own: it ends at once (an image `failed`),
    so that no exception is ever acknowledged as done with its image left `pending`."""
    if isinstance(exc, JobBusy):  # another copy holds it: look again when its hold ends
        return NextStep(with_jitter(settings.task_time_limit_seconds), kwargs)
    if not is_transient(exc):
        return NextStep(None, kwargs, TaskState.FAILURE, JOB_CRASHED, give_up=True)
    if isinstance(exc, Interrupted):
        kwargs = kwargs | {"reuse_attempt": exc.attempt}
    if isinstance(exc, Delivered):
        kwargs = kwargs | {"delivered": True}
    own_words = isinstance(exc, RetryableError) and not isinstance(exc, Delivered)
    error = str(exc) if own_words else SERVICE_AWAY
    if retries < TRANSIENT_MAX_RETRIES:
        return NextStep(with_jitter(retry_delay(retries)), kwargs, TaskState.RETRY, error)
    if name == PROCESS_IMAGE:  # the sweep sends it again later
        return NextStep(None, kwargs, TaskState.RETRY, error)
    return NextStep(None, kwargs, TaskState.FAILURE, error)


async def record_failure(
    ctx: JobContext, name: str, task_id: str, step: NextStep, exc: BaseException
) -> None:
    """Record what `after_failure` decided, as far as the database allows: a database still
    away leaves the task as it was, and the next try (or the sweep) settles it."""
    try:
        if step.give_up:
            await give_up(ctx, name, task_id, step.kwargs, detail=repr(exc), error=step.error)
        elif step.state is not None:
            await tasks.record(
                ctx.session_factory, task_id, state=step.state, result={"error": step.error}
            )
    except Exception as second:
        if not is_transient(second):
            raise
        logger.warning("could not record a job's failure", extra={"task": name, "task_id": task_id})


class InProcessRunner:
    """The embedded mode: each job runs as an asyncio task of this process, beside the response
    (CPU work goes to a thread). Retries back off like Celery's; a process that dies loses its
    jobs, and the start-up sweep queues pending images again."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._running: set[asyncio.Task[None]] = set()

    async def send(self, job: Job) -> None:
        context = contextvars.copy_context()
        if job.request_id is not None:
            # Sent by the relay too: the job's log lines carry the request that queued it.
            context.run(request_context.set, RequestContext(request_id=job.request_id))
        self._start(job.name, job.task_id, job.args, context)

    async def enqueue(self, name: str, task_id: str, **kwargs: Any) -> None:
        """Start a job that has no outbox row (images found pending at start-up)."""
        self._start(name, task_id, kwargs, contextvars.copy_context())

    def _start(
        self, name: str, task_id: str, kwargs: dict[str, Any], context: contextvars.Context
    ) -> None:
        TASKS_QUEUED.labels(name).inc()
        task = asyncio.create_task(
            self._run(name, task_id, kwargs), name=f"inkwell:{name}", context=context
        )
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
        settings = self._ctx.settings
        retries = 0
        while True:
            limit = asyncio.timeout(settings.task_soft_time_limit_seconds)
            try:
                async with limit:
                    await job(self._ctx, task_id, **kwargs)
                return TaskState.SUCCESS
            except Exception as exc:
                failure = exc
            if isinstance(failure, TimeoutError) and limit.expired():
                logger.error("task over its time limit", extra={"task": name, "task_id": task_id})
                await give_up(self._ctx, name, task_id, kwargs)
                return TaskState.FAILURE
            step = after_failure(settings, name, kwargs, failure, retries)
            if step.give_up:
                logger.error(
                    "task crashed", extra={"task": name, "task_id": task_id}, exc_info=failure
                )
            await record_failure(self._ctx, name, task_id, step, failure)
            if step.retry_in is None:
                logger.error("task failed", extra={"task": name, "task_id": task_id})
                return TaskState.FAILURE
            logger.warning(
                "task failed, will try again",
                extra={"task": name, "task_id": task_id, "retry_in": round(step.retry_in, 2)},
                exc_info=failure,
            )
            await asyncio.sleep(step.retry_in)
            if step.state is not None:  # a copy busy elsewhere costs no retry
                retries += 1
            kwargs = step.kwargs


class CeleryRunner:
    """The services mode: publish to the broker; a Celery worker runs the job."""

    def __init__(self, settings: Settings) -> None:
        self._celery = create_celery(settings)
        self._queue = settings.celery_queue

    async def send(self, job: Job) -> None:
        # The worker logs the task with the request id that queued it (a message header).
        headers = {REQUEST_ID_HEADER: job.request_id}
        # Publishing is blocking I/O (kombu): keep it off the event loop. A broker that hangs
        # must not hold the request: the caller stops waiting after its timeout.
        await anyio.to_thread.run_sync(
            lambda: self._celery.send_task(
                f"inkwell.{job.name}",
                kwargs={"task_id": job.task_id, **job.args},
                task_id=job.task_id,
                queue=self._queue,
                headers=headers,
                retry=False,
            ),
            abandon_on_cancel=True,
        )
        TASKS_QUEUED.labels(job.name).inc()

    async def drain(self) -> None:
        return None


def build_runner(settings: Settings, ctx: JobContext) -> TaskRunner:
    return CeleryRunner(settings) if settings.celery_broker_url else InProcessRunner(ctx)
