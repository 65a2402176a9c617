"""Post images: upload checks in the request, processing in the background (the
`process_image` job calls `process`, and `fail` when it gives up)."""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import anyio.to_thread
from PIL import Image as PilImage
from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.core import imaging
from app.core.faults import Interrupted, JobBusy, is_transient
from app.core.imaging import ImageRejected
from app.core.media import MediaStorage, StorageUnavailable
from app.core.queue import PROCESS_IMAGE
from app.database.types import utcnow
from app.errors import (
    ImageNotFound,
    MediaUnavailable,
    TooManyImages,
    TooManyPixels,
    UnreadableImage,
    UnsupportedMediaType,
)
from app.models import Image, ImageStatus, MediaDeletion, Post, Task, TaskState
from app.schemas.image import ImageOut, VariantOut
from app.services import tasks
from app.services.backends import Backends
from app.stores.cache import Cache, post_generations

__all__ = ["ImageNotFound", "TooManyImages", "TooManyPixels", "UnreadableImage"]

logger = logging.getLogger(__name__)

MAX_ALT = 300


class Failure(enum.StrEnum):
    """Why an image failed, as its owner reads it. The details (paths, exceptions) are logged,
    never stored in the row."""

    NOT_AN_IMAGE = "The file is not a valid image."
    TOO_MANY_PIXELS = "The image has too many pixels."
    UPLOAD_MISSING = "The uploaded file is missing. Upload the image again."
    UNPROCESSABLE = "The image could not be processed."


def to_out(image: Image, media: MediaStorage, *, public: bool) -> ImageOut:
    """The image as the API shows it; its files at public URLs when its post is published,
    at signed, expiring ones otherwise (only the author and administrators see a draft)."""
    return ImageOut(
        id=image.id,
        post_id=image.post_id,
        status=ImageStatus(image.status).value,
        alt=image.alt,
        format=image.format.lower(),
        width=image.width,
        height=image.height,
        bytes=image.bytes,
        variants={
            name: _variant_out(media, image.storage_key, variant, public=public)
            for name, variant in (image.variants or {}).items()
        },
        failure_reason=image.failure_reason,
        task_id=image.task_id,
        created_at=image.created_at,
    )


def _variant_out(
    media: MediaStorage, key: str, variant: dict[str, Any], *, public: bool
) -> VariantOut:
    return VariantOut(
        url=variant_url(media, key, variant["url"], public=public),
        width=variant["width"],
        height=variant["height"],
        bytes=variant["bytes"],
    )


def variant_url(media: MediaStorage, key: str, stored_url: str, *, public: bool) -> str:
    """A variant's URL in an answer. URLs are built for each answer from the file's name:
    whether they are signed depends on the post's state now, not when the image was
    processed."""
    filename = PurePosixPath(stored_url).name
    return media.url(key, filename) if public else media.signed_url(key, filename)


def out_fields(fields: Sequence[Any], media: MediaStorage, *, public: bool) -> dict[str, Any]:
    """As `to_out`, from an image's columns as `IMAGE_FIELDS` lists them (read by one statement
    with its post, `created_at` as ISO 8601 text), as plain values ready for JSON: what
    `ImageOut` serialises to, without validating what the database just produced."""
    (image_id, post_id, status, alt, format_, width, height, size) = fields[:8]
    (variants, failure_reason, task_id, created_at, key) = fields[8:]
    when = datetime.fromisoformat(created_at)
    return {
        "id": image_id,
        "post_id": post_id,
        "status": ImageStatus(status).value,
        "alt": alt,
        "format": format_.lower(),
        "width": width,
        "height": height,
        "bytes": size,
        "variants": {
            name: {
                "url": variant_url(media, key, variant["url"], public=public),
                "width": int(variant["width"]),
                "height": int(variant["height"]),
                "bytes": int(variant["bytes"]),
            }
            for name, variant in (variants or {}).items()
        },
        "failure_reason": failure_reason,
        "task_id": task_id,
        "created_at": when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC),
    }


# The columns `out_fields` takes, in its order.
IMAGE_FIELDS = (
    Image.id,
    Image.post_id,
    Image.status,
    Image.alt,
    Image.format,
    Image.width,
    Image.height,
    Image.bytes,
    Image.variants,
    Image.failure_reason,
    Image.task_id,
    Image.created_at,
    Image.storage_key,
)


async def ensure_room(db: AsyncSession, backends: Backends, *, post: Post) -> None:
    """409 when the post has all the images it may have; ends the transaction, so that no
    connection is held while the upload's body streams in."""
    await _ensure_room(db, backends.settings, post.id)
    await db.commit()


