"""The background jobs: each a thin call into the service that does the work, given what a job
has (a JobContext) instead of a request's collaborators. Celery tasks and the in-process runner
both call these, so the two modes do the same work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from app.core.faults import Delivered, Interrupted, JobBusy, RetryableError
from app.core.queue import JOB_NAMES, PROCESS_IMAGE, SEND_EMAIL
from app.services import emails, images, tasks
from app.tasks.context import JobContext

__all__ = [
    "JOBS",
    "JOB_NAMES",
    "PROCESS_IMAGE",
    "SEND_EMAIL",
    "Delivered",
    "Interrupted",
    "JobBusy",
    "RetryableError",
    "give_up",
    "pending_images",
]

EMAIL_TIMED_OUT = "The e-mail could not be sent in time."


async def process_image(
    ctx: JobContext, task_id: str, image_id: int, **kwargs: Any
) -> dict[str, Any]:
    return await images.process(
        ctx.session_factory,
        settings=ctx.settings,
        media=ctx.media,
        cache=ctx.stores.cache,
        task_id=task_id,
        image_id=image_id,
        **kwargs,
    )


async def send_email(ctx: JobContext, task_id: str, **kwargs: Any) -> dict[str, Any]:
    return await emails.deliver(
        ctx.session_factory, settings=ctx.settings, mailer=ctx.mailer, task_id=task_id, **kwargs
    )


JOBS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    PROCESS_IMAGE: process_image,
    SEND_EMAIL: send_email,
}


async def give_up(
    ctx: JobContext,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    detail: str = "over its time limit",
    error: str = EMAIL_TIMED_OUT,
) -> None:
    """A job stopped at its time limit, or failed for a reason of its own: record its failure
    as its owner will read it (an image ends `failed`, never `pending` for ever)."""
    if name == PROCESS_IMAGE:
        await images.fail(
            ctx.session_factory,
            media=ctx.media,
            cache=ctx.stores.cache,
            image_id=kwargs["image_id"],
            detail=detail,
        )
        return
    await tasks.fail(ctx.session_factory, task_id, error=error)


async def pending_images(ctx: JobContext, older_than_seconds: int) -> list[tuple[str, int]]:
    """(task id, image id) of images still pending after `older_than_seconds`: the sweep."""
    return await images.pending(ctx.session_factory, older_than_seconds=older_than_seconds)
