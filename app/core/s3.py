"""Media in an S3-compatible bucket (`S3_BUCKET`), shared by every API host and worker: the other
implementation of `MediaStorage`, through aiobotocore.

Objects: `uploads/<key>.upload` (a raw upload, until it is processed) and
`images/<key>/<variant>.<extension>` (the worker's files, written once: keys are never reused).
The worker's files carry their `Content-Type` and `Cache-Control: public, max-age=31536000,
immutable`, so a CDN (`MEDIA_PUBLIC_URL`) or the bucket serves published media for ever.
A draft's files are reached through presigned GET URLs, short-lived and answered with a private
Cache-Control; the API serves no file itself (`find` answers None).

Nothing stays on local disk: a received upload goes to the bucket (one part at a time past
S3_MULTIPART_BYTES, never whole in memory) and is removed; the worker gets the original in a
temporary directory and writes its variants into another, both removed when the block ends,
whatever happened. A bucket that cannot be reached raises StorageUnavailable (a passing fault)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.to_thread
import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.config import Settings
from app.core.media import IMAGES, StorageUnavailable, StoredFile, content_type, object_name

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

logger = logging.getLogger(__name__)

PUBLIC_CACHE = "public, max-age=31536000, immutable"
UPLOADS = "uploads"
TEMP_PREFIX = "inkwell-media-"
READ_CHUNK_BYTES = 1024 * 1024
# Error codes of an S3 server that mean "not now" rather than "never".
_PASSING_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503"}
_PASSING_STATUSES = {500, 502, 503, 504}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


# One botocore session for the process: it caches the S3 service's model and the endpoint rules,
# which take a while to read (megabytes of JSON). `preload` reads them at start-up, in a worker's
# main process before it forks its pool, so that no job spends its time limit on them.
_SESSION = get_session()


def preload() -> None:
    """Read what making a client needs (the S3 model, the endpoint rules) into the session."""
    loader = _SESSION.get_component("data_loader")
    loader.load_service_model("s3", "service-2")
    loader.load_service_model("s3", "endpoint-rule-set-1")
    loader.load_data("partitions")
    _SESSION._get_internal_component("endpoint_resolver")  # type: ignore[attr-defined]


class S3Media:
    """Media in a bucket; see the module's docstring."""

    def __init__(self, settings: Settings) -> None:
        if not settings.s3_bucket:
            raise ValueError("S3Media needs S3_BUCKET")
        self.bucket = settings.s3_bucket
        self._settings = settings
        self._part_bytes = settings.s3_multipart_bytes
        self._region = settings.s3_region or "us-east-1"
        self._session = _SESSION
        preload()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncExitStack] = (
            weakref.WeakKeyDictionary()
        )
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._client_of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, S3Client] = (
            weakref.WeakKeyDictionary()
        )
        base = settings.media_public_url or _bucket_url(settings, self._region)
        self._public = base.rstrip("/")
        # A cached answer may be served up to CACHE_TTL_SECONDS after it was built: its signed
        # URLs must still be good for MEDIA_SIGNED_URL_SECONDS then.
        cached_for = settings.cache_ttl_seconds if settings.cache_enabled else 0
        self._signed_for = settings.media_signed_url_seconds + cached_for
        self._private_cache = f"private, max-age={settings.media_signed_url_seconds}"
        # Temporary directories a killed process left behind: older than any job may run.
        _sweep_temporary(settings.task_time_limit_seconds * 2)

    # --- URLs -----------------------------------------------------------------------------------

    def url(self, key: str, filename: str) -> str:
        """The public URL of a published post's file: MEDIA_PUBLIC_URL's or the bucket's."""
        return f"{self._public}/{object_name(key, filename)}"

    def signed_url(self, key: str, filename: str, *, now: float | None = None) -> str:
        """A presigned GET URL, computed locally (no request to the bucket), good for
        MEDIA_SIGNED_URL_SECONDS; its answer may be kept privately only."""
        return self._presigner.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": object_name(key, filename),
                "ResponseCacheControl": self._private_cache,
            },
            ExpiresIn=self._signed_for,
        )

    def seconds_left(
        self, key: str, filename: str, expires: str, signature: str, *, now: float | None = None
    ) -> int | None:
        """Never: the bucket judges its own signatures, the API serves no file."""
        return None

    async def find(self, key: str, filename: str) -> StoredFile | None:
        return None

    # --- Uploads and the worker's files ---------------------------------------------------------

    async def save_upload(self, key: str, source: Path) -> None:
        try:
            with _translated():
                async with self._client() as s3:
                    await self._put_file(s3, _upload_name(key), source, extra={})
        finally:
            await anyio.to_thread.run_sync(lambda: source.unlink(missing_ok=True))

    @asynccontextmanager
    async def original(self, key: str) -> AsyncIterator[Path]:
        directory = await anyio.to_thread.run_sync(_temporary_dir)
        try:
            path = directory / "original.upload"
            await self._download(_upload_name(key), path)
            yield path
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, directory, True)

    @asynccontextmanager
    async def variants(self, key: str, *, public: bool = False) -> AsyncIterator[Path]:
        directory = await anyio.to_thread.run_sync(_temporary_dir)
        try:
            yield directory
            files = await anyio.to_thread.run_sync(lambda: sorted(directory.iterdir()))
            with _translated():
                async with self._client() as s3:
                    for path in files:
                        type_ = content_type(path.name)
                        if type_ is None:  # not a finished file of the worker's
                            continue
                        extra = {"ContentType": type_, "CacheControl": PUBLIC_CACHE}
                        if public and self._settings.s3_object_acl:
                            extra["ACL"] = "public-read"
                        await self._put_file(s3, object_name(key, path.name), path, extra=extra)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, directory, True)

    async def set_public(self, keys: list[str], public: bool) -> None:
        """A published post's objects readable by anyone (canned ACL `public-read`), a draft's
        only through presigned URLs (`private`)."""
        if not self._settings.s3_object_acl:
            return
        acl: Any = "public-read" if public else "private"
        with _translated():
            async with self._client() as s3:
                for key in keys:
                    for name in await self._names(s3, f"{IMAGES}/{key}/"):
                        await s3.put_object_acl(Bucket=self.bucket, Key=name, ACL=acl)

    async def _names(self, s3: S3Client, prefix: str) -> list[str]:
        names: list[str] = []
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            names += [item["Key"] for item in page.get("Contents", [])]
        return names

    async def discard_upload(self, key: str) -> None:
        with _translated():
            async with self._client() as s3:
                await s3.delete_object(Bucket=self.bucket, Key=_upload_name(key))

    async def delete(self, *keys: str) -> None:
        with _translated():
            async with self._client() as s3:
                for key in keys:
                    names = [_upload_name(key), *await self._names(s3, f"{IMAGES}/{key}/")]
                    answer = await s3.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": name} for name in names], "Quiet": True},
                    )
                    if answer.get("Errors"):
                        raise StorageUnavailable(f"could not delete {answer['Errors']}")

    async def exists(self, key: str, filename: str) -> bool:
        with _translated():
            async with self._client() as s3:
                try:
                    await s3.head_object(Bucket=self.bucket, Key=object_name(key, filename))
                except ClientError as exc:
                    if _code(exc) in _MISSING_CODES:
                        return False
                    raise
        return True

    async def close(self) -> None:
        """Close this event loop's client (and forget those of loops that are gone)."""
        loop = asyncio.get_running_loop()
        held = self._clients.pop(loop, None)
        self._client_of.pop(loop, None)
        for gone in [other for other in self._clients if other.is_closed()]:
            del self._clients[gone]
        if held is not None:
            await held.aclose()

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the bucket answers."""
        with _translated():
            async with self._client() as s3:
                await s3.head_bucket(Bucket=self.bucket)

    # --- Helpers ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[S3Client]:
        """This event loop's client, made on first use and kept (its connection pool too):
        making one reads the service's model, far too slow to do for each operation."""
        loop = asyncio.get_running_loop()
        if loop not in self._client_of:
            async with self._locks.setdefault(loop, asyncio.Lock()):
                if loop not in self._client_of:
                    stack = AsyncExitStack()
                    made: S3Client = await stack.enter_async_context(self._new_client())
                    self._clients[loop], self._client_of[loop] = stack, made
        yield self._client_of[loop]

    def _new_client(self) -> Any:
        settings = self._settings
        secret = settings.s3_secret_access_key
        return self._session.create_client(
            "s3",
            region_name=self._region,
            endpoint_url=settings.s3_endpoint_url or None,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=(secret.get_secret_value() or None) if secret else None,
            config=AioConfig(
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=50,
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
            ),
        )

    @cached_property
    def _presigner(self) -> Any:
        """A botocore client used only to presign: a local computation, no request."""
        settings = self._settings
        secret = settings.s3_secret_access_key
        return botocore.session.get_session().create_client(
            "s3",
            region_name=self._region,
            endpoint_url=settings.s3_endpoint_url or None,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=(secret.get_secret_value() or None) if secret else None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
            ),
        )

    async def _put_file(self, s3: S3Client, name: str, path: Path, extra: dict[str, str]) -> None:
        """Store a local file: in one request up to S3_MULTIPART_BYTES, else as a multipart
        upload, one part in memory at a time; a failed multipart upload is aborted."""
        size = (await anyio.Path(path).stat()).st_size
        if size <= self._part_bytes:
            body = await anyio.Path(path).read_bytes()
            await s3.put_object(Bucket=self.bucket, Key=name, Body=body, **extra)  # type: ignore[arg-type]
            return
        created = await s3.create_multipart_upload(Bucket=self.bucket, Key=name, **extra)  # type: ignore[arg-type]
        upload_id = created["UploadId"]
        try:
            parts: list[Any] = []
            async with await anyio.open_file(path, "rb") as source:
                while chunk := await source.read(self._part_bytes):
                    number = len(parts) + 1
                    sent = await s3.upload_part(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"ETag": sent["ETag"], "PartNumber": number})
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )
                except Exception:
                    logger.warning("could not abort a multipart upload", exc_info=True)
            raise

    async def _download(self, name: str, path: Path) -> None:
        """Copy an object to a local file, a chunk at a time; FileNotFoundError if missing."""
        with _translated():
            async with self._client() as s3:
                try:
                    answer = await s3.get_object(Bucket=self.bucket, Key=name)
                except ClientError as exc:
                    if _code(exc) in _MISSING_CODES:
                        raise FileNotFoundError(f"no object {name}") from exc
                    raise
                body = answer["Body"]
                try:
                    async with await anyio.open_file(path, "wb") as out:
                        while chunk := await body.read(READ_CHUNK_BYTES):
                            await out.write(chunk)
                finally:
                    body.close()


