"""The background jobs themselves, as async functions of a JobContext. Celery tasks and the
in-process runner both call these, so the two modes do the same work."""

from __future__ import annotations

import enum
import logging
import smtplib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import anyio.to_thread
from PIL import Image as PilImage
from sqlalchemy import and_, case, or_, select, update

from app.core.imaging import ImageRejected, probe, process
from app.core.mail import render
from app.database.types import utcnow
from app.models import Image, ImageStatus, Task, TaskState
from app.stores.cache import post_generations
from app.tasks.context import JobContext
from app.tasks.faults import RetryableError, is_transient

__all__ = ["RetryableError"]

logger = logging.getLogger(__name__)

PROCESS_IMAGE = "process_image"
SEND_EMAIL = "send_email"
JOB_NAMES = (PROCESS_IMAGE, SEND_EMAIL)


class JobBusy(RetryableError):
    """Another copy of this job (a redelivery, a second send) holds it: try again when its hold
    ends, without counting an attempt or touching the task."""


class Delivered(RetryableError):
    """An e-mail sent whose success could not be recorded: the next try only records it."""


class Interrupted(RetryableError):
    """An image job stopped by a passing fault (the database went away) after it counted its
    attempt: the next try of the same job reuses that attempt (`reuse_attempt`), so that a
    fault of a service never makes an image fail."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"interrupted at attempt {attempt}")
        self.attempt = attempt


class Failure(enum.StrEnum):
    """Why an image failed, as its owner reads it. The details (paths, exceptions) are logged,
    never stored in the row."""

    NOT_AN_IMAGE = "The file is not a valid image."
    TOO_MANY_PIXELS = "The image has too many pixels."
    UPLOAD_MISSING = "The uploaded file is missing. Upload the image again."
    UNPROCESSABLE = "The image could not be processed."


EMAIL_TIMED_OUT = "The e-mail could not be sent in time."


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


async def process_image(
    ctx: JobContext,
    task_id: str,
    image_id: int,
    reuse_attempt: int | None = None,
    redelivered: bool = False,
) -> dict[str, Any]:
    """Turn an uploaded file into its cleaned original and variants. Idempotent: only a pending
    image is worked on, by one try at a time (its task holds it), files are written atomically,
    a deleted image stays deleted, and attempts are counted so that an image that keeps killing
    its worker ends `failed` instead of coming back for ever.

    A try after a passing fault (`reuse_attempt`: the attempt that fault interrupted) does not
    count again; a passing fault raises Interrupted. A copy of the job that finds another one
    holding the image raises JobBusy, without counting, unless it takes that hold over: it is
    the same message delivered again because its worker died (`redelivered`), or the try after
    a fault of its own."""
    async with ctx.session_factory() as db:
        image = await db.get(Image, image_id)
        if image is not None and image.task_id != task_id:
            image = None  # not the image this job was queued for: that one is gone
        if image is not None and image.status != ImageStatus.PENDING:
            return {"image_id": image_id, "status": image.status}
    if image is None:  # deleted before its job ran: the task says so
        result = {"image_id": image_id, "status": "deleted"}
        await record_state(ctx, task_id, TaskState.SUCCESS, result)
        return result
    attempts = await _start(ctx, task_id, image_id, reuse_attempt, redelivered)
    if attempts is None:  # deleted, or finished by another copy, just now
        return {"image_id": image_id, "status": "gone"}
    try:
        return await _process(ctx, image, attempts)
    except Exception as exc:
        if is_transient(exc):
            raise Interrupted(attempts) from exc
        raise


async def _start(
    ctx: JobContext, task_id: str, image_id: int, reuse_attempt: int | None, redelivered: bool
) -> int | None:
    """Count the attempt and hold the task, in one transaction (the image's row first, as
    `_finish` locks them): the attempt number, or None when the image is no longer pending."""
    counted: Any = Image.attempts + 1
    if reuse_attempt is not None:  # the interrupted try's count stands for this one
        counted = case((Image.attempts == reuse_attempt, Image.attempts), else_=counted)
    now = utcnow()
    stale = now - timedelta(seconds=ctx.settings.task_time_limit_seconds)
    claim = update(Task).where(Task.id == task_id)
    if not (redelivered or reuse_attempt is not None):
        claim = claim.where(or_(Task.state != TaskState.STARTED, Task.updated_at < stale))
    async with ctx.session_factory() as db:
        attempts = await db.scalar(
            update(Image)
            .where(
                Image.id == image_id,
                Image.task_id == task_id,
                Image.status == ImageStatus.PENDING,
            )
            .values(attempts=counted)
            .returning(Image.attempts)
        )
        if attempts is None:
            await db.rollback()
            return None
        held = await db.scalar(
            claim.values(state=TaskState.STARTED, result={"image_id": image_id}, updated_at=now)
            .returning(Task.id)
            .execution_options(synchronize_session=False)
        )
        if held is None:
            state = await db.scalar(select(Task.state).where(Task.id == task_id))
            if state == TaskState.STARTED:
                await db.rollback()
                raise JobBusy(f"image {image_id} is being processed by another try")
        await db.commit()
    return int(attempts)


async def _process(ctx: JobContext, image: Image, attempts: int) -> dict[str, Any]:
    if attempts > ctx.settings.task_max_attempts:
        detail = f"gave up after {attempts - 1} attempts"
        return await _finish(ctx, image, failure=Failure.UNPROCESSABLE, detail=detail)
    source = ctx.media.upload_path(image.storage_key)
    try:
        checked = await anyio.to_thread.run_sync(probe, source, image.format)
        if checked.width * checked.height > ctx.settings.max_image_pixels:
            return await _finish(ctx, image, failure=Failure.TOO_MANY_PIXELS)
        variants = await anyio.to_thread.run_sync(
            process, source, image.format, ctx.media.image_dir(image.storage_key)
        )
    except ImageRejected as exc:
        return await _finish(ctx, image, failure=_rejected(exc), detail=str(exc))
    except FileNotFoundError as exc:
        return await _finish(ctx, image, failure=Failure.UPLOAD_MISSING, detail=str(exc))
    image.variants = {
        v.name: v.as_dict(ctx.media.url(image.storage_key, v.filename)) for v in variants
    }
    original = image.variants["original"]
    image.width, image.height = original["width"], original["height"]  # upright now
    return await _finish(ctx, image)


def _rejected(exc: ImageRejected) -> Failure:
    if isinstance(exc.__cause__, PilImage.DecompressionBombError):
        return Failure.TOO_MANY_PIXELS
    if isinstance(exc.__cause__, FileNotFoundError):
        return Failure.UPLOAD_MISSING
    return Failure.NOT_AN_IMAGE


async def _finish(
    ctx: JobContext, image: Image, failure: Failure | None = None, detail: str | None = None
) -> dict[str, Any]:
    """Record the outcome, if the image is still there and still pending: one conditional
    UPDATE in the transaction that settles the task too, so an image deleted meanwhile is not
    brought back, and the files written for it are removed."""
    status = ImageStatus.FAILED if failure else ImageStatus.READY
    result: dict[str, Any] = {"image_id": image.id, "status": status}
    if failure:
        result["reason"] = failure.value
    values: dict[str, Any] = {
        "status": status,
        "failure_reason": failure.value if failure else None,
        "updated_at": utcnow(),
    }
    if failure is None:
        values |= {"variants": image.variants, "width": image.width, "height": image.height}
    async with ctx.session_factory() as db:
        settled = await db.scalar(
            update(Image)
            .where(Image.id == image.id, Image.status == ImageStatus.PENDING)
            .values(**values)
            .returning(Image.id)
        )
        if settled is None:
            current = await db.scalar(select(Image.status).where(Image.id == image.id))
            if current is not None:  # another copy of the job settled it: its result stands
                await db.rollback()
                return {"image_id": image.id, "status": current}
            result = {"image_id": image.id, "status": "deleted"}
        # The image and its task change together: whoever sees one sees the other.
        await db.execute(
            update(Task)
            .where(Task.id == image.task_id)
            .values(state=TaskState.SUCCESS, result=result, updated_at=utcnow())
        )
        await db.commit()
    if settled is None:
        await anyio.to_thread.run_sync(ctx.media.delete, image.storage_key)
        logger.info("image deleted while it was processed", extra={"image_id": image.id})
        return result
    if failure is None:
        ctx.media.upload_path(image.storage_key).unlink(missing_ok=True)
    await ctx.stores.cache.bump(*post_generations(image.post_id))
    if failure:
        logger.warning(
            "image failed",
            extra={"image_id": image.id, "reason": failure.name, "detail": detail},
        )
    return result


async def send_email(
    ctx: JobContext,
    task_id: str,
    template: str,
    to: str,
    subject: str,
    values: dict[str, str],
    delivered: bool = False,
) -> dict[str, Any]:
    """Render and send one message, once: the task row is the idempotency key. A copy of the
    job that finds the message sent (or being sent) does not send it again, and every copy
    carries the same Message-ID, so that a mail server can drop a duplicate too. SMTP and
    network errors raise RetryableError; a message sent whose success could not be recorded
    (the database went away) raises Delivered, and its next try (`delivered`) only records."""
    result = {"to": to, "template": template}
    if delivered:
        await record_state(ctx, task_id, TaskState.SUCCESS, result)
        return result
    message = render(template, to, subject, ctx.settings.smtp_from, **values)
    message.replace_header("Message-ID", f"<{task_id}@inkwell.local>")
    state = await _claim(ctx, task_id)
    if state is TaskState.STARTED:
        raise JobBusy(f"task {task_id} is being sent by another attempt")
    if state is not None:  # already sent, failed for good, or its user is gone
        logger.info("e-mail already handled", extra={"task_id": task_id, "state": state})
        return {"to": to, "template": template, "duplicate": True}
    try:
        await ctx.mailer.send(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise RetryableError(repr(exc)) from exc
    try:
        await record_state(ctx, task_id, TaskState.SUCCESS, result)
    except Exception as exc:
        if is_transient(exc):
            raise Delivered(f"sent; its success not recorded: {exc!r}") from exc
        raise
    return result


async def _claim(ctx: JobContext, task_id: str) -> TaskState | str | None:
    """Mark the task STARTED if no other attempt holds it; None when it is ours to run, else
    its state ("gone" when the task no longer exists). A hold older than the hard time limit
    belongs to an attempt whose worker died: it is taken over."""
    now = utcnow()
    stale = now - timedelta(seconds=ctx.settings.task_time_limit_seconds)
    async with ctx.session_factory() as db:
        claimed = await db.scalar(
            update(Task)
            .where(
                Task.id == task_id,
                or_(
                    Task.state.in_([TaskState.PENDING, TaskState.RETRY]),
                    and_(Task.state == TaskState.STARTED, Task.updated_at < stale),
                ),
            )
            .values(state=TaskState.STARTED, updated_at=now)
            .returning(Task.id)
        )
        current = None if claimed else await db.scalar(select(Task.state).where(Task.id == task_id))
        await db.commit()
    if claimed:
        return None
    return TaskState(current) if current else "gone"


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
        async with ctx.session_factory() as db:
            image = await db.get(Image, kwargs["image_id"])
        if image is not None:
            await _finish(ctx, image, Failure.UNPROCESSABLE, detail=detail)
        return
    await record_state(ctx, task_id, TaskState.FAILURE, {"error": error})


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
