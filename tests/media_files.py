"""Storage-neutral looks at media, so that the same tests pass with media on local disk
(embedded mode, LocalMedia) and in a bucket (services mode, S3Media on moto): which files an
image's key has, whether its raw upload is still stored, and fetching a media URL wherever it
points (the API under MEDIA_URL, or the bucket)."""

from __future__ import annotations

from typing import Any

import botocore.session
import httpx
from botocore.config import Config

from app.config import Settings
from app.core.media import LocalMedia


def _s3(settings: Settings) -> Any:
    secret = settings.s3_secret_access_key
    return botocore.session.get_session().create_client(
        "s3",
        region_name=settings.s3_region or "us-east-1",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(s3={"addressing_style": "path"}),
    )


def stored_files(settings: Settings, key: str) -> set[str]:
    """The names of the processed files stored under `key` (empty when there are none)."""
    if settings.s3_bucket:
        answer = _s3(settings).list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"images/{key}/")
        return {item["Key"].rsplit("/", 1)[-1] for item in answer.get("Contents", [])}
    directory = LocalMedia(settings).image_dir(key)
    if not directory.is_dir():
        return set()
    return {path.name for path in directory.iterdir() if path.is_file()}


def upload_stored(settings: Settings, key: str) -> bool:
    """Whether `key`'s raw upload is still stored."""
    if settings.s3_bucket:
        answer = _s3(settings).list_objects_v2(
            Bucket=settings.s3_bucket, Prefix=f"uploads/{key}.upload"
        )
        return bool(answer.get("Contents"))
    return LocalMedia(settings).upload_path(key).exists()


def all_keys(settings: Settings) -> set[str]:
    """Every stored object (bucket) or file (disk), by its name under the storage's root."""
    if settings.s3_bucket:
        s3 = _s3(settings)
        found: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket):
            found |= {item["Key"] for item in page.get("Contents", [])}
        return found
    names = set()
    for root, prefix in ((settings.media_path / "images", "images"), (settings.uploads_path, "")):
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file():
                    relative = path.relative_to(root).as_posix()
                    names.add(f"{prefix}/{relative}" if prefix else f"uploads/{relative}")
    return names


async def get(client: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response:
    """GET a media URL: through `client` (the API) when it is relative, else from wherever it
    points (the bucket or a CDN), as a browser would."""
    if url.startswith(("http://", "https://")):
        async with httpx.AsyncClient() as outside:
            return await outside.get(url, **kwargs)
    return await client.get(url, **kwargs)


def base_url(settings: Settings) -> str:
    """Where published media's URLs start: MEDIA_URL, or MEDIA_PUBLIC_URL or the bucket's."""
    if settings.s3_bucket:
        if settings.media_public_url:
            return settings.media_public_url.rstrip("/")
        return f"{(settings.s3_endpoint_url or '').rstrip('/')}/{settings.s3_bucket}"
    return settings.media_url.rstrip("/")


def storage_key(url: str) -> str:
    """The key in a media URL (`.../images/<key>/<file>`, with or without a signature)."""
    return url.split("?", 1)[0].rsplit("/", 2)[-2]


async def refused(client: httpx.AsyncClient, url: str) -> bool:
    """Whether a media URL is refused: 404 from the API; 403 or 404 from a bucket."""
    status = (await get(client, url)).status_code
    return status == 404 or (status == 403 and url.startswith(("http://", "https://")))