async def upload(
    db: AsyncSession,
    backends: Backends,
    *,
    post: Post,
    user_id: int,
    file: Path,
    size: int,
    head: bytes,
    alt: str = "",
) -> ImageOut:
    """Take a received file (`file`, of `size` bytes starting with `head`; it is the service's
    from now on: stored, or removed): check it is an accepted image by its bytes and pixel
    count, record it `pending` and queue its processing."""
    settings, media = backends.settings, backends.media
    try:
        format_ = imaging.sniff(head)
        if format_ is None:
            raise UnsupportedMediaType("Only JPEG, PNG, WebP and GIF images are accepted.")
        try:
            probed = await anyio.to_thread.run_sync(imaging.probe, file, format_)
        except ImageRejected as exc:
            raise UnreadableImage(str(exc)) from exc
        if probed.width * probed.height > settings.max_image_pixels:
            raise TooManyPixels(
                f"{probed.width}x{probed.height} is over {settings.max_image_pixels:,} pixels."
            )
        await _ensure_room(db, settings, post.id)
        key = secrets.token_hex(16)
        try:
            await media.save_upload(key, file)
        except StorageUnavailable as exc:  # nothing kept: a multipart upload is aborted
            logger.warning("media storage unavailable: upload refused", exc_info=True)
            raise MediaUnavailable from exc
    except BaseException:
        file.unlink(missing_ok=True)  # noqa: ASYNC240 - at once, even when cancelled
        raise
    task = tasks.new(db, PROCESS_IMAGE, user_id)
    image = Image(
        post_id=post.id,
        storage_key=key,
        alt=alt[:MAX_ALT],
        format=format_,
        width=probed.width,
        height=probed.height,
        bytes=size,
        variants={},
        attempts=0,
        task_id=task.id,
    )
    db.add(image)
    await db.flush()  # the image's id, for its job
    job = backends.outbox.record(db, task, PROCESS_IMAGE, image_id=image.id)
    await db.commit()  # the image and its job together: a broker that is down loses nothing
    await backends.outbox.dispatch(job)
    await backends.stores.cache.bump(*post_generations(post.id))
    return to_out(image, media, public=post.published)


async def get(db: AsyncSession, *, post: Post, image_id: int) -> Image:
    image = await db.scalar(select(Image).where(Image.id == image_id, Image.post_id == post.id))
    if image is None:
        raise ImageNotFound
    return image


async def get_out(db: AsyncSession, backends: Backends, *, post: Post, image_id: int) -> ImageOut:
    image = await get(db, post=post, image_id=image_id)
    return to_out(image, backends.media, public=post.published)


async def delete(db: AsyncSession, backends: Backends, image: Image) -> None:
    await db.delete(image)
    await db.commit()
    await remove_files(db, backends.media, [image.storage_key])
    await backends.stores.cache.bump(*post_generations(image.post_id))


async def storage_keys_of_posts(db: AsyncSession, *conditions: object) -> list[str]:
    """The storage keys of the images of the posts matching `conditions`, to remove their files
    once the posts are deleted."""
    rows = await db.scalars(
        select(Image.storage_key).join(Post, Post.id == Image.post_id).where(*conditions)  # type: ignore[arg-type]
    )
    return list(rows)


async def set_visibility(media: MediaStorage, keys: list[str], public: bool) -> None:
    """A post was (un)published: its images' files readable by anyone, or only signed. A
    storage that cannot be reached leaves them as they were (logged)."""
    if not keys:
        return
    try:
        await media.set_public(keys, public)
    except Exception:
        logger.error("media visibility not changed", exc_info=True, extra={"public": public})


async def remove_files(db: AsyncSession, media: MediaStorage, keys: list[str]) -> None:
    """Delete these keys' files, once their rows are gone (committed). Those the storage could
    not delete are recorded in `media_deletion`, for `retry_deletions` to try again."""
    if not keys:
        return
    try:
        await media.delete(*keys)
    except Exception as exc:
        logger.warning("media files not deleted: recorded for later", extra={"keys": len(keys)})
        await _record_deletions(db, keys, exc)


async def _record_deletions(db: AsyncSession, keys: list[str], exc: Exception) -> None:
    known = set(
        await db.scalars(
            select(MediaDeletion.storage_key).where(MediaDeletion.storage_key.in_(keys))
        )
    )
    error = f"{type(exc).__name__}: {exc}"[:500]
    db.add_all(MediaDeletion(storage_key=k, last_error=error) for k in keys if k not in known)
    await db.commit()


