"""A real Celery worker process (`python -m app worker`) against the run's Redis broker, and
once against RabbitMQ: readiness reports the broker, a worker killed with SIGKILL mid-task
loses nothing, a poison image ends failed instead of looping, and e-mails are retried with
backoff until the SMTP server is up. Services mode only."""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from kombu import Connection
from PIL import Image as PilImage
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import Image, ImageStatus, Task, TaskState
from tests import media_files
from tests.conftest import (
    ON_CI,
    SERVICES,
    WORKER_VISIBILITY_TIMEOUT_S,
    running_app,
    settings_env,
    settings_like,
)
from tests.factories import Account, create_post, register
from tests.redis_server import free_port
from tests.services import CeleryWorker, SmtpServer, text_body

pytestmark = pytest.mark.skipif(
    not SERVICES, reason="needs a Celery worker, Redis and PostgreSQL (services mode)"
)

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
MAIL_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 60.0
REDELIVERY_TIMEOUT_S = WORKER_VISIBILITY_TIMEOUT_S + 30
VARIANTS = {"original", "large", "medium", "thumb"}


# Helpers


def png(width: int, height: int) -> bytes:
    """A smooth gradient: few bytes on the wire, many pixels for the worker to chew on."""
    im = PilImage.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slow_png() -> bytes:
    """About 39 megapixels (the limit is 40): a couple of seconds of work for the worker, long
    enough to kill it in the middle."""
    return png(6200, 6300)


@pytest.fixture
def worker(celery_worker: CeleryWorker | None) -> Iterator[CeleryWorker]:
    """The run's worker; whatever a test does to it, it is running again afterwards."""
    assert celery_worker is not None, "services mode starts a Celery worker"
    try:
        yield celery_worker
    finally:
        if celery_worker.process is None:
            celery_worker.start()


async def upload(
    client: httpx.AsyncClient, account: Account, data: bytes, name: str = "big.png"
) -> dict[str, Any]:
    post = await create_post(client, account)
    response = await client.post(
        f"/api/posts/{post['id']}/images",
        files={"file": (name, data, "image/png")},
        headers=account.headers,
    )
    assert response.status_code == 202, response.text
    image: dict[str, Any] = response.json()
    assert image["status"] == "pending"
    return image


async def image_row(app: FastAPI, image_id: int) -> Image:
    """The image as stored now, read in a session of its own."""
    session: AsyncSession
    async with app.state.session_factory() as session:
        image = await session.get(Image, image_id)
        assert image is not None
        return image


async def task_row(app: FastAPI, task_id: str) -> Task:
    session: AsyncSession
    async with app.state.session_factory() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        return task


async def wait_for_image(app: FastAPI, image_id: int, within: float = JOB_TIMEOUT_S) -> Image:
    """The image once it is no longer pending."""
    settled = {ImageStatus.READY, ImageStatus.FAILED}
    deadline = time.monotonic() + within
    while True:
        image = await image_row(app, image_id)
        if image.status in settled:
            return image
        assert time.monotonic() < deadline, (
            f"image {image_id} still {image.status} after {within} s (attempts {image.attempts})"
        )
        await asyncio.sleep(0.1)


async def wait_for_email_task(app: FastAPI, user_id: int, state: TaskState) -> Task:
    deadline = time.monotonic() + MAIL_TIMEOUT_S
    while True:
        session: AsyncSession
        async with app.state.session_factory() as session:
            tasks = list(
                await session.scalars(
                    select(Task).where(Task.name == "send_email", Task.user_id == user_id)
                )
            )
        if tasks and tasks[-1].state == state:
            return tasks[-1]
        seen = [t.state for t in tasks]
        assert time.monotonic() < deadline, f"no send_email task in {state}; saw {seen}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def extra_app(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another app on the run's database, Redis, broker and SMTP server unless overridden."""
    async with running_app(settings_like(settings, **overrides)) as (_, client):
        yield client


def rabbitmq_reachable() -> str | None:
    """None when RabbitMQ accepts a connection, else why not."""
    try:
        with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # any failure: not reachable
        return repr(exc)
    return None


