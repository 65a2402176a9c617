"""Post images: streamed uploads with their checks (size, type, pixels, count, who), background
processing into a cleaned original and WebP variants, serving under /media, deletion with the
files, and the task that follows the work. The same tests run in both modes: in-process jobs
(embedded) and a real Celery worker (services)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from PIL import ExifTags, Image
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core import imaging
from app.main import create_app
from app.models import Image as ImageRow
from app.models import ImageStatus
from tests import images, media_files
from tests.conftest import SERVICES
from tests.factories import Account, create_post, register
from tests.problems import assert_problem
from tests.services import CeleryWorker

MIB = 1024 * 1024
OVER_LIMIT_BYTES = 11 * MIB
VARIANTS = {"original", "large", "medium", "thumb"}
WEBP_VARIANTS = ("large", "medium", "thumb")
THUMB = (200, 200)
TRANSPARENT = 0
OPAQUE = 255


# -- helpers -----------------------------------------------------------------------------------


def storage_key(image: dict[str, Any]) -> str:
    """The image's key, read from a variant URL (.../images/<key>/<file>)."""
    return media_files.storage_key(image["variants"]["original"]["url"])


def stored(settings: Settings, image: dict[str, Any]) -> set[str]:
    """The names of the image's processed files, wherever media are stored."""
    return media_files.stored_files(settings, storage_key(image))


async def image_count(db: AsyncSession, post_id: int) -> int:
    await db.rollback()  # a fresh transaction: see what the API committed since
    count = await db.scalar(select(func.count(ImageRow.id)).where(ImageRow.post_id == post_id))
    return count or 0


async def stored_image(db: AsyncSession, image_id: int) -> ImageRow | None:
    await db.rollback()
    return await db.scalar(
        select(ImageRow).where(ImageRow.id == image_id).execution_options(populate_existing=True)
    )


async def fetch(client: httpx.AsyncClient, url: str) -> bytes:
    response = await media_files.get(client, url)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    return response.content


def assert_no_metadata(im: Image.Image) -> None:
    exif = im.getexif()
    assert not dict(exif), f"EXIF left: {dict(exif)}"
    assert not dict(exif.get_ifd(ExifTags.IFD.GPSInfo)), "GPS left"
    assert "exif" not in im.info
    for key in ("xmp", "XML:com.adobe.xmp", "comment", "Comment"):
        assert key not in im.info, key


async def upload_and_process(
    client: httpx.AsyncClient,
    author: Account,
    post_id: int,
    data: bytes,
    **options: Any,
) -> dict[str, Any]:
    response = await images.upload(client, post_id, data, author.headers, **options)
    assert response.status_code == 202, response.text
    return await images.wait_until_processed(client, response.headers["Location"], author.headers)


async def ready_image(
    client: httpx.AsyncClient, author: Account, post_id: int, data: bytes, **options: Any
) -> dict[str, Any]:
    image = await upload_and_process(client, author, post_id, data, **options)
    assert image["status"] == "ready", image
    assert set(image["variants"]) == VARIANTS
    return image


async def check_variants(
    client: httpx.AsyncClient,
    image: dict[str, Any],
    original_format: str,
    sizes: dict[str, tuple[int, int]],
) -> dict[str, Image.Image]:
    """Fetch every variant under /media, check its format, size, byte count and that no metadata
    is left; return them opened."""
    opened = {}
    for name, variant in image["variants"].items():
        assert urlsplit(variant["url"]).path.split("/")[-3] == "images"  # MEDIA_URL or bucket
        data = await fetch(client, variant["url"])
        im = images.open_image(data)
        assert im.format == ("WEBP" if name in WEBP_VARIANTS else original_format), name
        assert (variant["width"], variant["height"]) == sizes[name], name
        assert im.size == sizes[name], name
        assert variant["bytes"] == len(data), name
        assert_no_metadata(im)
        opened[name] = im
    return opened


def colour_at(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = im.convert("RGB").getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


def is_close(colour: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour[:3], expected, strict=True))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def author(client: httpx.AsyncClient) -> Account:
    return await register(client)


@pytest.fixture
async def post(client: httpx.AsyncClient, author: Account) -> dict[str, Any]:
    return await create_post(client, author)


