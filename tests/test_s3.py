"""Media in an S3 bucket, on a real S3 API (moto's server on loopback, behind a proxy the tests
cut): the storage itself (streamed and multipart uploads, the worker's temporary files, object
headers, presigned URLs, deletion), and the API on it, as API hosts with disks of their own
share nothing but the bucket: uploads through one host served through another, deletion, drafts'
presigned URLs, a large upload, and a bucket that goes away (503 for uploads, post JSON still
served, deletions recorded and retried, jobs retried). Runs in both modes: with in-process jobs
(embedded) and with the run's Celery worker (services, where the whole run's media are in the
bucket)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import select, update

from app.config import Settings
from app.core.faults import Interrupted, is_transient
from app.core.media import StorageUnavailable
from app.core.s3 import PUBLIC_CACHE, TEMP_PREFIX, S3Media
from app.core.storage import build_media
from app.models import Image as ImageRow
from app.models import ImageStatus, MediaDeletion
from app.services import images as image_service
from tests import media_files
from tests.conftest import SERVICES, TEST_BUCKET, running_app, settings_like
from tests.factories import Account, create_post, register
from tests.images import jpeg, wait_until_processed
from tests.problems import assert_problem
from tests.s3_server import S3Server
from tests.services import CeleryWorker

MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part S3 takes
VARIANTS = {"original", "large", "medium", "thumb"}


def temporaries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*")}


@pytest.fixture
def s3_settings(
    settings: Settings, s3_server: S3Server, tmp_path: Path, celery_worker: CeleryWorker | None
) -> Settings:
    """Settings of one more host on the bucket: a disk of its own, parts of 5 MiB. In services
    mode its jobs go to the run's worker (a process with a disk of its own too)."""
    return settings_like(
        settings,
        **s3_server.settings(TEST_BUCKET),
        media_root=tmp_path / "host-media",
        data_dir=tmp_path / "host-data",
        s3_multipart_bytes=PART,
        media_deletion_retry_seconds=0.2,
    )


@pytest.fixture
async def storage(s3_settings: Settings) -> AsyncIterator[S3Media]:
    media = build_media(s3_settings)
    assert isinstance(media, S3Media)
    yield media
    await media.close()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the storage ---------------------------------------------------------------------------------


