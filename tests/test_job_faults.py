"""Faults lose no job. A job that fails for a passing reason (the database restarting under it, a
broker or mail server unreachable) is retried with backoff and counts no attempt against its
image; one that fails for a reason of its own ends `failed`, never `pending` for ever. A job whose
message the broker lost is sent again by the outbox's sweep, once, and a job running or done is
left alone. Both modes unless marked."""

from __future__ import annotations

import asyncio
import errno
import smtplib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import kombu.exceptions
import pytest
import redis.exceptions
from fastapi import FastAPI
from sqlalchemy import exc as sa
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core import imaging
from app.core.faults import is_transient
from app.core.imaging import ImageRejected
from app.core.queue import Job
from app.database.types import utcnow
from app.models import ImageStatus, OutboxJob, Task, TaskState
from app.services import images as image_service
from app.services import tasks
from app.tasks import jobs
from app.tasks.outbox import Outbox
from app.tasks.runner import (
    JOB_CRASHED,
    SERVICE_AWAY,
    TRANSIENT_MAX_RETRIES,
    InProcessRunner,
    after_failure,
)
from tests import images
from tests.conftest import SERVICES, running_app, settings_env, settings_like
from tests.factories import register
from tests.redis_server import RedisServer
from tests.services import CeleryWorker, SmtpServer
from tests.tcp_proxy import TcpProxy
from tests.test_outbox import (
    QUICK_RELAY,
    Recorder,
    gradient_png,
    image_row,
    job_context,
    upload,
    wait_for_image,
    wait_until,
)

WAIT_S = 60.0


def lost_connection() -> sa.InterfaceError:
    """What SQLAlchemy raised in the worker when PostgreSQL restarted under a job."""
    return sa.InterfaceError(
        "SELECT 1", None, asyncpg.exceptions.ConnectionDoesNotExistError("connection is closed")
    )


# -- which failures pass -----------------------------------------------------------------------


def invalidated() -> sa.DBAPIError:
    return sa.DBAPIError("SELECT 1", None, ConnectionResetError(), connection_invalidated=True)


def wrapped(cause: BaseException) -> Exception:
    try:
        raise RuntimeError("while working") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "error",
    [
        lost_connection(),
        sa.OperationalError("SELECT 1", None, ConnectionRefusedError()),
        invalidated(),
        # A database that cannot serve (SQLSTATE class 53), as the request path judges it too.
        sa.DBAPIError("INSERT", None, asyncpg.exceptions.DiskFullError("disk full"), False),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        OSError(errno.ECONNRESET, "reset by peer"),
        OSError(errno.EHOSTUNREACH, "no route to host"),
        TimeoutError(),
        kombu.exceptions.OperationalError("Error 111 connecting to broker"),
        redis.exceptions.ConnectionError("Connection refused"),
        smtplib.SMTPServerDisconnected("gone"),
        jobs.RetryableError("SMTP down"),
        jobs.Interrupted(1),
        wrapped(ConnectionResetError()),
    ],
    ids=repr,
)
def test_passing_faults_are_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad pixel data"),
        KeyError("variants"),
        ImageRejected("not an image"),
        FileNotFoundError(errno.ENOENT, "upload gone"),
        PermissionError(errno.EACCES, "denied"),
        sa.IntegrityError("INSERT", None, Exception("duplicate key")),
        sa.DBAPIError("SELECT", None, Exception("syntax"), connection_invalidated=False),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        wrapped(ValueError("inside")),
    ],
    ids=repr,
)
def test_failures_of_the_job_itself_are_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


def test_the_rule_after_a_failure(settings: Settings) -> None:
    kwargs = {"image_id": 7}

    passing = after_failure(settings, jobs.PROCESS_IMAGE, kwargs, jobs.Interrupted(2), 0)
    assert passing.retry_in is not None
    assert 1.0 <= passing.retry_in <= 2.0
    assert passing.state == TaskState.RETRY
    assert not passing.give_up
    assert passing.kwargs == {"image_id": 7, "reuse_attempt": 2}  # no attempt counted again
    # A driver's message (its SQL) is never shown in the task: a plain sentence is.
    database = after_failure(settings, jobs.PROCESS_IMAGE, kwargs, lost_connection(), 0)
    assert database.error == SERVICE_AWAY
    assert "SELECT" not in database.error

    own = after_failure(settings, jobs.PROCESS_IMAGE, kwargs, ValueError("x"), 0)
    assert own.retry_in is None
    assert own.give_up
    assert own.error == JOB_CRASHED

    # Tries used up while the database is still away: the image is left to the sweep.
    late = after_failure(
        settings, jobs.PROCESS_IMAGE, kwargs, lost_connection(), TRANSIENT_MAX_RETRIES
    )
    assert late.retry_in is None
    assert late.state == TaskState.RETRY
    assert not late.give_up
    mail = after_failure(settings, jobs.SEND_EMAIL, {}, lost_connection(), TRANSIENT_MAX_RETRIES)
    assert mail.retry_in is None
    assert mail.state == TaskState.FAILURE

    sent = after_failure(settings, jobs.SEND_EMAIL, {}, jobs.Delivered("sent"), 0)
    assert sent.kwargs == {"delivered": True}  # the next try records, and sends nothing