def delete_rabbitmq_queue(queue: str) -> None:
    with Connection(RABBITMQ_URL, connect_timeout=3) as conn:
        channel: Any = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)


# Readiness


async def test_readiness_reports_the_broker(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert checks == {"database": "ok", "redis": "ok", "broker": "ok"}


async def test_readiness_is_503_naming_the_broker_when_it_is_unreachable(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    dead_broker = f"redis://127.0.0.1:{free_port()}/1"
    async with extra_app(settings, celery_broker_url=dead_broker) as broken:
        response = await broken.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "dependency_unavailable"
    assert body["checks"]["broker"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert "broker" in body["detail"]


# Images through the worker


async def test_worker_processes_an_uploaded_image(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, worker: CeleryWorker
) -> None:
    account = await register(client)
    image = await upload(client, account, png(1600, 1200), name="small.png")

    stored = await wait_for_image(app, image["id"])

    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts == 1
    assert set(stored.variants) == VARIANTS
    response = await client.get(
        f"/api/posts/{image['post_id']}/images/{image['id']}", headers=account.headers
    )
    assert response.json()["status"] == "ready"
    assert response.json()["variants"]["large"]["width"] == 1280
    task = await client.get(f"/api/tasks/{image['task_id']}", headers=account.headers)
    assert task.json()["state"] == "SUCCESS"


async def test_image_survives_its_worker_being_killed_mid_task(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    worker: CeleryWorker,
    slow_png: bytes,
) -> None:
    account = await register(client)
    await asyncio.to_thread(worker.kill)
    image = await upload(client, account, slow_png)  # waits in the broker: no worker
    assert (await image_row(app, image["id"])).attempts == 0

    await asyncio.to_thread(worker.start)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (await image_row(app, image["id"])).attempts < 1:
        assert time.monotonic() < deadline, "the restarted worker never started the image"
        await asyncio.sleep(0.01)
    await asyncio.to_thread(worker.kill)  # SIGKILL, mid-task
    killed = await image_row(app, image["id"])
    assert killed.status == ImageStatus.PENDING, "the image was done before the kill: too fast"
    assert killed.attempts == 1

    await asyncio.to_thread(worker.start)
    stored = await wait_for_image(app, image["id"], within=REDELIVERY_TIMEOUT_S)

    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts >= 2
    assert set(stored.variants) == VARIANTS
    assert (stored.width, stored.height) == (6200, 6300)
    assert media_files.stored_files(settings, stored.storage_key) == {
        "large.webp",
        "medium.webp",
        "original.png",
        "thumb.webp",
    }  # no half-written temporary file left behind
    assert not media_files.upload_stored(settings, stored.storage_key)
    assert (await task_row(app, image["task_id"])).state == TaskState.SUCCESS
    response = await client.get(
        f"/api/posts/{image['post_id']}/images/{image['id']}", headers=account.headers
    )
    assert response.json()["status"] == "ready"


async def test_poison_image_ends_failed_after_its_attempts(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    worker: CeleryWorker,
) -> None:
    account = await register(client)
    await asyncio.to_thread(worker.kill)
    image = await upload(client, account, png(800, 600), name="poison.png")
    # As if it had already killed its worker task_max_attempts times.
    session: AsyncSession
    async with app.state.session_factory() as session:
        await session.execute(
            update(Image).where(Image.id == image["id"]).values(attempts=settings.task_max_attempts)
        )
        await session.commit()

    await asyncio.to_thread(worker.start)
    stored = await wait_for_image(app, image["id"])

    assert stored.status == ImageStatus.FAILED
    assert stored.failure_reason == "The image could not be processed."  # details in the logs
    assert stored.attempts == settings.task_max_attempts + 1
    assert stored.variants == {}
    task = await task_row(app, image["task_id"])
    assert task.state == TaskState.FAILURE  # a failed image's task failed too
    assert task.result is not None
    assert task.result["status"] == "failed"
    response = await client.get(
        f"/api/posts/{image['post_id']}/images/{image['id']}", headers=account.headers
    )
    assert response.json()["status"] == "failed"
    assert response.json()["failure_reason"] == "The image could not be processed."


# E-mail through the worker


async def test_worker_retries_email_with_backoff_until_smtp_is_up(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, tmp_path: Any
) -> None:
    late = SmtpServer()  # its port stays closed until start()
    queue = f"inkwell-smtp-{uuid.uuid4().hex[:8]}"
    env = settings_env(settings) | {"SMTP_PORT": str(late.port), "CELERY_QUEUE": queue}
    mailer = CeleryWorker(env, tmp_path / "smtp-worker.log", concurrency=1)
    started = False
    await asyncio.to_thread(mailer.start)
    try:
        async with extra_app(settings, celery_queue=queue) as api:
            account = await register(api)

            retrying = await wait_for_email_task(app, account.id, TaskState.RETRY)
            assert retrying.result is not None
            assert "refused" in retrying.result["error"].lower()

            late.start()
            started = True
            found = await asyncio.to_thread(late.wait_for, account.email, MAIL_TIMEOUT_S)
            assert len(found) == 1
            assert "/verify-email?token=" in text_body(found[0])
            done = await wait_for_email_task(app, account.id, TaskState.SUCCESS)
            assert done.result == {"to": account.email, "template": "verify_email"}
    finally:
        await asyncio.to_thread(mailer.stop)
        if started:
            late.stop()
    log = mailer.log_path.read_text(errors="replace")
    # The first retry waits TRANSIENT_RETRY_BASE_SECONDS (2 s), less a random part of it (jitter).
    waits = [float(w) for w in re.findall(r"Retry in ([0-9.]+)s", log)]
    assert waits, log
    assert 1.0 <= waits[0] <= 2.0


# RabbitMQ


async def test_jobs_run_through_a_rabbitmq_broker(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    tmp_path: Any,
) -> None:
    problem = await asyncio.to_thread(rabbitmq_reachable)
    if problem is not None:
        message = f"RabbitMQ at {RABBITMQ_URL} is not reachable: {problem}"
        if ON_CI:
            pytest.fail(message + " (CI=true: the RabbitMQ run may not be skipped)")
        pytest.skip(message)
    queue = f"inkwell-test-{uuid.uuid4().hex[:8]}"
    env = settings_env(settings) | {"CELERY_BROKER_URL": RABBITMQ_URL, "CELERY_QUEUE": queue}
    rabbit_worker = CeleryWorker(env, tmp_path / "rabbit-worker.log")
    try:
        await asyncio.to_thread(rabbit_worker.start)
        async with extra_app(settings, celery_broker_url=RABBITMQ_URL, celery_queue=queue) as api:
            ready = await api.get("/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["broker"] == "ok"

            account = await register(api)
            found = await asyncio.to_thread(smtp_server.wait_for, account.email, MAIL_TIMEOUT_S)
            assert len(found) == 1
            assert "/verify-email?token=" in text_body(found[0])

            image = await upload(api, account, png(1500, 1000), name="rabbit.png")
            stored = await wait_for_image(app, image["id"])
            assert stored.status == ImageStatus.READY, stored.failure_reason
            assert set(stored.variants) == VARIANTS
        log = rabbit_worker.log_path.read_text(errors="replace")
        assert image["task_id"] in log  # this worker, fed by RabbitMQ, did the work
    finally:
        await asyncio.to_thread(rabbit_worker.stop)
        await asyncio.to_thread(delete_rabbitmq_queue, queue)


def test_worker_takes_its_log_level_in_any_case(settings: Settings, tmp_path: Path) -> None:
    # Celery's own spelling is lower case (`--loglevel debug`); the worker must start with it.
    queue = f"inkwell-loglevel-{uuid.uuid4().hex[:8]}"
    env = settings_env(settings) | {"CELERY_QUEUE": queue}
    worker = CeleryWorker(env, tmp_path / "worker.log", concurrency=1, loglevel="debug")
    worker.start()  # raises unless the worker says it is ready
    try:
        assert "DEBUG" in (tmp_path / "worker.log").read_text(errors="replace")
    finally:
        worker.stop()
