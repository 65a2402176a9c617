"""Where processed media live: a directory served at MEDIA_URL (default `/media`). The API and
the workers share it (a volume); object storage would implement the same methods, its signed
URLs being the bucket's presigned ones.

A published post's files have one public URL each, cacheable for ever (keys are never reused).
A draft's files are served only at signed URLs: `?expires=<unix time>&sig=<HMAC-SHA256 of the
object's name and the expiry>`, handed to the author and administrators in their answers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import shutil
import time
from functools import cached_property
from pathlib import Path

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


class LocalMedia:
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
        return f"{self._url}/{_object_name(key, filename)}"

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

    def file(self, key: str, filename: str) -> Path | None:
        """Where a file the worker may have written lives, or None when the names are not such
        a file's (anything else under the root: raw uploads, directories, `..`)."""
        if content_type(filename) is None or not _KEY.fullmatch(key):
            return None
        return self.image_dir(key) / filename

    def delete(self, key: str) -> None:
        """Remove an image's files, processed and raw; missing files are not an error."""
        shutil.rmtree(self.image_dir(key), ignore_errors=True)
        self.upload_path(key).unlink(missing_ok=True)

    def _signature(self, key: str, filename: str, expires: int) -> str:
        message = f"{_object_name(key, filename)}\n{expires}".encode()
        digest = hmac.new(self._signing_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def content_type(filename: str) -> str | None:
    """The type of a file the worker writes, told by its name; None for any other name."""
    match = _FILENAME.fullmatch(filename)
    return CONTENT_TYPES.get(match["extension"]) if match else None


def _object_name(key: str, filename: str) -> str:
    return f"{IMAGES}/{key}/{filename}"
