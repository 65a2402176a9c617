"""Image checks and processing with Pillow. Pure functions on files, run in a worker thread or a
Celery worker, never on the event loop."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
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

    Upright JPEGs, PNGs and WebPs keep their original's encoded data: only what a viewer needs
    is copied (an allow-list), with no re-encoding and no quality lost. JPEG variants come from
    one decode at the smallest scale the largest variant allows (Pillow's `draft`). An image
    whose orientation must be applied, a GIF, and a file whose structure the allow-list cannot
    follow are re-encoded from their pixels instead. Returns the original and the variants.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    original_name = f"original.{FORMATS[format_]}"
    try:
        with Image.open(source, formats=[format_]) as im:
            orientation = im.getexif().get(0x0112, 1)
            cleaned = _stripped(source, format_) if orientation == 1 else None
            size = im.size
            if cleaned is None and format_ == "JPEG":  # the original needs every pixel, rotated
                with Image.open(source, formats=[format_]) as full:
                    full.load()
                    upright_original = ImageOps.exif_transpose(full)
                    cleaned = _encode_original(upright_original, format_)
                    size = upright_original.size
            if format_ == "JPEG":
                im.draft(im.mode, _draft_size(im.size, rotated=orientation in _QUARTER_TURNS))
            im.load()
            upright: Image.Image = ImageOps.exif_transpose(im)
            if cleaned is None:
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


def _stripped(source: Path, format_: str) -> bytes | None:
    """The file with only what a viewer needs, or None if it must be re-encoded instead."""
    stripper = _STRIPPERS.get(format_)
    if stripper is None:
        return None
    try:
        return stripper(source.read_bytes())
    except MalformedImage:
        return None


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
    elif format_ in ("GIF", "PNG") and "transparency" in im.info:
        options["transparency"] = im.info["transparency"]
    clean = im.copy()
    clean.info = {}
    clean.save(buffer, format_, **options)
    return buffer.getvalue()


# -- metadata stripping: an allow-list of what a viewer needs ------------------------------------
#
# Each stripper copies only the structures needed to show the pixels in their colours and drops
# everything else, known or not: EXIF, XMP, IPTC, comments, text chunks, maker and vendor data,
# embedded thumbnails and previews, and any bytes after the image's end. Chunks that are kept are
# checked for their expected size, and the colour profile is checked and written anew, so nothing
# rides along in them either. A structure they cannot follow raises `MalformedImage`, and
# `process` then re-encodes the decoded pixels instead: the upload's bytes are never served as
# they came.


class MalformedImage(ImageRejected):
    """The file's structure cannot be followed safely (truncated, lengths past the end, ...)."""


MAX_ICC_BYTES = 16 * 1024 * 1024  # a JPEG can carry at most 255 x 65,519 bytes of profile
_ICC_HEADER_BYTES = 128


def _valid_icc(profile: bytes) -> bytes | None:
    """The profile cut to the size its header declares, or None if it is not an ICC profile."""
    if len(profile) < _ICC_HEADER_BYTES or profile[36:40] != b"acsp":
        return None
    declared = int.from_bytes(profile[:4], "big")
    if not _ICC_HEADER_BYTES <= declared <= len(profile):
        return None
    return profile[:declared]


