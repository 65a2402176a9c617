"""Post images: upload checks in the request, processing in the background."""

from __future__ import annotations

import secrets
from pathlib import PurePosixPath
from typing import Any

import anyio.to_thread
from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.imaging import ImageRejected, probe, sniff
from app.core.media import LocalMedia
from app.errors import AppError, Conflict, NotFound, UnsupportedMediaType
from app.models import Image, ImageStatus, Post
from app.schemas.image import ImageOut, VariantOut
from app.services import tasks
from app.services.backends import Backends
from app.stores.cache import post_generations
from app.tasks.jobs import PROCESS_IMAGE
from app.web.uploads import receive_file

MAX_ALT = 300


class ImageNotFound(NotFound):
    code = "image_not_found"
    detail = "No such image."


class TooManyImages(Conflict):
    code = "too_many_images"


class TooManyPixels(AppError):
    status = 422
    code = "image_too_large"
    title = "Image too large"


class UnreadableImage(AppError):
    status = 422
    code = "invalid_image"
    title = "Invalid image"


def to_out(image: Image, media: LocalMedia, *, public: bool) -> ImageOut:
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
    media: LocalMedia, key: str, variant: dict[str, Any], *, public: bool
) -> VariantOut:
    # URLs are built for each answer from the file's name: whether they are signed depends on
    # the post's state now, not when the image was processed.
    filename = PurePosixPath(variant["url"]).name
    url = media.url(key, filename) if public else media.signed_url(key, filename)
    return VariantOut(
        url=url, width=variant["width"], height=variant["height"], bytes=variant["bytes"]
    )


async def upload(
    db: AsyncSession, backends: Backends, post: Post, user_id: int, request: Request
) -> ImageOut:
    """Stream the upload to disk within the size limit, check it is an accepted image by its
    bytes and pixel count, record it `pending` and queue its processing."""
    settings, media = backends.settings, backends.media
    await _ensure_room(db, settings, post.id)
    await db.commit()  # no connection is held while the body streams in
    received = await receive_file(
        request,
        settings.uploads_path,
        settings.max_upload_bytes,
        max_parts=settings.max_upload_parts,
    )
    try:
        format_ = sniff(received.head)
        if format_ is None:
            raise UnsupportedMediaType("Only JPEG, PNG, WebP and GIF images are accepted.")
        try:
            probed = await anyio.to_thread.run_sync(probe, received.path, format_)
        except ImageRejected as exc:
            raise UnreadableImage(str(exc)) from exc
        if probed.width * probed.height > settings.max_image_pixels:
            raise TooManyPixels(
                f"{probed.width}x{probed.height} is over {settings.max_image_pixels:,} pixels."
            )
        await _ensure_room(db, settings, post.id)
        key = secrets.token_hex(16)
        received.path.replace(media.upload_path(key))
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    task = tasks.new(db, PROCESS_IMAGE, user_id)
    image = Image(
        post_id=post.id,
        storage_key=key,
        alt=received.fields.get("alt", "")[:MAX_ALT],
        format=format_,
        width=probed.width,
        height=probed.height,
        bytes=received.size,
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


async def get(db: AsyncSession, post: Post, image_id: int) -> Image:
    image = await db.scalar(select(Image).where(Image.id == image_id, Image.post_id == post.id))
    if image is None:
        raise ImageNotFound
    return image


async def get_out(db: AsyncSession, media: LocalMedia, post: Post, image_id: int) -> ImageOut:
    return to_out(await get(db, post, image_id), media, public=post.published)


async def delete(db: AsyncSession, backends: Backends, image: Image) -> None:
    await db.delete(image)
    await db.commit()
    await anyio.to_thread.run_sync(backends.media.delete, image.storage_key)
    await backends.stores.cache.bump(*post_generations(image.post_id))


async def storage_keys_of_posts(db: AsyncSession, *conditions: object) -> list[str]:
    """The storage keys of the images of the posts matching `conditions`, to remove their files
    once the posts are deleted."""
    rows = await db.scalars(
        select(Image.storage_key).join(Post, Post.id == Image.post_id).where(*conditions)  # type: ignore[arg-type]
    )
    return list(rows)


async def remove_files(media: LocalMedia, keys: list[str]) -> None:
    for key in keys:
        await anyio.to_thread.run_sync(media.delete, key)


async def _ensure_room(db: AsyncSession, settings: Settings, post_id: int) -> None:
    count = await db.scalar(select(func.count(Image.id)).where(Image.post_id == post_id)) or 0
    if count >= settings.max_images_per_post:
        raise TooManyImages(f"A post has at most {settings.max_images_per_post} images.")
