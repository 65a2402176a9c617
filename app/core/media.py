"""Where media live, behind one Protocol (`MediaStorage`): the raw uploads, and the processed
files of each image under its random key. `LocalMedia` keeps them in a directory served at
MEDIA_URL (default `/media`), shared by the API and the workers (a volume); `S3Media`
(app/core/s3.py) keeps them in a bucket instead, its signed URLs being the bucket's presigned
ones; `build_media` (app/core/storage.py) picks one. Pillow
works on local files: storage hands the worker the original as a local file and takes the
variants from a local directory.

A published post's files have one public URL each, cacheable for ever (keys are never reused).
A draft's files are served only at signed URLs: `?expires=<unix time>&sig=<HMAC-SHA256 of the
object's name and the expiry>`, handed to the author and administrators in their answers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import anyio.to_thread

from app.config import Settings

IMAGES = "images"
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
}
# What the worker writes: a random hex key, and `<variant>.<extension>` files in its directory.
_KEY = re.compile(r"[0-9a-f]{32}")
_FILENAME = re.compile(r"[a-z]+\.(?P<extension>[a-z]+)")
_EXPIRES = re.compile(r"[0-9]{1,12}")
# Expiries are rounded up to a whole minute, so answers built within the same minute carry the
# same URLs and a browser can reuse what it cached.
SIGNED_URL_STEP_SECONDS = 60


class StorageUnavailable(ConnectionError):
    """The media storage (a bucket) could not be reached or answered with a passing error: a
    job tries again later, an upload answers 503. A ConnectionError, so fault classification
    (app/core/faults.py) counts it as passing."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A processed file to serve: where it is on this machine, and its size and times."""

    path: Path
    stat: os.stat_result


class MediaStorage(Protocol):
    """What the services, the jobs and the command line may do with media, whatever holds
    them. Keys are random hex names, one per image; a key's files are its raw upload (until it
    is processed) and the `<variant>.<extension>` files the worker writes."""

    async def save_upload(self, key: str, source: Path) -> None:
        """Take a received file, a local one that is then gone, as `key`'s raw upload."""

    def original(self, key: str) -> AbstractAsyncContextManager[Path]:
        """`key`'s raw upload as a local file for the length of the block, for processing
        (FileNotFoundError when there is none)."""

    def variants(self, key: str, *, public: bool = False) -> AbstractAsyncContextManager[Path]:
        """A local directory to write `key`'s processed files into; stored under `key` when the
        block ends without an error, readable by anyone if `public` (see `set_public`)."""

    async def set_public(self, keys: list[str], public: bool) -> None:
        """Let anyone read these keys' processed files at their public URLs (a published
        post's), or only through signed URLs (a draft's). Local files: nothing to do, serving
        asks the database."""

    async def discard_upload(self, key: str) -> None:
        """Remove `key`'s raw upload once its files are processed; a missing one is no error."""

    async def delete(self, *keys: str) -> None:
        """Remove every file of these keys, processed and raw; missing ones are no error."""

    async def exists(self, key: str, filename: str) -> bool:
        """Whether `key`'s processed file `filename` is stored."""

    async def find(self, key: str, filename: str) -> StoredFile | None:
        """A processed file for this process to serve at MEDIA_URL, or None when the names are
        not such a file's, or it is not there. (Object storage would answer None and point its
        URLs at the bucket or a CDN.)"""

    def url(self, key: str, filename: str) -> str:
        """The public URL of a published post's file."""

    def signed_url(self, key: str, filename: str, *, now: float | None = None) -> str:
        """A URL of a draft's file that works for a limited time, for whoever holds it."""

    def seconds_left(
        self, key: str, filename: str, expires: str, signature: str, *, now: float | None = None
    ) -> int | None:
        """How long a signed URL is still good for; None when it is wrong or has expired."""

    async def close(self) -> None:
        """Release what the storage holds (connections) at shutdown."""


