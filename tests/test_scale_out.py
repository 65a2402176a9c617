"""Scaled out: two API processes (uvicorn) and two Celery workers against one PostgreSQL
database, one Redis, one broker and one media directory, as a deployment with replicas runs.

Uploads through API 1 are processed by either worker and read through API 2; a session revoked
on one API is rejected by the other; 500 concurrent likes spread over both APIs count exactly
500. The processes publish to and consume from a queue of their own, so the run's other worker
never takes these jobs: every image is provably handled by one of the two workers started here.
Services mode only."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.security import Passwords
from app.models import Follow, Post, PostLike, User
from tests.conftest import S3_MEDIA, SERVICES, settings_env
from tests.factories import PASSWORD, Account, bearer, create_post, login, register
from tests.images import jpeg, png, wait_until_processed
from tests.live_server import LiveServer, start_server
from tests.services import CeleryWorker

pytestmark = pytest.mark.skipif(not SERVICES, reason="needs PostgreSQL and Redis (services mode)")

REQUEST_TIMEOUT_S = 30.0
PROCESSING_TIMEOUT_S = 60.0
LOG_TIMEOUT_S = 10.0
IMAGES = 8
FANS = 500
DUPLICATES = 100
LOGINS_IN_FLIGHT = 32
VARIANTS = {"original", "large", "medium", "thumb"}
LOG_TAIL_CHARS = 3000


def tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return text[-LOG_TAIL_CHARS:]


@dataclass
class Cluster:
    api1: LiveServer
    api2: LiveServer
    workers: dict[str, CeleryWorker]
    queue: str
    directory: Path  # logs, and each process's own disk with media in a bucket

    def logs(self) -> str:
        """The end of every process's log, for an assertion message."""
        parts = [f"--- API {api.name} ---\n{api.output()}" for api in (self.api1, self.api2)]
        parts += [f"--- worker {n} ---\n{tail(w.log_path)}" for n, w in self.workers.items()]
        return "\n".join(parts)

    def handlers(self, task_id: str) -> list[str]:
        """The workers whose log shows the task done."""
        line = f"[{task_id}] succeeded".encode()
        return [name for name, w in self.workers.items() if line in w.log_path.read_bytes()]


def own_disk(logs: Path, name: str) -> dict[str, str]:
    """With media in a bucket, each process gets a disk of its own (DATA_DIR, MEDIA_ROOT), as
    on separate hosts: a file one of them wrote locally is seen by no other."""
    if not S3_MEDIA:
        return {}
    return {"DATA_DIR": str(logs / f"{name}-data"), "MEDIA_ROOT": str(logs / f"{name}-media")}


def local_media_files(logs: Path) -> list[Path]:
    return [p for p in logs.glob("*-media/**/*") if p.is_file()]


