"""The background jobs themselves, as async functions of a JobContext. Celery tasks and the
in-process runner both call these, so the two modes do the same work."""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from sqlalchemy import select, update

from app.database.types import utcnow
from app.imaging import ImageRejected, probe, process
from app.mail import render
from app.models import Image, ImageStatus, Task, TaskState
from app.stores.cache import post_generations
from app.tasks.context import JobContext

logger = logging.getLogger(__name__)

PROCESS_IMAGE = "process_image"
SEND_EMAIL = "send_email"


class RetryableError(Exception):
    """A failure worth trying again later (an SMTP server that is down)."""


async def record_state(
    ctx: JobContext, task_id: str, state: TaskState, result: dict[str, Any] | None = None
) -> None:
    async with ctx.session_factory() as db:
        await db.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(state=state, result=result, updated_at=utcnow())
        )
        await db.commit()


async def process_image(ctx: JobContext, task_id: str, image_id: int) -> dict[str, Any]:
    """Turn an uploaded file into its cleaned original and variants. Idempotent: a ready image
    is left alone, files are written atomically, and attempts are counted so that an image that
    keeps killing its worker ends `failed` instead of coming back for ever."""
    async with ctx.session_factory() as db:
        image = await db.get(Image, image_id)
        if image is None:
            return {"image_id": image_id, "status": "deleted"}
        if image.status != ImageStatus.PENDING:
            return {"image_id": image_id, "status": image.status}
        image.attempts += 1
        await db.commit()
        await record_state(ctx, task_id, TaskState.STARTED, {"image_id": image_id})
        if image.attempts > ctx.settings.task_max_attempts:
            return await _finish(ctx, image, failure=f"gave up after {image.attempts - 1} attempts")
        source = ctx.media.upload_path(image.storage_key)
        try:
            checked = await anyio.to_thread.run_sync(probe, source, image.format)
            if checked.width * checked.height > ctx.settings.max_image_pixels:
                raise ImageRejected("The image has too many pixels.")
            variants = await anyio.to_thread.run_sync(
                process, source, image.format, ctx.media.image_dir(image.storage_key)
            )
        except (ImageRejected, FileNotFoundError) as exc:
            return await _finish(ctx, image, failure=str(exc) or "the upload is missing")
        image.variants = {
            v.name: v.as_dict(ctx.media.url(image.storage_key, v.filename)) for v in variants
        }
        original = image.variants["original"]
        image.width, image.height = original["width"], original["height"]  # upright now
        return await _finish(ctx, image)


async def _finish(ctx: JobContext, image: Image, failure: str | None = None) -> dict[str, Any]:
    status = ImageStatus.FAILED if failure else ImageStatus.READY
    result: dict[str, Any] = {"image_id": image.id, "status": status}
    if failure:
        result["reason"] = failure
    async with ctx.session_factory() as db:
        image = await db.merge(image)
        image.status = status
        image.failure_reason = failure[:500] if failure else None
        image.updated_at = utcnow()
        # The image and its task change together: whoever sees one sees the other.
        await db.execute(
            update(Task)
            .where(Task.id == image.task_id)
            .values(state=TaskState.SUCCESS, result=result, updated_at=utcnow())
        )
        await db.commit()
    if failure is None:
        ctx.media.upload_path(image.storage_key).unlink(missing_ok=True)
    await ctx.stores.cache.bump(*post_generations(image.post_id))
    if failure:
        logger.warning("image failed", extra={"image_id": image.id, "reason": failure})
    return result


async def send_email(
    ctx: JobContext,
    task_id: str,
    template: str,
    to: str,
    subject: str,
    values: dict[str, str],
) -> dict[str, Any]:
    """Render and send one message. SMTP and network errors raise RetryableError."""
    message = render(template, to, subject, ctx.settings.smtp_from, **values)
    await record_state(ctx, task_id, TaskState.STARTED)
    try:
        await ctx.mailer.send(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise RetryableError(repr(exc)) from exc
    result = {"to": to, "template": template}
    await record_state(ctx, task_id, TaskState.SUCCESS, result)
    return result


async def pending_images(ctx: JobContext, older_than_seconds: int) -> list[tuple[str, int]]:
    """(task id, image id) of images still pending after `older_than_seconds`: the sweep."""
    cutoff = utcnow().timestamp() - older_than_seconds
    async with ctx.session_factory() as db:
        rows = await db.execute(
            select(Image.task_id, Image.id, Image.updated_at).where(
                Image.status == ImageStatus.PENDING
            )
        )
        return [(t, i) for t, i, at in rows if at.timestamp() <= cutoff]


JOBS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    PROCESS_IMAGE: process_image,
    SEND_EMAIL: send_email,
}
