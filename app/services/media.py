"""Serving media files: a published post's to anyone, a draft's only at a signed URL.

Whether a file belongs to a published post is looked up in the database by its key (the
image's unique `storage_key`) and cached under the post's generation, so publishing and
unpublishing, which bump it, take effect on the next request in every process. Files are never
moved or renamed when a post changes state: keys are never reused, and the same keys live on in
object storage."""

from __future__ import annotations

import os
from dataclasses import dataclass

import anyio.to_thread
from sqlalchemy import select

from app.core.media import content_type
from app.errors import NotFound
from app.models import Image, Post
from app.services.backends import Backends
from app.stores.cache import image_post_slot, post_public_slot

# Keys are never reused: a published file's URL is cacheable for a year by anyone.
PUBLIC_CACHE = "public, max-age=31536000, immutable"
PUBLIC, PRIVATE = b"1", b"0"
# X-Content-Type-Options on every answer here, file or 404: SecurityHeadersMiddleware.


class MediaNotFound(NotFound):
    code = "media_not_found"
    detail = "No such file, or not yours to see."

    def __init__(self) -> None:
        # Not cached anywhere: the file may become public when its post is published.
        super().__init__(headers={"Cache-Control": "no-store"})


@dataclass(frozen=True, slots=True)
class MediaFile:
    path: str
    stat: os.stat_result
    content_type: str
    cache_control: str


async def open_file(
    backends: Backends,
    *,
    key: str,
    filename: str,
    expires: str | None,
    signature: str | None,
) -> MediaFile:
    """The file at `key/filename` if this request may have it, with how it may be cached: a
    signed URL (valid and unexpired) privately until it expires, an unsigned URL publicly when
    the post is published. Everything else is 404, whether or not the file exists."""
    media = backends.media
    path = media.file(key, filename)
    type_ = content_type(filename)
    if path is None or type_ is None:
        raise MediaNotFound
    if expires is not None or signature is not None:
        # A signed URL is judged by its signature alone: never served publicly, even when the
        # post has been published since, so that no shared cache keeps a copy.
        left = media.seconds_left(key, filename, expires or "", signature or "")
        if left is None:
            raise MediaNotFound
        cache_control = f"private, max-age={left}"
    elif await _is_public(backends, key):
        cache_control = PUBLIC_CACHE
    else:
        raise MediaNotFound
    try:
        stat = await anyio.to_thread.run_sync(os.stat, path)
    except OSError:
        raise MediaNotFound from None
    return MediaFile(str(path), stat, type_, cache_control)


async def _is_public(backends: Backends, key: str) -> bool:
    """Whether the image with this storage key belongs to a published post."""
    cache = backends.stores.cache
    owner = await cache.read(image_post_slot(key))
    if owner.value is None:
        async with backends.read_sessions() as db:
            row = (
                await db.execute(
                    select(Image.post_id, Post.published)
                    .join(Post, Post.id == Image.post_id)
                    .where(Image.storage_key == key)
                )
            ).first()
        if row is None:
            return False
        await cache.write(owner, str(row.post_id).encode())
        return bool(row.published)
    post_id = int(owner.value)
    # The generation is read before the database, so an answer older than a concurrent
    # (un)publish lands under the outdated key.
    visibility = await cache.read(post_public_slot(post_id))
    if visibility.value is not None:
        return visibility.value == PUBLIC
    async with backends.read_sessions() as db:
        published = await db.scalar(select(Post.published).where(Post.id == post_id))
    if published is None:
        return False
    await cache.write(visibility, PUBLIC if published else PRIVATE)
    return bool(published)