@pytest.fixture
async def held_processing(
    monkeypatch: pytest.MonkeyPatch, celery_worker: CeleryWorker | None
) -> AsyncIterator[Callable[[], None]]:
    """Keep queued images from being processed until the test calls the returned function:
    the Celery worker is stopped (the job waits in the broker), or the in-process job waits."""
    if celery_worker is not None:
        worker = celery_worker
        worker.stop()

        def release() -> None:
            if worker.process is None:
                worker.start()
    else:
        gate = threading.Event()
        process = imaging.process

        def gated(*args: Any) -> Any:
            gate.wait(images.PROCESSING_TIMEOUT_S)
            return process(*args)

        monkeypatch.setattr("app.core.imaging.process", gated)
        release = gate.set
    try:
        yield release
    finally:
        release()


# -- upload and processing ---------------------------------------------------------------------


async def test_upload_answers_202_pending_with_task_and_location(
    client: httpx.AsyncClient,
    db: AsyncSession,
    author: Account,
    post: dict[str, Any],
    held_processing: Callable[[], None],
) -> None:
    response = await images.upload(
        client, post["id"], images.jpeg(), author.headers, alt="A red and blue flag"
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["post_id"] == post["id"]
    assert body["alt"] == "A red and blue flag"
    assert body["format"] == "jpeg"
    assert (body["width"], body["height"]) == (3000, 2000)
    assert body["variants"] == {}
    assert body["task_id"]
    assert response.headers["Location"] == f"/api/posts/{post['id']}/images/{body['id']}"
    row = await stored_image(db, body["id"])
    assert row is not None
    assert row.status == ImageStatus.PENDING
    assert row.alt == "A red and blue flag"
    assert row.task_id == body["task_id"]
    read = await client.get(response.headers["Location"])
    assert read.status_code == 200
    assert read.json()["status"] == "pending"

    held_processing()
    image = await images.wait_until_processed(client, response.headers["Location"])
    assert image["status"] == "ready"
    assert image["alt"] == "A red and blue flag"


@pytest.mark.parametrize(
    ("make", "format_"),
    [
        (images.jpeg, "JPEG"),
        (images.png, "PNG"),
        (images.webp, "WEBP"),
        (images.gif, "GIF"),
    ],
    ids=["jpeg", "png", "webp", "gif"],
)
async def test_each_format_ends_ready_with_webp_variants_and_clean_original(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
    make: Callable[[], bytes],
    format_: str,
) -> None:
    data = make()
    width, height = images.open_image(data).size
    large = (1280, round(height * 1280 / width)) if width > 1280 else (width, height)
    medium = (640, round(height * 640 / width)) if width > 640 else (width, height)

    image = await ready_image(client, author, post["id"], data)

    assert image["format"] == format_.lower()
    assert image["failure_reason"] is None
    sizes = {"original": (width, height), "large": large, "medium": medium, "thumb": THUMB}
    await check_variants(client, image, format_, sizes)
    row = await stored_image(db, image["id"])
    assert row is not None
    assert row.status == ImageStatus.READY
    assert set(row.variants) == VARIANTS
    key = storage_key(image)
    assert row.storage_key == key
    files = media_files.stored_files(settings, key)
    assert files == {f"original.{format_.lower().replace('jpeg', 'jpg')}"} | {
        f"{name}.webp" for name in WEBP_VARIANTS
    }
    # the raw upload waits in private storage only until it is processed
    assert not media_files.upload_stored(settings, key)


async def test_variant_sizes_of_a_3000x2000_photo(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((3000, 2000)))

    sizes = {name: (v["width"], v["height"]) for name, v in image["variants"].items()}
    # each height rounded from the original's proportions: 2000 * 640 / 3000 = 426.67
    assert sizes == {
        "original": (3000, 2000),
        "large": (1280, 853),
        "medium": (640, 427),
        "thumb": (200, 200),
    }


async def test_small_image_is_never_upscaled(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.png((500, 300)))

    sizes = {"original": (500, 300), "large": (500, 300), "medium": (500, 300), "thumb": THUMB}
    await check_variants(client, image, "PNG", sizes)


async def test_medium_only_image_keeps_its_width_for_large(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((1000, 500)))

    sizes = {"original": (1000, 500), "large": (1000, 500), "medium": (640, 320), "thumb": THUMB}
    await check_variants(client, image, "JPEG", sizes)


async def test_thumb_is_a_centre_crop_not_a_squash(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    # red bands on the outer sixths: the centred 2000x2000 square of a 3000x2000 image is blue
    image = await ready_image(client, author, post["id"], images.jpeg((3000, 2000)))

    thumb = images.open_image(await fetch(client, image["variants"]["thumb"]["url"]))
    assert thumb.size == THUMB
    for x in (2, 100, 197):
        assert is_close(colour_at(thumb, (x, 150)), images.BLUE), colour_at(thumb, (x, 150))
    # a squashed whole image would show the red bands at its sides
    large = images.open_image(await fetch(client, image["variants"]["large"]["url"]))
    assert is_close(colour_at(large, (5, 400)), images.RED)


async def test_exif_orientation_is_applied_to_original_and_variants(
    client: httpx.AsyncClient, db: AsyncSession, author: Account, post: dict[str, Any]
) -> None:
    # stored 3000x2000 landscape, EXIF orientation 6: upright it is 2000x3000, red on top
    image = await ready_image(client, author, post["id"], images.rotated_jpeg((3000, 2000)))

    sizes = {
        "original": (2000, 3000),
        "large": (1280, 1920),
        "medium": (640, 960),
        "thumb": THUMB,
    }
    opened = await check_variants(client, image, "JPEG", sizes)
    assert (image["width"], image["height"]) == (2000, 3000)
    for name in ("original", "large", "medium"):
        im = opened[name]
        assert is_close(colour_at(im, (im.width // 2, 5)), images.RED), name
        assert is_close(colour_at(im, (im.width // 2, im.height - 5)), images.BLUE), name
    row = await stored_image(db, image["id"])
    assert row is not None
    assert (row.width, row.height) == (2000, 3000)


async def test_gps_and_exif_are_stripped_from_original_and_variants(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    data = images.jpeg_with_gps((1600, 1200))
    uploaded = images.open_image(data).getexif()
    assert uploaded.get_ifd(ExifTags.IFD.GPSInfo), "the test image must carry GPS"

    image = await ready_image(client, author, post["id"], data)

    for variant in image["variants"].values():
        content = await fetch(client, variant["url"])
        assert b"Exif\x00\x00" not in content
        assert b"InkwellCam" not in content
        assert_no_metadata(images.open_image(content))


async def test_png_text_chunks_and_exif_are_stripped(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    data = images.png((800, 600))
    assert images.open_image(data).info.get("Comment") == "shot at home"

    image = await ready_image(client, author, post["id"], data, filename="p.png")

    original = await fetch(client, image["variants"]["original"]["url"])
    assert b"shot at home" not in original
    assert b"InkwellCam" not in original
    assert_no_metadata(images.open_image(original))


async def test_metadata_anywhere_in_a_jpeg_is_not_served(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    """GPS in APP1 before and after the end of the image, APP2 segments that are not a colour
    profile, comments, XMP, IPTC: none is served; the pixels and the colour profile are."""
    profile = images.icc_profile()
    base = images.jpeg((800, 600))
    trailing_gps = images.jpeg_segment(
        0xE1, b"Exif\x00\x00" + images.exif_bytes(b"GPS-CANARY-tail")
    )
    data = images.jpeg_with(
        base,
        [*images.jpeg_metadata("upload"), *images.jpeg_icc_segments(profile)],
        after_eoi=trailing_gps + images.canary("after-eoi"),
    )

    image = await ready_image(client, author, post["id"], data)

    for variant in image["variants"].values():
        assert images.CANARY not in await fetch(client, variant["url"])
    original = images.open_image(await fetch(client, image["variants"]["original"]["url"]))
    assert original.info["icc_profile"] == profile
    assert original.tobytes() == images.open_image(base).tobytes()


async def test_private_and_text_chunks_of_a_png_are_not_served(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    profile = images.icc_profile()
    base = images.encode(images.banded((800, 600)), "PNG", icc_profile=profile)
    data = images.png_with(
        base, images.png_metadata("head"), images.png_metadata("tail"), images.canary("after")
    )

    image = await ready_image(client, author, post["id"], data, filename="p.png")

    original = await fetch(client, image["variants"]["original"]["url"])
    assert images.CANARY not in original
    assert b"prVt" not in original
    assert images.open_image(original).tobytes() == images.open_image(base).tobytes()
    assert images.open_image(original).info["icc_profile"] == profile


async def test_exif_and_xmp_chunks_of_a_webp_are_not_served(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    base = images.encode(images.banded((800, 600)), "WEBP", quality=80, exif=images.gps_exif())
    data = images.webp_with(base, images.webp_metadata("upload"), images.canary("after"))

    image = await ready_image(client, author, post["id"], data, filename="p.webp")

    original = await fetch(client, image["variants"]["original"]["url"])
    assert images.CANARY not in original
    assert b"InkwellCam" not in original
    assert images.open_image(original).tobytes() == images.open_image(base).tobytes()


async def test_png_transparency_is_kept_in_webp_variants(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.transparent_png((800, 600)))

    sizes = {"original": (800, 600), "large": (800, 600), "medium": (640, 480), "thumb": THUMB}
    opened = await check_variants(client, image, "PNG", sizes)
    for name in ("original", *WEBP_VARIANTS):
        im = opened[name]
        assert im.mode == "RGBA", name
        alpha = im.getchannel("A")
        assert alpha.getpixel((0, 0)) == TRANSPARENT, name
        assert alpha.getpixel((im.width // 2, im.height // 2)) == OPAQUE, name


async def test_cmyk_jpeg_gives_rgb_variants(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    data = images.cmyk_jpeg((1600, 1200))
    assert images.open_image(data).mode == "CMYK"

    image = await ready_image(client, author, post["id"], data)

    sizes = {"original": (1600, 1200), "large": (1280, 960), "medium": (640, 480), "thumb": THUMB}
    opened = await check_variants(client, image, "JPEG", sizes)
    for name in WEBP_VARIANTS:
        assert opened[name].mode == "RGB", name
        im = opened[name]
        centre = colour_at(im, (im.width // 2, im.height // 2))
        assert is_close(centre, images.BLUE, tolerance=60), (name, centre)


async def test_chunked_upload_within_the_limit_is_accepted(
    client: httpx.AsyncClient, db: AsyncSession, author: Account, post: dict[str, Any]
) -> None:
    boundary = "inkwellboundary7d3f"
    head, tail = images.multipart_body(boundary, images.jpeg((800, 600)))
    body = images.ChunkedBody(head, 0, tail)

    response = await client.post(
        f"/api/posts/{post['id']}/images",
        content=body,
        headers={**author.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 202, response.text
    image = await images.wait_until_processed(client, response.headers["Location"])
    assert image["status"] == "ready"
    assert await image_count(db, post["id"]) == 1


async def test_file_of_exactly_the_limit_is_accepted(
    client: httpx.AsyncClient, settings: Settings, author: Account, post: dict[str, Any]
) -> None:
    # a PNG ignores whatever follows its end chunk: pad a small one to the limit exactly
    data = images.tiny_png()
    data += b"\0" * (settings.max_upload_bytes - len(data))

    image = await upload_and_process(client, author, post["id"], data, filename="p.png")

    assert image["status"] == "ready"
    assert image["bytes"] == settings.max_upload_bytes


# -- rejected uploads: nothing is stored -------------------------------------------------------


@pytest.fixture
def nothing_stored(db: AsyncSession, settings: Settings, post: dict[str, Any]) -> Callable[[], Any]:
    """Call before the request; await the result after it to check no row and no file stayed."""
    uploads = images.files_under(settings.uploads_path)
    media = media_files.all_keys(settings)

    async def check() -> None:
        assert await image_count(db, post["id"]) == 0
        assert images.files_under(settings.uploads_path) == uploads
        assert media_files.all_keys(settings) == media

    return check


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"just some text, not a picture\n" * 20, "photo.jpg"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "photo.jpg"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "photo.png"),
    ],
    ids=["text", "pdf", "svg"],
)
async def test_file_that_is_not_an_image_by_its_bytes_is_415(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
    data: bytes,
    filename: str,
) -> None:
    response = await images.upload(
        client, post["id"], data, author.headers, filename=filename, content_type="image/jpeg"
    )

    assert_problem(response, 415, "unsupported_media_type")
    await nothing_stored()


async def test_upload_over_the_limit_with_content_length_is_413(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    data = images.jpeg((64, 64))
    data += b"\0" * (OVER_LIMIT_BYTES - len(data))

    response = await images.upload(client, post["id"], data, author.headers)

    assert_problem(response, 413, "payload_too_large")
    await nothing_stored()


async def test_file_one_byte_over_the_limit_is_413_while_streaming(
    client: httpx.AsyncClient,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    # the Content-Length is within the form's allowance: the file itself must be counted
    data = images.tiny_png()
    data += b"\0" * (settings.max_upload_bytes + 1 - len(data))

    response = await images.upload(client, post["id"], data, author.headers, filename="p.png")

    assert_problem(response, 413, "payload_too_large")
    await nothing_stored()


async def test_chunked_upload_over_the_limit_is_413_without_reading_it_all(
    client: httpx.AsyncClient,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    boundary = "inkwellboundary7d3f"
    head, tail = images.multipart_body(boundary, images.jpeg((64, 64)))
    body = images.ChunkedBody(head, OVER_LIMIT_BYTES, tail)

    response = await client.post(
        f"/api/posts/{post['id']}/images",
        content=body,
        headers={**author.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert_problem(response, 413, "payload_too_large")
    assert body.sent < settings.max_upload_bytes + 2 * body.chunk_size + len(head)
    await nothing_stored()


async def test_ten_thousand_square_png_bomb_is_422(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    data = images.png_bomb((10_000, 10_000))
    assert len(data) < 100_000  # a hundred megapixels in a few kilobytes

    response = await images.upload(client, post["id"], data, author.headers, filename="b.png")

    assert_problem(response, 422, "image_too_large")
    await nothing_stored()


async def test_image_with_a_broken_header_is_422(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * 200

    response = await images.upload(client, post["id"], data, author.headers, filename="x.png")

    assert_problem(response, 422, "invalid_image")
    await nothing_stored()


async def test_form_without_a_file_field_is_422(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    response = await client.post(
        f"/api/posts/{post['id']}/images",
        files={"picture": ("photo.jpg", images.jpeg((64, 64)), "image/jpeg")},
        data={"alt": "no file"},
        headers=author.headers,
    )

    assert_problem(response, 422)
    await nothing_stored()


async def test_body_that_is_not_multipart_is_415(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
) -> None:
    response = await client.post(
        f"/api/posts/{post['id']}/images",
        content=images.jpeg((64, 64)),
        headers={**author.headers, "Content-Type": "image/jpeg"},
    )

    assert_problem(response, 415, "unsupported_media_type")
    await nothing_stored()


async def test_truncated_jpeg_ends_failed_with_a_reason(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
) -> None:
    response = await images.upload(client, post["id"], images.truncated_jpeg(), author.headers)
    assert response.status_code == 202, response.text

    image = await images.wait_until_processed(client, response.headers["Location"])

    assert image["status"] == "failed"
    assert image["failure_reason"]
    assert image["variants"] == {}
    task = await images.wait_for_task(client, image["task_id"], author.headers)
    assert task["state"] == "FAILURE"  # the image failed, and so did its task
    assert task["result"]["status"] == "failed"
    assert task["result"]["reason"] == image["failure_reason"]
    row = await stored_image(db, image["id"])
    assert row is not None
    assert row.status == ImageStatus.FAILED
    assert row.failure_reason
    # no half-written variant is served
    for name in WEBP_VARIANTS:
        assert f"{name}.webp" not in media_files.stored_files(settings, row.storage_key)


async def test_eleventh_image_on_a_post_is_409(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
) -> None:
    locations = []
    for _ in range(settings.max_images_per_post):
        response = await images.upload(
            client, post["id"], images.tiny_png(), author.headers, filename="t.png"
        )
        assert response.status_code == 202, response.text
        locations.append(response.headers["Location"])
    uploads = images.files_under(settings.uploads_path)

    response = await images.upload(
        client, post["id"], images.tiny_png(), author.headers, filename="t.png"
    )

    assert_problem(response, 409, "too_many_images")
    assert await image_count(db, post["id"]) == settings.max_images_per_post
    assert images.files_under(settings.uploads_path) <= uploads
    for location in locations:
        assert (await images.wait_until_processed(client, location))["status"] == "ready"
    # deleting one makes room again
    assert (await client.delete(locations[0], headers=author.headers)).status_code == 204
    response = await images.upload(
        client, post["id"], images.tiny_png(), author.headers, filename="t.png"
    )
    assert response.status_code == 202, response.text
    await images.wait_until_processed(client, response.headers["Location"])


# -- who may do what ---------------------------------------------------------------------------


async def test_anonymous_upload_is_401(
    client: httpx.AsyncClient, post: dict[str, Any], nothing_stored: Callable[[], Any]
) -> None:
    response = await images.upload(client, post["id"], images.jpeg((64, 64)), {})

    assert_problem(response, 401)
    await nothing_stored()


async def test_other_user_cannot_upload_to_a_post(
    client: httpx.AsyncClient, post: dict[str, Any], nothing_stored: Callable[[], Any]
) -> None:
    intruder = await register(client)

    response = await images.upload(client, post["id"], images.jpeg((64, 64)), intruder.headers)

    assert_problem(response, 403)
    await nothing_stored()


async def test_upload_to_a_missing_post_is_404(client: httpx.AsyncClient, author: Account) -> None:
    response = await images.upload(client, 987_654, images.jpeg((64, 64)), author.headers)

    assert_problem(response, 404)


async def test_image_of_a_draft_is_404_to_others(
    client: httpx.AsyncClient, author: Account
) -> None:
    draft = await create_post(client, author, published=False)
    response = await images.upload(client, draft["id"], images.jpeg((64, 64)), author.headers)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    image = await images.wait_until_processed(client, location, author.headers)
    assert image["status"] == "ready"
    other = await register(client)

    assert_problem(await client.get(location), 404)
    assert_problem(await client.get(location, headers=other.headers), 404)
    assert (await client.get(location, headers=author.headers)).status_code == 200


async def test_image_of_another_post_is_404(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((64, 64)))
    other_post = await create_post(client, author)

    response = await client.get(f"/api/posts/{other_post['id']}/images/{image['id']}")

    assert_problem(response, 404)


# -- deletion ----------------------------------------------------------------------------------


async def test_author_deletes_an_image_and_its_files(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((800, 600)))
    assert stored(settings, image)
    location = f"/api/posts/{post['id']}/images/{image['id']}"

    response = await client.delete(location, headers=author.headers)

    assert response.status_code == 204
    assert not stored(settings, image)
    assert await stored_image(db, image["id"]) is None
    assert_problem(await client.get(location), 404)
    assert await media_files.refused(client, image["variants"]["large"]["url"])
    refreshed = await client.get(f"/api/posts/{post['id']}")
    assert refreshed.json()["images"] == []


async def test_other_user_cannot_delete_an_image(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((800, 600)))
    files = stored(settings, image)
    intruder = await register(client)

    response = await client.delete(
        f"/api/posts/{post['id']}/images/{image['id']}", headers=intruder.headers
    )

    assert_problem(response, 403)
    assert stored(settings, image) == files
    assert await stored_image(db, image["id"]) is not None


async def test_deleting_a_post_removes_its_image_files(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
) -> None:
    first = await ready_image(client, author, post["id"], images.jpeg((800, 600)))
    second = await ready_image(client, author, post["id"], images.tiny_png(), filename="t.png")
    assert all(stored(settings, image) for image in (first, second))

    response = await client.delete(f"/api/posts/{post['id']}", headers=author.headers)

    assert response.status_code == 204
    assert not any(stored(settings, image) for image in (first, second))
    assert await image_count(db, post["id"]) == 0
    assert await media_files.refused(client, first["variants"]["original"]["url"])


async def test_deleting_a_user_removes_their_images_files(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
) -> None:
    draft = await create_post(client, author, published=False)
    mine = [
        await ready_image(client, author, post["id"], images.jpeg((800, 600))),
        await ready_image(client, author, draft["id"], images.tiny_png(), filename="t.png"),
    ]
    other = await register(client)
    other_post = await create_post(client, other)
    theirs = await ready_image(client, other, other_post["id"], images.jpeg((800, 600)))

    response = await client.delete("/api/users/me", headers=author.headers)

    assert response.status_code == 204
    for image in mine:
        assert not stored(settings, image)
        assert await stored_image(db, image["id"]) is None
    assert stored(settings, theirs)
    assert await stored_image(db, theirs["id"]) is not None


# -- tasks and the post's view -----------------------------------------------------------------


async def test_task_is_shown_only_to_the_uploader(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((800, 600)))
    task_id = image["task_id"]

    task = await images.wait_for_task(client, task_id, author.headers)

    assert task["id"] == task_id
    assert task["state"] == "SUCCESS"
    assert task["result"]["image_id"] == image["id"]
    assert task["result"]["status"] == "ready"
    other = await register(client)
    assert_problem(await client.get(f"/api/tasks/{task_id}", headers=other.headers), 404)
    assert_problem(await client.get(f"/api/tasks/{task_id}"), 401)


async def test_unknown_task_is_404(client: httpx.AsyncClient, author: Account) -> None:
    response = await client.get(
        "/api/tasks/00000000-0000-0000-0000-000000000000", headers=author.headers
    )

    assert_problem(response, 404)


async def test_post_shows_its_image_pending_then_ready(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    held_processing: Callable[[], None],
) -> None:
    before = await client.get(f"/api/posts/{post['id']}")
    assert before.json()["images"] == []
    response = await images.upload(
        client, post["id"], images.jpeg((1600, 1200)), author.headers, alt="Flag"
    )
    assert response.status_code == 202, response.text
    image_id = response.json()["id"]

    # read (and cache) the post while the image is still pending
    pending = await client.get(f"/api/posts/{post['id']}")
    assert [(i["id"], i["status"], i["alt"]) for i in pending.json()["images"]] == [
        (image_id, "pending", "Flag")
    ]
    held_processing()
    await images.wait_until_processed(client, response.headers["Location"])

    after = await client.get(f"/api/posts/{post['id']}")
    assert after.status_code == 200
    [shown] = after.json()["images"]
    assert shown["id"] == image_id
    assert shown["status"] == "ready"
    assert set(shown["variants"]) == VARIANTS
    assert after.headers["ETag"] != pending.headers["ETag"]


async def test_media_are_served_with_their_content_type(
    client: httpx.AsyncClient, author: Account, post: dict[str, Any]
) -> None:
    image = await ready_image(client, author, post["id"], images.jpeg((800, 600)))

    large = await media_files.get(client, image["variants"]["large"]["url"])
    original = await media_files.get(client, image["variants"]["original"]["url"])

    assert large.headers["content-type"] == "image/webp"
    assert original.headers["content-type"] == "image/jpeg"


async def test_raw_uploads_are_never_served(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
    held_processing: Callable[[], None],
) -> None:
    response = await images.upload(client, post["id"], images.jpeg((64, 64)), author.headers)
    assert response.status_code == 202, response.text
    row = await stored_image(db, response.json()["id"])
    assert row is not None
    assert media_files.upload_stored(settings, row.storage_key)
    raw = f"{row.storage_key}.upload"

    for path in (f"/media/../uploads/{raw}", f"/media/uploads/{raw}",
                 f"/media/images/{row.storage_key}/original.jpg"):  # fmt: skip
        assert (await client.get(path)).status_code == 404, path
    if settings.s3_bucket:  # nor by the bucket, to anyone
        base = media_files.base_url(settings)
        assert await media_files.refused(client, f"{base}/uploads/{raw}")
    held_processing()
    await images.wait_until_processed(client, response.headers["Location"])


@pytest.mark.skipif(SERVICES, reason="in-process jobs are the embedded mode's")
async def test_images_left_pending_by_a_dead_process_are_processed_at_the_next_start(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    db: AsyncSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    author = await register(client)
    post = await create_post(client, author)

    async def lost(*_: object, **__: object) -> None:  # the process died before the job ran
        return None

    monkeypatch.setattr(app.state.backends.runner, "send", lost)
    response = await images.upload(client, post["id"], images.jpeg(), author.headers)
    assert response.status_code == 202, response.text
    image_id = response.json()["id"]
    assert (await db.get(ImageRow, image_id)).status == ImageStatus.PENDING  # type: ignore[union-attr]

    restarted = create_app(settings, configure_logs=False)
    async with LifespanManager(restarted):
        await restarted.state.backends.runner.drain()

    await db.rollback()
    stored = await db.get(ImageRow, image_id, populate_existing=True)
    assert stored is not None
    assert stored.status == ImageStatus.READY
    assert set(stored.variants) == {"original", "large", "medium", "thumb"}
