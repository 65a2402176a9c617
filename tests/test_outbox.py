"""Jobs survive a broker that is down: they are stored with their data (the outbox) and sent once
the broker answers, while requests get their normal answers. The jobs they start do their work
once however often they are delivered, respect a deleted image, tell users why an image failed
in words meant for them, and stop at their time limit. Both modes unless marked."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image as PilImage
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core import imaging
from app.core.mail import build_mailer
from app.core.queue import Job
from app.database.session import create_engine, create_session_factory
from app.database.types import utcnow
from app.models import Image, ImageStatus, OutboxJob, Task, TaskState
from app.services import images as image_service
from app.services import tasks
from app.tasks import jobs
from app.tasks.celery_config import create_celery
from app.tasks.context import JobContext
from app.tasks.outbox import Outbox
from app.tasks.runner import with_jitter
from tests import images, media_files
from tests.conftest import S3_MEDIA, SERVICES, running_app, settings_env, settings_like
from tests.factories import Account, create_post, register
from tests.redis_server import RedisServer
from tests.services import CeleryWorker, SmtpServer

WAIT_S = 60.0
# A relay that looks often and backs off little, so that the tests see it work within seconds.
QUICK_RELAY = {
    "outbox_relay_interval_seconds": 0.2,
    "outbox_retry_max_seconds": 1.0,
    "celery_publish_timeout_seconds": 0.5,
}


# -- helpers -----------------------------------------------------------------------------------


# About how long the worker's CPU work on gradient_png(6200, 6300) takes, at most.
SLOW_IMAGE_CPU_S = 4


def gradient_png(width: int, height: int) -> bytes:
    """Few bytes on the wire, many pixels for the worker to chew on."""
    im = PilImage.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


def job_context(app: FastAPI) -> JobContext:
    settings: Settings = app.state.settings
    return JobContext(
        settings,
        app.state.session_factory,
        app.state.stores,
        app.state.backends.media,
        build_mailer(settings),
    )


async def outbox_rows(app: FastAPI) -> list[OutboxJob]:
    session: AsyncSession
    async with app.state.session_factory() as session:
        return list(await session.scalars(select(OutboxJob).order_by(OutboxJob.id)))


async def wait_until(check: Any, what: str, within: float = WAIT_S) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.1)


async def image_row(app: FastAPI, image_id: int) -> Image | None:
    session: AsyncSession
    async with app.state.session_factory() as session:
        return await session.get(Image, image_id)


async def wait_for_image(app: FastAPI, image_id: int) -> Image:
    async def settled() -> Image | None:
        image = await image_row(app, image_id)
        assert image is not None
        return image if image.status != ImageStatus.PENDING else None

    found: Image = await wait_until(settled, f"image {image_id} settled")
    return found


async def upload(client: httpx.AsyncClient, account: Account, data: bytes) -> dict[str, Any]:
    post = await create_post(client, account)
    response = await images.upload(client, post["id"], data, account.headers)
    assert response.status_code == 202, response.text
    image: dict[str, Any] = response.json()
    return image


class LostJobs:
    """A runner stand-in that takes nothing (a broker that is down) until `working` is set."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.working = False
        self.refused = 0

    async def send(self, job: Job) -> None:
        if not self.working:
            self.refused += 1
            raise ConnectionRefusedError("the broker is down")
        await self.runner.send(job)


class Recorder:
    """A runner that only counts what it is handed."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, job: Job) -> None:
        await asyncio.sleep(0.01)  # a round trip, so that two relays overlap
        self.sent.append(job.task_id)

    async def drain(self) -> None:
        return None


@pytest.fixture
def session_worker(celery_worker: CeleryWorker | None) -> Iterator[CeleryWorker | None]:
    """The run's worker, running again after the test whatever the test did to it."""
    try:
        yield celery_worker
    finally:
        if celery_worker is not None and celery_worker.process is None:
            celery_worker.start()


