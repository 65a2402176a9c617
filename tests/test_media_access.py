"""Who may fetch an image's files served by the API (local media, `LocalMedia`): a published
post's at public, immutable URLs; a draft's only at the short-lived signed URLs its author and
administrators are given, and again once the post is unpublished, through every cache. Both
modes: in-process jobs and memory cache (embedded), a Celery worker and Redis (services). When
the services run keeps media in a bucket, this module runs an API of its own with local media
(in-process jobs, the run's PostgreSQL and Redis); the bucket's side of the same rules is in
tests/test_s3.py."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.media import LocalMedia, MediaStorage
from app.main import create_app
from tests import images
from tests.conftest import S3_MEDIA, running_app, settings_like
from tests.factories import Account, create_post, make_admin, register
from tests.problems import assert_problem

PUBLIC_CACHE = "public, max-age=31536000, immutable"
PRIVATE_CACHE = re.compile(r"private, max-age=(\d+)")
CONTENT_TYPES = {"original": "image/jpeg", "large": "image/webp", "medium": "image/webp"}


# -- helpers -----------------------------------------------------------------------------------


def unsigned(url: str) -> str:
    return url.split("?", 1)[0]


def signature_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **query: str) -> str:
    return f"{unsigned(url)}?{urlencode(query)}"


def key_and_filename(url: str) -> tuple[str, str]:
    *_, key, filename = urlsplit(url).path.split("/")
    return key, filename


def variant_urls(post: dict[str, Any]) -> dict[str, str]:
    [image] = post["images"]
    return {name: variant["url"] for name, variant in image["variants"].items()}


def assert_not_found(response: httpx.Response) -> None:
    assert_problem(response, 404, "media_not_found")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def assert_private(response: httpx.Response, settings: Settings) -> int:
    """A file served to the holder of a signed URL: never to be kept by a shared cache."""
    assert response.status_code == 200, response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    cache_control = response.headers["cache-control"]
    match = PRIVATE_CACHE.fullmatch(cache_control)
    assert match, cache_control
    seconds = int(match[1])
    assert 0 < seconds <= settings.media_signed_url_seconds + settings.cache_ttl_seconds + 60
    return seconds


def assert_public(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == PUBLIC_CACHE
    assert response.headers["x-content-type-options"] == "nosniff"


async def post_with_image(
    client: httpx.AsyncClient, author: Account, *, published: bool
) -> dict[str, Any]:
    """A post with one processed JPEG, as its author reads it."""
    post = await create_post(client, author, published=published)
    response = await images.upload(client, post["id"], images.jpeg((800, 600)), author.headers)
    assert response.status_code == 202, response.text
    image = await images.wait_until_processed(client, response.headers["Location"], author.headers)
    assert image["status"] == "ready", image
    return await read_post(client, post["id"], author)


async def read_post(
    client: httpx.AsyncClient, post_id: int, viewer: Account | None = None
) -> dict[str, Any]:
    response = await client.get(f"/api/posts/{post_id}", headers=viewer.headers if viewer else None)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def set_published(
    client: httpx.AsyncClient, post_id: int, author: Account, published: bool
) -> dict[str, Any]:
    response = await client.patch(
        f"/api/posts/{post_id}", json={"published": published}, headers=author.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def media_of(app: FastAPI) -> LocalMedia:
    media: LocalMedia = app.state.backends.media
    return media


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The run's settings, or with media on local disk when the run's are in a bucket."""
    if not S3_MEDIA:
        return settings
    return settings_like(
        settings,
        s3_bucket=None,
        celery_broker_url=None,
        data_dir=tmp_path_factory.mktemp("api-served-media"),
    )


@pytest.fixture(scope="module")
async def app(app: FastAPI, media_settings: Settings) -> AsyncIterator[FastAPI]:
    """The run's app, or one of this module's own serving local media (see the docstring)."""
    if not S3_MEDIA:
        yield app
        return
    application = create_app(media_settings, configure_logs=False)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def author(client: httpx.AsyncClient) -> Account:
    return await register(client)


