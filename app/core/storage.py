"""Which media storage this process uses, chosen in one place for the API and the workers:
the bucket when S3_BUCKET is set, else local directories."""

from __future__ import annotations

from app.config import Settings
from app.core.media import LocalMedia, MediaStorage


def build_media(settings: Settings) -> MediaStorage:
    if settings.s3_bucket:
        from app.core.s3 import S3Media  # aiobotocore only when it is used

        return S3Media(settings)
    return LocalMedia(settings)