@pytest.fixture
async def main_relay_paused(app: FastAPI) -> AsyncIterator[None]:
    """The run's app does not relay during the test: the jobs stay with the relays under test
    (every API process relays the jobs of all of them)."""
    outbox: Outbox = app.state.backends.outbox
    await outbox.close()
    try:
        yield
    finally:
        outbox.start()


@pytest.fixture
def no_jobs_run(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs recorded by the API are not run: the test runs them itself."""

    async def lost(job: Job) -> None:
        return None

    monkeypatch.setattr(app.state.backends.runner, "send", lost)


# -- the outbox --------------------------------------------------------------------------------


async def test_a_job_the_runner_did_not_take_is_sent_by_the_relay(
    client: httpx.AsyncClient,
    settings: Settings,
    smtp_server: SmtpServer,
    main_relay_paused: None,
) -> None:
    async with running_app(settings_like(settings, **QUICK_RELAY)) as (other, api):
        down = LostJobs(other.state.backends.runner)
        outbox: Outbox = other.state.backends.outbox
        outbox._runner = down  # type: ignore[assignment]  # as a broker that is down would

        account = await register(api)  # 201, the broker down or not
        (row,) = await outbox_rows(other)
        assert row.sent_at is None
        assert row.name == jobs.SEND_EMAIL
        assert row.request_id  # the relay's send still names the request that queued it
        # The job carries a single-use link: stored sealed, as the database keeps only hashes.
        assert "verify-email" not in str(row.args)
        assert account.email not in str(row.args)

        async def tried_again() -> bool:
            return down.refused >= 3

        await wait_until(tried_again, "the relay tries again", within=15)
        assert smtp_server.wait_for(account.email, timeout=0) == []

        down.working = True
        found = await asyncio.to_thread(smtp_server.wait_for, account.email, WAIT_S)
        assert len(found) == 1

        async def sent() -> bool:
            return all(r.sent_at is not None for r in await outbox_rows(other))

        await wait_until(sent, "the job marked sent")
        await other.state.backends.runner.drain()
    assert len(smtp_server.wait_for(account.email, timeout=0)) == 1


async def test_two_relays_send_each_job_once(
    app: FastAPI, settings: Settings, main_relay_paused: None
) -> None:
    session: AsyncSession
    recorders = [Recorder(), Recorder()]
    engines = [create_engine(settings), create_engine(settings)]
    relays = [
        Outbox(settings, recorder, create_session_factory(engine))
        for recorder, engine in zip(recorders, engines, strict=True)
    ]
    try:
        async with app.state.session_factory() as session:
            for _ in range(30):
                task = tasks.new(session, jobs.SEND_EMAIL, None)
                relays[0].record(session, task, jobs.SEND_EMAIL, to="x@example.com")
            await session.flush()
            await session.execute(update(OutboxJob).values(next_attempt_at=utcnow()))
            await session.commit()

        counts = await asyncio.gather(*(relay.relay_once() for relay in relays))
    finally:
        for engine in engines:
            await engine.dispose()

    assert sum(counts) == 30
    sent = recorders[0].sent + recorders[1].sent
    assert len(sent) == len(set(sent)) == 30
    assert all(row.sent_at is not None for row in await outbox_rows(app))


@pytest.mark.skipif(not SERVICES, reason="a real broker stopped and started again")
async def test_registration_and_upload_answer_while_the_broker_is_down_and_run_once_it_is_back(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    broker_server: RedisServer | None,
    session_worker: CeleryWorker | None,
) -> None:
    assert broker_server is not None
    assert session_worker is not None
    await asyncio.to_thread(session_worker.stop)
    await asyncio.to_thread(broker_server.stop)  # killed: every message in it is lost too
    try:
        started = time.monotonic()
        account = await register(client)  # asserts 201
        image = await upload(client, account, images.jpeg((800, 600)))  # asserts 202
        assert time.monotonic() - started < 15, "the requests waited for the broker"
        rows = await outbox_rows(app)
        assert [r.name for r in rows] == [jobs.SEND_EMAIL, jobs.PROCESS_IMAGE]
        assert all(r.sent_at is None for r in rows)
        me = await client.get("/api/users/me", headers=account.headers)
        assert me.status_code == 200  # the account exists
    finally:
        await asyncio.to_thread(broker_server.start)
    await asyncio.to_thread(session_worker.start)

    found = await asyncio.to_thread(smtp_server.wait_for, account.email, WAIT_S)
    assert len(found) == 1
    stored = await wait_for_image(app, image["id"])
    assert stored.status == ImageStatus.READY, stored.failure_reason
    shown = await client.get(
        f"/api/posts/{image['post_id']}/images/{image['id']}", headers=account.headers
    )
    assert shown.json()["status"] == "ready"

    async def all_sent() -> bool:
        return all(r.sent_at is not None for r in await outbox_rows(app))

    await wait_until(all_sent, "every job marked sent")


@pytest.mark.skipif(not SERVICES, reason="a broker of its own, started late")
async def test_an_api_started_without_its_broker_sends_its_jobs_when_the_broker_comes(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    tmp_path: Path,
    main_relay_paused: None,
) -> None:
    late = RedisServer()  # its port stays closed until start()
    worker = CeleryWorker(
        settings_env(settings) | {"CELERY_BROKER_URL": late.url}, tmp_path / "late.log"
    )
    try:
        overrides = QUICK_RELAY | {"celery_broker_url": late.url}
        async with running_app(settings_like(settings, **overrides)) as (_, api):
            started = time.monotonic()
            account = await register(api)
            image = await upload(api, account, images.png((900, 700)))
            assert time.monotonic() - started < 10
            late.start()
            await asyncio.to_thread(worker.start)

            found = await asyncio.to_thread(smtp_server.wait_for, account.email, WAIT_S)
            assert len(found) == 1
            stored = await wait_for_image(app, image["id"])
            assert stored.status == ImageStatus.READY, stored.failure_reason
    finally:
        await asyncio.to_thread(worker.stop)
        late.stop()


# -- a send is never repeated ------------------------------------------------------------------


async def email_task(app: FastAPI, user_id: int | None = None) -> str:
    session: AsyncSession
    async with app.state.session_factory() as session:
        task = tasks.new(session, jobs.SEND_EMAIL, user_id)
        await session.commit()
        return task.id


def message(to: str) -> dict[str, Any]:
    return {
        "template": "verify_email",
        "to": to,
        "subject": "Confirm your e-mail address",
        "values": {"username": "someone", "link": "http://x/verify-email?token=t", "hours": "1"},
    }


async def test_a_delivered_again_email_job_does_not_send_again(
    app: FastAPI, smtp_server: SmtpServer
) -> None:
    ctx = job_context(app)
    to = f"{uuid.uuid4().hex[:8]}@example.com"
    task_id = await email_task(app)

    first = await jobs.send_email(ctx, task_id, **message(to))
    again = await jobs.send_email(ctx, task_id, **message(to))

    assert first == {"to": to, "template": "verify_email"}
    assert again["duplicate"] is True
    (sent,) = await asyncio.to_thread(smtp_server.wait_for, to, 2.0, 2)
    assert sent["Message-ID"] == f"<{task_id}@inkwell.local>"


async def test_two_copies_of_an_email_job_at_once_send_one_message(
    app: FastAPI, smtp_server: SmtpServer
) -> None:
    ctx = job_context(app)
    to = f"{uuid.uuid4().hex[:8]}@example.com"
    task_id = await email_task(app)

    outcomes = await asyncio.gather(
        *(jobs.send_email(ctx, task_id, **message(to)) for _ in range(2)),
        return_exceptions=True,
    )

    assert sum(isinstance(o, dict) and "duplicate" not in o for o in outcomes) == 1
    assert all(isinstance(o, dict | jobs.JobBusy) for o in outcomes), outcomes
    assert len(await asyncio.to_thread(smtp_server.wait_for, to, 2.0, 2)) == 1


@pytest.mark.skipif(not SERVICES, reason="the message published twice to a real worker")
async def test_the_worker_sends_a_twice_published_email_once(
    app: FastAPI, settings: Settings, smtp_server: SmtpServer, celery_worker: CeleryWorker | None
) -> None:
    to = f"{uuid.uuid4().hex[:8]}@example.com"
    task_id = await email_task(app)
    publisher = create_celery(settings)
    for _ in range(2):  # as a redelivery, or a send the outbox could not mark, would
        await asyncio.to_thread(
            publisher.send_task,
            "inkwell.send_email",
            kwargs={"task_id": task_id, **message(to)},
            task_id=task_id,
            queue=settings.celery_queue,
        )

    async def done() -> bool:
        session: AsyncSession
        async with app.state.session_factory() as session:
            task = await session.get(Task, task_id)
            return task is not None and task.state == TaskState.SUCCESS

    await wait_until(done, "the e-mail task done")
    await asyncio.sleep(2)  # time for the second copy to run
    assert len(smtp_server.wait_for(to, timeout=0)) == 1


async def test_an_email_job_of_a_deleted_account_sends_nothing(
    client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
) -> None:
    account = await register(client)
    await asyncio.to_thread(smtp_server.wait_for, account.email, WAIT_S)
    task_id = await email_task(app, account.id)
    deleted = await client.delete("/api/users/me", headers=account.headers)
    assert deleted.status_code == 204, deleted.text

    result = await jobs.send_email(job_context(app), task_id, **message("gone@example.com"))

    assert result["duplicate"] is True
    assert smtp_server.wait_for("gone@example.com", timeout=0) == []


# -- retries spread out ------------------------------------------------------------------------


def test_retry_delays_have_jitter() -> None:
    delays = [with_jitter(8.0) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100


# -- images deleted while processed, and failure reasons ---------------------------------------


async def test_an_image_deleted_while_it_is_processed_stays_deleted(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    no_jobs_run: None,
) -> None:
    account = await register(client)
    image = await upload(client, account, images.jpeg((800, 600)))
    started, deleted = threading.Event(), threading.Event()
    process = imaging.process

    def held(*args: Any) -> Any:
        started.set()
        deleted.wait(WAIT_S)
        return process(*args)

    monkeypatch.setattr("app.core.imaging.process", held)
    row = await image_row(app, image["id"])
    assert row is not None
    job = asyncio.create_task(jobs.process_image(job_context(app), image["task_id"], image["id"]))
    assert await asyncio.to_thread(started.wait, WAIT_S)
    location = f"/api/posts/{image['post_id']}/images/{image['id']}"
    response = await client.delete(location, headers=account.headers)
    assert response.status_code == 204
    deleted.set()
    result = await job

    assert result["status"] == "deleted"
    assert await image_row(app, image["id"]) is None
    assert (await client.get(location, headers=account.headers)).status_code == 404
    post = await client.get(f"/api/posts/{image['post_id']}", headers=account.headers)
    assert post.json()["images"] == []
    # The files written meanwhile too:
    assert not media_files.stored_files(settings, row.storage_key)
    assert not media_files.upload_stored(settings, row.storage_key)
    task = await client.get(f"/api/tasks/{image['task_id']}", headers=account.headers)
    assert task.json()["state"] == "SUCCESS"
    assert task.json()["result"]["status"] == "deleted"


async def test_an_image_failure_reason_is_for_users(
    client: httpx.AsyncClient, app: FastAPI, no_jobs_run: None
) -> None:
    account = await register(client)
    ctx = job_context(app)
    broken = await upload(client, account, images.truncated_jpeg())
    missing = await upload(client, account, images.jpeg((640, 480)))
    row = await image_row(app, missing["id"])
    assert row is not None
    await ctx.media.discard_upload(row.storage_key)  # lost before the job ran

    await jobs.process_image(ctx, broken["task_id"], broken["id"])
    await jobs.process_image(ctx, missing["task_id"], missing["id"])

    reasons = {}
    for image in (broken, missing):
        shown = await client.get(
            f"/api/posts/{image['post_id']}/images/{image['id']}", headers=account.headers
        )
        assert shown.json()["status"] == "failed"
        reasons[image["id"]] = shown.json()["failure_reason"]
        task = await client.get(f"/api/tasks/{image['task_id']}", headers=account.headers)
        assert task.json()["state"] == "FAILURE"
    assert reasons[broken["id"]] == "The file is not a valid image."
    assert reasons[missing["id"]] == image_service.Failure.UPLOAD_MISSING
    for reason in reasons.values():
        assert "/" not in reason
        assert "pid" not in reason.lower()
        assert "Error" not in reason


# -- time limits -------------------------------------------------------------------------------


def test_the_hard_time_limit_must_be_over_the_soft_one(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="TASK_TIME_LIMIT_SECONDS"):
        settings_like(settings, task_soft_time_limit_seconds=60, task_time_limit_seconds=60)
    limited = settings_like(settings, task_soft_time_limit_seconds=7, task_time_limit_seconds=9)
    conf = create_celery(limited).conf
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (7, 9)
    assert conf.task_publish_retry is False


@pytest.fixture
def slow_processing(monkeypatch: pytest.MonkeyPatch) -> None:
    process = imaging.process

    def slow(*args: Any) -> Any:
        time.sleep(2.5)
        return process(*args)

    monkeypatch.setattr("app.core.imaging.process", slow)


@pytest.mark.skipif(SERVICES, reason="the in-process runner's limit")
async def test_an_in_process_job_over_its_soft_time_limit_ends_failed(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, slow_processing: None
) -> None:
    limited = settings_like(settings, task_soft_time_limit_seconds=1, task_time_limit_seconds=5)
    async with running_app(limited) as (other, api):
        account = await register(api)
        image = await upload(api, account, images.jpeg((800, 600)))
        await other.state.backends.runner.drain()
    stored = await wait_for_image(app, image["id"])
    assert stored.status == ImageStatus.FAILED
    assert stored.failure_reason == image_service.Failure.UNPROCESSABLE


@pytest.mark.skipif(not SERVICES, reason="a Celery worker's soft time limit")
async def test_a_worker_job_over_its_soft_time_limit_ends_failed(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, tmp_path: Path
) -> None:
    queue = f"inkwell-limit-{uuid.uuid4().hex[:8]}"
    env = settings_env(settings) | {
        "CELERY_QUEUE": queue,
        "TASK_SOFT_TIME_LIMIT_SECONDS": "1",
        "TASK_TIME_LIMIT_SECONDS": "20",
    }
    worker = CeleryWorker(env, tmp_path / "limited.log", concurrency=1)
    await asyncio.to_thread(worker.start)
    try:
        async with running_app(settings_like(settings, celery_queue=queue)) as (_, api):
            account = await register(api)
            slow = await upload(api, account, gradient_png(6200, 6300))
            stored = await wait_for_image(app, slow["id"])
            assert stored.status == ImageStatus.FAILED
            assert stored.failure_reason == image_service.Failure.UNPROCESSABLE
            # The worker carries on with the next job. With media in a bucket, that job makes
            # a few requests to it: it starts once the thread the stopped job left decoding its
            # 40 MP image (CPU work cannot be cancelled) is done, so it fits in its 1 s too.
            if S3_MEDIA:
                await asyncio.sleep(SLOW_IMAGE_CPU_S)
            quick = await upload(api, account, images.jpeg((300, 200)))
            assert (await wait_for_image(app, quick["id"])).status == ImageStatus.READY
    finally:
        await asyncio.to_thread(worker.stop)
    assert "over its time limit" in worker.log_path.read_text(errors="replace")