@pytest.fixture
async def draft(client: httpx.AsyncClient, author: Account) -> dict[str, Any]:
    return await post_with_image(client, author, published=False)


# -- drafts ------------------------------------------------------------------------------------


async def test_a_drafts_files_are_404_without_a_signature(
    client: httpx.AsyncClient, author: Account, draft: dict[str, Any]
) -> None:
    stranger = await register(client)

    for url in variant_urls(draft).values():
        assert signature_of(url).keys() == {"expires", "sig"}, url
        for headers in (None, stranger.headers, author.headers):
            assert_not_found(await client.get(unsigned(url), headers=headers))
        head = await client.head(unsigned(url))
        assert head.status_code == 404
        assert head.headers["cache-control"] == "no-store"


async def test_the_authors_signed_urls_serve_the_files_privately(
    client: httpx.AsyncClient, media_settings: Settings, draft: dict[str, Any]
) -> None:
    urls = variant_urls(draft)

    for name, url in urls.items():
        response = await client.get(url)  # the URL is the credential: no token needed
        assert_private(response, media_settings)
        if name in CONTENT_TYPES:
            assert response.headers["content-type"] == CONTENT_TYPES[name]
        assert images.open_image(response.content).size == (
            draft["images"][0]["variants"][name]["width"],
            draft["images"][0]["variants"][name]["height"],
        )
    head = await client.head(urls["large"])
    assert_private(head, media_settings)
    assert head.content == b""


async def test_the_image_route_gives_the_author_signed_urls_too(
    client: httpx.AsyncClient, media_settings: Settings, author: Account, draft: dict[str, Any]
) -> None:
    [image] = draft["images"]

    response = await client.get(
        f"/api/posts/{draft['id']}/images/{image['id']}", headers=author.headers
    )

    assert response.status_code == 200, response.text
    large = response.json()["variants"]["large"]["url"]
    assert signature_of(large).keys() == {"expires", "sig"}
    assert_private(await client.get(large), media_settings)


async def test_an_admin_gets_working_signed_urls_for_a_draft(
    client: httpx.AsyncClient, db: AsyncSession, media_settings: Settings, draft: dict[str, Any]
) -> None:
    admin = await make_admin(db, await register(client))

    seen = await read_post(client, draft["id"], admin)

    for url in variant_urls(seen).values():
        assert signature_of(url).keys() == {"expires", "sig"}
        assert_private(await client.get(url), media_settings)


async def test_expired_or_tampered_signatures_are_404(
    client: httpx.AsyncClient, app: FastAPI, draft: dict[str, Any]
) -> None:
    url = variant_urls(draft)["large"]
    key, filename = key_and_filename(url)
    good = signature_of(url)
    expired = media_of(app).signed_url(key, filename, now=time.time() - 100_000)
    flipped = good["sig"][:-2] + ("AA" if good["sig"][-2:] != "AA" else "BB")

    for bad in (
        expired,
        with_query(url, expires=good["expires"], sig=flipped),
        with_query(url, expires=str(int(good["expires"]) + 60), sig=good["sig"]),
        with_query(url, expires=good["expires"]),
        with_query(url, sig=good["sig"]),
        with_query(url, expires="", sig=""),
        with_query(url, expires="9" * 40, sig=good["sig"]),
        with_query(url, expires="1e99", sig=good["sig"]),
        with_query(url, expires="\u00b2", sig="\u00e9" * 43),  # digits and letters not ASCII
        variant_urls(draft)["thumb"].replace("thumb.webp", "large.webp"),  # another file's
    ):
        assert_not_found(await client.get(bad))
    assert (await client.get(url)).status_code == 200


async def test_another_user_sees_no_draft_and_cannot_reuse_a_signature_on_another_key(
    client: httpx.AsyncClient, media_settings: Settings, author: Account, draft: dict[str, Any]
) -> None:
    stranger = await register(client)
    [image] = draft["images"]
    assert_problem(await client.get(f"/api/posts/{draft['id']}", headers=stranger.headers), 404)
    assert_problem(
        await client.get(
            f"/api/posts/{draft['id']}/images/{image['id']}", headers=stranger.headers
        ),
        404,
    )
    theirs = variant_urls(await post_with_image(client, stranger, published=False))
    assert_private(await client.get(theirs["large"]), media_settings)  # their own works

    victim_key, _ = key_and_filename(variant_urls(draft)["large"])
    own_key, _ = key_and_filename(theirs["large"])
    forged = theirs["large"].replace(own_key, victim_key)

    assert_not_found(await client.get(forged, headers=stranger.headers))


