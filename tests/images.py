"""Test images made with Pillow in memory, and helpers to upload them and wait for the worker."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from PIL import ExifTags, Image, PngImagePlugin

PROCESSING_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
ORIENTATION_TAG = 0x0112
ROTATE_90_CW = 6  # EXIF orientation: the stored pixels must turn 90° clockwise to stand upright

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)


def encode(im: Image.Image, format_: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format_, **options)
    return buffer.getvalue()


def gps_exif(orientation: int | None = None) -> Image.Exif:
    """EXIF with a camera model and a GPS position (a home address, as far as privacy goes)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "InkwellCam"
    exif[ExifTags.Base.Model] = "Model X"
    if orientation is not None:
        exif[ORIENTATION_TAG] = orientation
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 40.0)
    return exif


def banded(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Blue in the middle, red bands on the left and right edges (a sixth of the width each), and
    a green band along the top: a centre crop shows blue only, and the top is recognisable."""
    width, height = size
    im = Image.new("RGB", size, BLUE)
    band = width // 6
    im.paste(RED, (0, 0, band, height))
    im.paste(RED, (width - band, 0, width, height))
    im.paste(GREEN, (0, 0, width, height // 10))
    return im if mode == "RGB" else im.convert(mode)


def jpeg(size: tuple[int, int] = (3000, 2000), **options: Any) -> bytes:
    return encode(banded(size), "JPEG", quality=90, **options)


def jpeg_with_gps(size: tuple[int, int] = (3000, 2000)) -> bytes:
    return jpeg(size, exif=gps_exif())


def png(size: tuple[int, int] = (3000, 2000)) -> bytes:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "shot at home")
    return encode(banded(size), "PNG", exif=gps_exif(), pnginfo=text)


def webp(size: tuple[int, int] = (3000, 2000)) -> bytes:
    return encode(banded(size), "WEBP", quality=80, exif=gps_exif())


def gif(size: tuple[int, int] = (600, 400)) -> bytes:
    return encode(banded(size).convert("P"), "GIF")


def cmyk_jpeg(size: tuple[int, int] = (1600, 1200)) -> bytes:
    return encode(banded(size, "CMYK"), "JPEG", quality=90)


def rotated_jpeg(stored: tuple[int, int] = (3000, 2000)) -> bytes:
    """A landscape JPEG whose EXIF says 'rotate 90° clockwise': upright it is portrait. The
    stored left edge is red, so upright the top is red and the bottom is blue."""
    width, height = stored
    im = Image.new("RGB", stored, BLUE)
    im.paste(RED, (0, 0, width // 5, height))
    return encode(im, "JPEG", quality=90, exif=gps_exif(orientation=ROTATE_90_CW))


def transparent_png(size: tuple[int, int] = (800, 600)) -> bytes:
    """RGBA: opaque blue in the middle, fully transparent everywhere else."""
    width, height = size
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    im.paste((20, 20, 220, 255), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return encode(im, "PNG")


def tiny_png() -> bytes:
    return encode(Image.new("RGB", (16, 16), GREEN), "PNG")


def png_bomb(size: tuple[int, int] = (10_000, 10_000)) -> bytes:
    """A hundred megapixels of one flat colour: a few kilobytes of PNG."""
    return encode(Image.new("1", size, 0), "PNG", optimize=True)


def noisy_jpeg(size: tuple[int, int] = (800, 600)) -> bytes:
    """Noise compresses badly, so most of the file is scan data."""
    return encode(Image.effect_noise(size, 64).convert("RGB"), "JPEG", quality=95)


def truncated_jpeg() -> bytes:
    data = noisy_jpeg()
    return data[: len(data) // 2]


def open_image(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def files_under(directory: Path) -> set[Path]:
    if not directory.exists():
        return set()
    return {path for path in directory.rglob("*") if path.is_file()}


async def upload(
    client: httpx.AsyncClient,
    post_id: int,
    data: bytes,
    headers: dict[str, str],
    filename: str = "photo.jpg",
    content_type: str = "image/jpeg",
    alt: str | None = None,
) -> httpx.Response:
    form = {"alt": alt} if alt is not None else None
    return await client.post(
        f"/api/posts/{post_id}/images",
        files={"file": (filename, data, content_type)},
        data=form,
        headers=headers,
    )


def multipart_body(boundary: str, data: bytes, filename: str = "photo.jpg") -> tuple[bytes, bytes]:
    """The bytes before and after the file's content in a one-part multipart body."""
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data, f"\r\n--{boundary}--\r\n".encode()


class ChunkedBody:
    """A multipart body sent as an async stream (no Content-Length: chunked), counting how many
    bytes the server pulled before it answered."""

    def __init__(self, head: bytes, filler: int, tail: bytes, chunk_size: int = 64 * 1024) -> None:
        self.head = head
        self.filler = filler
        self.tail = tail
        self.chunk_size = chunk_size
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        self.sent += len(self.head)
        remaining = self.filler
        chunk = b"\0" * self.chunk_size
        while remaining > 0:
            piece = chunk[: min(self.chunk_size, remaining)]
            yield piece
            self.sent += len(piece)
            remaining -= len(piece)
        yield self.tail
        self.sent += len(self.tail)


async def wait_until_processed(
    client: httpx.AsyncClient,
    location: str,
    headers: dict[str, str] | None = None,
    within_s: float = PROCESSING_TIMEOUT_S,
) -> dict[str, Any]:
    """Poll the image until it leaves `pending`; fail the test after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        response = await client.get(location, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] != "pending":
            return body
        assert time.monotonic() < deadline, f"{location} still pending after {within_s} s"
        await asyncio.sleep(POLL_INTERVAL_S)


async def wait_for_task(
    client: httpx.AsyncClient,
    task_id: str,
    headers: dict[str, str],
    within_s: float = PROCESSING_TIMEOUT_S,
) -> dict[str, Any]:
    """Poll the task until it is SUCCESS or FAILURE; fail the test after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        response = await client.get(f"/api/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] in ("SUCCESS", "FAILURE"):
            return body
        assert time.monotonic() < deadline, f"task {task_id} is {body['state']} after {within_s} s"
        await asyncio.sleep(POLL_INTERVAL_S)