@pytest.fixture(scope="module")
def cluster(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert settings.redis_url, "services mode sets REDIS_URL"
    assert settings.celery_broker_url, "services mode sets CELERY_BROKER_URL"
    assert settings.jwt_secret_key is not None, "one JWT secret for every process"
    logs = tmp_path_factory.mktemp("scale-out")
    queue = f"inkwell-scale-{uuid.uuid4().hex[:8]}"
    # The run's settings (database, Redis, broker, DATA_DIR and so the media directory, JWT
    # secret, cheap Argon2, SMTP) for all four processes, on a queue of their own. No rate
    # limits: the 500 logins all come from 127.0.0.1. Small pools: the database serves others.
    env = settings_env(settings) | {
        "CELERY_QUEUE": queue,
        "RATE_LIMITS_ENABLED": "false",
        "DB_POOL_SIZE": "10",
        "DB_MAX_OVERFLOW": "5",
    }
    # One job at a time each (prefetch 1 x concurrency 1): jobs spread over both workers.
    workers = {
        n: CeleryWorker(env | own_disk(logs, n), logs / f"{n}.log", concurrency=1)
        for n in ("w1", "w2")
    }
    apis: list[LiveServer] = []
    try:
        apis = [
            start_server(n, env | own_disk(logs, n), logs / f"{n}.log") for n in ("api1", "api2")
        ]
        with ThreadPoolExecutor(len(workers)) as pool:
            started = [pool.submit(w.start) for w in workers.values()]
            for future, (name, worker) in zip(started, workers.items(), strict=True):
                if future.exception() is not None:
                    raise RuntimeError(f"worker {name} did not start:\n{tail(worker.log_path)}")
        for api in apis:
            api.wait_until_healthy()
        yield Cluster(apis[0], apis[1], workers, queue, logs)
    finally:
        for api in apis:
            api.stop()  # SIGTERM, then SIGKILL
        for worker in workers.values():
            worker.stop()  # SIGTERM to the process group, then SIGKILL


@pytest.fixture
async def api1(cluster: Cluster, db: AsyncSession) -> AsyncIterator[httpx.AsyncClient]:
    # `db` brings in the app fixture, so the suite's per-test clean-up truncates the tables
    # and flushes Redis after each test here too.
    limits = httpx.Limits(max_connections=FANS, max_keepalive_connections=FANS)
    async with httpx.AsyncClient(
        base_url=cluster.api1.url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        yield client


@pytest.fixture
async def api2(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=FANS, max_keepalive_connections=FANS)
    async with httpx.AsyncClient(
        base_url=cluster.api2.url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        yield client


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/token/refresh", json={"refresh_token": refresh_token})


async def likes_seen(client: httpx.AsyncClient, post_id: int) -> int:
    response = await client.get(f"/api/posts/{post_id}")
    assert response.status_code == 200, response.text
    likes: int = response.json()["likes"]
    return likes


# --- images: uploaded through API 1, processed by either worker, read through API 2 ------------


async def test_uploads_on_api_1_are_processed_by_both_workers_and_served_by_api_2(
    cluster: Cluster,
    api1: httpx.AsyncClient,
    api2: httpx.AsyncClient,
    celery_worker: CeleryWorker | None,
) -> None:
    alice = await register(api1)
    post = await create_post(api1, alice)
    files = [
        (f"photo{n}.jpg", jpeg((1600, 1200)), "image/jpeg")
        if n % 2 == 0
        else (f"photo{n}.png", png((1600, 1200)), "image/png")
        for n in range(IMAGES)
    ]

    started = time.monotonic()
    uploads = await asyncio.gather(
        *(
            api1.post(
                f"/api/posts/{post['id']}/images",
                files={"file": file},
                headers=alice.headers,
            )
            for file in files
        )
    )
    for response in uploads:
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending"
    images = await asyncio.gather(
        *(
            wait_until_processed(
                api2, r.headers["location"], alice.headers, within_s=PROCESSING_TIMEOUT_S
            )
            for r in uploads
        )
    )
    elapsed = time.monotonic() - started

    for image in images:
        assert image["status"] == "ready", f"{image}\n{cluster.logs()}"
        assert set(image["variants"]) == VARIANTS
        for name, variant in image["variants"].items():
            served = await api2.get(variant["url"])
            assert served.status_code == 200, (variant["url"], served.text)
            assert len(served.content) == variant["bytes"]
            if name != "original":
                assert served.headers["content-type"] == "image/webp"
                assert served.content[:4] == b"RIFF"
                assert served.content[8:12] == b"WEBP"
        if S3_MEDIA:  # the bucket serves it, and no process kept a file of it
            assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert local_media_files(cluster.directory) == []
        task = await api2.get(f"/api/tasks/{image['task_id']}", headers=alice.headers)
        assert task.status_code == 200, task.text
        assert task.json()["state"] == "SUCCESS"
        assert task.json()["result"] == {"image_id": image["id"], "status": "ready"}

    # Which worker did each job: its log says so (the task id is the image's task_id).
    handled: dict[str, list[str]] = {}
    deadline = time.monotonic() + LOG_TIMEOUT_S
    while True:
        handled = {image["task_id"]: cluster.handlers(image["task_id"]) for image in images}
        if all(handled.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert all(len(names) == 1 for names in handled.values()), f"{handled}\n{cluster.logs()}"
    distribution = Counter(names[0] for names in handled.values())
    print(f"{IMAGES} images processed in {elapsed:.2f} s; jobs per worker: {dict(distribution)}")
    assert set(distribution) == {"w1", "w2"}, f"{distribution}\n{cluster.logs()}"
    if celery_worker is not None:  # the run's own worker listens on another queue
        other = celery_worker.log_path.read_text(errors="replace")
        assert not any(image["task_id"] in other for image in images)


# --- sessions: revoked on one API, rejected by the other ---------------------------------------


async def test_session_revoked_on_one_api_is_rejected_by_the_other(
    cluster: Cluster, api1: httpx.AsyncClient, api2: httpx.AsyncClient
) -> None:
    account = await register(api1)

    for one, other in ((api1, api2), (api2, api1)):
        tokens = await login(one, account.username)
        for _ in range(2):  # the other API has checked the session and remembers it as live
            me = await other.get("/api/users/me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 200, f"{me.text}\n{cluster.logs()}"
        revoked = await one.post(
            "/api/token/revoke", json={"refresh_token": tokens["refresh_token"]}
        )
        assert revoked.status_code == 204, revoked.text
        me = await other.get("/api/users/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 401, f"{me.text}\n{cluster.logs()}"
        assert me.headers["content-type"].startswith("application/problem+json")
        refreshed = await refresh(other, tokens["refresh_token"])
        assert refreshed.status_code == 401, refreshed.text

    # The registration's own session was never revoked: still good on both.
    for client in (api1, api2):
        assert (await client.get("/api/users/me", headers=account.headers)).status_code == 200


# --- likes: 500 at once over both APIs ---------------------------------------------------------


async def create_fans(db: AsyncSession, settings: Settings, tag: str) -> list[str]:
    """FANS accounts straight into the database, sharing one password hash made by the app's
    own hasher: the test is about likes, not about 500 registrations."""
    password_hash = await Passwords(settings).hash(PASSWORD)
    usernames = [f"fan_{tag}_{n}" for n in range(FANS)]
    rows: list[dict[str, Any]] = [
        {"email": f"{u}@example.com", "username": u, "password_hash": password_hash}
        for u in usernames
    ]
    await db.execute(insert(User), rows)
    await db.commit()
    return usernames


async def test_500_concurrent_likes_over_both_apis_count_exactly_500(
    cluster: Cluster,
    api1: httpx.AsyncClient,
    api2: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
) -> None:
    clients = (api1, api2)
    author: Account = await register(api1)
    post = await create_post(api1, author)
    assert await likes_seen(api1, post["id"]) == 0  # both cached with no likes
    assert await likes_seen(api2, post["id"]) == 0

    started = time.monotonic()
    usernames = await create_fans(db, settings, uuid.uuid4().hex[:6])
    in_flight = asyncio.Semaphore(LOGINS_IN_FLIGHT)

    async def sign_in(n: int, username: str) -> str:
        async with in_flight:
            tokens = await login(clients[n % 2], username)
        token: str = tokens["access_token"]
        return token

    tokens = await asyncio.gather(*(sign_in(n, u) for n, u in enumerate(usernames)))
    signed_in = time.monotonic() - started

    started = time.monotonic()
    likes = await asyncio.gather(
        *(
            clients[n % 2].put(f"/api/posts/{post['id']}/like", headers=bearer(token))
            for n, token in enumerate(tokens)
        )
    )
    liked = time.monotonic() - started
    statuses = Counter(r.status_code for r in likes)
    assert statuses == {204: FANS}, f"{statuses}\n{cluster.logs()}"

    assert await likes_seen(api1, post["id"]) == FANS
    assert await likes_seen(api2, post["id"]) == FANS
    mine = await api2.get(f"/api/posts/{post['id']}", headers=bearer(tokens[0]))
    assert mine.json()["liked_by_me"] is True
    stored = await db.scalar(select(Post.likes).where(Post.id == post["id"]))
    assert stored == FANS
    rows = await db.scalar(
        select(func.count()).select_from(PostLike).where(PostLike.post_id == post["id"])
    )
    assert rows == FANS

    # Again, each through the other API: PUT is idempotent, nothing moves.
    again = await asyncio.gather(
        *(
            clients[(n + 1) % 2].put(f"/api/posts/{post['id']}/like", headers=bearer(token))
            for n, token in enumerate(tokens[:DUPLICATES])
        )
    )
    assert Counter(r.status_code for r in again) == {204: DUPLICATES}
    assert await likes_seen(api1, post["id"]) == FANS
    assert await likes_seen(api2, post["id"]) == FANS
    await db.rollback()  # a fresh snapshot
    assert await db.scalar(select(Post.likes).where(Post.id == post["id"])) == FANS
    rows = await db.scalar(
        select(func.count()).select_from(PostLike).where(PostLike.post_id == post["id"])
    )
    assert rows == FANS
    print(f"{FANS} logins in {signed_in:.2f} s; {FANS} concurrent likes in {liked:.2f} s")


# --- follows and comments: at once over both APIs -----------------------------------------------
SOCIAL_FANS = 100


async def test_concurrent_follows_and_comments_over_both_apis_count_exactly(
    cluster: Cluster,
    api1: httpx.AsyncClient,
    api2: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
) -> None:
    clients = (api1, api2)
    star: Account = await register(api1)
    post = await create_post(api1, star)
    for api in clients:  # both cached with nothing yet
        assert (await api.get(f"/api/profiles/{star.username}")).json()["followers"] == 0
        assert (await api.get(f"/api/posts/{post['id']}")).json()["comments"] == 0

    password_hash = await Passwords(settings).hash(PASSWORD)
    tag = uuid.uuid4().hex[:6]
    usernames = [f"social_{tag}_{n}" for n in range(SOCIAL_FANS)]
    await db.execute(
        insert(User),
        [
            {"email": f"{u}@example.com", "username": u, "password_hash": password_hash}
            for u in usernames
        ],
    )
    await db.commit()
    in_flight = asyncio.Semaphore(LOGINS_IN_FLIGHT)

    async def sign_in(n: int, username: str) -> str:
        async with in_flight:
            tokens = await login(clients[n % 2], username)
        token: str = tokens["access_token"]
        return token

    tokens = await asyncio.gather(*(sign_in(n, u) for n, u in enumerate(usernames)))
    # Every fan follows twice (once through each API) and comments once, all at once.
    answers = await asyncio.gather(
        *(
            clients[n % 2].put(f"/api/profiles/{star.username}/follow", headers=bearer(t))
            for n, t in enumerate(tokens)
        ),
        *(
            clients[(n + 1) % 2].put(f"/api/profiles/{star.username}/follow", headers=bearer(t))
            for n, t in enumerate(tokens)
        ),
        *(
            clients[n % 2].post(
                f"/api/posts/{post['id']}/comments", json={"body": "hi"}, headers=bearer(t)
            )
            for n, t in enumerate(tokens)
        ),
    )
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {200: 2 * SOCIAL_FANS, 201: SOCIAL_FANS}, f"{statuses}\n{cluster.logs()}"
    for api in clients:
        profile = (await api.get(f"/api/profiles/{star.username}")).json()
        assert profile["followers"] == SOCIAL_FANS
        assert (await api.get(f"/api/posts/{post['id']}")).json()["comments"] == SOCIAL_FANS
        feed = await api.get("/api/feed", headers=bearer(tokens[0]))
        assert [p["id"] for p in feed.json()["items"]] == [post["id"]]
    await db.rollback()
    assert await db.scalar(select(Post.comments_count).where(Post.id == post["id"])) == SOCIAL_FANS
    follows = select(func.count()).select_from(Follow).where(Follow.followee_id == star.id)
    assert await db.scalar(follows) == SOCIAL_FANS