class LocalMedia:
    """Media in local directories: MEDIA_PATH for processed files, UPLOADS_PATH for raw ones."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.media_path
        self.uploads = settings.uploads_path
        self._url = settings.media_url.rstrip("/")
        self._settings = settings
        # A cached answer may be served up to CACHE_TTL_SECONDS after it was built: its signed
        # URLs must still be good for MEDIA_SIGNED_URL_SECONDS then.
        cached_for = settings.cache_ttl_seconds if settings.cache_enabled else 0
        self._signed_for = settings.media_signed_url_seconds + cached_for

    @cached_property
    def _signing_key(self) -> bytes:
        # Read when first needed: workers, which never sign, may lack the JWT private key.
        return self._settings.media_url_signing_key()

    def image_dir(self, key: str) -> Path:
        return self.root / IMAGES / key

    def upload_path(self, key: str) -> Path:
        return self.uploads / f"{key}.upload"

    def url(self, key: str, filename: str) -> str:
        """The public URL of a published post's file."""
        return f"{self._url}/{object_name(key, filename)}"

    def signed_url(self, key: str, filename: str, *, now: float | None = None) -> str:
        """A URL of a draft's file that works for a limited time, for whoever holds it."""
        now = time.time() if now is None else now
        step = SIGNED_URL_STEP_SECONDS
        expires = math.ceil((now + self._signed_for) / step) * step
        signature = self._signature(key, filename, expires)
        return f"{self.url(key, filename)}?expires={expires}&sig={signature}"

    def seconds_left(
        self, key: str, filename: str, expires: str, signature: str, *, now: float | None = None
    ) -> int | None:
        """How long a signed URL is still good for; None when its signature is wrong or it has
        expired."""
        if not _EXPIRES.fullmatch(expires):
            return None
        expected = self._signature(key, filename, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return None
        left = int(expires) - int(time.time() if now is None else now)
        return left if left > 0 else None

    async def close(self) -> None:
        return None

    async def set_public(self, keys: list[str], public: bool) -> None:
        return None

    def file(self, key: str, filename: str) -> Path | None:
        """Where a file the worker may have written lives, or None when the names are not such
        a file's (anything else under the root: raw uploads, directories, `..`)."""
        return self.image_dir(key) / filename if is_object_name(key, filename) else None

    async def save_upload(self, key: str, source: Path) -> None:
        # Uploads stream into the uploads directory: a rename there, never a copy.
        def move() -> None:
            self.uploads.mkdir(parents=True, exist_ok=True)
            source.replace(self.upload_path(key))

        await anyio.to_thread.run_sync(move)

    @asynccontextmanager
    async def original(self, key: str) -> AsyncIterator[Path]:
        path = self.upload_path(key)
        if not await anyio.to_thread.run_sync(path.exists):
            raise FileNotFoundError(f"no upload for {key}")
        yield path

    @asynccontextmanager
    async def variants(self, key: str, *, public: bool = False) -> AsyncIterator[Path]:
        # Written in place, each file atomically (imaging writes a temporary name, then renames).
        yield self.image_dir(key)

    async def discard_upload(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.upload_path(key).unlink(missing_ok=True))

    async def delete(self, *keys: str) -> None:
        await anyio.to_thread.run_sync(self._delete, keys)

    def _delete(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            shutil.rmtree(self.image_dir(key), ignore_errors=True)
            self.upload_path(key).unlink(missing_ok=True)

    async def exists(self, key: str, filename: str) -> bool:
        path = self.file(key, filename)
        return path is not None and await anyio.to_thread.run_sync(path.is_file)

    async def find(self, key: str, filename: str) -> StoredFile | None:
        path = self.file(key, filename)
        if path is None:
            return None
        try:
            stat = await anyio.to_thread.run_sync(os.stat, path)
        except OSError:
            return None
        return StoredFile(path, stat)

    def _signature(self, key: str, filename: str, expires: int) -> str:
        message = f"{object_name(key, filename)}\n{expires}".encode()
        digest = hmac.new(self._signing_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def is_object_name(key: str, filename: str) -> bool:
    """Whether `key/filename` names a file the worker may write (a random hex key, and a
    `<variant>.<extension>` name): nothing else under MEDIA_URL is ever served."""
    return content_type(filename) is not None and _KEY.fullmatch(key) is not None


def content_type(filename: str) -> str | None:
    """The type of a file the worker writes, told by its name; None for any other name."""
    match = _FILENAME.fullmatch(filename)
    return CONTENT_TYPES.get(match["extension"]) if match else None


def object_name(key: str, filename: str) -> str:
    """The name of `key`'s processed file `filename`, relative to MEDIA_URL or the bucket."""
    return f"{IMAGES}/{key}/{filename}"