async def test_signed_urls_outlast_the_cached_answer_that_carries_them(
    client: httpx.AsyncClient, media_settings: Settings, author: Account, draft: dict[str, Any]
) -> None:
    again = await read_post(client, draft["id"], author)  # a cached answer, in the cache's TTL

    assert variant_urls(again) == variant_urls(draft)
    cached_for = media_settings.cache_ttl_seconds if media_settings.cache_enabled else 0
    for url in variant_urls(again).values():
        expires = int(signature_of(url)["expires"])
        assert expires >= time.time() + cached_for + media_settings.media_signed_url_seconds - 5


async def test_a_signed_url_works_on_every_api_process_of_the_deployment(
    client: httpx.AsyncClient, media_settings: Settings, draft: dict[str, Any]
) -> None:
    url = variant_urls(draft)["medium"]
    other_key = "k" * 32 + "-another-deployment"

    async with running_app(settings_like(media_settings)) as (_, same):
        assert_private(await same.get(url), media_settings)
    async with running_app(settings_like(media_settings, media_signing_key=other_key)) as (
        _,
        other,
    ):
        assert_not_found(await other.get(url))


def test_a_short_media_signing_key_is_refused(media_settings: Settings) -> None:
    with pytest.raises(ValueError, match="MEDIA_SIGNING_KEY"):
        settings_like(media_settings, media_signing_key="short")


def test_with_asymmetric_tokens_the_key_comes_from_the_private_key_when_first_needed(
    tmp_path: Path,
) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    private_file, public_file = tmp_path / "jwt.key", tmp_path / "jwt.pub"
    values = {
        "data_dir": tmp_path,
        "jwt_algorithm": "EdDSA",
        "jwt_private_key_file": private_file,
        "jwt_public_key_file": public_file,
    }
    # A worker may have no private key: it never signs, so it must still start.
    worker_media = LocalMedia(Settings.model_validate(values))
    assert worker_media.url("0" * 32, "large.webp") == f"/media/images/{'0' * 32}/large.webp"
    private_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    media = LocalMedia(Settings.model_validate(values))

    url = media.signed_url("0" * 32, "large.webp")

    query = signature_of(url)
    assert media.seconds_left("0" * 32, "large.webp", query["expires"], query["sig"])
    assert not media.seconds_left("1" * 32, "large.webp", query["expires"], query["sig"])


async def test_local_media_keeps_an_image_s_files_behind_the_storage_interface(
    tmp_path: Path,
) -> None:
    storage: MediaStorage = LocalMedia(Settings.model_validate({"data_dir": tmp_path}))
    key, received = "a" * 32, tmp_path / "received.part"
    received.write_bytes(b"raw bytes")
    with pytest.raises(FileNotFoundError):
        async with storage.original(key):
            pass  # no upload yet

    await storage.save_upload(key, received)
    assert not received.exists()  # taken over, not copied
    async with storage.original(key) as original:
        assert original.read_bytes() == b"raw bytes"
    async with storage.variants(key) as out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "large.webp").write_bytes(b"webp")
    await storage.discard_upload(key)
    with pytest.raises(FileNotFoundError):
        async with storage.original(key):
            pass

    assert await storage.exists(key, "large.webp")
    assert not await storage.exists(key, "thumb.webp")
    assert not await storage.exists(key, "../large.webp")  # not a name it ever serves
    found = await storage.find(key, "large.webp")
    assert found is not None
    assert found.stat.st_size == 4
    assert await storage.find(key, "medium.webp") is None
    assert await storage.find("not-a-key", "large.webp") is None

    await storage.delete(key, "b" * 32)  # a key with no files is no error
    assert not await storage.exists(key, "large.webp")


