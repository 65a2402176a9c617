from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import Settings


class _RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, for which a broker connection that is gone is a connection error.

    After losing its broker, a worker collects the broker connection (which drops the kombu
    transport's `client`), then closes it again. If a job was running (`task_acks_late`) while
    a BRPOP was waiting, that second close restores the job's unacknowledged message through a
    new connection pool built from the dropped client: kombu 5.7 raises `AttributeError:
    'NoneType' object has no attribute 'hostname'` (celery/kombu#582's failure), which Celery
    does not expect there and the worker exits with "Unrecoverable error". So does the late
    acknowledgement of that job. As a connection error, the first is ignored and the second
    logged, and the worker reconnects; the message itself comes back through the visibility
    timeout (or, if the broker lost it, through the sweep of stuck jobs)."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError("the broker connection is closed")
        channel: Any = super()  # the stubs leave _connparams out
        return channel._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = _RedisChannel


REDIS_SCHEMES = ("redis", "rediss")


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings: the worker's, or the API's for publishing."""
    app = Celery("inkwell", broker=settings.celery_broker_url)
    visibility = settings.celery_visibility_timeout_seconds
    broker_scheme = urlsplit(settings.celery_broker_url or "").scheme
    if broker_scheme in REDIS_SCHEMES:
        app.conf.broker_transport = f"{__name__}:{RedisTransport.__name__}"
    app.conf.update(
        result_backend=settings.celery_result_backend,
        task_ignore_result=settings.celery_result_backend is None,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Bounds on every job: at the soft limit the job is stopped and records its failure;
        # at the hard limit its worker process is killed and replaced.
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        # A publisher never waits long for a broker that is down: the outbox sends the job
        # again later (and the worker reconnects on its own).
        broker_connection_timeout=settings.celery_publish_timeout_seconds,
        task_publish_retry=False,
        # A worker rides out a broker outage of any length: it reconnects for as long as the
        # broker is down (Celery's default gives up after 100 attempts, and the worker exits).
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": visibility,
            # kombu's Redis transport looks for unacknowledged tasks to restore only every
            # 10 s, and acts on one look in 10: restore as often as the timeout needs.
            "unacked_restore_interval": max(1, min(10, visibility // 2)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