async def test_uploads_stream_to_the_bucket_in_parts_past_one_part(
    storage: S3Media, s3_server: S3Server, tmp_path: Path
) -> None:
    small, large = os.urandom(1000), os.urandom(PART + MIB)
    await storage.save_upload("a" * 32, write(tmp_path / "small", small))
    await storage.save_upload("b" * 32, write(tmp_path / "large", large))

    assert not (tmp_path / "small").exists()
    assert not (tmp_path / "large").exists()  # the received file is gone once stored
    s3 = s3_server.client()
    stored = s3.get_object(Bucket=TEST_BUCKET, Key=f"uploads/{'b' * 32}.upload")
    assert stored["Body"].read() == large
    assert stored["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    assert s3.list_multipart_uploads(Bucket=TEST_BUCKET).get("Uploads", []) == []
    head = s3_server.head(TEST_BUCKET, f"uploads/{'a' * 32}.upload")
    assert "-" not in head["ETag"]  # one request


async def test_the_worker_gets_a_temporary_original_removed_whatever_happens(
    storage: S3Media, tmp_path: Path
) -> None:
    key = "c" * 32
    data = os.urandom(3000)
    await storage.save_upload(key, write(tmp_path / "up", data))
    before = temporaries()

    async with storage.original(key) as path:
        assert path.read_bytes() == data
    assert not path.exists()
    with pytest.raises(RuntimeError):
        async with storage.original(key) as path:
            raise RuntimeError("a step failed")
    assert not path.exists()
    assert temporaries() == before
    with pytest.raises(FileNotFoundError):
        async with storage.original("d" * 32):
            pass
    assert temporaries() == before


async def test_variants_are_stored_with_their_type_and_an_immutable_cache_control(
    storage: S3Media, s3_server: S3Server
) -> None:
    key = "e" * 32
    written: list[Path] = []

    async def failing() -> None:
        async with storage.variants(key) as out:
            written.append(write(out / "large.webp", b"RIFF....WEBP"))
            raise RuntimeError("processing failed")

    with pytest.raises(RuntimeError):
        await failing()
    assert not written[0].exists()
    assert s3_server.keys(TEST_BUCKET, f"images/{key}/") == set()  # nothing half-written

    async with storage.variants(key) as out:
        write(out / "large.webp", b"RIFF....WEBP")
        write(out / "original.jpg", b"\xff\xd8\xff jpeg")
        write(out / ".large.webp.tmp", b"a temporary name")
    assert not out.exists()

    assert s3_server.keys(TEST_BUCKET, f"images/{key}/") == {
        f"images/{key}/large.webp",
        f"images/{key}/original.jpg",
    }
    for name, type_ in (("large.webp", "image/webp"), ("original.jpg", "image/jpeg")):
        head = s3_server.head(TEST_BUCKET, f"images/{key}/{name}")
        assert head["ContentType"] == type_
        assert head["CacheControl"] == PUBLIC_CACHE
    assert await storage.exists(key, "large.webp")
    assert not await storage.exists(key, "thumb.webp")
    assert await storage.find(key, "large.webp") is None  # the API serves no file itself


async def test_delete_removes_every_object_of_the_keys(
    storage: S3Media, s3_server: S3Server, tmp_path: Path
) -> None:
    keys = ["1" * 32, "2" * 32, "3" * 32]
    for key in keys:
        await storage.save_upload(key, write(tmp_path / key, b"raw"))
        async with storage.variants(key) as out:
            write(out / "thumb.webp", b"RIFF")
    await storage.delete(keys[0], keys[1], "4" * 32)

    assert not s3_server.keys(TEST_BUCKET, f"images/{keys[0]}")
    assert not s3_server.keys(TEST_BUCKET, f"uploads/{keys[1]}")
    assert s3_server.keys(TEST_BUCKET, f"images/{keys[2]}")  # another image's: kept


async def test_public_urls_are_the_cdn_or_the_bucket_and_drafts_get_presigned_ones(
    s3_settings: Settings, storage: S3Media, s3_server: S3Server
) -> None:
    key = "5" * 32
    async with storage.variants(key) as out:
        write(out / "medium.webp", b"RIFF medium")
    assert storage.url(key, "medium.webp") == (
        f"{s3_server.endpoint_url}/{TEST_BUCKET}/images/{key}/medium.webp"
    )
    cdn = S3Media(s3_settings.model_copy(update={"media_public_url": "https://cdn.example/m/"}))
    assert cdn.url(key, "medium.webp") == f"https://cdn.example/m/images/{key}/medium.webp"

    signed = storage.signed_url(key, "medium.webp")
    query = parse_qs(urlsplit(signed).query)
    assert "X-Amz-Signature" in query
    cached_for = s3_settings.cache_ttl_seconds if s3_settings.cache_enabled else 0
    assert int(query["X-Amz-Expires"][0]) == s3_settings.media_signed_url_seconds + cached_for
    async with httpx.AsyncClient() as browser:
        response = await browser.get(signed)
    assert response.status_code == 200
    assert response.content == b"RIFF medium"
    assert response.headers["cache-control"].startswith("private")


async def test_an_unreachable_bucket_is_a_passing_fault(
    storage: S3Media, s3_server: S3Server, tmp_path: Path
) -> None:
    s3_server.cut()
    try:
        with pytest.raises(StorageUnavailable) as raised:
            await storage.save_upload("6" * 32, write(tmp_path / "up", b"raw"))
        assert is_transient(raised.value)
        with pytest.raises(StorageUnavailable):
            await storage.delete("6" * 32)
        with pytest.raises(StorageUnavailable):
            async with storage.original("6" * 32):
                pass
    finally:
        s3_server.restore()
    assert not (tmp_path / "up").exists()
    assert not s3_server.keys(TEST_BUCKET, f"uploads/{'6' * 32}")


# --- the API on the bucket: hosts with disks of their own ---------------------------------------


@pytest.fixture
async def host1(s3_settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(s3_settings) as running:
        yield running


@pytest.fixture
async def host2(
    s3_settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    other = s3_settings.model_copy(
        update={"media_root": tmp_path / "host2-media", "data_dir": tmp_path / "host2-data"}
    )
    async with running_app(other) as running:
        yield running


async def upload(
    client: httpx.AsyncClient, post: dict[str, Any], account: Account, data: bytes
) -> httpx.Response:
    return await client.post(
        f"/api/posts/{post['id']}/images",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        headers=account.headers,
    )


def local_files(settings: Settings) -> list[Path]:
    roots = [settings.media_path, settings.uploads_path]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


async def test_an_upload_on_one_host_is_processed_and_served_through_another(
    host1: tuple[FastAPI, httpx.AsyncClient],
    host2: tuple[FastAPI, httpx.AsyncClient],
    s3_settings: Settings,
    s3_server: S3Server,
) -> None:
    (_, api1), (app2, api2) = host1, host2
    alice = await register(api1)
    post = await create_post(api1, alice, published=True)

    response = await upload(api1, post, alice, jpeg((1600, 1200)))
    assert response.status_code == 202, response.text
    image = await wait_until_processed(api2, response.headers["location"], alice.headers)

    assert image["status"] == "ready", image
    assert set(image["variants"]) == VARIANTS
    for name, variant in image["variants"].items():
        assert variant["url"].startswith(f"{s3_server.endpoint_url}/{TEST_BUCKET}/images/")
        served = await media_files.get(api2, variant["url"])
        assert served.status_code == 200, variant["url"]
        assert len(served.content) == variant["bytes"]
        assert served.headers["cache-control"] == PUBLIC_CACHE
        expected = "image/jpeg" if name == "original" else "image/webp"
        assert served.headers["content-type"] == expected
    read = await api2.get(f"/api/posts/{post['id']}")
    assert read.json()["images"][0]["variants"] == image["variants"]
    # Nothing on either host's disk: the bucket holds it all.
    settings2: Settings = app2.state.settings
    assert local_files(s3_settings) == []
    assert local_files(settings2) == []
    key = image["variants"]["original"]["url"].rsplit("/", 2)[-2]
    assert not s3_server.keys(TEST_BUCKET, f"uploads/{key}")  # the raw upload discarded

    deleted = await api2.delete(
        f"/api/posts/{post['id']}/images/{image['id']}", headers=alice.headers
    )
    assert deleted.status_code == 204
    assert not s3_server.keys(TEST_BUCKET, f"images/{key}/")
    gone = await media_files.get(api2, image["variants"]["large"]["url"])
    assert gone.status_code in (403, 404)


async def test_deleting_a_post_deletes_its_objects(
    host1: tuple[FastAPI, httpx.AsyncClient], s3_server: S3Server
) -> None:
    _, api = host1
    alice = await register(api)
    post = await create_post(api, alice, published=True)
    response = await upload(api, post, alice, jpeg((800, 600)))
    image = await wait_until_processed(api, response.headers["location"], alice.headers)
    key = image["variants"]["original"]["url"].rsplit("/", 2)[-2]
    assert s3_server.keys(TEST_BUCKET, f"images/{key}/")

    assert (await api.delete(f"/api/posts/{post['id']}", headers=alice.headers)).status_code == 204
    assert not s3_server.keys(TEST_BUCKET, f"images/{key}/")


async def test_drafts_media_are_presigned_for_their_author_only(
    host1: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, api = host1
    alice, bob = await register(api), await register(api)
    draft = await create_post(api, alice, published=False)
    response = await upload(api, draft, alice, jpeg((800, 600)))
    image = await wait_until_processed(api, response.headers["location"], alice.headers)

    for variant in image["variants"].values():
        assert "X-Amz-Signature" in parse_qs(urlsplit(variant["url"]).query)
        served = await media_files.get(api, variant["url"])
        assert served.status_code == 200
        assert served.headers["cache-control"].startswith("private")
        unsigned = variant["url"].split("?", 1)[0]
        assert (await media_files.get(api, unsigned)).status_code == 403  # the bucket refuses
    assert (await api.get(f"/api/posts/{draft['id']}", headers=bob.headers)).status_code == 404
    assert (await api.get(f"/api/posts/{draft['id']}")).status_code == 404

    published = await api.patch(
        f"/api/posts/{draft['id']}", json={"published": True}, headers=alice.headers
    )
    assert published.status_code == 200, published.text
    public = published.json()["images"][0]["variants"]["large"]["url"]
    assert urlsplit(public).query == ""
    assert (await media_files.get(api, public)).status_code == 200

    unpublished = await api.patch(
        f"/api/posts/{draft['id']}", json={"published": False}, headers=alice.headers
    )
    assert unpublished.status_code == 200
    assert (await media_files.get(api, public)).status_code == 403


async def test_a_large_upload_goes_up_in_parts_and_is_processed(
    host1: tuple[FastAPI, httpx.AsyncClient], s3_settings: Settings
) -> None:
    _, api = host1
    alice = await register(api)
    post = await create_post(api, alice, published=True)
    noise = Image.frombytes("RGB", (1600, 1200), os.urandom(1600 * 1200 * 3))
    data = _png(noise)
    assert PART < len(data) <= s3_settings.max_upload_bytes

    response = await api.post(
        f"/api/posts/{post['id']}/images",
        files={"file": ("noise.png", data, "image/png")},
        headers=alice.headers,
    )
    assert response.status_code == 202, response.text
    image = await wait_until_processed(api, response.headers["location"], alice.headers)
    assert image["status"] == "ready", image
    assert image["variants"]["original"]["width"] == 1600


def _png(im: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    im.save(out, "PNG", compress_level=0)
    return out.getvalue()


async def test_an_unreachable_bucket_refuses_uploads_but_posts_are_still_read(
    host1: tuple[FastAPI, httpx.AsyncClient], s3_server: S3Server
) -> None:
    app, api = host1
    alice = await register(api)
    post = await create_post(api, alice, published=True)
    first = await upload(api, post, alice, jpeg((800, 600)))
    image = await wait_until_processed(api, first.headers["location"], alice.headers)
    key = image["variants"]["original"]["url"].rsplit("/", 2)[-2]
    before = s3_server.keys(TEST_BUCKET)

    s3_server.cut()
    try:
        refused = await upload(api, post, alice, jpeg((800, 600)))
        assert_problem(refused, 503, "media_unavailable")
        assert "retry-after" in refused.headers
        read = await api.get(f"/api/posts/{post['id']}")
        assert read.status_code == 200
        assert len(read.json()["images"]) == 1
        # A deletion while the bucket is away: the image goes, its objects are remembered.
        deleted = await api.delete(
            f"/api/posts/{post['id']}/images/{image['id']}", headers=alice.headers
        )
        assert deleted.status_code == 204
        async with app.state.session_factory() as db:
            rows = list(await db.scalars(select(MediaDeletion)))
            assert [row.storage_key for row in rows] == [key]
            assert await db.scalar(select(ImageRow).where(ImageRow.post_id == post["id"])) is None
    finally:
        s3_server.restore()
    assert s3_server.keys(TEST_BUCKET) - before == set()  # nothing half-written

    # Due now (the outage may have pushed it back): the API's loop takes it on its next round.
    async with app.state.session_factory() as db:
        await db.execute(update(MediaDeletion).values(next_attempt_at=_past()))
        await db.commit()
    await until(lambda: not s3_server.keys(TEST_BUCKET, f"images/{key}/"))

    async def recorded() -> list[MediaDeletion]:
        async with app.state.session_factory() as db:
            return list(await db.scalars(select(MediaDeletion)))

    deadline = asyncio.get_running_loop().time() + 30
    while await recorded():
        assert asyncio.get_running_loop().time() < deadline, "the deletion stayed recorded"
        await asyncio.sleep(0.05)


async def until(condition: Any, within_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.05)


def _past() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(seconds=1)


async def test_an_image_job_retries_while_the_bucket_is_away(
    host1: tuple[FastAPI, httpx.AsyncClient], s3_server: S3Server, s3_settings: Settings
) -> None:
    """The job meets an unreachable bucket: a passing fault (Interrupted, its attempt not
    counted), then done once the bucket is back."""
    app, api = host1
    alice = await register(api)
    post = await create_post(api, alice, published=True)
    response = await upload(api, post, alice, jpeg((800, 600)))
    image = await wait_until_processed(api, response.headers["location"], alice.headers)
    key = image["variants"]["original"]["url"].rsplit("/", 2)[-2]
    await until(lambda: not s3_server.keys(TEST_BUCKET, f"uploads/{key}"))  # discarded
    async with app.state.session_factory() as db:
        row = await db.get(ImageRow, image["id"])
        assert row is not None
        # As if just uploaded: pending, its raw upload back in the bucket.
        row.status, row.variants = ImageStatus.PENDING, {}
        task_id = row.task_id
        await db.commit()
    s3_server.client().put_object(
        Bucket=TEST_BUCKET, Key=f"uploads/{row.storage_key}.upload", Body=jpeg((800, 600))
    )
    media = build_media(s3_settings)

    async def run(**kwargs: Any) -> dict[str, Any]:
        return await image_service.process(
            app.state.session_factory,
            settings=s3_settings,
            media=media,
            cache=app.state.stores.cache,
            task_id=task_id,
            image_id=image["id"],
            redelivered=True,
            **kwargs,
        )

    s3_server.cut()
    try:
        with pytest.raises(Interrupted) as raised:
            await run()
        assert is_transient(raised.value)
    finally:
        s3_server.restore()
    result = await run(reuse_attempt=raised.value.attempt)
    await media.close()
    assert result["status"] == "ready", result
    async with app.state.session_factory() as db:
        stored = await db.get(ImageRow, image["id"])
        assert stored is not None
        assert stored.attempts == raised.value.attempt  # the fault did not count


@pytest.mark.skipif(not SERVICES, reason="the run's Celery worker (services mode)")
async def test_the_worker_waits_out_a_bucket_outage(
    client: httpx.AsyncClient, app: FastAPI, s3_server: S3Server, celery_worker: Any
) -> None:
    alice = await register(client)
    post = await create_post(client, alice, published=True)
    await asyncio.to_thread(celery_worker.kill)
    response = await upload(client, post, alice, jpeg((800, 600)))
    assert response.status_code == 202
    s3_server.cut()
    try:
        await asyncio.to_thread(celery_worker.start)
        await asyncio.sleep(3)  # the job meets the outage and is retried later
        pending = await client.get(response.headers["location"], headers=alice.headers)
        assert pending.json()["status"] == "pending"
    finally:
        s3_server.restore()
    image = await wait_until_processed(
        client, response.headers["location"], alice.headers, within_s=90
    )
    assert image["status"] == "ready", image