# -- publishing and unpublishing -----------------------------------------------------------------


async def test_publishing_makes_the_public_urls_work_with_immutable_caching(
    client: httpx.AsyncClient, author: Account, draft: dict[str, Any]
) -> None:
    public = {name: unsigned(url) for name, url in variant_urls(draft).items()}
    for _ in range(2):  # the second answer comes from what the first looked up
        assert_not_found(await client.get(public["large"]))

    changed = await set_published(client, draft["id"], author, published=True)

    assert variant_urls(changed) == public
    assert variant_urls(await read_post(client, draft["id"])) == public
    [image] = changed["images"]
    read = await client.get(f"/api/posts/{draft['id']}/images/{image['id']}")
    assert {name: v["url"] for name, v in read.json()["variants"].items()} == public
    listed = (await client.get("/api/posts")).json()["items"]
    assert [variant_urls(p) for p in listed if p["id"] == draft["id"]] == [public]
    for name, url in public.items():
        response = await client.get(url)
        assert_public(response)
        if name in CONTENT_TYPES:
            assert response.headers["content-type"] == CONTENT_TYPES[name]


async def test_unpublishing_makes_the_files_private_again_through_every_cache(
    client: httpx.AsyncClient, media_settings: Settings, author: Account
) -> None:
    post = await post_with_image(client, author, published=True)
    public = variant_urls(post)
    assert all("?" not in url for url in public.values())
    for _ in range(2):  # served, and remembered as published
        assert_public(await client.get(public["large"]))
    await read_post(client, post["id"])  # the anonymous answer cached too

    await set_published(client, post["id"], author, published=False)

    for url in public.values():
        assert_not_found(await client.get(url))
    assert_problem(await client.get(f"/api/posts/{post['id']}"), 404)
    listed = (await client.get("/api/posts")).json()["items"]
    assert post["id"] not in [p["id"] for p in listed]
    signed = variant_urls(await read_post(client, post["id"], author))
    assert {name: unsigned(url) for name, url in signed.items()} == public
    assert_private(await client.get(signed["large"]), media_settings)

    await set_published(client, post["id"], author, published=True)

    assert_public(await client.get(public["large"]))


async def test_an_authors_list_carries_signed_urls_for_drafts_only(
    client: httpx.AsyncClient, media_settings: Settings, author: Account, draft: dict[str, Any]
) -> None:
    published = await post_with_image(client, author, published=True)

    response = await client.get("/api/posts", headers=author.headers)

    assert response.status_code == 200, response.text
    by_id = {p["id"]: variant_urls(p) for p in response.json()["items"]}
    assert all("?sig=" not in u and "&sig=" not in u for u in by_id[published["id"]].values())
    assert all("&sig=" in url for url in by_id[draft["id"]].values())
    assert_private(await client.get(by_id[draft["id"]]["thumb"]), media_settings)
    assert_public(await client.get(by_id[published["id"]]["thumb"]))


# -- names -------------------------------------------------------------------------------------


async def test_nothing_but_the_workers_files_is_served(
    client: httpx.AsyncClient, media_settings: Settings, author: Account
) -> None:
    post = await post_with_image(client, author, published=True)
    large = variant_urls(post)["large"]
    key, _ = key_and_filename(large)
    (media_settings.media_path / "images" / key / "notes.txt").write_text("not an image")

    assert (await client.get("/media", follow_redirects=True)).status_code == 404
    for path in (
        "/media/",
        "/media/images",
        "/media/images/",
        f"/media/images/{key}",
        f"/media/images/{key}/",
        f"/media/images/{key}/notes.txt",
        f"/media/images/{key}/LARGE.webp",
        f"/media/images/{key.upper()}/large.webp",
        f"/media/images/{key}/large.webp/",
        "/media/images/%2e%2e/%2e%2e",
        f"/media/images/%2e%2e/{key}",
        f"/media/images/{key}/..%2F..%2F..%2Fjwt-secret",
        f"/media/images/{key}/%2e%2e",
        f"/media/images/{'0' * 32}/large.webp",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert_public(await client.get(large))
