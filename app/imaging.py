"""Image checks and processing with Pillow. Pure functions on files, run in a worker thread or a
Celery worker, never on the event loop."""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

# Formats accepted, by the name Pillow gives them, with the extension their originals keep.
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
# Pillow refuses to open anything larger at all; uploads are capped lower by settings.
Image.MAX_IMAGE_PIXELS = 50_000_000

LARGE_WIDTH = 1280
MEDIUM_WIDTH = 640
THUMB_SIZE = (200, 200)
WEBP_QUALITY = 82
WEBP_METHOD = 2  # 4 (the default) costs ~100 ms more a 12 MP photo for 2-4 % smaller files
JPEG_QUALITY = 90


class ImageRejected(Exception):
    """The file is not an image we accept; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class Probe:
    format: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    filename: str
    width: int
    height: int
    bytes: int

    def as_dict(self, url: str) -> dict[str, Any]:
        return {"url": url, "width": self.width, "height": self.height, "bytes": self.bytes}


def sniff(head: bytes) -> str | None:
    """The format, told by the file's first bytes (never by its name or declared type)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def probe(path: Path, format_: str) -> Probe:
    """Read the header only: the format and pixel size, without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[format_]) as im:
                return Probe(format_, im.width, im.height)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("The image has too many pixels.") from exc
    except Exception as exc:  # Pillow raises many types for broken headers
        raise ImageRejected("The file is not a readable image.") from exc


def process(source: Path, format_: str, out_dir: Path) -> list[Variant]:
    """Check the image again, apply its EXIF orientation, drop all metadata, and write the
    cleaned original and the `large`, `medium` and `thumb` WebP variants into `out_dir`.

    Upright JPEGs and PNGs keep their original's encoded data: only the metadata segments or
    chunks are dropped, with no re-encoding and no quality lost. JPEG variants come from one
    decode at the smallest scale the largest variant allows (Pillow's `draft`). Only an image
    whose orientation must be applied is re-encoded. Returns the original and the variants.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    original_name = f"original.{FORMATS[format_]}"
    try:
        with Image.open(source, formats=[format_]) as im:
            orientation = im.getexif().get(0x0112, 1)
            stripper = _STRIPPERS.get(format_) if orientation == 1 else None
            if stripper is not None:
                cleaned, size = stripper(source.read_bytes()), im.size
            elif format_ == "JPEG":  # the original needs every pixel, rotated
                with Image.open(source, formats=[format_]) as full:
                    full.load()
                    upright_original = ImageOps.exif_transpose(full)
                    cleaned = _encode_original(upright_original, format_)
                    size = upright_original.size
            if format_ == "JPEG":
                im.draft(im.mode, _draft_size(im.size, rotated=orientation in _QUARTER_TURNS))
            im.load()
            upright: Image.Image = ImageOps.exif_transpose(im)
            if stripper is None and format_ != "JPEG":
                cleaned, size = _encode_original(upright, format_), upright.size
            _write_atomic(out_dir / original_name, cleaned)
            original = Variant("original", original_name, *size, len(cleaned))
            variants = [original, *_variants(upright, size, out_dir)]
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("The image has too many pixels.") from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ImageRejected(f"The image could not be decoded: {exc}") from exc
    return variants


_QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _draft_size(size: tuple[int, int], rotated: bool) -> tuple[int, int]:
    """The smallest decode size the variants allow: JPEG can decode at 1/2, 1/4 or 1/8 scale,
    and the upright image must keep a 1280 px width (or all it has) and a 200 px square."""
    width, height = (size[1], size[0]) if rotated else size
    target_width = min(width, LARGE_WIDTH)
    target = (target_width, max(min(THUMB_SIZE[1], height), round(height * target_width / width)))
    return (target[1], target[0]) if rotated else target


def _variants(im: Image.Image, original: tuple[int, int], out_dir: Path) -> list[Variant]:
    """The WebP variants, sized from the `original` dimensions (`im` may be a reduced decode)."""
    im = _webp_mode(im)
    large = _fit_width(im, LARGE_WIDTH, original)
    medium = _fit_width(large, MEDIUM_WIDTH, original)  # resampled from large: cheaper
    thumb = _centre_crop(im, THUMB_SIZE)
    return [_write_webp(name, image, out_dir) for name, image in
            (("large", large), ("medium", medium), ("thumb", thumb))]  # fmt: skip


def _centre_crop(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The largest centred box of the target's aspect ratio, scaled to `size`."""
    width, height = size
    scale = min(im.width / width, im.height / height)
    box_w, box_h = width * scale, height * scale
    left, top = (im.width - box_w) / 2, (im.height - box_h) / 2
    box = (left, top, left + box_w, top + box_h)
    return im.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _fit_width(im: Image.Image, width: int, original: tuple[int, int]) -> Image.Image:
    """Scale to `width` keeping the original's aspect ratio; never upscale."""
    if original[0] <= width and im.size == original:
        return im
    width = min(width, original[0])
    height = max(1, round(original[1] * width / original[0]))
    if im.size == (width, height):
        return im
    return im.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _webp_mode(im: Image.Image) -> Image.Image:
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    target = "RGBA" if has_alpha else "RGB"
    return im if im.mode == target else im.convert(target)


def _write_webp(name: str, im: Image.Image, out_dir: Path) -> Variant:
    buffer = io.BytesIO()
    im.save(buffer, "WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    data = buffer.getvalue()
    filename = f"{name}.webp"
    _write_atomic(out_dir / filename, data)
    return Variant(name, filename, im.width, im.height, len(data))


def _encode_original(im: Image.Image, format_: str) -> bytes:
    """Re-encode in the image's own format with no metadata (EXIF, XMP, text chunks, comments);
    the colour profile is kept, since it is not personal and colours depend on it."""
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    if icc := im.info.get("icc_profile"):
        options["icc_profile"] = icc
    if format_ == "JPEG":
        if im.mode not in ("RGB", "L", "CMYK"):
            im = im.convert("RGB")
        options |= {"quality": JPEG_QUALITY}
    elif format_ == "WEBP":
        options |= {"quality": JPEG_QUALITY}
    elif format_ == "GIF" and "transparency" in im.info:
        options["transparency"] = im.info["transparency"]
    clean = im.copy()
    clean.info = {}
    clean.save(buffer, format_, **options)
    return buffer.getvalue()


# JPEG segments that carry metadata: APP1 (EXIF, XMP), APP3-APP13 (IPTC, Photoshop, vendor
# data), APP15 and comments. APP0 (JFIF), APP2 (ICC colour profile) and APP14 (Adobe colour
# transform, needed for CMYK) describe how to decode the pixels and stay.
_DROPPED_MARKERS = {0xE1, *range(0xE3, 0xEE), 0xEF, 0xFE}


def strip_jpeg_metadata(data: bytes) -> bytes:
    """The same JPEG with its metadata segments removed; the image data is copied untouched."""
    if not data.startswith(b"\xff\xd8"):
        raise ImageRejected("Not a JPEG file.")
    out = bytearray(b"\xff\xd8")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageRejected("Malformed JPEG segment.")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            out += data[i:]
            return bytes(out)
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2 or i + 2 + length > len(data):
            raise ImageRejected("Truncated JPEG header.")
        if marker not in _DROPPED_MARKERS:
            out += data[i : i + 2 + length]
        i += 2 + length
    raise ImageRejected("JPEG has no image data.")


# PNG chunks that carry metadata: text, EXIF and the modification time. Colour chunks (iCCP,
# sRGB, gAMA, cHRM) and the pixel density stay.
_DROPPED_PNG_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def strip_png_metadata(data: bytes) -> bytes:
    """The same PNG without its metadata chunks; the image data is copied untouched."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ImageRejected("Not a PNG file.")
    out = bytearray(_PNG_SIGNATURE)
    i = len(_PNG_SIGNATURE)
    while i + 12 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data):
            raise ImageRejected("Truncated PNG chunk.")
        if kind not in _DROPPED_PNG_CHUNKS:
            out += data[i:end]
        i = end
        if kind == b"IEND":
            return bytes(out)
    raise ImageRejected("PNG has no end.")


_STRIPPERS = {"JPEG": strip_jpeg_metadata, "PNG": strip_png_metadata}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write then rename, so a worker killed mid-write never leaves half a file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