# JPEG. Kept: SOF0-SOF15 (frame headers), DHT, DAC, DQT, DRI, DNL, SOS with its entropy-coded
# data (every scan of a progressive JPEG, with its RSTn markers), EOI; the colour profile (APP2
# ICC_PROFILE before the first scan, where decoders read it; checked and re-chunked), the Adobe
# colour transform (APP14, 12 bytes, needed for CMYK and YCCK) and the JFIF header (APP0)
# without its thumbnail. Nothing after EOI.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_KEPT_JPEG_SEGMENTS = _SOF_MARKERS | {0xC4, 0xCC, 0xDB, 0xDD, 0xDC}
_SOI, _EOI, _SOS, _APP0, _APP2, _APP14 = 0xD8, 0xD9, 0xDA, 0xE0, 0xE2, 0xEE
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length, no payload
_ICC_TAG = b"ICC_PROFILE\x00"
_ICC_CHUNK_BYTES = 65535 - 2 - len(_ICC_TAG) - 2
# The end of a scan: a 0xFF that is neither stuffing (0xFF00) nor a restart marker (RSTn).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _well_formed(marker: int, payload: memoryview) -> bool:
    """Whether a kept segment is exactly the tables or header its marker announces, with no
    room left for anything else."""
    size = len(payload)
    if marker in _SOF_MARKERS:
        return size >= 9 and payload[5] >= 1 and size == 6 + 3 * payload[5]
    if marker in (0xDD, 0xDC):  # DRI, DNL
        return size == 2
    if marker == 0xCC:  # DAC: (class/id, value) pairs
        return size % 2 == 0 and all(payload[j] >> 4 < 2 and payload[j] & 15 < 4
                                     for j in range(0, size, 2))  # fmt: skip
    j = 0
    while j < size:  # DQT and DHT: a sequence of tables
        kind, index = payload[j] >> 4, payload[j] & 15
        if marker == 0xDB:  # DQT: precision 8 or 16 bits, 64 values
            if kind > 1 or index > 3:
                return False
            j += 1 + 64 * (kind + 1)
        else:  # DHT: 16 code-length counts, then the values
            if kind > 1 or index > 3 or j + 17 > size:
                return False
            j += 17 + sum(payload[j + 1 : j + 17])
    return j == size


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _jpeg_icc_segments(chunks: list[tuple[int, bytes]], counts: set[int]) -> bytes:
    """The APP2 segments of a valid profile, or nothing: the pieces must number 1..n, once each."""
    chunks.sort(key=lambda chunk: chunk[0])
    if counts != {len(chunks)} or [seq for seq, _ in chunks] != list(range(1, len(chunks) + 1)):
        return b""
    profile = _valid_icc(b"".join(piece for _, piece in chunks))
    if profile is None:
        return b""
    pieces = [profile[i : i + _ICC_CHUNK_BYTES] for i in range(0, len(profile), _ICC_CHUNK_BYTES)]
    return b"".join(
        _segment(_APP2, _ICC_TAG + bytes((seq, len(pieces))) + piece)
        for seq, piece in enumerate(pieces, 1)
    )


def _scan_end(data: bytes, start: int) -> int:
    """Where the entropy-coded data that starts at `start` ends: at the next marker that is
    not a restart marker (which may follow fill bytes too)."""
    while found := _SCAN_END.search(data, start):
        after = found.start() + 1
        while after < len(data) and data[after] == 0xFF:
            after += 1
        if after < len(data) and (data[after] == 0x00 or 0xD0 <= data[after] <= 0xD7):
            start = after + 1
            continue
        return found.start()
    raise MalformedImage("Malformed JPEG: a scan has no end.")