async def retry_deletions_forever(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], media: MediaStorage
) -> None:
    """The API's loop over recorded deletions, every MEDIA_DELETION_RETRY_SECONDS."""
    while True:
        await anyio.sleep(settings.media_deletion_retry_seconds)
        try:
            await retry_deletions(sessions, media)
        except Exception:
            logger.warning("could not retry media deletions", exc_info=True)


# A deletion that keeps failing is tried again at most this far apart.
MAX_DELETION_BACKOFF_SECONDS = 3600


async def retry_deletions(
    sessions: async_sessionmaker[AsyncSession], media: MediaStorage, *, limit: int = 100
) -> int:
    """Try again the recorded deletions that are due: each removed once its files are gone,
    else tried later (with backoff). How many succeeded."""
    async with sessions() as db:
        due = list(
            await db.scalars(
                select(MediaDeletion)
                .where(MediaDeletion.next_attempt_at <= utcnow())
                .order_by(MediaDeletion.next_attempt_at)
                .limit(limit)
                # Every API process runs this loop: each row is taken by one of them at a time.
                .with_for_update(skip_locked=True)
            )
        )
        done = 0
        for row in due:
            try:
                await media.delete(row.storage_key)
            except Exception as exc:
                row.attempts += 1
                row.last_error = f"{type(exc).__name__}: {exc}"[:500]
                backoff = min(2**row.attempts, MAX_DELETION_BACKOFF_SECONDS)
                row.next_attempt_at = utcnow() + timedelta(seconds=backoff)
                break  # the storage is still away: the others wait for the next round
            await db.delete(row)
            done += 1
        await db.commit()
    return done


async def _ensure_room(db: AsyncSession, settings: Settings, post_id: int) -> None:
    count = await db.scalar(select(func.count(Image.id)).where(Image.post_id == post_id)) or 0
    if count >= settings.max_images_per_post:
        raise TooManyImages(f"A post has at most {settings.max_images_per_post} images.")


# --- Processing: what the `process_image` job does ---------------------------------------------


async def process(
    sessions: async_sessionmaker[AsyncSession],
    *,
    settings: Settings,
    media: MediaStorage,
    cache: Cache,
    task_id: str,
    image_id: int,
    reuse_attempt: int | None = None,
    redelivered: bool = False,
) -> dict[str, Any]:
    """Turn an uploaded file into its cleaned original and variants. Idempotent: only a pending
    image is worked on, by one try at a time (its task holds it), files are written atomically,
    a deleted image stays deleted, and attempts are counted so that an image that keeps killing
    its worker ends `failed` instead of coming back for ever. The task ends SUCCESS with the
    image `ready` (or deleted meanwhile), FAILURE with it `failed`.

    A try after a passing fault (`reuse_attempt`: the attempt that fault interrupted) does not
    count again; a passing fault raises Interrupted. A copy of the job that finds another one
    holding the image raises JobBusy, without counting, unless it takes that hold over: it is
    the same message delivered again because its worker died (`redelivered`), or the try after
    a fault of its own."""
    async with sessions() as db:
        image = await db.get(Image, image_id)
        if image is not None and image.task_id != task_id:
            image = None  # not the image this job was queued for: that one is gone
        if image is not None and image.status != ImageStatus.PENDING:
            return {"image_id": image_id, "status": image.status}
    if image is None:  # deleted before its job ran: the task says so
        result = {"image_id": image_id, "status": "deleted"}
        await tasks.record(sessions, task_id, state=TaskState.SUCCESS, result=result)
        return result
    attempts = await _start(sessions, settings, task_id, image_id, reuse_attempt, redelivered)
    if attempts is None:  # deleted, or finished by another copy, just now
        return {"image_id": image_id, "status": "gone"}
    try:
        return await _process(sessions, settings, media, cache, image, attempts)
    except Exception as exc:
        if is_transient(exc):
            raise Interrupted(attempts) from exc
        raise


async def fail(
    sessions: async_sessionmaker[AsyncSession],
    *,
    media: MediaStorage,
    cache: Cache,
    image_id: int,
    detail: str,
) -> None:
    """The image's job gave up (its time limit, a failure of its own): the image ends `failed`
    and its task FAILURE, never `pending` for ever."""
    async with sessions() as db:
        image = await db.get(Image, image_id)
    if image is not None:
        await _finish(sessions, media, cache, image, failure=Failure.UNPROCESSABLE, detail=detail)


async def pending(
    sessions: async_sessionmaker[AsyncSession], *, older_than_seconds: int
) -> list[tuple[str, int]]:
    """(task id, image id) of images still pending after `older_than_seconds`: the sweep."""
    cutoff = utcnow().timestamp() - older_than_seconds
    async with sessions() as db:
        rows = await db.execute(
            select(Image.task_id, Image.id, Image.updated_at).where(
                Image.status == ImageStatus.PENDING
            )
        )
        return [(t, i) for t, i, at in rows if at.timestamp() <= cutoff]