# -- the in-process runner ---------------------------------------------------------------------


@pytest.fixture
def no_jobs_run(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    async def lost(job: Job) -> None:
        return None

    monkeypatch.setattr(app.state.backends.runner, "send", lost)


async def run_in_process(app: FastAPI, image: dict[str, Any]) -> None:
    runner = InProcessRunner(job_context(app))
    await runner.send(Job(0, jobs.PROCESS_IMAGE, image["task_id"], {"image_id": image["id"]}))
    await runner.drain()


async def test_an_image_whose_database_went_away_is_retried_without_counting_an_attempt(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, no_jobs_run: None
) -> None:
    account = await register(client)
    image = await upload(client, account, images.jpeg((800, 600)))
    finish = image_service._finish
    faults: list[int] = []

    async def connection_lost_once(*args: Any, **kwargs: Any) -> Any:
        if not faults:
            faults.append(1)
            raise lost_connection()
        return await finish(*args, **kwargs)

    monkeypatch.setattr(image_service, "_finish", connection_lost_once)
    await run_in_process(app, image)

    stored = await image_row(app, image["id"])
    assert stored is not None
    assert faults == [1]
    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts == 1
    session: AsyncSession
    async with app.state.session_factory() as session:
        task = await session.get(Task, image["task_id"])
    assert task is not None
    assert task.state == TaskState.SUCCESS


async def test_an_image_failing_for_a_reason_of_its_own_ends_failed(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, no_jobs_run: None
) -> None:
    account = await register(client)
    image = await upload(client, account, images.jpeg((800, 600)))

    def broken(*args: Any) -> Any:
        raise ValueError("a decoder bug on this input")

    monkeypatch.setattr(imaging, "process", broken)
    await run_in_process(app, image)

    stored = await image_row(app, image["id"])
    assert stored is not None
    assert stored.status == ImageStatus.FAILED  # not `pending` for ever
    assert stored.failure_reason == image_service.Failure.UNPROCESSABLE
    assert stored.attempts == 1
    shown = await client.get(
        f"/api/posts/{image['post_id']}/images/{image['id']}", headers=account.headers
    )
    assert shown.json()["status"] == "failed"


async def test_an_email_whose_success_could_not_be_recorded_is_not_sent_again(
    app: FastAPI, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    to = f"{uuid.uuid4().hex[:8]}@example.com"
    session: AsyncSession
    async with app.state.session_factory() as session:
        task = tasks.new(session, jobs.SEND_EMAIL, None)
        await session.commit()
    record = tasks.record
    faults: list[int] = []

    async def lost_after_sending(sessions: Any, task_id: str, **kw: Any) -> None:
        if kw["state"] == TaskState.SUCCESS and not faults:
            faults.append(1)
            raise lost_connection()
        await record(sessions, task_id, **kw)

    monkeypatch.setattr(tasks, "record", lost_after_sending)
    runner = InProcessRunner(job_context(app))
    message = {
        "template": "verify_email",
        "to": to,
        "subject": "Confirm your e-mail address",
        "values": {"username": "someone", "link": "http://x/verify-email?token=t", "hours": "1"},
    }
    await runner.send(Job(0, jobs.SEND_EMAIL, task.id, message))
    await runner.drain()

    async with app.state.session_factory() as session:
        done = await session.get(Task, task.id)
    assert done is not None
    assert done.state == TaskState.SUCCESS
    assert faults == [1]
    assert len(await asyncio.to_thread(smtp_server.wait_for, to, 1.0, 2)) == 1


async def test_a_copy_of_an_image_job_held_by_another_try_waits_without_counting(
    client: httpx.AsyncClient, app: FastAPI, no_jobs_run: None
) -> None:
    account = await register(client)
    image = await upload(client, account, images.jpeg((640, 480)))
    ctx = job_context(app)
    session: AsyncSession
    async with app.state.session_factory() as session:
        await session.execute(
            update(Task)
            .where(Task.id == image["task_id"])
            .values(state=TaskState.STARTED, updated_at=utcnow())  # another try holds it
        )
        await session.commit()

    with pytest.raises(jobs.JobBusy):  # a second copy (the sweep's, say) waits
        await jobs.process_image(ctx, image["task_id"], image["id"])
    row = await image_row(app, image["id"])
    assert row is not None
    assert row.attempts == 0
    assert row.status == ImageStatus.PENDING

    # The same message delivered again because its worker died takes the hold over.
    result = await jobs.process_image(ctx, image["task_id"], image["id"], redelivered=True)
    assert result["status"] == ImageStatus.READY
    row = await image_row(app, image["id"])
    assert row is not None
    assert row.attempts == 1


# -- a real lost database connection under a Celery job ----------------------------------------


@pytest.fixture
async def database_proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    url = make_url(str(settings.database_url))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def worker_log_has(worker: CeleryWorker, *words: str) -> bool:
    log = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
    return any(all(w in line for w in words) for line in log.splitlines())


@pytest.mark.skipif(not SERVICES, reason="a Celery worker on PostgreSQL through a proxy")
async def test_an_image_survives_its_database_connection_dropped_mid_job(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    database_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    queue = f"inkwell-dbfault-{uuid.uuid4().hex[:8]}"
    through_proxy = make_url(str(settings.database_url)).set(
        host="127.0.0.1", port=database_proxy.port
    )
    env = settings_env(settings) | {
        "CELERY_QUEUE": queue,
        "DATABASE_URL": through_proxy.render_as_string(hide_password=False),
    }
    worker = CeleryWorker(env, tmp_path / "dbfault.log", concurrency=1)
    await asyncio.to_thread(worker.start)
    try:
        async with running_app(settings_like(settings, celery_queue=queue)) as (_, api):
            account = await register(api)
            image = await upload(api, account, gradient_png(6200, 6300))

            async def started() -> bool:
                row = await image_row(app, image["id"])
                return row is not None and row.attempts >= 1

            await wait_until(started, "the worker started the image")
            database_proxy.cut()  # PostgreSQL went away under the job
            try:

                async def retried() -> bool:
                    return worker_log_has(worker, image["task_id"], "retry")

                await wait_until(retried, "the job retried", within=30)
            finally:
                database_proxy.restore()  # and came back
            stored = await wait_for_image(app, image["id"])
    finally:
        await asyncio.to_thread(worker.stop)

    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts == 1  # the fault was no attempt of the image's
    session: AsyncSession
    async with app.state.session_factory() as session:
        task = await session.get(Task, image["task_id"])
    assert task is not None
    assert task.state == TaskState.SUCCESS


# -- jobs lost on their way --------------------------------------------------------------------


@pytest.fixture
async def main_relay_paused(app: FastAPI) -> AsyncIterator[None]:
    outbox: Outbox = app.state.backends.outbox
    await outbox.close()
    try:
        yield
    finally:
        outbox.start()


async def sent_job(app: FastAPI, outbox: Outbox, state: TaskState, ago: float) -> str:
    """A job sent `ago` seconds ago whose task is in `state` since then."""
    session: AsyncSession
    async with app.state.session_factory() as session:
        task = tasks.new(session, jobs.SEND_EMAIL, None)
        outbox.record(session, task, jobs.SEND_EMAIL, to="x@example.com")
        await session.flush()
        then = utcnow() - timedelta(seconds=ago)
        await session.execute(
            update(Task).where(Task.id == task.id).values(state=state, updated_at=then)
        )
        await session.execute(
            update(OutboxJob).where(OutboxJob.task_id == task.id).values(sent_at=then)
        )
        await session.commit()
        return task.id


async def test_the_sweep_sends_again_only_jobs_lost_on_their_way(
    app: FastAPI, settings: Settings, main_relay_paused: None
) -> None:
    recorder = Recorder()
    quick = settings_like(settings, image_stuck_after_seconds=30, task_time_limit_seconds=150)
    outbox = Outbox(quick, recorder, app.state.session_factory)
    lost = {
        await sent_job(app, outbox, TaskState.PENDING, ago=60),
        await sent_job(app, outbox, TaskState.RETRY, ago=60),
        await sent_job(app, outbox, TaskState.STARTED, ago=200),  # its hold is stale
    }
    kept = {
        await sent_job(app, outbox, TaskState.PENDING, ago=5),  # sent moments ago
        await sent_job(app, outbox, TaskState.STARTED, ago=60),  # running
        await sent_job(app, outbox, TaskState.SUCCESS, ago=600),
        await sent_job(app, outbox, TaskState.FAILURE, ago=600),
    }

    assert await outbox.sweep_once() == 3
    assert await outbox.relay_once() == 3
    assert set(recorder.sent) == lost
    assert not kept & set(recorder.sent)

    # Sent again just now: not again until another threshold has passed.
    assert await outbox.sweep_once() == 0
    assert await outbox.relay_once() == 0
    session: AsyncSession
    async with app.state.session_factory() as session:
        rows = list(await session.scalars(select(OutboxJob)))
    assert all(row.sent_at is not None for row in rows)


class DropsFirstSend:
    """A broker that takes every job once and loses it: a later send gets through."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.dropped: set[str] = set()

    async def send(self, job: Job) -> None:
        if job.task_id not in self.dropped:
            self.dropped.add(job.task_id)
            return
        await self.runner.send(job)

    async def drain(self) -> None:
        await self.runner.drain()


async def test_jobs_the_broker_lost_are_sent_again_and_run_once(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    main_relay_paused: None,
) -> None:
    overrides = QUICK_RELAY | {"image_stuck_after_seconds": 2}
    async with running_app(settings_like(settings, **overrides)) as (other, api):
        lossy = DropsFirstSend(other.state.backends.runner)
        outbox: Outbox = other.state.backends.outbox
        outbox._runner = lossy
        account = await register(api)
        image = await upload(api, account, images.jpeg((800, 600)))
        assert len(lossy.dropped) == 2  # both jobs "sent", and lost

        stored = await wait_for_image(app, image["id"])
        found = await asyncio.to_thread(smtp_server.wait_for, account.email, WAIT_S)
        await lossy.drain()
        await asyncio.sleep(3)  # another threshold: nothing is sent a third time
    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts == 1
    assert len(found) == 1
    assert len(smtp_server.wait_for(account.email, timeout=0)) == 1


@pytest.mark.skipif(not SERVICES, reason="a real broker that forgets its messages")
async def test_jobs_a_real_broker_forgot_are_sent_again_and_run_once(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    broker_server: RedisServer | None,
    celery_worker: CeleryWorker | None,
    main_relay_paused: None,
) -> None:
    assert broker_server is not None
    assert celery_worker is not None
    overrides = QUICK_RELAY | {"image_stuck_after_seconds": 3}
    await asyncio.to_thread(celery_worker.stop)
    try:
        async with running_app(settings_like(settings, **overrides)) as (other, api):
            account = await register(api)
            image = await upload(api, account, images.jpeg((800, 600)))

            async def all_sent() -> bool:
                session: AsyncSession
                async with other.state.session_factory() as session:
                    rows = list(await session.scalars(select(OutboxJob)))
                return len(rows) == 2 and all(r.sent_at is not None for r in rows)

            await wait_until(all_sent, "both jobs handed to the broker")
            await asyncio.to_thread(broker_server.flush)  # and the broker forgets them
            await asyncio.to_thread(celery_worker.start)

            stored = await wait_for_image(app, image["id"])
            found = await asyncio.to_thread(smtp_server.wait_for, account.email, WAIT_S)
            await asyncio.sleep(4)  # another threshold: nothing is sent a third time
    finally:
        if celery_worker.process is None:
            await asyncio.to_thread(celery_worker.start)
    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts == 1
    assert len(found) == 1
    assert len(smtp_server.wait_for(account.email, timeout=0)) == 1


@pytest.mark.skipif(not SERVICES, reason="a Celery worker busy with a long job")
async def test_a_job_running_past_the_threshold_is_not_sent_again(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    main_relay_paused: None,
    tmp_path: Path,
) -> None:
    queue = f"inkwell-running-{uuid.uuid4().hex[:8]}"
    worker = CeleryWorker(
        settings_env(settings) | {"CELERY_QUEUE": queue}, tmp_path / "running.log", concurrency=2
    )
    await asyncio.to_thread(worker.start)
    overrides = QUICK_RELAY | {"image_stuck_after_seconds": 2, "celery_queue": queue}
    try:
        async with running_app(settings_like(settings, **overrides)) as (_, api):
            account = await register(api)
            image = await upload(api, account, gradient_png(6200, 6300))  # seconds of work
            stored = await wait_for_image(app, image["id"])
    finally:
        await asyncio.to_thread(worker.stop)
    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert stored.attempts == 1
    log = worker.log_path.read_text(errors="replace")
    runs = [line for line in log.splitlines() if image["task_id"] in line and "received" in line]
    assert len(runs) == 1, runs
