"""Serving media files: a published post's to anyone, a draft's only at a signed URL.

Whether a file belongs to a published post is looked up in the database by its key (the
image's unique `storage_key`) and cached under the post's generation, so publishing and
unpublishing, which bump it, take effect on the next request in every process. Files are never
moved or renamed when a post changes state: keys are never reused, and the same keys live on in
object storage."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import select

from app.core.media import content_type, is_object_name
from app.errors import MediaNotFound
from app.models import Image, Post
from app.services.backends import Backends
from app.stores.cache import image_post_slot, post_public_slot

# Keys are never reused: a published file's URL is cacheable for a year by anyone.
PUBLIC_CACHE = "public, max-age=31536000, immutable"
PUBLIC, PRIVATE = b"1", b"0"
# X-Content-Type-Options on every answer here, file or 404: RequestIdMiddleware.


__all__ = ["MediaFile", "MediaNotFound", "open_file"]


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
    type_ = content_type(filename)
    if type_ is None or not is_object_name(key, filename):
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
    found = await media.find(key, filename)
    if found is None:
        raise MediaNotFound
    return MediaFile(str(found.path), found.stat, type_, cache_control)


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