async def _start(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    task_id: str,
    image_id: int,
    reuse_attempt: int | None,
    redelivered: bool,
) -> int | None:
    """Count the attempt and hold the task, in one transaction (the image's row first, as
    `_finish` locks them): the attempt number, or None when the image is no longer pending."""
    counted: Any = Image.attempts + 1
    if reuse_attempt is not None:  # the interrupted try's count stands for this one
        counted = case((Image.attempts == reuse_attempt, Image.attempts), else_=counted)
    now = utcnow()
    stale = now - timedelta(seconds=settings.task_time_limit_seconds)
    claim = update(Task).where(Task.id == task_id)
    if not (redelivered or reuse_attempt is not None):
        claim = claim.where(or_(Task.state != TaskState.STARTED, Task.updated_at < stale))
    async with sessions() as db:
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


async def _process(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    media: MediaStorage,
    cache: Cache,
    image: Image,
    attempts: int,
) -> dict[str, Any]:
    async def finish(failure: Failure | None = None, detail: str | None = None) -> dict[str, Any]:
        return await _finish(sessions, media, cache, image, failure=failure, detail=detail)

    if attempts > settings.task_max_attempts:
        return await finish(Failure.UNPROCESSABLE, f"gave up after {attempts - 1} attempts")
    try:
        async with media.original(image.storage_key) as source:
            checked = await anyio.to_thread.run_sync(imaging.probe, source, image.format)
            if checked.width * checked.height > settings.max_image_pixels:
                return await finish(Failure.TOO_MANY_PIXELS)
            published = await _published(sessions, image.post_id)
            async with media.variants(image.storage_key, public=published) as out_dir:
                variants = await anyio.to_thread.run_sync(
                    imaging.process, source, image.format, out_dir
                )
        # Read again once the files are stored: a publish (or unpublish) committed meanwhile
        # may have missed them; one committed later finds them itself.
        if await _published(sessions, image.post_id) != published:
            await media.set_public([image.storage_key], not published)
    except ImageRejected as exc:
        return await finish(_rejected(exc), str(exc))
    except FileNotFoundError as exc:
        return await finish(Failure.UPLOAD_MISSING, str(exc))
    image.variants = {v.name: v.as_dict(media.url(image.storage_key, v.filename)) for v in variants}
    original = image.variants["original"]
    image.width, image.height = original["width"], original["height"]  # upright now
    return await finish()


async def _published(sessions: async_sessionmaker[AsyncSession], post_id: int) -> bool:
    async with sessions() as db:
        return bool(await db.scalar(select(Post.published).where(Post.id == post_id)))


def _rejected(exc: ImageRejected) -> Failure:
    if isinstance(exc.__cause__, PilImage.DecompressionBombError):
        return Failure.TOO_MANY_PIXELS
    if isinstance(exc.__cause__, FileNotFoundError):
        return Failure.UPLOAD_MISSING
    return Failure.NOT_AN_IMAGE


async def _finish(
    sessions: async_sessionmaker[AsyncSession],
    media: MediaStorage,
    cache: Cache,
    image: Image,
    *,
    failure: Failure | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """Record the outcome, if the image is still there and still pending: one conditional
    UPDATE in the transaction that settles the task too (SUCCESS when the image is ready,
    FAILURE when it failed), so an image deleted meanwhile is not brought back, and the files
    written for it are removed."""
    status = ImageStatus.FAILED if failure else ImageStatus.READY
    state = TaskState.FAILURE if failure else TaskState.SUCCESS
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
    async with sessions() as db:
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
            result, state = {"image_id": image.id, "status": "deleted"}, TaskState.SUCCESS
        # The image and its task change together: whoever sees one sees the other.
        await db.execute(
            update(Task)
            .where(Task.id == image.task_id)
            .values(state=state, result=result, updated_at=utcnow())
        )
        await db.commit()
    if settled is None:
        async with sessions() as db:
            await remove_files(db, media, [image.storage_key])
        logger.info("image deleted while it was processed", extra={"image_id": image.id})
        return result
    # The post's cached answers first: whoever sees the image ready sees it in the post too.
    await cache.bump(*post_generations(image.post_id))
    if failure is None:
        try:
            await media.discard_upload(image.storage_key)
        except Exception:  # a raw upload left over, never served: the image is ready anyway
            logger.warning("raw upload not discarded", extra={"image_id": image.id})
    if failure:
        logger.warning(
            "image failed",
            extra={"image_id": image.id, "reason": failure.name, "detail": detail},
        )
    return result
