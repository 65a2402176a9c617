"""The worker rides out its broker's outage. A Redis broker killed (SIGKILL) and started again on
the same port, empty: the worker process stays alive, reconnects on its own, and processes the
jobs queued once the broker is back — whether the broker went away while the worker was idle,
in the middle of a job, or flapped while the worker was reconnecting.

The broker, the worker and the API process publishing to it are this module's own (on a queue of
their own), so the run's broker and worker stay healthy for the other tests. Services mode only,
but for the configuration check, which runs in both modes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from kombu.transport.pyamqp import Transport as PyamqpTransport

from app.config import Settings
from app.models import ImageStatus
from app.tasks.celery_config import RedisTransport, create_celery
from tests.conftest import SERVICES, running_app, settings_env, settings_like, tidied_up_after
from tests.factories import Account, register
from tests.redis_server import RedisServer
from tests.services import CeleryWorker
from tests.test_worker import VARIANTS, image_row, png, upload, wait_for_image

services_only = pytest.mark.skipif(
    not SERVICES, reason="needs a Celery worker, Redis and PostgreSQL (services mode)"
)

# Long enough for the worker to notice the broker is gone and to fail to reconnect at least once.
OUTAGE_S = 3.0
# How long a worker may take to be consuming again once its broker is back (its reconnection
# attempts back off: 2 s, then 4 s, ...).
RECONNECT_TIMEOUT_S = 30.0
WORKER_DIED = b"Unrecoverable error"


@dataclass
class Outage:
    broker: RedisServer
    worker: CeleryWorker
    api: httpx.AsyncClient
    app: FastAPI
    account: Account

    def log(self) -> str:
        return self.worker.log_path.read_text(errors="replace")

    def assert_worker_alive(self) -> None:
        process = self.worker.process
        assert process is not None
        tail = self.log()[-4000:]
        assert process.poll() is None, f"the worker exited with {process.returncode}:\n{tail}"
        assert WORKER_DIED.decode() not in self.log(), tail

    def kill_broker(self) -> None:
        """SIGKILL: the broker loses everything it held (it keeps nothing on disk)."""
        self.broker.stop()

    def start_broker(self) -> None:
        self.broker.start()  # the same port


@pytest.fixture(scope="module")
async def outage(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Outage]:
    broker = RedisServer()
    broker.start()
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    log_path: Path = tmp_path_factory.mktemp("outage") / "worker.log"
    env = settings_env(settings) | {"CELERY_BROKER_URL": broker.url, "CELERY_QUEUE": queue}
    worker = CeleryWorker(env, log_path)  # prefork, 2 processes: as deployed
    try:
        await asyncio.to_thread(worker.start)
        own = settings_like(settings, celery_broker_url=broker.url, celery_queue=queue)
        async with tidied_up_after(settings, None), running_app(own) as (application, api):
            account = await register(api)
            yield Outage(broker, worker, api, application, account)
    finally:
        try:
            await asyncio.to_thread(worker.stop)
        except ProcessLookupError:  # it died (and the test said so)
            worker.process = None
        broker.stop()


async def a_new_job_is_processed(outage: Outage) -> None:
    """An image uploaded now (the broker is back) is processed by the same worker process."""
    image = await upload(outage.api, outage.account, png(800, 600), name="after.png")
    stored = await wait_for_image(outage.app, image["id"], within=RECONNECT_TIMEOUT_S + 30)
    assert stored.status == ImageStatus.READY, stored.failure_reason
    assert set(stored.variants) == VARIANTS


def test_the_worker_retries_its_broker_for_as_long_as_it_is_down(settings: Settings) -> None:
    """Celery gives up after 100 reconnection attempts by default, and the worker then exits: an
    outage of a few tens of minutes would take the workers down for good."""
    conf = create_celery(settings_like(settings, celery_broker_url="redis://127.0.0.1:1/0")).conf
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_connection_max_retries is None


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:1/0", RedisTransport),
        ("rediss://127.0.0.1:1/0", RedisTransport),
        ("amqp://guest:guest@127.0.0.1:1//", PyamqpTransport),
    ],
)
def test_a_redis_broker_uses_the_channel_that_survives_a_lost_connection(
    settings: Settings, url: str, transport: type
) -> None:
    app = create_celery(settings_like(settings, celery_broker_url=url))
    connection = app.connection_for_write()
    try:
        assert type(connection.transport) is transport
    finally:
        connection.release()


@services_only
async def test_worker_survives_its_broker_going_away_while_idle(outage: Outage) -> None:
    pid = outage.worker.process.pid if outage.worker.process else None
    await a_new_job_is_processed(outage)  # connected and consuming

    await asyncio.to_thread(outage.kill_broker)
    await asyncio.sleep(OUTAGE_S)
    outage.assert_worker_alive()
    await asyncio.to_thread(outage.start_broker)

    await a_new_job_is_processed(outage)
    outage.assert_worker_alive()
    assert outage.worker.process is not None
    assert outage.worker.process.pid == pid  # the same process, not a restarted one
    assert "Connection to broker lost" in outage.log()


@services_only
@pytest.mark.parametrize("into_job_s", [0.0, 0.5, 1.5])
async def test_worker_survives_its_broker_going_away_mid_job(
    outage: Outage, into_job_s: float
) -> None:
    """The job being processed finishes (its acknowledgement has nowhere to go: the broker that
    delivered it is gone) and the worker goes on with the next one."""
    busy = await upload(outage.api, outage.account, png(5000, 4000), name="during.png")
    deadline = time.monotonic() + RECONNECT_TIMEOUT_S
    while (await image_row(outage.app, busy["id"])).attempts < 1:
        assert time.monotonic() < deadline, "the worker never started the job"
        await asyncio.sleep(0.01)
    await asyncio.sleep(into_job_s)

    await asyncio.to_thread(outage.kill_broker)
    await asyncio.sleep(OUTAGE_S)
    outage.assert_worker_alive()
    await asyncio.to_thread(outage.start_broker)

    stored = await wait_for_image(outage.app, busy["id"])
    assert stored.status == ImageStatus.READY, stored.failure_reason
    await a_new_job_is_processed(outage)
    outage.assert_worker_alive()


@services_only
async def test_worker_survives_a_flapping_broker(outage: Outage) -> None:
    """The broker goes away again and again, some of the times while the worker is in the
    middle of reconnecting (just back, or between attempts)."""
    for down_s, up_s in [(0.2, 0.1), (1.0, 0.5), (0.1, 2.5), (2.5, 0.05), (0.5, 1.0)]:
        await asyncio.to_thread(outage.kill_broker)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(outage.start_broker)
        await asyncio.sleep(up_s)
        outage.assert_worker_alive()

    await a_new_job_is_processed(outage)
    outage.assert_worker_alive()
