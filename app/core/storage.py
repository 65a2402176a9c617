"""Which media storage this process uses, chosen in one place for the API and the workers:
the bucket when S3_BUCKET is set, else local directories. The S3 client is imported here, at
start-up, never in the middle of a job (a time limit firing inside an import would leave the
module half-imported for the rest of the process's life)."""

from __future__ import annotations

from app.config import Settings
from app.core.media import LocalMedia, MediaStorage
from app.core.s3 import S3Media


def build_media(settings: Settings) -> MediaStorage:
    if settings.s3_bucket:
        return S3Media(settings)
    return LocalMedia(settings)
