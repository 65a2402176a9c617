"""Where processed media live: a directory served at MEDIA_URL (default `/media`). The API and
the workers share it (a volume); object storage would implement the same four methods."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.config import Settings

IMAGES = "images"


class LocalMedia:
    def __init__(self, settings: Settings) -> None:
        self.root = settings.media_path
        self.uploads = settings.uploads_path
        self._url = settings.media_url.rstrip("/")

    def image_dir(self, key: str) -> Path:
        return self.root / IMAGES / key

    def upload_path(self, key: str) -> Path:
        return self.uploads / f"{key}.upload"

    def url(self, key: str, filename: str) -> str:
        return f"{self._url}/{IMAGES}/{key}/{filename}"

    def delete(self, key: str) -> None:
        """Remove an image's files, processed and raw; missing files are not an error."""
        shutil.rmtree(self.image_dir(key), ignore_errors=True)
        self.upload_path(key).unlink(missing_ok=True)
