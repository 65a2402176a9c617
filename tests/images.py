"""Test images made with Pillow in memory, and helpers to upload them and wait for the worker."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

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


# -- files with metadata in every place it can hide --------------------------------------------
#
# Each piece of metadata carries a canary: unique bytes that must not be found in what is served.

CANARY = b"GPS-CANARY-"


def canary(name: str) -> bytes:
    return CANARY + name.encode() + b"-END"


def icc_profile(size: int | None = None) -> bytes:
    """A real sRGB profile; with `size`, padded to that many bytes (and its header saying so),
    so that a JPEG needs several APP2 segments to carry it."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if size is None:
        return profile
    return size.to_bytes(4, "big") + profile[4:] + bytes(size - len(profile))


def exif_bytes(text: bytes) -> bytes:
    """A TIFF-structured EXIF block (no "Exif" prefix) with a camera make and GPS position."""
    exif = gps_exif()
    exif[ExifTags.Base.Make] = text.decode()
    return exif.tobytes()[6:]


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_metadata(name: str, adobe_transform: int = 1) -> list[bytes]:
    """A segment of every kind of JPEG metadata, each with its own canary. The Adobe segment's
    colour transform must be the image's own (1: YCbCr, 0: RGB or CMYK, 2: YCCK)."""
    c = canary
    thumbnail = c(f"{name}-jfif-thumbnail").ljust(48, b".")
    return [
        jpeg_segment(0xE1, b"Exif\x00\x00" + exif_bytes(c(f"{name}-exif"))),
        jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>" + c(f"{name}-xmp")),
        jpeg_segment(0xE2, b"MPF\x00" + c(f"{name}-mpf")),
        jpeg_segment(0xE2, b"FPXR\x00" + c(f"{name}-flashpix")),
        jpeg_segment(0xE2, b"ICC_PROFILE" + c(f"{name}-not-icc")),  # no NUL: not a profile
        jpeg_segment(0xED, b"Photoshop 3.0\x00" + c(f"{name}-iptc")),
        jpeg_segment(0xEB, b"JP\x00\x00" + c(f"{name}-jumbf")),
        jpeg_segment(0xE4, c(f"{name}-app4")),
        jpeg_segment(0xEF, c(f"{name}-app15")),
        jpeg_segment(0xFE, c(f"{name}-comment")),
        jpeg_segment(0xEC, b"Ducky\x00" + c(f"{name}-app12")),
        jpeg_segment(0xE0, b"JFXX\x00\x10" + c(f"{name}-jfxx")),
        jpeg_segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x10\x01" + thumbnail),
        jpeg_segment(
            0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes((adobe_transform,)) + c(f"{name}-adobe")
        ),
        jpeg_segment(0xE1, b""),  # empty
    ]


def jpeg_icc_segments(profile: bytes, tail: bytes = b"") -> list[bytes]:
    """The profile in APP2 segments of at most 65,519 bytes, `tail` after its last byte."""
    data = profile + tail
    pieces = [data[i : i + 65519] for i in range(0, len(data), 65519)]
    return [
        jpeg_segment(0xE2, b"ICC_PROFILE\x00" + bytes((seq, len(pieces))) + piece)
        for seq, piece in enumerate(pieces, 1)
    ]


def jpeg_with(base: bytes, segments: list[bytes], after_eoi: bytes = b"") -> bytes:
    """`segments` right after SOI, `after_eoi` after the end of the image."""
    assert base.startswith(b"\xff\xd8")
    assert base.endswith(b"\xff\xd9")
    return base[:2] + b"".join(segments) + base[2:] + after_eoi


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_chunks(data: bytes) -> list[bytes]:
    """The chunks of a PNG, each whole (length, type, data and checksum)."""
    chunks, i = [], 8
    while i < len(data):
        (length,) = struct.unpack_from(">I", data, i)
        chunks.append(data[i : i + 12 + length])
        i += 12 + length
    return chunks


def png_metadata(name: str) -> list[bytes]:
    c = canary
    return [
        png_chunk(b"tEXt", b"Comment\x00" + c(f"{name}-text")),
        png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(c(f"{name}-ztxt"))),
        png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + c(f"{name}-xmp")),
        png_chunk(b"eXIf", exif_bytes(c(f"{name}-exif"))),
        png_chunk(b"tIME", b"\x07\xea\x0b\x19\x0c\x00\x00"),
        png_chunk(b"prVt", c(f"{name}-private")),
        png_chunk(b"caBX", c(f"{name}-c2pa")),
        png_chunk(b"vpAg", c(f"{name}-vpag")),
        png_chunk(b"tEXt", b""),  # empty
    ]


def png_with(
    base: bytes,
    before_idat: Sequence[bytes],
    before_iend: Sequence[bytes] = (),
    after_iend: bytes = b"",
) -> bytes:
    """`before_idat` ahead of the image data, `before_iend` after it, `after_iend` after IEND."""
    chunks = png_chunks(base)
    first_idat = next(i for i, chunk in enumerate(chunks) if chunk[4:8] == b"IDAT")
    return b"".join(
        [
            base[:8],
            *chunks[:first_idat],
            *before_idat,
            *chunks[first_idat:-1],
            *before_iend,
            chunks[-1],
            after_iend,
        ]
    )


def riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) % 2)


def webp_chunks(data: bytes) -> list[bytes]:
    chunks, i = [], 12
    while i < len(data):
        (length,) = struct.unpack_from("<I", data, i + 4)
        size = 8 + length + length % 2
        chunks.append(data[i : i + size])
        i += size
    return chunks


def webp_from(chunks: list[bytes], after: bytes = b"") -> bytes:
    body = b"".join(chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body + after


def webp_metadata(name: str) -> list[bytes]:
    c = canary
    return [
        riff_chunk(b"EXIF", exif_bytes(c(f"{name}-exif"))),
        riff_chunk(b"XMP ", b"<x:xmpmeta>" + c(f"{name}-xmp")),
        riff_chunk(b"CNRY", c(f"{name}-unknown")),
        riff_chunk(b"EXIF", b""),
    ]


def webp_with(base: bytes, chunks: list[bytes], after: bytes = b"") -> bytes:
    """`chunks` after the VP8X header (with its EXIF and XMP flags set), `after` after RIFF."""
    first, *rest = webp_chunks(base)
    assert first[:4] == b"VP8X"
    header = first[:8] + bytes((first[8] | 0x0C,)) + first[9:]
    return webp_from([header, *chunks, *rest], after)


def gif_with_metadata(name: str, size: tuple[int, int] = (60, 40)) -> bytes:
    """A GIF with a comment, an XMP application extension and a plain-text canary after the
    trailer."""
    data = encode(banded(size).convert("P"), "GIF", comment=canary(f"{name}-comment"))
    table = 3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0
    xmp = canary(f"{name}-xmp")
    application = b"\x21\xff\x0bXMP DataXMP" + bytes((len(xmp),)) + xmp + b"\x00"
    return data[: 13 + table] + application + data[13 + table :] + canary(f"{name}-trailing")


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