def _upload_name(key: str) -> str:
    return f"{UPLOADS}/{key}.upload"


def _bucket_url(settings: Settings, region: str) -> str:
    bucket = settings.s3_bucket
    if settings.s3_endpoint_url:
        return f"{settings.s3_endpoint_url.rstrip('/')}/{bucket}"
    if region == "us-east-1":
        return f"https://{bucket}.s3.amazonaws.com"
    return f"https://{bucket}.s3.{region}.amazonaws.com"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


@contextmanager
def _translated() -> Iterator[None]:
    """A bucket that cannot be reached, or answers that it cannot serve now: StorageUnavailable.
    Local file errors and the bucket's refusals (no such key, access denied) pass unchanged."""
    try:
        yield
    except ClientError as exc:
        if _status(exc) in _PASSING_STATUSES or _code(exc) in _PASSING_CODES:
            raise StorageUnavailable(f"the bucket answered {_code(exc)}") from exc
        raise
    except (BotoCoreError, aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        if isinstance(exc, StorageUnavailable):
            raise
        raise StorageUnavailable(f"the bucket cannot be reached: {exc}") from exc


def _temporary_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))


def _sweep_temporary(older_than_seconds: float) -> None:
    """Remove temporary directories of this kind left by a process killed mid-job."""
    cutoff = time.time() - older_than_seconds
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{TEMP_PREFIX}*"))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir() and os.stat(entry).st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