def strip_jpeg_metadata(data: bytes) -> bytes:
    """The same JPEG with only the segments a decoder needs; the image data is copied untouched.
    Raises `MalformedImage` if the segment structure cannot be followed to the EOI marker."""
    if not data.startswith(b"\xff\xd8"):
        raise MalformedImage("Not a JPEG file.")
    view, size = memoryview(data), len(data)
    out: list[bytes | memoryview] = [b"\xff\xd8"]
    icc_at: int | None = None  # where in `out` the colour profile goes: before the frame header
    icc_chunks: list[tuple[int, bytes]] = []
    icc_counts: set[int] = set()
    scans = 0
    i = 2
    while True:
        if i >= size or data[i] != 0xFF:
            raise MalformedImage("Malformed JPEG: a marker was expected.")
        while i < size and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= size:
            raise MalformedImage("Malformed JPEG: no end of image.")
        marker = data[i]
        i += 1
        if marker == _EOI:
            if not scans:
                raise MalformedImage("JPEG has no image data.")
            out.append(b"\xff\xd9")  # and nothing that follows it
            break
        if marker in _STANDALONE:
            continue
        if marker in (0x00, _SOI):
            raise MalformedImage("Malformed JPEG: unexpected marker.")
        if i + 2 > size:
            raise MalformedImage("Truncated JPEG segment.")
        (length,) = struct.unpack_from(">H", data, i)
        end = i + length
        if length < 2 or end > size:
            raise MalformedImage("Truncated JPEG segment.")
        payload = view[i + 2 : end]
        if marker in _KEPT_JPEG_SEGMENTS:
            if not _well_formed(marker, payload):
                raise MalformedImage("Malformed JPEG table or header.")
            if marker in _SOF_MARKERS and icc_at is None:
                icc_at = len(out)
                out.append(b"")
            out.append(view[i - 2 : end])
        elif marker == _SOS:
            if length < 3 or not 1 <= payload[0] <= 4 or length != 6 + 2 * payload[0]:
                raise MalformedImage("Malformed JPEG scan header.")
            end = _scan_end(data, end)
            out.append(view[i - 2 : end])
            scans += 1
        elif marker == _APP2 and data.startswith(_ICC_TAG, i + 2) and length > 16 and not scans:
            icc_chunks.append((payload[12], bytes(payload[14:])))
            icc_counts.add(payload[13])
        elif marker == _APP14 and data.startswith(b"Adobe", i + 2) and length >= 14:
            out.append(_segment(_APP14, bytes(payload[:12])))
        elif marker == _APP0 and data.startswith(b"JFIF\x00", i + 2) and length >= 16:
            out.append(_segment(_APP0, bytes(payload[:12]) + b"\x00\x00"))  # no thumbnail
        i = end
    if icc_at is not None and icc_chunks:
        out[icc_at] = _jpeg_icc_segments(icc_chunks, icc_counts)
    return b"".join(out)


# PNG. Kept: the image header, palette and data, transparency, the colour chunks (gAMA, cHRM,
# sRGB, cICP, sBIT and the iCCP profile, renamed and recompressed), pixel density, and the APNG
# animation chunks, each with the size its type allows. Nothing after IEND.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK_SIZES: dict[bytes, Callable[[int], bool]] = {
    b"IHDR": lambda n: n == 13,
    b"PLTE": lambda n: 0 < n <= 768 and n % 3 == 0,
    b"IDAT": lambda n: True,
    b"tRNS": lambda n: n <= 256,
    b"gAMA": lambda n: n == 4,
    b"cHRM": lambda n: n == 32,
    b"sRGB": lambda n: n == 1,
    b"cICP": lambda n: n == 4,
    b"sBIT": lambda n: 1 <= n <= 4,
    b"pHYs": lambda n: n == 9,
    b"acTL": lambda n: n == 8,
    b"fcTL": lambda n: n == 26,
    b"fdAT": lambda n: n >= 4,
}
_MAX_PNG_CHUNK = 2**31 - 1


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_icc_chunk(payload: memoryview) -> bytes:
    """The iCCP chunk again, with a neutral name and only the profile, or nothing."""
    name_end = bytes(payload[:81]).find(b"\x00")
    if name_end < 1 or name_end + 2 > len(payload) or payload[name_end + 1] != 0:
        return b""
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(payload[name_end + 2 :], MAX_ICC_BYTES)
    except zlib.error:
        return b""
    if not inflater.eof or inflater.unconsumed_tail:
        return b""
    valid = _valid_icc(profile)
    if valid is None:
        return b""
    return _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(valid))


def strip_png_metadata(data: bytes) -> bytes:
    """The same PNG with only the chunks a viewer needs; the image data is copied untouched.
    Raises `MalformedImage` if the chunks cannot be followed to IEND."""
    if not data.startswith(_PNG_SIGNATURE):
        raise MalformedImage("Not a PNG file.")
    view, size = memoryview(data), len(data)
    out: list[bytes | memoryview] = [_PNG_SIGNATURE]
    i = len(_PNG_SIGNATURE)
    while True:
        if i + 12 > size:
            raise MalformedImage("Truncated PNG chunk.")
        length, kind = struct.unpack_from(">I4s", data, i)
        end = i + 12 + length
        if length > _MAX_PNG_CHUNK or end > size:
            raise MalformedImage("Truncated PNG chunk.")
        if i == len(_PNG_SIGNATURE) and kind != b"IHDR":
            raise MalformedImage("PNG does not start with its header.")
        if kind == b"IEND":
            out.append(_png_chunk(b"IEND", b""))  # and nothing that follows it
            return b"".join(out)
        fits = _PNG_CHUNK_SIZES.get(kind)
        if fits is not None:
            # the checksum also shows that the chunk is not longer than the one written
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if not fits(length) or zlib.crc32(view[i + 4 : end - 4]) != crc:
                raise MalformedImage(f"PNG chunk {kind!r} is malformed.")
            out.append(view[i:end])
        elif kind == b"iCCP":
            out.append(_png_icc_chunk(view[i + 8 : end - 4]))
        i = end


