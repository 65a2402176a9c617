"""Metadata stripping of originals: only what a viewer needs is kept (an allow-list), whatever
else a file carries and wherever it is. Every piece of metadata injected here carries a canary
that must not be found in the output; the output must show the same pixels with the same colour
profile. Crafted and randomly mutated files must be stripped or refused (`ImageRejected`), never
crash or hang, and `process` re-encodes what the strippers cannot follow."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from app.core import imaging
from tests import images
from tests.images import CANARY, canary

pytestmark = pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")

FUZZ_ITERATIONS = 500
STRIPPERS: dict[str, Callable[[bytes], bytes]] = {
    "JPEG": imaging.strip_jpeg_metadata,
    "PNG": imaging.strip_png_metadata,
    "WEBP": imaging.strip_webp_metadata,
}
SIZE = (96, 64)
ICC = images.icc_profile()
BIG_ICC = images.icc_profile(150_000)  # three APP2 segments in a JPEG


def small(mode: str = "RGB") -> Image.Image:
    return images.banded(SIZE, mode)


JPEG_BASES = {
    "baseline": images.encode(small(), "JPEG", quality=90),
    "progressive": images.encode(
        small(), "JPEG", quality=90, progressive=True, restart_marker_blocks=2
    ),
    "restart-markers": images.encode(small(), "JPEG", quality=90, restart_marker_blocks=1),
    "cmyk": images.encode(small("CMYK"), "JPEG", quality=90),
    "grey-subsampled": images.encode(small("L"), "JPEG", quality=75, subsampling=2),
}
PNG_BASES = {
    "rgb": images.encode(small(), "PNG", icc_profile=ICC),
    "palette-transparent": images.encode(small().convert("P"), "PNG", transparency=1),
    "rgba": images.encode(small("RGBA"), "PNG"),
    "animated": images.encode(
        small(), "PNG", save_all=True, append_images=[small("L").convert("RGB")], duration=50
    ),
}
WEBP_BASES = {
    "lossy": images.encode(small(), "WEBP", quality=80, icc_profile=ICC),
    "lossless-alpha": images.encode(small("RGBA"), "WEBP", lossless=True, icc_profile=ICC),
    "animated": images.encode(
        small(),
        "WEBP",
        save_all=True,
        append_images=[small("L").convert("RGB")],
        duration=50,
        lossless=True,
        icc_profile=ICC,
    ),
}


def assert_same_image(output: bytes, expected: bytes, icc: bool = True) -> None:
    """Same format, size, mode, pixels (of every frame) and (unless `icc` is false) profile."""
    got, want = images.open_image(output), images.open_image(expected)
    assert (got.format, got.size, got.mode) == (want.format, want.size, want.mode)
    assert getattr(got, "n_frames", 1) == getattr(want, "n_frames", 1)
    for frame in range(getattr(want, "n_frames", 1)):
        got.seek(frame)
        want.seek(frame)
        assert got.tobytes() == want.tobytes(), f"frame {frame} differs"
    if icc:
        assert got.info.get("icc_profile") == want.info.get("icc_profile")


def adobe_transform(base: str) -> int:
    return 0 if base == "cmyk" else 1


def assert_clean(output: bytes) -> None:
    assert CANARY not in output, output[max(0, output.find(CANARY) - 40) :][:120]


# -- JPEG --------------------------------------------------------------------------------------


def trailing_jpeg_data(name: str) -> bytes:
    """What follows EOI in the wild: a trailing APP1 with GPS, a second image (MPF, gain maps),
    plain bytes."""
    second = images.encode(small(), "JPEG", comment=canary(f"{name}-second-image"))
    app1 = images.jpeg_segment(0xE1, b"Exif\x00\x00" + images.exif_bytes(canary(f"{name}-gps")))
    return app1 + second + canary(f"{name}-bytes")


@pytest.mark.parametrize("base", JPEG_BASES)
def test_jpeg_keeps_only_what_a_viewer_needs(base: str) -> None:
    clean = images.jpeg_with(JPEG_BASES[base], images.jpeg_icc_segments(ICC))
    data = images.jpeg_with(
        JPEG_BASES[base],
        [
            *images.jpeg_metadata("head", adobe_transform(base)),
            *images.jpeg_icc_segments(ICC, canary("icc-tail")),
            images.jpeg_segment(0xF0, canary("jpg0")),
            images.jpeg_segment(0xC8, canary("jpg")),
        ],
        after_eoi=trailing_jpeg_data("tail"),
    )

    stripped = imaging.strip_jpeg_metadata(data)

    assert_clean(stripped)
    assert_same_image(stripped, clean)
    assert images.open_image(stripped).info["icc_profile"] == ICC
    assert imaging.strip_jpeg_metadata(stripped) == stripped


def test_jpeg_keeps_a_profile_of_several_segments_and_the_jfif_density() -> None:
    base = images.encode(small(), "JPEG", icc_profile=BIG_ICC, dpi=(300, 300))
    assert base.count(b"ICC_PROFILE\x00") == 3

    stripped = imaging.strip_jpeg_metadata(base)

    assert_same_image(stripped, base)
    assert images.open_image(stripped).info["icc_profile"] == BIG_ICC
    assert images.open_image(stripped).info["dpi"] == (300, 300)


@pytest.mark.parametrize(
    "pieces",
    [[1, 2], [1, 3, 2], [2], [1, 1]],
    ids=["one-of-three-missing", "out-of-order-is-kept", "first-missing", "duplicated"],
)
def test_jpeg_profile_pieces_must_fit_together(pieces: list[int]) -> None:
    segments = images.jpeg_icc_segments(BIG_ICC)
    data = images.jpeg_with(JPEG_BASES["baseline"], [segments[n - 1] for n in pieces])

    stripped = imaging.strip_jpeg_metadata(data)

    kept = images.open_image(stripped).info.get("icc_profile")
    assert kept == (BIG_ICC if sorted(pieces) == [1, 2, 3] else None)
    assert_same_image(stripped, JPEG_BASES["baseline"]) if kept is None else None


def test_jpeg_profile_that_is_not_a_profile_is_dropped() -> None:
    fake = canary("fake-icc").ljust(200, b"!")
    data = images.jpeg_with(JPEG_BASES["baseline"], images.jpeg_icc_segments(fake))

    stripped = imaging.strip_jpeg_metadata(data)

    assert_clean(stripped)
    assert_same_image(stripped, JPEG_BASES["baseline"])


def test_jpeg_fill_bytes_before_markers_are_followed() -> None:
    base = JPEG_BASES["restart-markers"]
    filled = base[:2] + b"\xff\xff" + base[2:-2] + b"\xff\xff\xff\xd9"
    data = images.jpeg_with(filled, images.jpeg_metadata("fill"))

    stripped = imaging.strip_jpeg_metadata(data)

    assert_clean(stripped)
    assert_same_image(stripped, base)


def _jpeg_cut(data: bytes, marker: int, keep: int) -> bytes:
    """The file cut `keep` bytes after the start of the first segment with `marker`."""
    at = data.index(bytes((0xFF, marker)))
    return data[: at + keep]


BASE = JPEG_BASES["baseline"]
DQT_AT = BASE.index(b"\xff\xdb")
SOS_AT = BASE.index(b"\xff\xda")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xd8", id="only-soi"),
        pytest.param(b"\xff\xd8\xff\xd9", id="no-scan"),
        pytest.param(BASE[:-2], id="no-eoi"),
        pytest.param(BASE[: len(BASE) // 2], id="cut-in-the-scan"),
        pytest.param(_jpeg_cut(BASE, 0xDB, 3), id="cut-in-a-length"),
        pytest.param(_jpeg_cut(BASE, 0xDB, 20), id="length-past-the-end"),
        pytest.param(BASE[:2] + b"\xff\xe1\x00\x00" + BASE[2:], id="zero-length"),
        pytest.param(BASE[:2] + b"\xff\xe1\x00\x01" + BASE[2:], id="length-one"),
        pytest.param(BASE[:2] + b"\xff\xe1\xff\xf0" + canary("x") + BASE[2:], id="app1-past-end"),
        pytest.param(BASE[:2] + b"junk" + BASE[2:], id="bytes-between-segments"),
        pytest.param(BASE[:2] + BASE, id="two-soi"),
        pytest.param(BASE[:2] + b"\xff\x00" + BASE[2:], id="marker-zero"),
        pytest.param(
            BASE[:DQT_AT] + b"\xff\xdb\x00\x05\x00\x01\x02" + BASE[DQT_AT:],
            id="dqt-of-the-wrong-size",
        ),
        pytest.param(
            BASE[:DQT_AT] + b"\xff\xc4\x00\x04\xff\xe1" + BASE[DQT_AT:],
            id="dht-swallowing-a-segment",
        ),
        pytest.param(BASE[:SOS_AT] + b"\xff\xda\x00\x02" + BASE[SOS_AT:], id="empty-scan-header"),
        pytest.param(BASE[: SOS_AT + 4] + b"\x09" + BASE[SOS_AT + 5 :], id="scan-of-9-components"),
        pytest.param(b"\xff\xd8" + b"\xff" * 1000, id="only-fill-bytes"),
        pytest.param(b"\x89PNG\r\n\x1a\n", id="not-a-jpeg"),
    ],
)
def test_jpeg_that_cannot_be_followed_is_refused(data: bytes) -> None:
    with pytest.raises(imaging.MalformedImage):
        imaging.strip_jpeg_metadata(data)


# -- PNG ---------------------------------------------------------------------------------------


def png_profile_chunk(name: bytes, compressed: bytes) -> bytes:
    return images.png_chunk(b"iCCP", name + b"\x00\x00" + compressed)


@pytest.mark.parametrize("base", PNG_BASES)
def test_png_keeps_only_what_a_viewer_needs(base: str) -> None:
    data = images.png_with(
        PNG_BASES[base],
        images.png_metadata("head"),
        images.png_metadata("tail"),
        after_iend=images.png_chunk(b"tEXt", b"Comment\x00" + canary("after-iend")) + CANARY,
    )

    stripped = imaging.strip_png_metadata(data)

    assert_clean(stripped)
    for kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME", b"prVt", b"caBX", b"vpAg"):
        assert kind not in stripped
    assert_same_image(stripped, PNG_BASES[base])
    assert imaging.strip_png_metadata(stripped) == stripped


def test_png_profile_keeps_its_content_but_not_its_name() -> None:
    base = images.encode(small(), "PNG")
    data = images.png_with(base, [png_profile_chunk(canary("icc-name"), zlib.compress(ICC))])

    stripped = imaging.strip_png_metadata(data)

    assert_clean(stripped)
    assert images.open_image(stripped).info["icc_profile"] == ICC


@pytest.mark.parametrize(
    "compressed",
    [
        zlib.compress(canary("not-a-profile") * 20),
        b"\x78\x9c" + canary("not-zlib"),
        zlib.compress(ICC)[:-10],
    ],
    ids=["not-a-profile", "not-zlib", "cut-short"],
)
def test_png_profile_that_is_not_one_is_dropped(compressed: bytes) -> None:
    base = images.encode(small(), "PNG")
    data = images.png_with(base, [png_profile_chunk(b"ICC profile", compressed)])

    stripped = imaging.strip_png_metadata(data)

    assert_clean(stripped)
    assert b"iCCP" not in stripped
    assert_same_image(stripped, base)


@pytest.mark.parametrize(
    "compressed",
    [zlib.compress(ICC + canary("in-the-profile")), zlib.compress(ICC) + canary("after-zlib")],
    ids=["longer-than-its-header-says", "bytes-after-the-stream"],
)
def test_png_profile_with_bytes_after_it_is_cut(compressed: bytes) -> None:
    base = images.encode(small(), "PNG")
    chunk = png_profile_chunk(b"ICC profile", compressed)
    stripped = imaging.strip_png_metadata(images.png_with(base, [chunk]))

    assert_clean(stripped)
    assert images.open_image(stripped).info["icc_profile"] == ICC


PNG = PNG_BASES["rgb"]
CHUNKS = images.png_chunks(PNG)


def _with_chunk(at: int, chunk: bytes) -> bytes:
    return PNG[:8] + b"".join(CHUNKS[:at]) + chunk + b"".join(CHUNKS[at:])


def _bad_crc(chunk: bytes) -> bytes:
    return chunk[:-4] + bytes(b ^ 0xFF for b in chunk[-4:])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(PNG[:8], id="only-the-signature"),
        pytest.param(PNG[:-12], id="no-iend"),
        pytest.param(PNG[: len(PNG) // 2], id="cut-in-the-data"),
        pytest.param(PNG[:8] + b"".join(CHUNKS[1:]), id="no-ihdr"),
        pytest.param(_with_chunk(1, b"\xff\xff\xff\xfftEXt" + CANARY), id="length-past-the-end"),
        pytest.param(_with_chunk(1, b"\x80\x00\x00\x00tEXt" + CANARY), id="length-over-2-31"),
        pytest.param(_with_chunk(1, images.png_chunk(b"pHYs", canary("phys"))), id="phys-size"),
        pytest.param(_with_chunk(1, images.png_chunk(b"gAMA", b"")), id="empty-gama"),
        pytest.param(_with_chunk(1, images.png_chunk(b"PLTE", b"\x00" * 4)), id="plte-size"),
        pytest.param(
            PNG[:8] + b"".join(CHUNKS[:-2]) + _bad_crc(CHUNKS[-2]) + CHUNKS[-1], id="bad-idat-crc"
        ),
        pytest.param(b"\xff\xd8\xff\xd9", id="not-a-png"),
    ],
)
def test_png_that_cannot_be_followed_is_refused(data: bytes) -> None:
    with pytest.raises(imaging.MalformedImage):
        imaging.strip_png_metadata(data)


def test_png_idat_stretched_over_a_text_chunk_is_refused() -> None:
    """A data chunk whose length covers the metadata after it fails its checksum."""
    idat = next(c for c in CHUNKS if c[4:8] == b"IDAT")
    text = images.png_chunk(b"tEXt", b"Comment\x00" + canary("swallowed"))
    stretched = struct.pack(">I", len(idat) - 12 + len(text)) + idat[4:-4] + text + idat[-4:]
    data = PNG.replace(idat, stretched)

    with pytest.raises(imaging.MalformedImage):
        imaging.strip_png_metadata(data)


# -- WebP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", WEBP_BASES)
def test_webp_keeps_only_what_a_viewer_needs(base: str) -> None:
    chunks = images.webp_chunks(images.webp_with(WEBP_BASES[base], images.webp_metadata("head")))
    data = images.webp_from([*chunks, *images.webp_metadata("tail")], after=canary("after-riff"))

    stripped = imaging.strip_webp_metadata(data)

    assert_clean(stripped)
    assert b"EXIF" not in stripped
    assert b"XMP " not in stripped
    assert stripped[20] & 0x0C == 0, "the EXIF and XMP flags are cleared"
    assert_same_image(stripped, WEBP_BASES[base])
    assert images.open_image(stripped).info["icc_profile"] == ICC
    assert imaging.strip_webp_metadata(stripped) == stripped


def test_webp_frames_keep_only_their_image_data() -> None:
    base = WEBP_BASES["animated"]
    chunks = images.webp_chunks(base)
    frames = [
        c[:8 + 16] + images.riff_chunk(b"CNRY", canary("in-a-frame")) + c[8 + 16 :]
        if c[:4] == b"ANMF" else c
        for c in chunks
    ]  # fmt: skip
    frames = [
        c[:4] + struct.pack("<I", len(c) - 8) + c[8:] if c[:4] == b"ANMF" else c for c in frames
    ]

    stripped = imaging.strip_webp_metadata(images.webp_from(frames))

    assert_clean(stripped)
    assert_same_image(stripped, base)


def test_simple_webp_keeps_its_one_image_chunk() -> None:
    base = images.encode(small(), "WEBP", quality=80)
    assert base[12:16] == b"VP8 "
    data = images.webp_from([*images.webp_chunks(base), *images.webp_metadata("simple")], CANARY)

    stripped = imaging.strip_webp_metadata(data)

    assert stripped == base


def test_webp_profile_longer_than_its_header_says_is_cut() -> None:
    base = WEBP_BASES["lossy"]
    chunks = [
        images.riff_chunk(b"ICCP", ICC + canary("in-the-profile")) if c[:4] == b"ICCP" else c
        for c in images.webp_chunks(base)
    ]

    stripped = imaging.strip_webp_metadata(images.webp_from(chunks))

    assert_clean(stripped)
    assert images.open_image(stripped).info["icc_profile"] == ICC


WEBP = WEBP_BASES["lossy"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(WEBP[:12], id="no-chunks"),
        pytest.param(WEBP[:-4], id="riff-size-past-the-end"),
        pytest.param(images.webp_from([b"VP8X\x0a\x00\x00\x00" + bytes(10)]), id="no-image"),
        pytest.param(images.webp_from([images.riff_chunk(b"EXIF", CANARY)]), id="only-exif"),
        pytest.param(images.webp_from([b"VP8 \xff\xff\x00\x00" + CANARY]), id="chunk-past-end"),
        pytest.param(images.webp_from([b"VP8 \x10"]), id="cut-in-a-chunk-header"),
        pytest.param(b"RIFF\x04\x00\x00\x00WEBX", id="not-a-webp"),
    ],
)
def test_webp_that_cannot_be_followed_is_refused(data: bytes) -> None:
    with pytest.raises(imaging.MalformedImage):
        imaging.strip_webp_metadata(data)


# -- process: the original that is served ------------------------------------------------------


def processed_original(tmp_path: Path, data: bytes, format_: str) -> bytes:
    source = tmp_path / "upload"
    source.write_bytes(data)
    imaging.process(source, format_, tmp_path / "out")
    return (tmp_path / "out" / f"original.{imaging.FORMATS[format_]}").read_bytes()


def test_process_serves_a_jpeg_without_its_metadata(tmp_path: Path) -> None:
    clean = images.jpeg_with(BASE, images.jpeg_icc_segments(BIG_ICC))
    data = images.jpeg_with(
        BASE,
        [*images.jpeg_metadata("head"), *images.jpeg_icc_segments(BIG_ICC)],
        after_eoi=trailing_jpeg_data("tail"),
    )

    original = processed_original(tmp_path, data, "JPEG")

    assert_clean(original)
    assert_same_image(original, clean)
    for variant in ("large", "medium", "thumb"):
        assert_clean((tmp_path / "out" / f"{variant}.webp").read_bytes())


def test_process_serves_a_png_without_its_metadata(tmp_path: Path) -> None:
    data = images.png_with(PNG, images.png_metadata("head"), images.png_metadata("tail"), CANARY)

    original = processed_original(tmp_path, data, "PNG")

    assert_clean(original)
    assert_same_image(original, PNG)


def test_process_serves_a_webp_without_its_metadata_and_not_re_encoded(tmp_path: Path) -> None:
    data = images.webp_with(WEBP, images.webp_metadata("head"), CANARY)

    original = processed_original(tmp_path, data, "WEBP")

    assert_clean(original)
    assert_same_image(original, WEBP)
    assert original == imaging.strip_webp_metadata(WEBP)


def test_process_re_encodes_a_gif_without_comments_or_extensions(tmp_path: Path) -> None:
    data = images.gif_with_metadata("gif")
    assert images.open_image(data).info["comment"].startswith(CANARY)

    original = processed_original(tmp_path, data, "GIF")

    assert_clean(original)
    assert images.open_image(original).size == images.open_image(data).size


def test_a_png_the_stripper_refuses_is_re_encoded_not_served(tmp_path: Path) -> None:
    """Pillow reads past a wrong IDAT checksum; the original is then made from the pixels."""
    idat_at = next(i for i, c in enumerate(CHUNKS) if c[4:8] == b"IDAT")
    broken = PNG[:8] + b"".join(_bad_crc(c) if i == idat_at else c for i, c in enumerate(CHUNKS))
    data = images.png_with(broken, images.png_metadata("head"), after_iend=CANARY)
    with pytest.raises(imaging.MalformedImage):
        imaging.strip_png_metadata(data)

    original = processed_original(tmp_path, data, "PNG")

    assert_clean(original)
    assert_same_image(original, PNG)


def test_a_jpeg_the_stripper_refuses_is_re_encoded_not_served(tmp_path: Path) -> None:
    """Pillow skips bytes between segments; the original is then made from the pixels."""
    junk = BASE[:DQT_AT] + b"\x00\x00" + BASE[DQT_AT:]
    data = images.jpeg_with(junk, images.jpeg_metadata("head"), CANARY)
    with pytest.raises(imaging.MalformedImage):
        imaging.strip_jpeg_metadata(data)

    original = processed_original(tmp_path, data, "JPEG")

    assert_clean(original)
    assert images.open_image(original).size == SIZE


# -- fuzzing -----------------------------------------------------------------------------------


def jpeg_parts(data: bytes) -> list[bytes]:
    """SOI, each segment before the first scan, the scans, and EOI: the places between them are
    where segments can go."""
    parts, i = [data[:2]], 2
    while data[i + 1] != 0xDA:
        (length,) = struct.unpack_from(">H", data, i + 2)
        parts.append(data[i : i + 2 + length])
        i += 2 + length
    return [*parts, data[i:-2], data[-2:]]


def with_random_metadata(
    rng: random.Random, format_: str, base_name: str, base: bytes
) -> tuple[bytes, list[bytes], list[bytes]]:
    """`base` with pieces of metadata at random places of its structure (and after its end),
    the list of those pieces, and those placed before the first JPEG scan."""
    name = f"r{rng.randrange(10**9)}"
    if format_ == "JPEG":
        catalogue = images.jpeg_metadata(name, adobe_transform(base_name))
        catalogue += images.jpeg_icc_segments(ICC, canary(name))
        parts = jpeg_parts(base)
        slots = [*range(1, len(parts) - 2), len(parts) - 1, len(parts)]
    elif format_ == "PNG":
        catalogue = images.png_metadata(name)
        parts = [base[:8], *images.png_chunks(base)]
        idat = [i for i, part in enumerate(parts) if part[4:8] == b"IDAT"]
        slots = [*range(2, idat[0] + 1), idat[-1] + 1, len(parts)]
    else:
        catalogue = images.webp_metadata(name)
        parts = [b"", *images.webp_chunks(base)]
        slots = list(range(2, len(parts) + 1))
    chosen = [rng.choice(catalogue) for _ in range(rng.randint(1, 6))]
    inserted: dict[int, list[bytes]] = {slot: [] for slot in slots}
    in_header = []
    for piece in chosen:
        fill = b"\xff" * rng.choice((0, 0, 1, 3)) if format_ == "JPEG" else b""
        slot = rng.choice(slots)
        inserted[slot].append(fill + piece)
        if slot <= len(parts) - 2:
            in_header.append(piece)
    tail = b"".join(inserted.pop(len(parts), []))
    if rng.random() < 0.3:
        extra = canary(f"{name}-trailing")
        tail += extra
        chosen.append(extra)
    body = b"".join(
        b"".join(inserted.get(i, [])) + part for i, part in enumerate(parts)
    )  # fmt: skip
    if format_ == "WEBP":
        chunks = images.webp_chunks(b"RIFF\0\0\0\0WEBP" + body)
        return images.webp_from(chunks, tail), chosen, in_header
    return body + tail, chosen, in_header


BASES = [("JPEG", JPEG_BASES), ("PNG", PNG_BASES), ("WEBP", WEBP_BASES)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("format_", "bases"), BASES, ids=[f for f, _ in BASES])
def test_random_metadata_anywhere_is_dropped(format_: str, bases: dict[str, bytes]) -> None:
    rng = random.Random(f"metadata-anywhere-{format_}")
    strip = STRIPPERS[format_]
    for _ in range(FUZZ_ITERATIONS):
        base_name = rng.choice(sorted(bases))
        base = bases[base_name]
        data, _, in_header = with_random_metadata(rng, format_, base_name, base)
        stripped = strip(data)
        assert_clean(stripped)
        assert_same_image(stripped, base, icc=format_ != "JPEG")
        if format_ == "JPEG":  # a profile is read before the first scan, if it is one
            profiles = sum(piece[4:16] == b"ICC_PROFILE\x00" for piece in in_header)
            expected = {0: images.open_image(base).info.get("icc_profile"), 1: ICC}
            assert images.open_image(stripped).info.get("icc_profile") == expected.get(profiles)


def mutated(rng: random.Random, data: bytes, intact: list[bytes]) -> bytes:
    """`data` with a few random changes (a byte changed, bytes inserted or removed, the end cut
    off), none of them inside the `intact` pieces."""
    for _ in range(rng.randint(1, 4)):
        spans = [
            (start, start + len(piece)) for piece in intact if (start := data.find(piece)) >= 0
        ]
        at = rng.randrange(len(data))
        if any(start <= at < end for start, end in spans):
            continue
        how = rng.choice(("byte", "byte", "ff", "zero", "insert", "delete", "cut"))
        if how == "byte":
            data = data[:at] + bytes((rng.randrange(256),)) + data[at + 1 :]
        elif how in ("ff", "zero"):
            data = data[:at] + (b"\xff" if how == "ff" else b"\x00") + data[at + 1 :]
        elif how == "insert":
            data = data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]
        elif how == "delete":
            data = data[:at] + data[at + rng.randint(1, 8) :]
        else:
            data = data[:at]
        if not data:
            break
    return data


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("format_", "bases"), BASES, ids=[f for f, _ in BASES])
def test_mutated_files_are_stripped_or_refused(format_: str, bases: dict[str, bytes]) -> None:
    """Whatever a mutation breaks, the stripper either refuses the file with its own error or
    returns a file with none of the metadata and nothing left for a second pass to drop."""
    rng = random.Random(f"mutated-{format_}")
    strip = STRIPPERS[format_]
    refused = 0
    for _ in range(FUZZ_ITERATIONS * 2):
        base_name = rng.choice(sorted(bases))
        data, pieces, _ = with_random_metadata(rng, format_, base_name, bases[base_name])
        data = mutated(rng, data, pieces)
        try:
            stripped = strip(data)
        except imaging.ImageRejected:
            refused += 1
            continue
        assert_clean(stripped)
        assert strip(stripped) == stripped
    assert 0 < refused < FUZZ_ITERATIONS * 2, "the mutations must break some files, not all"


@pytest.mark.timeout(120)
def test_process_of_mutated_files_is_ready_or_rejected(tmp_path: Path) -> None:
    """The whole pipeline: a mutated upload gives a clean original or `ImageRejected`."""
    rng = random.Random("process-mutated")
    for n in range(150):
        format_, bases = rng.choice(BASES)
        base_name = rng.choice(sorted(bases))
        data, pieces, _ = with_random_metadata(rng, format_, base_name, bases[base_name])
        data = mutated(rng, data, pieces)
        out = tmp_path / str(n)
        source = tmp_path / f"{n}.upload"
        source.write_bytes(data)
        try:
            imaging.process(source, format_, out)
        except imaging.ImageRejected:
            continue
        for path in out.iterdir():
            assert_clean(path.read_bytes())


def test_stripped_output_is_written_whole(tmp_path: Path) -> None:
    """The cleaned JPEG decodes completely (no bytes lost at the scan's end)."""
    noisy = images.noisy_jpeg((320, 240))
    stripped = imaging.strip_jpeg_metadata(images.jpeg_with(noisy, images.jpeg_metadata("noisy")))
    with Image.open(io.BytesIO(stripped)) as im:
        im.load()
    assert_same_image(stripped, noisy)