# WebP. Kept: the image data (VP8, VP8L, ALPH), the extended header (VP8X, its EXIF and XMP
# flags cleared), the colour profile (ICCP) and the animation (ANIM, and in each ANMF frame only
# its image data). The RIFF size is written anew; nothing after the RIFF container.
_WEBP_IMAGE_CHUNKS = frozenset({b"VP8 ", b"VP8L", b"ALPH"})
_VP8X_ICC, _VP8X_ALPHA, _VP8X_ANIMATION = 0x20, 0x10, 0x02


def _riff_chunks(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Each chunk between `start` and `end`: its type and where its payload starts and ends."""
    i = start
    while i < end:
        if i + 8 > end:
            raise MalformedImage("Truncated WebP chunk.")
        kind, length = struct.unpack_from("<4sI", data, i)
        stop = i + 8 + length
        if stop > end:
            raise MalformedImage("Truncated WebP chunk.")
        yield kind, i + 8, stop
        i = stop + (length & 1)


def _riff_chunk(kind: bytes, payload: bytes | memoryview) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)


def _webp_frame(data: bytes, start: int, end: int) -> bytes:
    """An ANMF chunk with its frame header and only the image data inside it."""
    view = memoryview(data)
    image = b"".join(
        _riff_chunk(kind, view[begin:stop])
        for kind, begin, stop in _riff_chunks(data, start + 16, end)
        if kind in _WEBP_IMAGE_CHUNKS
    )
    return _riff_chunk(b"ANMF", bytes(view[start : start + 16]) + image)


def strip_webp_metadata(data: bytes) -> bytes:
    """The same WebP with only the chunks a viewer needs; the image data is copied untouched.
    Raises `MalformedImage` if the RIFF structure cannot be followed."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MalformedImage("Not a WebP file.")
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        raise MalformedImage("Truncated WebP file.")
    view = memoryview(data)
    chunks = list(_riff_chunks(data, 12, end))
    if not chunks:
        raise MalformedImage("WebP has no image data.")
    first_kind, first_start, first_end = chunks[0]
    if first_kind in (b"VP8 ", b"VP8L"):  # the simple format: one image chunk and no more
        body = _riff_chunk(first_kind, view[first_start:first_end])
    elif first_kind == b"VP8X" and first_end - first_start == 10:
        kept: list[bytes] = []
        icc = b""
        for kind, start, stop in chunks[1:]:
            if kind in _WEBP_IMAGE_CHUNKS or (kind == b"ANIM" and stop - start == 6):
                kept.append(_riff_chunk(kind, view[start:stop]))
            elif kind == b"ANMF" and stop - start >= 16:
                kept.append(_webp_frame(data, start, stop))
            elif kind == b"ICCP" and not icc:
                icc = _valid_icc(data[start:stop]) or b""
        if not kept:
            raise MalformedImage("WebP has no image data.")
        flags = data[first_start] & (_VP8X_ALPHA | _VP8X_ANIMATION) | (_VP8X_ICC if icc else 0)
        header = bytes((flags, 0, 0, 0)) + data[first_start + 4 : first_end]
        icc_chunk = [_riff_chunk(b"ICCP", icc)] if icc else []
        body = b"".join([_riff_chunk(b"VP8X", header), *icc_chunk, *kept])
    else:
        raise MalformedImage("WebP has no image data.")
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


_STRIPPERS = {"JPEG": strip_jpeg_metadata, "PNG": strip_png_metadata, "WEBP": strip_webp_metadata}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write then rename, so a worker killed mid-write never leaves half a file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
